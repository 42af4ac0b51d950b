#pragma once
// The Balancer concept (ALGORITHMS.md §2): a balancing policy does one of
//   loss      — an auxiliary loss from the router logits: its value and its exact gradient
//               w.r.t. the logits (Switch, GShard, HF, Megatron, z-loss, DeepSeek-V3 sequence
//               loss, DiT-MoE, AdaMoE, DynMoLE, LoRA-Mixer, ProMoE's contrastive loss);
//   bias      — a persistent per-expert selection bias with an explicit update(stats) step
//               after each optimizer step (aux-loss-free balancing, DeepSeek-V3);
//   transport — a balanced transport plan that replaces top-k selection (Sinkhorn, SSR);
//   none      — nothing.
// Every balancer validates its parameters against the layer's expert count. The entry points
// for each kind (host reference, device kernels) are free functions beside each policy.

#include <concepts>
#include <type_traits>

#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

enum class BalancerKind { none, loss, bias, transport };

template <class B>
concept Balancer = requires(B const& b, int experts) {
  { B::kind } -> std::convertible_to<BalancerKind>;
  { b.validate(experts) } -> std::same_as<Status>;
};

// A loss balancer is a small value passed to kernels: parameters only, no containers.
template <class B>
concept LossBalancer = Balancer<B> && B::kind == BalancerKind::loss&& std::is_trivially_copyable_v<B>;

namespace detail {
template <class B>
concept has_kind = requires {
  B::kind;
};
template <class B>
concept has_validate = requires(B const& b, int experts) {
  { b.validate(experts) } -> std::same_as<Status>;
};
}  // namespace detail

// One static_assert per requirement, in words.
template <class B>
constexpr bool diagnose_balancer() {
  static_assert(detail::has_kind<B>, "a Balancer needs `static constexpr moekit::balancing::BalancerKind kind`");
  static_assert(detail::has_validate<B>, "a Balancer needs `moekit::Status validate(int experts) const`");
  if constexpr (detail::has_kind<B>) {
    if constexpr (B::kind == BalancerKind::loss) {
      static_assert(std::is_trivially_copyable_v<B>,
                    "a loss Balancer is passed to kernels by value: make it trivially copyable");
    }
  }
  return true;
}

// No balancing.
struct None {
  static constexpr BalancerKind kind = BalancerKind::none;
  [[nodiscard]] Status validate(int) const { return Status::ok; }
};
static_assert(diagnose_balancer<None>() && Balancer<None>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
