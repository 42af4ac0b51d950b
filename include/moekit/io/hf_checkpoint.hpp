#pragma once
// The MoE block of one layer of a Hugging Face checkpoint (config.json + model.safetensors),
// loaded into moekit's canonical layouts (ALGORITHMS.md §1.10, §1.10.1). Host only; needs
// nlohmann-json (as io/hf_config.hpp and io/safetensors.hpp).
//
// Families (model_type) and the on-disk tensors read, with L = "model.layers.{layer}.":
//   mixtral      L.block_sparse_moe.gate.weight [E,H]; L.block_sparse_moe.experts.{e}.w1/w3.weight
//                [I,H] (gate/up), .w2.weight [H,I] (down). I = intermediate_size.
//   qwen2_moe    L.mlp.gate.weight; L.mlp.experts.{e}.{gate,up}_proj.weight [I,H], .down_proj.weight
//                [H,I]; shared: L.mlp.shared_expert.{gate,up,down}_proj.weight (I_s =
//                shared_expert_intermediate_size) and L.mlp.shared_expert_gate.weight [1,H] → gate [H].
//                I = moe_intermediate_size.
//   qwen3_moe    as qwen2_moe without shared tensors.       olmoe   as qwen3_moe, I = intermediate_size.
//   deepseek_v2, deepseek_v3   as qwen3_moe, I = moe_intermediate_size, plus (v3, noaux_tc)
//                L.mlp.gate.e_score_correction_bias [E]; shared: L.mlp.shared_experts.{gate,up,down}_proj
//                .weight, one MLP of I_s = n_shared_experts·I (absent when n_shared_experts is 0).
//                FP8 e4m3 block-scaled weights (the released V3 files): F8_E4M3 `….weight` with F32
//                `….weight_scale_inv` [ceil(out/b0), ceil(in/b1)], b = quantization_config.
//                weight_block_size (absent: 128 × 128); value = fp8 · scale_inv, the fp32 product as
//                the reference weight_dequant computes it. F8_E5M2 and FP8 without block scales are
//                refused (unsupported_config).
//   gpt_oss      L.mlp.router.weight [E,H], L.mlp.router.bias [E]; experts either as bf16/fp32
//                fused [in,out] tensors L.mlp.experts.gate_up_proj [E,H,2I] (columns interleaved:
//                2m gate, 2m+1 up), .gate_up_proj_bias [E,2I], .down_proj [E,I,H], .down_proj_bias
//                [E,H] — transposed once here — or as MXFP4: .gate_up_proj_blocks U8 [E,2I,H/32,16]
//                + .gate_up_proj_scales U8 [E,2I,H/32], .down_proj_blocks [E,H,I/32,16] + _scales
//                [E,H,I/32] ([out,in]; rows of gate_up interleaved), decoded with the §1.10 LUT. The
//                plain form is read when gate_up_proj is present. Expert function: clamped SwiGLU,
//                α = swiglu_alpha (absent: 1.702), limit = swiglu_limit (absent: 7).
//   llama4, llama4_text   [language_model.]model.layers.{layer}.feed_forward.router.weight [E,H];
//                .feed_forward.experts.gate_up_proj [E,H,2I] ([in,out]; columns 0..I-1 gate,
//                I..2I-1 up) and .down_proj [E,I,H], transposed here; shared expert
//                .feed_forward.shared_expert.{gate,up,down}_proj.weight of I = intermediate_size.
//                MoE layers: moe_layers when given, else (layer+1) % interleave_moe_layer_step == 0.
// Every family weights the expert output after the down projection (after_expert, §1.9.2),
// except Llama-4, which weights the expert input (on_input, §1.6).
//
// The weights: one .safetensors file holding the layer, or a sharded checkpoint's
// model.safetensors.index.json, whose shards the layer's tensors are gathered from.
//
// Which layers are MoE: mixtral, olmoe, gpt_oss every layer; llama4 as above; qwen2/3: layer ∉
// mlp_only_layers and (layer+1) % decoder_sparse_step == 0; deepseek: layer >=
// first_k_dense_replace and layer % moe_layer_freq == 0 (§1.4.4, §1.10). A dense layer, or one
// outside [0, num_hidden_layers), is an error naming the layer and the key that decides it.
//
// Element types: W = float or bf16_t, what the caller wants the expert weights in. BF16, F16 and
// F32 tensors are read (and FP8 above); bf16/f16 → float and bf16 → bf16 are exact, f32/f16 → bf16
// rounds to nearest even (bf16_t(float)), FP8 → bf16 rounds the fp32 product; MXFP4 values are
// LUT·2^k, exact in both. The router weight and biases are always float (exact from BF16/F16/F32).
//
// Errors (Status::invalid_argument unless noted; load_moe_block leaves `out` untouched): a missing
// tensor (named, with the file), a tensor of the wrong shape (got vs expected, named dims), a dtype
// that is not read (unscaled FP8, F8_E5M2: unsupported_config), a config whose expert count or
// sizes do not match the tensors, a layer out of range or dense, an unknown family, a config key
// missing or of the wrong type. Each message names the file (config or safetensors).

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/experts/expert_args.hpp"
#include "moekit/experts/mlp_weights.hpp"
#include "moekit/io/file.hpp"
#include "moekit/io/hf_config.hpp"
#include "moekit/io/safetensors.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace io {

// The element-wise function of the experts (and shared experts) of a block.
enum class HfExpertFunction { swiglu, clamped_swiglu };

// How gpt-oss's experts were stored (others: per_expert).
enum class HfExpertStorage { per_expert, fused_transposed, mxfp4 };

template <class W>
concept HfWeightElement = std::same_as<W, float> || std::same_as<W, bf16_t>;

// One layer's MoE block, owning its storage; the views below point into it (valid while the block
// lives and is not modified; moving a block keeps them valid, vectors move their buffers).
template <HfWeightElement W>
struct MoeBlock {
  std::string model_type;
  int layer = 0;
  std::int64_t experts = 0;              // E
  std::int64_t hidden = 0;               // H
  std::int64_t intermediate = 0;         // I per routed expert
  std::int64_t shared_intermediate = 0;  // I_s; 0: no shared expert
  RouterConfig router;                   // parse_router_config of the same config.json
  HfExpertFunction function = HfExpertFunction::swiglu;
  float swiglu_alpha = 1.702f;  // clamped_swiglu only
  float swiglu_limit = 7.0f;
  experts::WeightPosition position = experts::WeightPosition::after_expert;
  HfExpertStorage storage = HfExpertStorage::per_expert;

  std::vector<float> router_weight;    // [E, H]
  std::vector<float> router_bias;      // [E] (gpt-oss) or empty
  std::vector<float> correction_bias;  // [E] (DeepSeek-V3 noaux_tc) or empty

  // [E, I, H], [E, I, H], [E, H, I], row-major; biases [E, I], [E, I], [E, H] or empty.
  std::vector<W> gate, up, down, gate_bias, up_bias, down_bias;
  // The shared expert: [I_s, H], [I_s, H], [H, I_s]; gate vector [H] (Qwen2-MoE) or empty.
  std::vector<W> shared_gate, shared_up, shared_down, shared_gate_vector;

  [[nodiscard]] experts::MlpWeights<W, MemorySpace::host> expert_weights() const {
    experts::MlpWeights<W, MemorySpace::host> w;
    w.gate = HostTensor<W const, 3>::row_major(gate.data(), {experts, intermediate, hidden});
    w.up = HostTensor<W const, 3>::row_major(up.data(), {experts, intermediate, hidden});
    w.down = HostTensor<W const, 3>::row_major(down.data(), {experts, hidden, intermediate});
    if (!gate_bias.empty()) {
      w.gate_bias = HostTensor<W const, 2>::row_major(gate_bias.data(), {experts, intermediate});
      w.up_bias = HostTensor<W const, 2>::row_major(up_bias.data(), {experts, intermediate});
      w.down_bias = HostTensor<W const, 2>::row_major(down_bias.data(), {experts, hidden});
    }
    return w;
  }
  // present() is false when the block has no shared expert.
  [[nodiscard]] experts::SharedExpertWeights<W, MemorySpace::host> shared_weights() const {
    experts::SharedExpertWeights<W, MemorySpace::host> s;
    if (shared_intermediate == 0) {
      return s;
    }
    s.weights.gate = HostTensor<W const, 3>::row_major(shared_gate.data(), {1, shared_intermediate, hidden});
    s.weights.up = HostTensor<W const, 3>::row_major(shared_up.data(), {1, shared_intermediate, hidden});
    s.weights.down = HostTensor<W const, 3>::row_major(shared_down.data(), {1, hidden, shared_intermediate});
    if (!shared_gate_vector.empty()) {
      s.gate = HostTensor<W const, 1>::row_major(shared_gate_vector.data(), {hidden});
    }
    return s;
  }
  [[nodiscard]] HostTensor<float const, 2> router_weight_view() const {
    return HostTensor<float const, 2>::row_major(router_weight.data(), {experts, hidden});
  }
  // [E] or extent 0 (no bias), as routing::GateProjectionBuffers::bias takes it.
  [[nodiscard]] HostTensor<float const, 1> router_bias_view() const {
    return HostTensor<float const, 1>::row_major(router_bias.data(), {static_cast<std::int64_t>(router_bias.size())});
  }
};

namespace detail {

using Json = nlohmann::json;

// A dimension of an expected shape, named in messages ("E=8").
struct HfDim {
  char const* name;
  std::int64_t value;
};

inline std::string hf_dims_string(std::vector<HfDim> const& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    s += (i ? ", " : "") + std::string(dims[i].name) + "=" + std::to_string(dims[i].value);
  }
  return s + "]";
}

inline std::string hf_shape_string(std::vector<std::int64_t> const& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return s + "]";
}

// The tensors of one file, checked against expected shapes.
struct HfTensors {
  SafetensorsFile const& file;
  std::string const& config_source;
  std::int64_t block_rows = 128;  // FP8 scale blocks (quantization_config.weight_block_size)
  std::int64_t block_cols = 128;

  [[nodiscard]] bool has(std::string const& name) const { return file.contains(name); }

  Status entry(std::string const& name, std::vector<HfDim> const& want, SafetensorsEntry const*& out) const {
    auto const it = file.tensors.find(name);
    if (it == file.tensors.end()) {
      return error(Status::invalid_argument, "safetensors file '%s': missing tensor '%s' (expected shape %s)",
                   file.source.c_str(), name.c_str(), hf_dims_string(want).c_str());
    }
    SafetensorsEntry const& e = it->second;
    bool same = e.shape.size() == want.size();
    for (std::size_t d = 0; same && d < want.size(); ++d) {
      same = e.shape[d] == want[d].value;
    }
    if (!same) {
      return error(Status::invalid_argument,
                   "safetensors file '%s': tensor '%s' has shape %s, expected %s (sizes from %s)", file.source.c_str(),
                   name.c_str(), hf_shape_string(e.shape).c_str(), hf_dims_string(want).c_str(), config_source.c_str());
    }
    out = &e;
    return Status::ok;
  }

  // A floating tensor of shape `want`, widened exactly to float.
  Status floats(std::string const& name, std::vector<HfDim> const& want, std::vector<float>& out) const {
    SafetensorsEntry const* e = nullptr;
    if (Status s = entry(name, want, e); !s) {
      return s;
    }
    if (e->dtype == SafetensorsDtype::f8_e4m3) {
      return fp8_block_scaled(name, want, out);
    }
    if (e->dtype == SafetensorsDtype::f8_e5m2) {
      return error(Status::unsupported_config,
                   "safetensors file '%s': tensor '%s' is F8_E5M2: only F8_E4M3 block-scaled weights are supported",
                   file.source.c_str(), name.c_str());
    }
    if (e->dtype != SafetensorsDtype::bf16 && e->dtype != SafetensorsDtype::f16 && e->dtype != SafetensorsDtype::f32) {
      return error(Status::invalid_argument,
                   "safetensors file '%s': tensor '%s' has dtype %s, not supported (BF16, "
                   "F16 or F32)",
                   file.source.c_str(), name.c_str(), to_string(e->dtype));
    }
    std::vector<std::int64_t> shape;
    return read_tensor(file, name, out, shape);
  }

  // DeepSeek-V3's FP8 weights: value[r, c] = fp8[r, c] · scale_inv[r / block_rows, c / block_cols],
  // the fp32 product (as the reference weight_dequant), from `name` + "_scale_inv" (F32).
  Status fp8_block_scaled(std::string const& name, std::vector<HfDim> const& want, std::vector<float>& out) const {
    std::string const scale_name = name + "_scale_inv";
    if (want.size() != 2) {
      return error(Status::unsupported_config, "safetensors file '%s': tensor '%s' is F8_E4M3 but not a matrix",
                   file.source.c_str(), name.c_str());
    }
    if (!has(scale_name)) {
      return error(Status::unsupported_config,
                   "safetensors file '%s': tensor '%s' is F8_E4M3 without its block scales '%s' (per-tensor or "
                   "unscaled FP8 is not supported)",
                   file.source.c_str(), name.c_str(), scale_name.c_str());
    }
    std::int64_t const rows = want[0].value, cols = want[1].value;
    std::int64_t const brows = (rows + block_rows - 1) / block_rows, bcols = (cols + block_cols - 1) / block_cols;
    std::vector<float> scale, values;
    if (Status s = floats(scale_name, {{"ceil(rows/block)", brows}, {"ceil(cols/block)", bcols}}, scale); !s) {
      return s;
    }
    std::vector<std::int64_t> shape;
    if (Status s = read_tensor(file, name, values, shape); !s) {
      return s;
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t c = 0; c < cols; ++c) {
        values[static_cast<std::size_t>(r * cols + c)] *=
            scale[static_cast<std::size_t>((r / block_rows) * bcols + c / block_cols)];
      }
    }
    out = std::move(values);
    return Status::ok;
  }

  // A U8 tensor of shape `want` (MXFP4 blocks and scales).
  Status bytes(std::string const& name, std::vector<HfDim> const& want, std::span<std::byte const>& out) const {
    SafetensorsEntry const* e = nullptr;
    if (Status s = entry(name, want, e); !s) {
      return s;
    }
    if (e->dtype != SafetensorsDtype::u8) {
      return error(Status::invalid_argument, "safetensors file '%s': tensor '%s' has dtype %s, expected U8 (MXFP4)",
                   file.source.c_str(), name.c_str(), to_string(e->dtype));
    }
    out = file.bytes(*e);
    return Status::ok;
  }
};

template <class W>
[[nodiscard]] W hf_narrow(float v) noexcept {
  if constexpr (std::is_same_v<W, float>) {
    return v;
  } else {
    return W(v);  // round to nearest even; exact for values that came from bf16
  }
}

// Appends src converted to W. (No reserve here: reserving the exact size on every append would
// reallocate each time, quadratic over a layer's experts; callers reserve the total once.)
template <class W>
void hf_append(std::vector<W>& dst, std::vector<float> const& src) {
  if constexpr (std::is_same_v<W, float>) {
    dst.insert(dst.end(), src.begin(), src.end());
  } else {
    for (float v : src) {
      dst.push_back(hf_narrow<W>(v));
    }
  }
}

// MXFP4 (§1.10): [rows, cols] from blocks [rows, cols/32, 16] and scales [rows, cols/32].
inline void decode_mxfp4(std::span<std::byte const> blocks, std::span<std::byte const> scales, std::int64_t rows,
                         std::int64_t cols, std::vector<float>& out) {
  static constexpr float lut[16] = {+0.f, +0.5f, +1.f, +1.5f, +2.f, +3.f, +4.f, +6.f,
                                    -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
  out.resize(static_cast<std::size_t>(rows * cols));
  std::int64_t const nb = cols / 32;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      std::int64_t const b = c / 32;
      std::int64_t const j = c % 32;
      auto const byte = std::to_integer<unsigned>(blocks[static_cast<std::size_t>((r * nb + b) * 16 + j / 2)]);
      unsigned const code = (j % 2 == 0) ? (byte & 0x0Fu) : (byte >> 4);
      int const exponent = std::to_integer<int>(scales[static_cast<std::size_t>(r * nb + b)]) - 127;
      out[static_cast<std::size_t>(r * cols + c)] = std::ldexp(lut[code], exponent);
    }
  }
}

// The per-family facts the loader needs.
struct HfFamily {
  char const* model_type;
  char const* mlp;               // module prefix after "model.layers.{l}."
  char const* router;            // router module inside it
  char const* intermediate_key;  // per-expert I
  char const* gate_name;         // per-expert projection names
  char const* up_name;
  char const* down_name;
  enum class Placement { every, qwen, deepseek, llama4 } placement;
  enum class Shared { none, qwen2, deepseek, llama4 } shared;
};

inline constexpr HfFamily hf_families[] = {
    {"mixtral", "block_sparse_moe", "gate", "intermediate_size", "w1", "w3", "w2", HfFamily::Placement::every,
     HfFamily::Shared::none},
    {"qwen2_moe", "mlp", "gate", "moe_intermediate_size", "gate_proj", "up_proj", "down_proj",
     HfFamily::Placement::qwen, HfFamily::Shared::qwen2},
    {"qwen3_moe", "mlp", "gate", "moe_intermediate_size", "gate_proj", "up_proj", "down_proj",
     HfFamily::Placement::qwen, HfFamily::Shared::none},
    {"olmoe", "mlp", "gate", "intermediate_size", "gate_proj", "up_proj", "down_proj", HfFamily::Placement::every,
     HfFamily::Shared::none},
    {"deepseek_v2", "mlp", "gate", "moe_intermediate_size", "gate_proj", "up_proj", "down_proj",
     HfFamily::Placement::deepseek, HfFamily::Shared::deepseek},
    {"deepseek_v3", "mlp", "gate", "moe_intermediate_size", "gate_proj", "up_proj", "down_proj",
     HfFamily::Placement::deepseek, HfFamily::Shared::deepseek},
    {"gpt_oss", "mlp", "router", "intermediate_size", "", "", "", HfFamily::Placement::every, HfFamily::Shared::none},
    {"llama4_text", "feed_forward", "router", "intermediate_size", "", "", "", HfFamily::Placement::llama4,
     HfFamily::Shared::llama4},
    {"llama4", "feed_forward", "router", "intermediate_size", "", "", "", HfFamily::Placement::llama4,
     HfFamily::Shared::llama4},
};

// Integer key, required or with a default (absent or null → `fallback`; fallback < 0: required).
inline Status hf_int(ConfigReader const& r, char const* key, std::int64_t fallback, std::int64_t& out) {
  if (!r.has(key)) {
    if (fallback < 0) {
      return r.fail(std::string("missing key '") + key + "'");
    }
    out = fallback;
    return Status::ok;
  }
  int v = 0;
  if (Status s = r.integer(key, v); !s) {
    return s;
  }
  out = v;
  return Status::ok;
}

// quantization_config.weight_block_size [rows, cols] (absent: 128 × 128, DeepSeek-V3's).
inline Status hf_fp8_blocks(Json const& config, std::string const& source, std::int64_t& rows, std::int64_t& cols) {
  auto const q = config.find("quantization_config");
  if (q == config.end() || !q->is_object() || !q->contains("weight_block_size")) {
    return Status::ok;
  }
  Json const& b = q->at("weight_block_size");
  if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() ||
      b[0].get<std::int64_t>() < 1 || b[1].get<std::int64_t>() < 1) {
    return error(Status::invalid_argument,
                 "%s: key 'quantization_config.weight_block_size' must be two positive integers (got %s)",
                 source.c_str(), show(b).c_str());
  }
  rows = b[0].get<std::int64_t>();
  cols = b[1].get<std::int64_t>();
  return Status::ok;
}

// Whether `layer` is an MoE layer of this family; `why` says what makes it dense.
inline Status hf_is_moe_layer(HfFamily const& f, Json const& section, ConfigReader const& r, int layer, bool& moe,
                              std::string& why) {
  moe = true;
  if (f.placement == HfFamily::Placement::qwen) {
    std::int64_t step = 1;
    if (Status s = hf_int(r, "decoder_sparse_step", 1, step); !s) {
      return s;
    }
    if (step < 1) {
      return r.fail("key 'decoder_sparse_step' must be >= 1 (got " + std::to_string(step) + ")");
    }
    if (r.has("mlp_only_layers")) {
      Json const& list = section.at("mlp_only_layers");
      if (!list.is_array()) {
        return r.fail("key 'mlp_only_layers' must be a list of layer indices (got " + show(list) + ")");
      }
      for (Json const& v : list) {
        if (!v.is_number_integer()) {
          return r.fail("key 'mlp_only_layers' must hold integers (got " + show(v) + ")");
        }
        if (v.get<std::int64_t>() == layer) {
          moe = false;
          why = "it is listed in mlp_only_layers";
          return Status::ok;
        }
      }
    }
    if ((layer + 1) % step != 0) {
      moe = false;
      why = "(layer + 1) % decoder_sparse_step (" + std::to_string(step) + ") != 0";
    }
  } else if (f.placement == HfFamily::Placement::llama4) {
    if (r.has("moe_layers")) {
      Json const& list = section.at("moe_layers");
      if (!list.is_array()) {
        return r.fail("key 'moe_layers' must be a list of layer indices (got " + show(list) + ")");
      }
      moe = false;
      for (Json const& v : list) {
        if (!v.is_number_integer()) {
          return r.fail("key 'moe_layers' must hold integers (got " + show(v) + ")");
        }
        moe = moe || v.get<std::int64_t>() == layer;
      }
      if (!moe) {
        why = "it is not listed in moe_layers";
      }
      return Status::ok;
    }
    std::int64_t step = 1;
    if (Status s = hf_int(r, "interleave_moe_layer_step", 1, step); !s) {
      return s;
    }
    if (step < 1) {
      return r.fail("key 'interleave_moe_layer_step' must be >= 1 (got " + std::to_string(step) + ")");
    }
    if ((layer + 1) % step != 0) {
      moe = false;
      why = "(layer + 1) % interleave_moe_layer_step (" + std::to_string(step) + ") != 0";
    }
  } else if (f.placement == HfFamily::Placement::deepseek) {
    std::int64_t first = 0, freq = 1;
    if (Status s = hf_int(r, "first_k_dense_replace", 0, first); !s) {
      return s;
    }
    if (Status s = hf_int(r, "moe_layer_freq", 1, freq); !s) {
      return s;
    }
    if (freq < 1) {
      return r.fail("key 'moe_layer_freq' must be >= 1 (got " + std::to_string(freq) + ")");
    }
    if (layer < first) {
      moe = false;
      why = "layers below first_k_dense_replace (" + std::to_string(first) + ") use a dense MLP";
    } else if (layer % freq != 0) {
      moe = false;
      why = "layer % moe_layer_freq (" + std::to_string(freq) + ") != 0";
    }
  }
  return Status::ok;
}

// Per-expert tensors {prefix}{e}.{name}.weight; checks that the file holds exactly E experts.
template <class W>
Status hf_per_expert(HfTensors const& t, HfFamily const& f, std::string const& prefix, MoeBlock<W>& b) {
  std::int64_t const E = b.experts, H = b.hidden, I = b.intermediate;
  auto const name = [&](std::int64_t e, char const* proj) {
    return prefix + std::to_string(e) + "." + proj + ".weight";
  };
  if (t.has(name(E, f.gate_name))) {
    std::int64_t n = E;
    while (t.has(name(n, f.gate_name))) {
      ++n;
    }
    return error(Status::invalid_argument,
                 "%s says %lld experts but safetensors file '%s' holds expert tensors up to '%s' (%lld experts)",
                 t.config_source.c_str(), static_cast<long long>(E), t.file.source.c_str(),
                 name(n - 1, f.gate_name).c_str(), static_cast<long long>(n));
  }
  std::vector<float> v;
  for (std::vector<W>* w : {&b.gate, &b.up, &b.down}) {
    w->reserve(static_cast<std::size_t>(E * I * H));
  }
  for (std::int64_t e = 0; e < E; ++e) {
    if (!t.has(name(e, f.gate_name)) && e > 0 && t.has(name(e - 1, f.gate_name))) {
      return error(Status::invalid_argument,
                   "%s says %lld experts but safetensors file '%s' holds tensors for %lld (missing tensor '%s')",
                   t.config_source.c_str(), static_cast<long long>(E), t.file.source.c_str(), static_cast<long long>(e),
                   name(e, f.gate_name).c_str());
    }
    if (Status s = t.floats(name(e, f.gate_name), {{"I", I}, {"H", H}}, v); !s) {
      return s;
    }
    hf_append(b.gate, v);
    if (Status s = t.floats(name(e, f.up_name), {{"I", I}, {"H", H}}, v); !s) {
      return s;
    }
    hf_append(b.up, v);
    if (Status s = t.floats(name(e, f.down_name), {{"H", H}, {"I", I}}, v); !s) {
      return s;
    }
    hf_append(b.down, v);
  }
  return Status::ok;
}

// [E, rows, cols] → [E, cols, rows]: the [in, out] fused tensors to [out, in].
inline std::vector<float> hf_transpose(std::vector<float> const& src, std::int64_t experts, std::int64_t rows,
                                       std::int64_t cols) {
  std::vector<float> dst(src.size());
  for (std::int64_t e = 0; e < experts; ++e) {
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t c = 0; c < cols; ++c) {
        dst[static_cast<std::size_t>((e * cols + c) * rows + r)] =
            src[static_cast<std::size_t>((e * rows + r) * cols + c)];
      }
    }
  }
  return dst;
}

// The fused [in, out] tensors gate_up_proj [E, H, 2I] and down_proj [E, I, H] (gpt-oss, Llama-4),
// transposed to [E, 2I, H] and [E, H, I].
inline Status hf_fused_transposed(HfTensors const& t, std::string const& prefix, std::int64_t E, std::int64_t H,
                                  std::int64_t I, std::vector<float>& gate_up, std::vector<float>& down) {
  std::vector<float> gu_t, down_t;
  if (Status s = t.floats(prefix + "gate_up_proj", {{"E", E}, {"H", H}, {"2I", 2 * I}}, gu_t); !s) {
    return s;
  }
  if (Status s = t.floats(prefix + "down_proj", {{"E", E}, {"I", I}, {"H", H}}, down_t); !s) {
    return s;
  }
  gate_up = hf_transpose(gu_t, E, H, 2 * I);
  down = hf_transpose(down_t, E, I, H);
  return Status::ok;
}

// Llama-4 experts: gate_up_proj [E, H, 2I] ([in, out]; gate = columns 0..I-1, up = I..2I-1) and
// down_proj [E, I, H], no biases.
template <class W>
Status hf_llama4_experts(HfTensors const& t, std::string const& prefix, MoeBlock<W>& b) {
  std::int64_t const E = b.experts, H = b.hidden, I = b.intermediate;
  b.storage = HfExpertStorage::fused_transposed;
  std::vector<float> gate_up, down;  // [E, 2I, H]: rows 0..I-1 gate, I..2I-1 up
  if (Status s = hf_fused_transposed(t, prefix, E, H, I, gate_up, down); !s) {
    return s;
  }
  b.gate.reserve(static_cast<std::size_t>(E * I * H));
  b.up.reserve(static_cast<std::size_t>(E * I * H));
  for (std::int64_t e = 0; e < E; ++e) {
    auto const first = gate_up.begin() + static_cast<std::ptrdiff_t>(e * 2 * I * H);
    auto const middle = first + static_cast<std::ptrdiff_t>(I * H);
    hf_append(b.gate, std::vector<float>(first, middle));
    hf_append(b.up, std::vector<float>(middle, middle + static_cast<std::ptrdiff_t>(I * H)));
  }
  hf_append(b.down, down);
  return Status::ok;
}

// gpt-oss experts: plain fused [in, out] tensors or MXFP4 blocks, de-interleaved to gate/up.
template <class W>
Status hf_gpt_oss_experts(HfTensors const& t, std::string const& prefix, MoeBlock<W>& b) {
  std::int64_t const E = b.experts, H = b.hidden, I = b.intermediate;
  std::vector<float> gate_up, down, gu_bias, d_bias;  // gate_up as [E, 2I, H], down as [E, H, I]
  if (t.has(prefix + "gate_up_proj")) {
    b.storage = HfExpertStorage::fused_transposed;
    if (Status s = hf_fused_transposed(t, prefix, E, H, I, gate_up, down); !s) {
      return s;
    }
  } else if (t.has(prefix + "gate_up_proj_blocks")) {
    b.storage = HfExpertStorage::mxfp4;
    if (H % 32 != 0 || I % 32 != 0) {
      return error(Status::invalid_argument,
                   "%s: MXFP4 experts need hidden_size and intermediate_size divisible by "
                   "32 (got %lld, %lld)",
                   t.config_source.c_str(), static_cast<long long>(H), static_cast<long long>(I));
    }
    std::span<std::byte const> blocks, scales;
    if (Status s =
            t.bytes(prefix + "gate_up_proj_blocks", {{"E", E}, {"2I", 2 * I}, {"H/32", H / 32}, {"16", 16}}, blocks);
        !s) {
      return s;
    }
    if (Status s = t.bytes(prefix + "gate_up_proj_scales", {{"E", E}, {"2I", 2 * I}, {"H/32", H / 32}}, scales); !s) {
      return s;
    }
    decode_mxfp4(blocks, scales, E * 2 * I, H, gate_up);
    if (Status s = t.bytes(prefix + "down_proj_blocks", {{"E", E}, {"H", H}, {"I/32", I / 32}, {"16", 16}}, blocks);
        !s) {
      return s;
    }
    if (Status s = t.bytes(prefix + "down_proj_scales", {{"E", E}, {"H", H}, {"I/32", I / 32}}, scales); !s) {
      return s;
    }
    decode_mxfp4(blocks, scales, E * H, I, down);
  } else {
    return error(Status::invalid_argument,
                 "safetensors file '%s': missing tensor '%sgate_up_proj' (or its MXFP4 form '%sgate_up_proj_blocks')",
                 t.file.source.c_str(), prefix.c_str(), prefix.c_str());
  }
  if (Status s = t.floats(prefix + "gate_up_proj_bias", {{"E", E}, {"2I", 2 * I}}, gu_bias); !s) {
    return s;
  }
  if (Status s = t.floats(prefix + "down_proj_bias", {{"E", E}, {"H", H}}, d_bias); !s) {
    return s;
  }
  // Rows 2m (gate) and 2m+1 (up) of each expert's [2I, H].
  b.gate.reserve(static_cast<std::size_t>(E * I * H));
  b.up.reserve(static_cast<std::size_t>(E * I * H));
  for (std::int64_t e = 0; e < E; ++e) {
    for (std::int64_t m = 0; m < I; ++m) {
      for (std::int64_t h = 0; h < H; ++h) {
        b.gate.push_back(hf_narrow<W>(gate_up[static_cast<std::size_t>((e * 2 * I + 2 * m) * H + h)]));
      }
      for (std::int64_t h = 0; h < H; ++h) {
        b.up.push_back(hf_narrow<W>(gate_up[static_cast<std::size_t>((e * 2 * I + 2 * m + 1) * H + h)]));
      }
      b.gate_bias.push_back(hf_narrow<W>(gu_bias[static_cast<std::size_t>(e * 2 * I + 2 * m)]));
    }
    for (std::int64_t m = 0; m < I; ++m) {
      b.up_bias.push_back(hf_narrow<W>(gu_bias[static_cast<std::size_t>(e * 2 * I + 2 * m + 1)]));
    }
  }
  hf_append(b.down, down);
  hf_append(b.down_bias, d_bias);
  return Status::ok;
}

}  // namespace detail

// Loads layer `layer`'s MoE block from a parsed config.json and a read .safetensors file.
// `config_source` names the config in messages. `out` is untouched on failure.
template <HfWeightElement W>
[[nodiscard]] Status load_moe_block(nlohmann::json const& config, std::string_view config_source,
                                    SafetensorsFile const& file, int layer, MoeBlock<W>& out) {
  using detail::HfFamily;
  std::string const source(config_source);
  RouterConfig router;
  if (Status s = parse_router_config(config, router, source); !s) {
    return s;
  }
  nlohmann::json const& section = router_section(config);
  detail::ConfigReader const r(section, source);
  HfFamily const* family = nullptr;
  for (HfFamily const& f : detail::hf_families) {
    if (router.model_type == f.model_type) {
      family = &f;
    }
  }
  if (family == nullptr) {
    return r.fail("model_type '" + router.model_type +
                  "' has no checkpoint mapping (mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, "
                  "gpt_oss, llama4)");
  }
  MoeBlock<W> b;
  b.model_type = router.model_type;
  b.layer = layer;
  b.experts = router.num_experts;
  if (Status s = detail::hf_int(r, "hidden_size", -1, b.hidden); !s) {
    return s;
  }
  if (Status s = detail::hf_int(r, family->intermediate_key, -1, b.intermediate); !s) {
    return s;
  }
  if (b.hidden < 1 || b.intermediate < 1 || b.experts < 1) {
    return r.fail("hidden_size, " + std::string(family->intermediate_key) + " and the expert count must be >= 1 (got " +
                  std::to_string(b.hidden) + ", " + std::to_string(b.intermediate) + ", " + std::to_string(b.experts) +
                  ")");
  }
  if (r.has("num_hidden_layers")) {
    std::int64_t layers = 0;
    if (Status s = detail::hf_int(r, "num_hidden_layers", -1, layers); !s) {
      return s;
    }
    if (layer < 0 || layer >= layers) {
      return r.fail("layer " + std::to_string(layer) +
                    " is out of range (num_hidden_layers = " + std::to_string(layers) + ")");
    }
  } else if (layer < 0) {
    return r.fail("layer " + std::to_string(layer) + " is out of range (negative)");
  }
  bool moe = true;
  std::string why;
  if (Status s = detail::hf_is_moe_layer(*family, section, r, layer, moe, why); !s) {
    return s;
  }
  if (!moe) {
    return r.fail("layer " + std::to_string(layer) + " is a dense layer, not MoE: " + why);
  }
  if (r.has("hidden_act") && router.model_type != "gpt_oss") {  // gpt-oss's function is fixed by the family
    std::string act;
    if (Status s = r.string("hidden_act", act); !s) {
      return s;
    }
    if (act != "silu") {
      return r.fail("hidden_act '" + act + "' is not supported for model_type '" + b.model_type + "' (silu)");
    }
  }
  if (router.model_type == "gpt_oss") {
    b.function = HfExpertFunction::clamped_swiglu;
    for (auto [key, value] : {std::pair{"swiglu_limit", &b.swiglu_limit}, std::pair{"swiglu_alpha", &b.swiglu_alpha}}) {
      if (r.has(key)) {
        if (Status s = r.number(key, *value); !s) {
          return s;
        }
      }
    }
    if (!(b.swiglu_limit > 0.f)) {
      return r.fail("key 'swiglu_limit' must be > 0");
    }
  }

  detail::HfTensors t{file, source};
  if (Status s = detail::hf_fp8_blocks(config, source, t.block_rows, t.block_cols); !s) {
    return s;
  }
  // Llama-4's multimodal checkpoints nest the text model under language_model.
  std::string prefix = "model.layers." + std::to_string(layer) + "." + family->mlp + ".";
  if (family->placement == HfFamily::Placement::llama4 && !t.has(prefix + "router.weight") &&
      t.has("language_model." + prefix + "router.weight")) {
    prefix = "language_model." + prefix;
  }
  std::int64_t const E = b.experts, H = b.hidden;
  std::string const router_name = prefix + family->router + ".weight";
  if (auto const it = file.tensors.find(router_name); it != file.tensors.end()) {
    std::vector<std::int64_t> const& got = it->second.shape;
    if (got.size() == 2 && got[1] == H && got[0] != E) {  // the expert count is what disagrees
      return error(Status::invalid_argument,
                   "%s says %lld experts but tensor '%s' in safetensors file '%s' has shape %s (%lld experts)",
                   source.c_str(), static_cast<long long>(E), router_name.c_str(), file.source.c_str(),
                   detail::hf_shape_string(got).c_str(), static_cast<long long>(got[0]));
    }
  }
  if (Status s = t.floats(router_name, {{"E", E}, {"H", H}}, b.router_weight); !s) {
    return s;
  }
  if (router.model_type == "gpt_oss") {
    if (Status s = t.floats(prefix + "router.bias", {{"E", E}}, b.router_bias); !s) {
      return s;
    }
  }
  if (router.uses_correction_bias()) {
    if (Status s = t.floats(prefix + "gate.e_score_correction_bias", {{"E", E}}, b.correction_bias); !s) {
      return s;
    }
  }
  if (router.model_type == "gpt_oss") {
    if (Status s = detail::hf_gpt_oss_experts(t, prefix + "experts.", b); !s) {
      return s;
    }
  } else if (family->placement == HfFamily::Placement::llama4) {
    b.position = experts::WeightPosition::on_input;  // E(w·x), ALGORITHMS.md §1.6
    if (Status s = detail::hf_llama4_experts(t, prefix + "experts.", b); !s) {
      return s;
    }
  } else if (Status s = detail::hf_per_expert(t, *family, prefix + "experts.", b); !s) {
    return s;
  }

  // The shared expert.
  std::string shared_prefix;
  if (family->shared == HfFamily::Shared::qwen2) {
    if (Status s = detail::hf_int(r, "shared_expert_intermediate_size", 0, b.shared_intermediate); !s) {
      return s;
    }
    shared_prefix = prefix + "shared_expert.";
  } else if (family->shared == HfFamily::Shared::llama4) {
    b.shared_intermediate = b.intermediate;  // the shared expert has the routed experts' size
    shared_prefix = prefix + "shared_expert.";
  } else if (family->shared == HfFamily::Shared::deepseek) {
    std::int64_t n_shared = 0;
    if (Status s = detail::hf_int(r, "n_shared_experts", 0, n_shared); !s) {
      return s;
    }
    b.shared_intermediate = n_shared * b.intermediate;
    shared_prefix = prefix + "shared_experts.";
  }
  if (b.shared_intermediate < 0) {
    return r.fail("the shared expert's intermediate size must be >= 0 (got " + std::to_string(b.shared_intermediate) +
                  ")");
  }
  if (b.shared_intermediate > 0) {
    std::int64_t const Is = b.shared_intermediate;
    std::vector<float> v;
    if (Status s = t.floats(shared_prefix + "gate_proj.weight", {{"I_s", Is}, {"H", H}}, v); !s) {
      return s;
    }
    detail::hf_append(b.shared_gate, v);
    if (Status s = t.floats(shared_prefix + "up_proj.weight", {{"I_s", Is}, {"H", H}}, v); !s) {
      return s;
    }
    detail::hf_append(b.shared_up, v);
    if (Status s = t.floats(shared_prefix + "down_proj.weight", {{"H", H}, {"I_s", Is}}, v); !s) {
      return s;
    }
    detail::hf_append(b.shared_down, v);
    if (family->shared == HfFamily::Shared::qwen2) {
      if (Status s = t.floats(prefix + "shared_expert_gate.weight", {{"1", 1}, {"H", H}}, v); !s) {
        return s;
      }
      detail::hf_append(b.shared_gate_vector, v);
    }
  }
  b.router = std::move(router);
  out = std::move(b);
  return Status::ok;
}

// The tensors of layer `layer` ("model.layers.{layer}.*") of a sharded checkpoint, gathered from
// the shards its index (model.safetensors.index.json: {"weight_map": {tensor: shard file}}) names,
// into one SafetensorsFile whose source is the index (shards are read one at a time; only the
// layer's bytes are kept). Errors name the index or the shard.
[[nodiscard]] inline Status read_sharded_layer(std::filesystem::path const& index_path, int layer,
                                               SafetensorsFile& out) {
  std::string const index = index_path.string();
  std::vector<std::byte> bytes;
  if (Status s = read_file(index_path, "safetensors index", bytes); !s) {
    return s;
  }
  auto const* text = reinterpret_cast<char const*>(bytes.data());
  nlohmann::json const j = nlohmann::json::parse(text, text + bytes.size(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j.at("weight_map").is_object()) {
    return error(Status::invalid_argument,
                 "safetensors index '%s': not a model.safetensors.index.json (a JSON object with a 'weight_map' "
                 "object)",
                 index.c_str());
  }
  std::string const prefix = "model.layers." + std::to_string(layer) + ".";
  std::map<std::string, std::vector<std::string>> by_shard;  // shard file → the layer's tensors in it
  for (auto const& [name, shard] : j.at("weight_map").items()) {
    if (!shard.is_string()) {
      return error(Status::invalid_argument, "safetensors index '%s': weight_map['%s'] must be a file name (got %s)",
                   index.c_str(), name.c_str(), detail::show(shard).c_str());
    }
    if (name.compare(0, prefix.size(), prefix) == 0) {
      by_shard[shard.get<std::string>()].push_back(name);
    }
  }
  if (by_shard.empty()) {
    return error(Status::invalid_argument, "safetensors index '%s': no tensor of layer %d ('%s*')", index.c_str(),
                 layer, prefix.c_str());
  }
  SafetensorsFile merged;
  merged.source = index;
  for (auto const& [shard, names] : by_shard) {
    SafetensorsFile file;
    if (Status s = read_safetensors(index_path.parent_path() / shard, file); !s) {
      return s;
    }
    for (std::string const& name : names) {
      auto const it = file.tensors.find(name);
      if (it == file.tensors.end()) {
        return error(Status::invalid_argument,
                     "safetensors index '%s' puts tensor '%s' in '%s', which does not hold it", index.c_str(),
                     name.c_str(), file.source.c_str());
      }
      SafetensorsEntry e = it->second;
      std::span<std::byte const> const data = file.bytes(it->second);
      e.begin = static_cast<std::int64_t>(merged.buffer.size());
      e.end = e.begin + static_cast<std::int64_t>(data.size());
      merged.buffer.insert(merged.buffer.end(), data.begin(), data.end());
      merged.tensors[name] = std::move(e);
    }
  }
  out = std::move(merged);
  return Status::ok;
}

// Reads config.json and the weights, then load_moe_block. `weights_path` is a .safetensors file,
// or a sharded checkpoint's index (a path ending in .json: read_sharded_layer).
template <HfWeightElement W>
[[nodiscard]] Status load_moe_block(std::filesystem::path const& config_path, std::filesystem::path const& weights_path,
                                    int layer, MoeBlock<W>& out) {
  nlohmann::json config;
  if (Status s = read_json_file(config_path, config); !s) {
    return s;
  }
  SafetensorsFile file;
  if (Status s = weights_path.extension() == ".json" ? read_sharded_layer(weights_path, layer, file)
                                                     : read_safetensors(weights_path, file);
      !s) {
    return s;
  }
  return load_moe_block(config, "config '" + config_path.string() + "'", file, layer, out);
}

}  // namespace io
MOEKIT_NAMESPACE_END
