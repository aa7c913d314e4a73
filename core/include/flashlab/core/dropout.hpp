// Attention dropout's keep mask, written once for the host and the device: the fp64 reference, the CPU variants
// and the flash2 kernels all call dropout_draw / dropout_keep (the kernels dropout_keep_bits on a drawn word), so
// every side drops the same (row, key) pairs, bit for bit, and verification against the reference stays exact.
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
// below). One Philox4x32-10 draw (philox.hpp) gives eight 16-bit pieces, the low and high halves of its four 32-bit
// words, to the eight weights one thread holds in two adjacent n8 tiles of an mma.sync m16n8 accumulator: rows i and
// i + 8 of a 16-row block (i % 16 < 8) and keys j, j + 1, j + 8, j + 9 of a 16-key block (j % 16 in {0, 2, 4, 6}).
// Row i + 8 r and key j + 8 q + c take half c (0 low, 1 high) of word r + 2 q:
//
//              key j     key j + 1   key j + 8   key j + 9
//   row i      w0 lo     w0 hi       w2 lo       w2 hi
//   row i + 8  w1 lo     w1 hi       w3 lo       w3 hi
//
// Word r + 2 q is the register a[r + 2 q] of P's A fragment in the forward's P V (m16n8k16: a0 rows i, keys j and
// j + 1; a1 rows i + 8; a2 and a3 the keys + 8), and each register packs its key pair low half first, as the words do.
// So a kernel that packs P into the dtype masks each packed register with one word, and:
//   - the forward (flash2_fwd.cu) draws once per (m16 row block, pair of n8 tiles 2 kk, 2 kk + 1) of its S
//     fragments: each word it draws it uses, once;
//   - the backward (flash2_bwd.cu) holds S and dP in the same m16n8 fragments (not transposed; its warp tile is
//     kSdpRows x kSdpCols with kSdpCols % 16 == 0) and draws once per (m16 row block, n8 tile pair); word r + 2 q
//     is the packed pair of P (and dS) it stores for row r of tile 2 np + q, so it too draws each word once.
// The counter is
//   (key quad (j / 16) 4 + (j % 8) / 2, row pair (i / 16) 8 + i % 8, the 64-bit subsequence offset + b H + h),
// key = seed: the key quad and the row pair name the patch within its (b, h), so distinct patches never share a
// counter. A caller that wants a fresh mask on the next call advances offset by B H (as PyTorch's Philox offsets
// advance). A weight is kept when its piece is below dropout_keep_threshold16(p) = floor((1 - p) 2^16): kept with
// probability floor((1 - p) 2^16) / 2^16, i.e. p rounded up to a multiple of 2^-16 (the resolution of the mask; a
// p in (0, 2^-16] drops the pieces equal to 2^16 - 1). The kept weights are still scaled by 1 / (1 - p) with the p
// asked for (FlashAttention-2 does the same with its 8-bit pieces), so E[Z / (1 - p)] = 1 - delta with
// 0 <= delta < 2^-16 / (1 - p). p = 0 is no dropout: the threshold is 2^16 and every piece is below it.
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

// A 16-bit piece below this keeps its weight: floor((1 - p) 2^16) for p > 0, at most 2^16 - 1 (so a kernel may
// compare a packed pair of pieces against it); 2^16 for p = 0 (every piece kept; callers skip the mask then).
FL_HOST_DEVICE inline std::uint32_t dropout_keep_threshold16(double p) {
  if (!(p > 0)) return 0x10000u;
  const double keep = (1.0 - p) * 65536.0;  // 1 - p in double (the same on host and device), times 2^16
  return keep >= 65535.0 ? 0xFFFFu : static_cast<std::uint32_t>(keep);
}

// The counter's first two words: the patch's key quad and row pair.
FL_HOST_DEVICE constexpr std::uint32_t dropout_key_quad(std::uint32_t j) { return (j / 16) * 4 + (j % 8) / 2; }
FL_HOST_DEVICE constexpr std::uint32_t dropout_row_pair(std::uint32_t i) { return (i / 16) * 8 + i % 8; }

// The four words of the patch holding (row i, key j): rows i - i % 16 + i % 8 + {0, 8}, keys
// j - j % 16 + j % 8 - j % 2 + {0, 1, 8, 9}. `subsequence` = b H + h (the query head's (batch, head) index).
FL_HOST_DEVICE inline Philox4x32 dropout_draw(std::uint64_t seed, std::uint64_t offset, std::uint64_t subsequence,
                                              std::uint32_t i, std::uint32_t j) {
  const std::uint64_t stream = offset + subsequence;
  return philox4x32_10({{dropout_key_quad(j), dropout_row_pair(i), static_cast<std::uint32_t>(stream),
                         static_cast<std::uint32_t>(stream >> 32)}},
                       static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
}

// Which word of its patch (row i, key j) takes: r + 2 q for row + 8 r, key + 8 q.
FL_HOST_DEVICE constexpr int dropout_word(std::uint32_t i, std::uint32_t j) {
  return static_cast<int>((i / 8) % 2 + 2 * ((j / 8) % 2));
}

// Which half of that word: c = j % 2 (0: bits 0-15, 1: bits 16-31).
FL_HOST_DEVICE constexpr int dropout_half(std::uint32_t j) { return static_cast<int>(j % 2); }

// The keep decisions of one word's two weights: bit c set when half c is below `threshold16`.
FL_HOST_DEVICE constexpr std::uint32_t dropout_keep_bits(std::uint32_t word, std::uint32_t threshold16) {
  return ((word & 0xFFFFu) < threshold16 ? 1u : 0u) | ((word >> 16) < threshold16 ? 2u : 0u);
}

// Whether (row i, key j) of query head subsequence b H + h is kept. One Philox draw per call: the reference and
// the tests use it; the kernels draw a patch at once.
FL_HOST_DEVICE inline bool dropout_keep(std::uint64_t seed, std::uint64_t offset, std::uint64_t subsequence,
                                        std::uint32_t i, std::uint32_t j, std::uint32_t threshold16) {
  const std::uint32_t word = dropout_draw(seed, offset, subsequence, i, j).x[dropout_word(i, j)];
  return ((dropout_keep_bits(word, threshold16) >> dropout_half(j)) & 1u) != 0;
}

// Whether (row i, key j) of a batch entry whose valid tokens are rows [pad_front, pad_front + valid_q) and keys
// [pad_front, pad_front + valid_k) of its tensors is kept: dropout_keep at (i - pad_front, j - pad_front), the
// positions inside the valid interval; false outside it (a padded pair has no weight to keep). Without key padding
// pad_front = 0 and valid_q, valid_k are the sequence's lengths: dropout_keep itself.
FL_HOST_DEVICE inline bool dropout_keep_padded(std::uint64_t seed, std::uint64_t offset, std::uint64_t subsequence,
                                               std::int64_t i, std::int64_t j, std::int64_t pad_front,
                                               std::int64_t valid_q, std::int64_t valid_k, std::uint32_t threshold16) {
  const std::int64_t row = i - pad_front, key = j - pad_front;
  if (row < 0 || row >= valid_q || key < 0 || key >= valid_k) return false;
  return dropout_keep(seed, offset, subsequence, static_cast<std::uint32_t>(row), static_cast<std::uint32_t>(key),
                      threshold16);
}

}  // namespace flashlab
