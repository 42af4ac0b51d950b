// The fP balance losses (ALGORITHMS.md §2.1-§2.4, §2.6, §2.7, §3.1): every worked example on the
// host reference and the emulated device path, host vs device on random and adversarial logits,
// gradients against fp64 central differences, determinism over schedules and grid sizes, and
// every bad input with its Status and message.
//
// Tolerances.
//  - Worked examples: the printed numbers carry 7 significant digits (relative error <= 5e-7) or,
//    for §3.1, 7 decimals (absolute 5e-8). The host reference rounds a double result to fp32
//    once (6e-8 relative): rtol 6e-7 plus the printing's absolute error. The device path is held
//    to the §2.0 rule.
//  - Host vs device: the §2.0 rule, rtol 1e-5 and atol 1e-7. The device's error is a few ulp
//    (u = 6e-8): compensated fp32 sums over experts and over each chunk's tokens, double across
//    chunks, 1-ulp exp/log, and exp(z - max) inheriting the rounding of z - max (|z - max| u).
//    Counts exactly.
//  - Finite differences: see fd_tolerance below.

#include "moekit/balancing/fp_loss.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "fp_loss_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/balancing/fp_loss_kernels.hpp"
#include "moekit/host/balance_loss_reference.hpp"

using namespace moekit;
using balancing::LossScore;
using balancing::SequenceLayout;
using loss_test::Logits;
using loss_test::Pattern;
using loss_test::Result;
using loss_test::Run;

namespace {

constexpr double rule_rtol = 1e-5;  // §2.0
constexpr double rule_atol = 1e-7;

struct Expected {
  Expected(double v, std::vector<double> g = {}, std::vector<long long> c = {}, std::vector<double> f_ = {},
           std::vector<double> p = {}, double print = 0)
      : value(v), grad(std::move(g)), counts(std::move(c)), f(std::move(f_)), P(std::move(p)), print_atol(print) {}
  double value = 0;
  std::vector<double> grad;  // empty: not given
  std::vector<long long> counts;
  std::vector<double> f;  // empty: not given
  std::vector<double> P;  // empty: not given
  double print_atol = 0;  // absolute error of the printed numbers
};

void require_example(Result const& got, Expected const& x, double rtol, double atol) {
  REQUIRE(got.status == Status::ok);
  loss_test::require_close(got.value, x.value, rtol, atol, "value");
  if (!x.grad.empty()) {
    loss_test::require_close(got.grad, x.grad, rtol, atol, "gradient");
  }
  if (!x.counts.empty()) {
    REQUIRE(got.counts == x.counts);
  }
  if (!x.f.empty()) {
    loss_test::require_close(got.f, x.f, rtol, atol, "f");
  }
  if (!x.P.empty()) {
    loss_test::require_close(got.P, x.P, rtol, atol, "P");
  }
}

// Host, device in order, device shuffled on a one-block grid: all match the example.
template <class Policy>
void check_example(Policy const& p, Logits const& l, Expected const& x, Run const& run = {}) {
  require_example(loss_test::host_loss(p, l, run), x, 6e-7, x.print_atol + 1e-12);
  require_example(loss_test::device_loss(p, l, 0, 0, run), x, rule_rtol, rule_atol + x.print_atol);
  require_example(loss_test::device_loss(p, l, 5, 1, run), x, rule_rtol, rule_atol + x.print_atol);
}

std::vector<double> scaled(std::vector<double> v, double s) {
  for (double& x : v) {
    x *= s;
  }
  return v;
}

// ALGORITHMS.md §2.1 (alpha = 1).
std::vector<double> const switch_grad = {0.1669898,   -0.01700008, -0.04976842, -0.1002213,  0.0992255,  0.01511808,
                                         -0.07117423, -0.04316935, 0.1898412,   0.003544551, -0.1248607, -0.06852501};
std::vector<double> const switch_P = {0.3504674, 0.3051524, 0.1893527, 0.1550275};
// §2.4a (lambda = 1, softmax, K = 2).
std::vector<double> const aux_grad = {0.1027199,   0.003160533, -0.02059452, -0.08528594, 0.05445279,  0.01946363,
                                      -0.03162442, -0.042292,   0.1096074,   0.0066611,   -0.05155008, -0.06471845};
// §2.4c micro-batch 2 = §2.3 layer-2 rows.
std::vector<double> const global_mb2_grad = {0.02525434, 0.0008571815, 0.001907693, -0.02801922,
                                             0.01530634, 0.002753498,  0.002039842, -0.02009968,
                                             0.03852022, 0.002083581,  0.001143494, -0.0417473};

}  // namespace

TEST_CASE("Switch and GShard reproduce ALGORITHMS.md 2.1 and 2.2", "[balancing][emu]") {
  Expected const x{1.341450, switch_grad, {2, 1, 0, 0}, {2. / 3, 1. / 3, 0, 0}, switch_P};
  check_example(balancing::SwitchLoss{.alpha = 1.f}, loss_test::z_example(), x);
  check_example(balancing::GShardLoss{.coefficient = 1.f}, loss_test::z_example(), x);
  // alpha = 0.01 scales value and gradient, not f and P.
  Expected const small{0.01341450, scaled(switch_grad, 0.01), {2, 1, 0, 0}, x.f, switch_P};
  check_example(balancing::SwitchLoss{.alpha = 0.01f}, loss_test::z_example(), small);
}

TEST_CASE("Megatron aux_loss and DiT-MoE reproduce ALGORITHMS.md 2.4a and 2.7", "[balancing][emu]") {
  Expected const x{1.234040, aux_grad, {3, 2, 1, 0}, {0.5, 1. / 3, 1. / 6, 0}, switch_P};
  check_example(balancing::MegatronAuxLoss{.moe_router_topk = 2, .moe_aux_loss_coeff = 1.f}, loss_test::z_example(), x);
  Expected const dit{0.01234040, scaled(aux_grad, 0.01), {3, 2, 1, 0}, x.f, switch_P};
  check_example(balancing::DitMoeLoss{}, loss_test::z_example(), dit);
}

TEST_CASE("HF load_balancing_loss_func reproduces ALGORITHMS.md 2.3", "[balancing][emu]") {
  balancing::HfLoadBalancingLoss const one_layer{.num_experts_per_tok = 2, .router_aux_loss_coef = 1.f};
  Expected const x{2.468080,
                   {0.2054399, 0.006321066, -0.04118905, -0.1705719, 0.1089056, 0.03892725, -0.06324884, -0.084584,
                    0.2192149, 0.0133222, -0.1031002, -0.1294369},
                   {3, 2, 1, 0},
                   {0.5, 1. / 3, 1. / 6, 0},
                   switch_P};
  check_example(one_layer, loss_test::z_example(), x);

  std::vector<std::uint8_t> const mask = {1, 1, 0};
  Expected const masked{
      2.858935,
      {0.2589471, 0.1570594, -0.1380361, -0.2779705, 0.1153793, 0.2837874, -0.2484651, -0.1507017, 0, 0, 0, 0},
      {2, 2, 0, 0}};
  check_example(one_layer, loss_test::z_example(), masked, Run{.mask = &mask, .valid_entries = 3});

  balancing::HfLoadBalancingLoss const two_layers{
      .num_experts_per_tok = 2, .num_layers = 2, .router_aux_loss_coef = 1.f};
  std::vector<double> grad = {0.03697401,   -0.007145255, -0.002628592, -0.02720016,  0.02081643,   -0.006034154,
                              -0.002008595, -0.01277368,  0.03407971,   -0.003567872, -0.007940445, -0.02257139};
  grad.insert(grad.end(), global_mb2_grad.begin(), global_mb2_grad.end());
  Expected const pooled{2.040586, grad, {4, 3, 3, 2}};
  Logits const both = loss_test::stack(loss_test::z_example(), loss_test::z2_example());
  check_example(two_layers, both, pooled);
  // The [B*S] mask is broadcast to both layers: padding token 2 removes rows 2 and 5.
  std::vector<std::uint8_t> const mask3 = {1, 1, 0};
  auto const host = loss_test::host_loss(two_layers, both, Run{.mask = &mask3});
  REQUIRE(host.status == Status::ok);
  CHECK(std::accumulate(host.counts.begin(), host.counts.end(), 0LL) == 8);
  for (int e = 0; e < 4; ++e) {
    CHECK(host.grad[2 * 4 + e] == 0.f);
    CHECK(host.grad[5 * 4 + e] == 0.f);
  }
  loss_test::require_same_loss(host, loss_test::device_loss(two_layers, both, 3, 0, Run{.mask = &mask3}), rule_rtol,
                               rule_atol);
}

TEST_CASE("Megatron seq_aux_loss reproduces ALGORITHMS.md 2.4b in both layouts", "[balancing][emu]") {
  balancing::MegatronAuxLoss const aux{.moe_router_topk = 2, .moe_aux_loss_coeff = 1.f};
  balancing::MegatronSeqAuxLoss seq{.moe_router_topk = 2, .moe_aux_loss_coeff = 1.f, .batch = 2, .seq_len = 3};
  Logits const z = loss_test::z_example();
  Logits const z2 = loss_test::z2_example();
  // Per sequence: 1.234040 and 1.026636.
  CHECK(std::fabs(loss_test::host_loss(aux, z2).value - 1.026636) <= 6e-7 * 1.026636 + 1e-12);
  Logits const batch_major = loss_test::stack(z, z2);
  Expected x{1.130338, {}, {4, 3, 3, 2}};
  // The gradient is half of each sequence's own aux-loss gradient.
  auto const g1 = loss_test::host_loss(aux, z).grad;
  auto const g2 = loss_test::host_loss(aux, z2).grad;
  for (float v : g1) {
    x.grad.push_back(0.5 * v);
  }
  for (float v : g2) {
    x.grad.push_back(0.5 * v);
  }
  x.print_atol = 1e-8;  // the halved fp32 gradients above
  check_example(seq, batch_major, x);

  // Megatron's [S, B] layout: row s * B + b.
  Logits seq_major{6, 4, std::vector<float>(24)};
  Expected y = x;
  for (int s = 0; s < 3; ++s) {
    for (int b = 0; b < 2; ++b) {
      for (int e = 0; e < 4; ++e) {
        seq_major.at(s * 2 + b, e) = batch_major.at(b * 3 + s, e);
        y.grad[(s * 2 + b) * 4 + e] = x.grad[(b * 3 + s) * 4 + e];
      }
    }
  }
  seq.layout = SequenceLayout::seq_major;
  check_example(seq, seq_major, y);

  // seq_len 0 means T / B.
  seq.layout = SequenceLayout::batch_major;
  seq.seq_len = 0;
  check_example(seq, batch_major, x);
}

TEST_CASE("Megatron global_aux_loss reproduces ALGORITHMS.md 2.4c", "[balancing][emu]") {
  Logits const z = loss_test::z_example();
  Logits const z2 = loss_test::z2_example();
  for (int path = 0; path < 2; ++path) {
    CAPTURE(path);
    long long C[4] = {9, 9, 9, 9};
    balancing::GlobalAuxState state{C, 4, 5};
    REQUIRE(balancing::reset_global_aux_state(state) == Status::ok);
    if (path == 1) {
      state.m = 3;  // the device reset zeroes both
      REQUIRE(balancing::reset_global_aux_state(state, nullptr) == Status::ok);
    }
    CHECK(state.m == 0);
    balancing::MegatronGlobalAuxLoss const p{.moe_router_topk = 2, .moe_aux_loss_coeff = 1.f, .state = &state};
    auto run = [&](Logits const& l) {
      return path == 0 ? loss_test::host_loss(p, l) : loss_test::device_loss(p, l, 9);
    };
    double const rtol = path == 0 ? 6e-7 : rule_rtol;
    double const atol = path == 0 ? 1e-12 : rule_atol;
    require_example(run(z), Expected{1.234040, aux_grad, {3, 2, 1, 0}, {0.5, 1. / 3, 1. / 6, 0}}, rtol, atol);
    CHECK(state.m == 1);
    CHECK(std::vector<long long>(C, C + 4) == std::vector<long long>{3, 2, 1, 0});
    // Micro-batch 2: counts [1,1,2,2], running mean [2, 1.5, 1.5, 1], f = mean / (K N).
    require_example(run(z2), Expected{0.9754392, global_mb2_grad, {1, 1, 2, 2}, {2. / 6, 1.5 / 6, 1.5 / 6, 1. / 6}},
                    rtol, atol);
    CHECK(state.m == 2);
    CHECK(std::vector<long long>(C, C + 4) == std::vector<long long>{4, 3, 3, 2});
    REQUIRE(balancing::reset_global_aux_state(state) == Status::ok);
    CHECK(state.m == 0);
    CHECK(std::vector<long long>(C, C + 4) == std::vector<long long>{0, 0, 0, 0});
  }
}

TEST_CASE("DeepSeek-V3 sequence-wise loss reproduces ALGORITHMS.md 2.6", "[balancing][emu]") {
  Expected const x{1.096838,
                   {0.0254218, 0.007489947, -0.01540594, -0.04034121, 0.03188446, 0.00578189, -0.01631553, -0.03924723,
                    0.02781851, 0.009661797, -0.01310929, -0.03840862},
                   {3, 2, 1, 0},
                   {0.5, 1. / 3, 1. / 6, 0},  // logged as c / (K N); the paper's f is E times this
                   {0.2939521, 0.2689064, 0.2255877, 0.2115538}};
  check_example(balancing::DeepSeekV3SeqLoss{.num_experts_per_tok = 2, .aux_loss_alpha = 1.f}, loss_test::z_example(),
                x);
  // Megatron's seq_aux_loss with the sigmoid score is the same loss.
  check_example(
      balancing::MegatronSeqAuxLoss{
          .moe_router_topk = 2, .moe_aux_loss_coeff = 1.f, .score = LossScore::nsigmoid, .batch = 1, .seq_len = 3},
      loss_test::z_example(), x);
  // And so is Megatron's aux_loss with the sigmoid score on one sequence.
  check_example(
      balancing::MegatronAuxLoss{.moe_router_topk = 2, .moe_aux_loss_coeff = 1.f, .score = LossScore::nsigmoid},
      loss_test::z_example(), x);
}

TEST_CASE("AdaMoE null-grouped loss reproduces ALGORITHMS.md 3.1", "[balancing][emu]") {
  Logits const z{2, 6, {2.0f, 1.0f, 0.5f, -1.0f, 1.5f, 0.2f, 0.1f, -0.5f, 0.3f, 0.0f, 1.2f, 0.9f}};
  balancing::AdaMoeLoss const p{.num_null_experts = 2, .num_experts_per_tok = 3, .router_aux_loss_coef = 1.f};
  Expected const x{1.1656771,
                   {-0.0288732, -0.0106218, -0.0064425, -0.0117555, 0.0453372, 0.0123558, -0.0107827, -0.0059176,
                    -0.0131700, -0.0605630, 0.0519487, 0.0384845},
                   {1, 1, 1, 0, 2, 1},
                   {1. / 6, 1. / 6, 1. / 6, 0, 0.25, 0.25},
                   {0.2633928, 0.1070561, 0.1148236, 0.0611244, 0.2943824, 0.1592206},
                   5e-8};
  check_example(p, z, x);
  // HF / exp_2 form: no grouping, times k.
  balancing::AdaMoeLoss hf = p;
  hf.null_grouping = false;
  hf.hf_scale_by_k = true;
  check_example(hf, z,
                Expected{3.6997741, {}, {1, 1, 1, 0, 2, 1}, {1. / 6, 1. / 6, 1. / 6, 0, 1. / 3, 1. / 6}, {}, 5e-8});
  // m = 0 is the plain top-k loss: Megatron aux with K = k.
  Logits const l = loss_test::make_logits(20, 6, Pattern::random, 4);
  auto const a = loss_test::host_loss(
      balancing::AdaMoeLoss{.num_null_experts = 0, .num_experts_per_tok = 3, .router_aux_loss_coef = 1.f}, l);
  auto const b = loss_test::host_loss(balancing::MegatronAuxLoss{.moe_router_topk = 3, .moe_aux_loss_coeff = 1.f}, l);
  loss_test::require_same_loss(b, a, 0, 0);
}

TEST_CASE("E = 1 gives L = lambda and a zero gradient; N = 0 gives zeros", "[balancing][emu]") {
  Logits const one = loss_test::make_logits(5, 1, Pattern::random, 2);
  std::vector<double> const zero_grad(5, 0.0);
  Expected const x{0.5, zero_grad, {5}, {1}, {1}};
  check_example(balancing::SwitchLoss{.alpha = 0.5f}, one, x);
  check_example(
      balancing::MegatronAuxLoss{.moe_router_topk = 1, .moe_aux_loss_coeff = 0.5f, .score = LossScore::nsigmoid}, one,
      x);

  // T = 0, and all tokens padded.
  Logits const empty{0, 4, {}};
  Expected const zeros{0, {}, {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}};
  std::vector<std::uint8_t> const none(3, 0);
  Expected const zeros3{0, std::vector<double>(12, 0.0), {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}};
  auto both = [&](auto const& p) {
    check_example(p, empty, zeros);
    check_example(p, loss_test::z_example(), zeros3, Run{.mask = &none});
  };
  both(balancing::SwitchLoss{.alpha = 1.f});
  both(balancing::GShardLoss{.coefficient = 1.f});
  both(balancing::MegatronAuxLoss{.moe_router_topk = 2, .moe_aux_loss_coeff = 1.f});
  both(balancing::HfLoadBalancingLoss{.router_aux_loss_coef = 1.f});
  both(balancing::DitMoeLoss{});
  both(balancing::AdaMoeLoss{.num_null_experts = 1, .num_experts_per_tok = 2});
  check_example(balancing::DeepSeekV3SeqLoss{.num_experts_per_tok = 2, .batch = 2, .seq_len = 0}, empty, zeros);
  check_example(balancing::MegatronSeqAuxLoss{.moe_aux_loss_coeff = 1.f, .batch = 3, .seq_len = 1},
                loss_test::z_example(), zeros3, Run{.mask = &none});
}

TEST_CASE("a padded sequence adds nothing and still counts in 1/B", "[balancing][emu]") {
  // Sequence 1 fully padded: value = (1/2) x sequence 0's loss.
  Logits const l = loss_test::stack(loss_test::z_example(), loss_test::z2_example());
  std::vector<std::uint8_t> const mask = {1, 1, 1, 0, 0, 0};
  balancing::MegatronSeqAuxLoss const seq{.moe_router_topk = 2, .moe_aux_loss_coeff = 1.f, .batch = 2, .seq_len = 3};
  Expected x{1.234040 / 2, scaled(aux_grad, 0.5), {3, 2, 1, 0}};
  x.grad.resize(24, 0.0);
  check_example(seq, l, x, Run{.mask = &mask});
}

// ---------------------------------------------------------------------------------------------
// Host vs device on random and adversarial inputs, and determinism.

namespace {

template <class Policy>
void compare_paths(Policy const& p, Logits const& l, Run const& run = {}) {
  auto const reference = loss_test::host_loss(p, l, run);
  REQUIRE(reference.status == Status::ok);
  auto const device = loss_test::device_loss(p, l, 0, 0, run);
  loss_test::require_same_loss(reference, device, rule_rtol, rule_atol);
  loss_test::require_identical(device, loss_test::device_loss(p, l, 7, 1, run));
  loss_test::require_identical(device, loss_test::device_loss(p, l, 13, 3, run));
}

struct Shape {
  std::int64_t tokens;
  int experts;
  int k;
};

}  // namespace

TEST_CASE("fP losses: host reference and device path agree, deterministically", "[balancing][emu]") {
  auto const shape = GENERATE(Shape{1, 1, 1}, Shape{1, 5, 5}, Shape{37, 7, 3}, Shape{300, 8, 2}, Shape{513, 60, 6},
                              Shape{257, 256, 8});
  auto const pattern =
      GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::masked, Pattern::coarse, Pattern::large);
  auto const padded = GENERATE(0, 30);
  CAPTURE(shape.tokens, shape.experts, shape.k, loss_test::name(pattern), padded);
  if (shape.experts * shape.tokens > 30000 && pattern != Pattern::random && pattern != Pattern::ties) {
    SUCCEED("skipped: the big shapes run only the random and ties patterns (emulated runtime)");
    return;
  }
  Logits const l = loss_test::make_logits(shape.tokens, shape.experts, pattern,
                                          static_cast<std::uint32_t>(shape.tokens * 31 + shape.experts));
  std::vector<std::uint8_t> const mask = loss_test::make_mask(shape.tokens, padded, 5u);
  Run const run{.mask = padded != 0 ? &mask : nullptr};
  float const lambda = 0.37f;
  int const k = shape.k;
  SECTION("Switch") { compare_paths(balancing::SwitchLoss{.alpha = lambda}, l, run); }
  SECTION("Megatron aux, softmax") {
    compare_paths(balancing::MegatronAuxLoss{.moe_router_topk = k, .moe_aux_loss_coeff = lambda}, l, run);
  }
  SECTION("Megatron aux, nsigmoid") {
    compare_paths(
        balancing::MegatronAuxLoss{.moe_router_topk = k, .moe_aux_loss_coeff = lambda, .score = LossScore::nsigmoid}, l,
        run);
  }
  SECTION("AdaMoE") {
    int const m = shape.experts / 3;
    if (shape.experts - m >= 1) {
      compare_paths(
          balancing::AdaMoeLoss{.num_null_experts = m, .num_experts_per_tok = k, .router_aux_loss_coef = lambda}, l,
          run);
    }
  }
}

TEST_CASE("sequence, pooled and global losses: host and device agree", "[balancing][emu]") {
  struct Case {
    int batch;
    std::int64_t seq_len;
    int experts;
    int k;
  };
  auto const c =
      GENERATE(Case{1, 1, 3, 2}, Case{3, 100, 16, 4}, Case{2, 300, 9, 8}, Case{5, 7, 256, 8}, Case{4, 257, 6, 1});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::masked);
  auto const layout = GENERATE(SequenceLayout::batch_major, SequenceLayout::seq_major);
  std::int64_t const tokens = c.batch * c.seq_len;
  CAPTURE(c.batch, c.seq_len, c.experts, c.k, loss_test::name(pattern), int(layout));
  Logits const l = loss_test::make_logits(tokens, c.experts, pattern, static_cast<std::uint32_t>(tokens + c.experts));
  std::vector<std::uint8_t> const mask = loss_test::make_mask(tokens, 25, 8u);
  Run const run{.mask = &mask, .valid_entries = tokens};
  compare_paths(balancing::DeepSeekV3SeqLoss{.num_experts_per_tok = c.k,
                                             .aux_loss_alpha = 0.25f,
                                             .batch = c.batch,
                                             .seq_len = c.seq_len,
                                             .layout = layout},
                l, run);
  compare_paths(balancing::MegatronSeqAuxLoss{.moe_router_topk = c.k,
                                              .moe_aux_loss_coeff = 0.25f,
                                              .batch = c.batch,
                                              .seq_len = c.seq_len,
                                              .layout = layout},
                l, run);
  if (layout == SequenceLayout::batch_major) {
    // HF: the batch as c.batch "layers" of seq_len rows, the mask of one layer broadcast.
    std::vector<std::uint8_t> const layer_mask(mask.begin(), mask.begin() + c.seq_len);
    compare_paths(balancing::HfLoadBalancingLoss{.num_experts_per_tok = c.k,
                                                 .num_layers = c.batch,
                                                 .router_aux_loss_coef = 0.25f},
                  l, Run{.mask = &layer_mask, .valid_entries = c.seq_len});
    // Global: three micro-batches in a row on each path, states compared after each.
    std::vector<long long> host_C(static_cast<std::size_t>(c.experts), 0), device_C = host_C;
    balancing::GlobalAuxState host_state{host_C.data(), c.experts, 0}, device_state{device_C.data(), c.experts, 0};
    balancing::MegatronGlobalAuxLoss hp{.moe_router_topk = c.k, .moe_aux_loss_coeff = 0.5f, .state = &host_state};
    balancing::MegatronGlobalAuxLoss dp = hp;
    dp.state = &device_state;
    for (int mb = 0; mb < 3; ++mb) {
      Logits const lm = loss_test::make_logits(tokens, c.experts, pattern, static_cast<std::uint32_t>(mb + 100));
      auto const h = loss_test::host_loss(hp, lm, run);
      REQUIRE(h.status == Status::ok);
      loss_test::require_same_loss(h, loss_test::device_loss(dp, lm, static_cast<std::uint64_t>(mb), 2, run), rule_rtol,
                                   rule_atol);
      REQUIRE(host_C == device_C);
      REQUIRE(host_state.m == device_state.m);
    }
  }
}

TEST_CASE("device results do not depend on schedule or grid size", "[balancing][emu]") {
  // Several chunks per group and per grid: 1, 2, 5 and 4096 blocks, four seeds.
  Logits const l = loss_test::make_logits(1100, 12, Pattern::coarse, 77);
  std::vector<std::uint8_t> const mask = loss_test::make_mask(1100, 10, 3u);
  Run const run{.mask = &mask};
  balancing::DeepSeekV3SeqLoss const seq{
      .num_experts_per_tok = 3, .aux_loss_alpha = 1.f, .batch = 2, .layout = SequenceLayout::seq_major};
  balancing::AdaMoeLoss const ada{.num_null_experts = 4, .num_experts_per_tok = 3, .router_aux_loss_coef = 1.f};
  auto const a = loss_test::device_loss(seq, l, 0, 0, run);
  auto const b = loss_test::device_loss(ada, l, 0, 0, run);
  REQUIRE(a.status == Status::ok);
  for (unsigned blocks : {1u, 2u, 5u, 4096u}) {
    for (std::uint64_t seed : {1u, 2u, 3u, 4u}) {
      CAPTURE(blocks, seed);
      loss_test::require_identical(a, loss_test::device_loss(seq, l, seed, blocks, run));
      loss_test::require_identical(b, loss_test::device_loss(ada, l, seed, blocks, run));
    }
  }
}

TEST_CASE("device path: NaN propagates, counts stay in range, no gradient wanted", "[balancing][emu]") {
  Logits l = loss_test::z_example();
  l.at(1, 2) = std::numeric_limits<float>::quiet_NaN();
  balancing::MegatronAuxLoss const p{.moe_router_topk = 2, .moe_aux_loss_coeff = 1.f};
  auto const d = loss_test::device_loss(p, l, 3);
  REQUIRE(d.status == Status::ok);
  CHECK(std::isnan(d.value));
  // NaN ranks last: token 1 still counts experts 1 and 0.
  CHECK(d.counts == std::vector<long long>{3, 2, 1, 0});
  for (int e = 0; e < 4; ++e) {
    CHECK(std::isnan(d.grad[4 + e]));
    CHECK(!std::isnan(d.grad[e]));  // other tokens' rows stay finite only through F, which is finite
  }
  // Without a gradient buffer nothing is written there.
  auto const g = loss_test::device_loss(p, loss_test::z_example(), 1, 0, Run{.want_grad = false});
  REQUIRE(g.status == Status::ok);
  for (float v : g.grad) {
    CHECK(loss_test::same_bits(v, loss_test::sentinel));
  }
  CHECK(std::fabs(g.value - 1.234040) <= 1e-5 * 1.234040);
}

// ---------------------------------------------------------------------------------------------
// Gradients against central finite differences of an fp64 copy of each formula.
//
// The copy below restates the loss in double with the counts held fixed at those of the given
// logits (the inputs are drawn with top-K margins far above the step, so the counts are those of
// every perturbed input too). With h = 1e-6 the central difference has truncation error
// h^2 |L'''| / 6 < 1e-11 and rounding error about 1e-16 |L| / h = 1e-10 |L|; the host gradient is
// a double rounded to fp32 (relative 6e-8). Hence |fd - g| <= 1e-7 |g| + 1e-9 max(1, |L|).

namespace {

struct DoubleForm {
  LossScore score = LossScore::softmax;
  std::vector<std::vector<std::int64_t>> groups;
  std::vector<std::vector<double>> F;
  std::vector<double> multiplier;
  std::vector<char> valid;
};

// Top-k membership by a sort of the logits, and the smallest gap between the k-th and (k+1)-th.
std::vector<char> top_k_sets(Logits const& l, int k, std::vector<char> const& valid, double& margin) {
  std::vector<char> in(static_cast<std::size_t>(l.tokens * l.experts), 0);
  margin = INFINITY;
  for (std::int64_t t = 0; t < l.tokens; ++t) {
    if (valid[t] == 0) {
      continue;
    }
    std::vector<int> order(static_cast<std::size_t>(l.experts));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int a, int b) { return l.at(t, a) > l.at(t, b) || (l.at(t, a) == l.at(t, b) && a < b); });
    for (int j = 0; j < k; ++j) {
      in[t * l.experts + order[j]] = 1;
    }
    if (k < l.experts) {
      margin = std::min(margin, double(l.at(t, order[k - 1])) - double(l.at(t, order[k])));
    }
  }
  return in;
}

double form_value(DoubleForm const& d, std::vector<double> const& z, int experts) {
  double value = 0;
  for (std::size_t g = 0; g < d.groups.size(); ++g) {
    std::vector<double> sum(static_cast<std::size_t>(experts), 0.0);
    double n = 0;
    for (std::int64_t t : d.groups[g]) {
      if (d.valid[t] == 0) {
        continue;
      }
      n += 1;
      std::vector<double> q(static_cast<std::size_t>(experts));
      double total = 0;
      double m = -INFINITY;
      for (int e = 0; e < experts; ++e) {
        m = std::max(m, z[t * experts + e]);
      }
      for (int e = 0; e < experts; ++e) {
        q[e] =
            d.score == LossScore::softmax ? std::exp(z[t * experts + e] - m) : 1 / (1 + std::exp(-z[t * experts + e]));
        total += q[e];
      }
      for (int e = 0; e < experts; ++e) {
        sum[e] += q[e] / (d.score == LossScore::softmax ? total : total + 1e-20);
      }
    }
    if (n == 0) {
      continue;
    }
    double v = 0;
    for (int e = 0; e < experts; ++e) {
      v += d.F[g][e] * sum[e] / n;
    }
    value += d.multiplier[g] * v;
  }
  return value;
}

// Groups with F_{g,i} = counts_{g,i} / (k_f N_g) (rule applied by the caller) and a multiplier.
DoubleForm plain_form(Logits const& l, std::vector<char> const& valid, std::vector<std::vector<std::int64_t>> groups,
                      int k, double f_divisor_k, double multiplier, LossScore score, double& margin) {
  DoubleForm d;
  d.score = score;
  d.valid = valid;
  d.groups = std::move(groups);
  auto const in = top_k_sets(l, k, valid, margin);
  for (auto const& members : d.groups) {
    std::vector<double> c(static_cast<std::size_t>(l.experts), 0.0);
    double n = 0;
    for (std::int64_t t : members) {
      if (valid[t] == 0) {
        continue;
      }
      n += 1;
      for (int e = 0; e < l.experts; ++e) {
        c[e] += in[t * l.experts + e];
      }
    }
    for (double& v : c) {
      v = n == 0 ? 0 : v / (f_divisor_k * n);
    }
    d.F.push_back(c);
    d.multiplier.push_back(multiplier);
  }
  return d;
}

std::vector<std::int64_t> everything(std::int64_t tokens) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(tokens));
  std::iota(v.begin(), v.end(), std::int64_t{0});
  return v;
}

void require_gradient_matches(DoubleForm const& d, Logits const& l, Result const& host) {
  REQUIRE(host.status == Status::ok);
  std::vector<double> z(l.values.begin(), l.values.end());
  double const value = form_value(d, z, l.experts);
  loss_test::require_close(host.value, value, 1e-7, 1e-12, "value of the fp64 copy");
  double const h = 1e-6;
  for (std::size_t i = 0; i < z.size(); ++i) {
    double const keep = z[i];
    z[i] = keep + h;
    double const up = form_value(d, z, l.experts);
    z[i] = keep - h;
    double const down = form_value(d, z, l.experts);
    z[i] = keep;
    loss_test::require_close(host.grad[i], (up - down) / (2 * h), 1e-7, 1e-9 * std::max(1.0, std::fabs(value)),
                             "gradient entry " + std::to_string(i));
  }
}

}  // namespace

TEST_CASE("gradients match central finite differences of the fp64 formulas", "[balancing]") {
  std::int64_t const tokens = 14;
  int const experts = 7;
  int const k = 3;
  // Coarse logits plus distinct offsets: margins of at least 0.01 >> h.
  Logits l = loss_test::make_logits(tokens, experts, Pattern::coarse, 12);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) {
      l.at(t, e) += 0.01f * float((t * 3 + e * 5) % experts);
    }
  }
  std::vector<std::uint8_t> const mask = loss_test::make_mask(tokens, 20, 4u);
  std::vector<char> valid(mask.begin(), mask.end());
  Run const run{.mask = &mask};
  double margin = 0;
  auto check_margin = [&] { REQUIRE(margin > 1e-3); };
  float const lambda = 0.8f;

  SECTION("Switch") {
    auto const d = plain_form(l, valid, {everything(tokens)}, 1, 1, lambda * experts, LossScore::softmax, margin);
    check_margin();
    require_gradient_matches(d, l, loss_test::host_loss(balancing::SwitchLoss{.alpha = lambda}, l, run));
  }
  SECTION("Megatron aux, both scores") {
    for (LossScore s : {LossScore::softmax, LossScore::nsigmoid}) {
      auto const d = plain_form(l, valid, {everything(tokens)}, k, k, lambda * experts, s, margin);
      check_margin();
      require_gradient_matches(
          d, l,
          loss_test::host_loss(
              balancing::MegatronAuxLoss{.moe_router_topk = k, .moe_aux_loss_coeff = lambda, .score = s}, l, run));
    }
  }
  SECTION("HF, two layers, broadcast mask") {
    std::vector<std::uint8_t> const layer_mask(mask.begin(), mask.begin() + tokens / 2);
    std::vector<char> broadcast(static_cast<std::size_t>(tokens));
    for (std::int64_t t = 0; t < tokens; ++t) {
      broadcast[t] = static_cast<char>(layer_mask[t % (tokens / 2)]);
    }
    // f = c / R (sum K), aux = E sum f P.
    auto const d = plain_form(l, broadcast, {everything(tokens)}, k, 1, lambda * experts, LossScore::softmax, margin);
    check_margin();
    require_gradient_matches(
        d, l,
        loss_test::host_loss(
            balancing::HfLoadBalancingLoss{.num_experts_per_tok = k, .num_layers = 2, .router_aux_loss_coef = lambda},
            l, Run{.mask = &layer_mask}));
  }
  SECTION("DeepSeek-V3 sequences, seq-major") {
    int const batch = 2;
    std::vector<std::vector<std::int64_t>> groups(batch);
    for (std::int64_t t = 0; t < tokens; ++t) {
      groups[t % batch].push_back(t);
    }
    auto const d = plain_form(l, valid, groups, k, k, double(lambda) * experts / batch, LossScore::nsigmoid, margin);
    check_margin();
    require_gradient_matches(d, l,
                             loss_test::host_loss(balancing::DeepSeekV3SeqLoss{.num_experts_per_tok = k,
                                                                               .aux_loss_alpha = lambda,
                                                                               .batch = batch,
                                                                               .layout = SequenceLayout::seq_major},
                                                  l, run));
  }
  SECTION("Megatron seq_aux, softmax, batch-major") {
    int const batch = 2;
    std::vector<std::vector<std::int64_t>> groups(batch);
    for (std::int64_t t = 0; t < tokens; ++t) {
      groups[t / (tokens / batch)].push_back(t);
    }
    auto const d = plain_form(l, valid, groups, k, k, double(lambda) * experts / batch, LossScore::softmax, margin);
    check_margin();
    require_gradient_matches(d, l,
                             loss_test::host_loss(balancing::MegatronSeqAuxLoss{.moe_router_topk = k,
                                                                                .moe_aux_loss_coeff = lambda,
                                                                                .batch = batch,
                                                                                .seq_len = tokens / batch},
                                                  l, run));
  }
  SECTION("global, second micro-batch") {
    std::vector<long long> C = {5, 0, 2, 7, 1, 1, 4};
    balancing::GlobalAuxState state{C.data(), experts, 1};
    auto d = plain_form(l, valid, {everything(tokens)}, k, 1, lambda * experts, LossScore::softmax, margin);
    check_margin();
    double n = 0;
    for (char v : valid) {
      n += v;
    }
    for (int e = 0; e < experts; ++e) {
      d.F[0][e] = (double(C[e]) + d.F[0][e] * n) / 2 / (k * n);  // F held counts / N: running mean over m = 2
    }
    require_gradient_matches(
        d, l,
        loss_test::host_loss(
            balancing::MegatronGlobalAuxLoss{.moe_router_topk = k, .moe_aux_loss_coeff = lambda, .state = &state}, l,
            run));
  }
  SECTION("AdaMoE, grouped") {
    int const m = 3;
    auto d = plain_form(l, valid, {everything(tokens)}, k, k, lambda * experts, LossScore::softmax, margin);
    check_margin();
    double null_mean = 0;
    for (int e = experts - m; e < experts; ++e) {
      null_mean += d.F[0][e] / m;
    }
    for (int e = experts - m; e < experts; ++e) {
      d.F[0][e] = null_mean;
    }
    require_gradient_matches(
        d, l,
        loss_test::host_loss(
            balancing::AdaMoeLoss{.num_null_experts = m, .num_experts_per_tok = k, .router_aux_loss_coef = lambda}, l,
            run));
  }
}

// ---------------------------------------------------------------------------------------------
// Bad input: a Status with a message, outputs (and a global state) untouched, on both paths.

namespace {

template <class Policy>
void expect_rejected(Policy const& p, Logits const& l, Run const& run, Status code, char const* fragment,
                     bool host = true, bool device = true) {
  if (host) {
    clear_error_message();
    auto const r = loss_test::host_loss(p, l, run);
    CHECK(r.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    loss_test::require_untouched(r);
  }
  if (device) {
    clear_error_message();
    auto const r = loss_test::device_loss(p, l, 1, 0, run);
    CHECK(r.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    loss_test::require_untouched(r);
  }
}

}  // namespace

TEST_CASE("bad parameters and inputs get a Status and a message, outputs untouched", "[balancing][emu]") {
  Logits const z = loss_test::z_example();
  auto const invalid = Status::invalid_argument;
  balancing::MegatronAuxLoss const aux{.moe_router_topk = 2, .moe_aux_loss_coeff = 1.f};

  SECTION("k out of range (§2.0 message)") {
    expect_rejected(balancing::MegatronAuxLoss{.moe_router_topk = 0}, z, {}, invalid,
                    "balance loss: k must satisfy 1 <= k <= E (got k=0, E=4)");
    expect_rejected(balancing::DitMoeLoss{.num_experts_per_tok = 5}, z, {}, invalid,
                    "balance loss: k must satisfy 1 <= k <= E (got k=5, E=4)");
    expect_rejected(balancing::HfLoadBalancingLoss{.num_experts_per_tok = -1}, z, {}, invalid, "got k=-1, E=4");
    expect_rejected(balancing::DeepSeekV3SeqLoss{}, z, {}, invalid, "got k=8, E=4");
  }
  SECTION("coefficients") {
    expect_rejected(balancing::SwitchLoss{.alpha = -1.f}, z, {}, invalid, "alpha must be finite and >= 0 (got -1)");
    expect_rejected(balancing::GShardLoss{.coefficient = std::numeric_limits<float>::quiet_NaN()}, z, {}, invalid,
                    "coefficient must be finite");
    expect_rejected(balancing::HfLoadBalancingLoss{.num_layers = 0}, z, {}, invalid, "num_layers must be >= 1");
  }
  SECTION("AdaMoE parameters (§3.1 messages)") {
    expect_rejected(balancing::AdaMoeLoss{.num_null_experts = 4, .num_experts_per_tok = 1}, z, {}, invalid,
                    "AdaMoE: need at least one true expert");
    expect_rejected(balancing::AdaMoeLoss{.num_null_experts = 1, .num_experts_per_tok = 5}, z, {}, invalid,
                    "AdaMoE: k must be in [1, n+m] (got k=5, n+m=4)");
    expect_rejected(balancing::AdaMoeLoss{.num_null_experts = 1, .num_experts_per_tok = 0}, z, {}, invalid,
                    "AdaMoE: k must be in [1, n+m]");
  }
  SECTION("non-finite logits in a valid row (host checked mode)") {
    Logits bad = z;
    bad.at(1, 2) = std::numeric_limits<float>::quiet_NaN();
    expect_rejected(aux, bad, {}, invalid, "balance loss: non-finite router logit nan at token 1, expert 2", true,
                    false);
    bad.at(1, 2) = std::numeric_limits<float>::infinity();
    expect_rejected(aux, bad, {}, invalid, "non-finite router logit inf at token 1, expert 2", true, false);
    Logits masked = z;
    for (int e = 0; e < 4; ++e) {
      masked.at(2, e) = -std::numeric_limits<float>::infinity();
    }
    expect_rejected(aux, masked, {}, invalid, "all experts masked (-inf) at token 2", true, false);
    // The same rows padded are legal and ignored.
    std::vector<std::uint8_t> const pad = {1, 1, 0};
    CHECK(loss_test::host_loss(aux, masked, Run{.mask = &pad}).status == Status::ok);
    std::vector<std::uint8_t> const pad1 = {1, 0, 1};
    bad.at(1, 2) = std::numeric_limits<float>::quiet_NaN();
    auto const h = loss_test::host_loss(aux, bad, Run{.mask = &pad1});
    REQUIRE(h.status == Status::ok);
    loss_test::require_same_loss(h, loss_test::device_loss(aux, bad, 2, 0, Run{.mask = &pad1}), rule_rtol, rule_atol);
    // -inf entries are legal: p = 0 and no gradient there.
    Logits minus = z;
    minus.at(0, 3) = -std::numeric_limits<float>::infinity();
    auto const m = loss_test::host_loss(aux, minus);
    REQUIRE(m.status == Status::ok);
    CHECK(m.grad[3] == 0.f);
  }
  SECTION("mask values and lengths") {
    std::vector<std::uint8_t> const two = {1, 2, 1};
    expect_rejected(aux, z, Run{.mask = &two}, invalid, "valid mask entry 1 is 2 (expected 0 or 1)", true, false);
    std::vector<std::uint8_t> const ok = {1, 1, 1};
    expect_rejected(aux, z, Run{.mask = &ok, .valid_entries = 2}, invalid, "valid mask has 2 entries, expected T=3");
    expect_rejected(aux, z, Run{.valid_entries = 3}, invalid, "3 entries declared but the pointer is null");
    Logits const both = loss_test::stack(z, loss_test::z2_example());
    expect_rejected(balancing::HfLoadBalancingLoss{.num_layers = 2}, both, Run{.mask = &ok, .valid_entries = 6},
                    invalid, "hf balance loss: attention mask has 6 entries, expected B*S=3");
    expect_rejected(balancing::HfLoadBalancingLoss{.num_layers = 4}, both, {}, invalid,
                    "hf balance loss: 6 logit rows are not num_layers=4 times B*S");
  }
  SECTION("sequences (§2.11 message)") {
    expect_rejected(balancing::MegatronSeqAuxLoss{.batch = 2, .seq_len = 2}, z, {}, invalid,
                    "seq aux: batch 2 x seq 2 != tokens 3");
    expect_rejected(balancing::DeepSeekV3SeqLoss{.num_experts_per_tok = 2, .batch = 2}, z, {}, invalid,
                    "seq aux: batch 2 x seq 1 != tokens 3");
    expect_rejected(balancing::DeepSeekV3SeqLoss{.num_experts_per_tok = 2, .batch = 0}, z, {}, invalid,
                    "batch must be >= 1");
  }
  SECTION("global state (§2.11 message), state untouched") {
    long long C[5] = {1, 2, 3, 4, 5};
    balancing::GlobalAuxState state{C, 5, 2};
    expect_rejected(balancing::MegatronGlobalAuxLoss{.state = &state}, z, {}, invalid,
                    "global aux state has E=5, layer has E=4");
    CHECK(state.m == 2);
    CHECK(C[0] == 1);
    expect_rejected(balancing::MegatronGlobalAuxLoss{}, z, {}, invalid, "needs a state");
    // A failing call after a valid state check leaves it untouched too.
    state.experts = 4;
    std::vector<std::uint8_t> const ok = {1, 1, 1};
    expect_rejected(balancing::MegatronGlobalAuxLoss{.state = &state}, z, Run{.mask = &ok, .valid_entries = 1}, invalid,
                    "valid mask has 1 entries");
    CHECK(state.m == 2);
    CHECK(std::vector<long long>(C, C + 4) == std::vector<long long>{1, 2, 3, 4});
  }
  SECTION("buffers: null, shape, alignment") {
    loss_test::Result r;
    auto b = loss_test::buffers<MemorySpace::host>(z, {}, r);
    clear_error_message();
    auto const null_logits = b;
    auto in = null_logits.in;
    in.logits.data = nullptr;
    CHECK(host::reference_loss(aux, in, b.out) == invalid);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("logits: null pointer"));
    loss_test::require_untouched(r);

    auto out = b.out;
    out.value = nullptr;
    CHECK(host::reference_loss(aux, b.in, out) == invalid);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("value: the output pointer is null"));

    out = b.out;
    out.grad.extents = {2, 4};
    CHECK(host::reference_loss(aux, b.in, out) == invalid);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("gradient: expected [3, 4], got [2, 4]"));

    out = b.out;
    out.grad.strides = {4, 2};
    CHECK(host::reference_loss(aux, b.in, out) == invalid);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("expert dimension must be contiguous"));

    in = b.in;
    in.logits.strides = {2, 1};
    CHECK(host::reference_loss(aux, in, b.out) == invalid);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("rows overlap"));

    std::vector<float> shifted(13);
    in = b.in;
    in.logits.data = reinterpret_cast<float const*>(reinterpret_cast<char const*>(shifted.data()) + 1);
    CHECK(host::reference_loss(aux, in, b.out) == Status::misaligned);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("logits: pointer not aligned to 4 bytes"));

    std::vector<long long> counts(5);
    out = b.out;
    out.counts = reinterpret_cast<long long*>(reinterpret_cast<char*>(counts.data()) + 4);
    CHECK(host::reference_loss(aux, b.in, out) == Status::misaligned);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("counts: pointer not aligned to 8 bytes"));
    loss_test::require_untouched(r);

    // The device path refuses the same buffers.
    loss_test::Result rd;
    auto bd = loss_test::buffers<MemorySpace::device>(z, {}, rd);
    std::vector<std::byte> space(4096);
    auto* base =
        reinterpret_cast<std::byte*>((reinterpret_cast<std::uintptr_t>(space.data()) + 255) & ~std::uintptr_t{255});
    Workspace ws(base, 2048);
    auto ind = bd.in;
    ind.logits.data = reinterpret_cast<float const*>(reinterpret_cast<char const*>(shifted.data()) + 1);
    CHECK(balancing::loss(aux, ind, bd.out, ws, nullptr) == Status::misaligned);
    auto outd = bd.out;
    outd.grad.extents = {4, 4};
    CHECK(balancing::loss(aux, bd.in, outd, ws, nullptr) == invalid);
    loss_test::require_untouched(rd);
  }
  SECTION("workspace") {
    std::size_t const need = balancing::loss_workspace_size(aux, 3, 4);
    loss_test::Result r;
    auto b = loss_test::buffers<MemorySpace::device>(z, {}, r);
    clear_error_message();
    Workspace counting;
    CHECK(balancing::loss(aux, b.in, b.out, counting, nullptr) == invalid);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("counting Workspace"));
    loss_test::WorkspaceBuffer buffer(need + 1);
    Workspace shifted(buffer.base + 1, need);
    CHECK(balancing::loss(aux, b.in, b.out, shifted, nullptr) == Status::misaligned);
    Workspace small(buffer.base, need - 1);
    clear_error_message();
    CHECK(balancing::loss(aux, b.in, b.out, small, nullptr) == Status::workspace_too_small);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("bytes, ") && Catch::Contains("left"));
    loss_test::require_untouched(r);
  }
}

TEST_CASE("workspace size is exact and grows with T", "[balancing][emu]") {
  balancing::DeepSeekV3SeqLoss const p{.num_experts_per_tok = 2, .batch = 2};
  std::size_t previous = 0;
  for (std::int64_t t : {0, 2, 512, 514, 4096}) {
    std::size_t const bytes = balancing::loss_workspace_size(p, t, 16);
    CHECK(bytes >= previous);
    previous = bytes;
  }
  // Exactly enough: one byte fewer fails (checked in the bad-input test), this many works.
  Logits const l = loss_test::make_logits(514, 16, Pattern::random, 1);
  auto const r =
      loss_test::device_loss(p, l, 0, 0, {}, static_cast<std::int64_t>(balancing::loss_workspace_size(p, 514, 16)));
  CHECK(r.status == Status::ok);
}
