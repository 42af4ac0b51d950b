// io/hf_config.hpp: each family's config.json keys (ALGORITHMS.md §1.10, released values) give the
// right router parameters; the routers built from them reproduce the worked example of §1.11;
// family defaults, the Hub's "gready" spelling, Llama-4's text_config nesting; every error names
// the key.

#include "moekit/io/hf_config.hpp"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"
#include "moekit/cpu/route.hpp"

using namespace moekit;
using routing::ScoreFunction;
using routing::TopKMethod;

namespace {

io::RouterConfig parse_ok(std::string const& text) {
  io::RouterConfig c;
  clear_error_message();
  Status const s = io::parse_router_config_text(text, c, "test config");
  INFO(last_error_message());
  REQUIRE(s == Status::ok);
  return c;
}

// The status and the message of a config that must be refused; `out` must stay untouched.
std::string parse_error(std::string const& text, Status expected = Status::invalid_argument) {
  io::RouterConfig c;
  c.model_type = "untouched";
  clear_error_message();
  CHECK(io::parse_router_config_text(text, c, "test config") == expected);
  CHECK(c.model_type == "untouched");
  return last_error_message();
}

struct Routed {
  std::vector<int> ids;
  std::vector<float> weights;
};

// §1.11 logits, routed on the CPU path.
template <class R>
Routed route_worked_example(R const& r) {
  std::vector<float> const z = {1.2f,  -0.3f, 2.5f, 0.8f, -1.1f, 2.1f,  0.0f, 1.7f,
                                -0.5f, 0.9f,  0.3f, 1.6f, 2.2f,  -0.8f, 1.1f, 0.4f};
  Routed out;
  out.ids.assign(static_cast<std::size_t>(2 * r.slots()), -7);
  out.weights.assign(out.ids.size(), -7.f);
  routing::RouteBuffers<MemorySpace::host> b{HostTensor<float const, 2>::row_major(z.data(), {2, 8}),
                                             HostTensor<int, 2>::row_major(out.ids.data(), {2, r.slots()}),
                                             HostTensor<float, 2>::row_major(out.weights.data(), {2, r.slots()})};
  REQUIRE(cpu::route(r, b) == Status::ok);
  return out;
}

void check_weights(std::vector<float> const& got, std::vector<float> const& expected) {
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i] == Approx(expected[i]).epsilon(1e-6));  // the example's precision (§1.11: rtol 1e-6)
  }
}

}  // namespace

TEST_CASE("released configs of every family give the right router parameters", "[io]") {
  SECTION("Mixtral-8x7B") {
    auto const c = parse_ok(R"({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
      "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_act": "silu",
      "router_jitter_noise": 0.0, "router_aux_loss_coef": 0.02, "output_router_logits": false})");
    CHECK(c.kind == io::RouterKind::top_k);
    CHECK(c.num_experts == 8);
    CHECK(c.num_experts_per_tok == 2);
    CHECK(c.scoring_func == ScoreFunction::softmax);
    CHECK(c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == 1.f);
  }
  SECTION("Qwen1.5-MoE-A2.7B (qwen2_moe)") {
    auto const c = parse_ok(R"({"model_type": "qwen2_moe", "num_experts": 60, "num_experts_per_tok": 4,
      "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "intermediate_size": 5632,
      "norm_topk_prob": false, "decoder_sparse_step": 1, "mlp_only_layers": [], "hidden_size": 2048})");
    CHECK(c.kind == io::RouterKind::top_k);
    CHECK(c.num_experts == 60);
    CHECK(c.num_experts_per_tok == 4);
    CHECK(c.scoring_func == ScoreFunction::softmax);
    CHECK(!c.norm_topk_prob);
  }
  SECTION("Qwen3-30B-A3B (qwen3_moe)") {
    auto const c = parse_ok(R"({"model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8,
      "moe_intermediate_size": 768, "norm_topk_prob": true, "decoder_sparse_step": 1, "hidden_size": 2048})");
    CHECK(c.num_experts == 128);
    CHECK(c.num_experts_per_tok == 8);
    CHECK(c.norm_topk_prob);
  }
  SECTION("OLMoE-1B-7B") {
    auto const c = parse_ok(R"({"model_type": "olmoe", "num_experts": 64, "num_experts_per_tok": 8,
      "intermediate_size": 1024, "norm_topk_prob": false, "hidden_size": 2048})");
    CHECK(c.num_experts == 64);
    CHECK(c.num_experts_per_tok == 8);
    CHECK(!c.norm_topk_prob);
  }
  SECTION("DeepSeek-V2") {
    auto const c = parse_ok(R"({"model_type": "deepseek_v2", "n_routed_experts": 160, "num_experts_per_tok": 6,
      "n_group": 8, "topk_group": 3, "topk_method": "group_limited_greedy", "scoring_func": "softmax",
      "routed_scaling_factor": 16.0, "norm_topk_prob": false, "n_shared_experts": 2, "moe_intermediate_size": 1536,
      "first_k_dense_replace": 1, "moe_layer_freq": 1, "hidden_size": 5120})");
    CHECK(c.kind == io::RouterKind::grouped_top_k);
    CHECK(c.num_experts == 160);
    CHECK(c.num_experts_per_tok == 6);
    CHECK(c.topk_method == TopKMethod::group_limited_greedy);
    CHECK(c.scoring_func == ScoreFunction::softmax);
    CHECK(c.n_group == 8);
    CHECK(c.topk_group == 3);
    CHECK(c.routed_scaling_factor == 16.f);
    CHECK(!c.norm_topk_prob);
    CHECK(!c.uses_correction_bias());
  }
  SECTION("DeepSeek-V2-Lite") {
    auto const c = parse_ok(R"({"model_type": "deepseek_v2", "n_routed_experts": 64, "num_experts_per_tok": 6,
      "n_group": 1, "topk_group": 1, "topk_method": "greedy", "scoring_func": "softmax",
      "routed_scaling_factor": 1.0, "norm_topk_prob": false})");
    CHECK(c.topk_method == TopKMethod::greedy);
    CHECK(c.n_group == 1);
    CHECK(c.routed_scaling_factor == 1.f);
  }
  SECTION("DeepSeek-V3") {
    auto const c = parse_ok(R"({"model_type": "deepseek_v3", "n_routed_experts": 256, "num_experts_per_tok": 8,
      "n_group": 8, "topk_group": 4, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
      "routed_scaling_factor": 2.5, "n_shared_experts": 1, "moe_intermediate_size": 2048,
      "first_k_dense_replace": 3, "moe_layer_freq": 1, "hidden_size": 7168})");
    CHECK(c.kind == io::RouterKind::grouped_top_k);
    CHECK(c.num_experts == 256);
    CHECK(c.num_experts_per_tok == 8);
    CHECK(c.topk_method == TopKMethod::noaux_tc);
    CHECK(c.scoring_func == ScoreFunction::sigmoid);
    CHECK(c.n_group == 8);
    CHECK(c.topk_group == 4);
    CHECK(c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == 2.5f);
    CHECK(c.uses_correction_bias());
  }
  SECTION("gpt-oss-20b") {
    auto const c = parse_ok(R"({"model_type": "gpt_oss", "num_local_experts": 32, "num_experts_per_tok": 4,
      "intermediate_size": 2880, "hidden_size": 2880, "swiglu_limit": 7.0})");
    CHECK(c.kind == io::RouterKind::top_k);
    CHECK(c.num_experts == 32);
    CHECK(c.num_experts_per_tok == 4);
    CHECK(c.scoring_func == ScoreFunction::softmax_of_selected);
  }
  SECTION("Llama-4-Scout: router keys nested in text_config") {
    auto const c = parse_ok(R"({"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
      "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 1408},
      "text_config": {"model_type": "llama4_text", "num_local_experts": 16, "num_experts_per_tok": 1,
                      "intermediate_size": 8192, "intermediate_size_mlp": 16384, "interleave_moe_layer_step": 1,
                      "hidden_size": 5120}})");
    CHECK(c.model_type == "llama4_text");
    CHECK(c.kind == io::RouterKind::top_k);
    CHECK(c.num_experts == 16);
    CHECK(c.num_experts_per_tok == 1);
    CHECK(c.scoring_func == ScoreFunction::sigmoid);
    CHECK(!c.norm_topk_prob);
    // A text_config without its own model_type takes the top level's.
    auto const d = parse_ok(R"({"model_type": "llama4", "text_config": {"num_local_experts": 128,
      "num_experts_per_tok": 1}})");
    CHECK(d.model_type == "llama4");
    CHECK(d.num_experts == 128);
  }
  SECTION("Switch Transformers (top-1, no num_experts_per_tok key)") {
    auto const c = parse_ok(R"({"model_type": "switch_transformers", "num_experts": 8, "expert_capacity": 64,
      "d_model": 768, "d_ff": 3072, "router_bias": false, "router_dtype": "float32", "router_jitter_noise": 0.01})");
    CHECK(c.num_experts == 8);
    CHECK(c.num_experts_per_tok == 1);
    CHECK(c.scoring_func == ScoreFunction::softmax);
    CHECK(!c.norm_topk_prob);
  }
  SECTION("a family the parser does not know, with explicit scoring (Kimi-K2 style)") {
    auto const c = parse_ok(R"({"model_type": "kimi_k2", "n_routed_experts": 384, "num_experts_per_tok": 8,
      "n_group": 1, "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
      "routed_scaling_factor": 2.827})");
    CHECK(c.kind == io::RouterKind::grouped_top_k);
    CHECK(c.num_experts == 384);
    CHECK(c.topk_method == TopKMethod::noaux_tc);
    CHECK(c.scoring_func == ScoreFunction::sigmoid);
    CHECK(c.routed_scaling_factor == 2.827f);
    auto const d = parse_ok(R"({"num_experts": 16, "num_experts_per_tok": 2, "scoring_func": "sigmoid"})");
    CHECK(d.model_type.empty());
    CHECK(d.kind == io::RouterKind::top_k);
    CHECK(d.scoring_func == ScoreFunction::sigmoid);
    CHECK(!d.norm_topk_prob);
  }
}

TEST_CASE("missing keys take the family defaults", "[io]") {
  auto const qwen = parse_ok(R"({"model_type": "qwen2_moe", "num_experts": 8, "num_experts_per_tok": 2})");
  CHECK(!qwen.norm_topk_prob);
  auto const qwen3 = parse_ok(R"({"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2})");
  CHECK(!qwen3.norm_topk_prob);  // the class default; released checkpoints write true
  auto const v2 = parse_ok(R"({"model_type": "deepseek_v2", "n_routed_experts": 8, "num_experts_per_tok": 2})");
  CHECK(v2.scoring_func == ScoreFunction::softmax);
  CHECK(v2.topk_method == TopKMethod::greedy);
  CHECK(!v2.norm_topk_prob);
  CHECK(v2.routed_scaling_factor == 1.f);
  auto const v3 = parse_ok(R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2,
    "n_group": null, "topk_group": null})");
  CHECK(v3.scoring_func == ScoreFunction::sigmoid);
  CHECK(v3.topk_method == TopKMethod::noaux_tc);
  CHECK(v3.norm_topk_prob);
  CHECK(v3.n_group == 1);
  CHECK(v3.topk_group == 1);
  // Any of the three expert-count keys is read, whatever the family.
  auto const mixtral = parse_ok(R"({"model_type": "mixtral", "num_experts": 8, "num_experts_per_tok": 2})");
  CHECK(mixtral.num_experts == 8);
  auto const agree = parse_ok(R"({"model_type": "olmoe", "num_experts": 64, "num_local_experts": 64,
    "num_experts_per_tok": 8})");
  CHECK(agree.num_experts == 64);
  // Keys a family fixes may be present with the family's value.
  auto const same = parse_ok(R"({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2,
    "norm_topk_prob": true, "scoring_func": "softmax", "topk_method": "greedy", "n_group": 1})");
  CHECK(same.norm_topk_prob);
  auto const gpt = parse_ok(R"({"model_type": "gpt_oss", "num_local_experts": 8, "num_experts_per_tok": 2,
    "scoring_func": "softmax"})");
  CHECK(gpt.scoring_func == ScoreFunction::softmax_of_selected);
}

TEST_CASE("the Hub's 'gready' spelling is greedy; DeepSeek-V3 honours explicit keys", "[io]") {
  auto const c = parse_ok(R"({"model_type": "deepseek_v2", "n_routed_experts": 64, "num_experts_per_tok": 6,
    "topk_method": "gready"})");
  CHECK(c.topk_method == TopKMethod::greedy);
  auto const v3 = parse_ok(R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2,
    "scoring_func": "softmax", "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
    "norm_topk_prob": false})");
  CHECK(v3.scoring_func == ScoreFunction::softmax);
  CHECK(v3.topk_method == TopKMethod::group_limited_greedy);
  CHECK(!v3.norm_topk_prob);
}

TEST_CASE("routers built from configs reproduce the worked example of ALGORITHMS.md 1.11", "[io]") {
  auto top_k = [](std::string const& text) {
    routing::TopK<8> r{};
    REQUIRE(io::make_top_k_router(parse_ok(text), r) == Status::ok);
    return route_worked_example(r);
  };
  auto const mixtral = top_k(R"({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2})");
  CHECK(mixtral.ids == std::vector<int>{2, 5, 4, 3});
  check_weights(mixtral.weights, {0.5986877f, 0.4013123f, 0.6456563f, 0.3543437f});
  auto const qwen = top_k(R"({"model_type": "qwen2_moe", "num_experts": 8, "num_experts_per_tok": 2})");
  CHECK(qwen.ids == std::vector<int>{2, 5, 4, 3});
  check_weights(qwen.weights, {0.3642877f, 0.2441893f, 0.3866864f, 0.212218f});
  auto const gpt = top_k(R"({"model_type": "gpt_oss", "num_local_experts": 8, "num_experts_per_tok": 2})");
  CHECK(gpt.ids == std::vector<int>{2, 5, 4, 3});
  check_weights(gpt.weights, {0.5986877f, 0.4013123f, 0.6456563f, 0.3543437f});
  CHECK(gpt.weights[0] == 0.59868765f);  // §1.11: the gpt-oss path's fp32 value, not Mixtral's
  auto const llama = top_k(R"({"model_type": "llama4", "text_config": {"num_local_experts": 8,
    "num_experts_per_tok": 1}})");
  CHECK(llama.ids == std::vector<int>{2, 4});
  check_weights(llama.weights, {0.9241418f, 0.9002495f});
  auto const sw = top_k(R"({"model_type": "switch_transformers", "num_experts": 8})");
  CHECK(sw.ids == std::vector<int>{2, 4});
  check_weights(sw.weights, {0.3642877f, 0.3866864f});

  auto grouped = [](std::string const& text, float const* bias) {
    routing::GroupedTopK<8> r{};
    REQUIRE(io::make_grouped_router(parse_ok(text), bias, r) == Status::ok);
    return route_worked_example(r);
  };
  auto const v2 = grouped(R"({"model_type": "deepseek_v2", "n_routed_experts": 8, "num_experts_per_tok": 2,
    "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 1, "routed_scaling_factor": 16.0})",
                          nullptr);
  CHECK(v2.ids == std::vector<int>{2, 3, 4, 5});
  check_weights(v2.weights, {5.828603f, 1.064790f, 6.186983f, 0.3080318f});
  float const bias[8] = {0.05f, -0.05f, -0.10f, 0.f, 0.20f, 0.f, 0.15f, -0.15f};
  std::string const v3 = R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2,
    "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5})";
  auto const biased = grouped(v3, bias);
  CHECK(biased.ids == std::vector<int>{2, 7, 4, 6});
  check_weights(biased.weights, {1.305524f, 1.194476f, 1.363593f, 1.136407f});
  auto const unbiased = grouped(v3, nullptr);
  CHECK(unbiased.ids == std::vector<int>{2, 7, 3, 6});
  check_weights(unbiased.weights, {1.305524f, 1.194476f, 1.314589f, 1.185411f});
}

TEST_CASE("malformed configs are refused with a message naming the key", "[io]") {
  struct Case {
    char const* text;
    char const* fragment;
  };
  auto const c = GENERATE(
      Case{R"({"model_type": "mixtral", "num_experts_per_tok": 2})", "missing key 'num_local_experts'"},
      Case{R"({"model_type": "deepseek_v3", "num_experts_per_tok": 2})", "missing key 'n_routed_experts'"},
      Case{R"({"model_type": "qwen2_moe", "num_experts": 8})", "missing key 'num_experts_per_tok'"},
      Case{R"({"model_type": "qwen2_moe", "num_experts": "8", "num_experts_per_tok": 2})",
           "key 'num_experts' must be an integer (got string \"8\")"},
      Case{R"({"model_type": "qwen2_moe", "num_experts": 8.5, "num_experts_per_tok": 2})",
           "key 'num_experts' must be an integer (got number 8.5)"},
      Case{R"({"model_type": "qwen2_moe", "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": "true"})",
           "key 'norm_topk_prob' must be true or false"},
      Case{R"({"model_type": "qwen2_moe", "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": 1})",
           "key 'norm_topk_prob' must be true or false"},
      Case{R"({"model_type": "qwen2_moe", "num_experts": 8, "num_experts_per_tok": 4000000000})",
           "key 'num_experts_per_tok' is out of range"},
      Case{R"({"model_type": "deepseek_v2", "n_routed_experts": 8, "num_experts_per_tok": 2,
              "routed_scaling_factor": "16"})",
           "key 'routed_scaling_factor' must be a number"},
      Case{R"({"model_type": "deepseek_v2", "n_routed_experts": 8, "num_experts_per_tok": 2, "topk_method": "top2"})",
           "key 'topk_method' must be \"greedy\", \"group_limited_greedy\" or \"noaux_tc\" (got \"top2\")"},
      Case{R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2, "scoring_func": "relu"})",
           "key 'scoring_func' must be \"softmax\" or \"sigmoid\" (got \"relu\")"},
      Case{R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2.0})",
           "key 'n_group' must be an integer"},
      Case{R"({"model_type": 7, "num_experts": 8, "num_experts_per_tok": 2})", "key 'model_type' must be a string"},
      Case{R"({"model_type": "foo", "num_experts": 8, "num_experts_per_tok": 2})",
           "missing key 'scoring_func' (softmax or sigmoid): model_type 'foo' is not a known family"},
      Case{R"({"num_experts": 8, "num_experts_per_tok": 2})",
           "missing key 'scoring_func' (softmax or sigmoid): the config names no model_type"},
      Case{R"({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": false})",
           "key 'norm_topk_prob' = false contradicts model_type 'mixtral', which always renormalises"},
      Case{R"({"model_type": "llama4_text", "num_local_experts": 8, "num_experts_per_tok": 1, "norm_topk_prob": true})",
           "key 'norm_topk_prob' = true contradicts model_type 'llama4_text', which never renormalises"},
      Case{R"({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2, "scoring_func": "sigmoid"})",
           "key 'scoring_func' = \"sigmoid\" contradicts model_type 'mixtral' (softmax)"},
      Case{R"({"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "topk_method": "noaux_tc"})",
           "key 'topk_method' = \"noaux_tc\" contradicts model_type 'qwen3_moe'"},
      Case{R"({"model_type": "olmoe", "num_experts": 8, "num_experts_per_tok": 2, "n_group": 2})",
           "key 'n_group' = 2 needs a grouped router"},
      Case{R"({"num_experts": 8, "num_experts_per_tok": 2, "scoring_func": "softmax", "topk_group": 2})",
           "key 'topk_group' = 2 needs a grouped router (set topk_method"},
      Case{R"({"model_type": "switch_transformers", "num_experts": 8, "num_experts_per_tok": 2})",
           "key 'num_experts_per_tok' = 2 contradicts model_type 'switch_transformers', which routes top-1"},
      Case{R"({"model_type": "olmoe", "num_experts": 8, "num_local_experts": 16, "num_experts_per_tok": 2})",
           "keys 'num_experts' (8) and 'num_local_experts' (16) disagree"},
      Case{R"([1, 2, 3])", "a config must be a JSON object (got array)"},
      Case{R"({"model_type": "mixtral", "num_local_experts": 8,)", "malformed JSON"});
  CAPTURE(c.text);
  std::string const message = parse_error(c.text);
  CHECK_THAT(message, Catch::Contains(c.fragment) && Catch::StartsWith("test config: "));
}

TEST_CASE("router parameters out of range are refused when the router is built", "[io]") {
  auto top_k_error = [](std::string const& text) {
    routing::TopK<8> r{.experts = 99};
    clear_error_message();
    CHECK(io::make_top_k_router(parse_ok(text), r) == Status::invalid_argument);
    CHECK(r.experts == 99);  // untouched
    return std::string(last_error_message());
  };
  CHECK_THAT(top_k_error(R"({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 9})"),
             Catch::Contains("num_experts_per_tok must be in [1, E] (got k=9, E=8)"));
  CHECK_THAT(top_k_error(R"({"model_type": "mixtral", "num_local_experts": 0, "num_experts_per_tok": 1})"),
             Catch::Contains("num_experts must be >= 1"));
  CHECK_THAT(top_k_error(R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2})"),
             Catch::Contains("needs a grouped router"));
  routing::TopK<2> small{};
  CHECK(io::make_top_k_router(parse_ok(R"({"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 4})"),
                              small) == Status::unsupported_config);

  auto grouped_error = [](std::string const& text, float const* bias = nullptr) {
    routing::GroupedTopK<8> r{.experts = 99};
    clear_error_message();
    CHECK(io::make_grouped_router(parse_ok(text), bias, r) == Status::invalid_argument);
    CHECK(r.experts == 99);
    return std::string(last_error_message());
  };
  CHECK_THAT(grouped_error(R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2,
    "n_group": 3, "topk_group": 1})"),
             Catch::Contains("n_group=3 does not divide E=8"));
  CHECK_THAT(grouped_error(R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2,
    "n_group": 4, "topk_group": 5})"),
             Catch::Contains("topk_group must be in [1, n_group=4] (got 5)"));
  CHECK_THAT(grouped_error(R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 9})"),
             Catch::Contains("num_experts_per_tok must be in [1, E]"));
  CHECK_THAT(grouped_error(R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2,
    "routed_scaling_factor": -1})"),
             Catch::Contains("routed_scaling_factor must be finite and > 0"));
  float const bias[8] = {};
  CHECK_THAT(grouped_error(R"({"model_type": "deepseek_v2", "n_routed_experts": 8, "num_experts_per_tok": 2})", bias),
             Catch::Contains("e_score_correction_bias is only used by topk_method noaux_tc (got greedy)"));
  CHECK_THAT(grouped_error(R"({"model_type": "olmoe", "num_experts": 8, "num_experts_per_tok": 2})"),
             Catch::Contains("routes plain top-k"));
}

TEST_CASE("config files: io_error when unreadable, the path in every message", "[io]") {
  std::random_device rd;
  auto const dir = std::filesystem::temp_directory_path() / ("moekit_hf_config_test_" + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  io::RouterConfig c;
  clear_error_message();
  CHECK(io::read_router_config(dir / "missing.json", c) == Status::io_error);
  CHECK_THAT(last_error_message(), Catch::Contains("missing.json") && Catch::Contains("no such file"));
  CHECK(io::read_router_config(dir, c) == Status::io_error);
  CHECK_THAT(last_error_message(), Catch::Contains("not a regular file"));
  {
    std::ofstream f(dir / "bad.json");
    f << "{\"model_type\": \"mixtral\",";
  }
  CHECK(io::read_router_config(dir / "bad.json", c) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("bad.json") && Catch::Contains("malformed JSON"));
  {
    std::ofstream f(dir / "ok.json");
    f << R"({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2})";
  }
  {
    std::ofstream f(dir / "no_k.json");
    f << R"({"model_type": "mixtral", "num_local_experts": 8})";
  }
  REQUIRE(io::read_router_config(dir / "ok.json", c) == Status::ok);
  CHECK(c.num_experts == 8);
  CHECK(io::read_router_config(dir / "no_k.json", c) == Status::invalid_argument);
  CHECK_THAT(last_error_message(),
             Catch::Contains("no_k.json") && Catch::Contains("missing key 'num_experts_per_tok'"));
  std::filesystem::remove_all(dir);
}
