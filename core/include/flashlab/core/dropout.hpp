// Attention dropout's keep mask, written once for the host and the device: the fp64 reference, the CPU variants
// and the flash2 kernels all call dropout_draw / dropout_keep, so every side drops the same (row, key) pairs, bit
// for bit, and verification against the reference stays exact.
//
// Where dropout applies (FlashAttention-2): on the normalized probabilities, after the softmax,
//   P = softmax(S) (over the keys the mask keeps),  O = (Z o P / (1 - p)) V,  LSE = log sum exp S (unaffected),
// with Z_ij in {0, 1} the keep mask, kept with probability 1 - p. The backward uses the same Z:
//   dV = (Z o P / (1 - p))^T dO,  dP = Z o (dO V^T) / (1 - p),  D = rowsum(dO o O),  dS = P o (dP - D),
//   dQ = scale dS K,  dK = scale dS^T Q
// (D = rowsum(P o dP) still holds: sum_j P_ij dP_ij = dO_i . O_i).
//
// The mask is a pure function of (seed, offset, batch entry b, query head h, query row i, key j), with i and j
// counted from the start of their sequence (as the causal mask is; under key padding from the first valid token,
// below). One Philox4x32-10 draw (philox.hpp) gives
// four 32-bit words to a 2 x 2 patch: rows i and i + 8 of a 16-row block (i % 16 < 8) and the key pair j, j + 1
// (j even), word 2 r + c for row i + 8 r and key j + c. This is the patch one thread holds in an mma.sync m16n8
// accumulator fragment, so a kernel draws each word it uses exactly once. The counter is
//   (key pair j / 2, row pair (i / 16) 8 + i % 8, the 64-bit subsequence offset + b H + h), key = seed,
// so a caller that wants a fresh mask on the next call advances offset by B H (as PyTorch's Philox offsets
// advance). A pair is kept when its word is below keep_threshold(p) = floor((1 - p) 2^32): kept with probability
// (1 - p) up to 2^-32.
//
// Key padding (Problem::key_padding): the mask coordinates of a padded batch entry are the positions inside its valid
// interval, as they are in its unpadded varlen form (Problem::unpadded). Entry b with pad_b = N - v_b padded tokens
// before its v_b valid ones (left padding) draws row i and key j of the padded tensors at (i - pad_b, j - pad_b); right
// padding (valid tokens [0, v_b)) needs no shift. So the padded form and the unpadded form drop exactly the same
// (token, token) pairs, and the materializing variants (padded batch) and the fused kernels (varlen) are checked
// against one fp64 reference. A pair with a padded row or key is never kept: the attention mask removes it first
// (dropout_keep_padded).
#pragma once

#include <cstdint>

#include "flashlab/core/host_device.hpp"
#include "flashlab/core/philox.hpp"

namespace flashlab {

// What a launch carries for dropout (Problem::dropout). p = 0: no dropout, and seed and offset are ignored.
struct DropoutSpec {
  double p = 0;              // probability of dropping a weight, in [0, 1)
  std::uint64_t seed = 0;    // the Philox key
  std::uint64_t offset = 0;  // added to the (batch, head) subsequence of the counter
  [[nodiscard]] bool active() const { return p > 0; }
  friend bool operator==(const DropoutSpec&, const DropoutSpec&) = default;
};

// A word below this keeps its weight: floor((1 - p) 2^32), at most 2^32 - 1 (p = 0 keeps nearly all; callers skip
// the mask then).
FL_HOST_DEVICE inline std::uint32_t dropout_keep_threshold(double p) {
  const double keep = (1.0 - p) * 4294967296.0;  // 1 - p in double (the same on host and device), times 2^32
  return keep >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(keep);
}

// The four words of the patch holding (row i, key j): rows i - i % 16 + i % 8 + {0, 8}, keys j - j % 2 + {0, 1};
// word 2 r + c for row + 8 r and key + c. `subsequence` = b H + h (the query head's (batch, head) index).
FL_HOST_DEVICE inline Philox4x32 dropout_draw(std::uint64_t seed, std::uint64_t offset, std::uint64_t subsequence,
                                              std::uint32_t i, std::uint32_t j) {
  const std::uint64_t stream = offset + subsequence;
  const std::uint32_t row_pair = (i / 16) * 8 + i % 8;
  return philox4x32_10({{j / 2, row_pair, static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)}},
                       static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
}

// Which word of its patch (row i, key j) takes.
FL_HOST_DEVICE constexpr int dropout_word(std::uint32_t i, std::uint32_t j) {
  return static_cast<int>(2 * ((i / 8) % 2) + j % 2);
}

// Whether (row i, key j) of query head subsequence b H + h is kept. One Philox draw per call: the reference and
// the tests use it; the kernels draw a patch at once.
FL_HOST_DEVICE inline bool dropout_keep(std::uint64_t seed, std::uint64_t offset, std::uint64_t subsequence,
                                        std::uint32_t i, std::uint32_t j, std::uint32_t threshold) {
  return dropout_draw(seed, offset, subsequence, i, j).x[dropout_word(i, j)] < threshold;
}

// Whether (row i, key j) of a batch entry whose valid tokens are rows [pad_front, pad_front + valid_q) and keys
// [pad_front, pad_front + valid_k) of its tensors is kept: dropout_keep at (i - pad_front, j - pad_front), the
// positions inside the valid interval; false outside it (a padded pair has no weight to keep). Without key padding
// pad_front = 0 and valid_q, valid_k are the sequence's lengths: dropout_keep itself.
FL_HOST_DEVICE inline bool dropout_keep_padded(std::uint64_t seed, std::uint64_t offset, std::uint64_t subsequence,
                                               std::int64_t i, std::int64_t j, std::int64_t pad_front,
                                               std::int64_t valid_q, std::int64_t valid_k, std::uint32_t threshold) {
  const std::int64_t row = i - pad_front, key = j - pad_front;
  if (row < 0 || row >= valid_q || key < 0 || key >= valid_k) return false;
  return dropout_keep(seed, offset, subsequence, static_cast<std::uint32_t>(row), static_cast<std::uint32_t>(key),
                      threshold);
}

}  // namespace flashlab
