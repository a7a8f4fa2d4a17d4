/// \file
/// \brief The decoding presses as kvpress runs them: DecodingPress and CompressionRatioDecodingPress
/// (one class, `DecodingState`, whose options say which), PrefillDecodingPress (the same class with a
/// prefilling press) and CAM (`CAMState`). Each is stepped once per forward pass and layer; its state
/// (query rings, step counters, CAM's running attention sums) is the library's, built at the first
/// step that shows its shape (the pass's queries, the cache's dtype and extents) and rebuilt only at
/// a prefill (position 0) of another shape. The workspace is kept and grows only for a larger cache.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <nanobind/stl/optional.h>

#include "bindings.hpp"
#include "press_factory.hpp"

namespace kvcompress::python {

namespace {

/// \brief The inner scorer of a decoding press, with the window of post-RoPE queries the library
/// rebuilds from its query ring for it (`window_size`: SnapKV's and PyramidKV's window, 1 for TOVA,
/// 0 for a press without one; the Python layer reads it off the press, as the library's
/// `detail::decoding_window` does off a press type).
struct DecodingScorer : ErasedScorer {
  std::int64_t window_size = 0;
};

DecodingScorer decoding_scorer(NativePress const& press, std::int64_t window_size, char const* wrapper) {
  KVC_CHECK(window_size >= 0, wrapper << ": the inner press's window_size must be non-negative, got " << window_size);
  return DecodingScorer{inner(press, wrapper), window_size};
}

/// \brief The options of either decoding press, in the library's `BasicDecodingPress` protocol:
/// each call goes to the library's own `DecodingOptions` (fixed target) or
/// `CompressionRatioDecodingOptions` (a fraction of the tokens seen).
struct EitherDecodingOptions {
  std::variant<DecodingOptions, CompressionRatioDecodingOptions> which;
  std::int64_t compression_interval = 0;
  std::int64_t query_buffer_size = 0;

  explicit EitherDecodingOptions(std::variant<DecodingOptions, CompressionRatioDecodingOptions> w)
      : which(w),
        compression_interval(std::visit([](auto const& o) { return o.compression_interval; }, w)),
        query_buffer_size(std::visit([](auto const& o) { return o.query_buffer_size; }, w)) {}

  void validate() const {
    std::visit([](auto const& o) { o.validate(); }, which);
  }
  [[nodiscard]] std::int64_t target(std::int64_t tokens_seen) const {
    return std::visit([tokens_seen](auto const& o) { return o.target(tokens_seen); }, which);
  }
};

template <class T>
using Decoder = BasicDecodingPress<DecodingScorer, T, EitherDecodingOptions>;
template <class T>
using PrefillDecoder = PrefillDecodingPress<ErasedPress, Decoder<T>>;

/// \brief The workspace a stateful press's steps reuse: grown, never shrunk.
struct StepWorkspace {
  std::vector<std::byte> bytes;
  std::size_t allocations = 0;  // times it grew

  Workspace reserve(std::size_t n) {
    if (bytes.size() < n) {
      bytes = std::vector<std::byte>(n);
      ++allocations;
    }
    return Workspace(bytes.data(), bytes.size());
  }
};

/// What a state was built for; a prefill of another key starts over.
struct StateKey {
  Storage storage = Storage::kF32;
  int num_layers = 0;
  std::int64_t batch = 0, q_heads = 0, kv_heads = 0, head_dim = 0, capacity = 0;
};

/// The key of a step: `has_queries` false leaves the query axes 0 (the step cannot build a state).
template <class T>
StateKey key_of(Observation<T> const& o, CacheExtents const& e, bool has_queries, std::int64_t capacity) {
  StateKey k{storage_v<T>, o.num_layers, e.batch, 0, e.kv_heads, 0, capacity};
  if (has_queries) {
    k.q_heads = o.queries.shape[1];
    k.head_dim = o.queries.shape[3];
  }
  return k;
}

/// \brief DecodingPress, CompressionRatioDecodingPress or PrefillDecodingPress, and its state.
struct PyDecoding {
  std::string name;
  std::optional<ErasedPress> prefill;
  std::optional<DecodingScorer> scorer;
  EitherDecodingOptions options;
  std::variant<std::monostate, PrefillDecoder<float>, PrefillDecoder<half>, PrefillDecoder<bfloat16>> state;
  StateKey key;
  StepWorkspace workspace;
  std::unique_ptr<std::mutex> mutex = std::make_unique<std::mutex>();

  /// f(the state's decoding press), which must exist (`steps`, `buffered`).
  template <class F>
  auto with_decoder(F&& f) const {
    KVC_CHECK(scorer.has_value(), name << " has no decoding press");
    return std::visit(
        [&](auto const& s) -> std::int64_t {
          if constexpr (std::is_same_v<std::decay_t<decltype(s)>, std::monostate>)
            KVC_THROW(name << " has no state before its first step with observation.queries");
          else
            return f(*s.decoding_press());
        },
        state);
  }

  template <class T, class V>
  bool step(CpuDevice const& dev, Observation<T> const& o, V const& view, bool has_queries) {
    // The key's capacity is 0: the query rings do not depend on it.
    StateKey const k = key_of(o, view.extents, has_queries, 0);
    bool const prefill_pass = o.position == 0;
    bool const built = !std::holds_alternative<std::monostate>(state);
    if (built && prefill_pass &&
        (k.storage != key.storage ||
         (scorer && (k.num_layers != key.num_layers || k.batch != key.batch ||
                     (has_queries && (k.q_heads != key.q_heads || k.head_dim != key.head_dim))))))
      state = std::monostate{};  // a new sequence of another shape
    if (std::holds_alternative<std::monostate>(state)) {
      if (!scorer) {
        state.template emplace<PrefillDecoder<T>>(prefill, std::nullopt);
        key = k;
      } else if (has_queries) {
        Decoder<T> decoder(*scorer, options, QueryBufferShape{o.num_layers, k.batch, k.q_heads, k.head_dim});
        state.template emplace<PrefillDecoder<T>>(prefill, std::move(decoder));
        key = k;
      } else if (prefill_pass) {
        // No state yet and no queries to size one: only the prefilling press has work here (the
        // decoding press would forget this layer's past, which it has none of).
        kvcompress::detail::validate_inputs(o, view);
        PrefillDecoder<T> once(prefill, std::nullopt);
        return once.step(dev, o, view, workspace.reserve(once.workspace_bytes(dev, o, view)));
      } else {
        KVC_THROW(name << ": observation.queries must be given (the step's pre-RoPE queries, [batch, q_heads, q_len, "
                          "head_dim])");
      }
    }
    auto* s = std::get_if<PrefillDecoder<T>>(&state);
    KVC_CHECK(s != nullptr, name << ": the cache stores " << storage_name(storage_v<T>)
                                 << " but this sequence's state holds " << storage_name(key.storage)
                                 << " queries (a prefill, position 0, starts over)");
    return s->step(dev, o, view, workspace.reserve(s->workspace_bytes(dev, o, view)));
  }
};

/// \brief CAM's merge draws: u ∈ [0, 1) from the seeded Mersenne Twister, or the caller's values in
/// order (a replay of recorded draws), which must not run out.
struct PyUniform {
  MersenneUniform generator;
  std::shared_ptr<std::vector<double> const> replay;
  std::size_t used = 0;

  double operator()() {
    if (!replay) {
      ++used;
      return generator();
    }
    KVC_CHECK(used < replay->size(), "CAMPress asked for more merge draws than the " << replay->size()
                                                                                     << " uniforms it was given");
    return (*replay)[used++];
  }
};

template <class T>
using CAM = CAMPress<DecodingScorer, T, PyUniform>;

/// \brief CAMPress and its state.
struct PyCAM {
  DecodingScorer scorer;
  CAMOptions options;
  std::int64_t capacity = 0;  // 0: the cache's, at the first step
  PyUniform uniform;          // the draws before the first state is built
  std::variant<std::monostate, CAM<float>, CAM<half>, CAM<bfloat16>> state;
  StateKey key;
  StepWorkspace workspace;
  std::unique_ptr<std::mutex> mutex = std::make_unique<std::mutex>();

  /// The draws so far, whichever state made them.
  [[nodiscard]] PyUniform& draws() {
    return std::visit(
        [&](auto& s) -> PyUniform& {
          if constexpr (std::is_same_v<std::decay_t<decltype(s)>, std::monostate>)
            return uniform;
          else
            return s.uniform();
        },
        state);
  }

  /// f(the state), which must exist; f returns the same type for every element type.
  template <class F>
  auto with_state(F&& f) const {
    using R = decltype(f(static_cast<CAM<float> const*>(nullptr)));
    return std::visit(
        [&](auto const& s) -> R {
          if constexpr (std::is_same_v<std::decay_t<decltype(s)>, std::monostate>)
            KVC_THROW("CAMPress has no state before its first step with observation.queries");
          else
            return f(&s);
        },
        state);
  }

  template <class T, class V>
  bool step(CpuDevice const& dev, Observation<T> const& o, V const& view, bool has_queries) {
    std::int64_t const cap = capacity > 0 ? capacity : view.extents.capacity;
    StateKey const k = key_of(o, view.extents, has_queries, cap);
    bool const prefill_pass = o.position == 0;
    if (!std::holds_alternative<std::monostate>(state) && prefill_pass &&
        (k.storage != key.storage || k.num_layers != key.num_layers || k.batch != key.batch ||
         k.kv_heads != key.kv_heads || k.capacity != key.capacity ||
         (has_queries && (k.q_heads != key.q_heads || k.head_dim != key.head_dim)))) {
      uniform = draws();  // the draws go on where they were
      state = std::monostate{};
    }
    if (std::holds_alternative<std::monostate>(state)) {
      if (!has_queries) {
        KVC_CHECK(prefill_pass, "CAMPress: observation.queries must be given (the step's pre-RoPE queries, [batch, "
                                "q_heads, q_len, head_dim])");
        kvcompress::detail::validate_inputs(o, view);
        return false;  // a prefill: nothing to forget yet
      }
      CAMShape const shape{o.num_layers, k.batch, k.q_heads, k.kv_heads, k.head_dim, cap};
      state.template emplace<CAM<T>>(scorer, options, shape, uniform);
      key = k;
    }
    auto* s = std::get_if<CAM<T>>(&state);
    KVC_CHECK(s != nullptr, "CAMPress: the cache stores " << storage_name(storage_v<T>)
                                                          << " but this sequence's state holds " << storage_name(key.storage)
                                                          << " queries (a prefill, position 0, starts over)");
    return s->step(dev, o, view, workspace.reserve(s->workspace_bytes(dev, o, view)));
  }
};

/// One step of `press` on the cache's element type and layout, the GIL released.
template <class P>
bool step(P& press, PyObservation const& obs, Cache const& cache, int num_threads) {
  return std::visit(
      [&](auto const& view) {
        using T = typename std::decay_t<decltype(view)>::value_type;
        bool compressed = false;
        on_shard(obs, view, [&] {
          Observation<T> const o = obs.build<T>(view.extents);
          CpuDevice const dev{num_threads};
          nb::gil_scoped_release release;
          std::lock_guard<std::mutex> lock(*press.mutex);
          compressed = press.step(dev, o, view, obs.queries.has_value());
        });
        return compressed;
      },
      cache.host_view("decoding press step"));
}

std::shared_ptr<std::vector<double> const> uniforms_of(std::optional<Array> const& u) {
  if (!u) return nullptr;
  KVC_CHECK(u->ndim() == 1, "uniforms must be a 1-D array of draws in [0, 1), got " << u->ndim() << " dimensions");
  auto const n = static_cast<std::int64_t>(u->shape(0));
  auto values = std::make_shared<std::vector<double>>(static_cast<std::size_t>(n));
  if (u->dtype() == nb::dtype<float>()) {
    float const* p = contiguous_data<float>(*u, n, "uniforms");
    for (std::int64_t i = 0; i < n; ++i) (*values)[static_cast<std::size_t>(i)] = static_cast<double>(p[i]);
  } else {
    KVC_CHECK(u->dtype() == nb::dtype<double>(), "uniforms must be float32 or float64, got " << dtype_name(u->dtype()));
    double const* p = contiguous_data<double>(*u, n, "uniforms");
    std::copy(p, p + n, values->begin());
  }
  for (std::int64_t i = 0; i < n; ++i) {
    double const x = (*values)[static_cast<std::size_t>(i)];
    KVC_CHECK(x >= 0.0 && x < 1.0, "uniforms[" << i << "] = " << x << " is outside [0, 1)");
  }
  return values;
}

}  // namespace

void bind_decoding(nb::module_& m) {
  nb::class_<PyDecoding>(m, "DecodingState",
                         "DecodingPress, CompressionRatioDecodingPress or PrefillDecodingPress with its state: the "
                         "query rings and step counters of every layer, and the workspace.")
      .def("__init__",
           [](PyDecoding* self, NativePress const* prefilling_press, NativePress const* base_press,
              std::int64_t window_size, std::int64_t compression_interval, std::optional<std::int64_t> target_size,
              double target_compression_ratio, std::int64_t query_buffer_size) {
             std::variant<DecodingOptions, CompressionRatioDecodingOptions> which;
             if (target_size) which = DecodingOptions{compression_interval, *target_size, query_buffer_size};
             else
               which = CompressionRatioDecodingOptions{compression_interval, target_compression_ratio, query_buffer_size};
             EitherDecodingOptions options(which);
             char const* name = base_press == nullptr ? "PrefillDecodingPress"
                                : target_size    ? "DecodingPress"
                                                 : "CompressionRatioDecodingPress";
             std::optional<DecodingScorer> scorer;
             if (base_press != nullptr) {
               options.validate();
               scorer = decoding_scorer(*base_press, window_size, name);
             }
             std::optional<ErasedPress> prefill;
             if (prefilling_press != nullptr) prefill = ErasedPress{prefilling_press->any};
             if (prefill && base_press != nullptr) name = "PrefillDecodingPress";
             new (self) PyDecoding{name, std::move(prefill), scorer, options, {}, {}, {}};
           },
           nb::arg("prefilling_press").none(), nb::arg("base_press").none(), nb::arg("window_size"),
           nb::arg("compression_interval"), nb::arg("target_size").none(), nb::arg("target_compression_ratio"),
           nb::arg("query_buffer_size"),
           "Validates the options. target_size None: CompressionRatioDecodingPress's target, a fraction of the tokens "
           "seen. base_press None: no compression while decoding; prefilling_press None: none at the prefill.")
      .def("step", &step<PyDecoding>, nb::arg("observation"), nb::arg("cache"), nb::arg("num_threads") = 0,
           "One forward pass of one layer, after its keys and values were appended; returns whether entries were "
           "removed. Position 0 is a prefill (a new sequence).")
      .def("steps",
           [](PyDecoding const& d, int layer) {
             std::lock_guard<std::mutex> lock(*d.mutex);
             return d.with_decoder([&](auto const& p) { return p.steps(layer); });
           },
           nb::arg("layer"), "Decode steps of the layer since its last compression.")
      .def("buffered",
           [](PyDecoding const& d, int layer) {
             std::lock_guard<std::mutex> lock(*d.mutex);
             return d.with_decoder([&](auto const& p) { return p.buffered(layer); });
           },
           nb::arg("layer"), "Queries of the layer the inner press would see now.")
      .def_prop_ro("has_state", [](PyDecoding const& d) { return !std::holds_alternative<std::monostate>(d.state); })
      .def_prop_ro("workspace_allocations", [](PyDecoding const& d) { return d.workspace.allocations; },
                   "How many times the workspace grew (once per larger cache; never per step).")
      .def_prop_ro("workspace_capacity", [](PyDecoding const& d) { return d.workspace.bytes.size(); })
      .def("reset", [](PyDecoding& d) {
        std::lock_guard<std::mutex> lock(*d.mutex);
        std::visit([](auto& s) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(s)>, std::monostate>) s.reset();
        }, d.state);
      }, "Forgets every layer's steps and queries (a new sequence); keeps the buffers.");

  nb::class_<PyCAM>(m, "CAMState",
                    "CAMPress with its state: the query rings, step counters and running attention sums of every "
                    "layer, the merge draws, and the workspace.")
      .def("__init__",
           [](PyCAM* self, NativePress const& base_press, std::int64_t window_size, std::int64_t compression_interval,
              std::int64_t target_size, std::int64_t query_buffer_size, std::int64_t merge_budget, std::uint64_t seed,
              std::int64_t capacity, std::optional<Array> uniforms) {
             CAMOptions const options{compression_interval, target_size, query_buffer_size, merge_budget};
             options.validate();
             KVC_CHECK(capacity >= 0, "capacity must be non-negative (0: the cache's), got " << capacity);
             new (self) PyCAM{decoding_scorer(base_press, window_size, "CAMPress"), options, capacity,
                              PyUniform{MersenneUniform(seed), uniforms_of(uniforms), 0}, {}, {}, {}};
           },
           nb::arg("base_press"), nb::arg("window_size"), nb::arg("compression_interval"), nb::arg("target_size"),
           nb::arg("query_buffer_size"), nb::arg("merge_budget"), nb::arg("seed"), nb::arg("capacity"),
           nb::arg("uniforms").none(),
           "Validates the options. capacity 0: the running sums hold the cache capacity of the first step with queries. "
           "uniforms: the merge draws in order (float32/float64, [0, 1)) instead of the seeded generator.")
      .def("step", &step<PyCAM>, nb::arg("observation"), nb::arg("cache"), nb::arg("num_threads") = 0,
           "One forward pass of one layer, after its keys and values were appended; returns whether entries were "
           "removed. Needs observation.queries and rope at every decoding step.")
      .def("steps",
           [](PyCAM const& c, int layer) {
             std::lock_guard<std::mutex> lock(*c.mutex);
             return c.with_state([&](auto const* s) { return s->steps(layer); });
           },
           nb::arg("layer"), "Decode steps of the layer since its last compression.")
      .def("buffered",
           [](PyCAM const& c, int layer) {
             std::lock_guard<std::mutex> lock(*c.mutex);
             return c.with_state([&](auto const* s) { return s->buffered(layer); });
           },
           nb::arg("layer"), "Queries of the layer the inner press would see now.")
      .def(
          "attention_sum",
          [](PyCAM const& c, int layer, Array out) {
            std::lock_guard<std::mutex> lock(*c.mutex);
            c.with_state([&](auto const* s) {
              CAMShape const& sh = s->shape();
              std::int64_t const rows = sh.batch * sh.kv_heads, width = sh.capacity;
              float* dst = contiguous_data<float>(out, rows * width, "out");  // [batch, kv_heads, capacity]
              float const* a = s->attention_sum(layer);                        // [batch, kv_heads, capacity]
              for (std::int64_t r = 0; r < rows; ++r) {
                std::int64_t const n = s->summed(layer, r);  // entries past a row's sum are stale
                std::copy(a + r * width, a + r * width + n, dst + r * width);
                std::fill(dst + r * width + n, dst + (r + 1) * width, 0.0f);
              }
              return 0;
            });
          },
          nb::arg("layer"), nb::arg("out"),
          "Writes the layer's running attention sums into out, float32 [batch, kv_heads, capacity] (see shape); "
          "entries past what a row's sum covers are 0.")
      .def_prop_ro("shape",
                   [](PyCAM const& c) {
                     return c.with_state([](auto const* s) {
                       CAMShape const& sh = s->shape();
                       return nb::make_tuple(sh.num_layers, sh.batch, sh.q_heads, sh.kv_heads, sh.head_dim, sh.capacity);
                     });
                   },
                   "(num_layers, batch, q_heads, kv_heads, head_dim, capacity) of the state.")
      .def_prop_ro("draws", [](PyCAM& c) {
                     std::lock_guard<std::mutex> lock(*c.mutex);
                     return c.draws().used;
                   }, "Merge draws made so far.")
      .def_prop_ro("has_state", [](PyCAM const& c) { return !std::holds_alternative<std::monostate>(c.state); })
      .def_prop_ro("workspace_allocations", [](PyCAM const& c) { return c.workspace.allocations; },
                   "How many times the workspace grew (once per larger cache; never per step).")
      .def_prop_ro("workspace_capacity", [](PyCAM const& c) { return c.workspace.bytes.size(); })
      .def("reset", [](PyCAM& c) {
        std::lock_guard<std::mutex> lock(*c.mutex);
        std::visit([](auto& s) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(s)>, std::monostate>) s.reset();
        }, c.state);
      }, "Forgets every layer's steps, queries and sums (a new sequence); keeps the buffers and the draws.");
}

}  // namespace kvcompress::python
