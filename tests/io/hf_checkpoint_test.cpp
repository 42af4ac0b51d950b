// io/hf_checkpoint.hpp on synthetic checkpoints of every family (tests/io/hf_checkpoint_support.hpp):
//   1. the loaded views equal the on-disk tensors element by element, through the index maps of
//      ALGORITHMS.md §1.10.1 (per-expert [out,in]; gpt-oss [in,out] transposed and gate/up
//      de-interleaved; MXFP4 decoded), for W = float and W = bf16 (exact: the files hold bf16);
//   2. the block through the host references (gate projection, routing, combine) equals an
//      independent per-token computation written here from the raw on-disk tensors: this checks
//      the mapping (which tensor is which matrix, router bias, correction bias, shared gate,
//      clamp limit), not the math;
//   3. every error: missing tensor, wrong shape, unsupported dtype, FP8, config not matching the
//      weights, layer out of range, dense layer, unknown family; `out` untouched each time.

#include "moekit/io/hf_checkpoint.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "hf_checkpoint_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"

using namespace moekit;
namespace fs = std::filesystem;
using test_hf::Checkpoint;

namespace {

using test_hf::TempDir;

template <class W>
io::MoeBlock<W> load_ok(Checkpoint const& c, int layer) {
  io::MoeBlock<W> b;
  clear_error_message();
  Status const s = io::load_moe_block(c.config_path, c.weights_path, layer, b);
  INFO(last_error_message());
  REQUIRE(s == Status::ok);
  return b;
}

// ---- 1. views against the on-disk tensors -------------------------------------------------------

template <class W>
void check_views(Checkpoint const& c, io::MoeBlock<W> const& b) {
  std::int64_t const E = c.experts, H = c.hidden, I = c.intermediate;
  REQUIRE(b.experts == E);
  REQUIRE(b.hidden == H);
  REQUIRE(b.intermediate == I);
  REQUIRE(b.shared_intermediate == c.shared_intermediate);
  CHECK(b.position ==
        (c.model_type == "llama4" ? experts::WeightPosition::on_input : experts::WeightPosition::after_expert));
  CHECK(b.function ==
        (c.model_type == "gpt_oss" ? io::HfExpertFunction::clamped_swiglu : io::HfExpertFunction::swiglu));
  experts::MlpWeights<W, MemorySpace::host> const w = b.expert_weights();
  REQUIRE(experts::check_mlp_weights(w, experts::ExpertShape::gated, E, H, I) == Status::ok);
  auto const v = [](W x) { return double(to_float(x)); };
  // What W holds for a model value: itself (float; bf16 files), or its bf16 rounding (FP8 products).
  auto const as_w = [](double raw) {
    if constexpr (std::is_same_v<W, float>) {
      return raw;
    } else {
      return double(bf16_t(static_cast<float>(raw)).to_float());
    }
  };
  long long mismatches = 0;
  for (std::int64_t e = 0; e < E; ++e) {
    test_hf::RawExpert const raw{c, e};
    for (std::int64_t m = 0; m < I; ++m) {
      for (std::int64_t h = 0; h < H; ++h) {
        mismatches += v(*w.gate.pointer(e, m, h)) != as_w(raw.gate(m, h));
        mismatches += v(*w.up.pointer(e, m, h)) != as_w(raw.up(m, h));
        mismatches += v(*w.down.pointer(e, h, m)) != as_w(raw.down(h, m));
      }
    }
    if (c.model_type == "gpt_oss") {
      REQUIRE(w.gate_bias.data != nullptr);
      for (std::int64_t m = 0; m < I; ++m) {
        mismatches += v(*w.gate_bias.pointer(e, m)) != raw.gate_bias(m);
        mismatches += v(*w.up_bias.pointer(e, m)) != raw.up_bias(m);
      }
      for (std::int64_t h = 0; h < H; ++h) {
        mismatches += v(*w.down_bias.pointer(e, h)) != raw.down_bias(h);
      }
    } else {
      CHECK(w.gate_bias.data == nullptr);
      CHECK(w.down_bias.data == nullptr);
    }
  }
  CHECK(mismatches == 0);
  // Router weight [E, H] (float, exact), router bias (gpt-oss), correction bias (DeepSeek-V3).
  test_hf::RawTensor const& router = c.t(test_hf::router_name(c));
  for (std::int64_t e = 0; e < E; ++e) {
    for (std::int64_t h = 0; h < H; ++h) {
      mismatches += double(b.router_weight_view()(e, h)) != router.at({e, h});
    }
  }
  CHECK(mismatches == 0);
  if (c.model_type == "gpt_oss") {
    REQUIRE(b.router_bias.size() == static_cast<std::size_t>(E));
    for (std::int64_t e = 0; e < E; ++e) {
      CHECK(double(b.router_bias[static_cast<std::size_t>(e)]) == c.t(c.prefix(c.layer) + "router.bias").at({e}));
    }
    CHECK(b.swiglu_limit == 1.0f);  // the synthetic config's, not the 7.0 default
    CHECK(b.swiglu_alpha == 1.702f);
  } else {
    CHECK(b.router_bias.empty());
  }
  if (c.model_type == "deepseek_v3") {
    REQUIRE(b.correction_bias.size() == static_cast<std::size_t>(E));
    for (std::int64_t e = 0; e < E; ++e) {
      CHECK(double(b.correction_bias[static_cast<std::size_t>(e)]) ==
            c.t(c.prefix(c.layer) + "gate.e_score_correction_bias").at({e}));
    }
  } else {
    CHECK(b.correction_bias.empty());
  }
  // The shared expert.
  experts::SharedExpertWeights<W, MemorySpace::host> const s = b.shared_weights();
  REQUIRE(s.present() == (c.shared_intermediate > 0));
  if (s.present()) {
    std::int64_t const Is = c.shared_intermediate;
    REQUIRE(experts::check_mlp_weights(s.weights, experts::ExpertShape::gated, 1, H, Is) == Status::ok);
    test_hf::RawShared const raw{c};
    for (std::int64_t m = 0; m < Is; ++m) {
      for (std::int64_t h = 0; h < H; ++h) {
        mismatches += v(*s.weights.gate.pointer(0, m, h)) != as_w(raw.gate(m, h));
        mismatches += v(*s.weights.up.pointer(0, m, h)) != as_w(raw.up(m, h));
        mismatches += v(*s.weights.down.pointer(0, h, m)) != as_w(raw.down(h, m));
      }
    }
    REQUIRE((s.gate.data != nullptr) == raw.has_gate_vector());
    if (raw.has_gate_vector()) {
      for (std::int64_t h = 0; h < H; ++h) {
        mismatches += v(*s.gate.pointer(h)) != raw.gate_vector(h);
      }
    }
    CHECK(mismatches == 0);
  }
}

// ---- 2. the block against an independent computation (test_hf::independent_block) -----------

template <class W>
void check_block(Checkpoint const& c, io::MoeBlock<W> const& b) {
  std::int64_t const T = 24;
  std::vector<float> const x = test_hf::random_x(T, c.hidden, 7);
  test_hf::BlockOutput ref;
  clear_error_message();
  Status const s = test_hf::reference_block(b, x, ref);
  INFO(last_error_message());
  REQUIRE(s == Status::ok);
  test_hf::Independent const ind = test_hf::independent_block(c, x);
  REQUIRE(ref.ids == ind.ids);
  long long bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < ref.y.size(); ++i) {
    double const d = std::fabs(double(ref.y[i]) - ind.y[i]);
    worst = std::max(worst, d);
    bad += d > ind.tolerance[i];
  }
  INFO("largest |y_ref - y_independent| = " << worst);
  CHECK(bad == 0);
}

// ---- 3. errors ----------------------------------------------------------------------------------

// The checkpoint's tensors as the writer takes them.
std::map<std::string, io::SafetensorsTensor> tensors_of(Checkpoint const& c) {
  std::map<std::string, io::SafetensorsTensor> files;
  for (auto const& [name, raw] : c.tensors) {
    if (raw.dtype == io::SafetensorsDtype::u8) {
      files[name] = io::make_safetensors_tensor(raw.bytes.data(), raw.shape);
    } else if (raw.dtype == io::SafetensorsDtype::f8_e4m3) {
      std::vector<fp8_e4m3_t> q;
      for (float v : raw.values) {
        q.push_back(fp8_e4m3_t(v));
      }
      files[name] = io::make_safetensors_tensor(q.data(), raw.shape);
    } else if (raw.dtype == io::SafetensorsDtype::bf16) {
      std::vector<bf16_t> b;
      for (float v : raw.values) {
        b.push_back(bf16_t(v));
      }
      files[name] = io::make_safetensors_tensor(b.data(), raw.shape);
    } else {
      files[name] = io::make_safetensors_tensor(raw.values.data(), raw.shape);
    }
  }
  return files;
}

// The checkpoint's tensors with `edit` applied, rewritten to its model.safetensors.
void rewrite(Checkpoint const& c, std::function<void(std::map<std::string, io::SafetensorsTensor>&)> const& edit) {
  std::map<std::string, io::SafetensorsTensor> files = tensors_of(c);
  edit(files);
  REQUIRE(io::write_safetensors(c.weights_path, files) == Status::ok);
}

void rewrite_config(Checkpoint const& c, std::function<void(nlohmann::json&)> const& edit) {
  nlohmann::json j = c.config;
  edit(j);
  std::ofstream(c.config_path) << j.dump(2);
}

// The message of a load that must fail with `expected`; the block must stay untouched.
std::string load_error(Checkpoint const& c, int layer, Status expected = Status::invalid_argument) {
  io::MoeBlock<float> b;
  b.model_type = "untouched";
  clear_error_message();
  CHECK(io::load_moe_block(c.config_path, c.weights_path, layer, b) == expected);
  CHECK(b.model_type == "untouched");
  CHECK(b.gate.empty());
  return last_error_message();
}

}  // namespace

TEST_CASE("hf_checkpoint: every family's views equal its on-disk tensors, and its block the raw computation",
          "[io][hf_checkpoint]") {
  for (std::string const& family : test_hf::families) {
    DYNAMIC_SECTION(family) {
      TempDir tmp;
      Checkpoint c;
      REQUIRE(test_hf::write_checkpoint(tmp.dir, family, c, 11));
      io::MoeBlock<float> const f = load_ok<float>(c, c.layer);
      io::MoeBlock<bf16_t> const b = load_ok<bf16_t>(c, c.layer);
      CHECK(f.router.model_type == (family == "llama4" ? "llama4_text" : c.model_type));  // text_config's
      CHECK(f.router.num_experts == c.experts);
      CHECK(f.storage == (family == "gpt_oss_mxfp4"                   ? io::HfExpertStorage::mxfp4
                          : family == "gpt_oss" || family == "llama4" ? io::HfExpertStorage::fused_transposed
                                                                      : io::HfExpertStorage::per_expert));
      check_views(c, f);
      check_views(c, b);
      check_block(c, f);
      if (family != "deepseek_v3_fp8") {  // bf16-rounded FP8 products are not the model's weights: the
        check_block(c, b);                // float block checks the mapping, check_views the rounding
      }
    }
  }
}

TEST_CASE("hf_checkpoint: F32 tensors load exactly as float and round to nearest even as bf16", "[io][hf_checkpoint]") {
  TempDir tmp;
  Checkpoint c;
  REQUIRE(test_hf::write_checkpoint(tmp.dir, "mixtral", c, 3, io::SafetensorsDtype::f32));
  io::MoeBlock<float> const f = load_ok<float>(c, 0);
  io::MoeBlock<bf16_t> const b = load_ok<bf16_t>(c, 0);
  test_hf::RawTensor const& w1 = c.t("model.layers.0.block_sparse_moe.experts.5.w1.weight");
  long long bad = 0, rounded = 0;
  for (std::int64_t m = 0; m < c.intermediate; ++m) {
    for (std::int64_t h = 0; h < c.hidden; ++h) {
      float const raw = static_cast<float>(w1.at({m, h}));
      bad += *f.expert_weights().gate.pointer(5, m, h) != raw;
      bad += b.expert_weights().gate.pointer(5, m, h)->bits != bf16_t(raw).bits;
      rounded += b.expert_weights().gate.pointer(5, m, h)->to_float() != raw;
    }
  }
  CHECK(bad == 0);
  CHECK(rounded > 0);  // the F32 values are not all bf16: the rounding did happen
}

TEST_CASE("hf_checkpoint: errors name the file, the tensor or key, and leave the block untouched",
          "[io][hf_checkpoint]") {
  TempDir tmp;
  Checkpoint c;
  SECTION("missing tensor") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "mixtral", c));
    rewrite(c, [](auto& m) { m.erase("model.layers.1.block_sparse_moe.experts.3.w3.weight"); });
    std::string const msg = load_error(c, 1);
    CHECK_THAT(msg, Catch::Contains("missing tensor 'model.layers.1.block_sparse_moe.experts.3.w3.weight'"));
    CHECK_THAT(msg, Catch::Contains(c.weights_path.string()));
  }
  SECTION("wrong shape") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "qwen3_moe", c));
    rewrite(c, [](auto& m) {
      std::vector<float> v(24 * 17, 0.f);
      m["model.layers.1.mlp.experts.2.down_proj.weight"] = io::make_safetensors_tensor(v.data(), {24, 17});
    });
    std::string const msg = load_error(c, 1);
    CHECK_THAT(msg, Catch::Contains("tensor 'model.layers.1.mlp.experts.2.down_proj.weight' has shape [24, 17], "
                                    "expected [H=24, I=16]"));
    CHECK_THAT(msg, Catch::Contains(c.weights_path.string()));
  }
  SECTION("unsupported dtype") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "olmoe", c));
    rewrite(c, [](auto& m) {
      std::vector<std::int32_t> v(8 * 24, 1);
      m["model.layers.0.mlp.gate.weight"] = io::make_safetensors_tensor(v.data(), {8, 24});
    });
    CHECK_THAT(load_error(c, 0), Catch::Contains("tensor 'model.layers.0.mlp.gate.weight' has dtype I32, not "
                                                 "supported (BF16, F16 or F32)"));
  }
  SECTION("FP8 without block scales, F8_E5M2, scales of the wrong shape") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "deepseek_v3", c));
    rewrite(c, [](auto& m) {
      std::vector<fp8_e4m3_t> v(16 * 24, fp8_e4m3_t::from_bits(0x38));
      m["model.layers.1.mlp.experts.0.gate_proj.weight"] = io::make_safetensors_tensor(v.data(), {16, 24});
    });
    CHECK_THAT(load_error(c, 1, Status::unsupported_config),
               Catch::Contains("tensor 'model.layers.1.mlp.experts.0.gate_proj.weight' is F8_E4M3 without its block "
                               "scales 'model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv'"));
    rewrite(c, [](auto& m) {
      std::vector<fp8_e5m2_t> v(16 * 24, fp8_e5m2_t::from_bits(0x38));
      m["model.layers.1.mlp.experts.0.gate_proj.weight"] = io::make_safetensors_tensor(v.data(), {16, 24});
    });
    CHECK_THAT(load_error(c, 1, Status::unsupported_config),
               Catch::Contains("is F8_E5M2: only F8_E4M3 block-scaled weights are supported"));
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "deepseek_v3_fp8", c));
    rewrite(c, [](auto& m) {
      std::vector<float> v(2, 1.f);
      m["model.layers.1.mlp.experts.4.down_proj.weight_scale_inv"] = io::make_safetensors_tensor(v.data(), {2, 1});
    });
    CHECK_THAT(load_error(c, 1), Catch::Contains("tensor 'model.layers.1.mlp.experts.4.down_proj.weight_scale_inv' "
                                                 "has shape [2, 1], expected [ceil(rows/block)=3, "
                                                 "ceil(cols/block)=1]"));
  }
  SECTION("config says more experts than the file holds") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "mixtral", c));
    rewrite_config(c, [](auto& j) { j["num_local_experts"] = 16; });
    CHECK_THAT(load_error(c, 0), Catch::Contains("says 16 experts but tensor 'model.layers.0.block_sparse_moe.gate."
                                                 "weight' in safetensors file '" +
                                                 c.weights_path.string() + "' has shape [8, 24] (8 experts)"));
  }
  SECTION("config says fewer experts than the file holds") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "qwen3_moe", c));
    rewrite(c, [&](auto& m) {  // a router of 4 rows, with the 8 experts left in place
      std::vector<float> v(4 * 24, 0.f);
      m["model.layers.1.mlp.gate.weight"] = io::make_safetensors_tensor(v.data(), {4, 24});
    });
    rewrite_config(c, [](auto& j) { j["num_experts"] = 4; });
    CHECK_THAT(load_error(c, 1), Catch::Contains("says 4 experts but safetensors file '" + c.weights_path.string() +
                                                 "' holds expert tensors up to "
                                                 "'model.layers.1.mlp.experts.7.gate_proj.weight' (8 experts)"));
  }
  SECTION("fused gpt-oss experts of another count") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "gpt_oss", c));
    rewrite(c, [&](auto& m) {
      std::vector<float> v(8 * 32, 0.f), b(8, 0.f);
      m["model.layers.1.mlp.router.weight"] = io::make_safetensors_tensor(v.data(), {8, 32});
      m["model.layers.1.mlp.router.bias"] = io::make_safetensors_tensor(b.data(), {8});
    });
    rewrite_config(c, [](auto& j) { j["num_local_experts"] = 8; });
    CHECK_THAT(load_error(c, 1), Catch::Contains("tensor 'model.layers.1.mlp.experts.gate_up_proj' has shape "
                                                 "[4, 32, 64], expected [E=8, H=32, 2I=64]"));
  }
  SECTION("layer out of range") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "mixtral", c));
    CHECK_THAT(load_error(c, 2), Catch::Contains("layer 2 is out of range (num_hidden_layers = 2)"));
    CHECK_THAT(load_error(c, -1), Catch::Contains("layer -1 is out of range"));
    CHECK_THAT(load_error(c, 2), Catch::Contains(c.config_path.string()));
  }
  SECTION("dense layers") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "deepseek_v3", c));
    CHECK_THAT(load_error(c, 0), Catch::Contains("layer 0 is a dense layer, not MoE: layers below "
                                                 "first_k_dense_replace (1) use a dense MLP"));
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "qwen2_moe", c));
    CHECK_THAT(load_error(c, 0), Catch::Contains("layer 0 is a dense layer, not MoE: it is listed in mlp_only_layers"));
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "qwen3_moe", c));
    CHECK_THAT(load_error(c, 0),
               Catch::Contains("layer 0 is a dense layer, not MoE: (layer + 1) % decoder_sparse_step (2) != 0"));
  }
  SECTION("unknown family and missing config key") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "mixtral", c));
    rewrite_config(c, [](auto& j) {
      j["model_type"] = "grok";
      j["scoring_func"] = "softmax";
    });
    CHECK_THAT(load_error(c, 0), Catch::Contains("model_type 'grok' has no checkpoint mapping"));
    rewrite_config(c, [](auto& j) { j.erase("hidden_size"); });
    CHECK_THAT(load_error(c, 0), Catch::Contains("missing key 'hidden_size'"));
  }
  SECTION("MXFP4 scales of the wrong dtype") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "gpt_oss_mxfp4", c));
    rewrite(c, [](auto& m) {
      std::vector<float> v(4 * 64, 0.f);
      m["model.layers.1.mlp.experts.gate_up_proj_scales"] = io::make_safetensors_tensor(v.data(), {4, 64, 1});
    });
    CHECK_THAT(load_error(c, 1), Catch::Contains("tensor 'model.layers.1.mlp.experts.gate_up_proj_scales' has dtype "
                                                 "F32, expected U8 (MXFP4)"));
  }
  SECTION("corrupt safetensors file") {
    REQUIRE(test_hf::write_checkpoint(tmp.dir, "mixtral", c));
    fs::resize_file(c.weights_path, fs::file_size(c.weights_path) - 7);
    CHECK_THAT(load_error(c, 0), Catch::Contains(c.weights_path.string()));
  }
}

TEST_CASE("hf_checkpoint: a sharded checkpoint's index gathers the layer from its shards", "[io][hf_checkpoint]") {
  TempDir tmp;
  Checkpoint c;
  REQUIRE(test_hf::write_checkpoint(tmp.dir, "qwen2_moe", c, 4));
  // Two shards, tensors alternating between them, so that layer 1 spans both.
  std::map<std::string, io::SafetensorsTensor> shards[2];
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  int i = 0;
  for (auto& [name, t] : tensors_of(c)) {
    int const shard = i++ % 2;
    index["weight_map"][name] = "model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors";
    shards[shard][name] = std::move(t);
  }
  for (int shard = 0; shard < 2; ++shard) {
    REQUIRE(io::write_safetensors(tmp.dir / ("model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors"),
                                  shards[shard]) == Status::ok);
  }
  fs::path const index_path = tmp.dir / "model.safetensors.index.json";
  std::ofstream(index_path) << index.dump();
  io::MoeBlock<float> const single = load_ok<float>(c, 1);
  io::MoeBlock<float> sharded;
  clear_error_message();
  REQUIRE(io::load_moe_block(c.config_path, index_path, 1, sharded) == Status::ok);
  CHECK(sharded.gate == single.gate);
  CHECK(sharded.up == single.up);
  CHECK(sharded.down == single.down);
  CHECK(sharded.router_weight == single.router_weight);
  CHECK(sharded.shared_gate == single.shared_gate);
  CHECK(sharded.shared_down == single.shared_down);
  CHECK(sharded.shared_gate_vector == single.shared_gate_vector);

  auto sharded_error = [&](nlohmann::json const& j, int layer, std::string const& expected) {
    std::ofstream(index_path) << j.dump();
    io::MoeBlock<float> b;
    b.model_type = "untouched";
    clear_error_message();
    CHECK(io::load_moe_block(c.config_path, index_path, layer, b) != Status::ok);
    CHECK(b.model_type == "untouched");
    CHECK_THAT(last_error_message(), Catch::Contains(expected));
  };
  nlohmann::json missing_shard = index;
  missing_shard["weight_map"]["model.layers.1.mlp.gate.weight"] = "model-00003-of-00002.safetensors";
  sharded_error(missing_shard, 1,
                "safetensors file '" + (tmp.dir / "model-00003-of-00002.safetensors").string() +
                    "': cannot open: no such file");
  nlohmann::json wrong_shard = index;
  std::string const name = "model.layers.1.mlp.experts.3.up_proj.weight";
  wrong_shard["weight_map"][name] = index["weight_map"][name] == "model-00001-of-00002.safetensors"
                                        ? "model-00002-of-00002.safetensors"
                                        : "model-00001-of-00002.safetensors";
  sharded_error(wrong_shard, 1, "safetensors index '" + index_path.string() + "' puts tensor '" + name + "' in");
  sharded_error(nlohmann::json::array(), 1,
                "safetensors index '" + index_path.string() + "': not a model.safetensors.index.json");
  sharded_error(index, 7, "safetensors index '" + index_path.string() + "': no tensor of layer 7 ('model.layers.7.*')");
}
