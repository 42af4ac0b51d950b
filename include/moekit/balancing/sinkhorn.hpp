#pragma once
// Transport balancers (ALGORITHMS.md §2.9, §2.10, §2.11): balancing by a transport plan that
// replaces top-k selection, so the balancer is a set of router parameters rather than a loss.
//   Sinkhorn          Megatron's "sinkhorn" (tol, max_iters) -> routing::SinkhornRouter
//   SelectiveSinkhorn SSR (p, seed, xi, delta, max_iter, cost, grad_mode)
//                     -> routing::SelectiveSinkhornRouter, with the per-(step, layer) draw
// The rule of §2.9/§2.11: a transport balancer cannot be combined with an auxiliary balance
// loss (Megatron asserts moe_aux_loss_coeff == 0), nor with an expert-bias balancer (the plan,
// not a biased top-k, selects), nor with a second transport balancer. The router z-loss
// (balancing::ZLoss) is allowed; any other loss balancer that does not balance load says so with
// `static constexpr bool balances_load = false;` (every other loss balancer is taken to balance
// load). combination_status<Bs...>() checks this at compile time, check_combination<Bs...>()
// on the host with a message.

#include <concepts>
#include <cstdint>
#include <type_traits>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/z_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/routing/sinkhorn.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

// Sinkhorn balancing (Megatron moe_router_load_balancing_type = "sinkhorn").
struct Sinkhorn {
  static constexpr BalancerKind kind = BalancerKind::transport;

  float tol = 1e-4f;
  int max_iters = 1000;

  [[nodiscard]] Status validate(int experts) const { return router<1>(experts, 1).validate(); }

  // The router this balancer configures, for E experts and k per token.
  template <int MaxK = 8>
  [[nodiscard]] constexpr routing::SinkhornRouter<MaxK> router(int experts, int k) const noexcept {
    return {.experts = experts, .k = k, .tol = tol, .max_iters = max_iters};
  }
};

// Selective Sinkhorn Routing: the plan on a random share `probability` of training steps.
struct SelectiveSinkhorn {
  static constexpr BalancerKind kind = BalancerKind::transport;

  double probability = 1e-3;  // p: Bernoulli(p) per (step, layer)
  std::uint64_t seed = 0;
  float xi = 0.05f;
  float delta = 1e-4f;
  int max_iter = 100;
  routing::TransportCost cost = routing::TransportCost::softmax;
  routing::TransportGradient grad_mode = routing::TransportGradient::implicit;

  [[nodiscard]] Status validate(int experts) const {
    if (!(probability >= 0.0 && probability <= 1.0)) {
      return error(Status::invalid_argument, "ssr balancer: probability must be in [0, 1] (got %g)", probability);
    }
    return router<1>(experts, 1, true).validate();
  }

  // Does layer `layer` route with the plan at training step `step`? Never at inference.
  [[nodiscard]] constexpr bool use_ot(std::uint64_t step, std::uint64_t layer, bool training) const noexcept {
    return training && routing::ssr_use_ot(seed, step, layer, probability);
  }

  template <int MaxK = 8>
  [[nodiscard]] constexpr routing::SelectiveSinkhornRouter<MaxK> router(int experts, int k,
                                                                        bool use_ot_this_step) const noexcept {
    return {.experts = experts,
            .k = k,
            .use_ot = use_ot_this_step,
            .xi = xi,
            .delta = delta,
            .max_iter = max_iter,
            .cost = cost,
            .grad_mode = grad_mode};
  }
};

static_assert(diagnose_balancer<Sinkhorn>() && Balancer<Sinkhorn>);
static_assert(diagnose_balancer<SelectiveSinkhorn>() && Balancer<SelectiveSinkhorn>);

namespace detail {
template <class B>
concept declares_balances_load = requires {
  { B::balances_load } -> std::convertible_to<bool>;
};

// An auxiliary balance loss: a loss balancer other than the router z-loss that does not
// declare balances_load = false.
template <class B>
constexpr bool is_balance_loss() {
  if constexpr (B::kind != BalancerKind::loss || std::is_same_v<B, ZLoss>) {
    return false;
  } else if constexpr (declares_balances_load<B>) {
    return static_cast<bool>(B::balances_load);
  } else {
    return true;
  }
}
}  // namespace detail

// The §2.9/§2.11 rule for the balancers of one layer, at compile time (no message):
//   static_assert(is_ok(balancing::combination_status<Sinkhorn, ZLoss>()));
template <Balancer... Bs>
[[nodiscard]] constexpr Status combination_status() noexcept {
  constexpr int transports = (0 + ... + (Bs::kind == BalancerKind::transport ? 1 : 0));
  constexpr bool balance_loss = (false || ... || detail::is_balance_loss<Bs>());
  constexpr bool bias = (false || ... || (Bs::kind == BalancerKind::bias));
  if constexpr (transports == 0) {
    return Status::ok;
  } else if constexpr (transports > 1 || balance_loss || bias) {
    return Status::invalid_argument;
  } else {
    return Status::ok;
  }
}

// The same rule on the host, with the message ALGORITHMS.md §2.9 gives.
template <Balancer... Bs>
[[nodiscard]] Status check_combination() {
  constexpr int transports = (0 + ... + (Bs::kind == BalancerKind::transport ? 1 : 0));
  if constexpr (transports == 0) {
    return Status::ok;
  } else {
    if constexpr (transports > 1) {
      return error(Status::invalid_argument, "sinkhorn routing: %d transport balancers in one layer; use one",
                   transports);
    }
    if constexpr ((false || ... || detail::is_balance_loss<Bs>())) {
      return error(Status::invalid_argument, "sinkhorn routing cannot be combined with an auxiliary balance loss");
    }
    if constexpr ((false || ... || (Bs::kind == BalancerKind::bias))) {
      return error(Status::invalid_argument,
                   "sinkhorn routing cannot be combined with an expert-bias balancer (the plan, not a biased top-k, "
                   "selects)");
    }
    return Status::ok;
  }
}

}  // namespace balancing
MOEKIT_NAMESPACE_END
