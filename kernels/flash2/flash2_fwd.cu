// The `flash2` variant, forward: FlashAttention-2 (Dao, 2023, Algorithm 1) on tensor cores, written directly in
// PTX-level CUDA (mma.sync.m16n8k16 with fp32 accumulation, ldmatrix, cp.async), for fp16 and bf16.
//
// One CTA per (query block of kBlockM rows, head h, batch entry b); kv head g = h / (H / H_kv). Its 4 warps each
// own 16 query rows. The CTA
//   prologue:  loads its Q tile into shared memory once (cp.async, rows past N_q zero-filled) and the first K/V tile;
//   main loop: over the K/V tiles its rows can see (the tile range follows from the key ranges of its first and
//              last query row, so tiles the mask hides entirely are never loaded), double-buffered: tile j+1 is in
//              flight (cp.async) while tile j is computed:
//                S = Q K^T                     mma.sync, A = Q (ldmatrix.x4), B = K (ldmatrix.x4), fp32 in registers
//                mask                          only on boundary tiles: causal / window edges and keys past N_k
//                m_i' = max(m_i, rowmax S)     fp32, shared by the 4 threads of an mma row (two shuffles)
//                P = exp2(S c - m_i' c)        c = scale log2(e), one FMA + MUFU.EX2 per score
//                l_i = l_i e^(m_i - m_i') + rowsum P,   acc = acc e^(m_i - m_i')   (the rescale)
//                acc += P V                    P converted to fp16/bf16 in registers is the A operand directly (the
//                                              C fragment of S has the A fragment's layout), B = V (ldmatrix.x4.trans)
//   epilogue:  O = acc / l_i, staged through the Q tile for 16-byte stores; LSE = m_i scale + ln l_i (fp32).
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

#include "flash2/flash2.hpp"
#include "flash2/flash2_common.cuh"
#include "flash2/kernel_traits.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/kernels/device.hpp"
#include "src/check.hpp"

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
  std::int64_t q_batch, q_token, q_head;  // strides in elements
  std::int64_t k_batch, k_token, k_head;
  std::int64_t v_batch, v_token, v_head;
  std::int64_t o_batch, o_token, o_head;
  std::int64_t lse_stride;           // N_q (dense) or total_q (varlen)
  const std::int32_t* cu_seqlens_q;  // null for dense batches
  const std::int32_t* cu_seqlens_k;
  int seqlen_q;  // dense lengths (varlen: read per sequence from cu_seqlens)
  int seqlen_k;
  int heads;
  int group;                 // H / H_kv
  std::int64_t window_left;  // effective window (causal folded in), -1 = unbounded
  std::int64_t window_right;
  float scale;       // softmax scale
  float scale_log2;  // softmax scale * log2(e)
};

// ---------------------------------------------------------------------------------------------------------------
// The kernel

// Keys [lo, hi] query row i may see (Problem::key_range, clamped so that both fit 32 bits: lo in [0, N_k],
// hi in [-1, N_k - 1]); empty when lo > hi.
struct KeyBounds {
  int lo;
  int hi;
};
__device__ inline KeyBounds key_bounds(const ForwardArgs& args, int i, int seqlen_q, int seqlen_k) {
  const std::int64_t diagonal = std::int64_t{i} + seqlen_k - seqlen_q;
  std::int64_t lo = args.window_left < 0 ? 0 : diagonal - args.window_left;
  std::int64_t hi = args.window_right < 0 ? seqlen_k - 1 : diagonal + args.window_right;
  lo = min(max(lo, std::int64_t{0}), std::int64_t{seqlen_k});
  hi = min(max(hi, std::int64_t{-1}), std::int64_t{seqlen_k} - 1);
  return {static_cast<int>(lo), static_cast<int>(hi)};
}

template <class Traits, class T>
__global__ void __launch_bounds__(Traits::kThreads) forward_kernel(const ForwardArgs args) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kRowBytes = Traits::kRowBytes;
  constexpr int kElemBytes = Traits::kElemBytes;
  extern __shared__ __align__(128) unsigned char shared[];

  const int m_block = static_cast<int>(blockIdx.x);
  const int head = static_cast<int>(blockIdx.y);
  const int batch = static_cast<int>(blockIdx.z);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;

  // this sequence: where its tokens are and how long it is
  std::int64_t slot = batch, q_offset = 0, k_offset = 0;
  int seqlen_q = args.seqlen_q, seqlen_k = args.seqlen_k;
  if (args.cu_seqlens_q != nullptr) {
    slot = 0;
    q_offset = args.cu_seqlens_q[batch];
    k_offset = args.cu_seqlens_k[batch];
    seqlen_q = static_cast<int>(args.cu_seqlens_q[batch + 1] - q_offset);
    seqlen_k = static_cast<int>(args.cu_seqlens_k[batch + 1] - k_offset);
  }
  const int m_start = m_block * kBlockM;
  if (m_start >= seqlen_q) return;  // the grid covers the longest sequence of the batch
  const int rows_here = min(kBlockM, seqlen_q - m_start);
  const int kv_head = head / args.group;

  const T* q = static_cast<const T*>(args.q) + slot * args.q_batch + (q_offset + m_start) * args.q_token +
               std::int64_t{head} * args.q_head;
  const T* k = static_cast<const T*>(args.k) + slot * args.k_batch + k_offset * args.k_token +
               std::int64_t{kv_head} * args.k_head;
  const T* v = static_cast<const T*>(args.v) + slot * args.v_batch + k_offset * args.v_token +
               std::int64_t{kv_head} * args.v_head;

  // K/V tiles this CTA visits: key ranges are monotone in the query row, so the union over the CTA's rows runs
  // from the first row's lo to the last row's hi.
  const KeyBounds first = key_bounds(args, m_start, seqlen_q, seqlen_k);
  const KeyBounds last = key_bounds(args, m_start + rows_here - 1, seqlen_q, seqlen_k);
  const int n_block_min = first.lo / kBlockN;
  const int n_block_max = last.hi < 0 ? 0 : (last.hi + kBlockN) / kBlockN;  // exclusive
  // keys every row of the CTA sees: tiles inside [last.lo, first.hi] need no mask
  const int full_lo = last.lo, full_hi = first.hi;

  const std::uint32_t s_q = smem_address(shared + Traits::kQOffset);
  const std::uint32_t s_k = smem_address(shared + Traits::kKOffset);
  const std::uint32_t s_v = smem_address(shared + Traits::kVOffset);

  // this thread's two rows of the warp's 16 (mma C layout: row lane/4 and lane/4 + 8, columns 2 (lane%4) + {0,1})
  const int row_in_warp = lane / 4;
  const int col_in_tile = 2 * (lane % 4);
  KeyBounds bounds[2];
#pragma unroll
  for (int r = 0; r < 2; ++r)
    bounds[r] = key_bounds(args, m_start + warp * 16 + row_in_warp + 8 * r, seqlen_q, seqlen_k);

  float acc[Traits::kOTiles][4];
#pragma unroll
  for (int t = 0; t < Traits::kOTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[t][e] = 0.0f;
  }
  float m_i[2] = {kNegInf, kNegInf};  // running row max of S (unscaled)
  float l_i[2] = {0.0f, 0.0f};        // running row sum of P, this thread's columns only (reduced in the epilogue)

  // ldmatrix lane addressing (byte offsets inside a tile); matrix = lane / 8, its row = lane % 8
  //  A (Q, row-major [m][k]):   matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
  //  B (K, stored [n][k]):      matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
  //  B (V, stored [k][n], .trans): matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
  const int mat_row = lane % 8;
  const int mat = lane / 8;
  const std::uint32_t q_lane = s_q + (warp * 16 + mat_row + (mat % 2) * 8) * kRowBytes + (mat / 2) * 8 * kElemBytes;
  const std::uint32_t k_lane = (mat_row + (mat / 2) * 8) * kRowBytes + (mat % 2) * 8 * kElemBytes;
  const std::uint32_t v_lane = (mat_row + (mat % 2) * 8) * kRowBytes + (mat / 2) * 8 * kElemBytes;

  // prologue: Q (group 0), first K/V tile (group 1)
  const int tiles = n_block_max - n_block_min;
  if (tiles > 0) {
    load_tile<Traits, kBlockM>(s_q, q, args.q_token, rows_here, tid);
    cp_async_commit();
    const int n0 = n_block_min * kBlockN;
    load_tile<Traits, kBlockN>(s_k, k + n0 * args.k_token, args.k_token, seqlen_k - n0, tid);
    load_tile<Traits, kBlockN>(s_v, v + n0 * args.v_token, args.v_token, seqlen_k - n0, tid);
    cp_async_commit();
  }

  // main loop over K/V tiles, ascending
  for (int it = 0; it < tiles; ++it) {
    const int n_block = n_block_min + it;
    const int stage = it % Traits::kStages;
    if (it + 1 < tiles) {  // tile j+1 into the other stage, in flight while tile j is computed
      const int n1 = (n_block + 1) * kBlockN;
      const int next = (it + 1) % Traits::kStages;
      load_tile<Traits, kBlockN>(s_k + next * Traits::kKVTileBytes, k + n1 * args.k_token, args.k_token, seqlen_k - n1,
                                 tid);
      load_tile<Traits, kBlockN>(s_v + next * Traits::kKVTileBytes, v + n1 * args.v_token, args.v_token, seqlen_k - n1,
                                 tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    // S = Q K^T (16 x kBlockN per warp, fp32)
    const std::uint32_t k_tile = s_k + stage * Traits::kKVTileBytes + k_lane;
    float s[Traits::kSTiles][4];
#pragma unroll
    for (int t = 0; t < Traits::kSTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[t][e] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      std::uint32_t a[4];
      ldmatrix_x4(a, q_lane + kk * 16 * kElemBytes);
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        std::uint32_t b[4];
        ldmatrix_x4(b, k_tile + np * 16 * kRowBytes + kk * 16 * kElemBytes);
        Elem<T>::mma(s[2 * np], a, b[0], b[1]);
        Elem<T>::mma(s[2 * np + 1], a, b[2], b[3]);
      }
    }

    // mask, only on boundary tiles (causal / window edges, keys past N_k): masked scores become -inf by selection
    const int n_start = n_block * kBlockN;
    const bool boundary = n_start < full_lo || n_start + kBlockN - 1 > full_hi;
    if (boundary) {
#pragma unroll
      for (int t = 0; t < Traits::kSTiles; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n_start + t * 8 + col_in_tile + (e % 2);
          const KeyBounds& kb = bounds[e / 2];
          s[t][e] = (col >= kb.lo && col <= kb.hi) ? s[t][e] : kNegInf;
        }
      }
    }

    // online softmax: new row max, rescale of l_i and acc, P = exp2(S c - m_i c)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float row_max = m_i[r];
#pragma unroll
      for (int t = 0; t < Traits::kSTiles; ++t) row_max = fmaxf(row_max, fmaxf(s[t][2 * r], s[t][2 * r + 1]));
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
      // -inf guard: a row with no visible key so far shifts by 0, so exp2(-inf - 0) = 0 instead of NaN
      const float shift = row_max == kNegInf ? 0.0f : row_max * args.scale_log2;
      const float rescale = exp2_ftz(m_i[r] * args.scale_log2 - shift);  // m_i = -inf: 0 (acc and l_i are 0)
      m_i[r] = row_max;
      float row_sum = 0.0f;
#pragma unroll
      for (int t = 0; t < Traits::kSTiles; ++t) {
        s[t][2 * r] = exp2_ftz(fmaf(s[t][2 * r], args.scale_log2, -shift));
        s[t][2 * r + 1] = exp2_ftz(fmaf(s[t][2 * r + 1], args.scale_log2, -shift));
        row_sum += s[t][2 * r] + s[t][2 * r + 1];
      }
      l_i[r] = l_i[r] * rescale + row_sum;
#pragma unroll
      for (int t = 0; t < Traits::kOTiles; ++t) {
        acc[t][2 * r] *= rescale;
        acc[t][2 * r + 1] *= rescale;
      }
    }

    // acc += P V: the C fragments of two n8 tiles of S are the A fragment of one k16 step (no shared memory)
    const std::uint32_t v_tile = s_v + stage * Traits::kKVTileBytes + v_lane;
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const std::uint32_t p[4] = {Elem<T>::pack(s[2 * kk][0], s[2 * kk][1]), Elem<T>::pack(s[2 * kk][2], s[2 * kk][3]),
                                  Elem<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                  Elem<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kHeadDim / 16; ++dp) {
        std::uint32_t b[4];
        ldmatrix_x4_trans(b, v_tile + kk * 16 * kRowBytes + dp * 16 * kElemBytes);
        Elem<T>::mma(acc[2 * dp], p, b[0], b[1]);
        Elem<T>::mma(acc[2 * dp + 1], p, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration's load overwrites this stage
  }

  // epilogue: l_i over the row's 4 threads, O = acc / l_i into the (now free) Q tile, LSE
  T* s_o = reinterpret_cast<T*>(shared + Traits::kQOffset);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float row_sum = l_i[r];
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
    const bool empty = m_i[r] == kNegInf;  // no visible key: O = 0, LSE = -inf
    const float inv_sum = empty ? 0.0f : 1.0f / row_sum;
    const int row = warp * 16 + row_in_warp + 8 * r;
#pragma unroll
    for (int t = 0; t < Traits::kOTiles; ++t) {
      const std::uint32_t packed = Elem<T>::pack(acc[t][2 * r] * inv_sum, acc[t][2 * r + 1] * inv_sum);
      *reinterpret_cast<std::uint32_t*>(s_o + row * Traits::kRowElems + t * 8 + col_in_tile) = packed;
    }
    if (lane % 4 == 0 && row < rows_here) {
      const std::int64_t index = (slot * args.heads + head) * args.lse_stride + q_offset + m_start + row;
      args.lse[index] = empty ? kNegInf : m_i[r] * args.scale + logf(row_sum);
    }
  }
  __syncthreads();
  T* o = static_cast<T*>(args.o) + slot * args.o_batch + (q_offset + m_start) * args.o_token +
         std::int64_t{head} * args.o_head;
  constexpr int kPerThread = kBlockM * Traits::kChunksPerRow / Traits::kThreads;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int chunk = tid + i * Traits::kThreads;
    const int row = chunk / Traits::kChunksPerRow;
    const int col = (chunk % Traits::kChunksPerRow) * Traits::kChunkElems;
    if (row < rows_here) {
      *reinterpret_cast<uint4*>(o + row * args.o_token + col) =
          *reinterpret_cast<const uint4*>(s_o + row * Traits::kRowElems + col);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side

std::int64_t workspace_bytes(const Problem& p, DType dtype, Pass pass) {
  // forward: LSE is an output, nothing else is stored; fwdbwd = max(fwd, bwd) = bwd
  return pass == Pass::fwd ? 0 : backward_workspace_bytes(p, dtype);
}

// grid: query blocks of the longest sequence x heads x batch entries
template <class T, int kHeadDim>
void launch_forward(const ForwardArgs& args, const Problem& p, cudaStream_t stream) {
  using Traits = ForwardTraits<kHeadDim, sizeof(T)>;
  const std::int64_t m_blocks = (p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  if (m_blocks == 0 || p.batch == 0 || p.heads == 0) return;
  auto* kernel = forward_kernel<Traits, T>;
  FL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSharedBytes));
  const dim3 grid(static_cast<unsigned>(m_blocks), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
  kernel<<<grid, Traits::kThreads, Traits::kSharedBytes, stream>>>(args);
  FL_CUDA_CHECK_LAUNCH("flash2 forward_kernel");
}

template <class T>
void forward_dtype(const ForwardArgs& args, const Problem& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_forward<T, 32>(args, p, stream);
    case 64: return launch_forward<T, 64>(args, p, stream);
    case 96: return launch_forward<T, 96>(args, p, stream);
    case 128: return launch_forward<T, 128>(args, p, stream);
    case 256: return launch_forward<T, 256>(args, p, stream);
    default: break;
  }
  throw Unsupported("flash2: no kernel for head_dim = " + std::to_string(p.head_dim));
}

void forward(const AttentionParams& params, const LaunchContext& ctx) {
  const Problem& p = params.problem;
  p.validate();
  const Support support = supports(p, params.dtype, Pass::fwd);
  if (!support.ok) throw Unsupported(support.reason);
  const std::int64_t s = size_bytes(params.dtype);
  check_tensor(params.q, params.q_strides, s, "q");
  check_tensor(params.k, params.k_strides, s, "k");
  check_tensor(params.v, params.v_strides, s, "v");
  check_tensor(params.o, params.o_strides, s, "o");
  require(params.lse != nullptr, "lse", "is null");
  if (p.is_varlen()) {
    require(params.cu_seqlens_q != nullptr && params.cu_seqlens_k != nullptr, "cu_seqlens_q",
            "and cu_seqlens_k must be device arrays for a varlen problem");
  }
  require_sm80();

  const Window w = p.effective_window();
  ForwardArgs args{};
  args.q = params.q;
  args.k = params.k;
  args.v = params.v;
  args.o = params.o;
  args.lse = params.lse;
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
  args.lse_stride = p.is_varlen() ? p.total_q() : p.seqlen_q;
  args.cu_seqlens_q = p.is_varlen() ? params.cu_seqlens_q : nullptr;
  args.cu_seqlens_k = p.is_varlen() ? params.cu_seqlens_k : nullptr;
  args.seqlen_q = static_cast<int>(p.seqlen_q);
  args.seqlen_k = static_cast<int>(p.seqlen_k);
  args.heads = static_cast<int>(p.heads);
  args.group = static_cast<int>(p.group_size());
  args.window_left = w.left;
  args.window_right = w.right;
  args.scale = static_cast<float>(p.scale());
  args.scale_log2 = static_cast<float>(p.scale() * kLog2eDouble);

  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  switch (params.dtype) {
    case DType::fp16: return forward_dtype<__half>(args, p, stream);
    case DType::bf16: return forward_dtype<__nv_bfloat16>(args, p, stream);
    default: break;
  }
  throw Unsupported(support.reason);
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
  if (p.dv() != d) {
    return Support::no("flash2 needs head_dim_v == head_dim (head_dim_v = " + std::to_string(p.dv()) +
                       ", head_dim = " + std::to_string(d) + ")");
  }
  if (p.seqlen_q >= kMaxLength || p.seqlen_k >= kMaxLength || p.total_q() >= kMaxLength || p.total_k() >= kMaxLength) {
    return Support::no(
        "flash2 indexes tokens of a sequence in 32 bits: N_q, N_k and the varlen totals must be below "
        "2^30");
  }
  if (p.heads > kMaxGridYZ || p.batch > kMaxGridYZ) {
    return Support::no("flash2 puts heads and batch entries on gridDim.y and .z: at most 65535 each");
  }
  return Support::yes();
}

}  // namespace flash2

Variant flash2_variant() {
  Variant v;
  v.id = "flash2";
  v.options = {{"deterministic", "1: bitwise repeatable dQ (key blocks add in a fixed order, slower); 0: atomics"}};
  v.description =
      "FlashAttention-2 on tensor cores (mma.sync m16n8k16, ldmatrix, cp.async double buffering): tiled, online "
      "softmax, O(N) memory; backward parallel over K/V blocks with an fp32 dQ accumulator";
  v.device = Device::cuda;
  v.materializes = false;
  v.supported =
      "fp16, bf16; head_dim 32, 64, 96, 128, 256 with head_dim_v == head_dim; causal, sliding window, GQA/MQA, "
      "varlen, N_q != N_k; fwd and bwd (deterministic bwd selectable)";
  v.supports = flash2::supports;
  v.workspace_model = flash2::workspace_bytes;
  v.forward = flash2::forward;
  v.backward = flash2::backward;
  return v;
}

}  // namespace flashlab::kernels
