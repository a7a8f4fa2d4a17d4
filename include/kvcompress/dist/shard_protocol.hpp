#pragma once
/// \file
/// \brief How the ranks of a tensor-parallel group run one compression call together.
///
/// A press that couples heads first does everything that may fail on its own rank (checks, its
/// local scores), then calls `join_shard`: the handshake, one all-gather of a fixed record per
/// rank (its status, its heads, the batch, the layer and two values the press needs equal
/// everywhere). Every rank sees the same table and takes the same decision, so a bad input on one
/// rank becomes an `Error` on every rank instead of a hang. Nothing after the handshake fails on one
/// rank only. `shard_call` wraps each entry point (`compress`, `score`, a decoding `step`): a rank
/// that throws before its handshake still takes part in it, reporting the failure, and a call in
/// which the press never communicated (per-head presses) ends with the handshake, so that every
/// rank agrees it succeeded. Collectives that never return (a rank died) are bounded by the
/// communicator (the MPI adapter's timeout).

#include <algorithm>
#include <cstdint>
#include <exception>
#include <numeric>
#include <utility>
#include <vector>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/detail/workspace.hpp"
#include "kvcompress/dist/communicator.hpp"
#include "kvcompress/press/observation.hpp"

namespace kvcompress {

namespace detail {

/// This rank's place in the layer, as checked by the handshake.
struct ShardLayout {
  std::int64_t first_kv_head = 0;  // global index of this rank's first kv head
  std::int64_t kv_heads = 0;       // kv heads of the whole layer
};

/// The handshake's record per rank.
enum HandshakeField : std::size_t { kStatus, kFirstHead, kLocalHeads, kLayerHeads, kBatch, kLayer, kAgree0, kAgree1, kFields };

/// Bytes of the handshake's table [size, kFields].
inline std::size_t handshake_bytes(TensorParallelShard const& s) {
  return s.split() ? Workspace::bytes_for<std::int64_t>(size_product(s.communicator->size() + 1, kFields)) : 0;
}

/// The kv heads of the whole layer.
template <class T, class L>
std::int64_t layer_kv_heads(Observation<T> const& obs, KVCacheView<T, L> const& cache) noexcept {
  return obs.shard.kv_heads > 0 ? obs.shard.kv_heads : cache.extents.kv_heads;
}

/// The local checks of `observation.shard` against the cache.
template <class T, class L>
void validate_shard(Observation<T> const& obs, KVCacheView<T, L> const& cache) {
  TensorParallelShard const& s = obs.shard;
  std::int64_t const local = cache.extents.kv_heads;
  if (!s.split()) {
    KVC_CHECK(s.first_kv_head == 0 && (s.kv_heads == 0 || s.kv_heads == local),
              "observation.shard has no communicator, so the cache must hold the whole layer: first_kv_head = "
                  << s.first_kv_head << " (must be 0), kv_heads = " << s.kv_heads << " (must be 0 or the cache's "
                  << local << ")");
    return;
  }
  KVC_CHECK(s.communicator->size() >= 1 && s.communicator->rank() >= 0 &&
                s.communicator->rank() < s.communicator->size(),
            "observation.shard.communicator reports rank " << s.communicator->rank() << " of "
                                                           << s.communicator->size() << " ranks");
  KVC_CHECK(s.kv_heads >= local, "observation.shard.kv_heads = " << s.kv_heads
                                                                  << " (the layer's) must be at least the cache's kv_heads = "
                                                                  << local);
  KVC_CHECK(s.first_kv_head >= 0 && s.first_kv_head <= s.kv_heads - local,
            "observation.shard.first_kv_head = " << s.first_kv_head << " puts the cache's " << local
                                                 << " kv heads outside the layer's " << s.kv_heads);
}

/// Throws for a press whose result depends on the other ranks' heads in a way it does not yet
/// communicate: on a shard it would silently compute something else than on the whole layer.
template <class T>
void require_whole_layer(Observation<T> const& obs, char const* press, char const* why) {
  KVC_CHECK(!obs.shard.split(), press << " has no tensor-parallel form (" << why
                                      << "): compress the whole layer on one process (observation.shard has a "
                                         "communicator)");
}

/// The all-gather of the handshake: `table` [size + 1, kFields] gets rank i's record in row i
/// (the last row is this rank's own record).
inline void exchange_records(Communicator& comm, std::int64_t const* record, std::int64_t* table) {
  std::copy(record, record + kFields, table + static_cast<std::size_t>(comm.size()) * kFields);
  comm.all_gather(table + static_cast<std::size_t>(comm.size()) * kFields, table, kFields);
}

/// The decision every rank takes from the same table: throws on every rank when one failed, or
/// when the ranks disagree on what they compress.
inline void check_handshake(Communicator const& comm, std::int64_t const* table) {
  int const p = comm.size();
  auto const at = [&](int r, std::size_t f) { return table[static_cast<std::size_t>(r) * kFields + f]; };
  for (int r = 0; r < p; ++r)
    KVC_CHECK(at(r, kStatus) == 0, "rank " << r << " of " << p
                                           << " failed in this compression call (its own error names the cause); "
                                              "every rank of the group stops here");
  char const* const names[] = {"", "", "", "the layer's kv_heads", "the batch", "the layer index",
                               "the press's shared quantity", "the press's shared quantity"};
  for (std::size_t f = kLayerHeads; f < kFields; ++f)
    for (int r = 1; r < p; ++r)
      KVC_CHECK(at(r, f) == at(0, f), "the ranks of the tensor-parallel group disagree on "
                                          << names[f] << ": rank 0 has " << at(0, f) << ", rank " << r << " has "
                                          << at(r, f));
  // Each head of the layer on exactly one rank: the ranks' ranges, in order, tile [0, kv_heads).
  std::vector<int> order(static_cast<std::size_t>(p));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return at(a, kFirstHead) < at(b, kFirstHead); });
  std::int64_t next = 0;
  for (int r : order) {
    KVC_CHECK(at(r, kFirstHead) == next, "the kv heads of the tensor-parallel group do not tile the layer: rank "
                                             << r << " starts at head " << at(r, kFirstHead) << ", expected " << next);
    next += at(r, kLocalHeads);
  }
  KVC_CHECK(next == at(0, kLayerHeads), "the ranks hold " << next << " kv heads in all, the layer has "
                                                            << at(0, kLayerHeads));
}

/// Access to the call state a `Communicator` keeps for this protocol.
struct ShardCallState {
  static int& depth(Communicator& c) noexcept { return c.call_depth_; }
  static bool& owed(Communicator& c) noexcept { return c.handshake_owed_; }
};

/// What a rank reports of its call in the handshake (see `HandshakeField`).
struct ShardRecord {
  std::int64_t local_heads = 0;  // kv heads this rank holds
  std::int64_t layer_heads = 0;  // kv heads of the whole layer
  std::int64_t batch = 0;
  std::int64_t layer = 0;  // the layer index, or what a cross-layer call needs equal (its layer count)
};

template <class T, class L>
ShardRecord record_of(Observation<T> const& obs, KVCacheView<T, L> const& cache) noexcept {
  return {cache.extents.kv_heads, layer_kv_heads(obs, cache), cache.extents.batch, obs.layer_idx};
}

inline void fill_record(TensorParallelShard const& shard, ShardRecord const& r, bool failed, std::int64_t agree0,
                        std::int64_t agree1, std::int64_t* record) {
  record[kStatus] = failed ? 1 : 0;
  record[kFirstHead] = shard.first_kv_head;
  record[kLocalHeads] = r.local_heads;
  record[kLayerHeads] = r.layer_heads;
  record[kBatch] = r.batch;
  record[kLayer] = r.layer;
  record[kAgree0] = agree0;
  record[kAgree1] = agree1;
}

template <class T, class L>
void fill_record(Observation<T> const& obs, KVCacheView<T, L> const& cache, bool failed, std::int64_t agree0,
                 std::int64_t agree1, std::int64_t* record) {
  fill_record(obs.shard, record_of(obs, cache), failed, agree0, agree1, record);
}

/// The local checks of a shard given to a function that takes no observation (`name` is its
/// argument), for a rank holding `local` kv heads.
inline void validate_shard(TensorParallelShard const& s, std::int64_t local, char const* name) {
  if (!s.split()) {
    KVC_CHECK(s.first_kv_head == 0 && (s.kv_heads == 0 || s.kv_heads == local),
              name << " has no communicator, so this process must hold the whole layer: first_kv_head = "
                   << s.first_kv_head << " (must be 0), kv_heads = " << s.kv_heads << " (must be 0 or the "
                   << local << " given)");
    return;
  }
  KVC_CHECK(s.communicator->size() >= 1 && s.communicator->rank() >= 0 && s.communicator->rank() < s.communicator->size(),
            name << ".communicator reports rank " << s.communicator->rank() << " of " << s.communicator->size() << " ranks");
  KVC_CHECK(s.kv_heads >= local, name << ".kv_heads = " << s.kv_heads << " (the layer's) must be at least the "
                                      << local << " kv heads given");
  KVC_CHECK(s.first_kv_head >= 0 && s.first_kv_head <= s.kv_heads - local,
            name << ".first_kv_head = " << s.first_kv_head << " puts the " << local << " kv heads given outside the layer's "
                 << s.kv_heads);
}

/// `join_shard` for a call that takes no observation: `table` [size + 1, kFields] is scratch.
inline void join_shard(TensorParallelShard const& shard, ShardRecord const& r, std::int64_t agree0, std::int64_t agree1,
                       std::int64_t* table) {
  if (!shard.split()) return;
  Communicator& comm = *shard.communicator;
  std::int64_t record[kFields];
  fill_record(shard, r, false, agree0, agree1, record);
  ShardCallState::owed(comm) = false;
  exchange_records(comm, record, table);
  check_handshake(comm, table);
}

/// The handshake of a press that communicates: this rank got here without error. Returns the
/// checked layout; throws on every rank when any rank failed or the group is inconsistent.
/// \param agree0, agree1 values the press needs equal on every rank (0 when none)
template <class T, class L>
ShardLayout join_shard(Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t agree0,
                       std::int64_t agree1, Workspace& ws) {
  ShardLayout const layout{obs.shard.first_kv_head, layer_kv_heads(obs, cache)};
  if (!obs.shard.split()) return layout;
  std::int64_t* table = ws.take<std::int64_t>(size_product(obs.shard.communicator->size() + 1, kFields));  // [size + 1, kFields]
  join_shard(obs.shard, record_of(obs, cache), agree0, agree1, table);
  return layout;
}

/// Runs one entry point's `body` under the protocol (see the file comment) for a rank of `shard`
/// reporting `r`. Nested entry points (a wrapper's inner `compress`) run inside the outermost one's call.
template <class Body>
void shard_call(TensorParallelShard const& shard, ShardRecord const& r, Body&& body) {
  Communicator* comm = shard.communicator;
  if (comm == nullptr || ShardCallState::depth(*comm) > 0) {
    body();
    return;
  }
  struct Scope {
    Communicator& c;
    explicit Scope(Communicator& comm_) : c(comm_) {
      ++ShardCallState::depth(c);
      ShardCallState::owed(c) = true;
    }
    ~Scope() {
      --ShardCallState::depth(c);
      ShardCallState::owed(c) = false;
    }
    Scope(Scope const&) = delete;
    Scope& operator=(Scope const&) = delete;
  } const scope(*comm);
  std::vector<std::int64_t> table;
  std::int64_t record[kFields];
  try {
    body();
  } catch (...) {
    if (ShardCallState::owed(*comm)) {
      ShardCallState::owed(*comm) = false;
      try {
        table.resize(static_cast<std::size_t>(comm->size() + 1) * kFields);
        fill_record(shard, r, true, 0, 0, record);
        exchange_records(*comm, record, table.data());
      } catch (...) {  // the group is unreachable too: this rank's own error is the one to report
      }
    }
    throw;
  }
  if (!ShardCallState::owed(*comm)) return;
  // The press never communicated: the group still agrees that every rank succeeded.
  ShardCallState::owed(*comm) = false;
  table.resize(static_cast<std::size_t>(comm->size() + 1) * kFields);
  fill_record(shard, r, false, 0, 0, record);
  exchange_records(*comm, record, table.data());
  check_handshake(*comm, table.data());
}

template <class T, class L, class Body>
void shard_call(Observation<T> const& obs, KVCacheView<T, L> const& cache, Body&& body) {
  shard_call(obs.shard, record_of(obs, cache), std::forward<Body>(body));
}

}  // namespace detail

}  // namespace kvcompress
