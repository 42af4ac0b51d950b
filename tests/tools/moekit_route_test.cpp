// moekit-route end to end: the test writes .npy inputs and configs with io/npy.hpp, runs the
// built tool (MOEKIT_ROUTE_EXE) through the shell, and reads ids.npy / weights.npy / logits.npy
// back. Routed results are compared with the worked example of ALGORITHMS.md §1.11 (rtol 1e-6,
// the example's precision); logits computed from hidden states are compared bit for bit with the
// library's CPU gate projection (the tool runs exactly that code); --device emulate must give the
// same bits as the CPU path (same fp32 arithmetic in route_token and in the projection). The
// failure cases are separate ctest entries (tests/tools/moekit_route.cmake).

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/cpu/gate_projection.hpp"
#include "moekit/io/npy.hpp"

using namespace moekit;
namespace fs = std::filesystem;

namespace {

struct Work {
  fs::path dir;
  Work() {
    std::random_device rd;
    dir = fs::path(MOEKIT_ROUTE_WORK_DIR) / ("case_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(dir);
  }
  ~Work() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  Work(Work const&) = delete;
  Work& operator=(Work const&) = delete;

  template <class T>
  std::string npy(char const* name, std::vector<T> const& v, std::vector<std::int64_t> shape) const {
    fs::path const p = dir / name;
    REQUIRE(io::write_npy(p, v.data(), std::move(shape)) == Status::ok);
    return p.string();
  }
  std::string text(char const* name, std::string const& content) const {
    fs::path const p = dir / name;
    std::ofstream(p) << content;
    return p.string();
  }
};

// Runs the tool with `args` (--out appended); returns its exit status.
int run_tool(std::string const& args, fs::path const& out) {
  std::string const command = std::string("\"") + MOEKIT_ROUTE_EXE + "\" " + args + " --out \"" + out.string() +
                              "\" > \"" + out.string() + ".log\" 2>&1";
  int const status = std::system(command.c_str());
  std::ifstream log(out.string() + ".log");
  std::string const text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  UNSCOPED_INFO("moekit-route " << args << "\n" << text);
  return status;
}

struct Outputs {
  std::vector<int> ids;
  std::vector<float> weights;
  std::vector<std::int64_t> ids_shape, weights_shape;
};

Outputs read_outputs(fs::path const& out) {
  Outputs o;
  REQUIRE(io::read_npy(out / "ids.npy", o.ids, o.ids_shape) == Status::ok);
  REQUIRE(io::read_npy(out / "weights.npy", o.weights, o.weights_shape) == Status::ok);
  REQUIRE(o.ids_shape == o.weights_shape);
  return o;
}

Outputs route(Work const& w, std::string const& args, char const* out_name = "out") {
  fs::path const out = w.dir / out_name;
  REQUIRE(run_tool(args, out) == 0);
  return read_outputs(out);
}

std::vector<float> const z = {1.2f,  -0.3f, 2.5f, 0.8f, -1.1f, 2.1f,  0.0f, 1.7f,
                              -0.5f, 0.9f,  0.3f, 1.6f, 2.2f,  -0.8f, 1.1f, 0.4f};

void check_example(Outputs const& o, std::vector<int> const& ids, std::vector<float> const& weights, int k) {
  CHECK(o.ids_shape == std::vector<std::int64_t>{2, k});
  CHECK(o.ids == ids);
  REQUIRE(o.weights.size() == weights.size());
  for (std::size_t i = 0; i < weights.size(); ++i) {
    CHECK(o.weights[i] == Approx(weights[i]).epsilon(1e-6));
  }
}

bool same_bits(std::vector<float> const& a, std::vector<float> const& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("moekit-route reproduces ALGORITHMS.md 1.11 from logits", "[tools]") {
  Work const w;
  std::string const logits = "--logits " + w.npy("logits.npy", z, {2, 8});
  SECTION("Mixtral (renormalised)") {
    check_example(route(w, logits + " --model-type mixtral --num_experts_per_tok 2"), {2, 5, 4, 3},
                  {0.5986877f, 0.4013123f, 0.6456563f, 0.3543437f}, 2);
  }
  SECTION("Qwen2-MoE, norm_topk_prob false (also the family default)") {
    check_example(route(w, logits + " --model-type qwen2_moe --num_experts_per_tok 2 --norm_topk_prob false"),
                  {2, 5, 4, 3}, {0.3642877f, 0.2441893f, 0.3866864f, 0.212218f}, 2);
    check_example(route(w, logits + " --model-type qwen2_moe --num-experts-per-tok=2", "out2"), {2, 5, 4, 3},
                  {0.3642877f, 0.2441893f, 0.3866864f, 0.212218f}, 2);
  }
  SECTION("DeepSeek-V3 noaux_tc with e_score_correction_bias, from a config.json") {
    std::string const config = w.text("config.json", R"({"model_type": "deepseek_v3", "n_routed_experts": 8,
      "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
      "norm_topk_prob": true, "routed_scaling_factor": 2.5})");
    std::string const bias =
        w.npy("bias.npy", std::vector<float>{0.05f, -0.05f, -0.10f, 0.f, 0.20f, 0.f, 0.15f, -0.15f}, {8});
    check_example(route(w, logits + " --config " + config + " --correction-bias " + bias), {2, 7, 4, 6},
                  {1.305524f, 1.194476f, 1.363593f, 1.136407f}, 2);
    // Without the bias: token 1 picks [3, 6].
    check_example(route(w, logits + " --config " + config, "out_b0"), {2, 7, 3, 6},
                  {1.305524f, 1.194476f, 1.314589f, 1.185411f}, 2);
  }
  SECTION("DeepSeek-V2 group_limited_greedy from flags only") {
    check_example(route(w, logits + " --model-type deepseek_v2 --num_experts_per_tok 2 --topk_method "
                                    "group_limited_greedy --n_group 4 --topk_group 1 --routed_scaling_factor 16"),
                  {2, 3, 4, 5}, {5.828603f, 1.064790f, 6.186983f, 0.3080318f}, 2);
  }
  SECTION("Llama-4 from a config with text_config; Switch") {
    std::string const config = w.text("llama4.json", R"({"model_type": "llama4", "text_config":
      {"model_type": "llama4_text", "num_local_experts": 8, "num_experts_per_tok": 1}})");
    check_example(route(w, logits + " --config " + config), {2, 4}, {0.9241418f, 0.9002495f}, 1);
    check_example(route(w, logits + " --model-type switch_transformers", "out_switch"), {2, 4},
                  {0.3642877f, 0.3866864f}, 1);
  }
  SECTION("flags override the config file") {
    std::string const config =
        w.text("qwen.json", R"({"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 4,
          "norm_topk_prob": false})");
    check_example(route(w, logits + " --config " + config + " --num_experts_per_tok 2 --norm_topk_prob true"),
                  {2, 5, 4, 3}, {0.5986877f, 0.4013123f, 0.6456563f, 0.3543437f}, 2);
  }
  SECTION("the tie test: all-zero logits go to the lowest indices") {
    std::string const zeros = "--logits " + w.npy("zeros.npy", std::vector<float>(8, 0.f), {1, 8});
    auto const o = route(w, zeros + " --model-type deepseek_v3 --num_experts_per_tok 2 --n_group 4 --topk_group 2 "
                                    "--routed_scaling_factor 2.5");
    CHECK(o.ids == std::vector<int>{0, 1});
    CHECK(o.weights == std::vector<float>{1.25f, 1.25f});
  }
}

TEST_CASE("moekit-route: gpt-oss from hidden states, gate weight and router bias", "[tools]") {
  Work const w;
  // H = 3, E = 8: logits = W x + b computed by the tool; compared bit for bit with cpu::gate_projection.
  std::vector<float> const x = {0.5f, -1.25f, 2.f, 1.5f, 0.25f, -0.75f};
  std::vector<float> weight(24);
  for (std::size_t i = 0; i < weight.size(); ++i) {
    weight[i] = float(int(i * 7 % 11) - 5) / 4.f;
  }
  std::vector<float> const bias = {0.1f, -0.2f, 0.3f, 0.f, 0.05f, -0.4f, 0.25f, 0.125f};
  std::string const args = "--hidden " + w.npy("x.npy", x, {2, 3}) + " --gate-weight " +
                           w.npy("w.npy", weight, {8, 3}) + " --gate-bias " + w.npy("b.npy", bias, {8}) +
                           " --model-type gpt_oss --num_experts_per_tok 4";
  auto const o = route(w, args);
  std::vector<float> logits;
  std::vector<std::int64_t> shape;
  REQUIRE(io::read_npy(w.dir / "out" / "logits.npy", logits, shape) == Status::ok);
  CHECK(shape == std::vector<std::int64_t>{2, 8});
  std::vector<float> expected(16);
  routing::GateProjectionBuffers<float, float, MemorySpace::host> b{
      HostTensor<float const, 2>::row_major(x.data(), {2, 3}),
      HostTensor<float const, 2>::row_major(weight.data(), {8, 3}),
      HostTensor<float const, 1>::row_major(bias.data(), {8}),
      HostTensor<float, 2>::row_major(expected.data(), {2, 8})};
  REQUIRE(cpu::gate_projection(b) == Status::ok);
  CHECK(same_bits(logits, expected));
  // The weights: softmax over the 4 selected logits, recomputed here in double from the logits file.
  CHECK(o.ids_shape == std::vector<std::int64_t>{2, 4});
  for (int t = 0; t < 2; ++t) {
    double sum = 0;
    for (int j = 0; j < 4; ++j) {
      sum += std::exp(double(logits[t * 8 + o.ids[t * 4 + j]]));
    }
    for (int j = 0; j < 4; ++j) {
      int const e = o.ids[t * 4 + j];
      CHECK(o.weights[t * 4 + j] == Approx(std::exp(double(logits[t * 8 + e])) / sum).epsilon(1e-6));
      if (j > 0) {  // descending logits, ties to the lower index
        int const prev = o.ids[t * 4 + j - 1];
        CHECK((logits[t * 8 + prev] > logits[t * 8 + e] || (logits[t * 8 + prev] == logits[t * 8 + e] && prev < e)));
      }
    }
  }

  // §1.11 through the projection: identity weight, x = z, zero bias → logits = z exactly.
  std::vector<float> identity(64, 0.f);
  for (int e = 0; e < 8; ++e) {
    identity[e * 9] = 1.f;
  }
  std::string const example = "--hidden " + w.npy("z.npy", z, {2, 8}) + " --gate-weight " +
                              w.npy("identity.npy", identity, {8, 8}) + " --gate-bias " +
                              w.npy("zero.npy", std::vector<float>(8, 0.f), {8});
  check_example(route(w, example + " --model-type gpt_oss --num_experts_per_tok 2", "out_example"), {2, 5, 4, 3},
                {0.5986877f, 0.4013123f, 0.6456563f, 0.3543437f}, 2);
}

TEST_CASE("moekit-route: bf16 inputs, bf16 rounding, batch shapes and T = 0", "[tools]") {
  Work const w;
  SECTION("bf16 hidden states and gate weight (stored as <u2 bit patterns)") {
    std::vector<bf16_t> x, identity(64, bf16_t(0.f));
    for (float v : z) {
      x.push_back(bf16_t(v));
    }
    for (int e = 0; e < 8; ++e) {
      identity[e * 9] = bf16_t(1.f);
    }
    auto const o = route(w, "--hidden " + w.npy("x.npy", x, {2, 8}) + " --gate-weight " +
                                w.npy("w.npy", identity, {8, 8}) + " --model-type mixtral --num_experts_per_tok 2");
    std::vector<float> logits;
    std::vector<std::int64_t> shape;
    REQUIRE(io::read_npy(w.dir / "out" / "logits.npy", logits, shape) == Status::ok);
    for (std::size_t i = 0; i < z.size(); ++i) {
      CHECK(logits[i] == x[i].to_float());  // x·I is exact
    }
    CHECK(o.ids == std::vector<int>{2, 5, 4, 3});
  }
  SECTION("--round-logits-bf16 reproduces a bf16 router") {
    // 1.00390625 is not a bf16 value: it rounds to 1.0 and then ties expert 0, which wins.
    std::string const l = "--logits " + w.npy("l.npy", std::vector<float>{1.0f, 1.00390625f, -2.f}, {1, 3});
    CHECK(route(w, l + " --model-type mixtral --num_experts_per_tok 1").ids == std::vector<int>{1});
    CHECK(route(w, l + " --model-type mixtral --num_experts_per_tok 1 --round-logits-bf16", "out_bf16").ids ==
          std::vector<int>{0});
  }
  SECTION("leading dimensions are kept: [B, S, E] → [B, S, K]") {
    auto const o =
        route(w, "--logits " + w.npy("l.npy", z, {1, 2, 8}) + " --model-type mixtral --num_experts_per_tok 2");
    CHECK(o.ids_shape == std::vector<std::int64_t>{1, 2, 2});
    CHECK(o.ids == std::vector<int>{2, 5, 4, 3});
  }
  SECTION("T = 0 writes empty [0, K] arrays") {
    auto const o = route(w, "--logits " + w.npy("l.npy", std::vector<float>{}, {0, 8}) +
                                " --model-type olmoe --num_experts_per_tok 2");
    CHECK(o.ids_shape == std::vector<std::int64_t>{0, 2});
    CHECK(o.ids.empty());
  }
}

#if MOEKIT_ROUTE_HAVE_EMU
TEST_CASE("moekit-route --device emulate gives the CPU path's bits", "[tools][emu]") {
  Work const w;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(37 * 45), weight(60 * 45);
  for (float& v : x) {
    v = normal(rng);
  }
  for (float& v : weight) {
    v = normal(rng) * 0.1f;
  }
  std::vector<float> bias(60);
  for (std::size_t e = 0; e < bias.size(); ++e) {
    bias[e] = float(int(e * 37 % 17) - 8) / 100.f;
  }
  std::string const inputs = "--hidden " + w.npy("x.npy", x, {37, 45}) + " --gate-weight " +
                             w.npy("w.npy", weight, {60, 45}) + " --correction-bias " + w.npy("b.npy", bias, {60}) +
                             " --model-type deepseek_v3 --num_experts_per_tok 6 --n_group 6 --topk_group 3 "
                             "--routed_scaling_factor 2.5";
  auto const cpu = route(w, inputs, "cpu");
  auto const emulated = route(w, inputs + " --device emulate", "emulated");
  CHECK(cpu.ids == emulated.ids);
  CHECK(same_bits(cpu.weights, emulated.weights));
  std::vector<float> a, b;
  std::vector<std::int64_t> shape;
  REQUIRE(io::read_npy(w.dir / "cpu" / "logits.npy", a, shape) == Status::ok);
  REQUIRE(io::read_npy(w.dir / "emulated" / "logits.npy", b, shape) == Status::ok);
  CHECK(same_bits(a, b));
}
#endif

namespace {
std::vector<std::int64_t> read_int64(fs::path const& file) {
  std::vector<std::int64_t> v, shape;
  REQUIRE(io::read_npy(file, v, shape) == Status::ok);
  return v;
}
}  // namespace

TEST_CASE("moekit-route writes the dispatch plan", "[tools]") {
  Work const w;
  // Mixtral-style top-2 over 8 experts for the two tokens of 1.11: [2, 5] and [4, 3]; capacity 1
  // and tiles of 2 rows: each expert keeps its first assignment, nothing is dropped.
  auto const o = route(w, "--logits " + w.npy("z.npy", z, {2, 8}) +
                              " --model-type mixtral --num_experts_per_tok 2 "
                              "--expert_capacity 1 --tile-rows 2");
  REQUIRE(o.ids == std::vector<int>{2, 5, 4, 3});
  fs::path const out = w.dir / "out";
  CHECK(read_int64(out / "plan_expert_counts.npy") == std::vector<std::int64_t>{0, 0, 1, 1, 1, 1, 0, 0});
  CHECK(read_int64(out / "plan_expert_offsets.npy") == std::vector<std::int64_t>{0, 0, 0, 2, 4, 6, 8, 8, 8});
  CHECK(read_int64(out / "plan_row_assignment.npy") == std::vector<std::int64_t>{0, -1, 3, -1, 2, -1, 1, -1});
  CHECK(read_int64(out / "plan_assignment_row.npy") == std::vector<std::int64_t>{0, 6, 4, 2});
  CHECK(read_int64(out / "plan_tile_row.npy") == std::vector<std::int64_t>{0, 2, 4, 6});
  // nonfinite rows, dropped, invalid ids, empty slots, empty experts, max load, capacity
  CHECK(read_int64(out / "plan_diagnostics.npy") == std::vector<std::int64_t>{0, 0, 0, 0, 4, 1, 1});

  // A capacity factor that binds: every token prefers expert 0, capacity ceil(1.5 * 6 * 1 / 4) = 3.
  std::vector<float> skewed(6 * 4, 0.f);
  for (int t = 0; t < 6; ++t) {
    skewed[static_cast<std::size_t>(t * 4)] = 3.f;
  }
  auto const s = route(w,
                       "--logits " + w.npy("s.npy", skewed, {6, 4}) +
                           " --model-type switch_transformers --num_experts 4 --capacity_factor 1.5",
                       "skewed");
  CHECK(s.ids == std::vector<int>(6, 0));
  auto const d = read_int64(w.dir / "skewed" / "plan_diagnostics.npy");
  CHECK(d[6] == 3);  // ceil(1.5 * 6 * 1 / 4)
  CHECK(d[1] == 3);  // tokens 3, 4, 5 dropped (token order)
  CHECK(read_int64(w.dir / "skewed" / "plan_assignment_row.npy") == std::vector<std::int64_t>{0, 1, 2, -1, -1, -1});
}

TEST_CASE("moekit-route --help documents every flag and exits 0", "[tools]") {
  Work const w;
  fs::path const out = w.dir / "help";
  std::string const command = std::string("\"") + MOEKIT_ROUTE_EXE + "\" --help > \"" + out.string() + "\"";
  REQUIRE(std::system(command.c_str()) == 0);
  std::ifstream f(out);
  std::string const text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  for (char const* flag :
       {"--logits", "--hidden", "--gate-weight", "--gate-bias", "--correction-bias", "--config", "--out",
        "--model-type", "--num_experts", "--num_experts_per_tok", "--n_group", "--topk_group", "--norm_topk_prob",
        "--routed_scaling_factor", "--scoring_func", "--topk_method", "--round-logits-bf16", "--device", "--help"}) {
    CHECK_THAT(text, Catch::Contains(std::string("  ") + flag));
  }
}
