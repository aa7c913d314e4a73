// The `standard` variant: exact attention as eager frameworks compute it (PyTorch's math backend), with the
// N_q x N_k matrices materialized in device memory. It is the baseline of the numerics rule (DESIGN.md §5) and of
// the memory and traffic figures, so it does what such frameworks do and no more: cuBLAS GEMMs with fp32
// accumulation and one row-wise kernel between them, every intermediate stored in the run's dtype.
//
// Forward, per (sequence, head h), kv head g = h / (H / H_kv):
//   S = scale Q K^T                          cuBLAS, fp32 accumulation, stored in dtype        [N_q, N_k]
//   P = softmax(mask(S)) in place; LSE       one kernel, fp32 math: reads S once from DRAM (rows longer than
//                                            8 KB a second time, from L2), writes P once; LSE fp32
//   O = P V                                  cuBLAS, fp32 accumulation, stored in dtype
// Backward (Q, K, V, O, LSE, dO given):
//   S = scale Q K^T (buffer 1),  dP = dO V^T (buffer 2)                     cuBLAS
//   P = exp(S - LSE) over buffer 1, dS = P (dP - D) over buffer 2,          one kernel, with
//       D = rowsum(dO o O) computed per row inside it (fp32)
//   dV_g = sum_h P_h^T dO_h,  dQ = scale dS K,  dK_g = scale sum_h dS_h^T Q_h                     cuBLAS
// For GQA (H > H_kv) in fp16/bf16 the sums over a group's query heads accumulate in fp32 buffers (beta = 1)
// and are rounded to dtype once; fp32 runs accumulate in dK/dV directly.
//
// Key padding runs dense, as eager frameworks run a padded batch: the GEMMs compute every score, the row kernels
// mask the padded keys and keep nothing in a padded query row (core's mask rule, key_range below).
// A fully masked row gives P = 0, LSE = -inf, O = 0 and zero gradients; an empty sequence (N_k = 0) writes
// O = 0, LSE = -inf and dQ = 0, one with N_q = 0 writes dK = dV = 0.
//
// Layout of the score buffers: [B, H, N_q, ld] per sequence block (varlen: the sequences' blocks one after
// another), ld = N_k rounded up to 16 bytes, so that every row starts 16-byte aligned for vector loads.
// Workspace of one launch, carved from ONE allocation in 256-byte aligned parts (see workspace_bytes()):
//   forward:  ptr(5 E) + S + W
//   backward: ptr(9 E) + 2 S + W [+ fp32 dK, dV accumulators for GQA in fp16/bf16]
// with E = B H batched-GEMM entries, S = s H sum_b N_q,b ld_b bytes, W = 32 MiB of cuBLAS workspace.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "flashlab/core/errors.hpp"
#include "src/check.hpp"
#include "src/device_common.cuh"
#include "src/launch_checks.hpp"
#include "src/workspace_parts.hpp"
#include "standard/standard.hpp"

namespace flashlab::kernels {
namespace {

using detail::Carver;
using detail::kPartAlignment;
using detail::round_up;

// ---------------------------------------------------------------------------------------------------------------
// Constants and checks

// cuBLAS's recommended workspace on Hopper (cublasSetWorkspace documentation; 4 MiB suffices before Hopper).
// One constant for every device keeps workspace_model() a function of the problem alone.
constexpr std::int64_t kCublasWorkspaceBytes = std::int64_t{32} << 20;
constexpr std::int64_t kVectorBytes = 16;     // one vector load/store
constexpr int kForwardTensors = 4;            // Q K V O
constexpr int kBackwardTensors = 7;           // Q K V dO dQ dK dV
// Grids of the row kernels are capped (the kernels loop over rows); more blocks than this gain nothing.
constexpr std::int64_t kMaxGrid = std::int64_t{1} << 30;

void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    detail::throw_cuda_error(call, cublasGetStatusName(status), cublasGetStatusString(status), file, line);
  }
}
#define FL_CUBLAS_CHECK(call) check_cublas((call), #call, FL_SOURCE_FILE, __LINE__)

// ---------------------------------------------------------------------------------------------------------------
// Element types

template <class T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr cudaDataType kCuda = CUDA_R_32F;
  __device__ static float load(float x) { return x; }
  __device__ static float store(float x) { return x; }
};
template <>
struct Elem<__half> {
  static constexpr cudaDataType kCuda = CUDA_R_16F;
  __device__ static float load(__half x) { return __half2float(x); }
  __device__ static __half store(float x) { return __float2half_rn(x); }
};
template <>
struct Elem<__nv_bfloat16> {
  static constexpr cudaDataType kCuda = CUDA_R_16BF;
  __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};

template <class T>
constexpr int kVecElems = static_cast<int>(kVectorBytes / sizeof(T));

// One 16-byte vector of T (raw bits) as floats.
template <class T>
__device__ inline void unpack(const uint4& raw, float (&out)[kVecElems<T>]) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < kVecElems<T>; ++k) out[k] = Elem<T>::load(e[k]);
}

// One 16-byte vector of T as floats (the address is 16-byte aligned).
template <class T>
__device__ inline void load_vector(const T* address, float (&out)[kVecElems<T>]) {
  unpack<T>(*reinterpret_cast<const uint4*>(address), out);
}

template <class T>
__device__ inline void store_vector(T* address, const float (&in)[kVecElems<T>]) {
  alignas(16) T e[kVecElems<T>];
#pragma unroll
  for (int k = 0; k < kVecElems<T>; ++k) e[k] = Elem<T>::store(in[k]);
  *reinterpret_cast<uint4*>(address) = *reinterpret_cast<const uint4*>(e);
}

// exp(x - shift), shift_log2 = shift * log2(e). For fp16/bf16 storage the exp2 with log2(e) folded into one FMA
// (2 ulp, plus the rounding of shift_log2: 2^-24 |shift| in the exponent) is far below the dtype's rounding; fp32
// runs take expf of the exact difference, whose error is not hidden by a coarser storage rounding.
template <class T>
__device__ inline float exp_shifted(float x, float shift, float shift_log2) {
  if constexpr (std::is_same_v<T, float>) {
    return expf(x - shift);
  } else {
    return exp2_ftz(fmaf(x, kLog2e, -shift_log2));
  }
}

// Keeps the elements of the vector starting at column col0 that lie in [lo, hi] and sets the others to `fill`,
// by selection (never arithmetic, so garbage in the padding past N_k cannot leak). Most vectors are kept
// whole: they return after one test instead of a 64-bit comparison per element.
template <int kElems>
__device__ inline void mask_vector(float (&x)[kElems], std::int64_t col0, std::int64_t lo, std::int64_t hi,
                                   float fill) {
  if (col0 >= lo && col0 + (kElems - 1) <= hi) return;
  const auto first = static_cast<int>(min(max(lo - col0, std::int64_t{0}), std::int64_t{kElems}));
  const auto last = static_cast<int>(min(max(hi - col0, std::int64_t{-1}), std::int64_t{kElems - 1}));
#pragma unroll
  for (int e = 0; e < kElems; ++e) x[e] = (e >= first && e <= last) ? x[e] : fill;
}

// The same for two vectors of one column range, filled with 0.
template <int kElems>
__device__ inline void mask_vectors(float (&x)[kElems], float (&y)[kElems], std::int64_t col0, std::int64_t lo,
                                    std::int64_t hi) {
  if (col0 >= lo && col0 + (kElems - 1) <= hi) return;
  const auto first = static_cast<int>(min(max(lo - col0, std::int64_t{0}), std::int64_t{kElems}));
  const auto last = static_cast<int>(min(max(hi - col0, std::int64_t{-1}), std::int64_t{kElems - 1}));
#pragma unroll
  for (int e = 0; e < kElems; ++e) {
    const bool keep = e >= first && e <= last;
    x[e] = keep ? x[e] : 0.0f;
    y[e] = keep ? y[e] : 0.0f;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Row reductions: a row is handled by kThreadsPerRow threads, one warp or the whole block.

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// Reduces v over the row's threads. With more than one warp per row the block is the row, and `scratch`
// (kThreadsPerRow / 32 floats of shared memory) must not be read by any thread of an earlier reduction still
// in progress: callers alternate two scratch arrays or place a __syncthreads() between uses.
template <int kThreadsPerRow, class Op>
__device__ inline float row_reduce(float v, float* scratch, Op op) {
  static_assert(kThreadsPerRow % 32 == 0, "rows are whole warps");
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  if constexpr (kThreadsPerRow > 32) {
    constexpr int kWarps = kThreadsPerRow / 32;
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    v = scratch[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) v = op(v, scratch[w]);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// The rows of one segment of the score buffer (all of a dense batch, or one varlen sequence):
// row r = (b * H + h) * N_q + i sits at r * ld, and its LSE at lse[(r / N_q) * lse_stride + r % N_q].

struct Rows {
  std::int64_t count;  // B_segment * H * N_q
  std::int64_t seqlen_q;
  std::int64_t seqlen_k;
  std::int64_t ld;
  std::int64_t window_left;  // effective window (causal folded in), -1 = unbounded
  std::int64_t window_right;
  float* lse;
  std::int64_t lse_stride;
  // key padding (dense batches): valid tokens of each batch entry, null without padding; entry of row r:
  // slot + r / (heads N_q)
  const std::int32_t* valid_lengths;
  bool left_padding;
  std::int64_t heads;
  std::int64_t slot;
};

// Keys [lo, hi] that query i of score row `row` keeps: core's mask rule (core/mask.hpp) with the row's key padding,
// as Problem::key_range computes it. A padded row keeps none (empty: the fully masked row's path).
__device__ inline void key_range(const Rows& rows, std::int64_t row, std::int64_t i, std::int64_t& lo,
                                 std::int64_t& hi) {
  PaddedTokens<std::int64_t> pad{0, 0};
  if (rows.valid_lengths != nullptr) {
    const std::int64_t b = rows.slot + row / (rows.heads * rows.seqlen_q);
    pad = padded_tokens<std::int64_t>(rows.left_padding, rows.seqlen_k, rows.valid_lengths[b]);
  }
  const KeptKeys<std::int64_t> kept = kept_keys_padded<std::int64_t>(rows.window_left, rows.window_right, i,
                                                                     rows.seqlen_q, rows.seqlen_k, pad.front, pad.back);
  lo = kept.lo;
  hi = kept.hi;
}

__device__ inline float* lse_of(const Rows& rows, std::int64_t row) {
  return rows.lse + (row / rows.seqlen_q) * rows.lse_stride + row % rows.seqlen_q;
}

// A warp per row packs 4 rows into a block; wider rows own the block (row_reduce relies on it).
template <int kThreadsPerRow>
constexpr int kRowsPerBlock = kThreadsPerRow == 32 ? 4 : 1;

// ---------------------------------------------------------------------------------------------------------------
// Forward softmax, rows that fit the registers: each thread holds kVecs vectors of the row, so S is read once and
// P written once. Masked keys become -inf by selection (never arithmetic), so the uninitialized padding columns
// past N_k cannot leak into a row.

template <class T, int kThreadsPerRow, int kVecs>
__global__ void __launch_bounds__(kThreadsPerRow* kRowsPerBlock<kThreadsPerRow>)
    softmax_forward_kernel(T* __restrict__ scores, Rows rows) {
  constexpr int kElems = kVecElems<T>;
  constexpr int kRows = kRowsPerBlock<kThreadsPerRow>;
  constexpr int kWarps = kThreadsPerRow / 32;
  __shared__ float scratch_max[kWarps];
  __shared__ float scratch_sum[kWarps];
  const int lane = static_cast<int>(threadIdx.x) % kThreadsPerRow;
  for (std::int64_t row = std::int64_t{blockIdx.x} * kRows + threadIdx.x / kThreadsPerRow; row < rows.count;
       row += std::int64_t{gridDim.x} * kRows) {
    // prologue: load the row, mask it
    const std::int64_t i = row % rows.seqlen_q;
    std::int64_t lo, hi;
    key_range(rows, row, i, lo, hi);
    T* row_ptr = scores + row * rows.ld;
    float x[kVecs][kElems];
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
      const std::int64_t col0 = std::int64_t{lane + v * kThreadsPerRow} * kElems;
      if (col0 < rows.seqlen_k) load_vector(row_ptr + col0, x[v]);
    }
    // masking after all loads are issued, so that no branch sits between them
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
      mask_vector(x[v], std::int64_t{lane + v * kThreadsPerRow} * kElems, lo, hi, kNegInf);
    }
    float row_max = kNegInf;
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
#pragma unroll
      for (int e = 0; e < kElems; ++e) row_max = fmaxf(row_max, x[v][e]);
    }
    row_max = row_reduce<kThreadsPerRow>(row_max, scratch_max, MaxOp{});
    float* lse = lse_of(rows, row);
    // a fully masked row: P = 0, LSE = -inf (and no -inf - -inf below)
    if (row_max == kNegInf) {
#pragma unroll
      for (int v = 0; v < kVecs; ++v) {
        const std::int64_t col0 = std::int64_t{lane + v * kThreadsPerRow} * kElems;
        float zero[kElems] = {};
        if (col0 < rows.seqlen_k) store_vector(row_ptr + col0, zero);
      }
      if (lane == 0) *lse = kNegInf;
      if constexpr (kWarps > 1) __syncthreads();  // the next row's maximum reuses scratch_max
      continue;
    }
    // exp2 with log2(e) folded into one FMA: exp(x - m) = 2^(x log2e - m log2e)
    const float max_log2 = row_max * kLog2e;
    float row_sum = 0.0f;
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
#pragma unroll
      for (int e = 0; e < kElems; ++e) {
        x[v][e] = exp_shifted<T>(x[v][e], row_max, max_log2);
        row_sum += x[v][e];
      }
    }
    row_sum = row_reduce<kThreadsPerRow>(row_sum, scratch_sum, SumOp{});
    // epilogue: P = exp(x - m) / l over S, LSE = m + log l
    const float inv_sum = 1.0f / row_sum;
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
      const std::int64_t col0 = std::int64_t{lane + v * kThreadsPerRow} * kElems;
#pragma unroll
      for (int e = 0; e < kElems; ++e) x[v][e] *= inv_sum;
      if (col0 < rows.seqlen_k) store_vector(row_ptr + col0, x[v]);
    }
    if (lane == 0) *lse = row_max + logf(row_sum);
  }
}

// Forward softmax for rows longer than the register tiles, one block of kThreads per row: an online pass for
// this thread's (m_i, l_i), then a second read of S to write P. The second read comes from L2, which holds the
// few rows per multiprocessor in flight, so DRAM still sees about one read; this beat register tiles and a
// shared-memory stage of the row, which both hold fewer rows per multiprocessor (launch_softmax_forward).
constexpr int kLongUnroll = 4;  // vectors of S in flight per thread in the main loop

template <class T, int kThreads>
__global__ void __launch_bounds__(kThreads) softmax_forward_long_kernel(T* __restrict__ scores, Rows rows) {
  constexpr int kElems = kVecElems<T>;
  constexpr std::int64_t kStride = std::int64_t{kThreads} * kElems;
  __shared__ float scratch_max[kThreads / 32];
  __shared__ float scratch_sum[kThreads / 32];
  for (std::int64_t row = blockIdx.x; row < rows.count; row += gridDim.x) {
    const std::int64_t i = row % rows.seqlen_q;
    std::int64_t lo, hi;
    key_range(rows, row, i, lo, hi);
    T* row_ptr = scores + row * rows.ld;
    // main loop: running maximum m_i and l_i = sum exp(x - m_i) of this thread's columns
    float m_i = kNegInf;
    float l_i = 0.0f;
    for (std::int64_t base = std::int64_t{threadIdx.x} * kElems; base < rows.seqlen_k; base += kLongUnroll * kStride) {
      uint4 raw[kLongUnroll];
#pragma unroll
      for (int u = 0; u < kLongUnroll; ++u) {
        const std::int64_t col0 = base + u * kStride;
        if (col0 < rows.seqlen_k) raw[u] = *reinterpret_cast<const uint4*>(row_ptr + col0);
      }
#pragma unroll
      for (int u = 0; u < kLongUnroll; ++u) {
        const std::int64_t col0 = base + u * kStride;
        if (col0 >= rows.seqlen_k) break;
        float x[kElems];
        unpack<T>(raw[u], x);
        mask_vector(x, col0, lo, hi, kNegInf);
        float chunk_max = kNegInf;
#pragma unroll
        for (int e = 0; e < kElems; ++e) chunk_max = fmaxf(chunk_max, x[e]);
        if (chunk_max == kNegInf) continue;  // nothing kept here; also avoids -inf - -inf below
        if (chunk_max > m_i) {
          l_i *= exp_shifted<T>(m_i, chunk_max, chunk_max * kLog2e);  // m_i = -inf: 0, and l_i is 0 then anyway
          m_i = chunk_max;
        }
        const float max_log2 = m_i * kLog2e;
#pragma unroll
        for (int e = 0; e < kElems; ++e) l_i += exp_shifted<T>(x[e], m_i, max_log2);
      }
    }
    const float row_max = row_reduce<kThreads>(m_i, scratch_max, MaxOp{});
    float* lse = lse_of(rows, row);
    if (row_max == kNegInf) {  // fully masked row
      for (std::int64_t col0 = std::int64_t{threadIdx.x} * kElems; col0 < rows.seqlen_k; col0 += kStride) {
        float zero[kElems] = {};
        store_vector(row_ptr + col0, zero);
      }
      if (threadIdx.x == 0) *lse = kNegInf;
      __syncthreads();  // the next row's maximum reuses scratch_max
      continue;
    }
    // rescale each thread's sum to the row maximum (a thread that kept nothing contributes 0)
    const float partial = m_i == kNegInf ? 0.0f : l_i * exp_shifted<T>(m_i, row_max, row_max * kLog2e);
    const float row_sum = row_reduce<kThreads>(partial, scratch_sum, SumOp{});
    const float max_log2 = row_max * kLog2e;
    const float inv_sum = 1.0f / row_sum;
    // epilogue: second read of S, P = exp(x - m) / l written over it
    for (std::int64_t col0 = std::int64_t{threadIdx.x} * kElems; col0 < rows.seqlen_k; col0 += kStride) {
      float x[kElems];
      load_vector(row_ptr + col0, x);
#pragma unroll
      for (int e = 0; e < kElems; ++e) x[e] = exp_shifted<T>(x[e], row_max, max_log2) * inv_sum;
      mask_vector(x, col0, lo, hi, 0.0f);
      store_vector(row_ptr + col0, x);
    }
    if (threadIdx.x == 0) *lse = row_max + logf(row_sum);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward row kernel: P = exp(S - LSE) over buffer 1 and dS = P (dP - D) over buffer 2, with
// D = rowsum(dO o O) of the row computed first (fp32). Elementwise given LSE and D, so any row length streams.

struct RowTensors {  // dO and O of the segment's first token; row r -> (b, h, i) as in Rows
  const void* d_out;
  const void* o;
  std::int64_t d_out_batch, d_out_token, d_out_head;
  std::int64_t o_batch, o_token, o_head;
  std::int64_t heads;
  std::int64_t head_dim_v;
};

constexpr int kBackwardUnroll = 2;  // vectors of S and dP in flight per thread before the first use

template <class T, int kThreadsPerRow>
__global__ void __launch_bounds__(kThreadsPerRow* kRowsPerBlock<kThreadsPerRow>)
    softmax_backward_kernel(T* __restrict__ probs, T* __restrict__ grads, Rows rows, RowTensors in) {
  constexpr int kElems = kVecElems<T>;
  constexpr int kRows = kRowsPerBlock<kThreadsPerRow>;
  constexpr int kWarps = kThreadsPerRow / 32;
  constexpr std::int64_t kStride = std::int64_t{kThreadsPerRow} * kElems;
  __shared__ float scratch[kWarps];
  const int lane = static_cast<int>(threadIdx.x) % kThreadsPerRow;
  const T* d_out = static_cast<const T*>(in.d_out);
  const T* o = static_cast<const T*>(in.o);
  for (std::int64_t row = std::int64_t{blockIdx.x} * kRows + threadIdx.x / kThreadsPerRow; row < rows.count;
       row += std::int64_t{gridDim.x} * kRows) {
    const std::int64_t i = row % rows.seqlen_q;
    const std::int64_t bh = row / rows.seqlen_q;
    const std::int64_t h = bh % in.heads;
    const std::int64_t b = bh / in.heads;
    T* p_row = probs + row * rows.ld;
    T* ds_row = grads + row * rows.ld;
    const float lse = *lse_of(rows, row);
    if (lse == kNegInf) {  // fully masked row: P = dS = 0 (and no exp(-inf - -inf))
      float zero[kElems] = {};
      for (std::int64_t col0 = std::int64_t{lane} * kElems; col0 < rows.seqlen_k; col0 += kStride) {
        store_vector(p_row + col0, zero);
        store_vector(ds_row + col0, zero);
      }
      continue;
    }
    // prologue: D = rowsum(dO o O)
    const T* d_out_row = d_out + b * in.d_out_batch + i * in.d_out_token + h * in.d_out_head;
    const T* o_row = o + b * in.o_batch + i * in.o_token + h * in.o_head;
    float dot = 0.0f;
    for (std::int64_t c0 = std::int64_t{lane} * kElems; c0 < in.head_dim_v; c0 += kStride) {
      float a[kElems], c[kElems];
      load_vector(d_out_row + c0, a);
      load_vector(o_row + c0, c);
#pragma unroll
      for (int e = 0; e < kElems; ++e) dot = fmaf(a[e], c[e], dot);
    }
    const float d_row = row_reduce<kThreadsPerRow>(dot, scratch, SumOp{});
    std::int64_t lo, hi;
    key_range(rows, row, i, lo, hi);
    const float lse_log2 = lse * kLog2e;
    // main loop: kBackwardUnroll vectors of S and dP loaded (kept packed) before any is used
    for (std::int64_t base = std::int64_t{lane} * kElems; base < rows.seqlen_k; base += kBackwardUnroll * kStride) {
      uint4 raw_s[kBackwardUnroll], raw_dp[kBackwardUnroll];
#pragma unroll
      for (int u = 0; u < kBackwardUnroll; ++u) {
        const std::int64_t col0 = base + u * kStride;
        if (col0 < rows.seqlen_k) {
          raw_s[u] = *reinterpret_cast<const uint4*>(p_row + col0);
          raw_dp[u] = *reinterpret_cast<const uint4*>(ds_row + col0);
        }
      }
#pragma unroll
      for (int u = 0; u < kBackwardUnroll; ++u) {
        const std::int64_t col0 = base + u * kStride;
        if (col0 >= rows.seqlen_k) break;
        float p[kElems], ds[kElems];
        unpack<T>(raw_s[u], p);
        unpack<T>(raw_dp[u], ds);
#pragma unroll
        for (int e = 0; e < kElems; ++e) {
          p[e] = exp_shifted<T>(p[e], lse, lse_log2);
          ds[e] = p[e] * (ds[e] - d_row);
        }
        mask_vectors(p, ds, col0, lo, hi);
        store_vector(p_row + col0, p);
        store_vector(ds_row + col0, ds);
      }
    }
    if constexpr (kWarps > 1) __syncthreads();  // the next row's D reuses `scratch`
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Pointer arrays of the batched GEMMs, built on the device in one launch.
//
// Entry e of a segment's run of entries stands for (member j of the GQA group, batch b, kv head g), query head
// h = g G + j, ordered e = ((segment G + j) B_segment + b) H_kv + g: a forward GEMM takes a segment's B_segment H
// consecutive entries, and the dK/dV GEMM of group member j the B_segment H_kv entries from
// (segment G + j) B_segment H_kv. Dense batches are one segment (B_segment = B); varlen sequences one each.

struct TensorRef {
  char* data;
  std::int64_t batch, token, head;  // strides in elements
  std::int64_t elem_bytes;
  bool over_keys;  // K, V, dK, dV: kv head and key tokens; else query head and query tokens
};

constexpr int kMaxTensors = 7;

struct PointerArgs {
  TensorRef tensor[kMaxTensors];
  int tensors;
  char* scores[2];
  int score_buffers;
  std::int64_t score_elem_bytes;
  std::int64_t entries, batch, heads, heads_kv, group;
  std::int64_t seqlen_q, seqlen_k, ld;  // dense
  std::int64_t ld_multiple;             // varlen: ld_b = N_k,b rounded up to this
  const std::int32_t* cu_seqlens_q;     // varlen (nullptr: dense)
  const std::int32_t* cu_seqlens_k;
  void** out;  // [tensors + score_buffers][entries]
};

__device__ inline void write_entry(const PointerArgs& a, std::int64_t e, std::int64_t slot, std::int64_t q_token,
                                   std::int64_t k_token, std::int64_t h, std::int64_t g, std::int64_t score_offset) {
  for (int t = 0; t < a.tensors; ++t) {
    const TensorRef& r = a.tensor[t];
    const std::int64_t offset =
        slot * r.batch + (r.over_keys ? k_token : q_token) * r.token + (r.over_keys ? g : h) * r.head;
    a.out[t * a.entries + e] = r.data + offset * r.elem_bytes;
  }
  for (int s = 0; s < a.score_buffers; ++s) {
    a.out[(a.tensors + s) * a.entries + e] = a.scores[s] + score_offset * a.score_elem_bytes;
  }
}

constexpr int kPointerThreads = 128;

__global__ void __launch_bounds__(kPointerThreads) build_pointers_kernel(PointerArgs a) {
  if (a.cu_seqlens_q == nullptr) {
    for (std::int64_t e = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < a.entries;
         e += std::int64_t{gridDim.x} * blockDim.x) {
      const std::int64_t g = e % a.heads_kv;
      const std::int64_t b = (e / a.heads_kv) % a.batch;
      const std::int64_t j = e / (a.heads_kv * a.batch);
      const std::int64_t h = g * a.group + j;
      write_entry(a, e, b, 0, 0, h, g, (b * a.heads + h) * a.seqlen_q * a.ld);
    }
    return;
  }
  // varlen: one block per sequence; its score block starts after H sum_{b' < b} N_q,b' ld_b' elements
  __shared__ unsigned long long block_offset;
  for (std::int64_t b = blockIdx.x; b < a.batch; b += gridDim.x) {
    if (threadIdx.x == 0) block_offset = 0;
    __syncthreads();
    unsigned long long partial = 0;
    for (std::int64_t p = threadIdx.x; p < b; p += blockDim.x) {
      const std::int64_t nq = a.cu_seqlens_q[p + 1] - a.cu_seqlens_q[p];
      const std::int64_t nk = a.cu_seqlens_k[p + 1] - a.cu_seqlens_k[p];
      partial += static_cast<unsigned long long>(nq * ((nk + a.ld_multiple - 1) / a.ld_multiple * a.ld_multiple));
    }
    if (partial) atomicAdd(&block_offset, partial);
    __syncthreads();
    const std::int64_t nq = a.cu_seqlens_q[b + 1] - a.cu_seqlens_q[b];
    const std::int64_t nk = a.cu_seqlens_k[b + 1] - a.cu_seqlens_k[b];
    const std::int64_t ld = (nk + a.ld_multiple - 1) / a.ld_multiple * a.ld_multiple;
    const auto first = static_cast<std::int64_t>(block_offset) * a.heads;
    for (std::int64_t t = threadIdx.x; t < a.heads; t += blockDim.x) {
      const std::int64_t j = t / a.heads_kv;
      const std::int64_t g = t % a.heads_kv;
      const std::int64_t h = g * a.group + j;
      write_entry(a, b * a.heads + t, 0, a.cu_seqlens_q[b], a.cu_seqlens_k[b], h, g, first + h * nq * ld);
    }
    __syncthreads();  // block_offset is reset for the next sequence
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers: zero rows of a strided tensor (empty sequences), and fp32 accumulators -> dtype (GQA dK, dV).

struct StridedRows {  // [slots, tokens, heads, row_vectors x 16 bytes], strides in bytes
  char* data;
  std::int64_t slots, tokens, heads, row_vectors;
  std::int64_t slot_stride, token_stride, head_stride;
};

constexpr int kSmallThreads = 256;

__global__ void __launch_bounds__(kSmallThreads) zero_rows_kernel(StridedRows r) {
  const std::int64_t total = r.slots * r.tokens * r.heads * r.row_vectors;
  for (std::int64_t n = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; n < total;
       n += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t v = n % r.row_vectors;
    const std::int64_t h = (n / r.row_vectors) % r.heads;
    const std::int64_t t = (n / (r.row_vectors * r.heads)) % r.tokens;
    const std::int64_t s = n / (r.row_vectors * r.heads * r.tokens);
    char* address = r.data + s * r.slot_stride + t * r.token_stride + h * r.head_stride + v * kVectorBytes;
    *reinterpret_cast<uint4*>(address) = make_uint4(0, 0, 0, 0);
  }
}

// acc is contiguous [slots, tokens, heads, dim] fp32; dst has the element strides of `dst_rows`.
template <class T>
__global__ void __launch_bounds__(kSmallThreads)
    convert_kernel(const float* __restrict__ acc, T* __restrict__ dst, std::int64_t slots, std::int64_t tokens,
                   std::int64_t heads, std::int64_t dim, std::int64_t batch, std::int64_t token, std::int64_t head) {
  constexpr int kElems = kVecElems<T>;
  const std::int64_t vectors = dim / kElems;
  const std::int64_t total = slots * tokens * heads * vectors;
  for (std::int64_t n = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; n < total;
       n += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t v = n % vectors;
    const std::int64_t row = n / vectors;  // (slot, token, head) in acc's order
    const std::int64_t h = row % heads;
    const std::int64_t t = (row / heads) % tokens;
    const std::int64_t s = row / (heads * tokens);
    float x[kElems];
    const auto* src = reinterpret_cast<const float4*>(acc + row * dim + v * kElems);
#pragma unroll
    for (int q = 0; q < kElems / 4; ++q) {
      const float4 f = src[q];
      x[4 * q] = f.x;
      x[4 * q + 1] = f.y;
      x[4 * q + 2] = f.z;
      x[4 * q + 3] = f.w;
    }
    store_vector(dst + s * batch + t * token + h * head + v * kElems, x);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side: the plan of a launch (segments and workspace parts), shared by workspace_model() and the launches.

struct Segment {
  std::int64_t first_entry;  // into the pointer arrays
  std::int64_t batches;      // B_segment: B (dense) or 1 (varlen)
  std::int64_t slot;         // first batch index of the segment in the tensors (0 for varlen)
  std::int64_t q_token, k_token;
  std::int64_t seqlen_q, seqlen_k, ld;
  std::int64_t score_offset;  // elements into a score buffer
};

struct Plan {
  std::int64_t elem_bytes = 0;
  std::int64_t entries = 0;
  std::vector<Segment> segments;
  std::int64_t score_elements = 0;
  bool fp32_accumulators = false;  // backward, GQA in fp16/bf16
  std::int64_t acc_tokens = 0;     // tokens in the N_k dimension of the accumulators (B N_k or total_k)
  std::int64_t acc_slots = 0;
  // workspace parts (bytes, each rounded up to kPartAlignment) and their offsets
  std::int64_t pointer_bytes = 0, acc_k_bytes = 0, acc_v_bytes = 0, score_bytes = 0;
  [[nodiscard]] std::int64_t total_bytes(int score_buffers) const {
    return pointer_bytes + acc_k_bytes + acc_v_bytes + score_buffers * score_bytes + kCublasWorkspaceBytes;
  }
};

Plan make_plan(const Problem& p, DType dtype, Pass pass) {
  Plan plan;
  plan.elem_bytes = size_bytes(dtype);
  const std::int64_t ld_multiple = std::max<std::int64_t>(1, kVectorBytes / plan.elem_bytes);
  plan.entries = p.batch * p.heads;
  auto add = [&](std::int64_t first, std::int64_t batches, std::int64_t slot, const Sequence& s) {
    const std::int64_t ld = round_up(s.seqlen_k, ld_multiple);
    plan.segments.push_back(
        {first, batches, slot, s.q_offset, s.k_offset, s.seqlen_q, s.seqlen_k, ld, plan.score_elements});
    plan.score_elements += batches * p.heads * s.seqlen_q * ld;
  };
  if (p.is_varlen()) {
    for (std::int64_t b = 0; b < p.batch; ++b) add(b * p.heads, 1, 0, p.sequence(b));
  } else {
    add(0, p.batch, 0, p.sequence(0));
  }
  const bool backward = pass != Pass::fwd;
  const int arrays = backward ? kBackwardTensors + 2 : kForwardTensors + 1;
  plan.pointer_bytes = round_up(arrays * plan.entries * std::int64_t{sizeof(void*)}, kPartAlignment);
  plan.score_bytes = round_up(plan.score_elements * plan.elem_bytes, kPartAlignment);
  plan.fp32_accumulators = backward && p.group_size() > 1 && dtype != DType::fp32;
  if (plan.fp32_accumulators) {
    plan.acc_slots = p.is_varlen() ? 1 : p.batch;
    plan.acc_tokens = p.is_varlen() ? p.total_k() : p.seqlen_k;
    const std::int64_t rows = plan.acc_slots * plan.acc_tokens * p.heads_kv;
    plan.acc_k_bytes = round_up(rows * p.head_dim * std::int64_t{sizeof(float)}, kPartAlignment);
    plan.acc_v_bytes = round_up(rows * p.dv() * std::int64_t{sizeof(float)}, kPartAlignment);
  }
  return plan;
}

std::int64_t workspace_bytes(const Problem& p, DType dtype, Pass pass) {
  switch (pass) {
    case Pass::fwd: return make_plan(p, dtype, Pass::fwd).total_bytes(1);
    case Pass::bwd: return make_plan(p, dtype, Pass::bwd).total_bytes(2);
    case Pass::fwdbwd: break;
  }
  return std::max(workspace_bytes(p, dtype, Pass::fwd), workspace_bytes(p, dtype, Pass::bwd));
}

Support supports(const Problem& p, DType dtype, Pass) {
  if (p.dropout.active()) {
    return Support::no("standard has no dropout (its fused softmax would need the mask); cpu-standard and flash2 have it");
  }
  switch (dtype) {
    case DType::fp64: return Support::no("standard runs fp32, fp16 and bf16; fp64 is the CPU reference's type");
    case DType::fp8_e4m3:
      return Support::no("standard has no fp8_e4m3 path (cuBLAS fp8 GEMMs need per-tensor scales and fp8 P)");
    case DType::fp32:
    case DType::fp16:
    case DType::bf16: break;
  }
  if (p.head_dim % 8 != 0) {
    return Support::no("head_dim = " + std::to_string(p.head_dim) +
                       " is not a multiple of 8: standard needs 16-byte aligned rows of Q, K, V (cuBLAS tensor-core "
                       "GEMMs on pointer arrays, vector loads)");
  }
  if (p.dv() % 8 != 0) {
    return Support::no("head_dim_v = " + std::to_string(p.dv()) +
                       " is not a multiple of 8: standard needs 16-byte aligned rows of V, O and dO");
  }
  return Support::yes();
}

// ---------------------------------------------------------------------------------------------------------------
// cuBLAS: one handle per device, created on first use and kept for the process (destroying it at exit can run
// after the CUDA runtime has shut down). The handle's stream and workspace are set per launch, under a mutex.

std::mutex& cublas_mutex() {
  static std::mutex mutex;
  return mutex;
}

cublasHandle_t cublas_handle() {  // caller holds cublas_mutex()
  static auto* handles = new std::vector<cublasHandle_t>();
  int device = 0;
  FL_CUDA_CHECK(cudaGetDevice(&device));
  if (static_cast<std::size_t>(device) >= handles->size()) handles->resize(device + 1, nullptr);
  cublasHandle_t& handle = (*handles)[device];
  if (!handle) {
    cublasHandle_t created = nullptr;
    FL_CUBLAS_CHECK(cublasCreate(&created));
    // fp32 stays fp32 (no TF32: the default math mode with CUBLAS_COMPUTE_32F), and split reductions of
    // fp16/bf16 outputs accumulate in fp32, not in the output type.
    const auto mode = static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
    const cublasStatus_t status = cublasSetMathMode(created, mode);
    if (status != CUBLAS_STATUS_SUCCESS) cublasDestroy(created);
    FL_CUBLAS_CHECK(status);
    handle = created;
  }
  return handle;
}

// C = alpha op(A) op(B) + beta C for `count` entries of pointer arrays (column-major, cuBLAS's convention).
struct Gemm {
  cublasHandle_t handle;
  cudaDataType ab_type;
  void run(cublasOperation_t op_a, cublasOperation_t op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
           void* const* a, std::int64_t lda, void* const* b, std::int64_t ldb, float beta, void* const* c,
           cudaDataType c_type, std::int64_t ldc, std::int64_t count) const {
    if (m == 0 || n == 0 || count == 0) return;
    FL_CUBLAS_CHECK(cublasGemmBatchedEx_64(handle, op_a, op_b, m, n, k, &alpha, a, ab_type, lda, b, ab_type, ldb, &beta,
                                           c, c_type, ldc, count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
};

int sm_count() {
  int device = 0;
  int count = 0;
  FL_CUDA_CHECK(cudaGetDevice(&device));
  FL_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

unsigned grid_of(std::int64_t blocks) {
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, kMaxGrid));
}

unsigned small_grid(std::int64_t work) {
  return static_cast<unsigned>(
      std::clamp<std::int64_t>((work + kSmallThreads - 1) / kSmallThreads, 1, std::int64_t{sm_count()} * 8));
}

// The register-tile kernels loop over rows from a grid of at most kRowBlocksPerSm blocks per multiprocessor
// (B H = 128, N = 4096, bf16 on an H200: 2.70 ms against 2.87 ms with one block per row).
constexpr std::int64_t kRowBlocksPerSm = 32;

template <class T, int kThreadsPerRow, int kVecs>
void launch_forward_rows(T* scores, const Rows& rows, cudaStream_t stream) {
  constexpr int kRows = kRowsPerBlock<kThreadsPerRow>;
  const std::int64_t blocks = std::min((rows.count + kRows - 1) / kRows, kRowBlocksPerSm * sm_count());
  softmax_forward_kernel<T, kThreadsPerRow, kVecs>
      <<<grid_of(blocks), kThreadsPerRow * kRows, 0, stream>>>(scores, rows);
  FL_CUDA_CHECK_LAUNCH("softmax_forward_kernel");
}

// Rows up to 512 vectors (8 KB: 4096 fp16/bf16 keys) stay in registers, a warp per row up to 32 x 4 vectors,
// then a block of 128; longer rows take the two-read kernel, whose second read hits L2. Measured on an H200 over
// 8.6 GB of bf16 rows: 4096 keys 2.69 ms in registers (3.28 two-read); 8192 keys 2.42 ms two-read with 256
// threads (2.84 in a 256 x 4 register tile); 16384 keys 2.27 ms (256 threads; 3.23 in a 512 x 4 tile); 32768
// keys 2.45 ms with 512 threads (2.62 with 256, 3.93 in a 1024 x 4 tile). An in-place copy takes 2.17 ms.
template <class T>
void launch_softmax_forward(T* scores, const Rows& rows, cudaStream_t stream) {
  if (rows.count == 0) return;
  const std::int64_t vectors = (rows.seqlen_k + kVecElems<T> - 1) / kVecElems<T>;
  if (vectors <= 32) return launch_forward_rows<T, 32, 1>(scores, rows, stream);
  if (vectors <= 32 * 4) return launch_forward_rows<T, 32, 4>(scores, rows, stream);
  if (vectors <= 128 * 4) return launch_forward_rows<T, 128, 4>(scores, rows, stream);
  if (vectors <= 256 * 2 * kLongUnroll) {
    softmax_forward_long_kernel<T, 256><<<grid_of(rows.count), 256, 0, stream>>>(scores, rows);
  } else {
    softmax_forward_long_kernel<T, 512><<<grid_of(rows.count), 512, 0, stream>>>(scores, rows);
  }
  FL_CUDA_CHECK_LAUNCH("softmax_forward_long_kernel");
}

template <class T>
void launch_softmax_backward(T* probs, T* grads, const Rows& rows, const RowTensors& in, cudaStream_t stream) {
  if (rows.count == 0) return;
  // a warp per row while a row is at most 32 x 4 vectors, else a block of 128 threads (4 warps) per row
  if (rows.seqlen_k <= 32 * 4 * kVecElems<T>) {
    constexpr int kRows = kRowsPerBlock<32>;
    softmax_backward_kernel<T, 32>
        <<<grid_of((rows.count + kRows - 1) / kRows), 32 * kRows, 0, stream>>>(probs, grads, rows, in);
  } else {
    softmax_backward_kernel<T, 128><<<grid_of(rows.count), 128, 0, stream>>>(probs, grads, rows, in);
  }
  FL_CUDA_CHECK_LAUNCH("softmax_backward_kernel");
}

void zero_rows(char* data, std::int64_t elem_bytes, std::int64_t slots, std::int64_t tokens, std::int64_t heads,
               std::int64_t dim, std::int64_t batch, std::int64_t token, std::int64_t head, cudaStream_t stream) {
  const StridedRows r{data,
                      slots,
                      tokens,
                      heads,
                      dim * elem_bytes / kVectorBytes,
                      batch * elem_bytes,
                      token * elem_bytes,
                      head * elem_bytes};
  const std::int64_t total = slots * tokens * heads * r.row_vectors;
  if (total == 0) return;
  zero_rows_kernel<<<small_grid(total), kSmallThreads, 0, stream>>>(r);
  FL_CUDA_CHECK_LAUNCH("zero_rows_kernel");
}

Rows rows_of(const AttentionParams& params, const Segment& seg) {
  const Problem& p = params.problem;
  const Window w = p.effective_window();
  Rows rows{};
  rows.count = seg.batches * p.heads * seg.seqlen_q;
  rows.seqlen_q = seg.seqlen_q;
  rows.seqlen_k = seg.seqlen_k;
  rows.ld = seg.ld;
  rows.window_left = w.left;
  rows.window_right = w.right;
  // LSE is [B, H, N_q] (dense: row r at r) or [H, total_q] (varlen: head h of the sequence at h total_q + q0)
  rows.lse = params.lse + seg.q_token;
  rows.lse_stride = p.is_varlen() ? p.total_q() : p.seqlen_q;
  rows.valid_lengths = p.is_padded() ? params.valid_lengths : nullptr;
  rows.left_padding = p.key_padding == KeyPadding::left;
  rows.heads = p.heads;
  rows.slot = seg.slot;
  return rows;
}

TensorRef ref(const void* data, const Strides& s, std::int64_t elem_bytes, bool over_keys) {
  return {static_cast<char*>(const_cast<void*>(data)), s.batch, s.token, s.head, elem_bytes, over_keys};
}

// byte offset of (slot, token) in a tensor
std::int64_t at(const Strides& s, std::int64_t slot, std::int64_t token, std::int64_t elem_bytes) {
  return (slot * s.batch + token * s.token) * elem_bytes;
}

PointerArgs pointer_args(const AttentionParams& params, const Plan& plan, void** out) {
  const Problem& p = params.problem;
  PointerArgs a{};
  a.entries = plan.entries;
  a.batch = p.batch;
  a.heads = p.heads;
  a.heads_kv = p.heads_kv;
  a.group = p.group_size();
  a.seqlen_q = p.seqlen_q;
  a.seqlen_k = p.seqlen_k;
  a.ld = plan.segments.front().ld;
  a.ld_multiple = std::max<std::int64_t>(1, kVectorBytes / plan.elem_bytes);
  a.score_elem_bytes = plan.elem_bytes;
  a.cu_seqlens_q = p.is_varlen() ? params.cu_seqlens_q : nullptr;
  a.cu_seqlens_k = p.is_varlen() ? params.cu_seqlens_k : nullptr;
  a.out = out;
  return a;
}

void build_pointers(const PointerArgs& args, cudaStream_t stream) {
  const bool varlen = args.cu_seqlens_q != nullptr;
  const std::int64_t blocks = varlen ? args.batch : (args.entries + kPointerThreads - 1) / kPointerThreads;
  build_pointers_kernel<<<grid_of(blocks), kPointerThreads, 0, stream>>>(args);
  FL_CUDA_CHECK_LAUNCH("build_pointers_kernel");
}

// ---------------------------------------------------------------------------------------------------------------
// Forward

// Zeroes the padding columns [N_k, ld) of every row of a score buffer. The GEMMs never write them and the softmax
// kernels' 16-byte loads read them (and discard them by selection): zeroed, no uninitialized memory is read.
void zero_padding(char* buffer, const Plan& plan, std::int64_t heads, cudaStream_t stream) {
  for (const Segment& seg : plan.segments) {
    const std::int64_t rows = seg.batches * heads * seg.seqlen_q;
    if (seg.ld == seg.seqlen_k || rows == 0) continue;
    const std::int64_t s = plan.elem_bytes;
    FL_CUDA_CHECK(cudaMemset2DAsync(buffer + (seg.score_offset + seg.seqlen_k) * s, static_cast<std::size_t>(seg.ld * s), 0,
                                    static_cast<std::size_t>((seg.ld - seg.seqlen_k) * s), static_cast<std::size_t>(rows),
                                    stream));
  }
}

template <class T>
void forward_impl(const AttentionParams& params, const LaunchContext& ctx) {
  detail::check_launch("standard", params, Pass::fwd, supports);
  const Problem& p = params.problem;
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  const Plan plan = make_plan(p, params.dtype, Pass::fwd);
  const std::int64_t s = plan.elem_bytes;

  std::lock_guard<std::mutex> lock(cublas_mutex());
  const Gemm gemm{cublas_handle(), Elem<T>::kCuda};
  // every allocation before the first launch: an OutOfMemory leaves nothing enqueued
  const Workspace workspace(ctx.workspace, static_cast<std::size_t>(plan.total_bytes(1)),
                            "standard forward: S/P [B, H, N_q, N_k], GEMM pointer arrays, cuBLAS workspace");
  Carver carve(workspace, "standard");
  auto** pointers = reinterpret_cast<void**>(carve.take(plan.pointer_bytes));
  char* scores = carve.take(plan.score_bytes);
  void* cublas_workspace = carve.take(kCublasWorkspaceBytes);
  FL_CUBLAS_CHECK(cublasSetStream(gemm.handle, stream));  // resets the workspace: set it after
  FL_CUBLAS_CHECK(cublasSetWorkspace(gemm.handle, cublas_workspace, kCublasWorkspaceBytes));
  zero_padding(scores, plan, p.heads, stream);

  enum Array { kQ, kK, kV, kO, kS };
  PointerArgs args = pointer_args(params, plan, pointers);
  args.tensor[kQ] = ref(params.q, params.q_strides, s, false);
  args.tensor[kK] = ref(params.k, params.k_strides, s, true);
  args.tensor[kV] = ref(params.v, params.v_strides, s, true);
  args.tensor[kO] = ref(params.o, params.o_strides, s, false);
  args.tensors = kForwardTensors;
  args.scores[0] = scores;
  args.score_buffers = 1;
  build_pointers(args, stream);
  auto array = [&](Array which, std::int64_t entry) { return pointers + which * plan.entries + entry; };

  const auto scale = static_cast<float>(p.scale());
  const std::int64_t d = p.head_dim, dv = p.dv();
  for (const Segment& seg : plan.segments) {
    if (seg.seqlen_q == 0) continue;
    const std::int64_t count = seg.batches * p.heads;
    const std::int64_t e = seg.first_entry;
    // S^T = K Q^T in cuBLAS's column-major view: S row-major [N_q, ld] is column-major [ld, N_q]
    gemm.run(CUBLAS_OP_T, CUBLAS_OP_N, seg.seqlen_k, seg.seqlen_q, d, scale, array(kK, e), params.k_strides.token,
             array(kQ, e), params.q_strides.token, 0.0f, array(kS, e), Elem<T>::kCuda, seg.ld, count);
    launch_softmax_forward<T>(reinterpret_cast<T*>(scores) + seg.score_offset, rows_of(params, seg), stream);
    if (seg.seqlen_k == 0) {  // no keys: O = 0 (LSE = -inf came from the softmax kernel)
      zero_rows(static_cast<char*>(params.o) + at(params.o_strides, seg.slot, seg.q_token, s), s, seg.batches,
                seg.seqlen_q, p.heads, dv, params.o_strides.batch, params.o_strides.token, params.o_strides.head,
                stream);
      continue;
    }
    // O^T = V^T P^T
    gemm.run(CUBLAS_OP_N, CUBLAS_OP_N, dv, seg.seqlen_q, seg.seqlen_k, 1.0f, array(kV, e), params.v_strides.token,
             array(kS, e), seg.ld, 0.0f, array(kO, e), Elem<T>::kCuda, params.o_strides.token, count);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward

template <class T>
void backward_impl(const AttentionParams& params, const LaunchContext& ctx) {
  detail::check_launch("standard", params, Pass::bwd, supports);
  const Problem& p = params.problem;
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  const Plan plan = make_plan(p, params.dtype, Pass::bwd);
  const std::int64_t s = plan.elem_bytes;

  std::lock_guard<std::mutex> lock(cublas_mutex());
  const Gemm gemm{cublas_handle(), Elem<T>::kCuda};
  const Workspace workspace(ctx.workspace, static_cast<std::size_t>(plan.total_bytes(2)),
                            "standard backward: S/P and dP/dS [B, H, N_q, N_k], GEMM pointer arrays, "
                            "fp32 dK/dV accumulators (GQA), cuBLAS workspace");
  Carver carve(workspace, "standard");
  auto** pointers = reinterpret_cast<void**>(carve.take(plan.pointer_bytes));
  auto* acc_k = reinterpret_cast<float*>(carve.take(plan.acc_k_bytes));
  auto* acc_v = reinterpret_cast<float*>(carve.take(plan.acc_v_bytes));
  char* probs = carve.take(plan.score_bytes);
  char* grads = carve.take(plan.score_bytes);
  void* cublas_workspace = carve.take(kCublasWorkspaceBytes);
  FL_CUBLAS_CHECK(cublasSetStream(gemm.handle, stream));
  FL_CUBLAS_CHECK(cublasSetWorkspace(gemm.handle, cublas_workspace, kCublasWorkspaceBytes));
  zero_padding(probs, plan, p.heads, stream);
  zero_padding(grads, plan, p.heads, stream);

  const std::int64_t d = p.head_dim, dv = p.dv();
  // dK, dV targets: the outputs, or contiguous fp32 accumulators [slots, tokens, H_kv, d]
  const Strides acc_k_strides{plan.acc_tokens * p.heads_kv * d, p.heads_kv * d, d};
  const Strides acc_v_strides{plan.acc_tokens * p.heads_kv * dv, p.heads_kv * dv, dv};
  const bool acc = plan.fp32_accumulators;
  void* dk_target = acc ? static_cast<void*>(acc_k) : params.dk;
  void* dv_target = acc ? static_cast<void*>(acc_v) : params.dv;
  const Strides& dk_strides = acc ? acc_k_strides : params.dk_strides;
  const Strides& dv_strides = acc ? acc_v_strides : params.dv_strides;
  const std::int64_t target_bytes = acc ? std::int64_t{sizeof(float)} : s;
  const cudaDataType target_type = acc ? CUDA_R_32F : Elem<T>::kCuda;

  enum Array { kQ, kK, kV, kDOut, kDQ, kDK, kDV, kP, kDS };
  PointerArgs args = pointer_args(params, plan, pointers);
  args.tensor[kQ] = ref(params.q, params.q_strides, s, false);
  args.tensor[kK] = ref(params.k, params.k_strides, s, true);
  args.tensor[kV] = ref(params.v, params.v_strides, s, true);
  args.tensor[kDOut] = ref(params.d_out, params.d_out_strides, s, false);
  args.tensor[kDQ] = ref(params.dq, params.dq_strides, s, false);
  args.tensor[kDK] = ref(dk_target, dk_strides, target_bytes, true);
  args.tensor[kDV] = ref(dv_target, dv_strides, target_bytes, true);
  args.tensors = kBackwardTensors;
  args.scores[0] = probs;
  args.scores[1] = grads;
  args.score_buffers = 2;
  build_pointers(args, stream);
  auto array = [&](Array which, std::int64_t entry) { return pointers + which * plan.entries + entry; };

  const auto scale = static_cast<float>(p.scale());
  const std::int64_t group = p.group_size();
  for (const Segment& seg : plan.segments) {
    const std::int64_t count = seg.batches * p.heads;
    const std::int64_t e = seg.first_entry;
    if (seg.seqlen_q == 0 || seg.seqlen_k == 0) {
      // empty products: dQ = 0 for queries without keys, dK = dV = 0 for keys without queries
      zero_rows(static_cast<char*>(params.dq) + at(params.dq_strides, seg.slot, seg.q_token, s), s, seg.batches,
                seg.seqlen_q, p.heads, d, params.dq_strides.batch, params.dq_strides.token, params.dq_strides.head,
                stream);
      zero_rows(static_cast<char*>(dk_target) + at(dk_strides, seg.slot, seg.k_token, target_bytes), target_bytes,
                seg.batches, seg.seqlen_k, p.heads_kv, d, dk_strides.batch, dk_strides.token, dk_strides.head, stream);
      zero_rows(static_cast<char*>(dv_target) + at(dv_strides, seg.slot, seg.k_token, target_bytes), target_bytes,
                seg.batches, seg.seqlen_k, p.heads_kv, dv, dv_strides.batch, dv_strides.token, dv_strides.head, stream);
      continue;
    }
    // S = scale Q K^T into buffer 1, dP = dO V^T into buffer 2 (column-major: S^T = K Q^T, dP^T = V dO^T)
    gemm.run(CUBLAS_OP_T, CUBLAS_OP_N, seg.seqlen_k, seg.seqlen_q, d, scale, array(kK, e), params.k_strides.token,
             array(kQ, e), params.q_strides.token, 0.0f, array(kP, e), Elem<T>::kCuda, seg.ld, count);
    gemm.run(CUBLAS_OP_T, CUBLAS_OP_N, seg.seqlen_k, seg.seqlen_q, dv, 1.0f, array(kV, e), params.v_strides.token,
             array(kDOut, e), params.d_out_strides.token, 0.0f, array(kDS, e), Elem<T>::kCuda, seg.ld, count);
    // P over S, dS over dP
    const RowTensors in{static_cast<const char*>(params.d_out) + at(params.d_out_strides, seg.slot, seg.q_token, s),
                        static_cast<const char*>(params.o) + at(params.o_strides, seg.slot, seg.q_token, s),
                        params.d_out_strides.batch,
                        params.d_out_strides.token,
                        params.d_out_strides.head,
                        params.o_strides.batch,
                        params.o_strides.token,
                        params.o_strides.head,
                        p.heads,
                        dv};
    launch_softmax_backward<T>(reinterpret_cast<T*>(probs) + seg.score_offset,
                               reinterpret_cast<T*>(grads) + seg.score_offset, rows_of(params, seg), in, stream);
    // dQ = scale dS K (column-major: dQ^T = K^T dS^T)
    gemm.run(CUBLAS_OP_N, CUBLAS_OP_N, d, seg.seqlen_q, seg.seqlen_k, scale, array(kK, e), params.k_strides.token,
             array(kDS, e), seg.ld, 0.0f, array(kDQ, e), Elem<T>::kCuda, params.dq_strides.token, count);
    // dV_g = sum_j P_j^T dO_j and dK_g = scale sum_j dS_j^T Q_j over the group's query heads j
    // (column-major: dV^T = dO^T P, dK^T = Q^T dS)
    const std::int64_t kv_count = seg.batches * p.heads_kv;
    for (std::int64_t j = 0; j < group; ++j) {
      const std::int64_t ej = e + j * kv_count;
      const float beta = j == 0 ? 0.0f : 1.0f;
      gemm.run(CUBLAS_OP_N, CUBLAS_OP_T, dv, seg.seqlen_k, seg.seqlen_q, 1.0f, array(kDOut, ej),
               params.d_out_strides.token, array(kP, ej), seg.ld, beta, array(kDV, ej), target_type, dv_strides.token,
               kv_count);
      gemm.run(CUBLAS_OP_N, CUBLAS_OP_T, d, seg.seqlen_k, seg.seqlen_q, scale, array(kQ, ej), params.q_strides.token,
               array(kDS, ej), seg.ld, beta, array(kDK, ej), target_type, dk_strides.token, kv_count);
    }
  }
  if constexpr (!std::is_same_v<T, float>) {
    if (acc) {  // round the fp32 sums to dtype once
      const std::int64_t slots = plan.acc_slots, tokens = plan.acc_tokens;
      const auto& ks = params.dk_strides;
      const auto& vs = params.dv_strides;
      convert_kernel<T><<<small_grid(slots * tokens * p.heads_kv * d / kVecElems<T>), kSmallThreads, 0, stream>>>(
          acc_k, static_cast<T*>(params.dk), slots, tokens, p.heads_kv, d, ks.batch, ks.token, ks.head);
      FL_CUDA_CHECK_LAUNCH("convert_kernel");
      convert_kernel<T><<<small_grid(slots * tokens * p.heads_kv * dv / kVecElems<T>), kSmallThreads, 0, stream>>>(
          acc_v, static_cast<T*>(params.dv), slots, tokens, p.heads_kv, dv, vs.batch, vs.token, vs.head);
      FL_CUDA_CHECK_LAUNCH("convert_kernel");
    }
  }
}

void forward(const AttentionParams& params, const LaunchContext& ctx) {
  switch (params.dtype) {
    case DType::fp32: return forward_impl<float>(params, ctx);
    case DType::fp16: return forward_impl<__half>(params, ctx);
    case DType::bf16: return forward_impl<__nv_bfloat16>(params, ctx);
    case DType::fp64:
    case DType::fp8_e4m3: break;
  }
  throw Unsupported(supports(params.problem, params.dtype, Pass::fwd).reason);
}

void backward(const AttentionParams& params, const LaunchContext& ctx) {
  switch (params.dtype) {
    case DType::fp32: return backward_impl<float>(params, ctx);
    case DType::fp16: return backward_impl<__half>(params, ctx);
    case DType::bf16: return backward_impl<__nv_bfloat16>(params, ctx);
    case DType::fp64:
    case DType::fp8_e4m3: break;
  }
  throw Unsupported(supports(params.problem, params.dtype, Pass::bwd).reason);
}

}  // namespace

Variant standard_variant() {
  Variant v;
  v.id = "standard";
  v.description =
      "exact attention materializing S = scale QK^T and P = softmax(S) in device memory (cuBLAS GEMMs + one "
      "softmax kernel), as eager frameworks do";
  v.device = Device::cuda;
  v.materializes = true;
  v.supported =
      "fp32, fp16, bf16; head_dim and head_dim_v multiples of 8; causal, sliding window, GQA/MQA, varlen, "
      "key padding (dense, masked), N_q != N_k; fwd, bwd";
  v.supports = supports;
  v.workspace_model = workspace_bytes;
  v.forward = forward;
  v.backward = backward;
  // Where it rounds (reference/NUMERICS.md): the cuBLAS GEMMs accumulate in fp32 (truncating on tensor cores; fp32
  // runs take FFMA, which the same model bounds, a factor 2 loose) and store S, P, dP, dS, O in the dtype; the
  // softmax runs in fp32 (exp2 of one FMA on ex2.approx for fp16/bf16, expf for fp32: 2 ulp either way),
  // P = e * (1 / l).
  v.data_path = [](const Problem&, DType dtype, const AttentionParams&) {
    return numerics::materializing_path(dtype, DType::fp32, true, 3 * unit_roundoff(DType::fp32),
                                        "S, P, dP, dS stored in " + std::string(name(dtype)) +
                                            " (cuBLAS, fp32 accumulation); softmax fp32");
  };
  return v;
}

}  // namespace flashlab::kernels
