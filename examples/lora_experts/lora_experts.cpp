// moekit LoRA experts: a DynMoLE / MoLA-style adapted linear layer,
//
//   y_t = W_0 x_t + b + Σ_{e ∈ top-2(t)} w_te · s · B_e (A_e x_t),   s = α/r,
//
// with 4 LoRA experts of rank 8 (experts/lora.hpp) behind a softmax top-2 router (Mixtral-style,
// renormalised). moekit::MoeLayer computes the mixture term (gate projection → router → the
// experts' two GEMMs → combine), on the CPU executor and on the device (here: the CUDA
// emulator, under a shuffled schedule with racecheck); the frozen base W_0 x + b is a plain loop
// added afterwards, as any dense GEMM would be. Both backends are checked against a direct
// double-precision computation of the whole layer, routing included.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "moekit/balancing/concept.hpp"
#include "moekit/cpu/thread_pool.hpp"
#include "moekit/experts/lora.hpp"
#include "moekit/layer.hpp"
#include "moekit/routing/top_k.hpp"
#if MOEKIT_EMULATION
#include "moekit/emu/launch_config.hpp"
#endif

using namespace moekit;

namespace {

constexpr std::int64_t tokens = 32, hidden = 64, rank = 8;
constexpr int num_experts = 4, slots = 2;
constexpr double alpha = 16.0;  // s = α/r = 2

using Expert = experts::LoraExpert<bf16_t>;  // the device GEMMs take bf16 (or fp16) weights
using Router = routing::TopK<8>;
using Layer = MoeLayer<Router, balancing::None, Expert>;

struct Data {
  std::vector<bf16_t> x;       // [T, H]
  std::vector<bf16_t> router;  // W_r [E, H]
  std::vector<bf16_t> a, b;    // A [E, r, H], B [E, H, r]
  std::vector<float> w0, b0;   // frozen base W_0 [H, H], b [H]
};

std::vector<bf16_t> uniform(std::size_t n, double scale, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(-scale, scale);
  std::vector<bf16_t> v(n);
  for (auto& e : v) {
    e = bf16_t(u(rng));
  }
  return v;
}

Data make_data() {
  std::mt19937 rng(2026);
  Data d;
  double const init = 1.0 / std::sqrt(double(hidden));  // PEFT's A init range; router the same
  d.x = uniform(tokens * hidden, 1.0, rng);
  d.router = uniform(num_experts * hidden, 4.0 * init, rng);
  d.a = uniform(num_experts * rank * hidden, init, rng);
  d.b = uniform(num_experts * hidden * rank, 0.2, rng);  // "trained" B (PEFT starts it at 0)
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  d.w0.resize(hidden * hidden);
  d.b0.resize(hidden);
  for (auto& v : d.w0) {
    v = u(rng) * static_cast<float>(init);
  }
  for (auto& v : d.b0) {
    v = 0.1f * u(rng);
  }
  return d;
}

struct Output {
  std::vector<float> y;  // [T, H]: the mixture term, then + W_0 x + b
  std::vector<int> ids;  // [T, K]
  std::vector<float> weights;
};

template <MemorySpace Space>
Layer::Arguments<bf16_t, float, Space> arguments(Data const& d, Output& out, Diagnostics* diagnostics) {
  Layer::Arguments<bf16_t, float, Space> a;
  a.x = TensorView<bf16_t const, 2, Space>::row_major(d.x.data(), {tokens, hidden});
  a.gate_weight = TensorView<bf16_t const, 2, Space>::row_major(d.router.data(), {num_experts, hidden});
  a.experts.up = TensorView<bf16_t const, 3, Space>::row_major(d.a.data(), {num_experts, rank, hidden});
  a.experts.down = TensorView<bf16_t const, 3, Space>::row_major(d.b.data(), {num_experts, hidden, rank});
  out.y.assign(tokens * hidden, 0.0f);
  out.ids.assign(tokens * slots, -1);
  out.weights.assign(tokens * slots, 0.0f);
  a.y = TensorView<float, 2, Space>::row_major(out.y.data(), {tokens, hidden});
  a.ids = TensorView<int, 2, Space>::row_major(out.ids.data(), {tokens, slots});
  a.weights = TensorView<float, 2, Space>::row_major(out.weights.data(), {tokens, slots});
  a.diagnostics = diagnostics;
  return a;
}

// The frozen base, a plain loop in fp32: y += W_0 x + b.
void add_base(Data const& d, std::vector<float>& y) {
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t o = 0; o < hidden; ++o) {
      float acc = d.b0[o];
      for (std::int64_t i = 0; i < hidden; ++i) {
        acc += d.w0[o * hidden + i] * to_float(d.x[t * hidden + i]);
      }
      y[t * hidden + o] += acc;
    }
  }
}

struct Direct {
  std::vector<double> y;
  std::vector<double> tol_fp32;  // fp32 sums and the fp32 router: both backends
  std::vector<double> tol_h16;   // added on the device: h = s·A x stored in bf16
  std::vector<int> ids;
};

// The whole layer in double: logits, softmax, top-2 renormalised, LoRA experts, base. The
// tolerance per element: every fp32 sum of ≤ 64 terms is within (64 + 4)·2^-24 ≈ 4e-6 of its
// terms' magnitudes (rounded up to 1e-5, which also covers the fp32 router's weights, ~1e-6
// relative); on the device h = s·A x is stored in bf16 (relative 2^-8 per element of h,
// propagated through |B| and the routing weights, ×2 for the second-order terms).
Direct direct(Data const& d) {
  Direct r;
  r.y.assign(tokens * hidden, 0.0);
  r.tol_fp32.assign(tokens * hidden, 0.0);
  r.tol_h16.assign(tokens * hidden, 0.0);
  r.ids.assign(tokens * slots, -1);
  double const s = alpha / double(rank);
  auto const xd = [&](std::int64_t t, std::int64_t i) { return double(to_float(d.x[t * hidden + i])); };
  for (std::int64_t t = 0; t < tokens; ++t) {
    double z[num_experts], p[num_experts], zmax = -1e300, sum = 0;
    for (int e = 0; e < num_experts; ++e) {
      z[e] = 0;
      for (std::int64_t i = 0; i < hidden; ++i) {
        z[e] += double(to_float(d.router[e * hidden + i])) * xd(t, i);
      }
      zmax = std::max(zmax, z[e]);
    }
    for (int e = 0; e < num_experts; ++e) {
      p[e] = std::exp(z[e] - zmax);
      sum += p[e];
    }
    int chosen[slots];
    double wsum = 0;
    for (int j = 0; j < slots; ++j) {
      int best = -1;
      for (int e = 0; e < num_experts; ++e) {
        if (std::find(chosen, chosen + j, e) == chosen + j && (best < 0 || z[e] > z[best])) {
          best = e;  // ties go to the lower index
        }
      }
      chosen[j] = best;
      r.ids[t * slots + j] = best;
      wsum += p[best] / sum;
    }
    for (std::int64_t o = 0; o < hidden; ++o) {
      double base = d.b0[o], base_mag = std::fabs(d.b0[o]);
      for (std::int64_t i = 0; i < hidden; ++i) {
        base += double(d.w0[o * hidden + i]) * xd(t, i);
        base_mag += std::fabs(double(d.w0[o * hidden + i]) * xd(t, i));
      }
      r.y[t * hidden + o] = base;
      r.tol_fp32[t * hidden + o] = 1e-5 * base_mag;
    }
    for (int j = 0; j < slots; ++j) {
      int const e = chosen[j];
      double const w = p[e] / sum / wsum;
      double h[rank];
      for (std::int64_t k = 0; k < rank; ++k) {
        h[k] = 0;
        for (std::int64_t i = 0; i < hidden; ++i) {
          h[k] += double(to_float(d.a[(e * rank + k) * hidden + i])) * xd(t, i);
        }
        h[k] *= s;
      }
      for (std::int64_t o = 0; o < hidden; ++o) {
        double v = 0, mag = 0;
        for (std::int64_t k = 0; k < rank; ++k) {
          double const bk = double(to_float(d.b[(e * hidden + o) * rank + k]));
          v += bk * h[k];
          mag += std::fabs(bk * h[k]);
        }
        r.y[t * hidden + o] += w * v;
        r.tol_fp32[t * hidden + o] += w * 1e-5 * mag;
        r.tol_h16[t * hidden + o] += w * 2 * 0x1p-8 * mag;
      }
    }
  }
  return r;
}

struct Workspaces {
  std::vector<std::byte> buffer;
  Workspace w;
  explicit Workspaces(std::size_t n) : buffer(n + 256) {
    void* base = buffer.data();
    std::size_t space = buffer.size();
    base = std::align(256, 1, base, space);
    w = Workspace(base, space);
  }
};

// max |got − want| and max |got − want| / tolerance.
struct Compare {
  double max_abs = 0, max_ratio = 0;
};
Compare compare(std::vector<float> const& got, Direct const& want, bool h16) {
  Compare c;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double const err = std::fabs(double(got[i]) - want.y[i]);
    c.max_abs = std::max(c.max_abs, err);
    c.max_ratio = std::max(c.max_ratio, err / (want.tol_fp32[i] + (h16 ? want.tol_h16[i] : 0.0)));
  }
  return c;
}

}  // namespace

int main() {
  Data const d = make_data();
  Router const router = routing::mixtral_router(num_experts, slots);
  Expert const expert = experts::lora_expert<bf16_t>(alpha, rank);
  if (Status s = experts::check_lora_params(hidden, rank, hidden, alpha, experts::LoraScaling::standard); !s) {
    std::fprintf(stderr, "%s\n", last_error_message());
    return 1;
  }
  Layer::Problem p;
  p.tokens = tokens;
  p.hidden = hidden;
  p.intermediate = rank;  // a LoRA expert's hidden width is its rank
  p.table = experts::all_computed(num_experts);

  std::printf("moekit LoRA experts: y = W_0 x + b + sum_e w_e * (alpha/r) * B_e A_e x\n");
  std::printf("T = %lld tokens, H = %lld, %d LoRA experts of rank %lld, alpha = %g (s = %g), softmax top-%d\n\n",
              static_cast<long long>(tokens), static_cast<long long>(hidden), num_experts, static_cast<long long>(rank),
              alpha, double(expert.scale), slots);

  // CPU executor.
  Output cpu_out;
  Diagnostics cpu_diag{};
  {
    Workspaces ws(Layer::workspace_size<bf16_t, float>(router, p, false));
    cpu::ThreadPool pool(2);
    if (Status s = Layer::run(router, {}, expert, p, arguments<MemorySpace::host>(d, cpu_out, &cpu_diag), ws.w, pool);
        !s) {
      std::fprintf(stderr, "MoeLayer on the CPU: %s\n", last_error_message());
      return 1;
    }
    add_base(d, cpu_out.y);
  }

  Direct const ref = direct(d);
  int tokens_per_expert[num_experts] = {};
  for (int id : cpu_out.ids) {
    ++tokens_per_expert[id];
  }
  std::printf("routing (CPU executor): tokens per expert");
  for (int e = 0; e < num_experts; ++e) {
    std::printf("  e%d: %d", e, tokens_per_expert[e]);
  }
  std::printf("   (T*K = %lld assignments)\n", static_cast<long long>(tokens * slots));
  bool ok = cpu_out.ids == ref.ids;
  std::printf("routing vs the double-precision router: %s\n", ok ? "same experts for every token" : "MISMATCH");

  Compare const c = compare(cpu_out.y, ref, false);
  std::printf("CPU executor  vs double: max |diff| = %.3g (max diff/tolerance %.3g)\n", c.max_abs, c.max_ratio);
  ok = ok && c.max_ratio <= 1.0;

#if MOEKIT_EMULATION
  // The device path, run by the CUDA emulator (device memory is host memory there).
  Output dev_out;
  Diagnostics dev_diag{};
  {
    emu::LaunchOptions options;
    options.schedule_seed = 7;  // a shuffled schedule: the result must not depend on it
    options.racecheck = true;
    emu::ScopedLaunchOptions const guard(options);
    Workspaces ws(Layer::workspace_size<bf16_t, float>(router, p, true));
    if (Status s =
            Layer::run(router, {}, expert, p, arguments<MemorySpace::device>(d, dev_out, &dev_diag), ws.w, nullptr);
        !s) {
      std::fprintf(stderr, "MoeLayer on the device: %s\n", last_error_message());
      return 1;
    }
    add_base(d, dev_out.y);
  }
  bool const same_routing = dev_out.ids == cpu_out.ids && dev_out.weights == cpu_out.weights;
  Compare const dc = compare(dev_out.y, ref, true);
  double backends = 0;
  for (std::size_t i = 0; i < dev_out.y.size(); ++i) {
    backends = std::max(backends, double(std::fabs(dev_out.y[i] - cpu_out.y[i])));
  }
  std::printf("device (emulated) routing: %s\n", same_routing ? "bit-identical to the CPU's" : "MISMATCH");
  std::printf("device (emulated) vs double: max |diff| = %.3g (max diff/tolerance %.3g)\n", dc.max_abs, dc.max_ratio);
  std::printf("device (emulated) vs CPU executor: max |diff| = %.3g (the device rounds h = s*A x to bf16)\n", backends);
  ok = ok && same_routing && dc.max_ratio <= 1.0;
#endif

  std::printf("\n%s\n", ok ? "all results within tolerance" : "MISMATCH beyond tolerance");
  return ok ? 0 : 1;
}
