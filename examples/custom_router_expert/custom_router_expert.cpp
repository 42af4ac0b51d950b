// examples/custom_router_expert: a router and an expert policy both written in user code
// (my_policies.hpp) plugged into moekit::MoeLayer, with an expert table that adds a zero expert
// and an identity expert after the six computed ones (experts/expert_table.hpp):
//
//   MoeLayer<my_project::SigmoidTopK<4>, balancing::None, my_project::SquaredReluGlu>
//
// run on the CPU executor and on the emulated device (racecheck on), compared element by element
// against the bound of ../quickstart/layer_example.hpp; exits non-zero beyond it.

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "layer_example.hpp"
#include "my_policies.hpp"

#include "moekit/balancing/concept.hpp"
#include "moekit/layer.hpp"

int main() {
  using Router = my_project::SigmoidTopK<4>;
  using Expert = my_project::SquaredReluGlu;
  using Layer = moekit::MoeLayer<Router, moekit::balancing::None, Expert>;

  // Ids 0-5 computed, 6 a zero expert (adds nothing), 7 an identity expert (adds w·x).
  moekit::experts::ExpertTable const table{.computed = 6, .zero = 1, .identity = 1};
  Router const router{.experts = table.num_experts(), .k = 2, .temperature = 2.f};
  Expert const expert{.cap = 4.f};

  Layer::Problem p;
  p.tokens = 40;
  p.hidden = 48;
  p.intermediate = 80;
  p.table = table;
  auto const data = example::LayerData::random(p.tokens, p.hidden, p.intermediate, p.table, 7);

  std::printf("custom_router_expert: MoeLayer<SigmoidTopK<4> (k = %d, temperature %.1f), None, SquaredReluGlu "
              "(cap %.1f)>, T = %lld, H = %lld, I = %lld, experts: %d computed + %d zero + %d identity\n",
              router.k, double(router.temperature), double(expert.cap), static_cast<long long>(p.tokens),
              static_cast<long long>(p.hidden), static_cast<long long>(p.intermediate), table.computed, table.zero,
              table.identity);
  example::LayerRun cpu, device;
  if (!example::run_layer<Layer>(router, expert, p, data, false, cpu) ||
      !example::run_layer<Layer>(router, expert, p, data, true, device)) {
    return 1;
  }
  example::print_routing(cpu, p.table, router.slots(), "CPU executor");
  example::print_routing(device, p.table, router.slots(), "emulated device");

  // h = r²·u with r = min(relu(g), cap): ∂h/∂g = 2r·u inside (0, cap), 0 outside; ∂h/∂u = r².
  // Each weight σ(z/τ) depends on its own logit: |∂w/∂z| = σ(1 − σ)/τ ≤ 1/(4τ).
  double const cap = expert.cap;
  auto const squared_relu = [cap](double g, double u) {
    double const r = std::clamp(g, 0.0, cap);
    bool const inside = g > 0 && g < cap;
    return example::HiddenUnit{r * r * u, inside ? std::fabs(2 * r * u) : 0.0, r * r};
  };
  auto const c =
      example::compare_backends(data, cpu, device, router.slots(), 1.0 / (4.0 * router.temperature), squared_relu);
  return example::report(c, cpu.workspace_bytes, device.workspace_bytes);
}
