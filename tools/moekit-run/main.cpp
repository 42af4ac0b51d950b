// moekit-run: run one layer's MoE block of a Hugging Face checkpoint on the CPU.
// Reads config.json + model.safetensors (io/hf_checkpoint.hpp: Mixtral, Qwen2/3-MoE, OLMoE, Llama-4,
// DeepSeek-V2/V3, gpt-oss in bf16/fp32 or MXFP4), x.npy [T, H], and writes y.npy [T, H] (float32).
// docs/moekit-run.md documents the flags, the families, the layouts and the errors.
//
// The pipeline, each step a function:
//   1. command line   the flag table `flags` (parsing and --help both read it)
//   2. inputs         the block (io::load_moe_block<float>) and x, checked against each other
//   3. routing        cpu::gate_projection → cpu::route with the config's router
//                     (io::make_top_k_router / io::make_grouped_router)
//   4. experts        cpu::run_experts (SwiGLU, or gpt-oss's clamped SwiGLU), fp32; with --emulate
//                     the device expert stage (kernels::run_expert_stage: plan, tensor-core
//                     grouped GEMMs, combine) under moekit's CUDA emulator, in bf16
//   5. outputs        every file written to a temporary name, all renamed only when all were
//                     written: a failure at any step leaves no output file behind.
// Exit status: 0 success, 1 error in the inputs, 2 bad command line.

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/cpu/experts.hpp"
#include "moekit/cpu/gate_projection.hpp"
#include "moekit/cpu/route.hpp"
#include "moekit/cpu/thread_pool.hpp"
#include "moekit/experts/clamped_swiglu.hpp"
#include "moekit/experts/expert_args.hpp"
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/io/hf_checkpoint.hpp"
#include "moekit/io/hf_config.hpp"
#include "moekit/io/npy.hpp"
#include "moekit/kernels/expert_stage.hpp"
#include "moekit/routing/gate_projection_buffers.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/route_buffers.hpp"
#include "moekit/routing/top_k.hpp"

namespace {

namespace fs = std::filesystem;
using moekit::HostTensor;
using moekit::Status;

constexpr char const* tool_name = "moekit-run";
constexpr int max_k = 32;  // the largest K the tool's routers accept (as moekit-route)

struct Failure {
  int exit_code = 1;
  std::string message;
};

Failure failure(Status s) {
  std::string m = moekit::last_error_message();
  return {1, m.empty() ? std::string(moekit::to_string(s)) : m};
}

// ---- 1. Command line --------------------------------------------------------------------------

struct Options {
  std::optional<fs::path> config, weights, input, output, router_out;
  std::optional<long long> layer;
  long long threads = 0;
  bool emulate = false;
  bool help = false;
};

enum class FlagKind { path, layer, threads, emulate, help };

struct Flag {
  char const* name;
  FlagKind kind;
  char const* argument;  // "" for a flag without a value
  char const* help;
  std::optional<fs::path> Options::*path = nullptr;
};

Flag const flags[] = {
    {"--config", FlagKind::path, "config.json", "the checkpoint's Hugging Face config.json", &Options::config},
    {"--weights", FlagKind::path, "model.safetensors",
     "the .safetensors file holding the layer's MoE tensors, or a sharded checkpoint's "
     "model.safetensors.index.json (the layer is gathered from its shards)",
     &Options::weights},
    {"--layer", FlagKind::layer, "N", "the decoder layer whose MoE block runs (must be an MoE layer)"},
    {"--input", FlagKind::path, "x.npy",
     "hidden states [T, H]: float32, or float16 / bf16 (as <u2 or <V2) widened exactly", &Options::input},
    {"--output", FlagKind::path, "y.npy", "where y [T, H] (float32) is written", &Options::output},
    {"--router-out", FlagKind::path, "ids.npy",
     "also write the routed expert ids [T, K] (int32) there, and the routing weights [T, K] (float32) beside "
     "it as <stem>_weights.npy",
     &Options::router_out},
    {"--threads", FlagKind::threads, "N", "CPU threads of the expert stage (default 0: all cores)"},
    {"--emulate", FlagKind::emulate, "",
     "run the expert stage as the device kernels (plan, tensor-core grouped GEMMs, combine) under moekit's CUDA "
     "emulator: x and the expert weights rounded to bf16, fp32 accumulation (routing stays on the CPU in fp32)"},
    {"--help", FlagKind::help, "", "print this help and exit"},
};

void print_help() {
  std::printf("usage: %s --config config.json --weights model.safetensors --layer N --input x.npy --output y.npy\n"
              "                  [--router-out ids.npy] [--threads N] [--emulate]\n\n"
              "Runs layer N's MoE block (gate projection, routing, experts, combine) on the CPU in fp32 and writes\n"
              "y. Families: mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3 (bf16/fp32, or FP8\n"
              "block-scaled), gpt_oss (bf16/fp32 or MXFP4), llama4. Outputs are written only when everything\n"
              "succeeded.\n\nflags:\n",
              tool_name);
  for (Flag const& f : flags) {
    std::string head = f.name;
    if (*f.argument != '\0') {
      head += std::string(" ") + f.argument;
    }
    std::printf("  %s\n      %s\n", head.c_str(), f.help);
  }
  std::printf("\nexit status: 0 success, 1 error in the inputs, 2 bad command line.\n"
              "See docs/moekit-run.md for the tensor layouts per family and the errors.\n");
}

Failure usage(std::string const& message) { return Failure{2, message + " (see --help)"}; }

std::optional<Failure> integer(std::string const& name, std::string_view value, long long lo, long long& out) {
  auto const [end, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
  if (ec != std::errc{} || end != value.data() + value.size()) {
    return usage(name + ": '" + std::string(value) + "' is not an integer");
  }
  if (out < lo) {
    return usage(name + ": must be >= " + std::to_string(lo) + " (got " + std::string(value) + ")");
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
    std::optional<std::string_view> value;
    if (auto const eq = arg.find('='); arg.substr(0, 2) == "--" && eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    Flag const* flag = nullptr;
    for (Flag const& f : flags) {
      if (arg == f.name) {
        flag = &f;
      }
    }
    if (flag == nullptr) {
      return usage(arg.substr(0, 2) == "--" ? "unknown option '" + std::string(arg) + "'"
                                            : "unexpected argument '" + std::string(arg) + "'");
    }
    if (std::find(seen.begin(), seen.end(), flag->name) != seen.end()) {
      return usage(std::string(flag->name) + " given twice");
    }
    seen.emplace_back(flag->name);
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
    std::string const name = flag->name;
    switch (flag->kind) {
      case FlagKind::path:
        if (value->empty()) {
          return usage(name + ": empty path");
        }
        o.*(flag->path) = fs::path(std::string(*value));
        break;
      case FlagKind::layer: {
        long long v = 0;
        if (auto f = integer(name, *value, 0, v)) {
          return f;
        }
        o.layer = v;
        break;
      }
      case FlagKind::threads:
        if (auto f = integer(name, *value, 0, o.threads)) {
          return f;
        }
        break;
      case FlagKind::emulate: o.emulate = true; break;
      case FlagKind::help: o.help = true; break;
    }
  }
  if (o.help) {
    return std::nullopt;
  }
  for (auto [present, name] :
       {std::pair{o.config.has_value(), "--config config.json"},
        std::pair{o.weights.has_value(), "--weights model.safetensors"}, std::pair{o.layer.has_value(), "--layer N"},
        std::pair{o.input.has_value(), "--input x.npy"}, std::pair{o.output.has_value(), "--output y.npy"}}) {
    if (!present) {
      return usage(std::string(name) + " is required");
    }
  }
  if (*o.layer > 1'000'000) {
    return usage("--layer: " + std::to_string(*o.layer) + " is out of range");
  }
  return std::nullopt;
}

// ---- 2. Inputs --------------------------------------------------------------------------------

std::string shape_string(std::vector<std::int64_t> const& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return s + "]";
}

struct Inputs {
  moekit::io::MoeBlock<float> block;
  std::vector<float> x;  // [T, H]
  std::int64_t tokens = 0;
};

std::optional<Failure> load_inputs(Options const& o, Inputs& in) {
  if (Status s = moekit::io::load_moe_block(*o.config, *o.weights, static_cast<int>(*o.layer), in.block); !s) {
    return failure(s);
  }
  // float32 (or float16) as is; bf16 (stored as <u2 / <V2, NumPy has no bf16) widened exactly.
  moekit::io::NpyArray a;
  if (Status s = moekit::io::read_npy(*o.input, a); !s) {
    return failure(s);
  }
  if (moekit::io::converts_exactly<moekit::bf16_t>(a.type)) {
    std::vector<moekit::bf16_t> b;
    if (Status s = moekit::io::to_vector(a, b, o.input->string()); !s) {
      return failure(s);
    }
    in.x.resize(b.size());
    std::transform(b.begin(), b.end(), in.x.begin(), [](moekit::bf16_t v) { return v.to_float(); });
  } else if (Status s = moekit::io::to_vector(a, in.x, o.input->string()); !s) {
    return failure(s);
  }
  std::vector<std::int64_t> const& shape = a.shape;
  if (shape.size() != 2 || shape[1] != in.block.hidden) {
    return Failure{1, "input '" + o.input->string() +
                          "' must have shape [T, H] with H = " + std::to_string(in.block.hidden) +
                          " (hidden_size of '" + o.config->string() + "'), got " + shape_string(shape)};
  }
  in.tokens = shape[0];
  return std::nullopt;
}

// ---- 3. Routing --------------------------------------------------------------------------------

struct Routing {
  int slots = 0;
  std::vector<float> logits;   // [T, E]
  std::vector<int> ids;        // [T, K]
  std::vector<float> weights;  // [T, K]
};

using AnyRouter = std::variant<moekit::routing::TopK<max_k>, moekit::routing::GroupedTopK<max_k>>;

std::optional<Failure> route(Inputs const& in, Routing& r) {
  moekit::io::MoeBlock<float> const& b = in.block;
  std::int64_t const T = in.tokens, E = b.experts, H = b.hidden;
  AnyRouter router;
  if (b.router.kind == moekit::io::RouterKind::top_k) {
    moekit::routing::TopK<max_k> top_k{};
    if (Status s = moekit::io::make_top_k_router(b.router, top_k); !s) {
      return failure(s);
    }
    router = top_k;
  } else {
    moekit::routing::GroupedTopK<max_k> grouped{};
    float const* bias = b.correction_bias.empty() ? nullptr : b.correction_bias.data();
    if (Status s = moekit::io::make_grouped_router(b.router, bias, grouped); !s) {
      return failure(s);
    }
    router = grouped;
  }
  r.slots = b.router.num_experts_per_tok;
  r.logits.assign(static_cast<std::size_t>(T * E), 0.f);
  r.ids.assign(static_cast<std::size_t>(T * r.slots), static_cast<int>(E));
  r.weights.assign(r.ids.size(), 0.f);
  moekit::routing::GateProjectionBuffers<float, float, moekit::MemorySpace::host> const gp{
      HostTensor<float const, 2>::row_major(in.x.data(), {T, H}), b.router_weight_view(), b.router_bias_view(),
      HostTensor<float, 2>::row_major(r.logits.data(), {T, E})};
  if (Status s = moekit::cpu::gate_projection(gp); !s) {
    return failure(s);
  }
  moekit::routing::RouteBuffers<moekit::MemorySpace::host> const rb{
      HostTensor<float const, 2>::row_major(r.logits.data(), {T, E}),
      HostTensor<int, 2>::row_major(r.ids.data(), {T, r.slots}),
      HostTensor<float, 2>::row_major(r.weights.data(), {T, r.slots})};
  if (Status s = std::visit([&](auto const& rt) { return moekit::cpu::route(rt, rb); }, router); !s) {
    return failure(s);
  }
  return std::nullopt;
}

// ---- 4. Experts --------------------------------------------------------------------------------

template <moekit::experts::Expert Ex>
Status run_experts(Ex const& expert, Inputs const& in, Routing const& r, unsigned threads, std::vector<float>& y) {
  moekit::io::MoeBlock<float> const& b = in.block;
  std::int64_t const T = in.tokens, H = b.hidden;
  moekit::experts::ExpertProblem p;
  p.tokens = T;
  p.hidden = H;
  p.intermediate = b.intermediate;
  p.slots = r.slots;
  p.table = moekit::experts::all_computed(static_cast<int>(b.experts));
  p.shared_intermediate = b.shared_intermediate;
  p.position = b.position;
  y.assign(static_cast<std::size_t>(T * H), 0.f);
  moekit::experts::ExpertArgs<float, float, float, moekit::MemorySpace::host> const args{
      .x = HostTensor<float const, 2>::row_major(in.x.data(), {T, H}),
      .ids = HostTensor<int const, 2>::row_major(r.ids.data(), {T, r.slots}),
      .weights = HostTensor<float const, 2>::row_major(r.weights.data(), {T, r.slots}),
      .experts = b.expert_weights(),
      .shared = b.shared_weights(),
      .y = HostTensor<float, 2>::row_major(y.data(), {T, H})};
  std::size_t const bytes = moekit::cpu::experts_workspace_size<Ex, float, float>(expert, p);
  std::size_t const alignment = moekit::Workspace::default_alignment;
  std::vector<std::byte> storage(bytes + alignment);
  void* base = storage.data();
  std::size_t space = storage.size();
  base = std::align(alignment, bytes, base, space);
  moekit::Workspace ws(base, bytes);
  moekit::Diagnostics diagnostics{};
  moekit::cpu::ThreadPool pool(threads);
  return moekit::cpu::run_experts<Ex, float, float>(expert, p, args, ws, &diagnostics, &pool);
}

// The same stage as the device kernels run it (kernels/expert_stage.hpp), on moekit's CUDA
// emulator (device memory is host memory there): x and the weights rounded to bf16 once.
template <moekit::experts::Expert Ex>
Status run_experts_emulated(Ex const& expert, Inputs const& in, Routing const& r, std::vector<float>& y) {
  using moekit::bf16_t;
  using moekit::MemorySpace;
  using moekit::TensorView;
  moekit::io::MoeBlock<float> const& b = in.block;
  std::int64_t const T = in.tokens, H = b.hidden, E = b.experts, I = b.intermediate, Is = b.shared_intermediate;
  auto const narrow = [](std::vector<float> const& v) {
    std::vector<bf16_t> o(v.size());
    std::transform(v.begin(), v.end(), o.begin(), [](float f) { return bf16_t(f); });
    return o;
  };
  auto const x = narrow(in.x);
  auto const gate = narrow(b.gate), up = narrow(b.up), down = narrow(b.down);
  auto const gate_bias = narrow(b.gate_bias), up_bias = narrow(b.up_bias), down_bias = narrow(b.down_bias);
  auto const s_gate = narrow(b.shared_gate), s_up = narrow(b.shared_up), s_down = narrow(b.shared_down);
  auto const s_vector = narrow(b.shared_gate_vector);
  using View3 = TensorView<bf16_t const, 3, MemorySpace::device>;
  using View2 = TensorView<bf16_t const, 2, MemorySpace::device>;
  moekit::experts::ExpertArgs<bf16_t, bf16_t, float, MemorySpace::device> a;
  a.x = View2::row_major(x.data(), {T, H});
  a.ids = TensorView<int const, 2, MemorySpace::device>::row_major(r.ids.data(), {T, r.slots});
  a.weights = TensorView<float const, 2, MemorySpace::device>::row_major(r.weights.data(), {T, r.slots});
  a.experts.gate = View3::row_major(gate.data(), {E, I, H});
  a.experts.up = View3::row_major(up.data(), {E, I, H});
  a.experts.down = View3::row_major(down.data(), {E, H, I});
  if (!gate_bias.empty()) {
    a.experts.gate_bias = View2::row_major(gate_bias.data(), {E, I});
    a.experts.up_bias = View2::row_major(up_bias.data(), {E, I});
    a.experts.down_bias = View2::row_major(down_bias.data(), {E, H});
  }
  if (Is > 0) {
    a.shared.weights.gate = View3::row_major(s_gate.data(), {1, Is, H});
    a.shared.weights.up = View3::row_major(s_up.data(), {1, Is, H});
    a.shared.weights.down = View3::row_major(s_down.data(), {1, H, Is});
    if (!s_vector.empty()) {
      a.shared.gate = TensorView<bf16_t const, 1, MemorySpace::device>::row_major(s_vector.data(), {H});
    }
  }
  y.assign(static_cast<std::size_t>(T * H), 0.f);
  a.y = TensorView<float, 2, MemorySpace::device>::row_major(y.data(), {T, H});
  moekit::experts::ExpertProblem p;
  p.tokens = T;
  p.hidden = H;
  p.intermediate = I;
  p.slots = r.slots;
  p.table = moekit::experts::all_computed(static_cast<int>(E));
  p.shared_intermediate = Is;
  p.position = b.position;
  bool const decode = T <= 64;  // MoeLayer's AdaptiveConfig rule
  std::size_t const bytes =
      decode ? moekit::kernels::expert_stage_workspace_size<moekit::kernels::DecodeConfig, bf16_t>(p)
             : moekit::kernels::expert_stage_workspace_size<moekit::kernels::PrefillConfig, bf16_t>(p);
  std::size_t const alignment = moekit::Workspace::default_alignment;
  std::vector<std::byte> storage(bytes + alignment);
  void* base = storage.data();
  std::size_t space = storage.size();
  base = std::align(alignment, bytes, base, space);
  moekit::Workspace ws(base, bytes);
  moekit::Diagnostics diagnostics{};
  return decode
             ? moekit::kernels::run_expert_stage<moekit::kernels::DecodeConfig>(expert, p, a, ws, &diagnostics, nullptr)
             : moekit::kernels::run_expert_stage<moekit::kernels::PrefillConfig>(expert, p, a, ws, &diagnostics,
                                                                                 nullptr);
}

std::optional<Failure> experts_stage(Inputs const& in, Routing const& r, unsigned threads, bool emulate,
                                     std::vector<float>& y) {
  moekit::io::MoeBlock<float> const& b = in.block;
  Status s = Status::ok;
  if (b.function == moekit::io::HfExpertFunction::clamped_swiglu) {
    if (emulate) {
      s = run_experts_emulated(moekit::experts::ClampedSwiglu<moekit::bf16_t>{b.swiglu_alpha, b.swiglu_limit}, in, r,
                               y);
    } else {
      s = run_experts(moekit::experts::ClampedSwiglu<float>{b.swiglu_alpha, b.swiglu_limit}, in, r, threads, y);
    }
  } else if (emulate) {
    s = run_experts_emulated(moekit::experts::SwiGlu<moekit::bf16_t>{}, in, r, y);
  } else {
    s = run_experts(moekit::experts::SwiGlu<float>{}, in, r, threads, y);
  }
  if (!s) {
    return failure(s);
  }
  return std::nullopt;
}

// ---- 5. Outputs --------------------------------------------------------------------------------

struct OutputFile {
  fs::path path;
  moekit::io::NpyArray array;
};

// Writes every file to a temporary name beside it, then renames them all; on any failure
// removes what it wrote, so no output appears unless all do.
std::optional<Failure> write_outputs(std::vector<OutputFile> const& files) {
  std::vector<fs::path> written;
  auto undo = [&](Failure f) {
    std::error_code ignored;
    for (fs::path const& p : written) {
      fs::remove(p, ignored);
    }
    return f;
  };
  for (OutputFile const& f : files) {
    std::string name = f.path.filename().string();
    name.insert(0, 1, '.');
    name.append(".partial");
    fs::path const partial = f.path.parent_path() / name;
    if (Status s = moekit::io::write_npy(partial, f.array); !s) {
      return undo(failure(s));
    }
    written.push_back(partial);
  }
  for (std::size_t i = 0; i < files.size(); ++i) {
    std::error_code ec;
    fs::rename(written[i], files[i].path, ec);
    if (ec) {
      return undo(Failure{1, "cannot write '" + files[i].path.string() + "': " + ec.message()});
    }
  }
  return std::nullopt;
}

// <dir>/<stem>_weights.npy beside --router-out.
fs::path weights_path(fs::path const& ids) {
  return ids.parent_path() / (ids.stem().string() + "_weights" + ids.extension().string());
}

std::optional<Failure> run(int argc, char** argv) {
  Options o;
  if (auto f = parse_command_line(argc, argv, o)) {
    return f;
  }
  if (o.help) {
    print_help();
    return std::nullopt;
  }
  if (o.router_out && (fs::absolute(*o.router_out) == fs::absolute(*o.output) ||
                       fs::absolute(weights_path(*o.router_out)) == fs::absolute(*o.output))) {
    return usage("--router-out would overwrite --output '" + o.output->string() + "'");
  }
  Inputs in;
  if (auto f = load_inputs(o, in)) {
    return f;
  }
  Routing routed;
  if (auto f = route(in, routed)) {
    return f;
  }
  std::vector<float> y;
  if (auto f = experts_stage(in, routed, static_cast<unsigned>(o.threads), o.emulate, y)) {
    return f;
  }
  std::int64_t const T = in.tokens;
  std::vector<OutputFile> files;
  files.push_back({*o.output, moekit::io::make_npy_array(y.data(), {T, in.block.hidden})});
  if (o.router_out) {
    files.push_back({*o.router_out, moekit::io::make_npy_array(routed.ids.data(), {T, routed.slots})});
    files.push_back(
        {weights_path(*o.router_out), moekit::io::make_npy_array(routed.weights.data(), {T, routed.slots})});
  }
  if (auto f = write_outputs(files)) {
    return f;
  }
  std::printf("%s: layer %lld of %s (E %lld, K %d, H %lld, I %lld%s): %lld tokens -> %s\n", tool_name, *o.layer,
              in.block.model_type.c_str(), static_cast<long long>(in.block.experts), routed.slots,
              static_cast<long long>(in.block.hidden), static_cast<long long>(in.block.intermediate),
              in.block.shared_intermediate > 0 ? ", shared expert" : "", static_cast<long long>(T),
              o.output->string().c_str());
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
