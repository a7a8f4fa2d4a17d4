#pragma once
// Threads as the ranks of a tensor-parallel group, for the in-process shard tests.

#include <deque>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "shard/thread_communicator.hpp"

namespace kvc_shard {

/// Runs body(rank, communicator) on one thread per rank; returns each rank's exception (or null).
template <class Body>
std::vector<std::exception_ptr> on_ranks(int p, Body&& body, std::vector<int>* collectives = nullptr) {
  ThreadGroup group(p);
  std::deque<ThreadCommunicator> comms;  // communicators neither copy nor move
  for (int r = 0; r < p; ++r) comms.emplace_back(group, r);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(p));
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r)
    threads.emplace_back([&, r] {
      try {
        body(r, comms[static_cast<std::size_t>(r)]);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  if (collectives != nullptr)
    for (auto const& c : comms) collectives->push_back(c.collectives);
  return errors;
}

inline std::string message_of(std::exception_ptr const& e) {
  if (!e) return "(no error)";
  try {
    std::rethrow_exception(e);
  } catch (std::exception const& x) {
    return x.what();
  }
}

inline void require_no_errors(std::vector<std::exception_ptr> const& errors) {
  for (std::size_t r = 0; r < errors.size(); ++r) {
    INFO("rank " << r << ": " << message_of(errors[r]));
    REQUIRE(!errors[r]);
  }
}

}  // namespace kvc_shard
