#pragma once
// The buffer checks every loss entry point (host reference and device path) applies before it
// touches anything: the logits [T, E] view, then the outputs (value required; gradient [T, E]
// when its data is given; counts, f and P aligned when given) and the mask's declared length.
// Each message starts with the loss's name and names the buffer and the sizes involved.

#include <cstdint>

#include "moekit/balancing/loss_buffers.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

namespace detail {

template <class T>
[[nodiscard]] bool pointer_aligned(T const* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & (alignof(T) - 1)) == 0;
}

// A [rows, cols] matrix with contiguous rows that do not overlap, aligned to its element.
template <class View>
[[nodiscard]] Status check_loss_matrix(char const* who, char const* name, View const& v, std::int64_t rows,
                                       std::int64_t cols) {
  if (!v.validate()) {
    return error(Status::invalid_argument, "%s: %s: null pointer or negative extent/stride", who, name);
  }
  if (v.extent(0) != rows || v.extent(1) != cols) {
    return error(Status::invalid_argument, "%s: %s: expected [%lld, %lld], got [%lld, %lld]", who, name,
                 static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(v.extent(0)),
                 static_cast<long long>(v.extent(1)));
  }
  if (rows > 0 && cols > 1 && v.stride(1) != 1) {
    return error(Status::invalid_argument, "%s: %s: the expert dimension must be contiguous (stride %lld)", who, name,
                 static_cast<long long>(v.stride(1)));
  }
  if (rows > 1 && v.stride(0) < cols) {
    return error(Status::invalid_argument, "%s: %s: rows overlap (row stride %lld < %lld experts)", who, name,
                 static_cast<long long>(v.stride(0)), static_cast<long long>(cols));
  }
  if (!v.is_aligned(alignof(typename View::element_type))) {
    return error(Status::misaligned, "%s: %s: pointer not aligned to %zu bytes", who, name,
                 alignof(typename View::element_type));
  }
  return Status::ok;
}

}  // namespace detail

// The logits view alone: its width is the expert count the policy is validated against.
template <MemorySpace Space>
[[nodiscard]] Status check_loss_logits(char const* who, LossInputs<Space> const& in) {
  auto const& z = in.logits;
  if (!z.validate()) {
    return error(Status::invalid_argument, "%s: logits: null pointer or negative extent/stride", who);
  }
  if (z.extent(1) < 1 || z.extent(1) > (1 << 30)) {
    return error(Status::invalid_argument, "%s: logits: expert count %lld out of range [1, 2^30]", who,
                 static_cast<long long>(z.extent(1)));
  }
  return detail::check_loss_matrix(who, "logits", z, z.extent(0), z.extent(1));
}

// The mask pointer against its declared length, and every output buffer.
template <MemorySpace Space>
[[nodiscard]] Status check_loss_outputs(char const* who, LossInputs<Space> const& in, LossOutputs<Space> const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  std::int64_t const experts = in.logits.extent(1);
  if (in.valid == nullptr && in.valid_entries > 0) {
    return error(Status::invalid_argument, "%s: valid mask: %lld entries declared but the pointer is null", who,
                 static_cast<long long>(in.valid_entries));
  }
  if (out.value == nullptr) {
    return error(Status::invalid_argument, "%s: value: the output pointer is null", who);
  }
  if (!detail::pointer_aligned(out.value)) {
    return error(Status::misaligned, "%s: value: pointer not aligned to %zu bytes", who, alignof(float));
  }
  if (out.grad.data != nullptr) {
    if (Status s = detail::check_loss_matrix(who, "gradient", out.grad, tokens, experts); !s) {
      return s;
    }
  }
  if (!detail::pointer_aligned(out.counts)) {
    return error(Status::misaligned, "%s: counts: pointer not aligned to %zu bytes", who, alignof(long long));
  }
  if (!detail::pointer_aligned(out.f)) {
    return error(Status::misaligned, "%s: f: pointer not aligned to %zu bytes", who, alignof(float));
  }
  if (!detail::pointer_aligned(out.P)) {
    return error(Status::misaligned, "%s: P: pointer not aligned to %zu bytes", who, alignof(float));
  }
  return Status::ok;
}

}  // namespace balancing
MOEKIT_NAMESPACE_END
