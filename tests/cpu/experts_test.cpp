// cpu::run_experts against the double-precision oracle host::reference_moe_combine: every expert
// policy × (X, W) ∈ {float, bf16, fp16}² pairs × Y ∈ {float, X}, biases, both weight positions,
// the shared expert with and without its gate, zero and identity experts, empty slots, invalid
// ids, capacity drops, T ∈ {0, 1, 37, 300}, odd H and I, E = 256, K = 8, thread counts 1/2/3
// (bit-identical), bad inputs (Status, y untouched), and the ThreadPool itself.
//
// The reference knows neither zero/identity experts nor capacity: it gets the ids with those
// slots (and dropped / invalid ones) replaced by its empty id (= number of computed experts),
// and the test adds w·x for the kept identity slots in double.
//
// (The tolerance is derived in experts_case.hpp.)

#include "moekit/cpu/experts.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "experts_case.hpp"
#include <catch2/catch.hpp>

#include "moekit/experts/clamped_swiglu.hpp"
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/experts/plain_mlp.hpp"
#include "moekit/host/expert_reference.hpp"

using namespace moekit;
using namespace cpu_case;
using experts::ExpertKind;
using experts::WeightPosition;

namespace {

template <class X, class W>
void all_policies(Config const& c) {
  auto both = [&](auto const& policy) {
    check<float, X, W>(policy, c);
    if constexpr (!std::is_same_v<X, float>) {
      check<X, X, W>(policy, c);
    }
  };
  both(experts::SwiGlu<W>{});
  both(experts::GeGlu<W>{});
  both(experts::GeGluTanh<W>{});
  both(experts::ReGlu<W>{});
  both(experts::ReluMlp<W>{});
  both(experts::GeluMlp<W>{});
  both(experts::ClampedSwiglu<W>{1.702f, 1.5f});  // a low limit so that both clamps act
}

}  // namespace

TEST_CASE("cpu experts: every policy and dtype against the reference, biases, 1/2/3 threads bit-identical",
          "[cpu][experts]") {
  Config c;
  c.biases = true;
  SECTION("float") { all_policies<float, float>(c); }
  SECTION("bf16") { all_policies<bf16_t, bf16_t>(c); }
  SECTION("fp16") { all_policies<fp16_t, fp16_t>(c); }
  SECTION("on_input, shared expert with gate") {
    c.position = WeightPosition::on_input;
    c.shared_inter = 20;
    c.shared_gate = true;
    all_policies<bf16_t, bf16_t>(c);
  }
}

TEST_CASE("cpu experts: zero/identity experts, empty slots, invalid ids, capacity, shared expert", "[cpu][experts]") {
  Config c;
  c.tokens = 300;
  c.slots = 8;
  c.table = experts::ExpertTable{10, 2, 2};
  c.empty = 0.1;
  c.invalid = 0.05;
  c.shared_inter = 28;
  c.biases = true;
  experts::SwiGlu<bf16_t> const swiglu;
  SECTION("after_expert, shared without gate, unlimited capacity") {
    Diagnostics d;
    check<float, bf16_t, bf16_t>(swiglu, c, &d);
    CHECK(d.invalid_ids > 0);
    CHECK(d.empty_slots > 0);
    CHECK(d.dropped_assignments == 0);
    // What the plan counts, recomputed: ids outside [0, E] and E itself.
    Layer<bf16_t, bf16_t> const L(c);
    unsigned long long invalid = 0, empty = 0;
    for (int id : L.ids) {
      invalid += id < 0 || id > 14 ? 1 : 0;
      empty += id == 14 ? 1 : 0;
    }
    CHECK(d.invalid_ids == invalid);
    CHECK(d.empty_slots == empty);
  }
  SECTION("on_input, gated shared expert, capacity drops") {
    c.position = WeightPosition::on_input;
    c.shared_gate = true;
    c.capacity = 100;  // ~2400 valid assignments over 14 experts: ~170 each, so many are dropped
    Diagnostics d;
    check<bf16_t, bf16_t, bf16_t>(swiglu, c, &d);
    Layer<bf16_t, bf16_t> const L(c);
    std::vector<bool> const kept = L.kept();
    unsigned long long dropped = 0;
    for (std::size_t a = 0; a < kept.size(); ++a) {
      dropped += !kept[a] && L.ids[a] >= 0 && L.ids[a] < 14 ? 1 : 0;
    }
    CHECK(dropped > 0);
    CHECK(d.dropped_assignments == dropped);
  }
  SECTION("fp16 weights, fp16 output, gpt-oss clamped SwiGLU") {
    check<fp16_t, fp16_t, fp16_t>(experts::ClampedSwiglu<fp16_t>{}, c);
  }
  SECTION("only zero and identity experts") {
    c.table = experts::ExpertTable{0, 3, 2};
    c.shared_inter = 0;
    check<float, float, float>(experts::SwiGlu<float>{}, c);
  }
}

TEST_CASE("cpu experts: shapes — T = 0 and 1, E = 256, K = 8, one expert for all, an unused expert", "[cpu][experts]") {
  experts::SwiGlu<bf16_t> const swiglu;
  SECTION("T = 1") {
    Config c;
    c.tokens = 1;
    c.slots = 4;
    check<float, bf16_t, bf16_t>(swiglu, c);
  }
  SECTION("E = 256, K = 8, small H and I") {
    Config c;
    c.tokens = 300;
    c.hidden = 24;
    c.inter = 20;
    c.slots = 8;
    c.table = experts::all_computed(256);
    check<float, float, float>(experts::GeGlu<float>{}, c);
  }
  SECTION("all tokens to one expert (many tiles), another expert unused") {
    Config c;
    c.tokens = 300;
    c.slots = 3;
    c.all_to = 2;
    Diagnostics d;
    check<bf16_t, bf16_t, bf16_t>(swiglu, c, &d);
    CHECK(d.empty_experts == 5);
    CHECK(d.max_load == 300);
  }
  SECTION("an expert with no tokens, H and I above one column chunk") {
    Config c;
    c.tokens = 37;
    c.hidden = 130;
    c.inter = 100;
    c.unused = 3;
    Diagnostics d;
    check<float, float, float>(experts::SwiGlu<float>{}, c, &d);
    CHECK(d.empty_experts >= 1);
  }
  SECTION("T = 0: nothing to do") {
    Config c;
    c.tokens = 0;
    Layer<bf16_t, bf16_t> const L(c);
    std::vector<float> y;
    Workspace none;
    CHECK(cpu::run_experts(swiglu, L.problem(), L.args<float>(y), none, nullptr, nullptr) == Status::ok);
  }
}

// Views, not copies: a fused [E, 2I, H] gate_up checkpoint tensor (gate = rows 0..I-1, up = rows
// I..2I-1, stride(0) = 2IH) and x, y with padded rows run the same arithmetic: the same bits.
TEST_CASE("cpu experts: fused gate_up slices and strided rows give the same bits", "[cpu][experts]") {
  Config c;
  c.biases = true;
  Layer<bf16_t, bf16_t> const L(c);
  experts::SwiGlu<bf16_t> const swiglu;
  std::int64_t const T = c.tokens, H = c.hidden, I = c.inter, E = c.table.computed, pad = 3;
  std::vector<float> dense(static_cast<std::size_t>(T * H));
  REQUIRE(run(swiglu, L, dense, 2) == Status::ok);

  std::vector<bf16_t> fused(static_cast<std::size_t>(E * 2 * I * H));
  for (std::int64_t e = 0; e < E; ++e) {
    auto const src = static_cast<std::ptrdiff_t>(e * I * H);
    auto const dst = static_cast<std::ptrdiff_t>(e * 2 * I * H);
    std::copy_n(L.gate.begin() + src, I * H, fused.begin() + dst);
    std::copy_n(L.up.begin() + src, I * H, fused.begin() + dst + I * H);
  }
  std::vector<bf16_t> x_padded(static_cast<std::size_t>(T * (H + pad)), bf16_t(99.0f));
  for (std::int64_t t = 0; t < T; ++t) {
    std::copy_n(L.x.begin() + t * H, H, x_padded.begin() + t * (H + pad));
  }
  std::vector<float> y_padded(static_cast<std::size_t>(T * (H + pad)), -5.0f);
  std::vector<float> scratch(dense.size());
  auto a = L.args<float>(scratch);
  a.experts.gate = {fused.data(), {E, I, H}, {2 * I * H, H, 1}};
  a.experts.up = {fused.data() + I * H, {E, I, H}, {2 * I * H, H, 1}};
  a.x = {x_padded.data(), {T, H}, {H + pad, 1}};
  a.y = {y_padded.data(), {T, H}, {H + pad, 1}};
  auto const p = L.problem();
  auto buffer = WorkspaceBuffer::make<experts::SwiGlu<bf16_t>, bf16_t, float>(swiglu, p);
  Workspace ws(buffer.base, buffer.bytes);
  cpu::ThreadPool pool(3);
  REQUIRE(cpu::run_experts(swiglu, p, a, ws, nullptr, &pool) == Status::ok);
  std::size_t differ = 0, padding_written = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t h = 0; h < H + pad; ++h) {
      float const v = y_padded[static_cast<std::size_t>(t * (H + pad) + h)];
      if (h < H) {
        differ += std::memcmp(&v, &dense[static_cast<std::size_t>(t * H + h)], sizeof v) != 0 ? 1 : 0;
      } else {
        padding_written += v != -5.0f ? 1 : 0;
      }
    }
  }
  CHECK(differ == 0);
  CHECK(padding_written == 0);
}

TEST_CASE("cpu experts: NaN in x propagates to its token only", "[cpu][experts]") {
  Config c;
  c.tokens = 5;
  Layer<float, float> L(c);
  L.x[2 * 50 + 7] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> y(static_cast<std::size_t>(5 * 50));
  REQUIRE(run(experts::SwiGlu<float>{}, L, y, 2) == Status::ok);
  for (std::int64_t t = 0; t < 5; ++t) {
    CHECK(std::isnan(y[static_cast<std::size_t>(t * 50 + 3)]) == (t == 2));
  }
}

TEST_CASE("cpu experts: bad input returns a Status with a message and leaves y untouched", "[cpu][experts]") {
  Config c;
  c.shared_inter = 12;
  Layer<bf16_t, bf16_t> const L(c);
  experts::SwiGlu<bf16_t> const swiglu;
  auto const p = L.problem();
  std::vector<float> y(static_cast<std::size_t>(c.tokens * c.hidden), 3.0f);
  auto buffer = WorkspaceBuffer::make<experts::SwiGlu<bf16_t>, bf16_t, float>(swiglu, p);
  std::size_t const space = buffer.bytes;
  auto attempt = [&](experts::ExpertProblem const& problem, auto const& args, std::size_t workspace_bytes) {
    Workspace ws(buffer.base, workspace_bytes);
    clear_error_message();
    Status const s = cpu::run_experts(swiglu, problem, args, ws, nullptr, nullptr);
    CHECK(std::all_of(y.begin(), y.end(), [](float v) { return v == 3.0f; }));
    CHECK(std::string(last_error_message()).size() > 0);
    return s;
  };
  SECTION("wrong x shape") {
    auto a = L.args<float>(y);
    a.x.extents[1] = 49;
    CHECK(attempt(p, a, space) == Status::invalid_argument);
    CHECK(std::string(last_error_message()).find("x must be") != std::string::npos);
  }
  SECTION("null down weights") {
    auto a = L.args<float>(y);
    a.experts.down.data = nullptr;
    CHECK(attempt(p, a, space) == Status::invalid_argument);
  }
  SECTION("shared expert missing") {
    auto a = L.args<float>(y);
    a.shared = {};
    CHECK(attempt(p, a, space) == Status::invalid_argument);
  }
  SECTION("workspace too small") {
    CHECK(attempt(p, L.args<float>(y), space - 1) == Status::workspace_too_small);
    CHECK(std::string(last_error_message()).find("workspace") != std::string::npos);
  }
  SECTION("capacity 0") {
    auto q = p;
    q.capacity = 0;
    CHECK(attempt(q, L.args<float>(y), space) == Status::invalid_argument);
  }
}

TEST_CASE("cpu thread pool: every index exactly once, any size, nested calls inline", "[cpu][experts]") {
  for (unsigned threads : {1u, 2u, 3u, 0u}) {
    cpu::ThreadPool pool(threads);
    CHECK(pool.size() >= 1);
    if (threads != 0) {
      CHECK(pool.size() == threads);
    }
    for (std::int64_t n : {0, 1, 5, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
      pool.parallel_for(n, [&](std::int64_t i) {
        hits[static_cast<std::size_t>(i)].fetch_add(1);
        pool.parallel_for(2, [](std::int64_t) {});  // runs inline
      });
      CHECK(std::all_of(hits.begin(), hits.end(), [](std::atomic<int> const& h) { return h.load() == 1; }));
    }
  }
}
