#pragma once
// The device path of ProMoE's routing contrastive loss (balancing/contrastive_loss.hpp,
// ALGORITHMS.md §4.1): three launches, deterministic for any grid size and schedule.
//
//  1. centroids   one thread per (expert, feature), grid-stride: the sum of x over the
//                 expert's assignment set in token order, divided by |A_e|; |A_e| alongside.
//  2. loss        one block: the active experts V in ascending order, norms, the N_a x N_a
//                 cosine logits, the row cross-entropies (value), Γ, the gradients w.r.t.
//                 n(p) and n(m), back through the normalisation: dL/dP, and dL/dm_e / |A_e|.
//  3. token grad  one thread per (token, feature): Σ over the token's assigning slots (slot
//                 order) of dL/dm_e / |A_e|.
// Every sum has one owner and a fixed order. moekit decision: the device accumulates in fp64
// (centroid sums over tokens, norms and dot products over H, the soft-max), so the result is
// the fp64 oracle's up to the final fp32 rounding; the loss is computed once per layer and step
// on O(T K H + N_a² H) work, where fp64 costs little. The workspace depends on N_E and H only.

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/balancing/contrastive_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/workspace.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {
MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int rcl_threads = 256;

// Not `detail` (it would shadow balancing::detail inside this inline namespace).
namespace contrastive_kernels {

struct Carved {
  double* centroids = nullptr;  // [N_E, H] m_e (0 for an empty set)
  long long* counts = nullptr;  // [N_E] |A_e|
  int* active = nullptr;        // [N_E] V, ascending
  double* norm_p = nullptr;     // [N_E] ||p_{V_i}||
  double* norm_m = nullptr;     // [N_E] ||m_{V_i}||
  double* logits = nullptr;     // [N_E, N_E] ℓ, then Γ
  double* row_loss = nullptr;   // [N_E]
  double* grad_np = nullptr;    // [N_E, H] dL/dn(p_{V_i})
  double* grad_nm = nullptr;    // [N_E, H] dL/dn(m_{V_i})
  double* dots = nullptr;       // [2 N_E] n·g for p and m
  double* share = nullptr;      // [N_E, H] dL/dm_e / |A_e| (0 outside V)
};

inline Carved carve(Workspace& w, int experts, std::int64_t hidden) {
  std::int64_t const eh = std::int64_t{experts} * hidden;
  Carved c;
  c.centroids = w.take<double>(eh, "centroids");
  c.counts = w.take<long long>(experts, "set sizes");
  c.active = w.take<int>(experts, "active experts");
  c.norm_p = w.take<double>(experts, "prototype norms");
  c.norm_m = w.take<double>(experts, "centroid norms");
  c.logits = w.take<double>(std::int64_t{experts} * experts, "logits");
  c.row_loss = w.take<double>(experts, "row losses");
  c.grad_np = w.take<double>(eh, "gradient w.r.t. normalised prototypes");
  c.grad_nm = w.take<double>(eh, "gradient w.r.t. normalised centroids");
  c.dots = w.take<double>(2 * std::int64_t{experts}, "projections");
  c.share = w.take<double>(eh, "centroid gradient shares");
  return c;
}

struct Params {
  float const* x;
  std::int64_t x_ld;
  float const* prototypes;
  std::int64_t p_ld;
  int const* ids;
  std::int64_t ids_ld;
  std::uint8_t const* uncond;
  std::int64_t tokens;
  std::int64_t hidden;
  int experts;
  int slots;       // K
  int slots_read;  // K with use_top_k, else 1
  double tau;
  double lam;
};

[[nodiscard]] MOEKIT_HOST_DEVICE inline bool conditional(Params const& p, std::int64_t t) noexcept {
  return p.uncond == nullptr || p.uncond[t] == 0;
}

template <int Threads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Threads, 1) rcl_centroid_kernel(Params p, Carved ws) {
  std::int64_t const total = std::int64_t{p.experts} * p.hidden;
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * Threads;
  for (std::int64_t i = std::int64_t{arch::block_rank()} * Threads + arch::thread_rank(); i < total; i += stride) {
    auto const e = static_cast<int>(i / p.hidden);
    std::int64_t const h = i % p.hidden;
    double sum = 0.0;
    long long count = 0;
    for (std::int64_t t = 0; t < p.tokens; ++t) {
      if (!conditional(p, t)) {
        continue;
      }
      int const* row = p.ids + t * p.ids_ld;
      for (int j = 0; j < p.slots_read; ++j) {
        if (row[j] == e && rcl_assigns(row, p.slots_read, p.experts, j)) {
          sum += static_cast<double>(p.x[t * p.x_ld + h]);
          ++count;
          break;
        }
      }
    }
    ws.centroids[i] = count > 0 ? sum / static_cast<double>(count) : 0.0;
    if (h == 0) {
      ws.counts[e] = count;
    }
  }
}

struct LossStorage {
  int active;
};

// n(v)_h for a vector of norm `norm`: v_h / max(norm, 1e-12).
[[nodiscard]] MOEKIT_HOST_DEVICE inline double unit(double v, double norm) noexcept {
  return v / (norm > 1e-12 ? norm : 1e-12);
}

// dL/dv_h = (g_h - n_h (n·g)) / ||v||, or g_h / 1e-12 where ||v|| <= 1e-12 (n(v) = v / 1e-12).
[[nodiscard]] MOEKIT_HOST_DEVICE inline double through_norm(double g, double n, double dot, double norm) noexcept {
  return norm > 1e-12 ? (g - n * dot) / norm : g / 1e-12;
}

template <int Threads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Threads, 1)
    rcl_loss_kernel(Params p, Carved ws, float* value, float* grad_p, std::int64_t grad_p_ld) {
  auto& smem = arch::shared_storage<LossStorage>();
  int const tid = static_cast<int>(arch::thread_rank());
  std::int64_t const hd = p.hidden;
  if (tid == 0) {
    int n = 0;
    for (int e = 0; e < p.experts; ++e) {
      if (ws.counts[e] > 0) {
        ws.active[n++] = e;
      }
    }
    smem.active = n;
  }
  arch::sync_threads();
  int const n = smem.active;
  std::int64_t const eh = std::int64_t{p.experts} * hd;
  if (n < 2) {  // fewer than two experts in use: L = 0 and no gradient anywhere
    for (std::int64_t q = tid; q < eh; q += Threads) {
      ws.share[q] = 0.0;
      if (grad_p != nullptr) {
        grad_p[(q / hd) * grad_p_ld + q % hd] = 0.f;
      }
    }
    if (tid == 0) {
      *value = 0.f;
    }
    return;
  }
  auto proto = [&](int e, std::int64_t h) { return static_cast<double>(p.prototypes[e * p.p_ld + h]); };
  auto centroid = [&](int e, std::int64_t h) { return ws.centroids[e * hd + h]; };
  for (int i = tid; i < n; i += Threads) {
    int const e = ws.active[i];
    double sp = 0.0, sm = 0.0;
    for (std::int64_t h = 0; h < hd; ++h) {
      sp = ::fma(proto(e, h), proto(e, h), sp);
      sm = ::fma(centroid(e, h), centroid(e, h), sm);
    }
    ws.norm_p[i] = ::sqrt(sp);
    ws.norm_m[i] = ::sqrt(sm);
  }
  arch::sync_threads();
  for (std::int64_t q = tid; q < std::int64_t{n} * n; q += Threads) {
    auto const i = static_cast<int>(q / n), j = static_cast<int>(q % n);
    int const ei = ws.active[i], ej = ws.active[j];
    double dot = 0.0;
    for (std::int64_t h = 0; h < hd; ++h) {
      dot = ::fma(unit(proto(ei, h), ws.norm_p[i]), unit(centroid(ej, h), ws.norm_m[j]), dot);
    }
    ws.logits[q] = dot / p.tau;
  }
  arch::sync_threads();
  double const scale = p.lam / n;
  for (int i = tid; i < n; i += Threads) {
    double* row = ws.logits + std::int64_t{i} * n;
    double m = row[0];
    for (int j = 1; j < n; ++j) {
      m = row[j] > m ? row[j] : m;
    }
    double sum = 0.0;
    for (int j = 0; j < n; ++j) {
      sum += ::exp(row[j] - m);
    }
    ws.row_loss[i] = m + ::log(sum) - row[i];
    for (int j = 0; j < n; ++j) {
      row[j] = scale * (::exp(row[j] - m) / sum - (i == j ? 1.0 : 0.0));  // Γ_ij
    }
  }
  arch::sync_threads();
  if (tid == 0) {
    double total = 0.0;
    for (int i = 0; i < n; ++i) {
      total += ws.row_loss[i];
    }
    *value = static_cast<float>(scale * total);
  }
  for (std::int64_t q = tid; q < std::int64_t{n} * hd; q += Threads) {
    auto const i = static_cast<int>(q / hd);
    std::int64_t const h = q % hd;
    double gp = 0.0, gm = 0.0;
    for (int j = 0; j < n; ++j) {
      int const ej = ws.active[j];
      gp = ::fma(ws.logits[std::int64_t{i} * n + j], unit(centroid(ej, h), ws.norm_m[j]), gp);
      gm = ::fma(ws.logits[std::int64_t{j} * n + i], unit(proto(ej, h), ws.norm_p[j]), gm);
    }
    ws.grad_np[q] = gp / p.tau;
    ws.grad_nm[q] = gm / p.tau;
  }
  arch::sync_threads();
  for (int i = tid; i < n; i += Threads) {
    int const e = ws.active[i];
    double dp = 0.0, dm = 0.0;
    for (std::int64_t h = 0; h < hd; ++h) {
      dp = ::fma(unit(proto(e, h), ws.norm_p[i]), ws.grad_np[i * hd + h], dp);
      dm = ::fma(unit(centroid(e, h), ws.norm_m[i]), ws.grad_nm[i * hd + h], dm);
    }
    ws.dots[2 * i] = dp;
    ws.dots[2 * i + 1] = dm;
  }
  arch::sync_threads();
  for (std::int64_t q = tid; q < eh; q += Threads) {
    auto const e = static_cast<int>(q / hd);
    std::int64_t const h = q % hd;
    int i = -1;  // position of e in V (V is short: a scan)
    for (int k = 0; k < n; ++k) {
      i = ws.active[k] == e ? k : i;
    }
    double dp = 0.0, share = 0.0;
    if (i >= 0) {
      dp = through_norm(ws.grad_np[i * hd + h], unit(proto(e, h), ws.norm_p[i]), ws.dots[2 * i], ws.norm_p[i]);
      share =
          through_norm(ws.grad_nm[i * hd + h], unit(centroid(e, h), ws.norm_m[i]), ws.dots[2 * i + 1], ws.norm_m[i]) /
          static_cast<double>(ws.counts[e]);
    }
    ws.share[q] = share;
    if (grad_p != nullptr) {
      grad_p[e * grad_p_ld + h] = static_cast<float>(dp);
    }
  }
}

template <int Threads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Threads, 1)
    rcl_token_grad_kernel(Params p, Carved ws, float* grad_x, std::int64_t grad_x_ld) {
  std::int64_t const total = p.tokens * p.hidden;
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * Threads;
  for (std::int64_t q = std::int64_t{arch::block_rank()} * Threads + arch::thread_rank(); q < total; q += stride) {
    std::int64_t const t = q / p.hidden;
    std::int64_t const h = q % p.hidden;
    double g = 0.0;
    if (conditional(p, t)) {
      int const* row = p.ids + t * p.ids_ld;
      for (int j = 0; j < p.slots_read; ++j) {
        if (rcl_assigns(row, p.slots_read, p.experts, j)) {
          g += ws.share[std::int64_t{row[j]} * p.hidden + h];
        }
      }
    }
    grad_x[t * grad_x_ld + h] = static_cast<float>(g);
  }
}

inline std::size_t workspace_size(int experts, std::int64_t hidden) {
  Workspace w;
  (void)carve(w, experts < 0 ? 0 : experts, hidden < 0 ? 0 : hidden);
  return w.bytes_used();
}

}  // namespace contrastive_kernels

// Bytes of workspace the device RCL needs for N_E prototypes of H features (independent of T).
[[nodiscard]] inline std::size_t loss_workspace_size(RoutingContrastiveLoss const&, int experts, std::int64_t hidden) {
  return contrastive_kernels::workspace_size(experts, hidden);
}

// λ·L_RCL, dL/dP (when out.grad_prototypes.data is set) and dL/dX (when out.grad_x.data is set)
// on `stream`, in a carving Workspace of at least loss_workspace_size(loss, N_E, H) bytes. No
// allocation, no host synchronisation; `max_blocks` (0: no cap) caps the grids, results are
// bit-identical for any value. Device inputs are not checked for finiteness (NaN propagates);
// ids < 0 or >= N_E take no part. Every check runs before the first launch.
[[nodiscard]] inline Status loss(RoutingContrastiveLoss const& policy, ContrastiveInputs<MemorySpace::device> const& in,
                                 ContrastiveOutputs<MemorySpace::device> const& out, Workspace& workspace,
                                 arch::Stream stream, unsigned max_blocks = 0) {
  if (Status s = check_contrastive_buffers(policy, in, out); !s) {
    return s;
  }
  if (workspace.counting()) {
    return error(Status::invalid_argument,
                 "rcl: workspace: a counting Workspace cannot hold data; pass Workspace(pointer, bytes)");
  }
  int const experts = static_cast<int>(in.prototypes.extent(0));
  std::int64_t const hidden = in.prototypes.extent(1);
  std::int64_t const tokens = in.x.extent(0);
  auto const ws = contrastive_kernels::carve(workspace, experts, hidden);
  if (Status s = workspace.status(); !s) {
    return error(s, "rcl: workspace: buffer '%s' needs %zu bytes, %zu left (ask loss_workspace_size: %zu bytes)",
                 workspace.failed_buffer(), workspace.failed_bytes(), workspace.bytes_left_at_failure(),
                 contrastive_kernels::workspace_size(experts, hidden));
  }
  auto const k = static_cast<int>(in.ids.extent(1));
  contrastive_kernels::Params const prm{.x = in.x.data,
                                        .x_ld = in.x.stride(0),
                                        .prototypes = in.prototypes.data,
                                        .p_ld = in.prototypes.stride(0),
                                        .ids = in.ids.data,
                                        .ids_ld = in.ids.stride(0),
                                        .uncond = in.uncond,
                                        .tokens = tokens,
                                        .hidden = hidden,
                                        .experts = experts,
                                        .slots = k,
                                        .slots_read = rcl_slots_read(policy, k),
                                        .tau = policy.temperature,
                                        .lam = policy.lam};
  auto grid_for = [max_blocks](std::int64_t work) {
    std::int64_t b = (work + rcl_threads - 1) / rcl_threads;
    b = b < 1 ? 1 : (b > 65535 ? 65535 : b);
    if (max_blocks != 0 && b > max_blocks) {
      b = max_blocks;
    }
    return static_cast<unsigned>(b);
  };
  arch::KernelLaunch const centroids{.grid = grid_for(std::int64_t{experts} * hidden), .block = rcl_threads};
  if (Status s = arch::launch(contrastive_kernels::rcl_centroid_kernel<rcl_threads>, centroids, stream, prm, ws); !s) {
    return s;
  }
  arch::KernelLaunch const one{
      .grid = 1, .block = rcl_threads, .dynamic_shared_bytes = sizeof(contrastive_kernels::LossStorage)};
  if (Status s = arch::launch(contrastive_kernels::rcl_loss_kernel<rcl_threads>, one, stream, prm, ws, out.value,
                              out.grad_prototypes.data, out.grad_prototypes.stride(0));
      !s) {
    return s;
  }
  if (out.grad_x.data == nullptr || tokens == 0) {
    return Status::ok;
  }
  arch::KernelLaunch const tokens_launch{.grid = grid_for(tokens * hidden), .block = rcl_threads};
  return arch::launch(contrastive_kernels::rcl_token_grad_kernel<rcl_threads>, tokens_launch, stream, prm, ws,
                      out.grad_x.data, out.grad_x.stride(0));
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace balancing
MOEKIT_NAMESPACE_END
