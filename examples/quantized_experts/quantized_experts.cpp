// moekit example: quantised experts. A tiny Mixtral-style layer (softmax top-2 of 8 experts,
// SwiGLU in bf16) whose experts are quantised with moekit's quantiser to a bit width per expert
// read from an MC# allocation file (io/allocation.hpp: written here, then read back), composed as
//
//   moekit::MoeLayer<routing::TopK<8>, balancing::None, experts::Quantized<experts::SwiGlu<bf16_t>>>
//
// and run on the CPU executor (codes dequantised to fp32) and on a CUDA stream — here moekit's
// emulator — (codes dequantised to bf16 for the tensor cores). It prints the bits per expert,
// the bytes against bf16, how far the quantised layer is from the unquantised one, and how far
// the two backends are apart; it exits non-zero when the backends disagree beyond
//   ‖y_cpu − y_device‖₂ ≤ 2⁻⁶·‖y_cpu‖₂ and the same routing,
// a loose form of tests/cpu/experts_quantized_test.cpp's per-element bound: the device rounds
// the dequantised weights and the hidden activations to bf16 (2⁻⁹ relative each), which on these
// random weights moves y by about 2⁻⁸ relative; a wrong expert or bit width moves it by O(1).

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <vector>

#include "layer_example.hpp"

#include "moekit/balancing/concept.hpp"
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/experts/quantize.hpp"
#include "moekit/experts/quantized.hpp"
#include "moekit/io/allocation.hpp"
#include "moekit/layer.hpp"
#include "moekit/routing/top_k.hpp"

namespace {

namespace experts = moekit::experts;
namespace routing = moekit::routing;
using moekit::bf16_t;
using moekit::MemorySpace;
using moekit::Status;
using Quantized = experts::Quantized<experts::SwiGlu<bf16_t>>;
using QuantizedLayer = moekit::MoeLayer<routing::TopK<8>, moekit::balancing::None, Quantized>;
using DenseLayer = moekit::MoeLayer<routing::TopK<8>, moekit::balancing::None, experts::SwiGlu<bf16_t>>;

bool ok(Status s, char const* what) {
  if (!s) {
    std::fprintf(stderr, "%s: %s: %s\n", what, moekit::to_string(s), moekit::last_error_message());
  }
  return s == Status::ok;
}

struct Codes {
  experts::QuantizedTensor gate, up, down;
};

experts::QuantizedWeights<MemorySpace::device> on_device(experts::QuantizedWeights<MemorySpace::host> const& v) {
  // Under the emulator the host's memory is the device's; a CUDA build would copy these first.
  return {v.bits, v.offsets, v.data, v.scales, v.zeros, v.bytes, v.experts, v.out, v.in, v.group};
}

// The quantised layer on the CPU (device = false) or the emulated device.
bool run_quantized(routing::TopK<8> const& router, QuantizedLayer::Problem const& p, example::LayerData const& data,
                   Codes const& q, bool device, example::LayerRun& out) {
  if (!ok(QuantizedLayer::can_implement<bf16_t, float>(router, {}, Quantized{}, p, device), "can_implement")) {
    return false;
  }
  std::int64_t const T = p.tokens, H = p.hidden, E = p.table.num_experts(), K = router.slots();
  out.workspace_bytes = QuantizedLayer::workspace_size<bf16_t, float>(router, p, device);
  std::size_t space = out.workspace_bytes + moekit::Workspace::default_alignment;
  auto const buffer = std::make_unique<std::byte[]>(space);
  void* base = buffer.get();
  base = std::align(moekit::Workspace::default_alignment, out.workspace_bytes, base, space);
  moekit::Workspace workspace(base, out.workspace_bytes);
  out.y.assign(static_cast<std::size_t>(T * H), 0.f);
  out.logits.assign(static_cast<std::size_t>(T * E), 0.f);
  out.ids.assign(static_cast<std::size_t>(T * K), -1);
  out.weights.assign(static_cast<std::size_t>(T * K), 0.f);
  auto const fill = [&](auto& a, auto space_tag) {
    constexpr MemorySpace S = decltype(space_tag)::value;
    a.x = moekit::TensorView<bf16_t const, 2, S>::row_major(data.x.data(), {T, H});
    a.gate_weight = moekit::TensorView<bf16_t const, 2, S>::row_major(data.gate_weight.data(), {E, H});
    a.y = moekit::TensorView<float, 2, S>::row_major(out.y.data(), {T, H});
    a.logits = moekit::TensorView<float, 2, S>::row_major(out.logits.data(), {T, E});
    a.ids = moekit::TensorView<int, 2, S>::row_major(out.ids.data(), {T, K});
    a.weights = moekit::TensorView<float, 2, S>::row_major(out.weights.data(), {T, K});
    a.diagnostics = &out.diagnostics;
  };
  Status s = Status::ok;
  if (device) {
    moekit::emu::LaunchOptions o;
    o.schedule_seed = 3;
    o.racecheck = true;
    o.max_resident_blocks = 2;
    moekit::emu::ScopedLaunchOptions const guard(o);
    QuantizedLayer::Arguments<bf16_t, float, MemorySpace::device> a;
    fill(a, std::integral_constant<MemorySpace, MemorySpace::device>{});
    a.experts.gate = on_device(q.gate.view());
    a.experts.up = on_device(q.up.view());
    a.experts.down = on_device(q.down.view());
    // The checks read the bit widths and offsets from host copies (the host cannot read device memory).
    a.quantized_layout = {{q.gate.bits.data(), q.gate.offsets.data()},
                          {q.up.bits.data(), q.up.offsets.data()},
                          {q.down.bits.data(), q.down.offsets.data()}};
    s = QuantizedLayer::run(router, {}, Quantized{}, p, a, workspace, nullptr);
  } else {
    QuantizedLayer::Arguments<bf16_t, float, MemorySpace::host> a;
    fill(a, std::integral_constant<MemorySpace, MemorySpace::host>{});
    a.experts = {q.gate.view(), q.up.view(), q.down.view(), {}, {}, {}};
    moekit::cpu::ThreadPool pool(2);
    s = QuantizedLayer::run(router, {}, Quantized{}, p, a, workspace, pool);
  }
  return ok(s, device ? "MoeLayer::run on the device" : "MoeLayer::run on the CPU");
}

double norm(std::vector<float> const& a, std::vector<float> const* b = nullptr) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    double const d = double(a[i]) - (b != nullptr ? double((*b)[i]) : 0.0);
    s += d * d;
  }
  return std::sqrt(s);
}

}  // namespace

int main() {
  routing::TopK<8> const router = routing::mixtral_router(8, 2);
  QuantizedLayer::Problem p;
  p.tokens = 40;
  p.hidden = 128;  // multiples of the group size: the format quantises along the input
  p.intermediate = 256;
  p.table = experts::all_computed(8);
  auto const data = example::LayerData::random(p.tokens, p.hidden, p.intermediate, p.table, 2027);

  // An MC# allocation (ALGORITHMS.md §3.5 would solve for it): 3.5 bits on average, more for
  // some experts, fewer for others. The device GEMMs take 2, 3, 4 and 8 bits.
  moekit::io::BitAllocation allocation;
  allocation.group_size = 64;
  allocation.layers[0] = {4, 3, 2, 8, 3, 2, 4, 2};
  allocation.average_bits = 3.5;
  auto const path = std::filesystem::temp_directory_path() / "moekit_example_allocation.json";
  moekit::io::BitAllocation read;
  if (!ok(moekit::io::write_allocation(path, allocation), "write_allocation") ||
      !ok(moekit::io::read_allocation(path, read, 8), "read_allocation")) {
    return 1;
  }
  std::filesystem::remove(path);
  std::vector<int> const& bits = read.layers.at(0);

  experts::QuantizeOptions o;
  o.group = read.group_size;
  o.scheme = read.symmetric ? experts::QuantScheme::symmetric : experts::QuantScheme::asymmetric;
  std::int64_t const C = p.table.computed, H = p.hidden, I = p.intermediate;
  using View3 = moekit::HostTensor<bf16_t const, 3>;
  Codes q;
  if (!ok(experts::quantize_experts(View3::row_major(data.w_gate.data(), {C, I, H}), bits, o, q.gate), "quantize") ||
      !ok(experts::quantize_experts(View3::row_major(data.w_up.data(), {C, I, H}), bits, o, q.up), "quantize") ||
      !ok(experts::quantize_experts(View3::row_major(data.w_down.data(), {C, H, I}), bits, o, q.down), "quantize")) {
    return 1;
  }
  std::printf("moekit quantized experts: MoeLayer<TopK<8>, None, Quantized<SwiGlu<bf16>>>, T = %lld, H = %lld, "
              "I = %lld, group %d, %s\n",
              static_cast<long long>(p.tokens), static_cast<long long>(H), static_cast<long long>(I), read.group_size,
              read.symmetric ? "symmetric" : "asymmetric");
  std::printf("allocation %s (written and read back): bits per expert", path.filename().c_str());
  for (int b : bits) {
    std::printf(" %d", b);
  }
  auto const bytes = [](experts::QuantizedTensor const& t) {
    return t.data.size() + t.scales.size() * sizeof(float) + t.zeros.size();
  };
  double const quantized_bytes = double(bytes(q.gate) + bytes(q.up) + bytes(q.down));
  double const bf16_bytes = double(3 * C * H * I) * sizeof(bf16_t);
  std::printf("\nexpert weights: %.0f bytes quantised (codes + scales + zero points) vs %.0f in bf16: %.2fx smaller, "
              "%.2f bits per weight\n",
              quantized_bytes, bf16_bytes, bf16_bytes / quantized_bytes, 8.0 * quantized_bytes / double(3 * C * H * I));

  DenseLayer::Problem const dense_problem{p.tokens, p.hidden, p.intermediate, p.table};
  example::LayerRun cpu, device, dense;
  if (!run_quantized(router, p, data, q, false, cpu) || !run_quantized(router, p, data, q, true, device) ||
      !example::run_layer<DenseLayer>(router, experts::SwiGlu<bf16_t>{}, dense_problem, data, false, dense)) {
    return 1;
  }
  double const quantization_error = norm(cpu.y, &dense.y) / norm(dense.y);
  double const backend_gap = norm(cpu.y, &device.y) / norm(cpu.y);
  bool const same_routing = cpu.ids == device.ids;
  std::printf("quantised vs unquantised bf16 layer (CPU): relative error %.4f (the quantisation itself)\n",
              quantization_error);
  std::printf("CPU (fp32 dequantised weights) vs emulated device (bf16 operands): relative gap %.2e (tolerance "
              "%.2e), routing %s\n",
              backend_gap, 0x1p-6, same_routing ? "identical" : "DIFFERS");
  if (!same_routing || !(backend_gap <= 0x1p-6)) {
    std::fprintf(stderr, "FAILED: the CPU and the device disagree beyond the tolerance\n");
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
