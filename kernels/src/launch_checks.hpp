// Launch-time checks shared by the GPU variants (internal header of kernels/): the problem and the support rules
// again, and what supports() cannot see about the caller's tensors (null pointers, alignment, strides). Each
// throws InvalidProblem (Unsupported for the support rules) naming the variant and the field.
#pragma once

#include <cstdint>
#include <string>

#include "flashlab/core/errors.hpp"
#include "flashlab/kernels/attention.hpp"

namespace flashlab::kernels {

// Limits of the fused kernels (flash2, flash3): token indices of a sequence in 32-bit arithmetic, heads and batch
// entries on gridDim.y and .z.
constexpr std::int64_t kMaxLength = std::int64_t{1} << 30;
constexpr std::int64_t kMaxGridYZ = 65535;

namespace detail {

// The support rules the fused kernels share, after their dtype and head-dim rules: no key padding (they run its
// unpadded varlen form), head_dim_v == head_dim, lengths
// below kMaxLength, heads and batch entries at most kMaxGridYZ. Support::no names `variant` and the rule.
inline Support fused_kernel_limits(const std::string& variant, const Problem& p) {
  if (p.is_padded()) {
    return Support::no(variant + " takes key padding as its unpadded varlen form (Problem::unpadded, as "
                                 "FlashAttention's unpad_input), not as a padded batch");
  }
  if (p.dv() != p.head_dim) {
    return Support::no(variant + " needs head_dim_v == head_dim (head_dim_v = " + std::to_string(p.dv()) +
                       ", head_dim = " + std::to_string(p.head_dim) + ")");
  }
  if (p.seqlen_q >= kMaxLength || p.seqlen_k >= kMaxLength || p.total_q() >= kMaxLength || p.total_k() >= kMaxLength) {
    return Support::no(variant + " indexes tokens of a sequence in 32 bits: N_q, N_k and the varlen totals must be "
                                 "below 2^30");
  }
  if (p.heads > kMaxGridYZ || p.batch > kMaxGridYZ) {
    return Support::no(variant + " puts heads and batch entries on gridDim.y and .z: at most 65535 each");
  }
  return Support::yes();
}

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

// Everything a launch of `pass` checks before it allocates or launches: the problem is valid, the variant's
// `supports` accepts it, Q, K, V, O (and for bwd and fwdbwd dO, dQ, dK, dV) pass check_tensor, LSE is given, a
// varlen problem has its offsets and a key-padding problem its valid lengths.
inline void check_launch(const char* variant, const AttentionParams& params, Pass pass,
                         Support (*supports)(const Problem&, DType, Pass)) {
  const Problem& p = params.problem;
  p.validate();
  const Support support = supports(p, params.dtype, pass);
  if (!support.ok) throw Unsupported(support.reason);
  const std::int64_t s = size_bytes(params.dtype);
  check_tensor(variant, params.q, params.q_strides, s, "q");
  check_tensor(variant, params.k, params.k_strides, s, "k");
  check_tensor(variant, params.v, params.v_strides, s, "v");
  check_tensor(variant, params.o, params.o_strides, s, "o");
  require(params.lse != nullptr, variant, "lse", "is null");
  if (pass != Pass::fwd) {
    check_tensor(variant, params.d_out, params.d_out_strides, s, "d_out");
    check_tensor(variant, params.dq, params.dq_strides, s, "dq");
    check_tensor(variant, params.dk, params.dk_strides, s, "dk");
    check_tensor(variant, params.dv, params.dv_strides, s, "dv");
  }
  if (p.is_varlen()) {
    require(params.cu_seqlens_q != nullptr && params.cu_seqlens_k != nullptr, variant, "cu_seqlens_q",
            "and cu_seqlens_k must be device arrays for a varlen problem");
  }
  if (p.is_padded()) {
    require(params.valid_lengths != nullptr, variant, "valid_lengths",
            "must be a device array for a key-padding problem");
  }
}

}  // namespace detail
}  // namespace flashlab::kernels
