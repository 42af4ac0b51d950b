#pragma once
// Similarity scores between tokens (or queries) and prototypes (or keys), the input of the
// ProMoE router (prototype.hpp, ALGORITHMS.md §4.1) and of the similarity router
// (similarity.hpp, §4.2):
//   cosine  Z[t, e] = scale * (x_t . p_e) / (max(|x_t|, 1e-12) * max(|p_e|, 1e-12))
//           (= scale * n(x_t) . n(p_e) with PyTorch's F.normalize rule, up to rounding)
//   dot     Z[t, e] = scale * (x_t . p_e)
// X [T, H] and P [N, H] in fp32, bf16 or fp16; every sum in fp32, in ascending feature order,
// each product fused into it with an explicit fmaf, so the device kernel, the emulator and the
// host loop give the same bits whatever the compiler contracts (one thread computes one score:
// no dependence on grid size or schedule). Z may have more than N columns: the extra columns get
// -inf (ProMoE's unconditional experts, which the score does not route).
//
// Also the backward of the scores (host functions, fp64 inside), ALGORITHMS.md §4.1:
//   dZ/dx = scale (n(p) - (Z/scale) n(x)) / |x|,  dZ/dp = scale (n(x) - (Z/scale) n(p)) / |p|
// for a norm above 1e-12; at or below it n(v) = v / 1e-12 and dn/dv = I / 1e-12. Dot: dZ/dx = scale p.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <vector>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/routing/route_buffers.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

enum class Similarity { cosine, dot };

inline constexpr float norm_floor = 1e-12f;  // F.normalize's eps

template <class T>
concept ScoreInput = std::same_as<T, float> || std::same_as<T, bf16_t> || std::same_as<T, fp16_t>;

// One score, fp32, fixed order (the definition every backend shares).
template <ScoreInput In>
[[nodiscard]] MOEKIT_HOST_DEVICE float similarity_score(In const* x, In const* p, std::int64_t hidden,
                                                        Similarity similarity, float scale) noexcept {
  float dot = 0.f;
  float xx = 0.f;
  float pp = 0.f;
  for (std::int64_t h = 0; h < hidden; ++h) {
    float const a = static_cast<float>(x[h]);
    float const b = static_cast<float>(p[h]);
    dot = ::fmaf(a, b, dot);
    xx = ::fmaf(a, a, xx);
    pp = ::fmaf(b, b, pp);
  }
  if (similarity == Similarity::dot) {
    return scale * dot;
  }
  float const nx = ::sqrtf(xx);
  float const np = ::sqrtf(pp);
  float const denominator = (nx > norm_floor ? nx : norm_floor) * (np > norm_floor ? np : norm_floor);
  return scale * (dot / denominator);
}

template <class In>
struct ScoreProblem {
  In const* x = nullptr;  // [tokens, hidden], row stride x_stride
  std::int64_t x_stride = 0;
  In const* prototypes = nullptr;  // [count, hidden], row stride prototypes_stride
  std::int64_t prototypes_stride = 0;
  float* scores = nullptr;  // [tokens, columns], row stride scores_stride; columns >= count
  std::int64_t scores_stride = 0;
  std::int64_t tokens = 0;
  std::int64_t hidden = 0;
  int count = 0;
  int columns = 0;
  Similarity similarity = Similarity::cosine;
  float scale = 1.f;
};

namespace detail {
template <class In, MemorySpace Space>
Status make_score_problem(Similarity similarity, float scale, TensorView<In const, 2, Space> x,
                          TensorView<In const, 2, Space> prototypes, TensorView<float, 2, Space> scores,
                          ScoreProblem<In>& problem) {
  if (similarity != Similarity::cosine && similarity != Similarity::dot) {
    return error(Status::invalid_argument, "similarity scores: unknown similarity %d", static_cast<int>(similarity));
  }
  if (!(scale > 0.f) || !std::isfinite(scale)) {
    return error(Status::invalid_argument, "similarity scores: scale must be > 0 and finite (got %g)", double(scale));
  }
  std::int64_t const tokens = x.extent(0);
  std::int64_t const hidden = x.extent(1);
  std::int64_t const count = prototypes.extent(0);
  if (tokens < 0 || count < 0) {
    return error(Status::invalid_argument, "similarity scores: negative extents (tokens %lld, prototypes %lld)",
                 static_cast<long long>(tokens), static_cast<long long>(count));
  }
  if (hidden < 1) {
    return error(Status::invalid_argument, "similarity scores: the feature size (H or D) must be >= 1 (got %lld)",
                 static_cast<long long>(hidden));
  }
  if (count > 0x7fffffff || scores.extent(1) > 0x7fffffff) {
    return error(Status::invalid_argument, "similarity scores: more than 2^31 - 1 prototypes or columns");
  }
  if (scores.extent(1) < count) {
    return error(Status::invalid_argument, "similarity scores: scores has %lld columns, fewer than the %lld prototypes",
                 static_cast<long long>(scores.extent(1)), static_cast<long long>(count));
  }
  if (Status s = check_matrix(x, "similarity scores: x", tokens, hidden); !s) {
    return s;
  }
  if (Status s = check_matrix(prototypes, "similarity scores: prototypes", count, hidden); !s) {
    return s;
  }
  if (Status s = check_matrix(scores, "similarity scores: scores", tokens, scores.extent(1)); !s) {
    return s;
  }
  problem = {.x = x.data,
             .x_stride = x.stride(0),
             .prototypes = prototypes.data,
             .prototypes_stride = prototypes.stride(0),
             .scores = scores.data,
             .scores_stride = scores.stride(0),
             .tokens = tokens,
             .hidden = hidden,
             .count = static_cast<int>(count),
             .columns = static_cast<int>(scores.extent(1)),
             .similarity = similarity,
             .scale = scale};
  return Status::ok;
}

template <class In>
MOEKIT_HOST_DEVICE void score_entry(ScoreProblem<In> const& q, std::int64_t t, int c) noexcept {
  q.scores[t * q.scores_stride + c] =
      c < q.count ? similarity_score(q.x + t * q.x_stride, q.prototypes + std::int64_t{c} * q.prototypes_stride,
                                     q.hidden, q.similarity, q.scale)
                  : -INFINITY;
}
}  // namespace detail

// Host: the same per-score function in a plain loop, in checked mode (a NaN or infinite input
// feature is refused, naming the row and feature, before anything is written).
template <ScoreInput In>
[[nodiscard]] Status cosine_scores(Similarity similarity, float scale, HostTensor<In const, 2> x,
                                   HostTensor<In const, 2> prototypes, HostTensor<float, 2> scores) {
  ScoreProblem<In> q;
  if (Status s = detail::make_score_problem(similarity, scale, x, prototypes, scores, q); !s) {
    return s;
  }
  auto check_finite = [](HostTensor<In const, 2> const& v, char const* what) {
    for (std::int64_t r = 0; r < v.extent(0); ++r) {
      for (std::int64_t h = 0; h < v.extent(1); ++h) {
        float const f = static_cast<float>(v(r, h));
        if (!std::isfinite(f)) {
          return error(Status::invalid_argument,
                       "similarity scores: non-finite routing score input %g at %s %lld, "
                       "feature %lld",
                       double(f), what, static_cast<long long>(r), static_cast<long long>(h));
        }
      }
    }
    return Status::ok;
  };
  if (Status s = check_finite(x, "token"); !s) {
    return s;
  }
  if (Status s = check_finite(prototypes, "prototype"); !s) {
    return s;
  }
  for (std::int64_t t = 0; t < q.tokens; ++t) {
    for (int c = 0; c < q.columns; ++c) {
      detail::score_entry(q, t, c);
    }
  }
  return Status::ok;
}

MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int score_block_threads = 128;

// One thread per score, grid-stride over the flattened [tokens, columns] matrix.
template <ScoreInput In>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(score_block_threads, 1) cosine_scores_kernel(ScoreProblem<In> problem) {
  std::int64_t const total = problem.tokens * problem.columns;
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * score_block_threads;
  for (std::int64_t i = std::int64_t{arch::block_rank()} * score_block_threads + arch::thread_rank(); i < total;
       i += stride) {
    std::int64_t const t = i / problem.columns;
    detail::score_entry(problem, t, static_cast<int>(i - t * problem.columns));
  }
}

// Device: non-finite inputs are not checked (that needs a host synchronisation); they give
// non-finite scores, which the route kernel then counts in Diagnostics. `max_blocks` (0: one
// thread per score) caps the grid; results are identical for any value.
template <ScoreInput In>
[[nodiscard]] Status cosine_scores(Similarity similarity, float scale, DeviceTensor<In const, 2> x,
                                   DeviceTensor<In const, 2> prototypes, DeviceTensor<float, 2> scores,
                                   arch::Stream stream, unsigned max_blocks = 0) {
  ScoreProblem<In> q;
  if (Status s = detail::make_score_problem(similarity, scale, x, prototypes, scores, q); !s) {
    return s;
  }
  std::int64_t const total = q.tokens * q.columns;
  if (total == 0) {
    return Status::ok;
  }
  std::int64_t blocks = (total + score_block_threads - 1) / score_block_threads;
  blocks = blocks > 65535 ? 65535 : blocks;
  if (max_blocks != 0 && blocks > max_blocks) {
    blocks = max_blocks;
  }
  arch::KernelLaunch const l{.grid = static_cast<unsigned>(blocks), .block = score_block_threads};
  return arch::launch(cosine_scores_kernel<In>, l, stream, q);
}

MOEKIT_ARCH_NAMESPACE_END

namespace detail {
// dZ/dx and dZ/dp of one score, in fp64 (outputs [hidden] each).
inline void similarity_score_gradient_fp64(Similarity similarity, double scale, float const* x, float const* p,
                                           std::int64_t hidden, double* dz_dx, double* dz_dp) {
  if (similarity == Similarity::dot) {
    for (std::int64_t h = 0; h < hidden; ++h) {
      dz_dx[h] = scale * p[h];
      dz_dp[h] = scale * x[h];
    }
    return;
  }
  double xx = 0, pp = 0, xp = 0;
  for (std::int64_t h = 0; h < hidden; ++h) {
    xx += double(x[h]) * x[h];
    pp += double(p[h]) * p[h];
    xp += double(x[h]) * p[h];
  }
  double const floor = norm_floor;
  bool const x_floored = std::sqrt(xx) <= floor;
  bool const p_floored = std::sqrt(pp) <= floor;
  double const nx = x_floored ? floor : std::sqrt(xx);
  double const np = p_floored ? floor : std::sqrt(pp);
  double const cosine = xp / (nx * np);  // n(x) . n(p)
  for (std::int64_t h = 0; h < hidden; ++h) {
    double const unit_x = x[h] / nx;
    double const unit_p = p[h] / np;
    dz_dx[h] = x_floored ? scale * unit_p / floor : scale * (unit_p - cosine * unit_x) / nx;
    dz_dp[h] = p_floored ? scale * unit_x / floor : scale * (unit_x - cosine * unit_p) / np;
  }
}
}  // namespace detail

// dZ/dx and dZ/dp of one score Z = similarity(x, p) (ALGORITHMS.md §4.1 cosine backward; dot:
// scale p and scale x), computed in fp64 and rounded once. Either output may be null.
inline void similarity_score_gradient(Similarity similarity, float scale, float const* x, float const* p,
                                      std::int64_t hidden, float* dz_dx, float* dz_dp) {
  std::vector<double> dx(static_cast<std::size_t>(hidden)), dp(static_cast<std::size_t>(hidden));
  detail::similarity_score_gradient_fp64(similarity, scale, x, p, hidden, dx.data(), dp.data());
  for (std::int64_t h = 0; h < hidden; ++h) {
    if (dz_dx != nullptr) {
      dz_dx[h] = static_cast<float>(dx[static_cast<std::size_t>(h)]);
    }
    if (dz_dp != nullptr) {
      dz_dp[h] = static_cast<float>(dp[static_cast<std::size_t>(h)]);
    }
  }
}

// The backward of a score matrix: given dL/dZ [T, N], dL/dX [T, H] = sum_e dL/dZ[t, e] dZ[t, e]/dx_t
// and dL/dP [N, H] = sum_t dL/dZ[t, e] dZ[t, e]/dp_e, summed in fp64 in ascending e resp. t and
// rounded once. Extra (-inf) columns of Z are not part of grad_scores. An output view with a null
// pointer is skipped. Host only (it allocates its fp64 accumulators).
[[nodiscard]] inline Status cosine_scores_backward(Similarity similarity, float scale, HostTensor<float const, 2> x,
                                                   HostTensor<float const, 2> prototypes,
                                                   HostTensor<float const, 2> grad_scores, HostTensor<float, 2> grad_x,
                                                   HostTensor<float, 2> grad_prototypes) {
  std::int64_t const tokens = x.extent(0);
  std::int64_t const hidden = x.extent(1);
  std::int64_t const count = prototypes.extent(0);
  if (similarity != Similarity::cosine && similarity != Similarity::dot) {
    return error(Status::invalid_argument, "similarity scores backward: unknown similarity %d",
                 static_cast<int>(similarity));
  }
  if (!(scale > 0.f) || !std::isfinite(scale)) {
    return error(Status::invalid_argument, "similarity scores backward: scale must be > 0 and finite (got %g)",
                 double(scale));
  }
  if (hidden < 1) {
    return error(Status::invalid_argument, "similarity scores backward: the feature size must be >= 1 (got %lld)",
                 static_cast<long long>(hidden));
  }
  if (Status s = detail::check_matrix(x, "similarity scores backward: x", tokens, hidden); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(prototypes, "similarity scores backward: prototypes", count, hidden); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(grad_scores, "similarity scores backward: grad_scores", tokens, count); !s) {
    return s;
  }
  bool const want_x = grad_x.data != nullptr;
  bool const want_p = grad_prototypes.data != nullptr;
  if (want_x) {
    if (Status s = detail::check_matrix(grad_x, "similarity scores backward: grad_x", tokens, hidden); !s) {
      return s;
    }
  }
  if (want_p) {
    if (Status s = detail::check_matrix(grad_prototypes, "similarity scores backward: grad_prototypes", count, hidden);
        !s) {
      return s;
    }
  }
  auto const h_size = static_cast<std::size_t>(hidden);
  std::vector<double> acc_x(want_x ? static_cast<std::size_t>(tokens) * h_size : 0);
  std::vector<double> acc_p(want_p ? static_cast<std::size_t>(count) * h_size : 0);
  std::vector<double> dx(h_size), dp(h_size);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t e = 0; e < count; ++e) {
      double const g = grad_scores(t, e);
      detail::similarity_score_gradient_fp64(similarity, scale, x.pointer(t, 0), prototypes.pointer(e, 0), hidden,
                                             dx.data(), dp.data());
      for (std::size_t h = 0; h < h_size; ++h) {
        if (want_x) {
          acc_x[static_cast<std::size_t>(t) * h_size + h] += g * dx[h];
        }
        if (want_p) {
          acc_p[static_cast<std::size_t>(e) * h_size + h] += g * dp[h];
        }
      }
    }
  }
  for (std::int64_t t = 0; want_x && t < tokens; ++t) {
    for (std::int64_t h = 0; h < hidden; ++h) {
      grad_x(t, h) = static_cast<float>(acc_x[static_cast<std::size_t>(t) * h_size + static_cast<std::size_t>(h)]);
    }
  }
  for (std::int64_t e = 0; want_p && e < count; ++e) {
    for (std::int64_t h = 0; h < hidden; ++h) {
      grad_prototypes(e, h) =
          static_cast<float>(acc_p[static_cast<std::size_t>(e) * h_size + static_cast<std::size_t>(h)]);
    }
  }
  return Status::ok;
}

}  // namespace routing
MOEKIT_NAMESPACE_END
