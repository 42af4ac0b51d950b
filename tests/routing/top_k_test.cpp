// TopK and GroupedTopK (Mixtral, Qwen2/3-MoE, OLMoE, gpt-oss, Llama-4, Switch, DeepSeek-V2/V3):
// the worked examples of ALGORITHMS.md §1.11, then host reference vs CPU path vs emulated
// device kernel on random and adversarial logits, determinism across schedules and grids, and
// every bad input the issue lists.
//
// Tolerance on weights: the reference computes them in double, the routers in fp32. Relative
// error sources, each bounded in ulps (u = 2^-24): the sequential sum of E exp terms (E u),
// exp itself and the divisions (a few u), and the rounding of z - max, which becomes a relative
// error |z - max| u of exp(z - max) (|z - max| < 32 for the logits generated here). Hence
// rtol = (E + 40) u: a worst-case bound derived from the arithmetic, not fitted. Ids: exact.

#include "moekit/routing/top_k.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "route_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/routing/grouped_top_k.hpp"

using namespace moekit;
using route_test::Logits;
using route_test::Pattern;

namespace {

Logits worked_example_logits() {
  return {2, 8, {1.2f, -0.3f, 2.5f, 0.8f, -1.1f, 2.1f, 0.0f, 1.7f, -0.5f, 0.9f, 0.3f, 1.6f, 2.2f, -0.8f, 1.1f, 0.4f}};
}

double weight_rtol(int experts) { return (experts + 40) * std::ldexp(1.0, -24); }

// Runs the reference, the CPU path and the device kernel (two seeds, two grid sizes) and checks
// that all agree with `expected_ids` / `expected_weights` (rtol 1e-6, the example's precision).
template <class R>
void check_example(R const& r, Logits const& l, std::vector<int> const& expected_ids,
                   std::vector<float> const& expected_weights) {
  route_test::Routed expected;
  expected.status = Status::ok;
  expected.ids = expected_ids;
  expected.weights = expected_weights;
  route_test::require_same_routing(expected, route_test::host_reference(r, l), 1e-6, 0);
  route_test::require_same_routing(expected, route_test::cpu_route(r, l), 1e-6, 0);
  route_test::require_same_routing(expected, route_test::device_route(r, l, 0), 1e-6, 0);
  route_test::require_same_routing(expected, route_test::device_route(r, l, 5, 1), 1e-6, 0);
}

}  // namespace

TEST_CASE("softmax families reproduce the worked example of ALGORITHMS.md 1.11", "[routing][emu]") {
  Logits const l = worked_example_logits();
  check_example(routing::mixtral_router(8, 2), l, {2, 5, 4, 3}, {0.5986877f, 0.4013123f, 0.6456563f, 0.3543437f});
  check_example(routing::qwen_moe_router(8, 2, true), l, {2, 5, 4, 3},
                {0.5986877f, 0.4013123f, 0.6456563f, 0.3543437f});
  check_example(routing::qwen_moe_router(8, 2, false), l, {2, 5, 4, 3},
                {0.3642877f, 0.2441893f, 0.3866864f, 0.212218f});
  check_example(routing::olmoe_router(8, 2), l, {2, 5, 4, 3}, {0.3642877f, 0.2441893f, 0.3866864f, 0.212218f});
  check_example(routing::gpt_oss_router(8, 2), l, {2, 5, 4, 3}, {0.5986877f, 0.4013123f, 0.6456563f, 0.3543437f});
  check_example(routing::llama4_router(8), l, {2, 4}, {0.9241418f, 0.9002495f});
  check_example(routing::switch_router(8), l, {2, 4}, {0.3642877f, 0.3866864f});
}

TEST_CASE("gpt-oss softmax-of-selected and Mixtral renormalisation differ only by rounding", "[routing]") {
  Logits const l = worked_example_logits();
  auto const mixtral = route_test::cpu_route(routing::mixtral_router(8, 2), l);
  auto const gpt_oss = route_test::cpu_route(routing::gpt_oss_router(8, 2), l);
  // ALGORITHMS.md 1.11: fp32 Mixtral gives 0.5986877, the gpt-oss path 0.59868765.
  CHECK(mixtral.weights[0] == 0.5986877f);
  CHECK(gpt_oss.weights[0] == 0.59868765f);
}

TEST_CASE("DeepSeek routers reproduce the worked example of ALGORITHMS.md 1.11", "[routing][emu]") {
  Logits const l = worked_example_logits();
  using routing::TopKMethod;
  check_example(routing::deepseek_v2_router(8, 2, TopKMethod::greedy, 1, 1, 16.f), l, {2, 5, 4, 3},
                {5.828603f, 3.907030f, 6.186983f, 3.395488f});
  check_example(routing::deepseek_v2_router(8, 2, TopKMethod::group_limited_greedy, 4, 1, 16.f), l, {2, 3, 4, 5},
                {5.828603f, 1.064790f, 6.186983f, 0.3080318f});
  check_example(routing::deepseek_v2_router(8, 2, TopKMethod::group_limited_greedy, 4, 1, 16.f, true), l, {2, 3, 4, 5},
                {0.8455347f, 0.1544653f, 0.9525741f, 0.0474259f});
  float const bias[8] = {0.05f, -0.05f, -0.10f, 0.f, 0.20f, 0.f, 0.15f, -0.15f};
  check_example(routing::deepseek_v3_router(8, 2, 4, 2, 2.5f, bias), l, {2, 7, 4, 6},
                {1.305524f, 1.194476f, 1.363593f, 1.136407f});
  check_example(routing::deepseek_v3_router(8, 2, 4, 2, 2.5f, nullptr), l, {2, 7, 3, 6},
                {1.305524f, 1.194476f, 1.314589f, 1.185411f});
}

TEST_CASE("ties go to the lower expert index (ALGORITHMS.md 1.11 tie test)", "[routing][emu]") {
  Logits const zero{1, 8, std::vector<float>(8, 0.f)};
  using routing::TopKMethod;
  check_example(routing::mixtral_router(8, 2), zero, {0, 1}, {0.5f, 0.5f});
  check_example(routing::qwen_moe_router(8, 2, false), zero, {0, 1}, {0.125f, 0.125f});
  check_example(routing::deepseek_v2_router(8, 2, TopKMethod::greedy, 1, 1, 16.f), zero, {0, 1}, {2.f, 2.f});
  check_example(routing::deepseek_v3_router(8, 2, 4, 2, 2.5f, nullptr), zero, {0, 1}, {1.25f, 1.25f});
  check_example(routing::llama4_router(8), zero, {0}, {0.5f});
}

TEST_CASE("bf16 logit rounding reproduces a bf16 HF router", "[routing]") {
  // 1.00390625 is not a bf16 value: it rounds (to even) to 1.0 and then ties expert 0.
  Logits const l{1, 3, {1.0f, 1.00390625f, -2.f}};
  auto r = routing::mixtral_router(3, 1);
  CHECK(route_test::cpu_route(r, l).ids == std::vector<int>{1});
  r.round_logits_to_bf16 = true;
  CHECK(route_test::cpu_route(r, l).ids == std::vector<int>{0});
  route_test::require_same_routing(route_test::host_reference(r, l), route_test::device_route(r, l, 3), 1e-6, 0);
}

namespace {

template <class R>
void compare_all_paths(R const& r, Logits const& l) {
  auto const reference = route_test::host_reference(r, l);
  REQUIRE(reference.status == Status::ok);
  double const rtol = weight_rtol(l.experts);
  route_test::require_same_routing(reference, route_test::cpu_route(r, l), rtol, 1e-30);
  auto const device = route_test::device_route(r, l, 0);
  route_test::require_same_routing(reference, device, rtol, 1e-30);
  // The CPU path's vectorised scores give the device's bits exactly.
  route_test::require_identical(device, route_test::cpu_route(r, l));
  CHECK(device.diagnostics.nonfinite_rows == 0);
  // Determinism: other schedules and grid sizes give the same bits.
  route_test::require_identical(device, route_test::device_route(r, l, 11, 1));
  route_test::require_identical(device, route_test::device_route(r, l, 12, 2));
}

}  // namespace

TEST_CASE("TopK: host reference, CPU path and device kernel agree", "[routing][emu]") {
  auto const scoring = GENERATE(routing::ScoreFunction::softmax, routing::ScoreFunction::sigmoid,
                                routing::ScoreFunction::softmax_of_selected);
  auto const norm = GENERATE(false, true);
  auto const shape = GENERATE(std::pair{1, 1}, std::pair{7, 3}, std::pair{8, 8}, std::pair{60, 4}, std::pair{256, 8});
  auto const tokens = GENERATE(std::int64_t{1}, std::int64_t{37}, std::int64_t{300});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::masked);
  CAPTURE(int(scoring), norm, shape.first, shape.second, tokens, route_test::name(pattern));
  routing::TopK<8> r{.experts = shape.first,
                     .k = shape.second,
                     .scoring = scoring,
                     .norm_topk_prob = norm,
                     .routed_scaling_factor = norm ? 1.f : 2.5f};
  if (pattern == Pattern::masked && shape.first < 3) {
    SUCCEED("skipped: masking a third of fewer than 3 experts would mask whole rows");
    return;
  }
  if (pattern == Pattern::masked && shape.second > shape.first - shape.first / 3) {
    r.k = shape.first - (shape.first + 1) / 3;  // keep k within the unmasked experts (a -inf pick gives 0/0)
  }
  compare_all_paths(r, route_test::make_logits(tokens, shape.first, pattern, static_cast<std::uint32_t>(tokens)));
}

TEST_CASE("GroupedTopK: host reference, CPU path and device kernel agree", "[routing][emu]") {
  using routing::TopKMethod;
  struct Case {
    int experts, k, n_group, topk_group;
    TopKMethod method;
  };
  auto const c = GENERATE(Case{8, 2, 4, 2, TopKMethod::noaux_tc}, Case{256, 8, 8, 4, TopKMethod::noaux_tc},
                          Case{60, 6, 6, 3, TopKMethod::noaux_tc}, Case{64, 6, 1, 1, TopKMethod::noaux_tc},
                          Case{160, 6, 8, 3, TopKMethod::group_limited_greedy}, Case{64, 6, 1, 1, TopKMethod::greedy},
                          Case{12, 4, 4, 2, TopKMethod::group_limited_greedy});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::coarse, Pattern::one_expert);
  auto const norm = GENERATE(false, true);
  auto const tokens = GENERATE(std::int64_t{1}, std::int64_t{130});
  CAPTURE(c.experts, c.k, c.n_group, c.topk_group, int(c.method), route_test::name(pattern), norm, tokens);
  std::vector<float> bias(static_cast<std::size_t>(c.experts));
  for (int e = 0; e < c.experts; ++e) {
    bias[e] = pattern == Pattern::coarse ? float((e * 7) % 5 - 2) / 8.f : float((e * 37) % 17 - 8) / 100.f;
  }
  routing::GroupedTopK<8> r{.experts = c.experts,
                            .k = c.k,
                            .method = c.method,
                            .scoring = c.method == TopKMethod::noaux_tc ? routing::ScoreFunction::sigmoid
                                                                        : routing::ScoreFunction::softmax,
                            .n_group = c.n_group,
                            .topk_group = c.topk_group,
                            .norm_topk_prob = norm,
                            .routed_scaling_factor = 2.5f,
                            .correction_bias = c.method == TopKMethod::noaux_tc ? bias.data() : nullptr};
  compare_all_paths(r, route_test::make_logits(tokens, c.experts, pattern, 99u + static_cast<std::uint32_t>(tokens)));
}

TEST_CASE("T = 0 routes nothing and launches nothing", "[routing][emu]") {
  Logits const empty{0, 8, {}};
  auto const r = routing::mixtral_router(8, 2);
  CHECK(route_test::host_reference(r, empty).status == Status::ok);
  CHECK(route_test::cpu_route(r, empty).status == Status::ok);
  CHECK(route_test::device_route(r, empty, 1).status == Status::ok);
}

TEST_CASE("bad parameters get a Status with a message and leave outputs untouched", "[routing]") {
  Logits const l = route_test::make_logits(3, 8, Pattern::random, 1);
  auto expect_rejected = [&](auto const& r, Status code, char const* fragment) {
    clear_error_message();
    auto const a = route_test::cpu_route(r, l);
    CHECK(a.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    for (int id : a.ids) {
      CHECK(id == -7);
    }
    CHECK(route_test::host_reference(r, l).status == code);
    CHECK(route_test::device_route(r, l, 0).status == code);
  };
  expect_rejected(routing::TopK<8>{.experts = 8, .k = 9}, Status::invalid_argument, "num_experts_per_tok");
  expect_rejected(routing::TopK<8>{.experts = 8, .k = 0}, Status::invalid_argument, "num_experts_per_tok");
  expect_rejected(routing::TopK<2>{.experts = 8, .k = 3}, Status::unsupported_config, "MaxK");
  expect_rejected(routing::TopK<8>{.experts = 8, .k = 2, .routed_scaling_factor = 0.f}, Status::invalid_argument,
                  "routed_scaling_factor");
  using routing::TopKMethod;
  expect_rejected(routing::deepseek_v3_router(8, 2, 3, 2, 1.f, nullptr), Status::invalid_argument, "does not divide");
  expect_rejected(routing::deepseek_v3_router(8, 2, 4, 5, 1.f, nullptr), Status::invalid_argument, "topk_group");
  expect_rejected(routing::deepseek_v3_router(8, 2, 8, 2, 1.f, nullptr), Status::invalid_argument, "E/n_group >= 2");
  expect_rejected(routing::deepseek_v2_router(8, 3, TopKMethod::group_limited_greedy, 4, 1, 1.f),
                  Status::invalid_argument, "exceeds the 2 experts");
}

namespace {
constexpr float nan_value = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_value = std::numeric_limits<float>::infinity();
}  // namespace

TEST_CASE("non-finite logits: the host refuses, the device counts and stays in range", "[routing][emu]") {
  auto const r = routing::mixtral_router(4, 2);
  struct Case {
    float a, b;
    char const* fragment;
  };
  auto const c = GENERATE(Case{nan_value, 0.f, "non-finite value nan at token 1, expert 2"},
                          Case{inf_value, 0.f, "non-finite value inf at token 1, expert 2"},
                          Case{-inf_value, -inf_value, "all experts masked (-inf) at token 1"});
  Logits l = route_test::make_logits(3, 4, Pattern::random, 2);
  l.at(1, 2) = c.a;
  if (c.b != 0.f) {
    l.at(1, 0) = l.at(1, 1) = l.at(1, 3) = c.b;
  }
  clear_error_message();
  auto const host = route_test::cpu_route(r, l);
  CHECK(host.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains(c.fragment));
  CHECK(host.ids == std::vector<int>(6, -7));
  CHECK(route_test::host_reference(r, l).status == Status::invalid_argument);

  auto const device = route_test::device_route(r, l, 4);
  REQUIRE(device.status == Status::ok);
  CHECK(device.diagnostics.nonfinite_rows == 1);
  for (int id : device.ids) {
    CHECK((id >= 0 && id < 4));
  }
  // The other tokens are routed exactly as the host routes them alone.
  for (std::int64_t t : {0, 2}) {
    Logits one{1, 4, {l.at(t, 0), l.at(t, 1), l.at(t, 2), l.at(t, 3)}};
    auto const alone = route_test::cpu_route(r, one);
    CHECK(device.ids[t * 2] == alone.ids[0]);
    CHECK(device.weights[t * 2 + 1] == alone.weights[1]);
  }
  if (c.a != c.a) {  // a NaN logit never wins a slot while numbers are left
    CHECK(device.ids[2] != 2);
    CHECK(device.ids[3] != 2);
  }
}

TEST_CASE("null, misaligned and mis-shaped buffers are refused", "[routing][emu]") {
  auto const r = routing::mixtral_router(8, 2);
  Logits l = route_test::make_logits(4, 8, Pattern::random, 3);
  route_test::Routed out;
  auto b = route_test::buffers<MemorySpace::device>(r, l, out);
  Diagnostics d{};
  auto null_logits = b;
  null_logits.logits.data = nullptr;
  CHECK(routing::route(r, null_logits, &d, nullptr) == Status::invalid_argument);
  auto misaligned = b;
  misaligned.weights.data = reinterpret_cast<float*>(reinterpret_cast<char*>(out.weights.data()) + 1);
  CHECK(routing::route(r, misaligned, &d, nullptr) == Status::misaligned);
  auto wrong_k = b;
  wrong_k.ids.extents[1] = 3;
  CHECK(routing::route(r, wrong_k, &d, nullptr) == Status::invalid_argument);
  CHECK(routing::route(r, b, nullptr, nullptr) == Status::invalid_argument);
  CHECK(out.ids == std::vector<int>(8, -7));
}
