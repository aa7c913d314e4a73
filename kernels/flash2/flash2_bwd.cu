// The `flash2` variant, backward: FlashAttention-2 (Dao, 2023, Algorithm 2) on tensor cores, fp16 and bf16, in four
// launches on the caller's stream:
//
//   1. preprocess: D = rowsum(dO ∘ O) in fp32 (workspace, laid out like LSE), and the zeroing of the fp32 dQ
//      accumulator and of the deterministic mode's turn counters (one contiguous workspace region).
//   2. main: one CTA of 8 warps per (key block j of kBlockN keys, query head h, batch entry b); kv head
//      g = h / (H / H_kv).
//      prologue:  K_j and V_j into shared memory once, with the first query block's Q, dO, LSE and D;
//      main loop: over the query blocks i whose rows can see a key of the block (the range follows from the query
//                 ranges of the first and last key, as the forward's key-tile range does from its query rows), with
//                 the next block's Q (and dO, LSE, D) in flight (cp.async) while block i is computed; three warp
//                 tilings (kernel_traits.hpp) follow one another:
//                   S = Q_i K_j^T, dP = dO_i V_j^T   mma.sync, A = Q, dO (ldmatrix.x4), B = K, V (ldmatrix.x4)
//                   P = exp2(S c - LSE log2 e)       c = scale log2(e); masked entries and rows past N_q: P = 0
//                   dS = P ∘ (dP - D)                fp32 in registers; P and dS -> shared memory in the dtype
//                   dV_j += P^T dO_i                 A = P^T (ldmatrix.x4.trans of P), B = dO (ldmatrix.x4.trans)
//                   dK_j += dS^T Q_i                 A = dS^T (ldmatrix.x4.trans of dS), B = Q (ldmatrix.x4.trans)
//                   dQ_i += dS K_j                   A = dS (ldmatrix.x4), B = K (ldmatrix.x4.trans), added in fp32
//                                                    to the global accumulator (one red.global.add.v4.f32 per
//                                                    C tile on sm_90; the accumulator in fragment order)
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
#include <type_traits>

#include "flash2/flash2.hpp"
#include "flash2/flash2_common.cuh"
#include "flash2/kernel_traits.hpp"
#include "flashlab/core/dropout.hpp"
#include "flashlab/core/errors.hpp"
#include "src/check.hpp"
#include "src/workspace_parts.hpp"

namespace flashlab::kernels {
namespace flash2 {
namespace {

using detail::kPartAlignment;
using detail::round_up;

constexpr int kPreprocessThreads = 256;
constexpr int kElementwiseThreads = 256;

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
  Strides q_strides;  // in elements
  Strides k_strides;
  Strides v_strides;
  Strides o_strides;
  Strides do_strides;
  Strides dq_strides;
  Strides dk_strides;
  Strides dv_strides;
  std::int64_t tokens_q;  // rows per (slot, head) of LSE and D: N_q (dense) or total_q (varlen)
  std::int64_t tokens_acc;  // rows per (slot, head) of the dQ accumulator (accumulator_rows: 16-row groups)
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
  int window_left;  // effective window (causal folded in), -1 = unbounded (window_arg)
  int window_right;
  float scale;
  float scale_log2;
  bool deterministic;
  bool dropout;  // whether the kDropout kernel runs (core/dropout.hpp)
  std::uint64_t dropout_seed;
  std::uint64_t dropout_offset;
  std::uint32_t dropout_threshold;  // a weight is kept when its 16-bit piece is below this (dropout_keep_threshold16)
  float rp_dropout;                 // 1 / (1 - p)
  // workspace
  float* d;        // [slots, H, tokens_q]
  float* dq_acc;   // [slots, H, tokens_acc / 16, d / 8, 128]: 16 x 8 fragments (see "dQ accumulator" below)
  int* turns;      // [B, H, m_blocks]
  float* dk_part;  // [slots, H, tokens_k, d] (GQA/MQA only)
  float* dv_part;
};

// ---------------------------------------------------------------------------------------------------------------
// Tiles per head dim: (B_r, B_c, warps along queries for S / dP, along keys for dK / dV, along queries for dQ,
// Q buffers, dO buffers). FlashAttention-2's shapes for sm_80/sm_90 (B_c = 128 keys, 8 warps; B_r = 64 from d = 96
// on, where dK and dV take d / 2 registers per thread). `type` fits sm_80's 163 KB of shared memory: d = 64 and 128
// single-buffer dO, d = 256 (64 x 64) Q and dO. `large` double-buffers them and runs where the GPU offers the
// shared memory (sm_90: 227 KB); measured on an H200 (bf16, 16k tokens, model dim 2048, N = 2048-16384): d = 64
// +1-2%, d = 256 +0-1% (with 72 bytes of spills), d = 128 -1-3%, so only d = 64 uses it.
template <int kHeadDim, int kElemBytes>
struct BackwardTilesOf;
template <int kElemBytes>
struct BackwardTilesOf<32, kElemBytes> {
  using type = BackwardTraits<32, 128, 128, 4, 4, 4, 2, 2, kElemBytes>;
  using large = type;
};
template <int kElemBytes>
struct BackwardTilesOf<64, kElemBytes> {
  using type = BackwardTraits<64, 128, 128, 4, 4, 4, 2, 1, kElemBytes>;
  using large = BackwardTraits<64, 128, 128, 4, 4, 4, 2, 2, kElemBytes>;
};
template <int kElemBytes>
struct BackwardTilesOf<96, kElemBytes> {
  using type = BackwardTraits<96, 64, 128, 2, 4, 4, 2, 2, kElemBytes>;
  using large = type;
};
template <int kElemBytes>
struct BackwardTilesOf<128, kElemBytes> {
  using type = BackwardTraits<128, 64, 128, 2, 4, 2, 2, 1, kElemBytes>;
  using large = type;  // double-buffered dO measured 1-3% slower on an H200 (ptxas spills 20 bytes there)
};
template <int kElemBytes>
struct BackwardTilesOf<256, kElemBytes> {
  using type = BackwardTraits<256, 64, 64, 4, 2, 2, 1, 1, kElemBytes>;
  using large = type;  // double-buffered Q and dO: +0-1% on an H200, but 72 bytes of spills (sm_90a)
};
template <int kHeadDim, int kElemBytes>
using BackwardTiles = typename BackwardTilesOf<kHeadDim, kElemBytes>::type;

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
    const T* o = static_cast<const T*>(args.o) + slot * args.o_strides.batch + token * args.o_strides.token + head * args.o_strides.head;
    const T* d_out =
        static_cast<const T*>(args.d_out) + slot * args.do_strides.batch + token * args.do_strides.token + head * args.do_strides.head;
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


// Per-CTA values the main loop reads once per query block, kept in shared memory (BackwardTraits::kScalarsOffset)
// and read again after each barrier: held in registers across the loop beside dK, dV and a phase's fragments, ptxas
// spilled them (the kernels use all 255 registers).
template <class T>
struct LoopScalars {
  const T* q;  // the sequence's rows of this head (row 0)
  const T* d_out;
  const float* lse;
  const float* dsum;
  float* dq_acc;
  int* turns;
  int full_lo;  // query rows every key of the block sees: query blocks inside [full_lo, full_hi] need no mask
  int full_hi;
};

// 4 bytes global -> shared (cp.async.ca takes 4, 8 or 16); src_bytes = 0 writes zero.
__device__ inline void cp_async_4(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}

// The dQ accumulator holds each 16 x 8 block of dQ (one mma C tile) as 128 consecutive floats in the mma's
// register order: lane l (rows l/4 and l/4 + 8, columns 2 (l%4) and 2 (l%4) + 1) owns floats 4l ... 4l + 3 (e = 2
// (row >= 8) + column % 2). A warp then adds one C tile with one 16-byte RED per thread covering 512 contiguous
// bytes (4 L2 requests) where the row-major layout took 8 rows x 32 bytes per instruction (8 requests, and twice
// the instructions with 8-byte REDs). Blocks are ordered [16-row group][d / 8]; a sequence's rows start at a
// multiple of 16: 0 for dense batches, 16 (floor(q_offset / 16) + b) for sequence b of a varlen batch, which leaves
// each sequence round_up(N_b, 16) rows before the next one starts (accumulator_rows gives the total).
__device__ inline std::int64_t accumulator_row0(int batch, std::int64_t q_offset, bool varlen) {
  return varlen ? 16 * (q_offset / 16 + batch) : 0;
}
// the float index of element (row, col) of a sequence's accumulator (row relative to the sequence's first row)
__device__ inline std::int64_t accumulator_index(std::int64_t row, int col, int head_dim) {
  const int lane = static_cast<int>(row % 8) * 4 + (col % 8) / 2;
  const int e = static_cast<int>((row / 8) % 2) * 2 + col % 2;
  return (row / 16 * (head_dim / 8) + col / 8) * 128 + lane * 4 + e;
}

// *address += (x, y, z, w) in L2 for four consecutive floats, no result returned (RED; atomicAdd compiles to ATOMG
// with a result on sm_90a): one vector RED on sm_90, four scalar ones before
__device__ inline void red_add4(float* address, float x, float y, float z, float w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(address), "f"(x), "f"(y), "f"(z), "f"(w)
               : "memory");
#else
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(address), "f"(x) : "memory");
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(address + 1), "f"(y) : "memory");
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(address + 2), "f"(z) : "memory");
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(address + 3), "f"(w) : "memory");
#endif
}

// kDropout: attention dropout with the forward's mask (core/dropout.hpp). Per m16 row block of the S / dP tile, one
// Philox draw per n8 tile pair 2 np, 2 np + 1 (rows r, r + 8, columns 2 (lane%4) + 8 q + {0, 1}: word r + 2 q, the
// pair P and dS store for row r of tile 2 np + q, its 16-bit half c key c) gives a 32-bit keep mask
// (bit 4 t + 2 r + c); then dP -> Z o dP / (1 - p) before dS = P o (dP - D), P -> Z o P for dV, and the epilogue
// multiplies dV by 1 / (1 - p).
template <class Traits, class T, bool kDropout = false>
__global__ void __launch_bounds__(Traits::kThreads) backward_kernel(const BackwardArgs args) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  using QRows = typename Traits::QRows;
  using KVRows = typename Traits::KVRows;
  constexpr int kPRowBytes = Traits::kPRowBytes;
  constexpr int kElemBytes = Traits::kElemBytes;
  extern __shared__ __align__(128) unsigned char shared[];

  const int n_block = static_cast<int>(blockIdx.x);
  const int head = static_cast<int>(blockIdx.y);
  const int batch = static_cast<int>(blockIdx.z);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;

  const CtaSequence seq = sequence_of(args.cu_seqlens_q, args.cu_seqlens_k, batch, args.seqlen_q, args.seqlen_k);
  const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k;
  const int n_start = n_block * kBlockN;
  if (n_start >= seqlen_k) return;  // the grid covers the longest sequence of the batch
  const int keys_here = min(kBlockN, seqlen_k - n_start);
  const int kv_head = head / args.group;

  const T* k = static_cast<const T*>(args.k) + seq.slot * args.k_strides.batch + (seq.k_offset + n_start) * args.k_strides.token +
               std::int64_t{kv_head} * args.k_strides.head;
  const T* v = static_cast<const T*>(args.v) + seq.slot * args.v_strides.batch + (seq.k_offset + n_start) * args.v_strides.token +
               std::int64_t{kv_head} * args.v_strides.head;
  const BlockRange range = query_block_range<Traits>(args, n_block, seqlen_q, seqlen_k);
  const int tiles = range.max - range.min;

  static_assert(sizeof(LoopScalars<T>) <= Traits::kSharedBytes - Traits::kScalarsOffset, "LoopScalars fit their slot");
  auto* scalars = reinterpret_cast<LoopScalars<T>*>(shared + Traits::kScalarsOffset);
  if (tid == 0) {
    const std::int64_t row_base = (seq.slot * args.heads + head) * args.tokens_q + seq.q_offset;  // LSE, D
    const QueryBounds first = query_bounds(args, n_start, seqlen_q, seqlen_k);
    const QueryBounds last = query_bounds(args, n_start + keys_here - 1, seqlen_q, seqlen_k);
    *scalars = LoopScalars<T>{
        static_cast<const T*>(args.q) + seq.slot * args.q_strides.batch + seq.q_offset * args.q_strides.token +
            std::int64_t{head} * args.q_strides.head,
        static_cast<const T*>(args.d_out) + seq.slot * args.do_strides.batch + seq.q_offset * args.do_strides.token +
            std::int64_t{head} * args.do_strides.head,
        args.lse + row_base,
        args.d + row_base,
        args.dq_acc + ((seq.slot * args.heads + head) * args.tokens_acc +
                       accumulator_row0(batch, seq.q_offset, args.cu_seqlens_q != nullptr)) *
                          kHeadDim,
        args.turns + (std::int64_t{batch} * args.heads + head) * args.m_blocks,
        last.lo,
        keys_here == kBlockN ? first.hi : -1,
    };
  }
  __syncthreads();
  // The pointers: copied to registers once where measured faster (kLoopPointersInRegisters), else read from shared
  // memory at each use; the mask bounds always from shared memory. Likewise the tile loads take the thread index
  // read again (thread_id) or held (tid).
  const LoopScalars<T>& shared_ls = *scalars;
  const LoopScalars<T> register_ls = Traits::kLoopPointersInRegisters ? *scalars : LoopScalars<T>{};
  const LoopScalars<T>& ls = Traits::kLoopPointersInRegisters ? register_ls : shared_ls;
  auto load_tid = [tid] { return Traits::kLoopPointersInRegisters ? thread_id() : tid; };

  const std::uint32_t s_k = smem_address(shared + Traits::kKOffset);
  const std::uint32_t s_v = smem_address(shared + Traits::kVOffset);
  const std::uint32_t s_q = smem_address(shared + Traits::kQOffset);
  const std::uint32_t s_do = smem_address(shared + Traits::kDoOffset);
  const std::uint32_t s_p = smem_address(shared + Traits::kPOffset);
  const std::uint32_t s_ds = smem_address(shared + Traits::kDsOffset);
  const std::uint32_t s_lse = smem_address(shared + Traits::kLseOffset);
  const std::uint32_t s_d = smem_address(shared + Traits::kDOffset);
  const float* lse_tile = reinterpret_cast<const float*>(shared + Traits::kLseOffset);
  const float* d_tile = reinterpret_cast<const float*>(shared + Traits::kDOffset);

  // this thread in the mma C layout: rows lane/4 and lane/4 + 8, columns 2 (lane%4) + {0,1} of each 16 x 8 tile,
  // computed where used from the thread index read again (lane_id, thread_id: fewer registers across the loop)
  // warp tiles of the three phases
  const int sdp_m = warp % Traits::kWarpsMSdp, sdp_n = warp / Traits::kWarpsMSdp;
  const int dkv_n = warp % Traits::kWarpsNdKV, dkv_d = warp / Traits::kWarpsNdKV;
  const int dq_m = warp % Traits::kWarpsMdQ, dq_d = warp / Traits::kWarpsMdQ;
  const int sdp_row0 = sdp_m * Traits::kSdpRows, sdp_col0 = sdp_n * Traits::kSdpCols;
  const int dkv_row0 = dkv_n * Traits::kDkvRows, dkv_col0 = dkv_d * Traits::kDkvCols;
  const int dq_row0 = dq_m * Traits::kDqRows, dq_col0 = dq_d * Traits::kDqCols;

  // lane addresses: S / dP (A = Q, dO [m][k]; B = K, V [n][k]), dK / dV (A = P, dS [k][m] .trans; B = Q, dO [k][n]
  // .trans), dQ (A = dS [m][k]; B = K [k][n] .trans)
  const std::uint32_t a_mk = tile_lane_offset<QRows>(lane, 0, 1, sdp_row0, 0);
  const std::uint32_t b_nk = tile_lane_offset<KVRows>(lane, 1, 0, sdp_col0, 0);
  const std::uint32_t a_km = lane_offset<kPRowBytes, kElemBytes>(lane, 1, 0) + dkv_row0 * kElemBytes;
  const std::uint32_t b_kn = tile_lane_offset<QRows>(lane, 0, 1, 0, dkv_col0 / Traits::kChunkElems);
  const std::uint32_t a_ds = lane_offset<kPRowBytes, kElemBytes>(lane, 0, 1) + dq_row0 * kPRowBytes;
  const std::uint32_t b_k = tile_lane_offset<KVRows>(lane, 0, 1, 0, dq_col0 / Traits::kChunkElems);

  float acc_dk[Traits::kDkvMTiles][Traits::kDkvNTiles][4];
  float acc_dv[Traits::kDkvMTiles][Traits::kDkvNTiles][4];
#pragma unroll
  for (int mt = 0; mt < Traits::kDkvMTiles; ++mt) {
#pragma unroll
    for (int t = 0; t < Traits::kDkvNTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc_dk[mt][t][e] = 0.0f;
        acc_dv[mt][t][e] = 0.0f;
      }
    }
  }

  // loads of query block m: Q and dO rows past N_q, LSE and D entries past N_q are zero
  auto load_q = [&](int m_block, int stage) {
    const int m0 = m_block * kBlockM;
    load_tile<Traits, QRows, kBlockM>(s_q + stage * Traits::kQTileBytes, ls.q + m0 * args.q_strides.token,
                                      args.q_strides.token, seqlen_q - m0, load_tid());
  };
  auto load_do = [&](int m_block, int stage) {
    const int m0 = m_block * kBlockM;
    load_tile<Traits, QRows, kBlockM>(s_do + stage * Traits::kQTileBytes, ls.d_out + m0 * args.do_strides.token,
                                      args.do_strides.token, seqlen_q - m0, load_tid());
  };
  auto load_rows = [&](int m_block, int stage) {  // LSE and D, always two stages
    const int m0 = m_block * kBlockM;
    if (tid < kBlockM) {
      const bool valid = m0 + tid < seqlen_q;
      cp_async_4(s_lse + (stage * kBlockM + tid) * 4, valid ? ls.lse + m0 + tid : ls.lse, valid ? 4 : 0);
      cp_async_4(s_d + (stage * kBlockM + tid) * 4, valid ? ls.dsum + m0 + tid : ls.dsum, valid ? 4 : 0);
    }
  };

  // prologue: K, V and the first query block (one group)
  if (tiles > 0) {
    load_tile<Traits, KVRows, kBlockN>(s_k, k, args.k_strides.token, keys_here, tid);
    load_tile<Traits, KVRows, kBlockN>(s_v, v, args.v_strides.token, keys_here, tid);
    load_q(range.min, 0);
    load_do(range.min, 0);
    load_rows(range.min, 0);
    cp_async_commit();
  }

  for (int it = 0; it < tiles; ++it) {
    const int m_block = range.min + it;
    const int m_start = m_block * kBlockM;
    const int stage = it % 2;
    const int q_stage = Traits::kStagesQ == 2 ? stage : 0;
    const int do_stage = Traits::kStagesDo == 2 ? stage : 0;
    cp_async_wait<0>();  // block i (everything in flight)
    __syncthreads();     // ... visible to all; every warp is past block i-1
    if (it + 1 < tiles) {  // block i+1 into the free buffers (their last readers were in block i-1)
      if (Traits::kStagesQ == 2) load_q(m_block + 1, 1 - stage);
      if (Traits::kStagesDo == 2) load_do(m_block + 1, 1 - stage);
      load_rows(m_block + 1, 1 - stage);
      cp_async_commit();
    }
    const std::uint32_t q_tile = s_q + q_stage * Traits::kQTileBytes;
    const std::uint32_t do_tile = s_do + do_stage * Traits::kQTileBytes;
    const float* lse_here = lse_tile + stage * kBlockM;
    const float* d_here = d_tile + stage * kBlockM;

    // S = Q K^T and dP = dO V^T on this warp's kSdpRows x kSdpCols tile
    {
      float s[Traits::kSdpMTiles][Traits::kSdpNTiles][4];
      float dp[Traits::kSdpMTiles][Traits::kSdpNTiles][4];
#pragma unroll
      for (int mt = 0; mt < Traits::kSdpMTiles; ++mt) {
#pragma unroll
        for (int t = 0; t < Traits::kSdpNTiles; ++t) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][t][e] = 0.0f;
            dp[mt][t][e] = 0.0f;
          }
        }
      }
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        std::uint32_t a_q[Traits::kSdpMTiles][4], a_o[Traits::kSdpMTiles][4];
#pragma unroll
        for (int mt = 0; mt < Traits::kSdpMTiles; ++mt) {
          ldmatrix_x4(a_q[mt], pair_address<QRows>(q_tile + a_mk, kk) + mt * 16 * QRows::kRowBytes);
          ldmatrix_x4(a_o[mt], pair_address<QRows>(do_tile + a_mk, kk) + mt * 16 * QRows::kRowBytes);
        }
#pragma unroll
        for (int np = 0; np < Traits::kSdpNTiles / 2; ++np) {
          std::uint32_t b[4];
          ldmatrix_x4(b, pair_address<KVRows>(s_k + b_nk, kk) + np * 16 * KVRows::kRowBytes);
#pragma unroll
          for (int mt = 0; mt < Traits::kSdpMTiles; ++mt) {
            Elem<T>::mma(s[mt][2 * np], a_q[mt], b[0], b[1]);
            Elem<T>::mma(s[mt][2 * np + 1], a_q[mt], b[2], b[3]);
          }
          ldmatrix_x4(b, pair_address<KVRows>(s_v + b_nk, kk) + np * 16 * KVRows::kRowBytes);
#pragma unroll
          for (int mt = 0; mt < Traits::kSdpMTiles; ++mt) {
            Elem<T>::mma(dp[mt][2 * np], a_o[mt], b[0], b[1]);
            Elem<T>::mma(dp[mt][2 * np + 1], a_o[mt], b[2], b[3]);
          }
        }
      }

      // P = exp2(S c - LSE log2 e), dS = P (dP - D), into shared memory in the dtype. Masked entries (boundary
      // blocks only) and rows past N_q get P = 0 by selection, so a fully masked row (LSE = -inf) adds nothing.
      const bool boundary = m_start < shared_ls.full_lo || m_start + kBlockM - 1 > shared_ls.full_hi;
      const int lane_here = lane_id();
      const int row_base = sdp_row0 + lane_here / 4;      // in the block
      const int col_base = sdp_col0 + 2 * (lane_here % 4);  // in the key block
#pragma unroll
      for (int mt = 0; mt < Traits::kSdpMTiles; ++mt) {
        std::uint32_t keep = 0;  // kDropout: bit 4 t + 2 r + c set where the weight is kept
        if constexpr (kDropout) {
          static_assert(Traits::kSdpNTiles * 4 <= 32, "the keep mask of an m16 row block fits 32 bits");
          const std::uint64_t subsequence = std::uint64_t{blockIdx.z} * static_cast<std::uint64_t>(args.heads) + blockIdx.y;
          // one draw per n8 tile pair (2 np, 2 np + 1), one at a time (unrolled, all stay live): word r + 2 q holds
          // row r of tile 2 np + q, its halves keys c = 0, 1, the pair packed into P's and dS's stores below
#pragma unroll 1
          for (int np = 0; np < Traits::kSdpNTiles / 2; ++np) {
            const Philox4x32 words =
                dropout_draw(args.dropout_seed, args.dropout_offset, subsequence,
                             static_cast<std::uint32_t>(m_start + row_base + mt * 16),
                             static_cast<std::uint32_t>(n_start + col_base + np * 16));
            for (int w = 0; w < 4; ++w) {
              keep |= dropout_keep_bits(words.x[w], args.dropout_threshold) << (8 * np + 4 * (w / 2) + 2 * (w % 2));
            }
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = row_base + mt * 16 + 8 * r;
          const float row_lse = lse_here[row] * kLog2e;
          const float row_d = d_here[row];
          KeyBounds kb{0, kBlockN - 1 + n_start};
          if (boundary) {
            kb = key_bounds(args.window_left, args.window_right, m_start + row, seqlen_q, seqlen_k);
            if (m_start + row >= seqlen_q) kb = {1, 0};
          }
#pragma unroll
          for (int t = 0; t < Traits::kSdpNTiles; ++t) {
            float pv[2], dsv[2];
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              float p = exp2_ftz(fmaf(s[mt][t][2 * r + c], args.scale_log2, -row_lse));
              if (boundary) {
                const int col = n_start + col_base + t * 8 + c;
                p = (col >= kb.lo && col <= kb.hi) ? p : 0.0f;
              }
              if constexpr (kDropout) {
                const bool kept = ((keep >> (4 * t + 2 * r + c)) & 1u) != 0;
                pv[c] = kept ? p : 0.0f;
                dsv[c] = p * ((kept ? dp[mt][t][2 * r + c] * args.rp_dropout : 0.0f) - row_d);
              } else {
                pv[c] = p;
                dsv[c] = p * (dp[mt][t][2 * r + c] - row_d);
              }
            }
            const int offset = row * kPRowBytes + (col_base + t * 8) * kElemBytes;
            *reinterpret_cast<std::uint32_t*>(shared + Traits::kPOffset + offset) = Elem<T>::pack(pv[0], pv[1]);
            *reinterpret_cast<std::uint32_t*>(shared + Traits::kDsOffset + offset) = Elem<T>::pack(dsv[0], dsv[1]);
          }
        }
      }
    }
    __syncthreads();  // P and dS complete

    // dV += P^T dO, dK += dS^T Q on this warp's kDkvRows keys x kDkvCols columns
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      std::uint32_t a_p[Traits::kDkvMTiles][4], a_s[Traits::kDkvMTiles][4];
#pragma unroll
      for (int mt = 0; mt < Traits::kDkvMTiles; ++mt) {
        ldmatrix_x4_trans(a_p[mt], s_p + a_km + kk * 16 * kPRowBytes + mt * 16 * kElemBytes);
        ldmatrix_x4_trans(a_s[mt], s_ds + a_km + kk * 16 * kPRowBytes + mt * 16 * kElemBytes);
      }
#pragma unroll
      for (int np = 0; np < Traits::kDkvNTiles / 2; ++np) {
        std::uint32_t b[4];
        ldmatrix_x4_trans(b, pair_address<QRows>(do_tile + b_kn, np) + kk * 16 * QRows::kRowBytes);
#pragma unroll
        for (int mt = 0; mt < Traits::kDkvMTiles; ++mt) {
          Elem<T>::mma(acc_dv[mt][2 * np], a_p[mt], b[0], b[1]);
          Elem<T>::mma(acc_dv[mt][2 * np + 1], a_p[mt], b[2], b[3]);
        }
        ldmatrix_x4_trans(b, pair_address<QRows>(q_tile + b_kn, np) + kk * 16 * QRows::kRowBytes);
#pragma unroll
        for (int mt = 0; mt < Traits::kDkvMTiles; ++mt) {
          Elem<T>::mma(acc_dk[mt][2 * np], a_s[mt], b[0], b[1]);
          Elem<T>::mma(acc_dk[mt][2 * np + 1], a_s[mt], b[2], b[3]);
        }
      }
    }

    if ((Traits::kStagesQ == 1 || Traits::kStagesDo == 1) && it + 1 < tiles) {
      __syncthreads();  // every warp is past its reads of Q and dO: refill the single buffers during dQ
      if (Traits::kStagesQ == 1) load_q(m_block + 1, 0);
      if (Traits::kStagesDo == 1) load_do(m_block + 1, 0);
      cp_async_commit();
    }

    // dQ_i += dS K on this warp's kDqRows x kDqCols tile, in kDqPasses column passes, each added to the fp32
    // accumulator with one 16-byte RED per C tile (the accumulator's fragment order); an m16 block that starts past
    // N_q is skipped, the rows past N_q inside a block add zeros (dS = 0 there) to the sequence's padding rows.
    // Deterministic mode waits for the key blocks before this one (see the file comment) before its first RED.
    std::int64_t turn_target = -1;
#pragma unroll 1
    for (int pass = 0; pass < Traits::kDqPasses; ++pass) {
      float c[Traits::kDqMTiles][Traits::kDqPassTiles][4];
#pragma unroll
      for (int mt = 0; mt < Traits::kDqMTiles; ++mt) {
#pragma unroll
        for (int t = 0; t < Traits::kDqPassTiles; ++t) {
#pragma unroll
          for (int e = 0; e < 4; ++e) c[mt][t][e] = 0.0f;
        }
      }
      const std::uint32_t b_pass = pair_address<KVRows>(s_k + b_k, pass * Traits::kDqPassTiles / 2);
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        std::uint32_t a[Traits::kDqMTiles][4];
#pragma unroll
        for (int mt = 0; mt < Traits::kDqMTiles; ++mt) {
          ldmatrix_x4(a[mt], s_ds + a_ds + mt * 16 * kPRowBytes + kk * 16 * kElemBytes);
        }
#pragma unroll
        for (int np = 0; np < Traits::kDqPassTiles / 2; ++np) {
          std::uint32_t b[4];
          ldmatrix_x4_trans(b, pair_address<KVRows>(b_pass, np) + kk * 16 * KVRows::kRowBytes);
#pragma unroll
          for (int mt = 0; mt < Traits::kDqMTiles; ++mt) {
            Elem<T>::mma(c[mt][2 * np], a[mt], b[0], b[1]);
            Elem<T>::mma(c[mt][2 * np + 1], a[mt], b[2], b[3]);
          }
        }
      }

      if (args.deterministic && pass == 0) {
        if (tid == 0) {
          const int turn = turn_of<Traits>(args, n_block, m_block, seqlen_q, seqlen_k);
          while (load_acquire(ls.turns + m_block) != turn) {
          }
          turn_target = turn + 1;
        }
        __syncthreads();
      }
#pragma unroll
      for (int mt = 0; mt < Traits::kDqMTiles; ++mt) {
        const int row0 = m_start + dq_row0 + mt * 16;
        if (row0 >= seqlen_q) continue;
        float* dst = ls.dq_acc + (std::int64_t{row0} * kHeadDim + (dq_col0 + pass * Traits::kDqPassTiles * 8) * 16) +
                     lane * 4;
#pragma unroll
        for (int t = 0; t < Traits::kDqPassTiles; ++t) {
          red_add4(dst + t * 128, c[mt][t][0], c[mt][t][1], c[mt][t][2], c[mt][t][3]);
        }
      }
    }
    if (args.deterministic) {  // pass the turn on once every thread's adds are visible
      __threadfence();
      __syncthreads();
      if (tid == 0) store_release(ls.turns + m_block, static_cast<int>(turn_target));
    }
  }

  // epilogue: dK = scale dK, dV; rows past N_k are not written. A CTA that no query sees writes zeros. The
  // sequence and the lane are read again rather than held across the loop (registers).
  const CtaSequence seq_end = sequence_of(args.cu_seqlens_q, args.cu_seqlens_k, batch, args.seqlen_q, args.seqlen_k);
  const int keys_end = min(kBlockN, seq_end.seqlen_k - n_start);
  const int tid_end = thread_id(), lane_end = tid_end % 32;
  const int key0 = tid_end / 32 % Traits::kWarpsNdKV * Traits::kDkvRows;           // dkv_row0
  const int col0 = tid_end / 32 / Traits::kWarpsNdKV * Traits::kDkvCols + 2 * (lane_end % 4);  // dkv_col0 + lane's
  if constexpr (kDropout) {  // dV = (Z o P)^T dO / (1 - p)
#pragma unroll
    for (int mt = 0; mt < Traits::kDkvMTiles; ++mt) {
#pragma unroll
      for (int t = 0; t < Traits::kDkvNTiles; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dv[mt][t][e] *= args.rp_dropout;
      }
    }
  }
#pragma unroll
  for (int mt = 0; mt < Traits::kDkvMTiles; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = key0 + mt * 16 + lane_end / 4 + 8 * r;
      if (key >= keys_end) continue;
      const std::int64_t token = seq_end.k_offset + n_start + key;
      if (args.group == 1) {
        T* dk = static_cast<T*>(args.dk) + seq_end.slot * args.dk_strides.batch + token * args.dk_strides.token +
                std::int64_t{head} * args.dk_strides.head;
        T* dv = static_cast<T*>(args.dv) + seq_end.slot * args.dv_strides.batch + token * args.dv_strides.token +
                std::int64_t{head} * args.dv_strides.head;
#pragma unroll
        for (int t = 0; t < Traits::kDkvNTiles; ++t) {
          const int col = col0 + t * 8;
          *reinterpret_cast<std::uint32_t*>(dk + col) =
              Elem<T>::pack(acc_dk[mt][t][2 * r] * args.scale, acc_dk[mt][t][2 * r + 1] * args.scale);
          *reinterpret_cast<std::uint32_t*>(dv + col) = Elem<T>::pack(acc_dv[mt][t][2 * r], acc_dv[mt][t][2 * r + 1]);
        }
      } else {
        const std::int64_t row = (seq_end.slot * args.heads + head) * args.tokens_k + token;
        float* dk = args.dk_part + row * kHeadDim;
        float* dv = args.dv_part + row * kHeadDim;
#pragma unroll
        for (int t = 0; t < Traits::kDkvNTiles; ++t) {
          const int col = col0 + t * 8;
          *reinterpret_cast<float2*>(dk + col) =
              make_float2(acc_dk[mt][t][2 * r] * args.scale, acc_dk[mt][t][2 * r + 1] * args.scale);
          *reinterpret_cast<float2*>(dv + col) = make_float2(acc_dv[mt][t][2 * r], acc_dv[mt][t][2 * r + 1]);
        }
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

// dQ: grid (row quads of the longest sequence, H, B); a thread takes 4 consecutive columns of one row, two float2 of
// the accumulator's fragment order.
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads) convert_dq_kernel(const BackwardArgs args) {
  const int head = static_cast<int>(blockIdx.y);
  const int batch = static_cast<int>(blockIdx.z);
  const CtaSequence seq = sequence_of(args.cu_seqlens_q, args.cu_seqlens_k, batch, args.seqlen_q, args.seqlen_k);
  const float* acc = args.dq_acc + ((seq.slot * args.heads + head) * args.tokens_acc +
                                    accumulator_row0(batch, seq.q_offset, args.cu_seqlens_q != nullptr)) *
                                       args.head_dim;
  T* dq = static_cast<T*>(args.dq) + seq.slot * args.dq_strides.batch + seq.q_offset * args.dq_strides.token + head * args.dq_strides.head;
  const int quads = args.head_dim / 4;
  const std::int64_t total = std::int64_t{seq.seqlen_q} * quads;
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    const std::int64_t row = i / quads;
    const int col = static_cast<int>(i % quads) * 4;
    const std::int64_t at = accumulator_index(row, col, args.head_dim);  // columns col, col + 1; then + 4 floats
    const float2 lo = *reinterpret_cast<const float2*>(acc + at);
    const float2 hi = *reinterpret_cast<const float2*>(acc + at + 4);
    store4(dq + row * args.dq_strides.token + col,
           make_float4(lo.x * args.scale, lo.y * args.scale, hi.x * args.scale, hi.y * args.scale));
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
    store4(static_cast<T*>(args.dk) + slot * args.dk_strides.batch + token * args.dk_strides.token + kv_head * args.dk_strides.head + col, dk);
    store4(static_cast<T*>(args.dv) + slot * args.dv_strides.batch + token * args.dv_strides.token + kv_head * args.dv_strides.head + col, dv);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side

// The workspace of one backward, carved from one allocation in this order, each part rounded up to 256 bytes:
//   dQ accumulator (fp32, [slots, H, accumulator_rows, d] in fragment order) | turn counters (int32,
//   [B, H, ceil(N_q / kBlockM)])   zeroed together
//   D (fp32, [slots, H, T_q])
//   dK and dV partials (fp32, [slots, H, T_k, d] each; GQA/MQA only)
struct WorkspacePlan {
  std::int64_t dq_acc = 0, turns = 0, d = 0, partial = 0;
  [[nodiscard]] std::int64_t total() const { return dq_acc + turns + d + 2 * partial; }
};

// f(std::integral_constant<int, d>{}) for the compiled head dim d = head_dim; Unsupported for any other.
template <class F>
decltype(auto) with_head_dim(std::int64_t head_dim, F&& f) {
  switch (head_dim) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 96: return f(std::integral_constant<int, 96>{});
    case 128: return f(std::integral_constant<int, 128>{});
    case 256: return f(std::integral_constant<int, 256>{});
    default: break;
  }
  throw Unsupported("flash2: no kernel for head_dim = " + std::to_string(head_dim));
}

int block_m_of(std::int64_t head_dim) {
  return with_head_dim(head_dim, [](auto d) { return BackwardTiles<decltype(d)::value, 2>::kBlockM; });
}

// Rows per (slot, head) of the dQ accumulator (its fragment order, see accumulator_row0): round_up(N_q, 16) for a
// dense batch; round_up(total_q, 16) + 16 B for a varlen batch, where sequence b starts at 16 (floor(q_offset / 16)
// + b) and needs round_up(N_b, 16) rows.
std::int64_t accumulator_rows(const Problem& p) {
  return p.is_varlen() ? round_up(p.total_q(), 16) + 16 * p.batch : round_up(p.seqlen_q, 16);
}

WorkspacePlan plan_workspace(const Problem& p) {
  // rows of the Q side over the batch: B N_q for dense batches (total_q() is then N_q), total_q for varlen
  const std::int64_t rows_q = p.heads * (p.is_varlen() ? p.total_q() : p.batch * p.seqlen_q);
  const std::int64_t rows_acc = p.heads * (p.is_varlen() ? 1 : p.batch) * accumulator_rows(p);
  const std::int64_t rows_k = p.heads * (p.is_varlen() ? p.total_k() : p.batch * p.seqlen_k);
  const std::int64_t m_blocks = (p.seqlen_q + block_m_of(p.head_dim) - 1) / block_m_of(p.head_dim);
  WorkspacePlan plan;
  plan.dq_acc = round_up(rows_acc * p.head_dim * 4, kPartAlignment);
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

template <class Traits, class T>
void launch_main(const BackwardArgs& args, const Problem& p, cudaStream_t stream) {
  const std::int64_t n_blocks = (p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
  if (n_blocks == 0 || p.batch == 0 || p.heads == 0) return;
  auto* kernel = args.dropout ? backward_kernel<Traits, T, true> : backward_kernel<Traits, T>;
  FL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSharedBytes));
  const dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
  kernel<<<grid, Traits::kThreads, Traits::kSharedBytes, stream>>>(args);
  FL_CUDA_CHECK_LAUNCH("flash2 backward_kernel");
}

template <class T, int kHeadDim>
void launch_backward(const BackwardArgs& args, const Problem& p, void* zero, std::int64_t zero_bytes,
                     cudaStream_t stream) {
  using Small = BackwardTiles<kHeadDim, sizeof(T)>;
  using Large = typename BackwardTilesOf<kHeadDim, sizeof(T)>::large;
  // the double-buffered tiles where the GPU has the shared memory, else the sm_80 ones (checked before any launch)
  const bool large = Large::kSharedBytes <= shared_bytes_per_block();
  if (!large) require_shared_bytes(Small::kSharedBytes, "backward at head_dim " + std::to_string(kHeadDim));
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
  if (large) {
    launch_main<Large, T>(args, p, stream);
  } else {
    launch_main<Small, T>(args, p, stream);
  }
  // 3. dQ in the dtype
  if (rows_q > 0) {
    const dim3 grid(elementwise_blocks(std::int64_t{args.seqlen_q} * kHeadDim / 4), static_cast<unsigned>(p.heads),
                    static_cast<unsigned>(p.batch));
    convert_dq_kernel<T><<<grid, kElementwiseThreads, 0, stream>>>(args);
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
  with_head_dim(p.head_dim,
                [&](auto d) { launch_backward<T, decltype(d)::value>(args, p, zero, zero_bytes, stream); });
}

}  // namespace

int backward_block_n(std::int64_t head_dim) {
  return with_head_dim(head_dim, [](auto d) { return BackwardTiles<decltype(d)::value, 2>::kBlockN; });
}

template <class T, int kHeadDim>
void add_backward_kernels(std::vector<KernelInfo>& list) {
  using Small = BackwardTiles<kHeadDim, sizeof(T)>;
  using Large = typename BackwardTilesOf<kHeadDim, sizeof(T)>::large;
  auto tile = [](auto traits) {
    using Traits = decltype(traits);
    return "backward d=" + std::to_string(kHeadDim) + " " + std::to_string(Traits::kBlockM) + "x" +
           std::to_string(Traits::kBlockN) + (Traits::kStagesDo == 2 ? " dO x2 " : " ") +
           std::string(name(Elem<T>::kDType));
  };
  list.push_back(kernel_info(backward_kernel<Small, T>, tile(Small{}), Small::kSharedBytes));
  list.push_back(kernel_info(backward_kernel<Small, T, true>, tile(Small{}) + " dropout", Small::kSharedBytes));
  if constexpr (!std::is_same_v<Small, Large>) {
    list.push_back(kernel_info(backward_kernel<Large, T>, tile(Large{}), Large::kSharedBytes));
    list.push_back(kernel_info(backward_kernel<Large, T, true>, tile(Large{}) + " dropout", Large::kSharedBytes));
  }
}

template <class T>
void add_backward_kernels(std::vector<KernelInfo>& list) {
  add_backward_kernels<T, 32>(list);
  add_backward_kernels<T, 64>(list);
  add_backward_kernels<T, 96>(list);
  add_backward_kernels<T, 128>(list);
  add_backward_kernels<T, 256>(list);
  const std::string dtype(name(Elem<T>::kDType));
  list.push_back(kernel_info(preprocess_kernel<T>, "backward preprocess " + dtype, 0));
  list.push_back(kernel_info(convert_dq_kernel<T>, "backward dQ conversion " + dtype, 0));
  list.push_back(kernel_info(sum_groups_kernel<T>, "backward GQA sums " + dtype, 0));
}

std::int64_t backward_workspace_bytes(const Problem& p, DType) {
  return plan_workspace(p).total();
}

std::vector<KernelInfo> backward_kernels() {
  std::vector<KernelInfo> list;
  add_backward_kernels<__half>(list);
  add_backward_kernels<__nv_bfloat16>(list);
  return list;
}

void backward(const AttentionParams& params, const LaunchContext& ctx) {
  detail::check_launch("flash2", params, Pass::bwd, supports);
  require_sm80();
  const Problem& p = params.problem;

  const WorkspacePlan plan = plan_workspace(p);
  const Workspace workspace(ctx.workspace, static_cast<std::size_t>(plan.total()), "flash2 backward");
  detail::Carver carve(workspace, "flash2");

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
  args.q_strides = params.q_strides;
  args.k_strides = params.k_strides;
  args.v_strides = params.v_strides;
  args.o_strides = params.o_strides;
  args.do_strides = params.d_out_strides;
  args.dq_strides = params.dq_strides;
  args.dk_strides = params.dk_strides;
  args.dv_strides = params.dv_strides;
  args.tokens_q = p.is_varlen() ? p.total_q() : p.seqlen_q;
  args.tokens_k = p.is_varlen() ? p.total_k() : p.seqlen_k;
  args.tokens_acc = accumulator_rows(p);
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
  args.window_left = window_arg(w.left);
  args.window_right = window_arg(w.right);
  args.scale = static_cast<float>(p.scale());
  args.scale_log2 = static_cast<float>(p.scale() * kLog2eDouble);
  args.deterministic = params.options.deterministic;
  args.dropout = p.dropout.active();
  args.dropout_seed = p.dropout.seed;
  args.dropout_offset = p.dropout.offset;
  args.dropout_threshold = dropout_keep_threshold16(p.dropout.p);
  args.rp_dropout = static_cast<float>(1.0 / (1.0 - p.dropout.p));
  args.dq_acc = reinterpret_cast<float*>(carve.take(plan.dq_acc));
  args.turns = reinterpret_cast<int*>(carve.take(plan.turns));
  args.d = reinterpret_cast<float*>(carve.take(plan.d));
  args.dk_part = reinterpret_cast<float*>(carve.take(plan.partial));  // unused without GQA (partial = 0)
  args.dv_part = reinterpret_cast<float*>(carve.take(plan.partial));
  // the turn counters follow the accumulator directly, so one zeroing pass covers both
  void* zero = workspace.as<char>();
  const std::int64_t zero_bytes = plan.dq_acc + plan.turns;

  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  switch (params.dtype) {
    case DType::fp16: return backward_dtype<__half>(args, p, zero, zero_bytes, stream);
    case DType::bf16: return backward_dtype<__nv_bfloat16>(args, p, zero, zero_bytes, stream);
    default: break;
  }
  throw Unsupported("flash2: no kernel for dtype " + std::string(name(params.dtype)) + " (fp16, bf16)");
}

}  // namespace flash2
}  // namespace flashlab::kernels
