// moekit-route: route tokens with a production MoE router from the command line.
// Reads router logits [..., E] (or hidden states [..., H] and a gate weight [E, H], projected here),
// picks the router from Hugging Face config keys (a config.json, flags, or both), and writes
// ids.npy (int32 [..., K]), weights.npy (fp32 [..., K]) and, when it computed them, logits.npy.
// docs/moekit-route.md documents every flag, the key mapping per family, and the errors.
//
// The program is a pipeline of separate steps, so that routers and outputs can be added without
// touching the others:
//   1. command line   the flag table `flags` (parsing and --help both read it)
//   2. inputs         .npy files → logits [T, E] (the gate projection runs here when needed)
//   3. router         config.json + flag overrides → io::RouterConfig → `make_router` (the table
//                     of routers: one variant alternative and one case per router kind)
//   4. routing        `run_router`, on the CPU path or the emulated device kernel
//   5. outputs        `collect_outputs` names every file; `write_outputs` writes them all or none
// Every failure before step 5 leaves the output folder untouched; step 5 writes each file to a
// temporary name and renames them only when all were written.
// Exit status: 0 success, 1 error in the inputs or parameters, 2 bad command line.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/cpu/gate_projection.hpp"
#include "moekit/cpu/plan.hpp"
#include "moekit/cpu/route.hpp"
#include "moekit/io/hf_config.hpp"
#include "moekit/io/npy.hpp"
#include "moekit/routing/checked_logits.hpp"
#include "moekit/routing/gate_projection_buffers.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/route_buffers.hpp"
#include "moekit/routing/scores.hpp"
#include "moekit/routing/top_k.hpp"
#if MOEKIT_ROUTE_HAVE_EMU
#include "moekit/plan/build_plan.hpp"
#include "moekit/routing/gate_projection.hpp"
#include "moekit/routing/route.hpp"
#endif

namespace {

namespace fs = std::filesystem;
using moekit::Status;
using Json = nlohmann::json;

constexpr char const* tool_name = "moekit-route";

// The largest K the tool's routers accept (vLLM's fused grouped top-k has the same bound).
constexpr int max_k = 32;

// A failure: the Status (its message is moekit::last_error_message()) or a command-line error.
struct Failure {
  int exit_code = 1;
  std::string message;
};

Failure failure(Status s) {
  std::string m = moekit::last_error_message();
  return {1, m.empty() ? std::string(moekit::to_string(s)) : m};
}

// ---- 1. Command line --------------------------------------------------------------------------

enum class Device { cpu, emulate };

struct Options {
  std::optional<fs::path> logits, hidden, gate_weight, gate_bias, correction_bias, config, out;
  Json overrides = Json::object();  // HF config keys given as flags, applied over --config
  bool round_logits_bf16 = false;
  Device device = Device::cpu;
  bool help = false;
  // The dispatch plan (plan/dispatch_plan.hpp).
  std::optional<long long> expert_capacity;
  std::optional<double> capacity_factor;
  long long tile_rows = 1;
};

enum class FlagKind {
  path,
  hf_integer,
  hf_number,
  hf_boolean,
  hf_string,
  round_bf16,
  device,
  expert_capacity,
  capacity_factor,
  tile_rows,
  help
};

struct Flag {
  char const* name;  // as documented; '-' and '_' are interchangeable on the command line
  FlagKind kind;
  char const* argument;  // metavariable in --help ("" for a flag without a value)
  char const* help;
  std::optional<fs::path> Options::*path = nullptr;  // FlagKind::path
  char const* hf_key = nullptr;                      // FlagKind::hf_*
};

// The flag table: parsing and --help read it. A new flag is one row (and its use in a step below).
Flag const flags[] = {
    {"--logits", FlagKind::path, "L.npy",
     "router logits [..., E] (float32; float16 or bf16 as <u2/<V2 are widened exactly)", &Options::logits},
    {"--hidden", FlagKind::path, "X.npy", "hidden states [..., H] (float32, or bf16 as <u2/<V2); needs --gate-weight",
     &Options::hidden},
    {"--gate-weight", FlagKind::path, "W.npy", "router weight [E, H] (HF nn.Linear [out, in]; float32 or bf16)",
     &Options::gate_weight},
    {"--gate-bias", FlagKind::path, "b.npy", "router bias [E] added to the logits (gpt-oss's router.bias)",
     &Options::gate_bias},
    {"--correction-bias", FlagKind::path, "b.npy",
     "e_score_correction_bias [E] for topk_method noaux_tc (DeepSeek-V3): selection only", &Options::correction_bias},
    {"--config", FlagKind::path, "config.json",
     "Hugging Face config.json to read the router keys from (text_config when present); flags override it",
     &Options::config},
    {"--out", FlagKind::path, "DIR", "output folder (created if missing; written only on success)", &Options::out},
    {"--model-type", FlagKind::hf_string, "NAME",
     "model_type: mixtral qwen2_moe qwen3_moe olmoe gpt_oss llama4 llama4_text switch_transformers deepseek_v2 "
     "deepseek_v3, or any other name with --scoring_func",
     nullptr, "model_type"},
    {"--num_experts", FlagKind::hf_integer, "E",
     "routed experts (replaces num_local_experts / n_routed_experts of the config; default: from the data)", nullptr,
     "num_experts"},
    {"--num_experts_per_tok", FlagKind::hf_integer, "K", "experts per token", nullptr, "num_experts_per_tok"},
    {"--n_group", FlagKind::hf_integer, "G", "expert groups (grouped routers)", nullptr, "n_group"},
    {"--topk_group", FlagKind::hf_integer, "G_k", "groups kept per token (grouped routers)", nullptr, "topk_group"},
    {"--norm_topk_prob", FlagKind::hf_boolean, "true|false", "renormalise the K weights", nullptr, "norm_topk_prob"},
    {"--routed_scaling_factor", FlagKind::hf_number, "X", "multiply the weights by X", nullptr,
     "routed_scaling_factor"},
    {"--scoring_func", FlagKind::hf_string, "softmax|sigmoid", "score function", nullptr, "scoring_func"},
    {"--topk_method", FlagKind::hf_string, "greedy|group_limited_greedy|noaux_tc",
     "selection of a grouped (DeepSeek) router", nullptr, "topk_method"},
    {"--round-logits-bf16", FlagKind::round_bf16, "",
     "round the logits to bf16 (nearest even) before routing, as an HF router running in bf16"},
    {"--device", FlagKind::device, "cpu|emulate",
     "cpu: the checked CPU path (default); emulate: the CUDA kernels under moekit's emulator"},
    {"--expert_capacity", FlagKind::expert_capacity, "C",
     "plan: at most C assignments per expert, the earliest in (token, slot) order (HF Switch key); default unlimited"},
    {"--capacity_factor", FlagKind::capacity_factor, "F", "plan: capacity = ceil(F * T * K / E) instead of C"},
    {"--tile-rows", FlagKind::tile_rows, "M",
     "plan: rows per grouped-GEMM tile; expert blocks padded to M (default 1)"},
    {"--help", FlagKind::help, "", "print this help and exit"},
};

std::string normalised(std::string_view name) {
  std::string s(name);
  std::replace(s.begin(), s.end(), '_', '-');
  return s;
}

void print_help() {
  std::printf(
      "usage: %s (--logits L.npy | --hidden X.npy --gate-weight W.npy [--gate-bias b.npy])\n"
      "                    [--config config.json] [router flags] [--correction-bias b.npy]\n"
      "                    [--round-logits-bf16] [--device cpu|emulate] --out DIR\n\n"
      "Routes every token with a production MoE router (Mixtral, Qwen2/3-MoE, OLMoE, gpt-oss, Llama-4, Switch,\n"
      "DeepSeek-V2/V3) and writes DIR/ids.npy (int32 [..., K]), DIR/weights.npy (float32 [..., K]) and, when the\n"
      "logits were computed from hidden states, DIR/logits.npy (float32 [..., E]), and the dispatch plan\n"
      "(DIR/plan_*.npy: expert counts and offsets, row <-> assignment maps, the GEMM tile list, diagnostics).\n"
      "Router flags carry Hugging Face\n"
      "config.json key names ('-' and '_' are interchangeable). Non-finite logits are refused (checked mode).\n\n"
      "flags:\n",
      tool_name);
  for (Flag const& f : flags) {
    std::string head = f.name;
    if (*f.argument != '\0') {
      head += std::string(" ") + f.argument;
    }
    std::printf("  %s\n      %s\n", head.c_str(), f.help);
  }
  std::printf("\nexit status: 0 success, 1 error in the inputs or parameters, 2 bad command line.\n"
              "See docs/moekit-route.md for the key mapping per model family and examples.\n");
}

std::optional<Failure> usage(std::string const& message) { return Failure{2, message + " (see --help)"}; }

std::optional<Failure> set_flag(Flag const& f, std::string_view value, Options& o) {
  std::string const name = f.name;
  switch (f.kind) {
    case FlagKind::path:
      if (value.empty()) {
        return usage(name + ": empty path");
      }
      o.*(f.path) = fs::path(std::string(value));
      return std::nullopt;
    case FlagKind::hf_integer: {
      long long v = 0;
      auto const [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
      if (ec != std::errc{} || end != value.data() + value.size()) {
        return usage(name + ": '" + std::string(value) + "' is not an integer");
      }
      o.overrides[f.hf_key] = v;
      return std::nullopt;
    }
    case FlagKind::hf_number: {
      std::string const text(value);
      char* end = nullptr;
      double const v = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v)) {
        return usage(name + ": '" + text + "' is not a finite number");
      }
      o.overrides[f.hf_key] = v;
      return std::nullopt;
    }
    case FlagKind::hf_boolean:
      if (value == "true" || value == "True") {
        o.overrides[f.hf_key] = true;
      } else if (value == "false" || value == "False") {
        o.overrides[f.hf_key] = false;
      } else {
        return usage(name + ": '" + std::string(value) + "' must be true or false");
      }
      return std::nullopt;
    case FlagKind::hf_string: o.overrides[f.hf_key] = std::string(value); return std::nullopt;
    case FlagKind::device:
      if (value == "cpu") {
        o.device = Device::cpu;
      } else if (value == "emulate") {
        o.device = Device::emulate;
      } else {
        return usage(name + ": '" + std::string(value) + "' must be cpu or emulate");
      }
      return std::nullopt;
    case FlagKind::round_bf16: o.round_logits_bf16 = true; return std::nullopt;
    case FlagKind::expert_capacity:
    case FlagKind::tile_rows: {
      long long v = 0;
      auto const [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
      if (ec != std::errc{} || end != value.data() + value.size()) {
        return usage(name + ": '" + std::string(value) + "' is not an integer");
      }
      if (f.kind == FlagKind::tile_rows) {
        o.tile_rows = v;
      } else {
        o.expert_capacity = v;
      }
      return std::nullopt;
    }
    case FlagKind::capacity_factor: {
      std::string const text(value);
      char* end = nullptr;
      double const v = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v)) {
        return usage(name + ": '" + text + "' is not a finite number");
      }
      o.capacity_factor = v;
      return std::nullopt;
    }
    case FlagKind::help: o.help = true; return std::nullopt;
  }
  return std::nullopt;
}

std::optional<Failure> parse_command_line(int argc, char** argv, Options& o) {
  std::vector<std::string> seen;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h") {
      arg = "--help";
    }
    if (arg.size() < 3 || arg.substr(0, 2) != "--") {
      return usage("unexpected argument '" + std::string(arg) + "'");
    }
    std::optional<std::string_view> value;
    if (auto const eq = arg.find('='); eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    std::string const key = normalised(arg);
    Flag const* flag = nullptr;
    for (Flag const& f : flags) {
      if (normalised(f.name) == key) {
        flag = &f;
      }
    }
    if (flag == nullptr) {
      return usage("unknown option '" + std::string(arg) + "'");
    }
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
      return usage(std::string(flag->name) + " given twice");
    }
    seen.push_back(key);
    bool const takes_value = *flag->argument != '\0';
    if (!takes_value && value) {
      return usage(std::string(flag->name) + " takes no value");
    }
    if (takes_value && !value) {
      if (i + 1 >= argc) {
        return usage(std::string(flag->name) + " needs a value (" + flag->argument + ")");
      }
      value = argv[++i];
    }
    if (auto f = set_flag(*flag, value.value_or(""), o)) {
      return f;
    }
  }
  if (o.help) {
    return std::nullopt;
  }
  if (!o.out) {
    return usage("--out DIR is required");
  }
  if (o.logits.has_value() == (o.hidden.has_value() || o.gate_weight.has_value())) {
    return usage("give either --logits, or --hidden with --gate-weight");
  }
  if (o.hidden.has_value() != o.gate_weight.has_value()) {
    return usage(o.hidden ? "--hidden needs --gate-weight" : "--gate-weight needs --hidden");
  }
  if (o.expert_capacity && o.capacity_factor) {
    return usage("give --expert_capacity or --capacity_factor, not both");
  }
  if (o.gate_bias && !o.hidden) {
    return usage("--gate-bias applies to --hidden/--gate-weight (add it to the logits yourself)");
  }
#if !MOEKIT_ROUTE_HAVE_EMU
  if (o.device == Device::emulate) {
    return usage("--device emulate: this build has no CUDA emulator (Boost.Context was not found)");
  }
#endif
  return std::nullopt;
}

// ---- 2. Inputs --------------------------------------------------------------------------------

struct Inputs {
  std::vector<std::int64_t> batch_shape;  // the leading dimensions; T is their product
  std::int64_t tokens = 0;
  std::int64_t experts = 0;
  std::vector<float> logits;  // [T, E]
  bool logits_computed = false;
  std::vector<float> correction_bias;  // [E], or empty
};

// A float array: float32 as is, float16 and bf16 (stored as <u2 / <V2) widened exactly.
Status read_floats(fs::path const& path, std::vector<float>& values, std::vector<std::int64_t>& shape) {
  moekit::io::NpyArray a;
  if (Status s = moekit::io::read_npy(path, a); !s) {
    return s;
  }
  if (moekit::io::converts_exactly<moekit::bf16_t>(a.type)) {
    std::vector<moekit::bf16_t> b;
    if (Status s = moekit::io::to_vector(a, b, path.string()); !s) {
      return s;
    }
    values.resize(b.size());
    std::transform(b.begin(), b.end(), values.begin(), [](moekit::bf16_t v) { return v.to_float(); });
  } else if (Status s = moekit::io::to_vector(a, values, path.string()); !s) {
    return s;
  }
  shape = a.shape;
  return Status::ok;
}

// Hidden states or gate weight: fp32 or bf16, kept as stored (the projection reads either).
struct Matrix {
  std::variant<std::vector<float>, std::vector<moekit::bf16_t>> values;
  std::vector<std::int64_t> shape;
};

Status read_matrix(fs::path const& path, Matrix& m) {
  moekit::io::NpyArray a;
  if (Status s = moekit::io::read_npy(path, a); !s) {
    return s;
  }
  m.shape = a.shape;
  if (moekit::io::converts_exactly<moekit::bf16_t>(a.type)) {
    std::vector<moekit::bf16_t> b;
    Status const s = moekit::io::to_vector(a, b, path.string());
    m.values = std::move(b);
    return s;
  }
  std::vector<float> f;
  Status const s = moekit::io::to_vector(a, f, path.string());
  m.values = std::move(f);
  return s;
}

std::string shape_string(std::vector<std::int64_t> const& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return s + "]";
}

// [..., N] → leading shape and N; a rank below 2 is an error naming the file.
std::optional<Failure> split_rows(fs::path const& path, char const* what, std::vector<std::int64_t> const& shape,
                                  std::vector<std::int64_t>& batch, std::int64_t& rows, std::int64_t& cols) {
  if (shape.size() < 2) {
    return Failure{1, std::string(what) + " '" + path.string() + "' must have at least 2 dimensions [..., N], got " +
                          shape_string(shape)};
  }
  batch.assign(shape.begin(), shape.end() - 1);
  rows = 1;
  for (std::int64_t d : batch) {
    rows *= d;
  }
  cols = shape.back();
  return std::nullopt;
}

std::optional<Failure> read_vector(fs::path const& path, char const* what, std::int64_t experts,
                                   std::vector<float>& out) {
  std::vector<std::int64_t> shape;
  if (Status s = read_floats(path, out, shape); !s) {
    return failure(s);
  }
  if (shape.size() != 1 || shape[0] != experts) {
    return Failure{1, std::string(what) + " '" + path.string() + "' must have shape [" + std::to_string(experts) +
                          "] (one value per expert), got " + shape_string(shape)};
  }
  return std::nullopt;
}

template <class X, class W>
Status project(std::vector<X> const& x, std::vector<W> const& w, std::vector<float> const& bias, Inputs& in,
               std::int64_t hidden, Device device) {
  using moekit::MemorySpace;
  using moekit::TensorView;
  in.logits.assign(static_cast<std::size_t>(in.tokens * in.experts), 0.f);
  auto const bias_extent = static_cast<std::int64_t>(bias.size());
  if (device == Device::cpu) {
    moekit::routing::GateProjectionBuffers<X, W, MemorySpace::host> b{
        TensorView<X const, 2, MemorySpace::host>::row_major(x.data(), {in.tokens, hidden}),
        TensorView<W const, 2, MemorySpace::host>::row_major(w.data(), {in.experts, hidden}),
        TensorView<float const, 1, MemorySpace::host>::row_major(bias.data(), {bias_extent}),
        TensorView<float, 2, MemorySpace::host>::row_major(in.logits.data(), {in.tokens, in.experts})};
    return moekit::cpu::gate_projection(b);
  }
#if MOEKIT_ROUTE_HAVE_EMU
  // The host checks what the device cannot report (checked mode), then the kernel runs emulated.
  moekit::routing::GateProjectionBuffers<X, W, MemorySpace::host> h{
      TensorView<X const, 2, MemorySpace::host>::row_major(x.data(), {in.tokens, hidden}),
      TensorView<W const, 2, MemorySpace::host>::row_major(w.data(), {in.experts, hidden}),
      TensorView<float const, 1, MemorySpace::host>::row_major(bias.data(), {bias_extent}),
      TensorView<float, 2, MemorySpace::host>::row_major(in.logits.data(), {in.tokens, in.experts})};
  if (Status s = moekit::routing::check_gate_projection_buffers(h); !s) {
    return s;
  }
  if (Status s = moekit::routing::check_gate_inputs_finite(h); !s) {
    return s;
  }
  moekit::routing::GateProjectionBuffers<X, W, MemorySpace::device> d{
      TensorView<X const, 2, MemorySpace::device>::row_major(x.data(), {in.tokens, hidden}),
      TensorView<W const, 2, MemorySpace::device>::row_major(w.data(), {in.experts, hidden}),
      TensorView<float const, 1, MemorySpace::device>::row_major(bias.data(), {bias_extent}),
      TensorView<float, 2, MemorySpace::device>::row_major(in.logits.data(), {in.tokens, in.experts})};
  return moekit::routing::gate_projection(d, nullptr);
#else
  return Status::unsupported_config;
#endif
}

std::optional<Failure> load_inputs(Options const& o, Inputs& in) {
  if (o.logits) {
    std::vector<std::int64_t> shape;
    if (Status s = read_floats(*o.logits, in.logits, shape); !s) {
      return failure(s);
    }
    return split_rows(*o.logits, "logits", shape, in.batch_shape, in.tokens, in.experts);
  }
  Matrix x, w;
  if (Status s = read_matrix(*o.hidden, x); !s) {
    return failure(s);
  }
  if (Status s = read_matrix(*o.gate_weight, w); !s) {
    return failure(s);
  }
  std::int64_t hidden = 0;
  if (auto f = split_rows(*o.hidden, "hidden states", x.shape, in.batch_shape, in.tokens, hidden)) {
    return f;
  }
  if (w.shape.size() != 2 || w.shape[1] != hidden || w.shape[0] < 1) {
    return Failure{1, "gate weight '" + o.gate_weight->string() +
                          "' must have shape [E, H] with H = " + std::to_string(hidden) + " (the hidden size of '" +
                          o.hidden->string() + "'), got " + shape_string(w.shape)};
  }
  in.experts = w.shape[0];
  std::vector<float> bias;
  if (o.gate_bias) {
    if (auto f = read_vector(*o.gate_bias, "gate bias", in.experts, bias)) {
      return f;
    }
  }
  in.logits_computed = true;
  Status const s = std::visit(
      [&](auto const& xv, auto const& wv) { return project(xv, wv, bias, in, hidden, o.device); }, x.values, w.values);
  if (!s) {
    return failure(s);
  }
  return std::nullopt;
}

// ---- 3. Router ---------------------------------------------------------------------------------

// The config: --config (or an empty object), flag overrides applied to its router section; the
// number of experts taken from the data when neither gives one.
std::optional<Failure> load_router_config(Options const& o, Inputs const& in, moekit::io::RouterConfig& c) {
  Json config = Json::object();
  std::string source = "command line";
  if (o.config) {
    if (Status s = moekit::io::read_json_file(*o.config, config); !s) {
      return failure(s);
    }
    if (!config.is_object()) {
      return Failure{1, "config '" + o.config->string() + "': a config must be a JSON object (got " +
                            config.type_name() + ")"};
    }
    source = "config '" + o.config->string() + "'" + (o.overrides.empty() ? "" : " with command-line flags");
  }
  Json& section = moekit::io::router_section(config);
  if (o.overrides.contains("num_experts")) {  // the flag replaces every spelling of E
    section.erase("num_local_experts");
    section.erase("n_routed_experts");
  }
  for (auto const& [key, value] : o.overrides.items()) {
    section[key] = value;
  }
  bool const names_experts =
      std::any_of(std::begin(moekit::io::expert_count_keys), std::end(moekit::io::expert_count_keys),
                  [&](char const* k) { return section.contains(k) && !section.at(k).is_null(); });
  if (!names_experts) {
    section["num_experts"] = in.experts;
  }
  if (Status s = moekit::io::parse_router_config(config, c, source); !s) {
    return failure(s);
  }
  if (c.num_experts != in.experts) {
    std::string const what =
        o.logits ? "logits '" + o.logits->string() + "'" : "gate weight '" + o.gate_weight->string() + "'";
    return Failure{1, what + " has " + std::to_string(in.experts) +
                          " experts but the router has num_experts=" + std::to_string(c.num_experts)};
  }
  return std::nullopt;
}

// The routers the tool can run. A new router: an alternative here and a case in make_router.
using AnyRouter = std::variant<moekit::routing::TopK<max_k>, moekit::routing::GroupedTopK<max_k>>;

std::optional<Failure> make_router(moekit::io::RouterConfig const& c, Inputs const& in, AnyRouter& out) {
  switch (c.kind) {
    case moekit::io::RouterKind::top_k: {
      if (!in.correction_bias.empty()) {
        return Failure{1, "--correction-bias is only used by topk_method noaux_tc (DeepSeek-V3); model_type '" +
                              c.model_type + "' routes plain top-k"};
      }
      moekit::routing::TopK<max_k> r{};
      if (Status s = moekit::io::make_top_k_router(c, r); !s) {
        return failure(s);
      }
      out = r;
      return std::nullopt;
    }
    case moekit::io::RouterKind::grouped_top_k: {
      if (!in.correction_bias.empty() && !c.uses_correction_bias()) {
        return Failure{1, std::string("--correction-bias is only used by topk_method noaux_tc (got ") +
                              moekit::io::to_string(c.topk_method) + ")"};
      }
      moekit::routing::GroupedTopK<max_k> r{};
      float const* bias = in.correction_bias.empty() ? nullptr : in.correction_bias.data();
      if (Status s = moekit::io::make_grouped_router(c, bias, r); !s) {
        return failure(s);
      }
      out = r;
      return std::nullopt;
    }
  }
  return Failure{1, "internal error: unknown router kind"};
}

std::string describe(moekit::io::RouterConfig const& c) {
  std::string s = c.model_type.empty() ? std::string("router") : c.model_type;
  s += c.kind == moekit::io::RouterKind::top_k ? " (top-k, " : " (grouped top-k, ";
  s += moekit::io::to_string(c.scoring_func);
  if (c.kind == moekit::io::RouterKind::grouped_top_k) {
    s += std::string(", ") + moekit::io::to_string(c.topk_method) + ", n_group " + std::to_string(c.n_group) +
         ", topk_group " + std::to_string(c.topk_group);
  }
  s += ", E " + std::to_string(c.num_experts) + ", K " + std::to_string(c.num_experts_per_tok) +
       (c.norm_topk_prob ? ", renormalised" : "") + ")";
  return s;
}

// ---- 4. Routing --------------------------------------------------------------------------------

struct Routing {
  int slots = 0;
  int experts = 0;
  std::vector<int> ids;        // [T, K]
  std::vector<float> weights;  // [T, K]
  moekit::Diagnostics diagnostics{};
};

template <moekit::routing::TokenRouter R>
Status run_router(R const& r, Inputs const& in, Device device, Routing& out) {
  using moekit::MemorySpace;
  using moekit::TensorView;
  out.slots = r.slots();
  out.experts = r.num_experts();
  out.ids.assign(static_cast<std::size_t>(in.tokens * out.slots), r.num_experts());
  out.weights.assign(out.ids.size(), 0.f);
  if (device == Device::cpu) {
    moekit::routing::RouteBuffers<MemorySpace::host> b{
        TensorView<float const, 2, MemorySpace::host>::row_major(in.logits.data(), {in.tokens, in.experts}),
        TensorView<int, 2, MemorySpace::host>::row_major(out.ids.data(), {in.tokens, out.slots}),
        TensorView<float, 2, MemorySpace::host>::row_major(out.weights.data(), {in.tokens, out.slots})};
    return moekit::cpu::route(r, b);
  }
#if MOEKIT_ROUTE_HAVE_EMU
  // Checked mode on the host first (the kernel only counts non-finite rows).
  if (Status s = moekit::routing::check_logits_finite(
          TensorView<float const, 2, MemorySpace::host>::row_major(in.logits.data(), {in.tokens, in.experts}));
      !s) {
    return s;
  }
  moekit::routing::RouteBuffers<MemorySpace::device> b{
      TensorView<float const, 2, MemorySpace::device>::row_major(in.logits.data(), {in.tokens, in.experts}),
      TensorView<int, 2, MemorySpace::device>::row_major(out.ids.data(), {in.tokens, out.slots}),
      TensorView<float, 2, MemorySpace::device>::row_major(out.weights.data(), {in.tokens, out.slots})};
  return moekit::routing::route(r, b, &out.diagnostics, nullptr);
#else
  return Status::unsupported_config;
#endif
}

// ---- 5. The dispatch plan -------------------------------------------------------------------------

struct Plan {
  moekit::plan::PlanProblem problem;
  std::vector<std::int64_t> counts, offsets, rows{0}, tiles{0};
  std::vector<std::int64_t> row_assignment, assignment_row, tile_row;
  std::vector<int> tile_expert;
};

std::optional<Failure> build_plan(Options const& o, Inputs const& in, Routing& r, Plan& p) {
  p.problem = {.tokens = in.tokens, .slots = r.slots, .experts = r.experts, .tile_rows = static_cast<int>(o.tile_rows)};
  if (o.tile_rows < 1 || o.tile_rows > moekit::plan::max_tile_rows) {
    return Failure{1, "--tile-rows must be in [1, " + std::to_string(moekit::plan::max_tile_rows) + "] (got " +
                          std::to_string(o.tile_rows) + ")"};
  }
  if (o.expert_capacity) {
    p.problem.capacity = *o.expert_capacity;
  } else if (o.capacity_factor) {
    if (Status s =
            moekit::plan::capacity_from_factor(*o.capacity_factor, in.tokens, r.slots, r.experts, p.problem.capacity);
        !s) {
      return failure(s);
    }
  }
  if (Status s = moekit::plan::validate(p.problem); !s) {
    return failure(s);
  }
  auto const size = [](std::int64_t n) { return static_cast<std::size_t>(n); };
  p.counts.resize(size(r.experts));
  p.offsets.resize(size(r.experts) + 1);
  p.row_assignment.resize(size(moekit::plan::max_rows(p.problem)));
  p.assignment_row.resize(size(moekit::plan::assignments(p.problem)));
  p.tile_row.resize(size(moekit::plan::max_tiles(p.problem)));
  p.tile_expert.resize(p.tile_row.size());
  using moekit::MemorySpace;
  using moekit::TensorView;
  if (o.device == Device::cpu) {
    moekit::plan::DispatchPlan<MemorySpace::host> const out{
        p.counts.data(),      p.offsets.data(),  p.row_assignment.data(), p.assignment_row.data(),
        p.tile_expert.data(), p.tile_row.data(), p.rows.data(),           p.tiles.data()};
    if (Status s = moekit::cpu::build_plan(
            p.problem, TensorView<int const, 2, MemorySpace::host>::row_major(r.ids.data(), {in.tokens, r.slots}), out,
            r.diagnostics);
        !s) {
      return failure(s);
    }
    return std::nullopt;
  }
#if MOEKIT_ROUTE_HAVE_EMU
  moekit::plan::DispatchPlan<MemorySpace::device> const out{
      p.counts.data(),      p.offsets.data(),  p.row_assignment.data(), p.assignment_row.data(),
      p.tile_expert.data(), p.tile_row.data(), p.rows.data(),           p.tiles.data()};
  std::vector<std::byte> workspace(moekit::plan::plan_workspace_size(p.problem) + moekit::Workspace::default_alignment);
  std::size_t space = workspace.size();
  void* base = workspace.data();
  base = std::align(moekit::Workspace::default_alignment, moekit::plan::plan_workspace_size(p.problem), base, space);
  moekit::Workspace w(base, moekit::plan::plan_workspace_size(p.problem));
  if (Status s = moekit::plan::build_plan(
          p.problem, TensorView<int const, 2, MemorySpace::device>::row_major(r.ids.data(), {in.tokens, r.slots}), out,
          &r.diagnostics, w, nullptr);
      !s) {
    return failure(s);
  }
  return std::nullopt;
#else
  return Failure{1, "--device emulate: this build has no CUDA emulator"};
#endif
}

// ---- 6. Outputs --------------------------------------------------------------------------------

struct OutputFile {
  std::string name;
  moekit::io::NpyArray array;
};

// Every file the run produces. A new output: one more entry here.
std::vector<OutputFile> collect_outputs(Inputs const& in, Routing const& r, Plan const& p) {
  std::vector<std::int64_t> slots_shape = in.batch_shape;
  slots_shape.push_back(r.slots);
  std::vector<OutputFile> files;
  files.push_back({"ids.npy", moekit::io::make_npy_array(r.ids.data(), slots_shape)});
  files.push_back({"weights.npy", moekit::io::make_npy_array(r.weights.data(), slots_shape)});
  if (in.logits_computed) {
    std::vector<std::int64_t> logits_shape = in.batch_shape;
    logits_shape.push_back(in.experts);
    files.push_back({"logits.npy", moekit::io::make_npy_array(in.logits.data(), logits_shape)});
  }
  using moekit::io::make_npy_array;
  std::int64_t const experts = r.experts;
  files.push_back({"plan_expert_counts.npy", make_npy_array(p.counts.data(), {experts})});
  files.push_back({"plan_expert_offsets.npy", make_npy_array(p.offsets.data(), {experts + 1})});
  files.push_back({"plan_row_assignment.npy", make_npy_array(p.row_assignment.data(), {p.rows[0]})});
  files.push_back({"plan_assignment_row.npy", make_npy_array(p.assignment_row.data(), slots_shape)});
  files.push_back({"plan_tile_expert.npy", make_npy_array(p.tile_expert.data(), {p.tiles[0]})});
  files.push_back({"plan_tile_row.npy", make_npy_array(p.tile_row.data(), {p.tiles[0]})});
  // Diagnostics in this order: nonfinite_rows, dropped_assignments, invalid_ids, empty_slots,
  // empty_experts, max_load, and the capacity used (-1: unlimited).
  moekit::Diagnostics const& d = r.diagnostics;
  static thread_local std::vector<std::int64_t> diagnostics;
  diagnostics = {static_cast<std::int64_t>(d.nonfinite_rows),
                 static_cast<std::int64_t>(d.dropped_assignments),
                 static_cast<std::int64_t>(d.invalid_ids),
                 static_cast<std::int64_t>(d.empty_slots),
                 static_cast<std::int64_t>(d.empty_experts),
                 static_cast<std::int64_t>(d.max_load),
                 p.problem.capacity};
  files.push_back({"plan_diagnostics.npy", make_npy_array(diagnostics.data(), {7})});
  return files;
}

// Writes every file under a temporary name, then renames them all; on any failure removes what
// it wrote (and the folder, if it created it), so the folder is left as it was.
std::optional<Failure> write_outputs(fs::path const& dir, std::vector<OutputFile> const& files) {
  std::error_code ec;
  bool const existed = fs::exists(dir, ec);
  if (existed && !fs::is_directory(dir, ec)) {
    return Failure{1, "--out '" + dir.string() + "' exists and is not a directory"};
  }
  if (!existed && !fs::create_directories(dir, ec)) {
    return Failure{1, "--out '" + dir.string() + "': cannot create the folder: " + ec.message()};
  }
  std::vector<fs::path> written;
  auto undo = [&](Failure f) {
    std::error_code ignored;
    for (fs::path const& p : written) {
      fs::remove(p, ignored);
    }
    if (!existed) {
      fs::remove(dir, ignored);
    }
    return f;
  };
  for (OutputFile const& f : files) {
    fs::path const partial = dir / ("." + f.name + ".partial");
    if (Status s = moekit::io::write_npy(partial, f.array); !s) {
      return undo(failure(s));
    }
    written.push_back(partial);
  }
  for (std::size_t i = 0; i < files.size(); ++i) {
    fs::rename(written[i], dir / files[i].name, ec);
    if (ec) {
      return undo(Failure{1, "--out '" + dir.string() + "': cannot write " + files[i].name + ": " + ec.message()});
    }
  }
  return std::nullopt;
}

// ---- the pipeline ------------------------------------------------------------------------------

std::optional<Failure> run(int argc, char** argv) {
  Options o;
  if (auto f = parse_command_line(argc, argv, o)) {
    return f;
  }
  if (o.help) {
    print_help();
    return std::nullopt;
  }
  std::error_code ec;
  if (fs::exists(*o.out, ec) && !fs::is_directory(*o.out, ec)) {
    return Failure{1, "--out '" + o.out->string() + "' exists and is not a directory"};
  }

  Inputs in;
  if (auto f = load_inputs(o, in)) {
    return f;
  }
  if (o.correction_bias) {
    if (auto f = read_vector(*o.correction_bias, "correction bias", in.experts, in.correction_bias)) {
      return f;
    }
    for (std::size_t e = 0; e < in.correction_bias.size(); ++e) {
      if (!std::isfinite(in.correction_bias[e])) {
        return Failure{1, "correction bias '" + o.correction_bias->string() + "': non-finite value at expert " +
                              std::to_string(e)};
      }
    }
  }
  if (o.round_logits_bf16) {
    for (float& z : in.logits) {
      z = moekit::routing::round_to_bf16(z);
    }
  }

  moekit::io::RouterConfig config;
  if (auto f = load_router_config(o, in, config)) {
    return f;
  }
  AnyRouter router;
  if (auto f = make_router(config, in, router)) {
    return f;
  }

  Routing routed;
  Status const s = std::visit([&](auto const& r) { return run_router(r, in, o.device, routed); }, router);
  if (!s) {
    return failure(s);
  }

  Plan plan;
  if (auto f = build_plan(o, in, routed, plan)) {
    return f;
  }
  if (auto f = write_outputs(*o.out, collect_outputs(in, routed, plan))) {
    return f;
  }
  std::printf("%s: routed %lld tokens with %s%s into %s\n", tool_name, static_cast<long long>(in.tokens),
              describe(config).c_str(), o.device == Device::emulate ? " on the emulated device" : "",
              o.out->string().c_str());
  std::printf("%s: plan: %lld rows in %lld tiles of %d; dropped %llu, empty experts %llu, max load %llu\n", tool_name,
              static_cast<long long>(plan.rows[0]), static_cast<long long>(plan.tiles[0]), plan.problem.tile_rows,
              routed.diagnostics.dropped_assignments, routed.diagnostics.empty_experts, routed.diagnostics.max_load);
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (auto f = run(argc, argv)) {
      std::fprintf(stderr, "%s: error: %s\n", tool_name, f->message.c_str());
      return f->exit_code;
    }
    return 0;
  } catch (std::exception const& e) {  // out of memory, or a library that throws: still one line, no output
    std::fprintf(stderr, "%s: error: %s\n", tool_name, e.what());
    return 1;
  }
}
