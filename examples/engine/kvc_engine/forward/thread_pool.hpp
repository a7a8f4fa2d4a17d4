#pragma once
/// \file
/// \brief The engine's parallel loops run on the library's `kvcompress::ThreadPool`: one pool per
/// engine, whose threads also run the presses' loops (the engine's `CpuDevice` carries it).

#include "kvcompress/cpu/thread_pool.hpp"

namespace kvc_engine {

using kvcompress::ThreadPool;

}  // namespace kvc_engine
