#pragma once
// ProMoE's routing contrastive loss, RCL (ALGORITHMS.md §4.1), over the conditional tokens:
//
//   A_e  = { t : e among the token's selected routed experts }   (use_top_k; else slot 0 only)
//   V    = experts with |A_e| > 0, ascending; N_a = |V|; N_a < 2 -> L = 0, gradients 0
//   m_e  = (1/|A_e|) Σ_{t in A_e} x_t            (the MoE-block input, not normalised)
//   ℓ_ij = n(p_{V_i}) · n(m_{V_j}) / τ,  n(v) = v / max(||v||, 1e-12)
//   L    = λ (1/N_a) Σ_i [ logsumexp_j ℓ_ij - ℓ_ii ]
// Gradients w.r.t. the prototypes P [N_E, H] and the token inputs X [T, H] (through the
// centroids; a token in several sets gets each set's share); experts outside V get none.
//
// The assignment comes from the router: ids [T, K] with routed experts in [0, N_E); ids >= N_E
// (ProMoE's unconditional expert, the empty-slot sentinel) take no part, and a token with an
// id twice counts once. uncond [T] (1 = unconditional; null = every token conditional) drops
// whole tokens. Config keys: routing_contrastive_temperature (τ = 0.07),
// routing_contrastive_lam (λ = 1), use_top_k_for_routing_contrastive (true).

#include <cmath>
#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct RoutingContrastiveLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  float temperature = 0.07f;  // τ, routing_contrastive_temperature
  float lam = 1.f;            // λ, routing_contrastive_lam
  bool use_top_k = true;      // use_top_k_for_routing_contrastive

  [[nodiscard]] Status validate(int experts) const {
    if (experts < 1) {
      return error(Status::invalid_argument, "rcl: num_routed_experts must be >= 1 (got %d)", experts);
    }
    if (!(temperature > 0.f) || std::isinf(temperature)) {
      return error(Status::invalid_argument, "rcl temperature must be > 0 (got %g)", double(temperature));
    }
    if (!std::isfinite(lam)) {
      return error(Status::invalid_argument, "rcl: routing_contrastive_lam must be finite (got %g)", double(lam));
    }
    return Status::ok;
  }
};
static_assert(diagnose_balancer<RoutingContrastiveLoss>());

template <MemorySpace Space>
struct ContrastiveInputs {
  TensorView<float const, 2, Space> x;           // [T, H] MoE-block input
  TensorView<float const, 2, Space> prototypes;  // [N_E, H]
  TensorView<int const, 2, Space> ids;           // [T, K] the router's selection
  std::uint8_t const* uncond = nullptr;          // [T], 1 = unconditional token; null = none
};

template <MemorySpace Space>
struct ContrastiveOutputs {
  float* value = nullptr;                       // [1], λ included
  TensorView<float, 2, Space> grad_prototypes;  // [N_E, H]; data may be null
  TensorView<float, 2, Space> grad_x;           // [T, H]; data may be null
};

// Slot j of a token (ids row of K entries) puts the token into A_{ids[j]}: a routed id, in the
// slots the loss reads, not seen in an earlier slot.
[[nodiscard]] MOEKIT_HOST_DEVICE inline bool rcl_assigns(int const* ids, int slots_read, int experts, int j) noexcept {
  int const id = ids[j];
  if (j >= slots_read || id < 0 || id >= experts) {
    return false;
  }
  for (int i = 0; i < j; ++i) {
    if (ids[i] == id) {
      return false;
    }
  }
  return true;
}

// Slots the loss reads: all K with use_top_k, else the first.
[[nodiscard]] MOEKIT_HOST_DEVICE inline int rcl_slots_read(RoutingContrastiveLoss const& l, int k) noexcept {
  return l.use_top_k ? k : 1;
}

namespace detail::contrastive {
template <class View>
Status check_matrix(View const& v, char const* name, std::int64_t rows, std::int64_t cols) {
  if (!v.validate()) {
    return error(Status::invalid_argument, "rcl: %s: null pointer or negative extent/stride", name);
  }
  if (v.extent(0) != rows || v.extent(1) != cols) {
    return error(Status::invalid_argument, "rcl: %s: expected [%lld, %lld], got [%lld, %lld]", name,
                 static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(v.extent(0)),
                 static_cast<long long>(v.extent(1)));
  }
  if (rows > 0 && cols > 1 && v.stride(1) != 1) {
    return error(Status::invalid_argument, "rcl: %s: the last dimension must be contiguous (stride %lld)", name,
                 static_cast<long long>(v.stride(1)));
  }
  if (rows > 1 && v.stride(0) < cols) {
    return error(Status::invalid_argument, "rcl: %s: rows overlap (row stride %lld < %lld columns)", name,
                 static_cast<long long>(v.stride(0)), static_cast<long long>(cols));
  }
  if (!v.is_aligned(alignof(typename View::element_type))) {
    return error(Status::misaligned, "rcl: %s: pointer not aligned to %zu bytes", name,
                 alignof(typename View::element_type));
  }
  return Status::ok;
}
}  // namespace detail::contrastive

// Parameters and buffer shapes, shared by the host and device entry points.
template <MemorySpace Space>
[[nodiscard]] Status check_contrastive_buffers(RoutingContrastiveLoss const& loss, ContrastiveInputs<Space> const& in,
                                               ContrastiveOutputs<Space> const& out) {
  std::int64_t const experts = in.prototypes.extent(0);
  std::int64_t const hidden = in.prototypes.extent(1);
  std::int64_t const tokens = in.x.extent(0);
  if (experts < 1 || experts > (1 << 14) || hidden < 1 || tokens < 0) {
    return error(Status::invalid_argument,
                 "rcl: prototypes must be [1 <= N_E <= 16384, H >= 1] and x [T >= 0, H] (got [%lld, "
                 "%lld] and [%lld, %lld])",
                 static_cast<long long>(experts), static_cast<long long>(hidden), static_cast<long long>(tokens),
                 static_cast<long long>(in.x.extent(1)));
  }
  if (Status s = loss.validate(static_cast<int>(experts)); !s) {
    return s;
  }
  std::int64_t const k = in.ids.extent(1);
  if (k < 1 || k > experts) {
    return error(Status::invalid_argument, "top_k must be in [1, num_routed_experts] (got K=%lld, N_E=%lld)",
                 static_cast<long long>(k), static_cast<long long>(experts));
  }
  if (Status s = detail::contrastive::check_matrix(in.prototypes, "prototypes", experts, hidden); !s) {
    return s;
  }
  if (Status s = detail::contrastive::check_matrix(in.x, "x", tokens, hidden); !s) {
    return s;
  }
  if (Status s = detail::contrastive::check_matrix(in.ids, "ids", tokens, k); !s) {
    return s;
  }
  if (out.value == nullptr) {
    return error(Status::invalid_argument, "rcl: the value pointer is null");
  }
  if (out.grad_prototypes.data != nullptr) {
    if (Status s = detail::contrastive::check_matrix(out.grad_prototypes, "prototype gradient", experts, hidden); !s) {
      return s;
    }
  }
  if (out.grad_x.data != nullptr) {
    if (Status s = detail::contrastive::check_matrix(out.grad_x, "x gradient", tokens, hidden); !s) {
      return s;
    }
  }
  return Status::ok;
}

}  // namespace balancing
MOEKIT_NAMESPACE_END
