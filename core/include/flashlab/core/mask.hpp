// The mask rule, written once for the host and the device: the keys a query row keeps. Problem::key_range (the
// reference, the harness, the CPU variants) and every GPU kernel (standard, flash2) call it.
//
// A mask keeps key j for query i (both counted from the start of their sequence) when
//     i + (N_k - N_q) - left <= j <= i + (N_k - N_q) + right,
// with left/right = -1 (any negative value) meaning unbounded; causal is right = 0, aligned bottom-right.
// Under key padding a sequence's valid tokens are an interval (queries and keys alike, self-attention): the rule
// applies inside it as if it were the whole sequence, so a padded problem keeps exactly the pairs of its unpadded
// varlen form (Problem::unpadded), and a padded query row keeps no key.
#pragma once

#include "flashlab/core/host_device.hpp"

namespace flashlab {

// Keys [lo, hi] of one query row; empty when lo > hi. lo >= 0 and hi <= N_k - 1; with kTileIndices (kernels that
// index key tiles by them) also lo <= N_k and hi >= -1, else an empty range may lie further out.
template <class Int>
struct KeptKeys {
  Int lo;
  Int hi;
};

// `Int` is std::int64_t on the host; the kernels use int where N_q, N_k < 2^30 and the windows fit (the diagonal
// i + N_k - N_q then lies in (-2^30, 2^30) and diagonal -/+ window cannot overflow).
template <class Int, bool kTileIndices = false>
FL_HOST_DEVICE constexpr KeptKeys<Int> kept_keys(Int window_left, Int window_right, Int i, Int seqlen_q, Int seqlen_k) {
  const Int diagonal = i + seqlen_k - seqlen_q;
#if defined(__CUDA_ARCH__)
  // The integer min/max instructions, in the forms measured to keep every kernel free of spills: at 255 registers
  // (flash2) the allocation depends on the instruction mix.
  if constexpr (kTileIndices) {
    const Int lo = window_left < 0 ? Int(0) : diagonal - window_left;
    const Int hi = window_right < 0 ? seqlen_k - 1 : diagonal + window_right;
    return {min(max(lo, Int(0)), seqlen_k), min(max(hi, Int(-1)), seqlen_k - 1)};
  } else {
    return {window_left < 0 ? Int(0) : max(Int(0), diagonal - window_left),
            window_right < 0 ? seqlen_k - 1 : min(seqlen_k - 1, diagonal + window_right)};
  }
#else
  Int lo = window_left < 0 ? Int(0) : diagonal - window_left;
  Int hi = window_right < 0 ? seqlen_k - 1 : diagonal + window_right;
  lo = lo < 0 ? Int(0) : lo;
  hi = hi > seqlen_k - 1 ? seqlen_k - 1 : hi;
  if (kTileIndices) {
    lo = lo > seqlen_k ? seqlen_k : lo;
    hi = hi < -1 ? Int(-1) : hi;
  }
  return {lo, hi};
#endif
}

// Where a batch entry of `seqlen` tokens keeps its `valid` ones: padded tokens before them (left padding) or after
// them (right padding).
template <class Int>
struct PaddedTokens {
  Int front;
  Int back;
};
template <class Int>
FL_HOST_DEVICE constexpr PaddedTokens<Int> padded_tokens(bool left, Int seqlen, Int valid) {
  return left ? PaddedTokens<Int>{seqlen - valid, Int(0)} : PaddedTokens<Int>{Int(0), seqlen - valid};
}

// The rule with key padding: the valid tokens are [pad_front, N - pad_back) of both N_q and N_k. A valid row keeps the
// keys kept_keys gives it inside the valid interval, shifted back; a padded row keeps none ({pad_front, pad_front - 1},
// which meets the tile-index form's limits too). pad_front = pad_back = 0 is kept_keys itself.
template <class Int, bool kTileIndices = false>
FL_HOST_DEVICE constexpr KeptKeys<Int> kept_keys_padded(Int window_left, Int window_right, Int i, Int seqlen_q,
                                                        Int seqlen_k, Int pad_front, Int pad_back) {
  const Int valid_q = seqlen_q - pad_front - pad_back;
  const Int row = i - pad_front;
  if (row < 0 || row >= valid_q) return {pad_front, pad_front - 1};
  const KeptKeys<Int> kept =
      kept_keys<Int, kTileIndices>(window_left, window_right, row, valid_q, seqlen_k - pad_front - pad_back);
  return {kept.lo + pad_front, kept.hi + pad_front};
}

}  // namespace flashlab
