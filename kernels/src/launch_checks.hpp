// Launch-time checks shared by the GPU variants (internal header of kernels/): what supports() cannot see about
// the caller's tensors (null pointers, alignment, strides). Each throws InvalidProblem naming the variant and the
// field.
#pragma once

#include <cstdint>
#include <string>

#include "flashlab/core/errors.hpp"
#include "flashlab/kernels/attention.hpp"

namespace flashlab::kernels::detail {

inline void require(bool ok, const char* variant, const char* field, const std::string& message) {
  if (!ok) throw InvalidProblem(field, std::string(variant) + ": " + field + " " + message);
}

// A tensor the kernels read or write with 16-byte vector accesses: non-null, 16-byte aligned, and every stride a
// whole number of 16-byte vectors.
inline void check_tensor(const char* variant, const void* data, const Strides& strides, std::int64_t elem_bytes,
                         const char* field) {
  constexpr std::int64_t kVectorBytes = 16;
  require(data != nullptr, variant, field, "is null");
  require(reinterpret_cast<std::uintptr_t>(data) % kVectorBytes == 0, variant, field, "is not 16-byte aligned");
  const std::int64_t multiple = kVectorBytes / elem_bytes;
  require(strides.batch % multiple == 0 && strides.token % multiple == 0 && strides.head % multiple == 0, variant,
          field,
          "strides (batch " + std::to_string(strides.batch) + ", token " + std::to_string(strides.token) + ", head " +
              std::to_string(strides.head) + ") must be multiples of " + std::to_string(multiple) +
              " elements (16 bytes)");
}

}  // namespace flashlab::kernels::detail
