// moekit quickstart: a tiny Mixtral-style MoE layer — softmax top-2 of 8 experts, renormalised,
// SwiGLU experts in bf16 — composed at compile time as
//
//   moekit::MoeLayer<routing::TopK<8>, balancing::None, experts::SwiGlu<bf16_t>>
//
// and run twice on the same random tokens and weights: on the CPU executor (cpu::ThreadPool)
// and on a CUDA stream, which here (host compiler) is moekit's CUDA emulator with racecheck on.
// The same layer compiles with nvcc for sm_80 and sm_90a (quickstart_layer.cu). It prints the
// routing statistics, how far the two backends are apart, and exits non-zero when that is more
// than the bound layer_example.hpp derives (the device rounds the hidden activations to bf16
// between the two GEMMs; the CPU executor keeps them in fp32).

#include <cmath>
#include <cstdio>
#include <cstring>

#include "layer_example.hpp"

#include "moekit/balancing/concept.hpp"
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/layer.hpp"
#include "moekit/routing/top_k.hpp"

int main() {
  namespace experts = moekit::experts;
  namespace routing = moekit::routing;
  using Layer = moekit::MoeLayer<routing::TopK<8>, moekit::balancing::None, experts::SwiGlu<moekit::bf16_t>>;

  routing::TopK<8> const router = routing::mixtral_router(8, 2);  // HF: num_local_experts, num_experts_per_tok
  experts::SwiGlu<moekit::bf16_t> const expert{};

  Layer::Problem p;
  p.tokens = 48;        // T ≤ 64: the decode tiles (16 rows) on the device
  p.hidden = 64;        // H
  p.intermediate = 96;  // I per expert
  p.table = experts::all_computed(8);
  auto const data = example::LayerData::random(p.tokens, p.hidden, p.intermediate, p.table, 2026);

  std::printf("moekit quickstart: MoeLayer<TopK<8>, None, SwiGlu<bf16>>, Mixtral routing (top-2 of 8, "
              "renormalised), T = %lld, H = %lld, I = %lld\n",
              static_cast<long long>(p.tokens), static_cast<long long>(p.hidden),
              static_cast<long long>(p.intermediate));
  example::LayerRun cpu, device, multi;
  if (!example::run_layer<Layer>(router, expert, p, data, false, cpu) ||
      !example::run_layer<Layer>(router, expert, p, data, true, device) ||
      !example::run_layer<Layer>(router, expert, p, data, true, multi, moekit::LayerLaunch::multi)) {
    return 1;
  }
  // The device path runs as one fused cooperative kernel by default; one kernel per stage
  // (LayerLaunch::multi) computes the same bits.
  bool const same_bits = std::memcmp(device.y.data(), multi.y.data(), device.y.size() * sizeof(float)) == 0;
  std::printf("device: fused single launch and multi-launch y %s\n",
              same_bits ? "bit-identical" : "DIFFER (expected bit-identical)");
  example::print_routing(cpu, p.table, router.slots(), "CPU executor");
  example::print_routing(device, p.table, router.slots(), "emulated device");

  // SwiGLU h = silu(g)·u = g·σ(g)·u: ∂h/∂g = σ(g)(1 + g(1 − σ(g)))·u, ∂h/∂u = silu(g). The
  // router's weights are a softmax over the selected logits: Σ_m |∂w_k/∂z_m| = 2w_k(1 − w_k) ≤ ½.
  auto const swiglu = [](double g, double u) {
    double const s = 1.0 / (1.0 + std::exp(-g));
    return example::HiddenUnit{g * s * u, std::fabs(s * (1.0 + g * (1.0 - s)) * u), std::fabs(g * s)};
  };
  auto c = example::compare_backends(data, cpu, device, router.slots(), 0.5, swiglu);
  c.launches_agree = same_bits;
  return example::report(c, cpu.workspace_bytes, device.workspace_bytes);
}
