// PTX wrappers of the Hopper (sm_90a) primitives flash3 is built on: mbarriers, TMA tensor loads, wgmma
// descriptors and fences, setmaxnreg, named barriers. Internal header of kernels/flash3/, compiled for sm_90a only.
// PTX ISA 8.x: "Asynchronous warpgroup level matrix multiply-accumulate" (wgmma), "Tensor copy" (cp.async.bulk.tensor),
// "mbarrier". The wgmma shapes themselves are generated (wgmma_ops.cuh).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace flashlab::kernels::flash3 {

// ---------------------------------------------------------------------------------------------------------------
// mbarrier (shared::cta, 8 bytes): arrival count + transaction bytes, phase parity flips on every completion

__device__ inline void mbarrier_init(std::uint32_t bar, std::uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// The barriers' initialization made visible to the async proxy (TMA) before any use.
__device__ inline void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival that also announces `bytes` of TMA transactions the phase must see before it completes.
__device__ inline void mbarrier_expect_bytes(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ inline void mbarrier_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase of parity `parity` has completed (try_wait suspends the thread for a while per attempt).
__device__ inline void mbarrier_wait(std::uint32_t bar, std::uint32_t parity) {
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (done == 0);
}

// ---------------------------------------------------------------------------------------------------------------
// TMA: a box of a 4-D tensor (dim, token, head, batch) into shared memory, completing on an mbarrier. Rows past the
// tensor's extent are zero-filled (and their bytes still count toward the transaction).

__device__ inline void tma_load_4d(std::uint32_t dst, const CUtensorMap* map, std::uint32_t bar, int c0, int c1, int c2,
                                   int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
__device__ inline void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<std::uint64_t>(map)) : "memory");
}

// ---------------------------------------------------------------------------------------------------------------
// wgmma

// The shared-memory matrix descriptor of a tile stored as TMA writes it with CU_TENSOR_MAP_SWIZZLE_128B: rows of
// 128 bytes (64 16-bit elements), 16-byte units XOR-swizzled by the row index mod 8, 8-row atoms of 1024 bytes.
//   K-major (Q, K: the reduction dim contiguous): SBO = 1024 (next 8 rows); LBO unused (1).
//   MN-major (V for P V: the output dim contiguous): LBO = bytes between 64-column chunks, SBO = 1024 (next 8 keys).
// Bits: start address >> 4 [0, 14), LBO >> 4 [16, 30), SBO >> 4 [32, 46), swizzle 1 = 128B [62, 64).
__device__ inline std::uint64_t descriptor(std::uint32_t address, std::uint32_t lbo_bytes, std::uint32_t sbo_bytes) {
  return static_cast<std::uint64_t>((address & 0x3FFFF) >> 4) | static_cast<std::uint64_t>(lbo_bytes >> 4) << 16 |
         static_cast<std::uint64_t>(sbo_bytes >> 4) << 32 | std::uint64_t{1} << 62;
}

// Orders this thread's register and shared-memory writes before the wgmma that follow (required before the first
// wgmma of a batch and whenever an accumulator or A-operand register was written by another instruction).
__device__ inline void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ inline void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most kPending committed groups of this warpgroup are still in flight.
template <int kPending>
__device__ inline void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Orders this thread's generic-proxy shared-memory accesses before later async-proxy ones (TMA, wgmma) on the same
// bytes, once the two are also ordered by a barrier.
__device__ inline void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Keeps the compiler from moving reads or writes of a register that an in-flight wgmma owns across a wait: an empty
// volatile statement that "writes" it, ordered with the volatile wait before it.
template <int kCount>
__device__ inline void pin_registers(float (&r)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int kRows, int kCols>
__device__ inline void pin_registers(std::uint32_t (&r)[kRows][kCols]) {
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
#pragma unroll
    for (int j = 0; j < kCols; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Warp specialization

// Register budget of the warpgroup from here on (every warp of the warpgroup executes it).
template <int kRegisters>
__device__ inline void registers_decrease() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ inline void registers_increase() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
// A barrier of `threads` threads on hardware barrier `id` (0 is __syncthreads'): sync arrives and waits, arrive
// only arrives (a producer-consumer handoff between warpgroups).
__device__ inline void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ inline void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace flashlab::kernels::flash3
