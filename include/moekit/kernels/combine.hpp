#pragma once
// The combine of the expert stage: y_t = Σ_j (row output of slot j) + shared expert, slots in
// ascending order, one block per token (grid-stride), each output element summed by one thread
// in a fixed order: bit-identical for any grid size and schedule. A dropped assignment, an empty
// slot or a zero expert adds nothing; an identity expert adds w·x_t. With Qwen2-MoE's gate
// vector the shared expert's output is scaled by σ(w_sg · x_t), a block reduction over H.

#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/experts/expert_table.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace kernels {
MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int combine_block_threads = 128;

template <class X, class Y>
struct CombineParams {
  experts::ExpertTable table;
  std::int64_t tokens = 0, hidden = 0;
  int slots = 0;
  int const* ids = nullptr;  // [T, K], row stride ids_stride
  std::int64_t ids_stride = 0;
  float const* weights = nullptr;  // [T, K], row stride weights_stride
  std::int64_t weights_stride = 0;
  std::int64_t const* assignment_row = nullptr;  // [T * K] from the plan; -1: dropped or empty
  float const* routed = nullptr;                 // [rows, H] weighted expert outputs (null: none)
  X const* x = nullptr;                          // [T, H], row stride x_stride
  std::int64_t x_stride = 0;
  float const* shared = nullptr;   // [T, H] shared expert output, or null
  X const* shared_gate = nullptr;  // [H] w_sg, or null (weight 1)
  Y* y = nullptr;                  // [T, H], row stride y_stride
  std::int64_t y_stride = 0;
  bool accumulated = false;  // atomic mode: routed is [T, H], the slots already summed
};

struct CombineStorage {
  typename arch::BlockReduce<float, combine_block_threads>::TempStorage reduce;
  arch::SharedArray<float, 1> gate;
};

template <class X, class Y>
MOEKIT_DEVICE void combine_phase(CombineParams<X, Y> const& p) {
  auto& s = arch::shared_storage<CombineStorage>();
  unsigned const tid = arch::thread_rank();
  for (std::int64_t t = arch::block_rank(); t < p.tokens; t += arch::grid_dim().x) {
    X const* xt = p.x + t * p.x_stride;
    float gate = 1.0f;
    if (p.shared != nullptr && p.shared_gate != nullptr) {
      float partial = 0.0f;
      for (std::int64_t h = tid; h < p.hidden; h += combine_block_threads) {
        partial += to_float(p.shared_gate[h]) * to_float(xt[h]);
      }
      float const total = arch::BlockReduce<float, combine_block_threads>(s.reduce).sum(partial);
      if (tid == 0) {
        s.gate[0] = fp32::sigmoid(total);
      }
      arch::sync_threads();
      gate = s.gate[0];
    }
    for (std::int64_t h = tid; h < p.hidden; h += combine_block_threads) {
      float acc = p.accumulated && p.routed != nullptr ? p.routed[t * p.hidden + h] : 0.0f;
      for (int j = 0; j < p.slots; ++j) {
        std::int64_t const row = p.assignment_row[t * p.slots + j];
        if (row < 0) {
          continue;  // dropped by capacity, or an empty slot
        }
        int const id = p.ids[t * p.ids_stride + j];
        experts::ExpertKind const kind = p.table.kind(id);
        if (kind == experts::ExpertKind::computed && !p.accumulated) {
          acc += p.routed[row * p.hidden + h];
        } else if (kind == experts::ExpertKind::identity) {
          acc += p.weights[t * p.weights_stride + j] * to_float(xt[h]);
        }
      }
      if (p.shared != nullptr) {
        acc += gate * p.shared[t * p.hidden + h];
      }
      p.y[t * p.y_stride + h] = Y(acc);
    }
    arch::sync_threads();  // the reduction storage and gate are reused by the next token
  }
}

template <class X, class Y>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(combine_block_threads, 1) combine_kernel(CombineParams<X, Y> p) {
  combine_phase(p);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace kernels
MOEKIT_NAMESPACE_END
