// The `flash3` variant, forward kernels (sm_90a only): FlashAttention on Hopper's asynchronous tensor cores, in the
// structure of FlashAttention-3 (Shah et al., 2024, §3), written from the PTX ISA (wgmma, cp.async.bulk.tensor,
// mbarrier, setmaxnreg) without CUTLASS.
//
// One CTA of 384 threads per (query block of 128 rows, head h, batch entry b) (512 and 192 rows with three consumers);
// kv head g = h / (H / H_kv):
//   warpgroup 0, the producer (24 registers after setmaxnreg): one thread issues every TMA load: the Q tile once, then
//     the K and V tiles of the CTA's key range into two rings of kStages slots, K one tile ahead of V (K_0, K_1, V_0,
//     K_2, V_1, ...). Each slot completes on its own "full" mbarrier (transaction bytes) and is reused once every
//     consumer warp has arrived on its "empty" mbarrier: K_j as soon as S_j is done, V_j after P_j V_j.
//   warpgroups 1 .. 2 (or 3), the consumers (240 registers; 160 with three): each owns 64 query rows and runs, per
//   key tile j its rows see (the others of the CTA's range, e.g. past the diagonal for a causal block's first rows,
//   it takes its ping-pong turn on without issuing and only releases their stages),
//       S_j = Q K_j^T                 wgmma m64nBk16, Q and K from shared memory (K-major, 128-byte swizzle)
//       O += P_{j-1} V_{j-1}          wgmma m64nDk16 issued right behind it, P from registers (the S accumulator
//                                     layout is the A-operand layout), V from shared memory (MN-major: transposed)
//       softmax of S_j                while P_{j-1} V_{j-1} runs on the tensor cores (FA3's intra-warpgroup overlap):
//                                     mask on boundary tiles; lazy running max m (moves by more than 2^8 only);
//                                     P_j = exp2(S c - m) in place (c = scale log2 e), l += rowsum P_j
//       wait for P_{j-1} V_{j-1}      release the stage of j-1; O *= 2^(m_old - m) where m moved; P_j to fp16/bf16
//     then O += P_last V_last, and the epilogue: O = acc / l staged through the warpgroup's (now free) Q rows in the
//     same swizzled layout, written with 16-byte stores; LSE = m ln 2 + ln l in fp32.
// A row that sees no key keeps m = -inf: its shift is 0, so P = 0, l = 0, O = 0 and LSE = -inf (flash2's convention).
//
// Tiles (flash3.hpp kForwardTiles): 128 query rows per CTA (two consumers of 64, the wgmma M), or 192 (three consumers
// at 160 registers: d = 64 with 96 keys, where more keys spill); the defaults, measured with
// experiments/flash3_tiles.toml on an H200 (kernels/README.md has the table):
//   d = 64:  192 rows, 96 keys, 2 stages, ping-pong (S and O: 48 + 32 fp32 accumulators per thread); 7% ahead of
//            128 x 128 over the suite's rows, 6% behind it at N = 512
//   d = 128: 128 keys, 2 stages, ping-pong (64 + 64; FA3 uses 176 keys non-causal: here 160 and 176 spill)
//   d = 256: 64 keys,  2 stages, ping-pong (32 + 128; Q 64 KB + 2 x (K 32 KB + V 32 KB) = 192 KB of shared memory)
// Schedule: one CTA per work tile (query block, head, batch entry), the grid as flash2's; or, with persistent=1 (tile
// 128 x 128 / 2 at d = 64 and 128, where the walk's state fits without spilling), one CTA per multiprocessor walking
// the work tiles (TileWalk): the K/V rings carry on from tile to tile, the Q tile is refilled once every consumer's
// epilogue has read its staging out of it (the Q-empty barrier), and fully masked tiles write O = 0 and LSE = -inf
// without shared memory. Not the default: measured level or slower except on short non-causal rows (kernels/README).
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "flash3/flash3.hpp"
#include "flash3/hopper.cuh"
#include "flash3/wgmma_ops.cuh"
#include "flashlab/core/errors.hpp"
#include "src/check.hpp"
#include "src/device_common.cuh"
#include "src/launch_common.cuh"

namespace flashlab::kernels::flash3 {
namespace {

// The CTA of a tile of kBlockM query rows: kBlockM / 64 consumer warpgroups (64 rows each, the wgmma M) and the
// producer warpgroup, with the register budget setmaxnreg gives each (the SM's 65536 registers, one CTA per SM).
template <int kBlockM>
struct Cta {
  static constexpr int kConsumers = kBlockM / 64;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = kConsumers == 2 ? 240 : 160;  // 128 (24 + 2 x 240), 128 (24 + 3 x 160)
  static_assert(kBlockM == 128 || kBlockM == 192, "two or three consumer warpgroups");
  static_assert(128 * (kProducerRegisters + kConsumers * kConsumerRegisters) <= 65536, "register budget of one CTA");
};

constexpr float kLazyLog2 = 8.0f;  // the running max moves only by more than 2^8 in P (as flash2)
constexpr float kLn2 = 0.6931471805599453f;

struct ForwardArgs {
  void* o;
  float* lse;
  Strides o_strides;
  std::int64_t lse_stride;  // N_q (dense) or total_q (varlen)
  const std::int32_t* cu_seqlens_q;
  const std::int32_t* cu_seqlens_k;
  int seqlen_q;
  int seqlen_k;
  int heads;
  int group;
  int window_left;  // -1: unbounded (window_arg)
  int window_right;
  float scale_log2;
  int m_blocks;  // query blocks of the longest sequence; a work tile is (query block, head, batch entry)
  int batch;
  int group_pairs;  // persistent: (batch entry, head) pairs per group of the walk (K and V of a group fit in L2)
};

// Shared memory of one CTA; every tile is in 64-column chunks of 128-byte rows (the TMA box of the 128-byte swizzle),
// each chunk 1024-byte aligned, as the wgmma descriptors expect. kQBuffers Q tiles: the persistent kernel has two,
// so that the next work tile's Q loads while this one runs and its epilogue stages O in its own Q tile.
template <int kBlockM, int kHeadDim, int kBlockN, int kStages, int kQTiles = 1>
struct Layout {
  static constexpr int kQBuffers = kQTiles;
  static constexpr int kChunks = kHeadDim / 64;
  static constexpr int kQChunkBytes = kBlockM * 128;
  static constexpr int kKVChunkBytes = kBlockN * 128;
  static constexpr int kQBytes = kChunks * kQChunkBytes;
  static constexpr int kKVBytes = kChunks * kKVChunkBytes;  // one K or V tile
  static constexpr int kQOffset = 0;  // Q tile b at kQOffset + b kQBytes
  static constexpr int kKOffset = kQBuffers * kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKVBytes;
  static constexpr int kBarrierOffset = kVOffset + kStages * kKVBytes;
  // Q full and Q empty per Q tile; K full, V full, K empty, V empty per stage
  static constexpr int kBarriers = 2 * kQBuffers + 4 * kStages;
  static constexpr int kSharedBytes = kBarrierOffset + 8 * kBarriers + 1024;  // + alignment of the base to 1024
  static_assert(kHeadDim % 64 == 0 && kBlockN % 16 == 0 && kBlockN <= 256, "tile shape");
  static_assert(kQChunkBytes % 1024 == 0 && kKVChunkBytes % 1024 == 0, "chunks keep the 1024-byte swizzle atoms");
};

// The layout of a kernel: two Q tiles for the persistent schedule, one otherwise.
template <int kBlockM, int kHeadDim, int kBlockN, int kStages, bool kPersistent>
using KernelLayout = Layout<kBlockM, kHeadDim, kBlockN, kStages, kPersistent ? 2 : 1>;

template <class T>
__device__ inline std::uint32_t pack(float lo, float hi);
template <>
__device__ inline std::uint32_t pack<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&h);
}
template <>
__device__ inline std::uint32_t pack<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&h);
}

// Whether a row whose running max (of S c) is m, -inf while it has seen no key, moves it to a tile max `tile`.
__device__ inline bool moves_max(float m, float tile) {
  return m == kNegInf ? tile != kNegInf : tile - m > kLazyLog2;
}

// S = Q K^T for one warpgroup: 64 rows of Q (q_rows: their first chunk) against the kBlockN keys of a K tile.
template <class T, int kBlockM, int kHeadDim, int kBlockN, int kStages>
__device__ inline void gemm_qk(float (&s)[kBlockN / 2], std::uint32_t q_rows, std::uint32_t k_tile) {
  using L = Layout<kBlockM, kHeadDim, kBlockN, kStages>;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    const std::uint32_t step = (kk % 4) * 32;  // 32 bytes per k16 step inside a 128-byte row
    const std::uint64_t a = descriptor(q_rows + (kk / 4) * L::kQChunkBytes + step, 16, 1024);
    const std::uint64_t b = descriptor(k_tile + (kk / 4) * L::kKVChunkBytes + step, 16, 1024);
    Wgmma<T, kBlockN>::ss(s, a, b, kk > 0);
  }
}

// O (+)= P V for one warpgroup: P (kBlockN / 16 k16 steps of A fragments) against the V tile.
template <class T, int kBlockM, int kHeadDim, int kBlockN, int kStages>
__device__ inline void gemm_pv(float (&o)[kHeadDim / 2], const std::uint32_t (&p)[kBlockN / 16][4], std::uint32_t v_tile,
                               bool accumulate) {
  using L = Layout<kBlockM, kHeadDim, kBlockN, kStages>;
#pragma unroll
  for (int kk = 0; kk < kBlockN / 16; ++kk) {
    const std::uint64_t b = descriptor(v_tile + kk * 16 * 128, L::kKVChunkBytes, 1024);
    Wgmma<T, kHeadDim>::rs(o, p[kk], b, accumulate || kk > 0);
  }
}

// A work tile: query block m_block of head `head` of batch entry (or varlen sequence) `batch`, the key tiles its rows
// see, and what the producer and the consumers both derive from it.
struct Tile {
  CtaSequence seq;
  int batch;  // the batch entry (or varlen sequence): the epilogue finds its offsets again from it
  int head;
  int m_start;
  int rows;      // query rows of the tile in the sequence (0: past the sequence's end, nothing to do)
  int n_first;   // first key of the first key tile
  int kv_tiles;  // key tiles its rows see (0: every row fully masked)
};
template <int kBlockM, int kBlockN>
__device__ inline Tile tile_of(const ForwardArgs& args, int m_block, int head, int batch) {
  Tile t;
  t.seq = sequence_of(args.cu_seqlens_q, args.cu_seqlens_k, batch, args.seqlen_q, args.seqlen_k);
  t.batch = batch;
  t.head = head;
  t.m_start = m_block * kBlockM;
  t.rows = max(min(kBlockM, t.seq.seqlen_q - t.m_start), 0);
  t.n_first = 0;
  t.kv_tiles = 0;
  if (t.rows == 0) return t;
  // key ranges are monotone in the row: the union runs from the first row's lo to the last row's hi (key tiles the
  // mask hides entirely are never loaded)
  const KeyBounds first = key_bounds(args.window_left, args.window_right, t.m_start, t.seq.seqlen_q, t.seq.seqlen_k);
  const KeyBounds last =
      key_bounds(args.window_left, args.window_right, t.m_start + t.rows - 1, t.seq.seqlen_q, t.seq.seqlen_k);
  const int n_block_min = first.lo / kBlockN;
  const int n_block_max = last.hi < 0 ? 0 : (last.hi + kBlockN) / kBlockN;  // exclusive
  t.n_first = n_block_min * kBlockN;
  t.kv_tiles = max(n_block_max - n_block_min, 0);
  return t;
}

// The query block of a CTA of the one-tile-per-CTA grid: the last first, so the longest causal blocks of a head are
// dispatched first and the short ones fill the tail (CTAs start in blockIdx order).
__device__ inline int own_m_block() { return static_cast<int>(gridDim.x - 1 - blockIdx.x); }

// The work tiles of a CTA: its own (own_m_block, blockIdx.y, .z) without kPersistent; with it, tiles blockIdx.x,
// + gridDim.x, ... of all of them. The (batch entry, head) pairs are taken in groups of args.group_pairs whose K and
// V fit in L2; within a group the query block is slowest, longest first, and the pair fastest. So every round of
// gridDim.x tiles has blocks of about one length (each CTA's tiles sweep the lengths from longest to shortest: the
// causal work is balanced), and the CTAs running at once read the K and V of one group. (The query block fastest
// instead put a CTA's tiles in a narrow band of lengths whenever gridDim.x is close to a multiple of the query
// blocks: 3x more work on some CTAs than others at N = 16384, 132 SMs.)
template <bool kPersistent>
struct TileWalk {
  int next;
  int count;
  __device__ explicit TileWalk(const ForwardArgs& args)
      : next(kPersistent ? static_cast<int>(blockIdx.x) : 0),
        count(kPersistent ? args.m_blocks * args.heads * args.batch : 1) {}
  __device__ bool done() const { return next >= count; }
  template <int kBlockM, int kBlockN>
  __device__ Tile take(const ForwardArgs& args) {
    int m_block, head, batch;
    if constexpr (kPersistent) {
      const int group_tiles = args.group_pairs * args.m_blocks;  // the last group may have fewer pairs
      const int first_pair = next / group_tiles * args.group_pairs, within = next % group_tiles;
      const int pairs_here = min(args.group_pairs, args.heads * args.batch - first_pair);
      const int pair = first_pair + within % pairs_here;
      m_block = args.m_blocks - 1 - within / pairs_here;
      head = pair % args.heads;
      batch = pair / args.heads;
      next += static_cast<int>(gridDim.x);
    } else {
      m_block = own_m_block();
      head = static_cast<int>(blockIdx.y);
      batch = static_cast<int>(blockIdx.z);
      next = count;
    }
    return tile_of<kBlockM, kBlockN>(args, m_block, head, batch);
  }
};

template <class T, int kBlockM, int kHeadDim, int kBlockN, int kStages, bool kPingpong, bool kPersistent>
__global__ void __launch_bounds__(Cta<kBlockM>::kThreads, 1)
    forward_kernel(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
                   const __grid_constant__ CUtensorMap map_v, const ForwardArgs args) {
  using L = KernelLayout<kBlockM, kHeadDim, kBlockN, kStages, kPersistent>;
  constexpr int kQBuffers = L::kQBuffers;
  using C = Cta<kBlockM>;
  constexpr int kConsumers = C::kConsumers;
  extern __shared__ __align__(1024) unsigned char shared_raw[];
  const std::uint32_t raw = smem_address(shared_raw);
  const std::uint32_t base = (raw + 1023) & ~1023u;
  unsigned char* const shared = shared_raw + (base - raw);
  const std::uint32_t s_q = base + L::kQOffset;
  const std::uint32_t s_k = base + L::kKOffset;
  const std::uint32_t s_v = base + L::kVOffset;
  const std::uint32_t bars = base + L::kBarrierOffset;
  // Q tile b: its Q has landed / it (and the O staging in it) is free for the next Q. The n-th Q a CTA loads goes to
  // tile n % kQBuffers, in that tile's phase n / kQBuffers.
  const auto bar_q = [bars](int b) { return bars + 8 * b; };
  const auto bar_q_empty = [bars](int b) { return bars + 8 * (kQBuffers + b); };
  const auto q_tile = [s_q](int b) { return s_q + b * L::kQBytes; };
  constexpr int kRing = 2 * kQBuffers;  // the rings' barriers follow the Q tiles'
  const auto bar_full_k = [bars](int stage) { return bars + 8 * (kRing + stage); };
  const auto bar_full_v = [bars](int stage) { return bars + 8 * (kRing + kStages + stage); };
  const auto bar_empty_k = [bars](int stage) { return bars + 8 * (kRing + 2 * kStages + stage); };
  const auto bar_empty_v = [bars](int stage) { return bars + 8 * (kRing + 3 * kStages + stage); };

  // the warpgroup index through a shuffle from lane 0: the compiler then knows it is the same across the warp and
  // keeps what derives from it (barrier ids, shared-memory addresses, the consumer's rows and key tiles) in uniform
  // registers. Without it the consumers' own key-tile range below put the main loop's ring positions in vector
  // registers (SASS of the 192x96 kernels: R2UR 16 -> 56, uniform instructions 130 -> 12) and cost 2-8% on long
  // rows; with it the main loop is as short as before (experiments/results/h200-2026-11-30/flash3_schedule_ab).
  const int warpgroup = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 128, 0);
  if (threadIdx.x == 0) {
    for (int b = 0; b < kQBuffers; ++b) {
      mbarrier_init(bar_q(b), 1);
      mbarrier_init(bar_q_empty(b), 4 * kConsumers);  // one arrival per consumer warp, after its epilogue
    }
    for (int stage = 0; stage < kStages; ++stage) {
      mbarrier_init(bar_full_k(stage), 1);
      mbarrier_init(bar_full_v(stage), 1);
      mbarrier_init(bar_empty_k(stage), 4 * kConsumers);  // one arrival per consumer warp
      mbarrier_init(bar_empty_v(stage), 4 * kConsumers);
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    // ------------------------------------------------------------------------------------------------------------
    // producer
    registers_decrease<C::kProducerRegisters>();
    if (threadIdx.x == 0) {
      int kv_count = 0;  // K/V tiles loaded so far: the rings' position carries across work tiles
      int q_count = 0;   // Q tiles loaded so far
      for (TileWalk<kPersistent> walk(args); !walk.done();) {
        const Tile t = walk.template take<kBlockM, kBlockN>(args);
        if (t.kv_tiles == 0) continue;  // nothing to load: the consumers write O = 0 without shared memory
        const int kv_head = t.head / args.group;
        const int slot = static_cast<int>(t.seq.slot);
        const int qb = q_count % kQBuffers;
        // the epilogue of the work tile that last used this Q tile is done
        if (q_count >= kQBuffers) mbarrier_wait(bar_q_empty(qb), (q_count / kQBuffers - 1) & 1);
        mbarrier_expect_bytes(bar_q(qb), L::kQBytes);
#pragma unroll
        for (int c = 0; c < L::kChunks; ++c) {
          tma_load_4d(q_tile(qb) + c * L::kQChunkBytes, &map_q, bar_q(qb), c * 64,
                      static_cast<int>(t.seq.q_offset) + t.m_start, t.head, slot);
        }
        ++q_count;
        const int k_row = static_cast<int>(t.seq.k_offset) + t.n_first;
        // K runs one tile ahead of V, as the consumers use them: K_0, K_1, V_0, K_2, V_1, ..., V_last
        const auto load = [&](std::uint32_t tiles_at, const CUtensorMap* map, std::uint32_t full, std::uint32_t empty,
                              int it) {
          const int g = kv_count + it, stage = g % kStages;
          if (g >= kStages) mbarrier_wait(empty + 8 * stage, (g / kStages - 1) & 1);
          mbarrier_expect_bytes(full + 8 * stage, L::kKVBytes);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c) {
            tma_load_4d(tiles_at + stage * L::kKVBytes + c * L::kKVChunkBytes, map, full + 8 * stage, c * 64,
                        k_row + it * kBlockN, kv_head, slot);
          }
        };
        for (int it = 0; it <= t.kv_tiles; ++it) {
          if (it < t.kv_tiles) load(s_k, &map_k, bar_full_k(0), bar_empty_k(0), it);
          if (it > 0) load(s_v, &map_v, bar_full_v(0), bar_empty_v(0), it - 1);
        }
        kv_count += t.kv_tiles;
      }
    }
    return;
  }

  // --------------------------------------------------------------------------------------------------------------
  // consumers
  registers_increase<C::kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int warp = static_cast<int>(threadIdx.x) / 32 % 4;  // in the warpgroup: rows 16 warp .. 16 warp + 15
  const int lane = static_cast<int>(threadIdx.x) % 32;
  int kv_count = 0;  // K/V tiles consumed so far: the rings' position carries across work tiles
  int q_count = 0;   // Q tiles consumed so far
  for (TileWalk<kPersistent> walk(args); !walk.done();) {
  const Tile t = walk.template take<kBlockM, kBlockN>(args);
  if (t.rows == 0) continue;  // past the end of its sequence (the grid covers the longest)
  const CtaSequence& seq = t.seq;
  const int head = t.head;
  const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k;
  const int m_start = t.m_start;
  const int tiles = t.kv_tiles;
  const int wg_row0 = m_start + 64 * consumer;  // the warpgroup's first row, in the sequence
  // persistent: every row fully masked (or no key): O = 0 and LSE = -inf without shared memory (Q is not loaded);
  // one tile per CTA takes the epilogue below with l = 0 instead
  if (kPersistent && tiles == 0) {
    T* const out = static_cast<T*>(args.o) + seq.slot * args.o_strides.batch +
                   (seq.q_offset + wg_row0) * args.o_strides.token + std::int64_t{head} * args.o_strides.head;
    const int tid = static_cast<int>(threadIdx.x) % 128;
    for (int index = tid; index < 64 * (kHeadDim / 8); index += 128) {
      const int row = index / (kHeadDim / 8), unit = index % (kHeadDim / 8);
      if (wg_row0 + row < seqlen_q) *reinterpret_cast<uint4*>(out + row * args.o_strides.token + unit * 8) = uint4{};
    }
    if (tid < 64 && wg_row0 + tid < seqlen_q) {
      args.lse[(seq.slot * args.heads + head) * args.lse_stride + seq.q_offset + wg_row0 + tid] = kNegInf;
    }
    continue;
  }
  const int qb = q_count % kQBuffers;
  const std::uint32_t q_rows = q_tile(qb) + consumer * 64 * 128;
  // this thread's rows wg_row0 + 16 warp + lane / 4 + {0, 8}; columns 8 i + 2 (lane % 4) + {0, 1} of n8 tile i
  const int row_a = wg_row0 + 16 * warp + lane / 4;
  // keys every row of the warpgroup sees: tiles inside [full_lo, full_hi] need no mask (none when its rows are past
  // the sequence: their scores are never stored)
  const int wg_last = min(wg_row0 + 63, seqlen_q - 1);
  int full_lo = 0, full_hi = -1;
  if (wg_row0 < seqlen_q) {
    full_lo = key_bounds(args.window_left, args.window_right, wg_last, seqlen_q, seqlen_k).lo;
    full_hi = key_bounds(args.window_left, args.window_right, wg_row0, seqlen_q, seqlen_k).hi;
  }

  float o[kHeadDim / 2];
#pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) o[i] = 0.0f;
  float m_i[2] = {kNegInf, kNegInf};  // running row max of S c, the shift of P
  float l_i[2] = {0.0f, 0.0f};        // running row sum of P over this thread's columns
  std::uint32_t p[kBlockN / 16][4];
  float s[kBlockN / 2];

  // softmax of S (in place: P = exp2(S c - m) in fp32) for the tile starting at key n_start; returns the rescale
  // factor of each row's O (1 where m did not move) in `rescale` and whether any row of the warp moved.
  const auto softmax = [&](int n_start, float (&rescale)[2]) {
    if (n_start < full_lo || n_start + kBlockN - 1 > full_hi) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const KeyBounds kb = key_bounds(args.window_left, args.window_right, row_a + 8 * r, seqlen_q, seqlen_k);
#pragma unroll
        for (int i = 0; i < kBlockN / 8; ++i) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int col = n_start + 8 * i + 2 * (lane % 4) + c;
            float& x = s[4 * i + 2 * r + c];
            x = (col >= kb.lo && col <= kb.hi) ? x : kNegInf;
          }
        }
      }
    }
    bool grow = false;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float row_max = kNegInf;
#pragma unroll
      for (int i = 0; i < kBlockN / 8; ++i) row_max = fmaxf(row_max, fmaxf(s[4 * i + 2 * r], s[4 * i + 2 * r + 1]));
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
      const float tile_max = row_max * args.scale_log2;
      rescale[r] = 1.0f;
      if (moves_max(m_i[r], tile_max)) {
        rescale[r] = exp2_ftz(m_i[r] - tile_max);  // m_i = -inf: 0 (O and l are 0)
        m_i[r] = tile_max;
        grow = true;
      }
      l_i[r] *= rescale[r];
      const float shift = m_i[r] == kNegInf ? 0.0f : m_i[r];  // no key seen yet: exp2(-inf - 0) = 0, never NaN
      float row_sum = 0.0f;
#pragma unroll
      for (int i = 0; i < kBlockN / 8; ++i) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          float& x = s[4 * i + 2 * r + c];
          x = exp2_ftz(fmaf(x, args.scale_log2, -shift));
          row_sum += x;
        }
      }
      l_i[r] += row_sum;
    }
    return __any_sync(0xffffffffu, grow);
  };
  const auto rescale_o = [&](const float (&rescale)[2]) {
#pragma unroll
    for (int i = 0; i < kHeadDim / 8; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[4 * i + e] *= rescale[e / 2];
    }
  };
  // P in the dtype as the A fragments of P V: n8 tiles 2 kk and 2 kk + 1 of S make k16 step kk
  const auto convert_p = [&]() {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      p[kk][0] = pack<T>(s[8 * kk + 0], s[8 * kk + 1]);
      p[kk][1] = pack<T>(s[8 * kk + 2], s[8 * kk + 3]);
      p[kk][2] = pack<T>(s[8 * kk + 4], s[8 * kk + 5]);
      p[kk][3] = pack<T>(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };
  const auto release = [&](std::uint32_t empty) {
    __syncwarp();
    if (lane == 0) mbarrier_arrive(empty);
  };
  // Ping-pong (kPingpong): the consumers take turns, in a ring, to issue their GEMMs, so one's softmax runs while
  // another's GEMMs occupy the tensor cores. Consumer c waits on barrier 1 + kConsumers + c (its 128 threads plus
  // the previous consumer's 128 arrivals; barriers 1 .. kConsumers are the epilogues'), issues, then lets the next
  // go; the last consumer opens with one arrival so consumer 0 goes first, and skips its last, so every barrier
  // ends with as many arrivals as waits.
  const int issue_points = tiles + 1;  // S_0, then S_j with P_{j-1} V_{j-1} for j >= 1, then P_last V_last
  int issued = 0;
  const auto take_turn = [&]() {
    if constexpr (kPingpong) named_barrier_sync(1 + kConsumers + consumer, 256);
  };
  const auto pass_turn = [&]() {
    ++issued;
    if constexpr (kPingpong) {
      if (consumer != kConsumers - 1 || issued < issue_points) {
        named_barrier_arrive(1 + kConsumers + (consumer + 1) % kConsumers, 256);
      }
    }
  };
  if constexpr (kPingpong) {
    if (consumer == kConsumers - 1 && tiles > 0) named_barrier_arrive(1 + kConsumers, 256);
  }

  if (tiles > 0) {
    mbarrier_wait(bar_q(qb), (q_count / kQBuffers) & 1);  // every consumer: its Q rows stage its O in the epilogue
    const int n_first = t.n_first;
    // The warpgroup's own key tiles [own_lo, own_hi): those its rows see. The CTA's range is the union over its
    // rows; a warpgroup whose rows see fewer (the first rows of a causal block, the last of a sliding window) or
    // none (rows past the sequence, fully masked rows) takes the other tiles' turns without issuing, and only
    // releases their stages: no GEMM, mask or softmax on keys it cannot see.
    // (The persistent kernel keeps the CTA's range: at d = 128 the own range spilled 8 bytes beside the walk's state.)
    int own_lo = 0, own_hi = kPersistent ? tiles : 0;
    if (!kPersistent && wg_row0 < seqlen_q) {
      const int lo = key_bounds(args.window_left, args.window_right, wg_row0, seqlen_q, seqlen_k).lo;
      const int hi = key_bounds(args.window_left, args.window_right, wg_last, seqlen_q, seqlen_k).hi;
      if (hi >= lo) {
        own_lo = max((lo - n_first) / kBlockN, 0);
        own_hi = min((hi - n_first) / kBlockN + 1, tiles);
      }
    }
    // wait until ring position g of K (bar_full_k) or V (bar_full_v) is loaded: its stage's full barrier, its phase
    const auto wait_full = [&](const auto& bar_full, int g) {
      mbarrier_wait(bar_full(g % kStages), (g / kStages) & 1);
    };
    // Turn k (0 .. tiles) issues S_k (k < tiles) and P_{k-1} V_{k-1} (k > 0); a turn with nothing of this
    // warpgroup's to issue waits for the stages as an issuing turn would (so its arrivals count toward the right
    // phase of the empty barriers), passes the turn on and releases them.
    const auto idle_turn = [&](int k) {
      const int g = kv_count + k;
      if (k < tiles) wait_full(bar_full_k, g);
      if (k > 0) wait_full(bar_full_v, g - 1);
      take_turn();
      pass_turn();
      if (k < tiles) release(bar_empty_k(g % kStages));
      if (k > 0 && (kPersistent || k < tiles)) release(bar_empty_v((g - 1) % kStages));  // as the last P V below
    };
    if (own_lo == own_hi) {
      for (int k = 0; k <= tiles; ++k) idle_turn(k);  // m stays -inf: the epilogue writes O = 0, LSE = -inf
    } else {
      for (int k = 0; k < own_lo; ++k) idle_turn(k);
      const int g_first = kv_count + own_lo;
      const int first_stage = g_first % kStages;
      wait_full(bar_full_k, g_first);
      if (own_lo > 0) wait_full(bar_full_v, g_first - 1);
      take_turn();
      wgmma_fence();
      gemm_qk<T, kBlockM, kHeadDim, kBlockN, kStages>(s, q_rows, s_k + first_stage * L::kKVBytes);
      wgmma_commit();
      pass_turn();
      wgmma_wait<0>();
      pin_registers(s);
      release(bar_empty_k(first_stage));
      if (own_lo > 0) release(bar_empty_v((g_first - 1) % kStages));
      float rescale[2];
      softmax(n_first + own_lo * kBlockN, rescale);  // O is 0: nothing to rescale
      convert_p();
      for (int it = own_lo + 1; it < own_hi; ++it) {
        const int g = kv_count + it;  // the K/V rings' position
        const int stage = g % kStages, previous = (g - 1) % kStages;
        wait_full(bar_full_k, g);
        wait_full(bar_full_v, g - 1);
        take_turn();
        wgmma_fence();
        gemm_qk<T, kBlockM, kHeadDim, kBlockN, kStages>(s, q_rows, s_k + stage * L::kKVBytes);
        wgmma_commit();
        gemm_pv<T, kBlockM, kHeadDim, kBlockN, kStages>(o, p, s_v + previous * L::kKVBytes, true);
        wgmma_commit();
        pass_turn();
        wgmma_wait<1>();  // S_it: K_it is free
        pin_registers(s);
        release(bar_empty_k(stage));
        const bool grow = softmax(n_first + it * kBlockN, rescale);
        wgmma_wait<0>();  // P_{it-1} V_{it-1}: V_{it-1} is free, O and P may be written
        pin_registers(o);
        pin_registers(p);
        release(bar_empty_v(previous));
        if (grow) rescale_o(rescale);
        convert_p();
      }
      const int g_last = kv_count + own_hi - 1;  // turn own_hi: P V of the last own tile (and K_own_hi's stage)
      const int last_stage = g_last % kStages;
      wait_full(bar_full_v, g_last);
      if (own_hi < tiles) wait_full(bar_full_k, g_last + 1);
      take_turn();
      wgmma_fence();
      gemm_pv<T, kBlockM, kHeadDim, kBlockN, kStages>(o, p, s_v + last_stage * L::kKVBytes, true);
      wgmma_commit();
      pass_turn();
      wgmma_wait<0>();
      pin_registers(o);
      if (own_hi < tiles) release(bar_empty_k((g_last + 1) % kStages));
      if (kPersistent || own_hi < tiles) release(bar_empty_v(last_stage));  // the ring goes on (next tile or turn)
      for (int k = own_hi + 1; k <= tiles; ++k) idle_turn(k);
    }
  }

  // where O goes, found again (not held in registers through the main loop, where they spill at d = 256); one tile
  // per CTA reads its tile from blockIdx
  const int out_batch = kPersistent ? t.batch : static_cast<int>(blockIdx.z);
  const int out_head = kPersistent ? t.head : static_cast<int>(blockIdx.y);
  const int out_row0 = (kPersistent ? m_start : own_m_block() * kBlockM) + 64 * consumer;
  const CtaSequence out_seq = sequence_of(args.cu_seqlens_q, args.cu_seqlens_k, out_batch, args.seqlen_q, args.seqlen_k);
  // epilogue: O = acc / l into this warpgroup's Q rows (its S GEMMs are done; the other consumer's rows are apart),
  // swizzled as the Q tile (16-byte unit u of row r at u ^ (r % 8): the warp's 8 rows x 4 threads hit 32 banks)
  const int tid = static_cast<int>(threadIdx.x) % 128;
  unsigned char* const s_o = shared + L::kQOffset + qb * L::kQBytes + consumer * 64 * 128;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float row_sum = l_i[r];
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
    const bool empty = m_i[r] == kNegInf;  // no visible key: O = 0, LSE = -inf
    const float inv_sum = empty ? 0.0f : 1.0f / row_sum;
    const int row = 16 * warp + lane / 4 + 8 * r;  // in the warpgroup
#pragma unroll
    for (int i = 0; i < kHeadDim / 8; ++i) {
      const int chunk = i / 8, unit = i % 8;
      *reinterpret_cast<std::uint32_t*>(s_o + chunk * L::kQChunkBytes + row * 128 + ((unit ^ (row % 8)) * 16) +
                                        4 * (lane % 4)) = pack<T>(o[4 * i + 2 * r] * inv_sum, o[4 * i + 2 * r + 1] * inv_sum);
    }
    const int seq_row = out_row0 + row;
    if (lane % 4 == 0 && seq_row < out_seq.seqlen_q) {
      const std::int64_t index = (out_seq.slot * args.heads + out_head) * args.lse_stride + out_seq.q_offset + seq_row;
      args.lse[index] = empty ? kNegInf : m_i[r] * kLn2 + logf(row_sum);  // m_i ln 2: back to the scale of S
    }
  }
  named_barrier_sync(1 + consumer, 128);
  T* const out = static_cast<T*>(args.o) + out_seq.slot * args.o_strides.batch + (out_seq.q_offset + out_row0) * args.o_strides.token +
                 std::int64_t{out_head} * args.o_strides.head;
  constexpr int kUnitsPerRow = kHeadDim / 8;
#pragma unroll
  for (int index = tid; index < 64 * kUnitsPerRow; index += 128) {
    const int row = index / kUnitsPerRow, unit = index % kUnitsPerRow;
    if (out_row0 + row < out_seq.seqlen_q) {
      const uint4 value = *reinterpret_cast<const uint4*>(s_o + (unit / 8) * L::kQChunkBytes + row * 128 +
                                                          (((unit % 8) ^ (row % 8)) * 16));
      *reinterpret_cast<uint4*>(out + row * args.o_strides.token + unit * 8) = value;
    }
  }
  // this warp has read its part of the staging: the Q tile may take the next tile's Q (a TMA write, async proxy)
  // once every consumer warp is here
  if constexpr (kPersistent) {  // one tile without: no next Q, and the counters stay the constant 0
    fence_proxy_async();
    __syncwarp();
    if (lane == 0) mbarrier_arrive(bar_q_empty(qb));
    ++q_count;
    kv_count += tiles;
  }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side

using EncodeTiled = decltype(&cuTensorMapEncodeTiled);

// The driver's cuTensorMapEncodeTiled, looked up once through the runtime (no link against libcuda).
EncodeTiled encode_tiled() {
  static EncodeTiled function = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult status{};
    FL_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000, cudaEnableDefault, &status));
    if (status != cudaDriverEntryPointSuccess || entry == nullptr) {
      throw CudaError("flash3: the driver has no cuTensorMapEncodeTiled (TMA needs a CUDA 12 driver)");
    }
    function = reinterpret_cast<EncodeTiled>(entry);
  });
  return function;
}

// The TMA map of a [batch, rows, heads, d] tensor (varlen: batch 1, rows = total) read in boxes of 64 columns x
// box_rows rows of one head, 128-byte swizzled; reads past `rows` are zero-filled.
CUtensorMap tensor_map(const void* data, DType dtype, const Strides& strides, std::int64_t batch, std::int64_t rows,
                       std::int64_t heads, int head_dim, int box_rows) {
  const std::int64_t e = size_bytes(dtype);
  rows = rows > 0 ? rows : 1;  // an empty tensor is never read (no tile), but the map must be valid
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  const std::int64_t batch_stride = batch > 1 ? strides.batch : strides.token * rows;
  const cuuint64_t byte_strides[3] = {static_cast<cuuint64_t>(strides.token * e), static_cast<cuuint64_t>(strides.head * e),
                                      static_cast<cuuint64_t>(batch_stride * e)};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map{};
  const CUresult status = encode_tiled()(
      &map, dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
      const_cast<void*>(data), dims, byte_strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (status != CUDA_SUCCESS) {
    throw InvalidProblem("strides", "flash3: cuTensorMapEncodeTiled refused a tensor (error " + std::to_string(status) +
                                        "; token stride " + std::to_string(strides.token) + ", head stride " +
                                        std::to_string(strides.head) + ", batch stride " + std::to_string(strides.batch) +
                                        " elements)");
  }
  return map;
}

template <class T, int kBlockM, int kHeadDim, int kBlockN, int kStages, bool kPingpong, bool kPersistent>
void launch(const AttentionParams& params, void* stream) {
  using L = KernelLayout<kBlockM, kHeadDim, kBlockN, kStages, kPersistent>;
  const Problem& p = params.problem;
  const std::int64_t m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  if (m_blocks == 0 || p.batch == 0 || p.heads == 0) return;
  require_shared_bytes("flash3", L::kSharedBytes,
                       "forward tile " + std::to_string(kBlockM) + "x" + std::to_string(kBlockN) + " at head_dim " +
                           std::to_string(kHeadDim));
  const bool varlen = p.is_varlen();
  const std::int64_t batch = varlen ? 1 : p.batch;
  const std::int64_t rows_q = varlen ? p.total_q() : p.seqlen_q;
  const std::int64_t rows_k = varlen ? p.total_k() : p.seqlen_k;
  const CUtensorMap map_q = tensor_map(params.q, params.dtype, params.q_strides, batch, rows_q, p.heads, kHeadDim, kBlockM);
  const CUtensorMap map_k =
      tensor_map(params.k, params.dtype, params.k_strides, batch, rows_k, p.heads_kv, kHeadDim, kBlockN);
  const CUtensorMap map_v =
      tensor_map(params.v, params.dtype, params.v_strides, batch, rows_k, p.heads_kv, kHeadDim, kBlockN);

  const Window w = p.effective_window();
  ForwardArgs args{};
  args.o = params.o;
  args.lse = params.lse;
  args.o_strides = params.o_strides;
  args.lse_stride = varlen ? p.total_q() : p.seqlen_q;
  args.cu_seqlens_q = varlen ? params.cu_seqlens_q : nullptr;
  args.cu_seqlens_k = varlen ? params.cu_seqlens_k : nullptr;
  args.seqlen_q = static_cast<int>(p.seqlen_q);
  args.seqlen_k = static_cast<int>(p.seqlen_k);
  args.heads = static_cast<int>(p.heads);
  args.group = static_cast<int>(p.group_size());
  args.window_left = window_arg(w.left);
  args.window_right = window_arg(w.right);
  args.scale_log2 = static_cast<float>(p.scale() * kLog2eDouble);
  args.m_blocks = static_cast<int>(m_blocks);
  args.batch = static_cast<int>(p.batch);
  // half of L2 for the K and V of a group's pairs (per query head: GQA's shared K and V count once per head)
  const std::int64_t kv_bytes = std::max<std::int64_t>(p.seqlen_k * (p.head_dim + p.dv()) * 2, 1);
  args.group_pairs = static_cast<int>(std::clamp<std::int64_t>(
      device_attribute<cudaDevAttrL2CacheSize>() / 2 / kv_bytes, 1, p.heads * p.batch));

  auto* kernel = forward_kernel<T, kBlockM, kHeadDim, kBlockN, kStages, kPingpong, kPersistent>;
  FL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L::kSharedBytes));
  // persistent: one CTA per multiprocessor (the tile's shared memory and registers allow one), walking the tiles
  const std::int64_t work = m_blocks * p.heads * p.batch;
  if (kPersistent && work >= std::int64_t{1} << 31) {
    throw Unsupported("flash3: the persistent schedule numbers its work tiles in 32 bits (query blocks x heads x "
                      "batch = " + std::to_string(work) + ")");
  }
  const dim3 grid = kPersistent ? dim3(static_cast<unsigned>(std::min<std::int64_t>(work, multiprocessors())))
                                : dim3(static_cast<unsigned>(m_blocks), static_cast<unsigned>(p.heads),
                                       static_cast<unsigned>(p.batch));
  kernel<<<grid, Cta<kBlockM>::kThreads, L::kSharedBytes, static_cast<cudaStream_t>(stream)>>>(map_q, map_k, map_v, args);
  FL_CUDA_CHECK_LAUNCH("flash3 forward_kernel");
}

constexpr int kTileCount = sizeof(kForwardTiles) / sizeof(kForwardTiles[0]);

// Whether tile kForwardTiles[index] has a persistent kernel (with ping-pong): 128 x 128 with 2 stages at d = 64 and
// 128, and the 192 x 96 d = 64 default (three consumers at 160 registers: 0 bytes of spills since the walk's state
// became the tile index; 24 bytes before). d = 256 spills with the walk's state (O is 128 fp32 per thread).
constexpr bool has_persistent(int index) {
  const ForwardTile t = kForwardTiles[index];
  return (t.head_dim <= 128 && t.block_m == 128 && t.block_n == 128 && t.stages == 2) ||
         (t.head_dim == 64 && t.block_m == 192 && t.block_n == 96 && t.stages == 2);
}

template <class T, int kIndex = 0>
void dispatch(const AttentionParams& params, const ForwardTile& tile, bool pingpong, bool persistent, void* stream) {
  if constexpr (kIndex < kTileCount) {
    constexpr ForwardTile t = kForwardTiles[kIndex];
    if (t.head_dim == tile.head_dim && t.block_m == tile.block_m && t.block_n == tile.block_n &&
        t.stages == tile.stages) {
      if (persistent) {
        if constexpr (has_persistent(kIndex)) {
          if (pingpong) return launch<T, t.block_m, t.head_dim, t.block_n, t.stages, true, true>(params, stream);
        }
        throw Unsupported("flash3: the persistent schedule is compiled with ping-pong for tile 128x128/2 at head_dim "
                          "64 and 128 and 192x96/2 at head_dim 64 only (flash3[persistent=1,br=..,bc=..]; asked: d = " +
                          std::to_string(t.head_dim) + ", " + std::to_string(t.block_m) + "x" +
                          std::to_string(t.block_n) + "/" + std::to_string(t.stages) +
                          (pingpong ? "" : ", pingpong=0") + ")");
      }
      return pingpong ? launch<T, t.block_m, t.head_dim, t.block_n, t.stages, true, false>(params, stream)
                      : launch<T, t.block_m, t.head_dim, t.block_n, t.stages, false, false>(params, stream);
    }
    return dispatch<T, kIndex + 1>(params, tile, pingpong, persistent, stream);
  } else {
    throw Unsupported("flash3: no compiled forward tile for head_dim " + std::to_string(tile.head_dim));
  }
}

template <class T, std::size_t... kIndices>
void add_kernels(std::vector<KernelInfo>& list, std::index_sequence<kIndices...>) {
  const auto add = [&list](auto index) {
    constexpr ForwardTile t = kForwardTiles[decltype(index)::value];
    using L = KernelLayout<t.block_m, t.head_dim, t.block_n, t.stages, false>;
    const std::string tile = "forward d=" + std::to_string(t.head_dim) + " " + std::to_string(t.block_m) + "x" +
                             std::to_string(t.block_n) + " stages=" + std::to_string(t.stages) + " " +
                             (std::is_same_v<T, __half> ? "fp16" : "bf16");
    list.push_back(kernel_info(forward_kernel<T, t.block_m, t.head_dim, t.block_n, t.stages, true, false>,
                               tile + " pingpong", L::kSharedBytes));
    list.push_back(
        kernel_info(forward_kernel<T, t.block_m, t.head_dim, t.block_n, t.stages, false, false>, tile, L::kSharedBytes));
    if constexpr (has_persistent(static_cast<int>(decltype(index)::value))) {
      using LP = KernelLayout<t.block_m, t.head_dim, t.block_n, t.stages, true>;
      list.push_back(kernel_info(forward_kernel<T, t.block_m, t.head_dim, t.block_n, t.stages, true, true>,
                                 tile + " pingpong persistent", LP::kSharedBytes));
    }
  };
  (add(std::integral_constant<std::size_t, kIndices>{}), ...);
}

}  // namespace

void launch_forward(const AttentionParams& params, const ForwardTile& tile, bool pingpong, bool persistent,
                    void* stream) {
  switch (params.dtype) {
    case DType::fp16: return dispatch<__half>(params, tile, pingpong, persistent, stream);
    case DType::bf16: return dispatch<__nv_bfloat16>(params, tile, pingpong, persistent, stream);
    default: break;
  }
  throw Unsupported("flash3: no kernel for dtype " + std::string(name(params.dtype)) + " (fp16, bf16)");
}

std::vector<KernelInfo> forward_kernels() {
  std::vector<KernelInfo> list;
  add_kernels<__half>(list, std::make_index_sequence<kTileCount>{});
  add_kernels<__nv_bfloat16>(list, std::make_index_sequence<kTileCount>{});
  return list;
}

}  // namespace flashlab::kernels::flash3
