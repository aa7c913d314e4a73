// Device helpers shared by the GPU variants' kernels (internal header of kernels/, CUDA only): constants, the PTX
// wrappers every architecture has (cp.async, ex2, special registers), the varlen sequence of a CTA and the mask rule
// (core/mask.hpp) on the device. Architecture-specific wrappers (mma.sync, wgmma, TMA) stay with their variant.
// CUDA error checks are src/check.hpp, launch-time checks src/launch_checks.hpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "flashlab/core/mask.hpp"
#include "src/launch_checks.hpp"  // kMaxLength: token indices stay in 32-bit arithmetic

namespace flashlab::kernels {

constexpr double kLog2eDouble = 1.4426950408889634;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------------------------------------------
// PTX wrappers of every architecture

__device__ inline std::uint32_t smem_address(const void* pointer) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16 bytes global -> shared, bypassing L1; src_bytes = 0 writes 16 zero bytes and reads nothing.
__device__ inline void cp_async_16(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ inline void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int kPending>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// The thread's lane and index, read from the special registers again at each call (volatile: never merged with
// another read). For values needed only off the hot path (mask edges, epilogue) of kernels at 255 registers: held
// in a register across the main loop, ptxas would spill them; re-read, they cost one S2R where used.
__device__ inline int lane_id() {
  std::uint32_t lane;
  asm volatile("mov.u32 %0, %%laneid;" : "=r"(lane));
  return static_cast<int>(lane);
}
__device__ inline int thread_id() {
  std::uint32_t tid;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
  return static_cast<int>(tid);
}

// 2^x on the special-function unit alone (MUFU.EX2): 2 ulp like exp2f without its subnormal fix-up; results below
// 2^-126 flush to 0, an absolute error < 1.2e-38 on a probability, far below fp16/bf16 rounding.
__device__ inline float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ---------------------------------------------------------------------------------------------------------------
// The sequence of a CTA: batch entry `batch` of a dense batch (slot = batch, offsets 0, the dense lengths), or
// sequence `batch` of a varlen batch (slot 0, offsets and lengths from cu_seqlens).

struct CtaSequence {
  std::int64_t slot;
  std::int64_t q_offset;
  std::int64_t k_offset;
  int seqlen_q;
  int seqlen_k;
};
__device__ inline CtaSequence sequence_of(const std::int32_t* cu_seqlens_q, const std::int32_t* cu_seqlens_k, int batch,
                                          int seqlen_q, int seqlen_k) {
  if (cu_seqlens_q == nullptr) return {batch, 0, 0, seqlen_q, seqlen_k};
  const std::int64_t q_offset = cu_seqlens_q[batch];
  const std::int64_t k_offset = cu_seqlens_k[batch];
  return {0, q_offset, k_offset, static_cast<int>(cu_seqlens_q[batch + 1] - q_offset),
          static_cast<int>(cu_seqlens_k[batch + 1] - k_offset)};
}

// ---------------------------------------------------------------------------------------------------------------
// The mask rule (Problem::key_range) on the device

// Keys [lo, hi] query row i may see: core's mask rule (core/mask.hpp) in 32-bit arithmetic. N_q, N_k < 2^30 put the
// diagonal i + N_k - N_q in (-2^30, 2^30), and windows are below 2^30 (a window of 2^30 or more reaches every key, so
// the host passes it as unbounded: window_arg()).
using KeyBounds = KeptKeys<int>;
__device__ inline KeyBounds key_bounds(int window_left, int window_right, int i, int seqlen_q, int seqlen_k) {
  return kept_keys<int, true>(window_left, window_right, i, seqlen_q, seqlen_k);  // lo in [0, N_k], hi in [-1, N_k - 1]
}

// A window side as the kernels take it: -1 (unbounded) for negative windows and for windows of 2^30 or more.
inline int window_arg(std::int64_t window) {
  return window < 0 || window >= kMaxLength ? -1 : static_cast<int>(window);
}

}  // namespace flashlab::kernels
