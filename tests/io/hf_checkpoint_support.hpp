#pragma once
// Tiny synthetic Hugging Face MoE checkpoints for tests (tests/io/hf_checkpoint_test.cpp,
// tests/tools/moekit_run_test.cpp): a config.json and a model.safetensors with the exact on-disk
// tensor names and shapes of ALGORITHMS.md §1.10, random values, written with io/safetensors.hpp.
// The raw tensors are kept (as float, or bytes for MXFP4) with accessors that read them in their
// ON-DISK layout, so a test can compute the block independently of io/hf_checkpoint.hpp; and
// `reference_block` runs a loaded block through the host references (gate projection, routing,
// combine), the oracle both tests compare with.
//
// Families (layers, which are MoE): mixtral H 24 I 16 E 8 K 2 (2 layers, both MoE); qwen2_moe
// E 8 K 2 I_s 20 + shared gate, mlp_only_layers [0] (2 layers, layer 1 MoE); qwen3_moe E 8 K 2
// norm, decoder_sparse_step 2 (layer 1 MoE); olmoe E 8 K 2 (both MoE); deepseek_v3 E 16 K 2, 4
// groups, top-2 groups, 1 shared expert, ρ 2.5, first_k_dense_replace 1 (3 layers, 1 and 2 MoE);
// deepseek_v3_fp8 the same with F8_E4M3 expert/shared weights and F32 weight_scale_inv in 8 × 16
// blocks (quantization_config.weight_block_size; H = 24 leaves a partial column block);
// gpt_oss H = I = 32 E 4 K 2, swiglu_limit 1 (so the clamp acts), bf16 fused [in,out] or MXFP4;
// llama4 (text_config, language_model. prefix) E 8 K 1, fused [in,out] experts, shared expert,
// interleave_moe_layer_step 2 (layer 1 MoE), weight on the expert input.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moekit/core/float16.hpp"
#include "moekit/core/float8.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/host/expert_reference.hpp"
#include "moekit/host/gate_projection_reference.hpp"
#include "moekit/host/top_k_reference.hpp"
#include "moekit/io/hf_checkpoint.hpp"
#include "moekit/io/hf_config.hpp"
#include "moekit/io/safetensors.hpp"

namespace moekit::test_hf {

namespace fs = std::filesystem;

// Every family the loader maps, in the order the tests run them.
inline std::vector<std::string> const families = {"mixtral", "qwen2_moe",     "qwen3_moe",
                                                  "olmoe",   "deepseek_v3",   "deepseek_v3_fp8",
                                                  "gpt_oss", "gpt_oss_mxfp4", "llama4"};

// A fresh folder below `root`, removed with everything in it at the end of the scope.
struct TempDir {
  fs::path dir;
  explicit TempDir(fs::path const& root = fs::temp_directory_path()) {
    std::random_device rd;
    dir = root / ("moekit_hf_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  TempDir(TempDir const&) = delete;
  TempDir& operator=(TempDir const&) = delete;
};

struct RawTensor {
  std::vector<std::int64_t> shape;
  std::vector<float> values;        // floating tensors (the values written, after any bf16 rounding)
  std::vector<std::uint8_t> bytes;  // U8 tensors (MXFP4 blocks and scales)
  io::SafetensorsDtype dtype = io::SafetensorsDtype::bf16;

  // Row-major element of a floating tensor.
  [[nodiscard]] double at(std::initializer_list<std::int64_t> index) const { return double(values[offset(index)]); }
  [[nodiscard]] std::uint8_t byte(std::initializer_list<std::int64_t> index) const { return bytes[offset(index)]; }
  [[nodiscard]] std::size_t offset(std::initializer_list<std::int64_t> index) const {
    std::int64_t o = 0;
    std::size_t d = 0;
    for (std::int64_t i : index) {
      o = o * shape[d++] + i;
    }
    return static_cast<std::size_t>(o);
  }
};

struct Checkpoint {
  std::string family;  // as in `families` (gpt_oss_mxfp4 is model_type gpt_oss)
  std::string model_type;
  fs::path config_path, weights_path;
  nlohmann::json config;
  std::map<std::string, RawTensor> tensors;
  int layer = 0;         // the MoE layer the tests load (the last one)
  int dense_layer = -1;  // a dense layer, or -1 when every layer is MoE
  int layers = 0;
  std::int64_t hidden = 0, intermediate = 0, experts = 0, shared_intermediate = 0;
  int k = 0;
  std::int64_t block_rows = 0, block_cols = 0;  // FP8 scale blocks; 0: not FP8

  [[nodiscard]] RawTensor const& t(std::string const& name) const { return tensors.at(name); }
  [[nodiscard]] std::string prefix(int l) const {
    if (model_type == "llama4") {
      return "language_model.model.layers." + std::to_string(l) + ".feed_forward.";
    }
    return "model.layers." + std::to_string(l) + "." + (model_type == "mixtral" ? "block_sparse_moe." : "mlp.");
  }
};

struct Writer {
  std::mt19937 rng;
  io::SafetensorsDtype dtype = io::SafetensorsDtype::bf16;
  std::map<std::string, io::SafetensorsTensor> files;
  std::map<std::string, RawTensor>* raw = nullptr;

  // A floating tensor of uniform(-scale, scale) values, stored as `dtype` (or `as`).
  void floats(std::string const& name, std::vector<std::int64_t> shape, float scale, float offset = 0.f) {
    floats_as(name, std::move(shape), scale, offset, dtype);
  }
  void floats_as(std::string const& name, std::vector<std::int64_t> shape, float scale, float offset,
                 io::SafetensorsDtype as) {
    std::int64_t n = 1;
    for (std::int64_t d : shape) {
      n *= d;
    }
    std::uniform_real_distribution<float> u(-scale, scale);
    RawTensor r;
    r.shape = shape;
    r.dtype = as;
    r.values.resize(static_cast<std::size_t>(n));
    if (as == io::SafetensorsDtype::bf16) {
      std::vector<bf16_t> b(r.values.size());
      for (std::size_t i = 0; i < b.size(); ++i) {
        b[i] = bf16_t(u(rng) + offset);
        r.values[i] = b[i].to_float();
      }
      files[name] = io::make_safetensors_tensor(b.data(), shape);
    } else {
      for (float& v : r.values) {
        v = u(rng) + offset;
      }
      files[name] = io::make_safetensors_tensor(r.values.data(), shape);
    }
    (*raw)[name] = std::move(r);
  }
  // An F8_E4M3 matrix (values in [-4, 4], rounded to e4m3) and its F32 `_scale_inv` per
  // [block_rows, block_cols] block, in [0.02, 0.1].
  void fp8(std::string const& name, std::int64_t rows, std::int64_t cols, std::int64_t block_rows,
           std::int64_t block_cols) {
    std::uniform_real_distribution<float> u(-4.f, 4.f);
    RawTensor r;
    r.shape = {rows, cols};
    r.dtype = io::SafetensorsDtype::f8_e4m3;
    std::vector<fp8_e4m3_t> q(static_cast<std::size_t>(rows * cols));
    for (fp8_e4m3_t& v : q) {
      v = fp8_e4m3_t(u(rng));
      r.values.push_back(v.to_float());
    }
    files[name] = io::make_safetensors_tensor(q.data(), r.shape);
    (*raw)[name] = std::move(r);
    floats_as(name + "_scale_inv", {(rows + block_rows - 1) / block_rows, (cols + block_cols - 1) / block_cols}, 0.04f,
              0.06f, io::SafetensorsDtype::f32);
  }

  // A U8 tensor of values in [lo, hi].
  void bytes(std::string const& name, std::vector<std::int64_t> shape, int lo, int hi) {
    std::int64_t n = 1;
    for (std::int64_t d : shape) {
      n *= d;
    }
    std::uniform_int_distribution<int> u(lo, hi);
    RawTensor r;
    r.shape = shape;
    r.dtype = io::SafetensorsDtype::u8;
    r.bytes.resize(static_cast<std::size_t>(n));
    for (std::uint8_t& v : r.bytes) {
      v = static_cast<std::uint8_t>(u(rng));
    }
    files[name] = io::make_safetensors_tensor(r.bytes.data(), shape);
    (*raw)[name] = std::move(r);
  }
};

// Writes `family`'s checkpoint into `dir` (config.json, model.safetensors). `weight_dtype`: BF16
// (the released form) or F32. Returns false when writing failed (the Status message says why).
inline bool write_checkpoint(fs::path const& dir, std::string const& family, Checkpoint& c, unsigned seed = 1,
                             io::SafetensorsDtype weight_dtype = io::SafetensorsDtype::bf16) {
  c = Checkpoint{};
  c.family = family;
  c.model_type = family == "gpt_oss_mxfp4" ? "gpt_oss" : family == "deepseek_v3_fp8" ? "deepseek_v3" : family;
  Writer w{std::mt19937(seed), weight_dtype, {}, &c.tensors};
  nlohmann::json& j = c.config;
  j = {{"model_type", c.model_type}, {"hidden_act", "silu"}, {"num_experts_per_tok", 2}};
  c.k = 2;
  c.hidden = 24;
  c.intermediate = 16;
  c.experts = 8;
  c.layers = 2;
  float const wscale = 0.3f;
  if (c.model_type == "mixtral") {
    j["num_local_experts"] = 8;
    j["intermediate_size"] = 16;
  } else if (c.model_type == "qwen2_moe") {
    j["num_experts"] = 8;
    j["moe_intermediate_size"] = 16;
    j["intermediate_size"] = 40;
    j["shared_expert_intermediate_size"] = 20;
    j["norm_topk_prob"] = false;
    j["decoder_sparse_step"] = 1;
    j["mlp_only_layers"] = {0};
    c.shared_intermediate = 20;
    c.dense_layer = 0;
  } else if (c.model_type == "qwen3_moe") {
    j["num_experts"] = 8;
    j["moe_intermediate_size"] = 16;
    j["intermediate_size"] = 40;
    j["norm_topk_prob"] = true;
    j["decoder_sparse_step"] = 2;
    j["mlp_only_layers"] = nlohmann::json::array();
    c.dense_layer = 0;
  } else if (c.model_type == "olmoe") {
    j["num_experts"] = 8;
    j["intermediate_size"] = 16;
    j["norm_topk_prob"] = false;
  } else if (c.model_type == "deepseek_v3") {
    c.experts = 16;
    c.layers = 3;
    c.shared_intermediate = 16;
    c.dense_layer = 0;
    j["n_routed_experts"] = 16;
    j["moe_intermediate_size"] = 16;
    j["intermediate_size"] = 48;
    j["n_shared_experts"] = 1;
    j["n_group"] = 4;
    j["topk_group"] = 2;
    j["topk_method"] = "noaux_tc";
    j["scoring_func"] = "sigmoid";
    j["norm_topk_prob"] = true;
    j["routed_scaling_factor"] = 2.5;
    j["first_k_dense_replace"] = 1;
    j["moe_layer_freq"] = 1;
    if (family == "deepseek_v3_fp8") {
      c.block_rows = 8;
      c.block_cols = 16;
      j["quantization_config"] = {{"quant_method", "fp8"},
                                  {"fmt", "e4m3"},
                                  {"activation_scheme", "dynamic"},
                                  {"weight_block_size", {c.block_rows, c.block_cols}}};
    }
  } else if (c.model_type == "llama4") {
    c.k = 1;
    c.shared_intermediate = 16;
    c.dense_layer = 0;
    j["num_experts_per_tok"] = 1;
    j["num_local_experts"] = 8;
    j["intermediate_size"] = 16;
    j["intermediate_size_mlp"] = 40;
    j["interleave_moe_layer_step"] = 2;
  } else if (c.model_type == "gpt_oss") {
    c.hidden = 32;
    c.intermediate = 32;
    c.experts = 4;
    j["num_local_experts"] = 4;
    j["intermediate_size"] = 32;
    j["swiglu_limit"] = 1.0;
  } else {
    return false;
  }
  j["hidden_size"] = c.hidden;
  j["num_hidden_layers"] = c.layers;
  c.layer = c.layers - 1;
  std::int64_t const H = c.hidden, I = c.intermediate, E = c.experts;
  for (int l = 0; l < c.layers; ++l) {
    std::string const p = c.prefix(l);
    if (l == c.dense_layer) {  // a dense SwiGLU MLP, which the loader must refuse to read as MoE
      std::int64_t const Id =
          j[c.model_type == "llama4" ? "intermediate_size_mlp" : "intermediate_size"].get<std::int64_t>();
      w.floats(p + "gate_proj.weight", {Id, H}, wscale);
      w.floats(p + "up_proj.weight", {Id, H}, wscale);
      w.floats(p + "down_proj.weight", {H, Id}, wscale);
      continue;
    }
    if (c.model_type == "gpt_oss") {
      w.floats(p + "router.weight", {E, H}, 0.5f);
      w.floats(p + "router.bias", {E}, 0.5f);
      std::string const x = p + "experts.";
      if (family == "gpt_oss_mxfp4") {
        // Codes 0..15 in both nibbles; scales 2^-6..2^-3 so that |values| <= 0.75.
        w.bytes(x + "gate_up_proj_blocks", {E, 2 * I, H / 32, 16}, 0, 255);
        w.bytes(x + "gate_up_proj_scales", {E, 2 * I, H / 32}, 121, 124);
        w.bytes(x + "down_proj_blocks", {E, H, I / 32, 16}, 0, 255);
        w.bytes(x + "down_proj_scales", {E, H, I / 32}, 121, 124);
      } else {
        w.floats(x + "gate_up_proj", {E, H, 2 * I}, wscale);
        w.floats(x + "down_proj", {E, I, H}, wscale);
      }
      w.floats(x + "gate_up_proj_bias", {E, 2 * I}, 0.2f);
      w.floats(x + "down_proj_bias", {E, H}, 0.2f);
      continue;
    }
    if (c.model_type == "llama4") {
      w.floats(p + "router.weight", {E, H}, 0.5f);
      w.floats(p + "experts.gate_up_proj", {E, H, 2 * I}, wscale);
      w.floats(p + "experts.down_proj", {E, I, H}, wscale);
      w.floats(p + "shared_expert.gate_proj.weight", {I, H}, wscale);
      w.floats(p + "shared_expert.up_proj.weight", {I, H}, wscale);
      w.floats(p + "shared_expert.down_proj.weight", {H, I}, wscale);
      continue;
    }
    w.floats(p + "gate.weight", {E, H}, 0.5f);
    if (c.model_type == "deepseek_v3") {  // F32 as released; biases of both signs
      w.floats_as(p + "gate.e_score_correction_bias", {E}, 0.2f, 0.f, io::SafetensorsDtype::f32);
    }
    bool const mixtral = c.model_type == "mixtral";
    auto matrix = [&](std::string const& name, std::int64_t rows, std::int64_t cols) {
      if (c.block_rows > 0) {
        w.fp8(name, rows, cols, c.block_rows, c.block_cols);
      } else {
        w.floats(name, {rows, cols}, wscale);
      }
    };
    for (std::int64_t e = 0; e < E; ++e) {
      std::string const x = p + "experts." + std::to_string(e) + ".";
      matrix(x + (mixtral ? "w1" : "gate_proj") + ".weight", I, H);
      matrix(x + (mixtral ? "w3" : "up_proj") + ".weight", I, H);
      matrix(x + (mixtral ? "w2" : "down_proj") + ".weight", H, I);
    }
    if (c.shared_intermediate > 0) {
      std::int64_t const Is = c.shared_intermediate;
      std::string const x = p + (c.model_type == "deepseek_v3" ? "shared_experts." : "shared_expert.");
      matrix(x + "gate_proj.weight", Is, H);
      matrix(x + "up_proj.weight", Is, H);
      matrix(x + "down_proj.weight", H, Is);
      if (c.model_type == "qwen2_moe") {
        w.floats(p + "shared_expert_gate.weight", {1, H}, 0.5f);
      }
    }
  }
  if (c.model_type == "llama4") {  // a multimodal config: the text model's keys under text_config
    nlohmann::json text = j;
    text["model_type"] = "llama4_text";
    j = {{"model_type", "llama4"}, {"architectures", {"Llama4ForConditionalGeneration"}}, {"text_config", text}};
  }
  fs::create_directories(dir);
  c.config_path = dir / "config.json";
  c.weights_path = dir / "model.safetensors";
  std::ofstream(c.config_path) << j.dump(2);
  return io::write_safetensors(c.weights_path, w.files) == Status::ok;
}

// ---- The raw tensors in their on-disk layout (§1.10, §1.10.1), for expert e of the test layer ---

inline double mxfp4_value(RawTensor const& blocks, RawTensor const& scales, std::int64_t e, std::int64_t row,
                          std::int64_t col) {
  static constexpr double lut[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
  std::uint8_t const b = blocks.byte({e, row, col / 32, (col % 32) / 2});
  int const code = (col % 2 == 0) ? (b & 0x0F) : (b >> 4);
  return std::ldexp(lut[code], int(scales.byte({e, row, col / 32})) - 127);
}

// An [out, in] weight as the model uses it: the stored value, times its FP8 block scale (an fp32
// product, as DeepSeek's weight_dequant) when the checkpoint is FP8.
struct RawMatrix {
  RawTensor const* w = nullptr;
  RawTensor const* scale = nullptr;
  std::int64_t block_rows = 1, block_cols = 1;

  RawMatrix() = default;
  RawMatrix(Checkpoint const& c, std::string const& name) : w(&c.t(name)) {
    if (c.block_rows > 0) {
      scale = &c.t(name + "_scale_inv");
      block_rows = c.block_rows;
      block_cols = c.block_cols;
    }
  }
  [[nodiscard]] double at(std::int64_t r, std::int64_t col) const {
    if (scale == nullptr) {
      return w->at({r, col});
    }
    return double(w->values[w->offset({r, col})] * scale->values[scale->offset({r / block_rows, col / block_cols})]);
  }
};

// W_gate[m, h], W_up[m, h] ([I, H]), W_down[h, m] ([H, I]) and biases of routed expert e.
struct RawExpert {
  std::int64_t e;
  std::int64_t inter;
  bool gpt_oss, mxfp4, llama4;
  // Per-expert [out, in] matrices (null for gpt-oss), or gpt-oss's fused tensors of the layer.
  RawMatrix w_gate, w_up, w_down;
  RawTensor const *gate_up_t = nullptr, *down_t = nullptr, *gu_blocks = nullptr, *gu_scales = nullptr,
                  *down_blocks = nullptr, *down_scales = nullptr, *gu_bias = nullptr, *d_bias = nullptr;

  RawExpert(Checkpoint const& c, std::int64_t expert)
      : e(expert), inter(c.intermediate), gpt_oss(c.model_type == "gpt_oss"), mxfp4(c.family == "gpt_oss_mxfp4"),
        llama4(c.model_type == "llama4") {
    std::string const x = c.prefix(c.layer) + "experts.";
    if (llama4) {
      gate_up_t = &c.t(x + "gate_up_proj");
      down_t = &c.t(x + "down_proj");
      return;
    }
    if (!gpt_oss) {
      bool const mixtral = c.model_type == "mixtral";
      std::string const p = x + std::to_string(e) + ".";
      w_gate = RawMatrix(c, p + (mixtral ? "w1" : "gate_proj") + ".weight");
      w_up = RawMatrix(c, p + (mixtral ? "w3" : "up_proj") + ".weight");
      w_down = RawMatrix(c, p + (mixtral ? "w2" : "down_proj") + ".weight");
      return;
    }
    if (mxfp4) {
      gu_blocks = &c.t(x + "gate_up_proj_blocks");
      gu_scales = &c.t(x + "gate_up_proj_scales");
      down_blocks = &c.t(x + "down_proj_blocks");
      down_scales = &c.t(x + "down_proj_scales");
    } else {
      gate_up_t = &c.t(x + "gate_up_proj");
      down_t = &c.t(x + "down_proj");
    }
    gu_bias = &c.t(x + "gate_up_proj_bias");
    d_bias = &c.t(x + "down_proj_bias");
  }

  // gpt-oss's gate_up output `col` at input h.
  [[nodiscard]] double gate_up(std::int64_t col, std::int64_t h) const {
    if (mxfp4) {  // [E, 2I, H/32, 16]: [out, in]
      return mxfp4_value(*gu_blocks, *gu_scales, e, col, h);
    }
    return gate_up_t->at({e, h, col});  // [E, H, 2I]: [in, out]
  }
  // Llama-4: gate_up [E, H, 2I] ([in, out]; gate columns 0..I-1, up I..2I-1), down [E, I, H].
  [[nodiscard]] double gate(std::int64_t m, std::int64_t h) const {
    return llama4 ? gate_up_t->at({e, h, m}) : gpt_oss ? gate_up(2 * m, h) : w_gate.at(m, h);
  }
  [[nodiscard]] double up(std::int64_t m, std::int64_t h) const {
    return llama4 ? gate_up_t->at({e, h, inter + m}) : gpt_oss ? gate_up(2 * m + 1, h) : w_up.at(m, h);
  }
  [[nodiscard]] double down(std::int64_t h, std::int64_t m) const {
    if (llama4) {
      return down_t->at({e, m, h});
    }
    if (!gpt_oss) {
      return w_down.at(h, m);
    }
    if (mxfp4) {  // [E, H, I/32, 16]
      return mxfp4_value(*down_blocks, *down_scales, e, h, m);
    }
    return down_t->at({e, m, h});  // [E, I, H]
  }
  [[nodiscard]] double gate_bias(std::int64_t m) const { return gpt_oss ? gu_bias->at({e, 2 * m}) : 0.0; }
  [[nodiscard]] double up_bias(std::int64_t m) const { return gpt_oss ? gu_bias->at({e, 2 * m + 1}) : 0.0; }
  [[nodiscard]] double down_bias(std::int64_t h) const { return gpt_oss ? d_bias->at({e, h}) : 0.0; }
};

// The shared expert's raw tensors (present when c.shared_intermediate > 0).
struct RawShared {
  RawMatrix w_gate, w_up, w_down;
  RawTensor const* gate_weight = nullptr;

  explicit RawShared(Checkpoint const& c) {
    std::string const p = c.prefix(c.layer) + (c.model_type == "deepseek_v3" ? "shared_experts." : "shared_expert.");
    w_gate = RawMatrix(c, p + "gate_proj.weight");
    w_up = RawMatrix(c, p + "up_proj.weight");
    w_down = RawMatrix(c, p + "down_proj.weight");
    if (c.model_type == "qwen2_moe") {
      gate_weight = &c.t(c.prefix(c.layer) + "shared_expert_gate.weight");
    }
  }
  [[nodiscard]] double gate(std::int64_t m, std::int64_t h) const { return w_gate.at(m, h); }
  [[nodiscard]] double up(std::int64_t m, std::int64_t h) const { return w_up.at(m, h); }
  [[nodiscard]] double down(std::int64_t h, std::int64_t m) const { return w_down.at(h, m); }
  [[nodiscard]] bool has_gate_vector() const { return gate_weight != nullptr; }
  [[nodiscard]] double gate_vector(std::int64_t h) const { return gate_weight->at({0, h}); }
};

[[nodiscard]] inline std::string router_name(Checkpoint const& c) {
  return c.prefix(c.layer) + (c.model_type == "gpt_oss" || c.model_type == "llama4" ? "router.weight" : "gate.weight");
}

// Random activations x [T, H] in (-1, 1).
inline std::vector<float> random_x(std::int64_t tokens, std::int64_t hidden, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(static_cast<std::size_t>(tokens * hidden));
  for (float& v : x) {
    v = u(rng);
  }
  return x;
}

// ---- The oracle: a loaded block through the host references -------------------------------------

struct BlockOutput {
  std::vector<int> ids;        // [T, K]
  std::vector<float> weights;  // [T, K]
  std::vector<float> y;        // [T, H]
};

template <class W>
Status reference_block(io::MoeBlock<W> const& b, std::vector<float> const& x, BlockOutput& out) {
  std::int64_t const H = b.hidden, E = b.experts, K = b.router.num_experts_per_tok;
  std::int64_t const T = static_cast<std::int64_t>(x.size()) / H;
  std::vector<float> logits(static_cast<std::size_t>(T * E));
  routing::GateProjectionBuffers<float, float, MemorySpace::host> const gp{
      HostTensor<float const, 2>::row_major(x.data(), {T, H}), b.router_weight_view(), b.router_bias_view(),
      HostTensor<float, 2>::row_major(logits.data(), {T, E})};
  if (Status s = host::reference_gate_projection(gp); !s) {
    return s;
  }
  out.ids.assign(static_cast<std::size_t>(T * K), 0);
  out.weights.assign(out.ids.size(), 0.f);
  routing::RouteBuffers<MemorySpace::host> const rb{HostTensor<float const, 2>::row_major(logits.data(), {T, E}),
                                                    HostTensor<int, 2>::row_major(out.ids.data(), {T, K}),
                                                    HostTensor<float, 2>::row_major(out.weights.data(), {T, K})};
  if (b.router.kind == io::RouterKind::top_k) {
    routing::TopK<8> r{};
    if (Status s = io::make_top_k_router(b.router, r); !s) {
      return s;
    }
    if (Status s = host::reference_route(r, rb); !s) {
      return s;
    }
  } else {
    routing::GroupedTopK<8> r{};
    if (Status s = io::make_grouped_router(b.router, b.correction_bias.empty() ? nullptr : b.correction_bias.data(), r);
        !s) {
      return s;
    }
    if (Status s = host::reference_route(r, rb); !s) {
      return s;
    }
  }
  // The MlpWeights views, one host::ExpertWeights per expert.
  experts::MlpWeights<W, MemorySpace::host> const mw = b.expert_weights();
  std::int64_t const I = mw.intermediate();
  std::vector<host::ExpertWeights<W>> ew(static_cast<std::size_t>(E));
  for (std::int64_t e = 0; e < E; ++e) {
    host::ExpertWeights<W>& w = ew[static_cast<std::size_t>(e)];
    w.gate = HostTensor<W const, 2>::row_major(mw.gate.pointer(e, 0, 0), {I, H});
    w.up = HostTensor<W const, 2>::row_major(mw.up.pointer(e, 0, 0), {I, H});
    w.down = HostTensor<W const, 2>::row_major(mw.down.pointer(e, 0, 0), {H, I});
    if (mw.gate_bias.data != nullptr) {
      w.gate_bias = HostTensor<W const, 1>::row_major(mw.gate_bias.pointer(e, 0), {I});
      w.up_bias = HostTensor<W const, 1>::row_major(mw.up_bias.pointer(e, 0), {I});
      w.down_bias = HostTensor<W const, 1>::row_major(mw.down_bias.pointer(e, 0), {H});
    }
  }
  host::ExpertFunction fn{};
  if (b.function == io::HfExpertFunction::clamped_swiglu) {
    fn.kind = host::ExpertKind::clamped_swiglu;
    fn.clamp = {double(b.swiglu_alpha), double(b.swiglu_limit)};
  }
  experts::SharedExpertWeights<W, MemorySpace::host> const sw = b.shared_weights();
  host::SharedExpert<W> shared{};
  if (sw.present()) {
    std::int64_t const Is = b.shared_intermediate;
    shared.weights.gate = HostTensor<W const, 2>::row_major(sw.weights.gate.pointer(0, 0, 0), {Is, H});
    shared.weights.up = HostTensor<W const, 2>::row_major(sw.weights.up.pointer(0, 0, 0), {Is, H});
    shared.weights.down = HostTensor<W const, 2>::row_major(sw.weights.down.pointer(0, 0, 0), {H, Is});
    shared.gate = sw.gate;
  }
  out.y.assign(static_cast<std::size_t>(T * H), 0.f);
  return host::reference_moe_combine<float, W>(
      HostTensor<float const, 2>::row_major(x.data(), {T, H}),
      HostTensor<int const, 2>::row_major(out.ids.data(), {T, K}),
      HostTensor<float const, 2>::row_major(out.weights.data(), {T, K}), std::span<host::ExpertWeights<W> const>(ew),
      fn,
      b.position == experts::WeightPosition::on_input ? host::WeightPosition::on_input
                                                      : host::WeightPosition::after_expert,
      sw.present() ? &shared : nullptr, HostTensor<float, 2>::row_major(out.y.data(), {T, H}));
}

// ---- An independent per-token computation of the block from the on-disk tensors ----------------
// Written from ALGORITHMS.md §1.1-§1.6 and the raw accessors above, in double, sharing nothing
// with io/hf_checkpoint.hpp or the host references: it checks the mapping, not the math.

inline double sigmoid(double a) { return 1.0 / (1.0 + std::exp(-a)); }

// Indices of the k largest keys, descending, ties to the lower index.
inline std::vector<int> top(std::vector<double> const& key, int k) {
  std::vector<int> order(key.size());
  for (std::size_t i = 0; i < order.size(); ++i) {
    order[i] = static_cast<int>(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key[a] > key[b]; });
  order.resize(static_cast<std::size_t>(k));
  return order;
}

// SwiGLU (or gpt-oss's clamped SwiGLU with limit 1, α 1.702) of one expert on x, in double.
template <class Raw>
std::vector<double> expert(Raw const& raw, Checkpoint const& c, std::int64_t inter, std::vector<double> const& x) {
  std::int64_t const H = c.hidden;
  std::vector<double> h(static_cast<std::size_t>(inter)), o(static_cast<std::size_t>(H));
  for (std::int64_t m = 0; m < inter; ++m) {
    double g = raw.gate_bias(m), u = raw.up_bias(m);
    for (std::int64_t i = 0; i < H; ++i) {
      g += raw.gate(m, i) * x[static_cast<std::size_t>(i)];
      u += raw.up(m, i) * x[static_cast<std::size_t>(i)];
    }
    if (c.model_type == "gpt_oss") {
      double const limit = 1.0, alpha = 1.702;
      double const a = std::min(g, limit);
      double const uu = std::clamp(u, -limit, limit);
      h[static_cast<std::size_t>(m)] = (uu + 1.0) * a * sigmoid(alpha * a);
    } else {
      h[static_cast<std::size_t>(m)] = g * sigmoid(g) * u;
    }
  }
  for (std::int64_t i = 0; i < H; ++i) {
    double s = raw.down_bias(i);
    for (std::int64_t m = 0; m < inter; ++m) {
      s += raw.down(i, m) * h[static_cast<std::size_t>(m)];
    }
    o[static_cast<std::size_t>(i)] = s;
  }
  return o;
}

struct SharedAsExpert {
  RawShared raw;
  double gate(std::int64_t m, std::int64_t h) const { return raw.gate(m, h); }
  double up(std::int64_t m, std::int64_t h) const { return raw.up(m, h); }
  double down(std::int64_t h, std::int64_t m) const { return raw.down(h, m); }
  double gate_bias(std::int64_t) const { return 0; }
  double up_bias(std::int64_t) const { return 0; }
  double down_bias(std::int64_t) const { return 0; }
};

struct Independent {
  std::vector<int> ids;
  std::vector<double> y, tolerance;
};

inline Independent independent_block(Checkpoint const& c, std::vector<float> const& x) {
  std::int64_t const H = c.hidden, E = c.experts;
  int const K = c.k;
  std::int64_t const T = static_cast<std::int64_t>(x.size()) / H;
  RawTensor const& router = c.t(router_name(c));
  Independent out;
  out.y.assign(x.size(), 0.0);
  out.tolerance.assign(x.size(), 0.0);
  for (std::int64_t t = 0; t < T; ++t) {
    float const* xt = x.data() + t * H;
    std::vector<double> const xd(xt, xt + H);
    std::vector<double> z(static_cast<std::size_t>(E));
    double zmax = 0;
    for (std::int64_t e = 0; e < E; ++e) {
      double s = c.model_type == "gpt_oss" ? c.t(c.prefix(c.layer) + "router.bias").at({e}) : 0.0;
      for (std::int64_t h = 0; h < H; ++h) {
        s += router.at({e, h}) * double(xt[h]);
      }
      z[static_cast<std::size_t>(e)] = s;
      zmax = std::max(zmax, std::fabs(s));
    }
    std::vector<int> ids;
    std::vector<double> w;
    if (c.model_type == "deepseek_v3") {  // σ, + correction bias, groups of 4 by top-2 sums, top-2 groups
      std::vector<double> s(z.size()), key(z.size());
      for (std::size_t e = 0; e < z.size(); ++e) {
        s[e] = sigmoid(z[e]);
        key[e] = s[e] + c.t(c.prefix(c.layer) + "gate.e_score_correction_bias").at({static_cast<std::int64_t>(e)});
      }
      std::vector<double> group(4);
      for (int g = 0; g < 4; ++g) {
        std::vector<double> members(key.begin() + 4 * g, key.begin() + 4 * g + 4);
        std::vector<int> const best = top(members, 2);
        group[static_cast<std::size_t>(g)] = members[best[0]] + members[best[1]];
      }
      std::vector<int> const kept = top(group, 2);
      for (std::size_t e = 0; e < key.size(); ++e) {
        if (std::find(kept.begin(), kept.end(), static_cast<int>(e) / 4) == kept.end()) {
          key[e] = -INFINITY;
        }
      }
      ids = top(key, K);
      double sum = 1e-20;
      for (int e : ids) {
        sum += s[static_cast<std::size_t>(e)];
      }
      for (int e : ids) {
        w.push_back(2.5 * s[static_cast<std::size_t>(e)] / sum);
      }
    } else if (c.model_type == "llama4") {  // top-K of the logits, weight σ(z) (§1.6)
      ids = top(z, K);
      for (int e : ids) {
        w.push_back(sigmoid(z[static_cast<std::size_t>(e)]));
      }
    } else {  // softmax, top-K; renormalised for mixtral, qwen3 (config) and gpt-oss (softmax of the K)
      ids = top(z, K);
      double const m = z[static_cast<std::size_t>(ids[0])];
      double all = 0, selected = 0;
      for (double v : z) {
        all += std::exp(v - m);
      }
      for (int e : ids) {
        selected += std::exp(z[static_cast<std::size_t>(e)] - m);
      }
      bool const norm = c.model_type == "mixtral" || c.model_type == "qwen3_moe" || c.model_type == "gpt_oss";
      for (int e : ids) {
        w.push_back(std::exp(z[static_cast<std::size_t>(e)] - m) / (norm ? selected : all));
      }
    }
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    std::vector<double> magnitude(static_cast<std::size_t>(H), 0.0);
    bool const on_input = c.model_type == "llama4";  // y += E(w·x) instead of w·E(x)
    for (int j = 0; j < K; ++j) {
      double const wj = w[static_cast<std::size_t>(j)];
      std::vector<double> xs = xd;
      for (double& v : xs) {
        v *= on_input ? wj : 1.0;
      }
      std::vector<double> const o = expert(RawExpert{c, ids[static_cast<std::size_t>(j)]}, c, c.intermediate, xs);
      for (std::int64_t h = 0; h < H; ++h) {
        double const term = (on_input ? 1.0 : wj) * o[static_cast<std::size_t>(h)];
        out.y[static_cast<std::size_t>(t * H + h)] += term;
        magnitude[static_cast<std::size_t>(h)] += std::fabs(term);
      }
    }
    if (c.shared_intermediate > 0) {
      SharedAsExpert const shared{RawShared{c}};
      std::vector<double> const o = expert(shared, c, c.shared_intermediate, xd);
      double gate = 1.0;
      if (shared.raw.has_gate_vector()) {
        double a = 0;
        for (std::int64_t h = 0; h < H; ++h) {
          a += shared.raw.gate_vector(h) * double(xt[h]);
        }
        gate = sigmoid(a);
      }
      for (std::int64_t h = 0; h < H; ++h) {
        out.y[static_cast<std::size_t>(t * H + h)] += gate * o[static_cast<std::size_t>(h)];
      }
    }
    // Tolerance: the reference rounds the logits to fp32 (|Δz| <= |z|·2^-24), which moves a
    // softmax or sigmoid weight by at most 2·max|z|·2^-24 relative, the renormalisation doubles
    // that; the weights and y are rounded to fp32 once more (2^-24 each). Everything else runs in
    // double on both sides. So |Δy| <= (4·max|z| + 2)·2^-24·Σ_j|w_j o_j| + 2^-24·|y|; twice that.
    // With the weight on the input (Llama-4) a relative change δ of w changes E(w·x) by at most
    // 2δ|E(w·x)| (SwiGLU grows at most quadratically with its input's scale): degree 2.
    double const degree = on_input ? 2.0 : 1.0;
    for (std::int64_t h = 0; h < H; ++h) {
      std::size_t const i = static_cast<std::size_t>(t * H + h);
      out.tolerance[i] = 2.0 * ((4.0 * zmax + 2.0) * degree * 0x1p-24 * magnitude[static_cast<std::size_t>(h)] +
                                0x1p-24 * std::fabs(out.y[i]));
    }
  }
  return out;
}

}  // namespace moekit::test_hf
