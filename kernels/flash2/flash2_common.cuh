// Device and host helpers shared by the flash2 forward and backward (internal header of kernels/flash2/, CUDA
// only): the element types of the m16n8k16 path, PTX wrappers (mma.sync, ldmatrix), the padded tile load, and the
// launch-time checks. What every variant's kernels share (cp.async, ex2, the mask rule, varlen sequences) is
// src/device_common.cuh.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "flashlab/core/errors.hpp"
#include "flashlab/kernels/attention.hpp"
#include "flashlab/kernels/device.hpp"
#include "src/check.hpp"
#include "src/device_common.cuh"
#include "src/launch_common.cuh"
#include "src/launch_checks.hpp"

namespace flashlab::kernels::flash2 {


// ---------------------------------------------------------------------------------------------------------------
// Element types

template <class T>
struct Elem;
template <>
struct Elem<__half> {
  static constexpr DType kDType = DType::fp16;
  // two fp32 values as one packed register of the mma's A operand (round to nearest)
  __device__ static std::uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&h);
  }
  __device__ static void mma(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <>
struct Elem<__nv_bfloat16> {
  static constexpr DType kDType = DType::bf16;
  __device__ static std::uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&h);
  }
  __device__ static void mma(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// ---------------------------------------------------------------------------------------------------------------
// PTX wrappers

__device__ inline void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// ---------------------------------------------------------------------------------------------------------------
// ldmatrix lane addresses. An x4 ldmatrix reads a 16 x 16 block as four 8 x 8 matrices; lane l gives the address
// of row l % 8 of matrix l / 8 (`mat`). Which matrix holds which half of the block depends on the operand:
//  A, stored [m][k] (row-major):  rows m0 + (mat % 2) 8, columns k0 + (mat / 2) 8     (ldmatrix)
//  B, stored [n][k]:              rows n0 + (mat / 2) 8, columns k0 + (mat % 2) 8     (ldmatrix)
//  B, stored [k][n]:              rows k0 + (mat % 2) 8, columns n0 + (mat / 2) 8     (ldmatrix.trans)
//  A, stored [k][m]:              rows k0 + (mat / 2) 8, columns m0 + (mat % 2) 8     (ldmatrix.trans)
// `row_half` / `col_half` pick mat % 2 (0) or mat / 2 (1) for the rows / columns.

__device__ inline int lane_half(int lane, int which) {
  return which == 0 ? (lane / 8) % 2 : lane / 16;
}

// In a plain row-major tile of kRowBytes rows (the backward's P and dS): the lane's byte offset in the block at
// (0, 0); blocks further on add rows * kRowBytes and columns * 2 bytes.
template <int kRowBytes, int kElemBytes>
__device__ inline std::uint32_t lane_offset(int lane, int row_half, int col_half) {
  return (lane % 8 + lane_half(lane, row_half) * 8) * kRowBytes + lane_half(lane, col_half) * 8 * kElemBytes;
}

// In a TileRows tile (Q, K, V, dO; kernel_traits.hpp): byte offset of 16-byte chunk `chunk` of row `row`.
template <class Rows>
__device__ inline std::uint32_t chunk_offset(int row, int chunk) {
  return row * Rows::kRowBytes + 16 * (Rows::kSwizzle ? chunk ^ (row & 7) : chunk);
}

// The lane's offset in a TileRows tile, for blocks whose rows start at row0 (a multiple of 8) and whose columns
// start at 16-byte chunk chunk0 (the warp's first column / 8, a multiple of twice the number of 16-column blocks
// the warp reads). Add pair_address for the block's column and rows * kRowBytes for its rows.
template <class Rows>
__device__ inline std::uint32_t tile_lane_offset(int lane, int row_half, int col_half, int row0, int chunk0) {
  return chunk_offset<Rows>(row0 + lane % 8 + lane_half(lane, row_half) * 8, chunk0 + lane_half(lane, col_half));
}

// The address of 16-column block j (chunks 2j, 2j + 1 past the lane's chunk0) from a lane address `base` (a tile at
// a 128-byte aligned address plus tile_lane_offset). Swizzled: the lane's chunk c0 + h (c0 a multiple of 2 J for J
// blocks per warp, h = 0 or 1) has no bit in common with 2 (j % 4), so (c0 + h + 2 j) ^ (row % 8) is
// ((c0 + h) ^ (row % 8)) ^ 2 (j % 4), plus 8 (j / 4) above the three bits the row changes: one XOR of the address.
template <class Rows>
__device__ inline std::uint32_t pair_address(std::uint32_t base, int j) {
  if constexpr (Rows::kSwizzle) {
    return (base ^ static_cast<std::uint32_t>((j % 4) * 32)) + (j / 4) * 128;
  } else {
    return base + j * 32;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Tile loads: kRows rows of d elements from global memory (row stride in elements) into a TileRows tile (swizzled or
// padded rows). Rows at or past `valid_rows` are zero-filled (cp.async with a source size of 0), so no garbage, and no
// NaN from poisoned memory, can reach the mma.

template <class Traits, class Rows, int kRows, class T>
__device__ inline void load_tile(std::uint32_t dst, const T* src, std::int64_t row_stride, int valid_rows, int tid) {
  constexpr int kPerThread = kRows * Traits::kChunksPerRow / Traits::kThreads;
  if constexpr (Traits::kThreads % Traits::kChunksPerRow == 0) {
    // every thread keeps one column; its rows step by kRowStep, so one pointer walks them (few live registers)
    constexpr int kRowStep = Traits::kThreads / Traits::kChunksPerRow;
    const int row0 = tid / Traits::kChunksPerRow;
    const int chunk = tid % Traits::kChunksPerRow;
    const T* from = src + row0 * row_stride + chunk * Traits::kChunkElems;
    const std::int64_t step = kRowStep * row_stride;
    // a step of a multiple of 8 rows keeps row % 8, so the shared address steps by a constant (one register)
    constexpr bool kConstantStep = !Rows::kSwizzle || kRowStep % 8 == 0;
    const std::uint32_t to = dst + chunk_offset<Rows>(row0, chunk);
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int row = row0 + i * kRowStep;
      const bool valid = row < valid_rows;
      const std::uint32_t at = kConstantStep ? to + i * kRowStep * Rows::kRowBytes : dst + chunk_offset<Rows>(row, chunk);
      cp_async_16(at, valid ? from : src, valid ? 16 : 0);
      from += step;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int index = tid + i * Traits::kThreads;
      const int row = index / Traits::kChunksPerRow;
      const int chunk = index % Traits::kChunksPerRow;
      const bool valid = row < valid_rows;
      const T* from = valid ? src + row * row_stride + chunk * Traits::kChunkElems : src;
      cp_async_16(dst + chunk_offset<Rows>(row, chunk), from, valid ? 16 : 0);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Launch-time checks

inline void require(bool ok, const char* field, const std::string& message) {
  detail::require(ok, "flash2", field, message);
}

// `what` needs `bytes` of shared memory per block (src/launch_common.cuh, with the variant's name).
inline void require_shared_bytes(int bytes, const std::string& what) {
  kernels::require_shared_bytes("flash2", bytes, what);
}

}  // namespace flashlab::kernels::flash2
