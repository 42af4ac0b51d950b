// moekit-run end to end: for a synthetic checkpoint of every family (tests/io/hf_checkpoint_support.hpp)
// the test writes x.npy, runs the built tool (MOEKIT_RUN_EXE) through the shell and compares
// y.npy with the host-reference block (host gate projection → host routing → host combine, all in
// double, rounded once to fp32) within a first-order bound of the fp32 CPU executor's rounding,
// computed per element (see `fp32_bound`). --router-out's ids must equal the reference's, its
// weights agree within the same logit bound. y is also compared with test_hf::independent_block,
// computed from the raw on-disk tensors, so a mapping error shared by the tool and the reference
// (both load through io::load_moe_block) fails here too. Then each error: exit status 1 or 2, a
// one-line message naming the file, and no output file left behind.

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "expert_case.hpp"
#include "hf_checkpoint_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"
#include "moekit/io/hf_checkpoint.hpp"
#include "moekit/io/npy.hpp"

using namespace moekit;
namespace fs = std::filesystem;

namespace {

// A fresh folder under the build tree's work folder.
struct Work : test_hf::TempDir {
  Work() : test_hf::TempDir(fs::path(MOEKIT_RUN_WORK_DIR)) {}
};

struct Run {
  int status = -1;
  std::string log;
};

// Runs the tool with `args`; exit status and what it printed.
Run run_tool(std::string const& args, fs::path const& log_path) {
  std::string const command =
      std::string("\"") + MOEKIT_RUN_EXE + "\" " + args + " > \"" + log_path.string() + "\" 2>&1";
  int const raw = std::system(command.c_str());
  Run r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream log(log_path);
  r.log.assign(std::istreambuf_iterator<char>(log), std::istreambuf_iterator<char>());
  UNSCOPED_INFO("moekit-run " << args << "\n" << r.log);
  return r;
}

std::string q(fs::path const& p) { return "\"" + p.string() + "\""; }

// A first-order bound on |y_cpu - y_ref| for each element, from the block's own weights (double):
//   logits: a fp32 fmaf chain over H terms errs by <= H·u·Σ_h|x_h W_eh| (u = 2^-24), and the
//   reference's rounding adds u|z|: δz. A softmax/sigmoid weight, renormalised, moves by
//   <= 4·max_e δz_e relative (twice for the scores, twice for the normalisation); +u for its rounding.
//   Expert GEMMs: g, u each err by <= H·u·Σ|W x| (+ its bias); h = f(g, u) by <= 1.2|u|δg + |f|δu
//   (|f'| <= 1.1 for silu and clamped silu on these magnitudes; (û+1) for the clamped one) + 4u|h|;
//   o by <= I·u·Σ_m|W_d h_m| + Σ_m|W_d|δh_m. y = Σ_j w_j o_j + shared: Σ_j(|w_j|δo_j + δw_j|o_j|)
//   + (K+2)·u·Σ|terms|. The bound is doubled for the terms left out (second order, exp/sigmoid ulps).
std::vector<double> fp32_bound(io::MoeBlock<float> const& b, std::vector<float> const& x, std::vector<int> const& ids,
                               std::vector<float> const& weights) {
  double const u = 0x1p-24;
  std::int64_t const H = b.hidden, E = b.experts, K = b.router.num_experts_per_tok;
  std::int64_t const T = static_cast<std::int64_t>(x.size()) / H;
  experts::MlpWeights<float, MemorySpace::host> const mw = b.expert_weights();
  experts::SharedExpertWeights<float, MemorySpace::host> const sw = b.shared_weights();
  bool const clamped = b.function == io::HfExpertFunction::clamped_swiglu;
  bool const on_input = b.position == experts::WeightPosition::on_input;
  auto sig = [](double a) { return 1.0 / (1.0 + std::exp(-a)); };
  std::vector<double> bound(x.size(), 0.0);
  // One expert (gate/up/down views at index e) on token t: o and δo.
  auto expert = [&](auto const& w, std::int64_t e, std::int64_t inter, float const* xt, std::vector<double>& o,
                    std::vector<double>& dout) {
    std::vector<double> h(static_cast<std::size_t>(inter)), dh(h.size());
    for (std::int64_t m = 0; m < inter; ++m) {
      double g = w.gate_bias.data != nullptr ? double(*w.gate_bias.pointer(e, m)) : 0.0;
      double v = w.up_bias.data != nullptr ? double(*w.up_bias.pointer(e, m)) : 0.0;
      double ag = std::fabs(g), av = std::fabs(v);
      for (std::int64_t i = 0; i < H; ++i) {
        g += double(*w.gate.pointer(e, m, i)) * double(xt[i]);
        v += double(*w.up.pointer(e, m, i)) * double(xt[i]);
        ag += std::fabs(double(*w.gate.pointer(e, m, i)) * double(xt[i]));
        av += std::fabs(double(*w.up.pointer(e, m, i)) * double(xt[i]));
      }
      double const dg = double(H + 1) * u * ag, dv = double(H + 1) * u * av;
      double f = 0, scale = 0;
      if (clamped) {
        double const a = std::min(g, double(b.swiglu_limit));
        double const uu = std::clamp(v, -double(b.swiglu_limit), double(b.swiglu_limit));
        f = a * sig(double(b.swiglu_alpha) * a);
        scale = std::fabs(uu) + 1.0;
        h[static_cast<std::size_t>(m)] = (uu + 1.0) * f;
      } else {
        f = g * sig(g);
        scale = std::fabs(v);
        h[static_cast<std::size_t>(m)] = f * v;
      }
      dh[static_cast<std::size_t>(m)] =
          1.2 * scale * dg + std::fabs(f) * dv + 4 * u * std::fabs(h[static_cast<std::size_t>(m)]);
    }
    for (std::int64_t i = 0; i < H; ++i) {
      double s = w.down_bias.data != nullptr ? double(*w.down_bias.pointer(e, i)) : 0.0;
      double as = std::fabs(s), d = 0;
      for (std::int64_t m = 0; m < inter; ++m) {
        double const wd = double(*w.down.pointer(e, i, m));
        s += wd * h[static_cast<std::size_t>(m)];
        as += std::fabs(wd * h[static_cast<std::size_t>(m)]);
        d += std::fabs(wd) * dh[static_cast<std::size_t>(m)];
      }
      o[static_cast<std::size_t>(i)] = s;
      dout[static_cast<std::size_t>(i)] = double(inter + 1) * u * as + d;
    }
  };
  std::vector<double> o(static_cast<std::size_t>(H)), dout(o.size());
  for (std::int64_t t = 0; t < T; ++t) {
    float const* xt = x.data() + t * H;
    double dz = 0;
    for (std::int64_t e = 0; e < E; ++e) {
      double z = b.router_bias.empty() ? 0.0 : double(b.router_bias[static_cast<std::size_t>(e)]);
      double az = std::fabs(z);
      for (std::int64_t i = 0; i < H; ++i) {
        z += double(b.router_weight_view()(e, i)) * double(xt[i]);
        az += std::fabs(double(b.router_weight_view()(e, i)) * double(xt[i]));
      }
      dz = std::max(dz, double(H + 1) * u * az + u * std::fabs(z));
    }
    std::vector<double> magnitude(static_cast<std::size_t>(H), 0.0);
    for (std::int64_t j = 0; j < K; ++j) {
      std::int64_t const e = ids[static_cast<std::size_t>(t * K + j)];
      double const w = double(weights[static_cast<std::size_t>(t * K + j)]);
      double const dw = std::fabs(w) * (4 * dz + 2 * u);
      if (on_input) {  // y += E(w·x): the expert's own error, and 2δw/w·|E| (SwiGLU is at most quadratic in scale)
        std::vector<float> xs(xt, xt + H);
        for (float& v : xs) {
          v = static_cast<float>(w * double(v));
        }
        expert(mw, e, b.intermediate, xs.data(), o, dout);
        for (std::int64_t i = 0; i < H; ++i) {
          bound[static_cast<std::size_t>(t * H + i)] +=
              dout[static_cast<std::size_t>(i)] + 2 * (dw / std::fabs(w)) * std::fabs(o[static_cast<std::size_t>(i)]);
          magnitude[static_cast<std::size_t>(i)] += std::fabs(o[static_cast<std::size_t>(i)]);
        }
        continue;
      }
      expert(mw, e, b.intermediate, xt, o, dout);
      for (std::int64_t i = 0; i < H; ++i) {
        bound[static_cast<std::size_t>(t * H + i)] +=
            std::fabs(w) * dout[static_cast<std::size_t>(i)] + dw * std::fabs(o[static_cast<std::size_t>(i)]);
        magnitude[static_cast<std::size_t>(i)] += std::fabs(w * o[static_cast<std::size_t>(i)]);
      }
    }
    if (sw.present()) {
      double gate = 1.0;
      double dgate = 0.0;
      if (sw.gate.data != nullptr) {
        double a = 0, aa = 0;
        for (std::int64_t i = 0; i < H; ++i) {
          a += double(*sw.gate.pointer(i)) * double(xt[i]);
          aa += std::fabs(double(*sw.gate.pointer(i)) * double(xt[i]));
        }
        gate = sig(a);
        dgate = gate * (1 - gate) * double(H + 1) * u * aa + 2 * u * gate;
      }
      expert(sw.weights, 0, b.shared_intermediate, xt, o, dout);
      for (std::int64_t i = 0; i < H; ++i) {
        bound[static_cast<std::size_t>(t * H + i)] +=
            gate * dout[static_cast<std::size_t>(i)] + dgate * std::fabs(o[static_cast<std::size_t>(i)]);
        magnitude[static_cast<std::size_t>(i)] += std::fabs(gate * o[static_cast<std::size_t>(i)]);
      }
    }
    for (std::int64_t i = 0; i < H; ++i) {
      std::size_t const k = static_cast<std::size_t>(t * H + i);
      bound[k] = 2.0 * (bound[k] + double(K + 2) * u * magnitude[static_cast<std::size_t>(i)]);
    }
  }
  return bound;
}

}  // namespace

TEST_CASE("moekit-run: every family's y equals the host-reference block within the fp32 bound", "[tools][moekit_run]") {
  for (std::string const& family : test_hf::families) {
    DYNAMIC_SECTION(family) {
      Work work;
      test_hf::Checkpoint c;
      REQUIRE(test_hf::write_checkpoint(work.dir / "model", family, c, 5));
      std::int64_t const T = 40;
      std::vector<float> const x = test_hf::random_x(T, c.hidden, 9);
      fs::path const xp = work.dir / "x.npy", yp = work.dir / "out" / "y.npy", ip = work.dir / "out" / "ids.npy";
      fs::create_directories(work.dir / "out");
      REQUIRE(io::write_npy(xp, x.data(), {T, c.hidden}) == Status::ok);
      Run const r = run_tool("--config " + q(c.config_path) + " --weights " + q(c.weights_path) + " --layer " +
                                 std::to_string(c.layer) + " --input " + q(xp) + " --output " + q(yp) +
                                 " --router-out " + q(ip) + " --threads 2",
                             work.dir / "log.txt");
      REQUIRE(r.status == 0);
      std::vector<float> y, w;
      std::vector<int> ids;
      std::vector<std::int64_t> ys, is, ws;
      REQUIRE(io::read_npy(yp, y, ys) == Status::ok);
      REQUIRE(io::read_npy(ip, ids, is) == Status::ok);
      REQUIRE(io::read_npy(work.dir / "out" / "ids_weights.npy", w, ws) == Status::ok);
      CHECK(ys == std::vector<std::int64_t>{T, c.hidden});
      CHECK(is == std::vector<std::int64_t>{T, c.k});
      CHECK(ws == is);

      io::MoeBlock<float> b;
      REQUIRE(io::load_moe_block(c.config_path, c.weights_path, c.layer, b) == Status::ok);
      test_hf::BlockOutput ref;
      REQUIRE(test_hf::reference_block(b, x, ref) == Status::ok);
      REQUIRE(ids == ref.ids);
      std::vector<double> const bound = fp32_bound(b, x, ref.ids, ref.weights);
      long long bad_w = 0, bad_y = 0;
      double worst = 0, worst_ratio = 0;
      for (std::size_t i = 0; i < w.size(); ++i) {
        // Weight bound: (4·δz + 2u)|w| with δz <= (H+1)·u·Σ|x W_r| + u|z| <= ~1e-5 here; 1e-5 relative covers it.
        bad_w += std::fabs(double(w[i]) - double(ref.weights[i])) > 1e-5 * std::fabs(double(ref.weights[i]));
      }
      for (std::size_t i = 0; i < y.size(); ++i) {
        double const d = std::fabs(double(y[i]) - double(ref.y[i]));
        worst = std::max(worst, d);
        worst_ratio = std::max(worst_ratio, d / bound[i]);
        bad_y += d > bound[i];
      }
      INFO("largest |y_tool - y_ref| = " << worst << ", largest ratio to the bound = " << worst_ratio);
      CHECK(bad_w == 0);
      CHECK(bad_y == 0);
      // End to end against the independent computation from the on-disk tensors (which checks the
      // mapping the reference shares with the tool): |y_tool - y_ind| <= bound + its tolerance.
      test_hf::Independent const ind = test_hf::independent_block(c, x);
      CHECK(ids == ind.ids);
      long long bad_ind = 0;
      for (std::size_t i = 0; i < y.size(); ++i) {
        bad_ind += std::fabs(double(y[i]) - ind.y[i]) > bound[i] + ind.tolerance[i];
      }
      CHECK(bad_ind == 0);
      CHECK_THAT(r.log, Catch::Contains("moekit-run: layer " + std::to_string(c.layer) + " of " + c.model_type));
    }
  }
}

TEST_CASE("moekit-run: errors exit non-zero with a message naming the file and write nothing", "[tools][moekit_run]") {
  Work work;
  test_hf::Checkpoint c;
  REQUIRE(test_hf::write_checkpoint(work.dir / "model", "mixtral", c, 5));
  std::vector<float> const x = test_hf::random_x(4, c.hidden, 9);
  fs::path const xp = work.dir / "x.npy";
  REQUIRE(io::write_npy(xp, x.data(), {4, c.hidden}) == Status::ok);
  fs::path const out = work.dir / "out";
  fs::create_directories(out);
  fs::path const yp = out / "y.npy", ip = out / "ids.npy";
  auto args = [&](fs::path const& config, fs::path const& weights, int layer, fs::path const& input) {
    return "--config " + q(config) + " --weights " + q(weights) + " --layer " + std::to_string(layer) + " --input " +
           q(input) + " --output " + q(yp) + " --router-out " + q(ip);
  };
  // Each failing run must leave `out` empty (no y, no ids, no partial files).
  auto expect = [&](std::string const& a, int status, std::string const& message) {
    Run const r = run_tool(a, work.dir / "log.txt");
    CHECK(r.status == status);
    CHECK_THAT(r.log, Catch::Contains("moekit-run: error: " + message));
    CHECK(fs::is_empty(out));
  };
  SECTION("command line") {
    expect("--config " + q(c.config_path), 2, "--weights model.safetensors is required");
    expect(args(c.config_path, c.weights_path, 0, xp) + " --bogus 1", 2, "unknown option '--bogus'");
    expect(args(c.config_path, c.weights_path, 0, xp) + " --layer 1", 2, "--layer given twice");
    expect("--config " + q(c.config_path) + " --weights " + q(c.weights_path) + " --layer one --input " + q(xp) +
               " --output " + q(yp),
           2, "--layer: 'one' is not an integer");
    expect(args(c.config_path, c.weights_path, 0, xp) + " --threads -1", 2, "--threads: must be >= 0");
  }
  SECTION("files") {
    expect(args(work.dir / "nowhere.json", c.weights_path, 0, xp), 1,
           "config '" + (work.dir / "nowhere.json").string());
    expect(args(c.config_path, work.dir / "none.safetensors", 0, xp), 1,
           "safetensors file '" + (work.dir / "none.safetensors").string());
    fs::path const truncated = work.dir / "truncated.safetensors";
    fs::copy_file(c.weights_path, truncated);
    fs::resize_file(truncated, fs::file_size(truncated) - 100);
    expect(args(c.config_path, truncated, 0, xp), 1, "safetensors file '" + truncated.string() + "'");
    std::ofstream(work.dir / "bad.npy") << "not numpy";
    expect(args(c.config_path, c.weights_path, 0, work.dir / "bad.npy"), 1,
           "npy file '" + (work.dir / "bad.npy").string() + "': not a .npy file");
  }
  SECTION("x of the wrong shape") {
    fs::path const x5 = work.dir / "x5.npy";
    REQUIRE(io::write_npy(x5, x.data(), {4, 5}) == Status::ok);
    expect(args(c.config_path, c.weights_path, 0, x5), 1,
           "input '" + x5.string() + "' must have shape [T, H] with H = 24 (hidden_size of '" + c.config_path.string() +
               "'), got [4, 5]");
  }
  SECTION("checkpoint problems") {
    expect(args(c.config_path, c.weights_path, 2, xp), 1,
           "config '" + c.config_path.string() + "': layer 2 is out of range (num_hidden_layers = 2)");
    nlohmann::json j = c.config;
    j["num_local_experts"] = 6;
    fs::path const wrong = work.dir / "config6.json";
    std::ofstream(wrong) << j.dump();
    expect(args(wrong, c.weights_path, 0, xp), 1, "config '" + wrong.string() + "' says 6 experts but tensor");
    io::SafetensorsFile f;
    REQUIRE(io::read_safetensors(c.weights_path, f) == Status::ok);
    std::map<std::string, io::SafetensorsTensor> tensors;
    for (auto const& [name, e] : f.tensors) {
      if (name != "model.layers.0.block_sparse_moe.experts.7.w2.weight") {
        io::SafetensorsTensor t;
        t.dtype = e.dtype;
        t.shape = e.shape;
        auto const bytes = f.bytes(e);
        t.data.assign(bytes.begin(), bytes.end());
        tensors[name] = std::move(t);
      }
    }
    fs::path const missing = work.dir / "missing.safetensors";
    REQUIRE(io::write_safetensors(missing, tensors) == Status::ok);
    expect(args(c.config_path, missing, 0, xp), 1,
           "safetensors file '" + missing.string() +
               "': missing tensor 'model.layers.0.block_sparse_moe.experts.7.w2.weight'");
  }
  SECTION("non-finite x") {
    std::vector<float> bad = x;
    bad[30] = NAN;
    fs::path const xn = work.dir / "x_nan.npy";
    REQUIRE(io::write_npy(xn, bad.data(), {4, c.hidden}) == Status::ok);
    expect(args(c.config_path, c.weights_path, 0, xn), 1,
           "gate projection: hidden states: non-finite value nan at token 1, h 6");
  }
}

TEST_CASE("moekit-run: bf16 hidden states (<u2) give the bits of the same values in float32", "[tools][moekit_run]") {
  Work work;
  test_hf::Checkpoint c;
  REQUIRE(test_hf::write_checkpoint(work.dir / "model", "qwen2_moe", c, 5));
  std::vector<float> x = test_hf::random_x(6, c.hidden, 3);
  std::vector<bf16_t> xb;
  for (float& v : x) {
    xb.push_back(bf16_t(v));
    v = xb.back().to_float();
  }
  REQUIRE(io::write_npy(work.dir / "x32.npy", x.data(), {6, c.hidden}) == Status::ok);
  REQUIRE(io::write_npy(work.dir / "x16.npy", xb.data(), {6, c.hidden}) == Status::ok);
  std::vector<float> y[2];
  for (int i = 0; i < 2; ++i) {
    fs::path const xp = work.dir / (i == 0 ? "x32.npy" : "x16.npy"), yp = work.dir / ("y" + std::to_string(i) + ".npy");
    REQUIRE(run_tool("--config " + q(c.config_path) + " --weights " + q(c.weights_path) + " --layer 1 --input " +
                         q(xp) + " --output " + q(yp),
                     work.dir / "log.txt")
                .status == 0);
    std::vector<std::int64_t> shape;
    REQUIRE(io::read_npy(yp, y[i], shape) == Status::ok);
  }
  CHECK(y[0] == y[1]);
}

// --emulate: the device expert stage (under the CUDA emulator) on bf16-rounded x and weights,
// with the CPU's routing. Oracle: the host reference on exactly those bf16 operands and the
// tool's own ids/weights (--router-out), within expert_case::oracle's per-element bound for
// bf16 operands and a bf16 h (tests/experts/expert_case.hpp explains it).
TEST_CASE("moekit-run --emulate: the device kernels agree with the host reference on bf16 operands",
          "[tools][moekit_run]") {
  for (std::string const& family : test_hf::families) {
    DYNAMIC_SECTION(family) {
      Work work;
      test_hf::Checkpoint c;
      REQUIRE(test_hf::write_checkpoint(work.dir / "model", family, c, 5));
      std::int64_t const T = 23;
      std::vector<float> const x = test_hf::random_x(T, c.hidden, 11);
      fs::path const xp = work.dir / "x.npy", yp = work.dir / "y.npy", ip = work.dir / "ids.npy";
      REQUIRE(io::write_npy(xp, x.data(), {T, c.hidden}) == Status::ok);
      Run const r = run_tool("--config " + q(c.config_path) + " --weights " + q(c.weights_path) + " --layer " +
                                 std::to_string(c.layer) + " --input " + q(xp) + " --output " + q(yp) +
                                 " --router-out " + q(ip) + " --emulate",
                             work.dir / "log.txt");
      INFO(r.log);
      REQUIRE(r.status == 0);
      std::vector<float> y, w;
      std::vector<int> ids;
      std::vector<std::int64_t> shape;
      REQUIRE(io::read_npy(yp, y, shape) == Status::ok);
      REQUIRE(io::read_npy(ip, ids, shape) == Status::ok);
      REQUIRE(io::read_npy(work.dir / "ids_weights.npy", w, shape) == Status::ok);
      io::MoeBlock<float> b;
      REQUIRE(io::load_moe_block(c.config_path, c.weights_path, c.layer, b) == Status::ok);
      // The block as expert_case data, rounded to bf16 as the tool rounds it.
      auto const narrow = [](std::vector<float> const& v) {
        std::vector<bf16_t> o;
        for (float f : v) {
          o.push_back(bf16_t(f));
        }
        return o;
      };
      expert_case::Case<bf16_t, bf16_t> k;
      k.shape.tokens = T;
      k.shape.hidden = b.hidden;
      k.shape.inter = b.intermediate;
      k.shape.slots = c.k;
      k.shape.table = experts::all_computed(static_cast<int>(b.experts));
      k.shape.shared_inter = b.shared_intermediate;
      k.shape.shared_gate = !b.shared_gate_vector.empty();
      k.shape.biases = !b.gate_bias.empty();
      k.shape.position = b.position;
      k.x = narrow(x);
      k.ids = ids;
      k.weights = w;
      k.gate = narrow(b.gate), k.up = narrow(b.up), k.down = narrow(b.down);
      k.gate_bias = narrow(b.gate_bias), k.up_bias = narrow(b.up_bias), k.down_bias = narrow(b.down_bias);
      k.s_gate = narrow(b.shared_gate), k.s_up = narrow(b.shared_up), k.s_down = narrow(b.shared_down);
      k.s_gate_vec = narrow(b.shared_gate_vector);
      double const u_bf16 = 0x1p-8, u_fp32 = 0x1p-24;
      if (b.function == io::HfExpertFunction::clamped_swiglu) {
        auto const o = expert_case::oracle<bf16_t, bf16_t, float>(
            k, experts::ClampedSwiglu<bf16_t>{b.swiglu_alpha, b.swiglu_limit}, u_bf16, u_fp32);
        expert_case::require_within(y, o);
      } else {
        auto const o = expert_case::oracle<bf16_t, bf16_t, float>(k, experts::SwiGlu<bf16_t>{}, u_bf16, u_fp32);
        expert_case::require_within(y, o);
      }
    }
  }
}
