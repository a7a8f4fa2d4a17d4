// Every wrapper press against kvpress 0.5.5 itself (tools/golden/generate.py, wrappers.json beside a
// scenario): the kept set of every head must equal kvpress's (for AdaKV and CriticalAdaKV, the
// entries kvpress leaves unmasked), except where kvpress's own scores at the cut are closer than the
// fp32 tolerance (then ours must be a valid cut of kvpress's scores; counted and reported). Inner
// scores, CriticalKV's value norms and scores agree to relative 1e-4; KeyRerotation's keys equal
// kvpress's re-rotated keys to 1e-5.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "golden_scenario.hpp"
#include "kvcompress/kvcompress.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using kvc_test::CaseInputs;
using kvc_test::Scenario;
using nlohmann::json;

namespace {

constexpr double kRelTol = 1e-4;
constexpr double kKeyTol = 1e-5;

struct Tally {
  int cases = 0, heads = 0, tied_heads = 0;
  double max_rel = 0.0, max_key_err = 0.0;
};

/// The scenario's cache, owned by one case: keys, values, lengths n, positions 0 … n − 1.
struct CaseCache {
  std::vector<float> k, v;
  std::vector<std::int32_t> lengths, positions;
  KVCacheView<float> view;

  explicit CaseCache(Scenario const& sc)
      : k(sc.keys.data),
        v(sc.values.data),
        lengths(static_cast<std::size_t>(sc.batch * sc.kv_heads), static_cast<std::int32_t>(sc.n)),
        positions(static_cast<std::size_t>(sc.batch * sc.kv_heads * sc.n)) {
    for (std::size_t i = 0; i < positions.size(); ++i)
      positions[i] = static_cast<std::int32_t>(i % static_cast<std::size_t>(sc.n));
    CacheExtents const e{sc.batch, sc.kv_heads, sc.n, sc.head_dim};
    view = make_cache_view(k.data(), v.data(), e,
                           make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}), lengths.data(),
                           positions.data());
  }
  [[nodiscard]] std::set<int> kept(std::int64_t row, std::int64_t n) const {
    return {positions.begin() + row * n, positions.begin() + row * n + lengths[static_cast<std::size_t>(row)]};
  }
};

/// Relative error with an absolute floor of 1e-2 of the largest value (as the press golden test).
double rel_error(double got, double want, double scale) {
  return std::fabs(got - want) / std::max(std::fabs(want), 1e-2 * scale);
}

double max_abs(std::vector<float> const& x) {
  double m = 0.0;
  for (float f : x) m = std::max(m, double(std::fabs(f)));
  return m;
}

void compare_scores(std::vector<float> const& got, std::vector<float> const& want,
                    std::vector<std::int32_t> const& lengths, std::int64_t n, char const* what, Tally& tally) {
  REQUIRE(got.size() == want.size());
  double const scale = max_abs(want);
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::int64_t(i % std::size_t(n)) >= lengths[i / std::size_t(n)]) continue;
    if (want[i] == FLT_MAX || got[i] == FLT_MAX) {  // CriticalKV's stage-1 winners
      if (got[i] != want[i]) FAIL_CHECK(what << " " << i << ": kvcompress " << got[i] << ", kvpress " << want[i]);
      continue;
    }
    double const err = rel_error(got[i], want[i], scale);
    tally.max_rel = std::max(tally.max_rel, err);
    if (err > kRelTol) FAIL_CHECK(what << " " << i << ": kvcompress " << got[i] << ", kvpress " << want[i]);
  }
}

/// kvpress kept `theirs`, we kept `ours`, out of candidates scored by `score`. Equal sets pass; else
/// both must be the same size and every entry on which they differ must score within the tolerance
/// of kvpress's cut (its lowest kept and its highest dropped candidate). Returns true on a tie.
bool check_cut(std::set<std::int64_t> const& candidates, std::set<std::int64_t> const& theirs,
               std::set<std::int64_t> const& ours, std::function<double(std::int64_t)> const& score, double scale) {
  if (ours == theirs) return false;
  REQUIRE(ours.size() == theirs.size());
  double lowest_kept = INFINITY, best_dropped = -INFINITY;
  for (std::int64_t c : candidates)
    (theirs.count(c) ? lowest_kept : best_dropped) =
        theirs.count(c) ? std::min(lowest_kept, score(c)) : std::max(best_dropped, score(c));
  double const tol = kRelTol * std::max(std::fabs(lowest_kept), 1e-2 * scale);
  CHECK(lowest_kept - best_dropped <= tol);  // kvpress's cut is a near tie
  for (std::int64_t c : candidates)
    if (ours.count(c) != theirs.count(c))
      CHECK(std::fabs(score(c) - lowest_kept) <= 2 * tol + (lowest_kept - best_dropped));
  return true;
}

/// Builds the kvcompress wrapper of a wrappers.json entry and hands it to `fn`; `in` gets every
/// input the inner presses use. The entry's inner presses are checked by name.
template <class Fn>
void with_wrapper(Scenario const& sc, json const& w, CaseInputs& in, Fn&& fn) {
  json const& params = w.at("params");
  std::string key = w.at("press").get<std::string>() + "(";
  for (auto const& pc : w.at("presses")) {
    kvc_test::prepare_inputs(sc, pc, in);
    key += pc.at("press").get<std::string>() + (&pc == &w.at("presses").back() ? ")" : ", ");
  }
  auto const inner = [&](std::size_t i) -> json const& { return w.at("presses").at(i).at("params"); };
  using kvc_test::press_from;
  if (key == "AdaKVPress(ExpectedAttentionPress)") {
    fn(AdaKVPress{press_from<ExpectedAttentionPress>(inner(0)), params.at("alpha_safeguard").get<double>()});
  } else if (key == "AdaKVPress(SnapKVPress)") {
    fn(AdaKVPress{press_from<SnapKVPress>(inner(0)), params.at("alpha_safeguard").get<double>()});
  } else if (key == "CriticalKVPress(KnormPress)") {
    fn(CriticalKVPress{press_from<KnormPress>(inner(0)), params.at("epsilon").get<double>(),
                       params.at("first_stage_ratio").get<double>()});
  } else if (key == "CriticalAdaKVPress(ExpectedAttentionPress)") {
    fn(CriticalAdaKVPress{press_from<ExpectedAttentionPress>(inner(0)), params.at("alpha_safeguard").get<double>(),
                          params.at("epsilon").get<double>(), params.at("first_stage_ratio").get<double>()});
  } else if (key == "ChunkKVPress(SnapKVPress)") {
    fn(ChunkKVPress{press_from<SnapKVPress>(inner(0)), params.at("chunk_length").get<std::int64_t>()});
  } else if (key == "ChunkPress(KnormPress)") {
    fn(ChunkPress{press_from<KnormPress>(inner(0)), params.at("chunk_length").get<std::int64_t>()});
  } else if (key == "BlockPress(KeyDiffPress)") {
    fn(BlockPress{press_from<KeyDiffPress>(inner(0)), params.at("block_size").get<std::int64_t>()});
  } else if (key == "ComposedPress(SnapKVPress, KnormPress)") {
    fn(ComposedPress{press_from<SnapKVPress>(inner(0)), press_from<KnormPress>(inner(1))});
  } else if (key == "PerLayerCompressionPress(ExpectedAttentionPress)") {
    fn(PerLayerCompressionPress{press_from<ExpectedAttentionPress>(inner(0)),
                                params.at("compression_ratios").get<std::vector<double>>()});
  } else if (key == "KeyRerotationPress(StreamingLLMPress)") {
    fn(KeyRerotationPress{press_from<StreamingLLMPress>(inner(0))});
  } else if (key == "KeyRerotationPress(SnapKVPress)") {
    fn(KeyRerotationPress{press_from<SnapKVPress>(inner(0))});
  } else {
    FAIL("no kvcompress wrapper for fixture " << key);
  }
}

/// ChunkKV's chunks, re-derived in double from kvpress's inner scores [b, h, n]: mean over a chunk's
/// tokens of the scores summed over heads; the best max(1, int(chunks·(1 − r))) chunks.
std::set<std::int64_t> chunkkv_expected(std::vector<float> const& s, std::int64_t b, std::int64_t heads, std::int64_t n,
                                        std::int64_t c, double ratio, std::vector<double>& chunk_scores) {
  std::int64_t const chunks = (n + c - 1) / c;
  chunk_scores.assign(static_cast<std::size_t>(chunks), 0.0);
  for (std::int64_t j = 0; j < chunks; ++j) {
    std::int64_t const lo = j * c, hi = std::min(n, lo + c);
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = lo; i < hi; ++i) chunk_scores[std::size_t(j)] += s[std::size_t((b * heads + h) * n + i)];
    chunk_scores[std::size_t(j)] /= double(hi - lo);
  }
  auto const keep = std::max<std::int64_t>(1, std::int64_t(double(chunks) * (1.0 - ratio)));
  std::vector<std::int64_t> order(static_cast<std::size_t>(chunks));
  for (std::int64_t j = 0; j < chunks; ++j) order[std::size_t(j)] = j;
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t x, std::int64_t y) {
    return chunk_scores[std::size_t(x)] > chunk_scores[std::size_t(y)];
  });
  return {order.begin(), order.begin() + keep};
}

std::set<std::int64_t> chunks_of(std::set<int> const& kept, std::int64_t c) {
  std::set<std::int64_t> out;
  for (int i : kept) out.insert(i / c);
  return out;
}

}  // namespace

TEST_CASE("every wrapper press matches kvpress 0.5.5: kept sets, scores, re-rotated keys", "[golden][wrappers]") {
  Tally tally;
  for (auto const& name : kvc_test::scenario_names()) {
    Scenario const sc(name);
    if (!std::ifstream(sc.dir + "/wrappers.json").good()) continue;
    json const wrappers = kvc_test::load_json(sc.dir + "/wrappers.json");
    auto const o_proj = kvc_test::load_tensor<float>(sc.dir, wrappers.at("tensors").at("o_proj"));
    std::int64_t const rows = sc.batch * sc.kv_heads, n = sc.n;
    for (auto const& w : wrappers.at("wrappers")) {
      std::string const case_name = w.at("name");
      CAPTURE(name, case_name);
      auto const mask = kvc_test::load_tensor<std::int32_t>(sc.dir, w.at("kept_mask"));
      std::vector<std::set<int>> theirs(static_cast<std::size_t>(rows));
      for (std::int64_t r = 0; r < rows; ++r)
        for (int i = 0; i < n; ++i)
          if (mask.data[std::size_t(r * n + i)]) theirs[std::size_t(r)].insert(i);
      auto const load = [&](char const* key) { return kvc_test::load_tensor<float>(sc.dir, w.at(key)).data; };

      CaseInputs in;
      with_wrapper(sc, w, in, [&](auto const& press) {
        ++tally.cases;
        in.obs.output_projection = make_tensor2(o_proj.data.data(), {o_proj.shape[0], o_proj.shape[1]});
        CaseCache cache(sc);
        using Press = std::decay_t<decltype(press)>;
        std::vector<float> inner_scores;
        double ratio = 0.0;
        if constexpr (detail::has_inner_press<Press>::value) {
          ratio = compression_ratio_of(press);
          if (w.contains("inner_scores")) {
            inner_scores = load("inner_scores");
            compare_scores(score(cpu, press.press, in.obs, cache.view), inner_scores, cache.lengths, n, "inner score",
                           tally);
          }
        }
        if (w.contains("value_norms")) {
          std::vector<float> norms(static_cast<std::size_t>(rows * n));
          std::vector<std::byte> scratch(detail::value_projection_bytes(cpu, in.obs, cache.view));
          Workspace ws(scratch.data(), scratch.size());
          detail::value_projection_norms(cpu, in.obs, cache.view, norms.data(), ws);
          compare_scores(norms, load("value_norms"), cache.lengths, n, "value norm", tally);
        }
        std::vector<float> wrapper_scores;
        if constexpr (detail::has_compress_member<Press, float, StridedLayout>::value) {
          REQUIRE_FALSE(w.contains("scores"));
        } else if (w.contains("scores")) {
          wrapper_scores = load("scores");
          compare_scores(score(cpu, press, in.obs, cache.view), wrapper_scores, cache.lengths, n, "score", tally);
        }

        compress(cpu, press, in.obs, cache.view);

        std::string const kind = w.at("press");
        for (std::int64_t b = 0; b < sc.batch && kind != "KeyRerotationPress"; ++b) {
          std::vector<std::set<int>> ours;
          for (std::int64_t h = 0; h < sc.kv_heads; ++h) ours.push_back(cache.kept(b * sc.kv_heads + h, n));
          auto const& want = [&](std::int64_t h) -> std::set<int> const& {
            return theirs[std::size_t(b * sc.kv_heads + h)];
          };
          int tied = 0;  // heads whose difference from kvpress is a tie at the cut
          if (kind == "AdaKVPress") {
            // kvpress's cut runs across the heads of the sequence, over every entry beyond a head's
            // safeguard (its top n_safe inner scores, which both keep).
            std::set<std::int64_t> candidates, kept_theirs, kept_ours;
            double const alpha = w.at("params").at("alpha_safeguard");
            for (std::int64_t h = 0; h < sc.kv_heads; ++h) {
              float const* s = inner_scores.data() + (b * sc.kv_heads + h) * n;
              std::vector<int> order(static_cast<std::size_t>(n));
              for (int i = 0; i < n; ++i) order[std::size_t(i)] = i;
              std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return s[x] > s[y]; });
              std::int64_t const safe = detail::adakv_safe_count(kept_count(n, ratio), alpha);
              for (std::int64_t j = safe; j < n; ++j) {
                std::int64_t const id = h * n + order[std::size_t(j)];
                candidates.insert(id);
                if (want(h).count(order[std::size_t(j)])) kept_theirs.insert(id);
                if (ours[std::size_t(h)].count(order[std::size_t(j)])) kept_ours.insert(id);
              }
            }
            tied = int(sc.kv_heads) *
                   check_cut(
                       candidates, kept_theirs, kept_ours,
                       [&](std::int64_t id) { return double(inner_scores[std::size_t(b * sc.kv_heads * n + id)]); },
                       max_abs(inner_scores));
          } else if (kind == "CriticalKVPress") {
            for (std::int64_t h = 0; h < sc.kv_heads; ++h) {
              std::set<std::int64_t> all, t, o;
              for (int i = 0; i < n; ++i) all.insert(i);
              for (int i : want(h)) t.insert(i);
              for (int i : ours[std::size_t(h)]) o.insert(i);
              float const* s = wrapper_scores.data() + (b * sc.kv_heads + h) * n;
              tied += check_cut(
                  all, t, o, [&](std::int64_t i) { return double(s[i]); }, max_abs(wrapper_scores));
            }
          } else if (kind == "ChunkKVPress") {
            // kvpress applies batch 0's chunks to every sequence (a QUIRK kvcompress fixes): each
            // sequence is checked against the chunks its own scores choose.
            std::int64_t const c = w.at("params").at("chunk_length");
            std::vector<double> chunk_scores;
            auto const expected = chunkkv_expected(inner_scores, b, sc.kv_heads, n, c, ratio, chunk_scores);
            if (b == 0) CHECK(chunks_of(want(0), c) == expected);  // the derivation is kvpress's
            std::set<std::int64_t> all;
            for (std::int64_t j = 0; j < std::int64_t(chunk_scores.size()); ++j) all.insert(j);
            double scale = 0.0;
            for (double x : chunk_scores) scale = std::max(scale, std::fabs(x));
            tied = int(sc.kv_heads) * check_cut(
                                          all, expected, chunks_of(ours[0], c),
                                          [&](std::int64_t j) { return chunk_scores[std::size_t(j)]; }, scale);
            for (std::int64_t h = 1; h < sc.kv_heads; ++h) CHECK(ours[std::size_t(h)] == ours[0]);
          } else if (kind == "ComposedPress" && w.at("presses").back().at("press") == "KnormPress") {
            // The last press cuts on −‖k‖ among what the first one kept. Layer 0 keys of a repeated
            // token differ only by RoPE, so their norms tie to float rounding.
            for (std::int64_t h = 0; h < sc.kv_heads; ++h) {
              std::set<std::int64_t> all, t, o;
              for (int i : want(h)) all.insert(i), t.insert(i);
              for (int i : ours[std::size_t(h)]) all.insert(i), o.insert(i);
              auto const norm = [&](std::int64_t i) {
                double ss = 0.0;
                for (std::int64_t c = 0; c < sc.head_dim; ++c) {
                  double const x = sc.keys.data[std::size_t(((b * sc.kv_heads + h) * n + i) * sc.head_dim + c)];
                  ss += x * x;
                }
                return -std::sqrt(ss);
              };
              tied += check_cut(all, t, o, norm, std::fabs(norm(*all.begin())));
            }
          } else {
            for (std::int64_t h = 0; h < sc.kv_heads; ++h) CHECK(ours[std::size_t(h)] == want(h));
          }
          tally.heads += int(sc.kv_heads);
          tally.tied_heads += tied;
        }

        if (kind == "KeyRerotationPress") {
          // Slot j holds kvpress's j-th kept entry: its value unchanged, its key re-rotated to position j.
          auto const keys_out = kvc_test::load_tensor<float>(sc.dir, w.at("keys_out"));
          std::int64_t const k = keys_out.shape[2], d = sc.head_dim;
          for (std::int64_t r = 0; r < rows; ++r) {
            CAPTURE(r);
            REQUIRE(cache.lengths[std::size_t(r)] == k);
            std::vector<int> const kept(theirs[std::size_t(r)].begin(), theirs[std::size_t(r)].end());
            for (std::int64_t j = 0; j < k; ++j) {
              CHECK(cache.positions[std::size_t(r * n + j)] == j);  // the keys now encode slot j
              for (std::int64_t c = 0; c < d; ++c) {
                CHECK(cache.v[std::size_t((r * n + j) * d + c)] ==
                      sc.values.data[std::size_t((r * n + kept[std::size_t(j)]) * d + c)]);
                double const err = std::fabs(double(cache.k[std::size_t((r * n + j) * d + c)]) -
                                             keys_out.data[std::size_t((r * k + j) * d + c)]);
                tally.max_key_err = std::max(tally.max_key_err, err);
                if (err > kKeyTol)
                  FAIL_CHECK("re-rotated key (" << r << ", " << j << ", " << c << ") differs by " << err);
              }
            }
            tally.heads += 1;
          }
        }
      });
    }
  }
  std::printf(
      "golden wrappers: %d cases, %d heads, %d heads tied at the cut, max relative score error %.3g, "
      "max re-rotated key error %.3g\n",
      tally.cases, tally.heads, tally.tied_heads, tally.max_rel, tally.max_key_err);
  CHECK(tally.cases == 4 * 11 + 10);  // 4 layers of batch-1 scenarios × 11 cases, batch 2 without CriticalAdaKV
}

}  // namespace KVC_TEST_TU
