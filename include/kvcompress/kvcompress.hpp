#pragma once
/// \file
/// \brief Umbrella header: everything that runs on the host.

#include "kvcompress/cache/extents.hpp"
#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/cache/strided_layout.hpp"
#include "kvcompress/core/config.hpp"
#include "kvcompress/core/device.hpp"
#include "kvcompress/core/dtype.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/core/tensor.hpp"
#include "kvcompress/detail/workspace.hpp"
#include "kvcompress/press/knorm.hpp"
#include "kvcompress/press/observation.hpp"
#include "kvcompress/press/scorer.hpp"
#include "kvcompress/press/expected_attention.hpp"
#include "kvcompress/press/key_diff.hpp"
#include "kvcompress/press/lag_kv.hpp"
#include "kvcompress/press/q_filter.hpp"
#include "kvcompress/press/random.hpp"
#include "kvcompress/press/streaming_llm.hpp"
#include "kvcompress/rope/rope_config.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"
