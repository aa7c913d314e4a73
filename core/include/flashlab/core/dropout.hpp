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
// counted from the start of their sequence (as the causal mask is). One Philox4x32-10 draw (philox.hpp) gives
// four 32-bit words to a 2 x 2 patch: rows i and i + 8 of a 16-row block (i % 16 < 8) and the key pair j, j + 1
// (j even), word 2 r + c for row i + 8 r and key j + c. This is the patch one thread holds in an mma.sync m16n8
// accumulator fragment, so a kernel draws each word it uses exactly once. The counter is
//   (key pair j / 2, row pair (i / 16) 8 + i % 8, the 64-bit subsequence offset + b H + h), key = seed,
// so a caller that wants a fresh mask on the next call advances offset by B H (as PyTorch's Philox offsets
// advance). A pair is kept when its word is below keep_threshold(p) = floor((1 - p) 2^32): kept with probability
// (1 - p) up to 2^-32.
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

}  // namespace flashlab
