// The `flash2` variant, backward: FlashAttention-2 (Dao, 2023, Algorithm 2) on tensor cores, fp16 and bf16, in four
// launches on the caller's stream:
//
//   1. preprocess: D = rowsum(dO ∘ O) in fp32 (workspace, laid out like LSE), and the zeroing of the fp32 dQ
//      accumulator and of the deterministic mode's turn counters (one contiguous workspace region).
//   2. main: one CTA per (key block j of kBlockN keys, query head h, batch entry b); kv head g = h / (H / H_kv).
//      prologue:  K_j and V_j into shared memory once, with the first query block's Q, dO, LSE and D;
//      main loop: over the query blocks i whose rows can see a key of the block (the range follows from the query
//                 ranges of the first and last key, as the forward's key-tile range does from its query rows), with
//                 Q, dO, LSE, D of block i+1 in flight (cp.async) while block i is computed. Each warp owns 16 keys:
//                   S^T  = K_j Q_i^T                 mma.sync, A = K (ldmatrix.x4), B = Q (ldmatrix.x4)
//                   P^T  = exp2(S^T c - LSE log2 e)  c = scale log2(e); masked (and fully masked rows) P = 0
//                   dV_j += P^T dO_i                 P^T from registers is the A operand, B = dO (ldmatrix.x4.trans)
//                   dP^T = V_j dO_i^T                A = V (ldmatrix.x4), B = dO (ldmatrix.x4)
//                   dS^T = P^T ∘ (dP^T - D)          fp32 in registers
//                   dK_j += dS^T Q_i                 A = dS^T from registers, B = Q (ldmatrix.x4.trans)
//                   dS^T -> shared memory (dtype); dQ_i += dS K_j with A = dS (ldmatrix.x4.trans of dS^T) and
//                   B = K (ldmatrix.x4.trans), added in fp32 to the global accumulator (red.global.add.f32)
//      epilogue:  dK_j = scale dK_j and dV_j written in the dtype (group size 1), or as fp32 partials per query
//                 head into the workspace (GQA/MQA).
//   3. dQ = scale · accumulator, in the dtype.
//   4. GQA/MQA only: dK, dV of kv head g = the sum of the partials of its query heads, in increasing head order.
//
// Deterministic mode (AttentionParams::deterministic): atomics make the order in which key blocks add into a dQ row
// depend on scheduling, so fp32 rounding differs from run to run. With the flag, each (query block, head, batch
// entry) has a turn counter: the CTA of key block j waits (one thread spinning on an acquire load) until every key
// block before it that visits the query block has added, adds, and passes the turn on (release). dQ is then summed
// in increasing key-block order, bitwise repeatable. The cost: CTAs that reach a query block out of turn stall,
// which serializes the key blocks of one query block (FlashAttention-2 does the same with a semaphore). The scheme
// relies on CTAs of lower blockIdx.x being scheduled no later than higher ones, as FlashAttention-2's does. dK and
// dV are accumulated in registers in a fixed order and the GQA sum runs in a fixed order, so they are always
// repeatable.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "flash2/flash2.hpp"
#include "flash2/flash2_common.cuh"
#include "flash2/kernel_traits.hpp"
#include "flashlab/core/errors.hpp"
#include "src/check.hpp"

namespace flashlab::kernels {
namespace flash2 {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr std::int64_t kPartAlignment = 256;  // every workspace part starts 256-byte aligned (as standard's)
constexpr int kPreprocessThreads = 256;
constexpr int kElementwiseThreads = 256;

std::int64_t round_up(std::int64_t x, std::int64_t multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

// ---------------------------------------------------------------------------------------------------------------
// Launch arguments

struct BackwardArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* o;
  const void* d_out;
  const float* lse;
  void* dq;
  void* dk;
  void* dv;
  std::int64_t q_batch, q_token, q_head;  // strides in elements
  std::int64_t k_batch, k_token, k_head;
  std::int64_t v_batch, v_token, v_head;
  std::int64_t o_batch, o_token, o_head;
  std::int64_t do_batch, do_token, do_head;
  std::int64_t dq_batch, dq_token, dq_head;
  std::int64_t dk_batch, dk_token, dk_head;
  std::int64_t dv_batch, dv_token, dv_head;
  std::int64_t tokens_q;  // rows per (slot, head) of LSE, D and the dQ accumulator: N_q (dense) or total_q (varlen)
  std::int64_t tokens_k;  // N_k (dense) or total_k (varlen): rows per (slot, head) of the dK / dV partials
  std::int64_t slots;     // B (dense) or 1 (varlen)
  const std::int32_t* cu_seqlens_q;  // null for dense batches
  const std::int32_t* cu_seqlens_k;
  int seqlen_q;  // dense lengths (varlen: per sequence from cu_seqlens; these are then the maxima)
  int seqlen_k;
  int heads;
  int heads_kv;
  int group;  // H / H_kv
  int head_dim;
  int m_blocks;              // query blocks of the longest sequence: the turn counters per (batch entry, head)
  std::int64_t window_left;  // effective window (causal folded in), -1 = unbounded
  std::int64_t window_right;
  float scale;
  float scale_log2;
  bool deterministic;
  // workspace
  float* d;        // [slots, H, tokens_q]
  float* dq_acc;   // [slots, H, tokens_q, d]
  int* turns;      // [B, H, m_blocks]
  float* dk_part;  // [slots, H, tokens_k, d] (GQA/MQA only)
  float* dv_part;
};

// ---------------------------------------------------------------------------------------------------------------
// 1. Preprocess: one warp per (slot, head, token) row of D; every thread also zeroes part of `zero` (16-byte words).

template <class T>
__global__ void __launch_bounds__(kPreprocessThreads)
    preprocess_kernel(const BackwardArgs args, uint4* zero, std::int64_t zero_words) {
  const std::int64_t thread = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const std::int64_t threads = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t w = thread; w < zero_words; w += threads) zero[w] = make_uint4(0, 0, 0, 0);

  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t rows = args.slots * args.heads * args.tokens_q;
  const std::int64_t warps = threads / 32;
  const int chunks = args.head_dim / 8;
  for (std::int64_t row = thread / 32; row < rows; row += warps) {
    const std::int64_t token = row % args.tokens_q;
    const std::int64_t head = (row / args.tokens_q) % args.heads;
    const std::int64_t slot = row / (args.tokens_q * args.heads);
    const T* o = static_cast<const T*>(args.o) + slot * args.o_batch + token * args.o_token + head * args.o_head;
    const T* d_out =
        static_cast<const T*>(args.d_out) + slot * args.do_batch + token * args.do_token + head * args.do_head;
    float sum = 0.0f;
    for (int c = lane; c < chunks; c += 32) {
      const uint4 ov = *reinterpret_cast<const uint4*>(o + c * 8);
      const uint4 dv = *reinterpret_cast<const uint4*>(d_out + c * 8);
      const T* oe = reinterpret_cast<const T*>(&ov);
      const T* de = reinterpret_cast<const T*>(&dv);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum = fmaf(static_cast<float>(oe[e]), static_cast<float>(de[e]), sum);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) args.d[row] = sum;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// 2. The main kernel

// Queries [lo, hi] that see key j (the inverse of the forward's key_bounds: query i sees key j iff
// i + N_k - N_q - left <= j <= i + N_k - N_q + right, unbounded sides dropped), clamped to lo in [0, N_q],
// hi in [-1, N_q - 1]; empty when lo > hi, and for keys at or past N_k.
struct QueryBounds {
  int lo;
  int hi;
};
__device__ inline QueryBounds query_bounds(const BackwardArgs& args, int j, int seqlen_q, int seqlen_k) {
  if (j >= seqlen_k) return {seqlen_q, -1};
  const std::int64_t shifted = std::int64_t{j} - seqlen_k + seqlen_q;  // j - (N_k - N_q)
  std::int64_t lo = args.window_right < 0 ? 0 : shifted - args.window_right;
  std::int64_t hi = args.window_left < 0 ? seqlen_q - 1 : shifted + args.window_left;
  lo = min(max(lo, std::int64_t{0}), std::int64_t{seqlen_q});
  hi = min(max(hi, std::int64_t{-1}), std::int64_t{seqlen_q} - 1);
  return {static_cast<int>(lo), static_cast<int>(hi)};
}

// The query blocks [min, max) key block n_block visits (union of its keys' query ranges: both ends are monotone in
// the key, so it runs from the first key's lo to the last key's hi).
struct BlockRange {
  int min;
  int max;
};
template <class Traits>
__device__ inline BlockRange query_block_range(const BackwardArgs& args, int n_block, int seqlen_q, int seqlen_k) {
  const int n_start = n_block * Traits::kBlockN;
  const int keys_here = min(Traits::kBlockN, seqlen_k - n_start);
  const QueryBounds first = query_bounds(args, n_start, seqlen_q, seqlen_k);
  const QueryBounds last = query_bounds(args, n_start + keys_here - 1, seqlen_q, seqlen_k);
  const int lo = first.lo / Traits::kBlockM;
  const int hi = last.hi < 0 ? 0 : (last.hi + Traits::kBlockM) / Traits::kBlockM;
  return {lo, max(lo, hi)};
}

// Deterministic mode: the turn of key block n_block at query block m_block is its rank among the key blocks that
// visit m_block. Those form a contiguous range (both ends of query_block_range are monotone in the key block), so
// the rank is n_block minus the first of them, found by binary search on the range's end.
template <class Traits>
__device__ inline int turn_of(const BackwardArgs& args, int n_block, int m_block, int seqlen_q, int seqlen_k) {
  int lo = 0, hi = n_block;  // the first key block whose range ends past m_block lies in [0, n_block]
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (query_block_range<Traits>(args, mid, seqlen_q, seqlen_k).max > m_block) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return n_block - lo;
}

__device__ inline int load_acquire(const int* flag) {
  int value;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(value) : "l"(flag) : "memory");
  return value;
}
__device__ inline void store_release(int* flag, int value) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(flag), "r"(value) : "memory");
}

// *address += value in L2, no result returned (RED; atomicAdd compiles to ATOMG with a result on sm_90a)
__device__ inline void red_add(float* address, float value) {
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(address), "f"(value) : "memory");
}

// 4 bytes global -> shared (cp.async.ca takes 4, 8 or 16); src_bytes = 0 writes zero.
__device__ inline void cp_async_4(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}

template <class Traits, class T>
__global__ void __launch_bounds__(Traits::kThreads) backward_kernel(const BackwardArgs args) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kRowBytes = Traits::kRowBytes;
  constexpr int kElemBytes = Traits::kElemBytes;
  constexpr int kDsRowBytes = Traits::kDsRowBytes;
  extern __shared__ __align__(128) unsigned char shared[];

  const int n_block = static_cast<int>(blockIdx.x);
  const int head = static_cast<int>(blockIdx.y);
  const int batch = static_cast<int>(blockIdx.z);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;

  std::int64_t slot = batch, q_offset = 0, k_offset = 0;
  int seqlen_q = args.seqlen_q, seqlen_k = args.seqlen_k;
  if (args.cu_seqlens_q != nullptr) {
    slot = 0;
    q_offset = args.cu_seqlens_q[batch];
    k_offset = args.cu_seqlens_k[batch];
    seqlen_q = static_cast<int>(args.cu_seqlens_q[batch + 1] - q_offset);
    seqlen_k = static_cast<int>(args.cu_seqlens_k[batch + 1] - k_offset);
  }
  const int n_start = n_block * kBlockN;
  if (n_start >= seqlen_k) return;  // the grid covers the longest sequence of the batch
  const int keys_here = min(kBlockN, seqlen_k - n_start);
  const int kv_head = head / args.group;

  const T* q =
      static_cast<const T*>(args.q) + slot * args.q_batch + q_offset * args.q_token + std::int64_t{head} * args.q_head;
  const T* d_out = static_cast<const T*>(args.d_out) + slot * args.do_batch + q_offset * args.do_token +
                   std::int64_t{head} * args.do_head;
  const T* k = static_cast<const T*>(args.k) + slot * args.k_batch + (k_offset + n_start) * args.k_token +
               std::int64_t{kv_head} * args.k_head;
  const T* v = static_cast<const T*>(args.v) + slot * args.v_batch + (k_offset + n_start) * args.v_token +
               std::int64_t{kv_head} * args.v_head;
  const std::int64_t row_base = (slot * args.heads + head) * args.tokens_q + q_offset;  // LSE, D, dQ accumulator
  const float* lse = args.lse + row_base;
  const float* dsum = args.d + row_base;
  float* dq_acc = args.dq_acc + row_base * kHeadDim;
  int* turns = args.turns + (std::int64_t{batch} * args.heads + head) * args.m_blocks;

  const BlockRange range = query_block_range<Traits>(args, n_block, seqlen_q, seqlen_k);
  const int tiles = range.max - range.min;
  // queries every key of the block sees: query blocks inside [last.lo, first.hi] need no mask
  const QueryBounds first = query_bounds(args, n_start, seqlen_q, seqlen_k);
  const QueryBounds last = query_bounds(args, n_start + keys_here - 1, seqlen_q, seqlen_k);
  const int full_lo = last.lo, full_hi = keys_here == kBlockN ? first.hi : -1;

  const std::uint32_t s_k = smem_address(shared + Traits::kKOffset);
  const std::uint32_t s_v = smem_address(shared + Traits::kVOffset);
  const std::uint32_t s_q = smem_address(shared + Traits::kQOffset);
  const std::uint32_t s_do = smem_address(shared + Traits::kDoOffset);
  const std::uint32_t s_ds = smem_address(shared + Traits::kDsOffset);
  const std::uint32_t s_lse = smem_address(shared + Traits::kLseOffset);
  const std::uint32_t s_d = smem_address(shared + Traits::kDOffset);
  const float* lse_tile = reinterpret_cast<const float*>(shared + Traits::kLseOffset);
  const float* d_tile = reinterpret_cast<const float*>(shared + Traits::kDOffset);

  // this warp: 16 keys (key_warp) and a column part of dK / dV (part)
  const int key_warp = warp % Traits::kKeyWarps;
  const int part = warp / Traits::kKeyWarps;
  const int col0 = part * Traits::kPartDim;
  // this thread's two keys of the warp's 16 (mma C layout: row lane/4 and lane/4 + 8, columns 2 (lane%4) + {0,1})
  const int row_in_warp = lane / 4;
  const int col_in_tile = 2 * (lane % 4);
  QueryBounds bounds[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    bounds[r] = query_bounds(args, n_start + key_warp * 16 + row_in_warp + 8 * r, seqlen_q, seqlen_k);
  }

  float acc_dk[Traits::kPartTiles][4];
  float acc_dv[Traits::kPartTiles][4];
#pragma unroll
  for (int t = 0; t < Traits::kPartTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc_dk[t][e] = 0.0f;
      acc_dv[t][e] = 0.0f;
    }
  }

  // ldmatrix lane addressing (byte offsets inside a tile); matrix = lane / 8, its row = lane % 8
  //  A row-major [m][k] (K, V: the warp's keys):        row mat_row + (mat%2) 8, k (mat/2) 8
  //  B stored [n][k] (Q, dO for S^T and dP^T):          row mat_row + (mat/2) 8, k (mat%2) 8
  //  B stored [k][n], .trans (dO, Q, K for dV, dK, dQ): row mat_row + (mat%2) 8, n (mat/2) 8
  //  A stored [k][m], .trans (dS^T for dQ):             row mat_row + (mat/2) 8, m (mat%2) 8
  const int mat_row = lane % 8;
  const int mat = lane / 8;
  const std::uint32_t a_lane = (key_warp * 16 + mat_row + (mat % 2) * 8) * kRowBytes + (mat / 2) * 8 * kElemBytes;
  const std::uint32_t b_lane = (mat_row + (mat / 2) * 8) * kRowBytes + (mat % 2) * 8 * kElemBytes;
  const std::uint32_t bt_lane = (mat_row + (mat % 2) * 8) * kRowBytes + (mat / 2) * 8 * kElemBytes;
  const int dq_rows = warp % Traits::kDqRowBlocks;  // this warp's 16 query rows of dQ
  const int dq_col0 = (warp / Traits::kDqRowBlocks) * Traits::kDqCols;
  const std::uint32_t ds_lane =
      s_ds + (mat_row + (mat / 2) * 8) * kDsRowBytes + (dq_rows * 16 + (mat % 2) * 8) * kElemBytes;

  // loads of query block m into stage `stage`: Q and dO rows past N_q, LSE and D entries past N_q are zero
  auto load_query_block = [&](int m_block, int stage) {
    const int m0 = m_block * kBlockM;
    load_tile<Traits, kBlockM>(s_q + stage * Traits::kQTileBytes, q + m0 * args.q_token, args.q_token, seqlen_q - m0,
                               tid);
    load_tile<Traits, kBlockM>(s_do + stage * Traits::kQTileBytes, d_out + m0 * args.do_token, args.do_token,
                               seqlen_q - m0, tid);
    if (tid < kBlockM) {
      const bool valid = m0 + tid < seqlen_q;
      cp_async_4(s_lse + (stage * kBlockM + tid) * 4, valid ? lse + m0 + tid : lse, valid ? 4 : 0);
      cp_async_4(s_d + (stage * kBlockM + tid) * 4, valid ? dsum + m0 + tid : dsum, valid ? 4 : 0);
    }
  };

  // prologue: K, V and the first query block (one group)
  if (tiles > 0) {
    load_tile<Traits, kBlockN>(s_k, k, args.k_token, keys_here, tid);
    load_tile<Traits, kBlockN>(s_v, v, args.v_token, keys_here, tid);
    load_query_block(range.min, 0);
    cp_async_commit();
  }

  // main loop over query blocks, ascending
  for (int it = 0; it < tiles; ++it) {
    const int m_block = range.min + it;
    const int stage = it % Traits::kStages;
    if (it + 1 < tiles) {  // block i+1 into the other stage (its last readers passed the dS barrier of i-1)
      load_query_block(m_block + 1, (it + 1) % Traits::kStages);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    const std::uint32_t q_tile = s_q + stage * Traits::kQTileBytes;
    const std::uint32_t do_tile = s_do + stage * Traits::kQTileBytes;
    const float* lse_here = lse_tile + stage * kBlockM;
    const float* d_here = d_tile + stage * kBlockM;
    const int m_start = m_block * kBlockM;

    // S^T = K Q^T and dP^T = V dO^T (16 keys x kBlockM queries per warp, fp32)
    float s[Traits::kSTiles][4];
    float dp[Traits::kSTiles][4];
#pragma unroll
    for (int t = 0; t < Traits::kSTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[t][e] = 0.0f;
        dp[t][e] = 0.0f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      std::uint32_t a_k[4], a_v[4];
      ldmatrix_x4(a_k, s_k + a_lane + kk * 16 * kElemBytes);
      ldmatrix_x4(a_v, s_v + a_lane + kk * 16 * kElemBytes);
#pragma unroll
      for (int np = 0; np < kBlockM / 16; ++np) {
        std::uint32_t b[4];
        ldmatrix_x4(b, q_tile + b_lane + np * 16 * kRowBytes + kk * 16 * kElemBytes);
        Elem<T>::mma(s[2 * np], a_k, b[0], b[1]);
        Elem<T>::mma(s[2 * np + 1], a_k, b[2], b[3]);
        ldmatrix_x4(b, do_tile + b_lane + np * 16 * kRowBytes + kk * 16 * kElemBytes);
        Elem<T>::mma(dp[2 * np], a_v, b[0], b[1]);
        Elem<T>::mma(dp[2 * np + 1], a_v, b[2], b[3]);
      }
    }

    // P^T = exp2(S^T c - LSE log2 e), dS^T = P^T (dP^T - D); masked entries (boundary blocks only) get P = 0 by
    // selection, so a fully masked query row (LSE = -inf, never inside any key's range) contributes nothing
    const bool boundary = m_start < full_lo || m_start + kBlockM - 1 > full_hi;
#pragma unroll
    for (int t = 0; t < Traits::kSTiles; ++t) {
      const float2 lse2 = *reinterpret_cast<const float2*>(lse_here + t * 8 + col_in_tile);
      const float2 d2 = *reinterpret_cast<const float2*>(d_here + t * 8 + col_in_tile);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float row_lse = e % 2 == 0 ? lse2.x : lse2.y;
        const float row_d = e % 2 == 0 ? d2.x : d2.y;
        float p = exp2_ftz(fmaf(s[t][e], args.scale_log2, -row_lse * kLog2e));
        if (boundary) {
          const int col = m_start + t * 8 + col_in_tile + (e % 2);
          const QueryBounds& qb = bounds[e / 2];
          p = (col >= qb.lo && col <= qb.hi) ? p : 0.0f;
        }
        s[t][e] = p;
        dp[t][e] = p * (dp[t][e] - row_d);
      }
    }

    // dV += P^T dO and dK += dS^T Q over this warp's column part: the C fragments of two n8 tiles are the A
    // fragment of one k16 step
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      const std::uint32_t p[4] = {Elem<T>::pack(s[2 * kk][0], s[2 * kk][1]), Elem<T>::pack(s[2 * kk][2], s[2 * kk][3]),
                                  Elem<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                  Elem<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const std::uint32_t ds[4] = {
          Elem<T>::pack(dp[2 * kk][0], dp[2 * kk][1]), Elem<T>::pack(dp[2 * kk][2], dp[2 * kk][3]),
          Elem<T>::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), Elem<T>::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
      for (int dpair = 0; dpair < Traits::kPartDim / 16; ++dpair) {
        const std::uint32_t offset = bt_lane + kk * 16 * kRowBytes + (col0 + dpair * 16) * kElemBytes;
        std::uint32_t b[4];
        ldmatrix_x4_trans(b, do_tile + offset);
        Elem<T>::mma(acc_dv[2 * dpair], p, b[0], b[1]);
        Elem<T>::mma(acc_dv[2 * dpair + 1], p, b[2], b[3]);
        ldmatrix_x4_trans(b, q_tile + offset);
        Elem<T>::mma(acc_dk[2 * dpair], ds, b[0], b[1]);
        Elem<T>::mma(acc_dk[2 * dpair + 1], ds, b[2], b[3]);
      }
      // dS^T to shared memory for dQ (the warps of column part 0 hold every key once)
      if (part == 0) {
        const int key = key_warp * 16 + row_in_warp;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int query = kk * 16 + h * 8 + col_in_tile;
          unsigned char* row0 = shared + Traits::kDsOffset + key * kDsRowBytes + query * kElemBytes;
          *reinterpret_cast<std::uint32_t*>(row0) = ds[2 * h];
          *reinterpret_cast<std::uint32_t*>(row0 + 8 * kDsRowBytes) = ds[2 * h + 1];
        }
      }
    }
    __syncthreads();  // dS^T complete

    // dQ_i += dS K_j: this warp's 16 query rows x kDqCols columns, A fragments of dS for all keys kept in registers
    std::uint32_t a_ds[kBlockN / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) ldmatrix_x4_trans(a_ds[kk], ds_lane + kk * 16 * kDsRowBytes);

    std::int64_t turn_target = -1;
    if (args.deterministic) {  // wait for the key blocks before this one (see the file comment)
      if (tid == 0) {
        const int turn = turn_of<Traits>(args, n_block, m_block, seqlen_q, seqlen_k);
        while (load_acquire(turns + m_block) != turn) {
        }
        turn_target = turn + 1;
      }
      __syncthreads();
    }
    const int q_row = m_start + dq_rows * 16 + row_in_warp;
#pragma unroll
    for (int dpair = 0; dpair < Traits::kDqCols / 16; ++dpair) {
      float c[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        std::uint32_t b[4];
        ldmatrix_x4_trans(b, s_k + bt_lane + kk * 16 * kRowBytes + (dq_col0 + dpair * 16) * kElemBytes);
        Elem<T>::mma(c[0], a_ds[kk], b[0], b[1]);
        Elem<T>::mma(c[1], a_ds[kk], b[2], b[3]);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = q_row + 8 * (e / 2);
          const int col = dq_col0 + dpair * 16 + h * 8 + col_in_tile + (e % 2);
          if (row < seqlen_q) red_add(dq_acc + std::int64_t{row} * kHeadDim + col, c[h][e]);
        }
      }
    }
    if (args.deterministic) {  // pass the turn on once every thread's adds are visible
      __threadfence();
      __syncthreads();
      if (tid == 0) store_release(turns + m_block, static_cast<int>(turn_target));
    }
  }

  // epilogue: dK = scale dK, dV; rows past N_k are not written. A CTA that no query sees writes zeros.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key_warp * 16 + row_in_warp + 8 * r;
    if (key >= keys_here) continue;
    if (args.group == 1) {
      T* dk = static_cast<T*>(args.dk) + slot * args.dk_batch + (k_offset + n_start + key) * args.dk_token +
              std::int64_t{head} * args.dk_head;
      T* dv = static_cast<T*>(args.dv) + slot * args.dv_batch + (k_offset + n_start + key) * args.dv_token +
              std::int64_t{head} * args.dv_head;
#pragma unroll
      for (int t = 0; t < Traits::kPartTiles; ++t) {
        const int col = col0 + t * 8 + col_in_tile;
        *reinterpret_cast<std::uint32_t*>(dk + col) =
            Elem<T>::pack(acc_dk[t][2 * r] * args.scale, acc_dk[t][2 * r + 1] * args.scale);
        *reinterpret_cast<std::uint32_t*>(dv + col) = Elem<T>::pack(acc_dv[t][2 * r], acc_dv[t][2 * r + 1]);
      }
    } else {
      const std::int64_t row = (slot * args.heads + head) * args.tokens_k + k_offset + n_start + key;
      float* dk = args.dk_part + row * kHeadDim;
      float* dv = args.dv_part + row * kHeadDim;
#pragma unroll
      for (int t = 0; t < Traits::kPartTiles; ++t) {
        const int col = col0 + t * 8 + col_in_tile;
        *reinterpret_cast<float2*>(dk + col) =
            make_float2(acc_dk[t][2 * r] * args.scale, acc_dk[t][2 * r + 1] * args.scale);
        *reinterpret_cast<float2*>(dv + col) = make_float2(acc_dv[t][2 * r], acc_dv[t][2 * r + 1]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// 3. dQ = scale accumulator; 4. dK, dV = sum of the group's partials. One thread per 4 consecutive elements.

template <class T>
__device__ inline void store4(T* dst, float4 x) {
  const std::uint32_t lo = Elem<T>::pack(x.x, x.y), hi = Elem<T>::pack(x.z, x.w);
  *reinterpret_cast<uint2*>(dst) = make_uint2(lo, hi);
}

template <class T>
__global__ void __launch_bounds__(kElementwiseThreads) convert_dq_kernel(const BackwardArgs args) {
  const std::int64_t quads = args.head_dim / 4;
  const std::int64_t total = args.slots * args.heads * args.tokens_q * quads;
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    const std::int64_t col = (i % quads) * 4;
    const std::int64_t row = i / quads;  // (slot, head, token)
    const std::int64_t token = row % args.tokens_q;
    const std::int64_t head = (row / args.tokens_q) % args.heads;
    const std::int64_t slot = row / (args.tokens_q * args.heads);
    float4 x = *reinterpret_cast<const float4*>(args.dq_acc + row * args.head_dim + col);
    x.x *= args.scale;
    x.y *= args.scale;
    x.z *= args.scale;
    x.w *= args.scale;
    store4(static_cast<T*>(args.dq) + slot * args.dq_batch + token * args.dq_token + head * args.dq_head + col, x);
  }
}

template <class T>
__global__ void __launch_bounds__(kElementwiseThreads) sum_groups_kernel(const BackwardArgs args) {
  const std::int64_t quads = args.head_dim / 4;
  const std::int64_t total = args.slots * args.heads_kv * args.tokens_k * quads;
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    const std::int64_t col = (i % quads) * 4;
    const std::int64_t row = i / quads;  // (slot, kv head, token)
    const std::int64_t token = row % args.tokens_k;
    const std::int64_t kv_head = (row / args.tokens_k) % args.heads_kv;
    const std::int64_t slot = row / (args.tokens_k * args.heads_kv);
    float4 dk = make_float4(0.0f, 0.0f, 0.0f, 0.0f), dv = dk;
    for (int member = 0; member < args.group; ++member) {  // increasing query head: a fixed order
      const std::int64_t head = kv_head * args.group + member;
      const std::int64_t part = ((slot * args.heads + head) * args.tokens_k + token) * args.head_dim + col;
      const float4 a = *reinterpret_cast<const float4*>(args.dk_part + part);
      const float4 b = *reinterpret_cast<const float4*>(args.dv_part + part);
      dk = make_float4(dk.x + a.x, dk.y + a.y, dk.z + a.z, dk.w + a.w);
      dv = make_float4(dv.x + b.x, dv.y + b.y, dv.z + b.z, dv.w + b.w);
    }
    store4(static_cast<T*>(args.dk) + slot * args.dk_batch + token * args.dk_token + kv_head * args.dk_head + col, dk);
    store4(static_cast<T*>(args.dv) + slot * args.dv_batch + token * args.dv_token + kv_head * args.dv_head + col, dv);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side

// The workspace of one backward, carved from one allocation in this order, each part rounded up to 256 bytes:
//   dQ accumulator (fp32, [slots, H, T_q, d]) | turn counters (int32, [B, H, ceil(N_q / kBlockM)])   zeroed together
//   D (fp32, [slots, H, T_q])
//   dK and dV partials (fp32, [slots, H, T_k, d] each; GQA/MQA only)
struct WorkspacePlan {
  std::int64_t dq_acc = 0, turns = 0, d = 0, partial = 0;
  [[nodiscard]] std::int64_t total() const { return dq_acc + turns + d + 2 * partial; }
};

template <int kHeadDim>
int block_m() {
  return BackwardTraits<kHeadDim, 2>::kBlockM;
}

int block_m_of(std::int64_t head_dim) {
  switch (head_dim) {
    case 32: return block_m<32>();
    case 64: return block_m<64>();
    case 96: return block_m<96>();
    case 128: return block_m<128>();
    case 256: return block_m<256>();
    default: break;
  }
  throw Unsupported("flash2: no kernel for head_dim = " + std::to_string(head_dim));
}

WorkspacePlan plan_workspace(const Problem& p) {
  // rows of the Q side over the batch: B N_q for dense batches (total_q() is then N_q), total_q for varlen
  const std::int64_t rows_q = p.heads * (p.is_varlen() ? p.total_q() : p.batch * p.seqlen_q);
  const std::int64_t rows_k = p.heads * (p.is_varlen() ? p.total_k() : p.batch * p.seqlen_k);
  const std::int64_t m_blocks = (p.seqlen_q + block_m_of(p.head_dim) - 1) / block_m_of(p.head_dim);
  WorkspacePlan plan;
  plan.dq_acc = round_up(rows_q * p.head_dim * 4, kPartAlignment);
  plan.turns = round_up(p.batch * p.heads * m_blocks * 4, kPartAlignment);
  plan.d = round_up(rows_q * 4, kPartAlignment);
  plan.partial = p.group_size() > 1 ? round_up(rows_k * p.head_dim * 4, kPartAlignment) : 0;
  return plan;
}

unsigned elementwise_blocks(std::int64_t work) {
  constexpr std::int64_t kMaxBlocks = 65536;  // grid-stride loops beyond this
  const std::int64_t blocks = (work + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<unsigned>(std::max<std::int64_t>(1, std::min(blocks, kMaxBlocks)));
}

template <class T, int kHeadDim>
void launch_backward(const BackwardArgs& args, const Problem& p, void* zero, std::int64_t zero_bytes,
                     cudaStream_t stream) {
  using Traits = BackwardTraits<kHeadDim, sizeof(T)>;
  // 1. preprocess
  const std::int64_t zero_words = zero_bytes / 16;
  const std::int64_t rows_q = args.slots * args.heads * args.tokens_q;
  const std::int64_t work = std::max(zero_words, rows_q * 32);
  if (work > 0) {
    preprocess_kernel<T>
        <<<elementwise_blocks(work), kPreprocessThreads, 0, stream>>>(args, static_cast<uint4*>(zero), zero_words);
    FL_CUDA_CHECK_LAUNCH("flash2 preprocess_kernel");
  }
  // 2. main kernel
  const std::int64_t n_blocks = (p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
  if (n_blocks > 0 && p.batch > 0 && p.heads > 0) {
    auto* kernel = backward_kernel<Traits, T>;
    FL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSharedBytes));
    const dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
    kernel<<<grid, Traits::kThreads, Traits::kSharedBytes, stream>>>(args);
    FL_CUDA_CHECK_LAUNCH("flash2 backward_kernel");
  }
  // 3. dQ in the dtype
  if (rows_q > 0) {
    convert_dq_kernel<T><<<elementwise_blocks(rows_q * kHeadDim / 4), kElementwiseThreads, 0, stream>>>(args);
    FL_CUDA_CHECK_LAUNCH("flash2 convert_dq_kernel");
  }
  // 4. GQA/MQA: dK, dV from the partials
  const std::int64_t rows_k = args.slots * args.heads_kv * args.tokens_k;
  if (args.group > 1 && rows_k > 0) {
    sum_groups_kernel<T><<<elementwise_blocks(rows_k * kHeadDim / 4), kElementwiseThreads, 0, stream>>>(args);
    FL_CUDA_CHECK_LAUNCH("flash2 sum_groups_kernel");
  }
}

template <class T>
void backward_dtype(const BackwardArgs& args, const Problem& p, void* zero, std::int64_t zero_bytes,
                    cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_backward<T, 32>(args, p, zero, zero_bytes, stream);
    case 64: return launch_backward<T, 64>(args, p, zero, zero_bytes, stream);
    case 96: return launch_backward<T, 96>(args, p, zero, zero_bytes, stream);
    case 128: return launch_backward<T, 128>(args, p, zero, zero_bytes, stream);
    case 256: return launch_backward<T, 256>(args, p, zero, zero_bytes, stream);
    default: break;
  }
  throw Unsupported("flash2: no kernel for head_dim = " + std::to_string(p.head_dim));
}

}  // namespace

std::int64_t backward_workspace_bytes(const Problem& p, DType) {
  return plan_workspace(p).total();
}

void backward(const AttentionParams& params, const LaunchContext& ctx) {
  const Problem& p = params.problem;
  p.validate();
  const Support support = supports(p, params.dtype, Pass::bwd);
  if (!support.ok) throw Unsupported(support.reason);
  const std::int64_t s = size_bytes(params.dtype);
  check_tensor(params.q, params.q_strides, s, "q");
  check_tensor(params.k, params.k_strides, s, "k");
  check_tensor(params.v, params.v_strides, s, "v");
  check_tensor(params.o, params.o_strides, s, "o");
  check_tensor(params.d_out, params.d_out_strides, s, "d_out");
  check_tensor(params.dq, params.dq_strides, s, "dq");
  check_tensor(params.dk, params.dk_strides, s, "dk");
  check_tensor(params.dv, params.dv_strides, s, "dv");
  require(params.lse != nullptr, "lse", "is null");
  if (p.is_varlen()) {
    require(params.cu_seqlens_q != nullptr && params.cu_seqlens_k != nullptr, "cu_seqlens_q",
            "and cu_seqlens_k must be device arrays for a varlen problem");
  }
  require_sm80();

  const WorkspacePlan plan = plan_workspace(p);
  const Workspace workspace(ctx.workspace, static_cast<std::size_t>(plan.total()), "flash2 backward");
  char* next = workspace.as<char>();
  auto take = [&next](std::int64_t bytes) {
    char* part = bytes > 0 ? next : nullptr;
    next += bytes;
    return part;
  };

  const Window w = p.effective_window();
  BackwardArgs args{};
  args.q = params.q;
  args.k = params.k;
  args.v = params.v;
  args.o = params.o;
  args.d_out = params.d_out;
  args.lse = params.lse;
  args.dq = params.dq;
  args.dk = params.dk;
  args.dv = params.dv;
  args.q_batch = params.q_strides.batch;
  args.q_token = params.q_strides.token;
  args.q_head = params.q_strides.head;
  args.k_batch = params.k_strides.batch;
  args.k_token = params.k_strides.token;
  args.k_head = params.k_strides.head;
  args.v_batch = params.v_strides.batch;
  args.v_token = params.v_strides.token;
  args.v_head = params.v_strides.head;
  args.o_batch = params.o_strides.batch;
  args.o_token = params.o_strides.token;
  args.o_head = params.o_strides.head;
  args.do_batch = params.d_out_strides.batch;
  args.do_token = params.d_out_strides.token;
  args.do_head = params.d_out_strides.head;
  args.dq_batch = params.dq_strides.batch;
  args.dq_token = params.dq_strides.token;
  args.dq_head = params.dq_strides.head;
  args.dk_batch = params.dk_strides.batch;
  args.dk_token = params.dk_strides.token;
  args.dk_head = params.dk_strides.head;
  args.dv_batch = params.dv_strides.batch;
  args.dv_token = params.dv_strides.token;
  args.dv_head = params.dv_strides.head;
  args.tokens_q = p.is_varlen() ? p.total_q() : p.seqlen_q;
  args.tokens_k = p.is_varlen() ? p.total_k() : p.seqlen_k;
  args.slots = p.is_varlen() ? 1 : p.batch;
  args.cu_seqlens_q = p.is_varlen() ? params.cu_seqlens_q : nullptr;
  args.cu_seqlens_k = p.is_varlen() ? params.cu_seqlens_k : nullptr;
  args.seqlen_q = static_cast<int>(p.seqlen_q);
  args.seqlen_k = static_cast<int>(p.seqlen_k);
  args.heads = static_cast<int>(p.heads);
  args.heads_kv = static_cast<int>(p.heads_kv);
  args.group = static_cast<int>(p.group_size());
  args.head_dim = static_cast<int>(p.head_dim);
  args.m_blocks = static_cast<int>((p.seqlen_q + block_m_of(p.head_dim) - 1) / block_m_of(p.head_dim));
  args.window_left = w.left;
  args.window_right = w.right;
  args.scale = static_cast<float>(p.scale());
  args.scale_log2 = static_cast<float>(p.scale() * kLog2eDouble);
  args.deterministic = params.deterministic;
  args.dq_acc = reinterpret_cast<float*>(take(plan.dq_acc));
  args.turns = reinterpret_cast<int*>(take(plan.turns));
  args.d = reinterpret_cast<float*>(take(plan.d));
  args.dk_part = reinterpret_cast<float*>(take(plan.partial));
  args.dv_part = reinterpret_cast<float*>(take(plan.partial));
  // the turn counters follow the accumulator directly, so one zeroing pass covers both
  void* zero = workspace.as<char>();
  const std::int64_t zero_bytes = plan.dq_acc + plan.turns;

  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  switch (params.dtype) {
    case DType::fp16: return backward_dtype<__half>(args, p, zero, zero_bytes, stream);
    case DType::bf16: return backward_dtype<__nv_bfloat16>(args, p, zero, zero_bytes, stream);
    default: break;
  }
  throw Unsupported(support.reason);
}

}  // namespace flash2
}  // namespace flashlab::kernels
