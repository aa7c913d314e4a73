// The `flash2` variant, forward: FlashAttention-2 (Dao, 2023, Algorithm 1) on tensor cores, written directly in
// PTX-level CUDA (mma.sync.m16n8k16 with fp32 accumulation, ldmatrix, cp.async), for fp16 and bf16.
//
// One CTA per (query block of kBlockM rows, head h, batch entry b); kv head g = h / (H / H_kv). Its warps each own
// kMTiles m16 row blocks (16 or 32 query rows). The CTA
//   prologue:  loads its Q tile (cp.async, rows past N_q zero-filled) and the first K tile;
//   main loop: over the K/V tiles its rows can see (the tile range follows from the key ranges of its first and
//              last query row, so tiles the mask hides entirely are never loaded), with one K and one V buffer:
//              V of tile j loads while S = Q K^T of tile j is computed, K of tile j+1 while P V of tile j is:
//                S = Q K^T                     mma.sync, A = Q (ldmatrix.x4), B = K (ldmatrix.x4), fp32 in registers;
//                                              each K fragment feeds the warp's kMTiles row blocks
//                mask                          only on boundary tiles: causal / window edges and keys past N_k
//                t = rowmax S c                c = scale log2(e); fp32, shared by the 4 threads of an mma row
//                m_i' = t if t > m_i + 8       the running max (of S c) moves only by more than 2^8 in P (lazy):
//                       else m_i               l_i, acc *= 2^(m_i - m_i') then, skipped by a warp none of whose
//                                              rows moved (the common case after a row's first tiles)
//                P = exp2(S c - m_i')          one FMA + MUFU.EX2 per score; P <= 2^8, exact in the end since
//                l_i += rowsum P               O = acc / l_i and LSE use the same m_i
//                acc += P V                    P converted to fp16/bf16 in registers is the A operand directly (the
//                                              C fragment of S has the A fragment's layout), B = V (ldmatrix.x4.trans)
//   epilogue:  O = acc / l_i, staged through the Q tile for 16-byte stores; LSE = m_i ln 2 + ln l_i (fp32).
// A row that sees no key keeps m_i = -inf: its shift is taken as 0 (not -inf, which would give -inf - -inf = NaN),
// so P = 0, l_i = 0, and the epilogue writes O = 0 and LSE = -inf.
//
// The forward needs no workspace: LSE is an output. The backward is in flash2_bwd.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "flash2/flash2.hpp"
#include "flash2/flash2_common.cuh"
#include "flash2/kernel_traits.hpp"
#include "flashlab/core/bytes.hpp"
#include "flashlab/core/dropout.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/kernels/device.hpp"
#include "src/check.hpp"
#include "src/flash_data_path.hpp"

namespace flashlab::kernels {
namespace flash2 {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Launch arguments (one flat struct, by value)

struct ForwardArgs {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;
  Strides q_strides;  // in elements
  Strides k_strides;
  Strides v_strides;
  Strides o_strides;
  std::int64_t lse_stride;           // N_q (dense) or total_q (varlen)
  const std::int32_t* cu_seqlens_q;  // null for dense batches
  const std::int32_t* cu_seqlens_k;
  int seqlen_q;  // dense lengths (varlen: read per sequence from cu_seqlens)
  int seqlen_k;
  int heads;
  int group;                 // H / H_kv
  int window_left;  // effective window (causal folded in), -1 = unbounded (also for windows >= 2^30, see below)
  int window_right;
  float scale;       // softmax scale
  float scale_log2;  // softmax scale * log2(e)
  // dropout (kDropout kernels only; core/dropout.hpp)
  std::uint64_t dropout_seed;
  std::uint64_t dropout_offset;
  std::uint32_t dropout_threshold;  // a weight is kept when its 16-bit piece is below this (dropout_keep_threshold16)
  float rp_dropout;                 // 1 / (1 - p)
};

// ---------------------------------------------------------------------------------------------------------------
// The kernel

// The lazy running max of the online softmax: P = exp2(S c - m c) may reach 2^kLazyLog2 before m moves.
constexpr float kLazyLog2 = 8.0f;

constexpr float kLn2 = 0.6931471805599453f;

// Whether a row whose running max (of S c) is m, -inf while it has seen no key, moves it to a tile max `tile`.
__device__ inline bool moves_max(float m, float tile) {
  return m == kNegInf ? tile != kNegInf : tile - m > kLazyLog2;
}

// kRowSumInDtype: the test-only fault Fault::row_sum_in_dtype (l_i rounded to T after every tile's addition),
// instantiated for one tile only (kFaultHeadDim's default); every real launch has it false.
// kDropout: attention dropout (core/dropout.hpp), instantiated for kDropoutConfigs only: after l_i has taken the
// tile's P, P is packed into the dtype and each weight whose 16-bit Philox piece is not below the threshold is set to
// 0 before P V (one draw per m16 row block and k16 step of P V: word r + 2 q masks A register a[r + 2 q], rows
// r, r + 8 and columns 2 (lane%4) + 8 q + {0, 1}, half c key c), and the epilogue multiplies O by 1 / (1 - p) with
// 1 / l_i. LSE comes from the undropped P.
template <class Traits, class T, bool kRowSumInDtype = false, bool kDropout = false>
__global__ void __launch_bounds__(Traits::kThreads) forward_kernel(const ForwardArgs args) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kMTiles = Traits::kMTiles;
  using QRows = typename Traits::QRows;
  using KVRows = typename Traits::KVRows;
  constexpr int kElemBytes = Traits::kElemBytes;
  extern __shared__ __align__(128) unsigned char shared[];

  const int m_block = static_cast<int>(blockIdx.x);
  const int head = static_cast<int>(blockIdx.y);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;

  const CtaSequence seq = sequence_of(args.cu_seqlens_q, args.cu_seqlens_k, static_cast<int>(blockIdx.z), args.seqlen_q,
                                   args.seqlen_k);
  const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k;
  const int m_start = m_block * kBlockM;
  if (m_start >= seqlen_q) return;  // the grid covers the longest sequence of the batch
  const int rows_here = min(kBlockM, seqlen_q - m_start);
  const int kv_head = head / args.group;

  const T* q = static_cast<const T*>(args.q) + seq.slot * args.q_strides.batch + (seq.q_offset + m_start) * args.q_strides.token +
               std::int64_t{head} * args.q_strides.head;
  const T* k = static_cast<const T*>(args.k) + seq.slot * args.k_strides.batch + seq.k_offset * args.k_strides.token +
               std::int64_t{kv_head} * args.k_strides.head;
  const T* v = static_cast<const T*>(args.v) + seq.slot * args.v_strides.batch + seq.k_offset * args.v_strides.token +
               std::int64_t{kv_head} * args.v_strides.head;

  // K/V tiles this CTA visits: key ranges are monotone in the query row, so the union over the CTA's rows runs
  // from the first row's lo to the last row's hi.
  const KeyBounds first = key_bounds(args.window_left, args.window_right, m_start, seqlen_q, seqlen_k);
  const KeyBounds last = key_bounds(args.window_left, args.window_right, m_start + rows_here - 1, seqlen_q, seqlen_k);
  const int n_block_min = first.lo / kBlockN;
  const int n_block_max = last.hi < 0 ? 0 : (last.hi + kBlockN) / kBlockN;  // exclusive
  // keys every row of the CTA sees: tiles inside [last.lo, first.hi] need no mask
  const int full_lo = last.lo, full_hi = first.hi;

  const std::uint32_t s_q = smem_address(shared + Traits::kQOffset);
  const std::uint32_t s_k = smem_address(shared + Traits::kKOffset);
  const std::uint32_t s_v = smem_address(shared + Traits::kVOffset);

  // this thread's rows: in row block mt of the warp, rows lane/4 and lane/4 + 8 (mma C layout), columns
  // 2 (lane%4) + {0,1} of each n8 tile. The mask and the epilogue read the thread index again (thread_id,
  // lane_id) rather than keep these in registers across the main loop: at 255 registers ptxas spilled them.
  const int warp_row0 = warp * Traits::kRowsPerWarp;

  float acc[kMTiles][Traits::kOTiles][4];
  float m_i[kMTiles][2];  // running row max of S c (c = scale log2 e), the shift of P
  float l_i[kMTiles][2];  // running row sum of P, this thread's columns only (reduced in the epilogue)
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int t = 0; t < Traits::kOTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][t][e] = 0.0f;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m_i[mt][r] = kNegInf;
      l_i[mt][r] = 0.0f;
    }
  }

  // ldmatrix lane addresses (flash2_common.cuh): A = Q [m][k], B = K [n][k], B = V [k][n] (.trans)
  const std::uint32_t q_lane = s_q + tile_lane_offset<QRows>(lane, 0, 1, warp_row0, 0);  // + 16 rows per mt
  const std::uint32_t k_lane = s_k + tile_lane_offset<KVRows>(lane, 1, 0, 0, 0);
  const std::uint32_t v_lane = s_v + tile_lane_offset<KVRows>(lane, 0, 1, 0, 0);
  // 16-column blocks in the order 0, 4, 1, 5, ...: blocks j and j + 4 share one XOR of the swizzled address
  constexpr auto kKOrder = [](int step) {
    constexpr int kBlocks = kHeadDim / 16;
    return kBlocks <= 4 ? step : (step % (kBlocks / 4)) * 4 + step / (kBlocks / 4);
  };

  // prologue: Q and the first K tile (one group)
  const int tiles = n_block_max - n_block_min;
  if (tiles > 0) {
    load_tile<Traits, QRows, kBlockM>(s_q, q, args.q_strides.token, rows_here, tid);
    const int n0 = n_block_min * kBlockN;
    load_tile<Traits, KVRows, kBlockN>(s_k, k + n0 * args.k_strides.token, args.k_strides.token, seqlen_k - n0, tid);
    cp_async_commit();
  }

  // main loop over K/V tiles, ascending
  for (int it = 0; it < tiles; ++it) {
    const int n_start = (n_block_min + it) * kBlockN;
    cp_async_wait<0>();  // K of this tile (and Q)
    __syncthreads();     // ... visible to all; every warp is past the previous tile's P V, so V may be overwritten
    load_tile<Traits, KVRows, kBlockN>(s_v, v + n_start * args.v_strides.token, args.v_strides.token, seqlen_k - n_start, tid);
    cp_async_commit();

    // S = Q K^T (kMTiles x 16 x kBlockN per warp, fp32)
    float s[kMTiles][Traits::kSTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int t = 0; t < Traits::kSTiles; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][t][e] = 0.0f;
      }
    }
#pragma unroll
    for (int step = 0; step < kHeadDim / 16; ++step) {
      const int kk = kKOrder(step);
      std::uint32_t a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) ldmatrix_x4(a[mt], pair_address<QRows>(q_lane, kk) + mt * 16 * QRows::kRowBytes);
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        std::uint32_t b[4];
        ldmatrix_x4(b, pair_address<KVRows>(k_lane, kk) + np * 16 * KVRows::kRowBytes);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          Elem<T>::mma(s[mt][2 * np], a[mt], b[0], b[1]);
          Elem<T>::mma(s[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }

    // mask, only on boundary tiles (causal / window edges, keys past N_k): masked scores become -inf by selection
    const bool boundary = n_start < full_lo || n_start + kBlockN - 1 > full_hi;
    if (boundary) {
      const int tid_here = thread_id();
      const int row_base = m_start + tid_here / 32 * Traits::kRowsPerWarp + tid_here % 32 / 4;
      const int col_base = n_start + 2 * (tid_here % 4);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = row_base + mt * 16 + 8 * r;
          const KeyBounds kb = key_bounds(args.window_left, args.window_right, row, seqlen_q, seqlen_k);
#pragma unroll
          for (int t = 0; t < Traits::kSTiles; ++t) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int col = col_base + t * 8 + c;
              float& x = s[mt][t][2 * r + c];
              x = (col >= kb.lo && col <= kb.hi) ? x : kNegInf;
            }
          }
        }
      }
    }

    cp_async_wait<0>();  // V of this tile
    __syncthreads();     // ... visible to all; every warp is past S = Q K^T, so K may be overwritten
    if (it + 1 < tiles) {
      const int n1 = n_start + kBlockN;
      load_tile<Traits, KVRows, kBlockN>(s_k, k + n1 * args.k_strides.token, args.k_strides.token, seqlen_k - n1, tid);
      cp_async_commit();
    }

    // online softmax with a lazy running max: m_i (of S c), the shift of P = exp2(S c - m_i), moves (and l_i and
    // the row of acc are rescaled) only when the tile's row max of S c exceeds it by more than kLazyLog2, so
    // P <= 2^kLazyLog2 (harmless in fp32 and in the dtype's relative precision), while O = acc / l_i and
    // LSE = m_i ln 2 + ln l_i are exact for any m_i. A warp skips the rescale (a multiply per acc element) unless
    // one of its rows moves, which after a row's first tiles is rare. (The rescale interleaved with P V also held
    // registers: without it the default tiles at d = 96, 128 no longer spill on sm_90a.)
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      float tile_max[2];
      bool grow = false;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float row_max = kNegInf;
#pragma unroll
        for (int t = 0; t < Traits::kSTiles; ++t) {
          row_max = fmaxf(row_max, fmaxf(s[mt][t][2 * r], s[mt][t][2 * r + 1]));
        }
        row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
        row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
        tile_max[r] = row_max * args.scale_log2;
        grow |= moves_max(m_i[mt][r], tile_max[r]);
      }
      if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float rescale = 1.0f;
          if (moves_max(m_i[mt][r], tile_max[r])) {
            rescale = exp2_ftz(m_i[mt][r] - tile_max[r]);  // m_i = -inf: 0 (acc and l_i are 0)
            m_i[mt][r] = tile_max[r];
          }
          l_i[mt][r] *= rescale;
#pragma unroll
          for (int t = 0; t < Traits::kOTiles; ++t) {
            acc[mt][t][2 * r] *= rescale;
            acc[mt][t][2 * r + 1] *= rescale;
          }
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        // -inf guard: a row with no visible key so far shifts by 0, so exp2(-inf - 0) = 0 instead of NaN
        const float shift = m_i[mt][r] == kNegInf ? 0.0f : m_i[mt][r];
        float row_sum = 0.0f;
#pragma unroll
        for (int t = 0; t < Traits::kSTiles; ++t) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            float& x = s[mt][t][2 * r + c];
            x = exp2_ftz(fmaf(x, args.scale_log2, -shift));
            row_sum += x;
          }
        }
        l_i[mt][r] += row_sum;
        if constexpr (kRowSumInDtype) l_i[mt][r] = static_cast<float>(T(l_i[mt][r]));  // test-only fault
      }
    }
    // P in the dtype: the C fragments of two n8 tiles 2 kk, 2 kk + 1 of S are the A fragment of k16 step kk of P V (no
    // shared memory), a[r + 2 q] = row r of tile 2 kk + q, its key pair packed low half first
    auto pack_p = [&](int mt, int kk, std::uint32_t(&a)[4]) {
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const float* tile = s[mt][2 * kk + w / 2];
        a[w] = Elem<T>::pack(tile[2 * (w % 2)], tile[2 * (w % 2) + 1]);
      }
    };
    std::uint32_t p_kept[kDropout ? kMTiles : 1][kDropout ? kBlockN / 16 : 1][4];
    if constexpr (kDropout) {  // dropout on P, after l_i (core/dropout.hpp)
      // P packed first, so that the draws run beside half of S's registers (with the fp32 S live, the p = 0 tiles'
      // dropout kernels spilled), then one draw per (m16 row block, k16 step): its word r + 2 q masks register
      // a[r + 2 q], half c key c of the pair. The draws one after another into a bit mask (bit 8 kk + 2 w + c), then
      // the selection: drawing every step's patch at once (unrolled) kept them all live and spilled.
      const int tid_here = thread_id();
      const auto row_base = static_cast<std::uint32_t>(m_start + tid_here / 32 * Traits::kRowsPerWarp + tid_here % 32 / 4);
      const auto col_base = static_cast<std::uint32_t>(n_start + 2 * (tid_here % 4));
      const std::uint64_t subsequence = std::uint64_t{blockIdx.z} * static_cast<std::uint64_t>(args.heads) + blockIdx.y;
      static_assert(kBlockN / 16 * 8 <= 64, "the keep mask of an m16 row block fits 64 bits");
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) pack_p(mt, kk, p_kept[mt][kk]);
      }
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        std::uint64_t keep = 0;
#pragma unroll 1
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
          const Philox4x32 words =
              dropout_draw(args.dropout_seed, args.dropout_offset, subsequence, row_base + mt * 16, col_base + kk * 16);
#pragma unroll
          for (int w = 0; w < 4; ++w) {
            keep |= std::uint64_t{dropout_keep_bits(words.x[w], args.dropout_threshold)} << (8 * kk + 2 * w);
          }
        }
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
          for (int w = 0; w < 4; ++w) {
            const auto bits = static_cast<std::uint32_t>(keep >> (8 * kk + 2 * w));  // bit c: half c kept
            p_kept[mt][kk][w] &= ((bits & 1u) != 0 ? 0x0000FFFFu : 0u) | ((bits & 2u) != 0 ? 0xFFFF0000u : 0u);
          }
        }
      }
    }

    // acc += P V
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      std::uint32_t p[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        if constexpr (kDropout) {
#pragma unroll
          for (int w = 0; w < 4; ++w) p[mt][w] = p_kept[mt][kk][w];
        } else {
          pack_p(mt, kk, p[mt]);
        }
      }
#pragma unroll
      for (int step = 0; step < kHeadDim / 16; ++step) {
        const int dp = kKOrder(step);
        std::uint32_t b[4];
        ldmatrix_x4_trans(b, pair_address<KVRows>(v_lane, dp) + kk * 16 * KVRows::kRowBytes);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          Elem<T>::mma(acc[mt][2 * dp], p[mt], b[0], b[1]);
          Elem<T>::mma(acc[mt][2 * dp + 1], p[mt], b[2], b[3]);
        }
      }
    }
  }

  // epilogue: l_i over the row's 4 threads, O = acc / l_i into the Q tile (every warp read its last Q fragment
  // before the loop's last barrier), LSE
  unsigned char* s_o = shared + Traits::kQOffset;
  const int lane_end = lane_id();
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float row_sum = l_i[mt][r];
      row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
      row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
      const bool empty = m_i[mt][r] == kNegInf;  // no visible key: O = 0, LSE = -inf
      // with dropout O = acc (1 - p)^-1 / l_i: the kept weights' factor folded into the division
      const float inv_sum = empty ? 0.0f : (kDropout ? args.rp_dropout : 1.0f) / row_sum;
      const int row = warp_row0 + mt * 16 + lane_end / 4 + 8 * r;
#pragma unroll
      for (int t = 0; t < Traits::kOTiles; ++t) {
        const std::uint32_t packed = Elem<T>::pack(acc[mt][t][2 * r] * inv_sum, acc[mt][t][2 * r + 1] * inv_sum);
        *reinterpret_cast<std::uint32_t*>(s_o + chunk_offset<QRows>(row, t) + 2 * (lane_end % 4) * kElemBytes) = packed;
      }
      if (lane_end % 4 == 0 && row < rows_here) {
        const std::int64_t index = (seq.slot * args.heads + head) * args.lse_stride + seq.q_offset + m_start + row;
        args.lse[index] = empty ? kNegInf : m_i[mt][r] * kLn2 + logf(row_sum);  // m_i ln 2: back to S scale
      }
    }
  }
  __syncthreads();
  T* o = static_cast<T*>(args.o) + seq.slot * args.o_strides.batch + (seq.q_offset + m_start) * args.o_strides.token +
         std::int64_t{head} * args.o_strides.head;
  constexpr int kPerThread = kBlockM * Traits::kChunksPerRow / Traits::kThreads;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int index = tid + i * Traits::kThreads;
    const int row = index / Traits::kChunksPerRow;
    const int chunk = index % Traits::kChunksPerRow;
    if (row < rows_here) {
      *reinterpret_cast<uint4*>(o + row * args.o_strides.token + chunk * Traits::kChunkElems) =
          *reinterpret_cast<const uint4*>(s_o + chunk_offset<QRows>(row, chunk));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side

std::int64_t workspace_bytes(const Problem& p, DType dtype, Pass pass) {
  // forward: LSE is an output, nothing else is stored; fwdbwd = max(fwd, bwd) = bwd
  return pass == Pass::fwd ? 0 : backward_workspace_bytes(p, dtype);
}

// The forward tiles compiled: (head dim, B_r = query rows per CTA, B_c = keys per K/V tile, warps). The first entry
// of each head dim is its default; a run picks another with `flash2[br=..,bc=..]`. Defaults, measured on an H200
// (bf16, 16k tokens, model dim 2048, N = 2048-16384, causal and not; suite flash2_tiles; the table with TFLOP/s and
// the ratios to PyTorch's flash backend is in kernels/README.md "Forward"):
//   d = 32:  128 x 128, 4 warps   7-22% ahead of 128 x 64 on all 6 rows (two runs of the kernels without spills;
//                                 0-3% behind it before)
//   d = 64:  128 x 128, 4 warps   8-17% ahead of 128 x 64, more over the others
//   d = 96:  128 x 64,  4 warps   9-34% ahead of 64 x 64
//   d = 128: 128 x 64,  4 warps   8-25% ahead of 64 x 64, 8-18% ahead of 128 x 32
//   d = 256: 64 x 64,   4 warps   (16 rows per warp: O alone is 128 registers per thread) ahead of 128 x 64 with
//                                 8 warps on 12 of 18 rows over three runs (by up to 11%), at most 3% behind
struct ForwardConfig {
  int head_dim;
  int block_m;
  int block_n;
  int warps;
};
// The other tiles, those the tile suites sweep, only in a build with -DFLASHLAB_TILE_SWEEP=ON (they double this
// translation unit's compile time); without them a run asking for one gets `unsupported` naming the option.
#if defined(FLASHLAB_TILE_SWEEP)
constexpr bool kTileSweep = true;
constexpr ForwardConfig kForwardConfigs[] = {
    {32, 128, 128, 4},  {32, 64, 64, 4},   {32, 128, 64, 4},                                       //
    {64, 128, 128, 4},  {64, 32, 64, 2},   {64, 64, 64, 4},  {64, 128, 64, 4}, {64, 256, 64, 8},  //
    {96, 128, 64, 4},   {96, 64, 64, 4},                                                           //
    {128, 128, 64, 4},  {128, 64, 64, 4},  {128, 128, 32, 4}, {128, 64, 128, 4},                   //
    {256, 64, 64, 4},   {256, 128, 64, 8}, {256, 64, 32, 4},                                       //
};
#else
constexpr bool kTileSweep = false;
constexpr ForwardConfig kForwardConfigs[] = {
    {32, 128, 128, 4}, {64, 128, 128, 4}, {96, 128, 64, 4}, {128, 128, 64, 4}, {256, 64, 64, 4},
};
#endif
constexpr int kForwardConfigCount = sizeof(kForwardConfigs) / sizeof(kForwardConfigs[0]);

// The dropout forward's tile of each head dim: the p = 0 default where its dropout kernel compiles without spills on
// sm_80 and sm_90a (d = 32, 64, 96, 256: P packed into the dtype before the draws leaves them room), else the largest
// that does: d = 128's 128 x 64 spilled 64 bytes on sm_80 (0 on sm_90a), 64 x 128 none (kernels/README.md, Dropout).
constexpr ForwardConfig kDropoutConfigs[] = {
    {32, 128, 128, 4}, {64, 128, 128, 4}, {96, 128, 64, 4}, {128, 64, 128, 4}, {256, 64, 64, 4},
};
constexpr int kDropoutConfigCount = sizeof(kDropoutConfigs) / sizeof(kDropoutConfigs[0]);

// The tile a launch of (problem, options) uses: options' br x bc, else the head dim's dropout tile (with dropout)
// or its default (the first entry of kForwardConfigs); nullptr when there is none.
const ForwardConfig* launch_config(const Problem& p, const LaunchOptions& options) {
  if (options.block_m == 0 && options.block_n == 0 && p.dropout.active()) {
    for (const ForwardConfig& c : kDropoutConfigs) {
      if (c.head_dim == p.head_dim) return &c;
    }
    return nullptr;
  }
  for (const ForwardConfig& c : kForwardConfigs) {
    const bool defaults = options.block_m == 0 && options.block_n == 0;
    if (c.head_dim == p.head_dim && (defaults || (c.block_m == options.block_m && c.block_n == options.block_n))) {
      return &c;
    }
  }
  return nullptr;
}

// FlashAttention's bytes model (core/bytes.hpp flash_bytes) for flash2's blocks: the forward streams K and V once per
// query block of B_r rows (the run's tile, or the head dim's default), the backward Q, dO, LSE, D and the dQ
// accumulator once per key block of the backward's B_c keys.
double bytes_model(const Problem& p, DType dtype, Pass pass, const LaunchOptions& options) {
  const ForwardConfig* config = launch_config(p, options);
  const int rows = config != nullptr ? config->block_m : options.block_m;
  if (rows == 0) throw Unsupported("flash2: no kernel for head_dim = " + std::to_string(p.head_dim));
  const double forward = flash_bytes(p, dtype, Pass::fwd, rows);
  const double backward = flash_bytes(p, dtype, Pass::bwd, backward_block_n(p.head_dim));
  return pass == Pass::fwd ? forward : pass == Pass::bwd ? backward : forward + backward;
}

// The tiles of head dim d as "128x64 (default), 64x64, ..." for messages and `flashlab list`.
std::string forward_tiles_of(std::int64_t d) {
  std::string list;
  bool first = true;
  for (const ForwardConfig& c : kForwardConfigs) {
    if (c.head_dim != d) continue;
    list += (list.empty() ? "" : ", ") + std::to_string(c.block_m) + "x" + std::to_string(c.block_n) +
            (first ? " (default)" : "");
    first = false;
  }
  return list;
}

// The head dim whose default tile also has the test-only fault kernel (Fault::row_sum_in_dtype).
constexpr int kFaultHeadDim = 64;

// grid: query blocks of the longest sequence x heads x batch entries
template <class T, int kConfig, bool kRowSumInDtype = false, bool kDropout = false>
void launch_forward(const ForwardArgs& args, const Problem& p, cudaStream_t stream) {
  constexpr ForwardConfig c = kDropout ? kDropoutConfigs[kConfig] : kForwardConfigs[kConfig];  // kDropout: its table
  using Traits = ForwardTraits<c.head_dim, c.block_m, c.block_n, c.warps, sizeof(T)>;
  const std::int64_t m_blocks = (p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  if (m_blocks == 0 || p.batch == 0 || p.heads == 0) return;
  require_shared_bytes(Traits::kSharedBytes, "forward tile " + std::to_string(c.block_m) + "x" +
                                                 std::to_string(c.block_n) + " at head_dim " + std::to_string(c.head_dim));
  auto* kernel = forward_kernel<Traits, T, kRowSumInDtype, kDropout>;
  FL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSharedBytes));
  const dim3 grid(static_cast<unsigned>(m_blocks), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
  kernel<<<grid, Traits::kThreads, Traits::kSharedBytes, stream>>>(args);
  FL_CUDA_CHECK_LAUNCH("flash2 forward_kernel");
}

// The kernel of `config`, an entry of kForwardConfigs (of kDropoutConfigs with kDropout) that launch_config chose,
// found by its place in the table.
template <class T, bool kDropout, int kConfig = 0>
void launch_chosen(const ForwardArgs& args, const Problem& p, const ForwardConfig& config, cudaStream_t stream) {
  constexpr const ForwardConfig* table = kDropout ? kDropoutConfigs : kForwardConfigs;
  if constexpr (kConfig < (kDropout ? kDropoutConfigCount : kForwardConfigCount)) {
    if (&config == &table[kConfig]) return launch_forward<T, kConfig, false, kDropout>(args, p, stream);
    return launch_chosen<T, kDropout, kConfig + 1>(args, p, config, stream);
  } else {
    throw Unsupported("flash2: the chosen forward tile is not in its table");  // launch_config returns entries only
  }
}

// The index of the default tile of head dim d in kForwardConfigs (its first entry).
constexpr int default_config(int d) {
  for (int i = 0; i < kForwardConfigCount; ++i) {
    if (kForwardConfigs[i].head_dim == d) return i;
  }
  return -1;
}
constexpr int kFaultConfig = default_config(kFaultHeadDim);
static_assert(kFaultConfig >= 0, "the fault kernel's head dim has a forward tile");

template <class T, std::size_t... kConfigs>
void add_forward_kernels(std::vector<KernelInfo>& list, std::index_sequence<kConfigs...>) {
  auto add = [&list](auto config) {
    constexpr ForwardConfig c = kForwardConfigs[decltype(config)::value];
    using Traits = ForwardTraits<c.head_dim, c.block_m, c.block_n, c.warps, sizeof(T)>;
    const std::string tile = "forward d=" + std::to_string(c.head_dim) + " " + std::to_string(c.block_m) + "x" +
                             std::to_string(c.block_n) + " " + std::string(name(Elem<T>::kDType));
    list.push_back(kernel_info(forward_kernel<Traits, T>, tile, Traits::kSharedBytes));
  };
  (add(std::integral_constant<std::size_t, kConfigs>{}), ...);
  auto add_dropout = [&list](auto config) {
    constexpr ForwardConfig c = kDropoutConfigs[decltype(config)::value];
    using Traits = ForwardTraits<c.head_dim, c.block_m, c.block_n, c.warps, sizeof(T)>;
    list.push_back(kernel_info(forward_kernel<Traits, T, false, true>,
                               "forward d=" + std::to_string(c.head_dim) + " " + std::to_string(c.block_m) + "x" +
                                   std::to_string(c.block_n) + " " + std::string(name(Elem<T>::kDType)) + " dropout",
                               Traits::kSharedBytes));
  };
  [&]<std::size_t... kDropoutIndices>(std::index_sequence<kDropoutIndices...>) {
    (add_dropout(std::integral_constant<std::size_t, kDropoutIndices>{}), ...);
  }(std::make_index_sequence<kDropoutConfigCount>{});
  constexpr ForwardConfig c = kForwardConfigs[kFaultConfig];
  using Traits = ForwardTraits<c.head_dim, c.block_m, c.block_n, c.warps, sizeof(T)>;
  list.push_back(kernel_info(forward_kernel<Traits, T, true>,
                             "forward d=" + std::to_string(c.head_dim) + " " + std::to_string(c.block_m) + "x" +
                                 std::to_string(c.block_n) + " " + std::string(name(Elem<T>::kDType)) +
                                 " fault row_sum_in_dtype (test-only)",
                             Traits::kSharedBytes));
}

std::vector<KernelInfo> kernels() {
  std::vector<KernelInfo> list;
  add_forward_kernels<__half>(list, std::make_index_sequence<kForwardConfigCount>{});
  add_forward_kernels<__nv_bfloat16>(list, std::make_index_sequence<kForwardConfigCount>{});
  for (KernelInfo& k : backward_kernels()) list.push_back(std::move(k));
  return list;
}

void forward(const AttentionParams& params, const LaunchContext& ctx) {
  detail::check_launch("flash2", params, Pass::fwd, supports);
  require_sm80();
  const Problem& p = params.problem;

  const Window w = p.effective_window();
  ForwardArgs args{};
  args.q = params.q;
  args.k = params.k;
  args.v = params.v;
  args.o = params.o;
  args.lse = params.lse;
  args.q_strides = params.q_strides;
  args.k_strides = params.k_strides;
  args.v_strides = params.v_strides;
  args.o_strides = params.o_strides;
  args.lse_stride = p.is_varlen() ? p.total_q() : p.seqlen_q;
  args.cu_seqlens_q = p.is_varlen() ? params.cu_seqlens_q : nullptr;
  args.cu_seqlens_k = p.is_varlen() ? params.cu_seqlens_k : nullptr;
  args.seqlen_q = static_cast<int>(p.seqlen_q);
  args.seqlen_k = static_cast<int>(p.seqlen_k);
  args.heads = static_cast<int>(p.heads);
  args.group = static_cast<int>(p.group_size());
  args.window_left = window_arg(w.left);
  args.window_right = window_arg(w.right);
  args.scale = static_cast<float>(p.scale());
  args.scale_log2 = static_cast<float>(p.scale() * kLog2eDouble);
  args.dropout_seed = p.dropout.seed;
  args.dropout_offset = p.dropout.offset;
  args.dropout_threshold = dropout_keep_threshold16(p.dropout.p);
  args.rp_dropout = static_cast<float>(1.0 / (1.0 - p.dropout.p));

  const LaunchOptions& tile = params.options;
  require(tile.block_m >= 0 && tile.block_n >= 0 && (tile.block_m > 0) == (tile.block_n > 0), "block_m",
          "and block_n must be given together (br and bc), or both left 0 for the default tile");
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  const ForwardConfig* config = launch_config(p, tile);
  if (p.dropout.active()) {  // kDropoutConfigs: one tile per head dim
    if (tile.block_m != 0 || tile.block_n != 0) {
      throw Unsupported("flash2: dropout is compiled for one tile per head dim (kDropoutConfigs; no br, bc)");
    }
    if (params.fault != Fault::none) throw Unsupported("flash2: the test-only fault has no dropout kernel");
    if (config == nullptr) throw Unsupported("flash2: no forward kernel for head_dim = " + std::to_string(p.head_dim));
    switch (params.dtype) {
      case DType::fp16: return launch_chosen<__half, true>(args, p, *config, stream);
      case DType::bf16: return launch_chosen<__nv_bfloat16, true>(args, p, *config, stream);
      default: break;
    }
  }
  if (params.fault == Fault::row_sum_in_dtype) {  // test-only: the default tile of kFaultHeadDim only
    if (p.head_dim != kFaultHeadDim || tile.block_m != 0 || tile.block_n != 0) {
      throw Unsupported("flash2: the test-only fault row_sum_in_dtype is compiled for the default tile at head_dim " +
                        std::to_string(kFaultHeadDim) + " only");
    }
    switch (params.dtype) {
      case DType::fp16: return launch_forward<__half, kFaultConfig, true>(args, p, stream);
      case DType::bf16: return launch_forward<__nv_bfloat16, kFaultConfig, true>(args, p, stream);
      default: break;
    }
  }
  if (config == nullptr) {
    throw Unsupported("flash2: no forward tile br = " + std::to_string(tile.block_m) + ", bc = " +
                      std::to_string(tile.block_n) + " for head_dim = " + std::to_string(p.head_dim) +
                      " (compiled: " + forward_tiles_of(p.head_dim) +
                      (kTileSweep ? ")" : "; the tile sweep's tiles need a build with -DFLASHLAB_TILE_SWEEP=ON)"));
  }
  switch (params.dtype) {
    case DType::fp16: return launch_chosen<__half, false>(args, p, *config, stream);
    case DType::bf16: return launch_chosen<__nv_bfloat16, false>(args, p, *config, stream);
    default: break;
  }
  throw Unsupported("flash2: no kernel for dtype " + std::string(name(params.dtype)) + " (fp16, bf16)");
}

}  // namespace

// fwd, bwd and fwdbwd follow the same rules
Support supports(const Problem& p, DType dtype, Pass) {
  switch (dtype) {
    case DType::fp16:
    case DType::bf16: break;
    case DType::fp32:
      return Support::no(
          "flash2 runs fp16 and bf16 (tensor cores); fp32 has no m16n8k16 tensor-core path here: "
          "use standard");
    case DType::fp64: return Support::no("flash2 runs fp16 and bf16 (tensor cores); fp64 is the CPU reference's type");
    case DType::fp8_e4m3: return Support::no("flash2 runs fp16 and bf16 (tensor cores); fp8_e4m3 is not implemented");
  }
  const std::int64_t d = p.head_dim;
  if (d != 32 && d != 64 && d != 96 && d != 128 && d != 256) {
    return Support::no("flash2 has kernels for head_dim 32, 64, 96, 128 and 256; head_dim = " + std::to_string(d) +
                       " is not one of them (pad it to the next one with zeros, or use standard)");
  }
  return detail::fused_kernel_limits("flash2", p);
}

// Where flash2 rounds (reference/NUMERICS.md). Forward: S = Q K^T by mma.sync (products exact, fp32 accumulation
// truncating) kept in fp32 registers; P = exp2(S c - m) by one FMA and ex2.approx.ftz (2 ulp, flush below 2^-126)
// against a lazy running max, one rescale of l and acc per key tile at most; P rounded to the dtype as the A operand
// of P V (fp32 accumulation, truncating); l summed in fp32 from the unrounded P; O = acc * (1 / l) rounded to the
// dtype; LSE in fp32. Backward: P recomputed from S and the stored LSE, rounded to the dtype for dV; dP by mma;
// D = rowsum(dO o O) in fp32 from the stored O; dS = P (dP - D) in fp32 from the unrounded P, rounded to the dtype for
// dQ and dK; dQ's key-block partials added by fp32 atomics; dK, dV accumulated over the query rows by mma, GQA
// partials summed in fp32.
numerics::DataPath data_path(const Problem& p, DType dtype, const AttentionParams& params) {
  const double u32 = unit_roundoff(DType::fp32), u = unit_roundoff(dtype);
  const ForwardConfig* config = launch_config(p, params.options);
  const int block_n = config != nullptr ? config->block_n : params.options.block_n;
  numerics::DataPath path = online_softmax_forward_path(dtype, block_n, "mma");
  path.summary += "; bwd: P, dS " + std::string(name(dtype)) + ", dQ fp32 atomics";
  if (p.dropout.active()) path.summary += "; dropout: Z o P in the dtype, 1/(1-p) in fp32 on O, dP and dV";
  path.u_p_bwd = u;
  path.ds_from_rounded_p = false;
  path.dp = {u32, true};
  path.delta = {u32, false};
  path.u_ds = u;
  path.dq = path.dk = path.dv = {u32, true};
  path.dq_block = backward_block_n(p.head_dim);
  return path;
}

}  // namespace flash2

Variant flash2_variant() {
  Variant v;
  v.id = "flash2";
  std::string tiles;
  for (const int d : {32, 64, 96, 128, 256}) tiles += (tiles.empty() ? "d = " : "; d = ") + std::to_string(d) + ": " + flash2::forward_tiles_of(d);
  v.options = {switch_option("deterministic", "1: bitwise repeatable dQ (key blocks add in a fixed order, slower); 0: atomics",
                             &LaunchOptions::deterministic),
               size_option("br", "forward tile: query rows per CTA, given with bc (" + tiles + ")", &LaunchOptions::block_m),
               size_option("bc", "forward tile: keys per K/V tile, given with br", &LaunchOptions::block_n)};
  v.check_options = [](const LaunchOptions& o) {
    return (o.block_m > 0) == (o.block_n > 0) ? std::string() : std::string("br and bc go together (e.g. flash2[br=128,bc=64])");
  };
  v.description =
      "FlashAttention-2 on tensor cores (mma.sync m16n8k16, ldmatrix, cp.async double buffering): tiled, online "
      "softmax, O(N) memory; backward parallel over K/V blocks with an fp32 dQ accumulator";
  v.device = Device::cuda;
  v.materializes = false;
  v.supported =
      "fp16, bf16; head_dim 32, 64, 96, 128, 256 with head_dim_v == head_dim; causal, sliding window, GQA/MQA, "
      "varlen, N_q != N_k, dropout (one tile per head dim); fwd and bwd (deterministic bwd selectable)";
  v.supports = flash2::supports;
  v.workspace_model = flash2::workspace_bytes;
  v.bytes_model = flash2::bytes_model;
  v.forward = flash2::forward;
  v.backward = flash2::backward;
  v.kernels = flash2::kernels;
  v.data_path = flash2::data_path;
  return v;
}

}  // namespace flashlab::kernels
