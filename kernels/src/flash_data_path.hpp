// The forward data path the FlashAttention-style variants share (flash2, flash3): where their online softmax rounds,
// for the a-priori error bound (reference/NUMERICS.md). Internal header of kernels/, no CUDA.
#pragma once

#include <string>

#include "flashlab/core/dtype.hpp"
#include "flashlab/core/numerics.hpp"

namespace flashlab::kernels {

// S = Q K^T on tensor cores (products exact, fp32 accumulation, truncating) kept in fp32 registers; P = exp2(S c - m)
// by one FMA and ex2.approx.ftz against a lazy running max, one rescale of l and the accumulator per key tile of
// `key_tile` keys at most; P rounded to `dtype` as the A operand of P V (fp32 accumulation, truncating); l summed in
// fp32 from the unrounded P by the 4 threads of an accumulator row, then two shuffle additions; O = acc * (1 / l)
// rounded to the dtype; LSE in fp32. The summary names the instruction (`mma`, `wgmma`); backward fields stay unset.
inline numerics::DataPath online_softmax_forward_path(DType dtype, int key_tile, const char* instruction) {
  const double u32 = unit_roundoff(DType::fp32), u = unit_roundoff(dtype);
  numerics::DataPath path;
  path.summary = std::string("S fp32 (") + instruction + ", truncating); online softmax, lazy max, " +
                 std::to_string(key_tile) + "-key tiles; P " + std::string(name(dtype)) + " before PV; O = acc/l";
  path.u_arith = u32;
  path.qk = {u32, true};
  path.u_exp = 3 * u32;  // ex2.approx: 2 ulp of the correctly rounded result, plus its rounding
  path.u_p = u;
  path.p_dtype = dtype;
  path.p_normalized = false;
  path.pv = {u32, true};
  path.row_sum = {u32, false};
  path.row_sum_chains = 4;  // the 4 threads of an accumulator row each sum their columns, then two shuffle additions
  path.key_tile = key_tile;
  path.u_out = u;
  path.out_dtype = dtype;
  return path;
}

}  // namespace flashlab::kernels
