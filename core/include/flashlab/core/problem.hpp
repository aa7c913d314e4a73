// The attention problem: shapes, mask and scale, shared by the reference, the kernels and the harness.
//
// Conventions (as FlashAttention 2.1+):
//  - tensors are [B, N, H, d] row-major (BSHD); varlen tensors are [total_tokens, H, d], seen as [1, total, H, d];
//  - LSE is [B, H, N_q] (varlen: [1, H, total_q]), natural log;
//  - a mask keeps key j for query i (both counted from the start of their sequence) when
//        i + (N_k - N_q) - left <= j <= i + (N_k - N_q) + right,
//    with left/right = -1 meaning unbounded; causal is right = 0 (bottom-right aligned when N_q != N_k);
//  - key padding (training batches padded to one length): batch entry b holds valid_lengths[b] valid tokens, one
//    interval of its N tokens, queries and keys alike (self-attention); the rule above applies inside the interval
//    as if it were the whole sequence, and a padded query row keeps no key; dropout's mask (dropout.hpp) is drawn
//    at the positions inside the interval too, so a padded batch and its unpadded form drop the same pairs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flashlab/core/dropout.hpp"

namespace flashlab {

// Sliding window in keys to the left and right of the (bottom-right aligned) diagonal; -1 = unbounded.
struct Window {
  std::int64_t left = -1;
  std::int64_t right = -1;
  [[nodiscard]] bool unbounded() const { return left < 0 && right < 0; }
  friend bool operator==(const Window&, const Window&) = default;
};

// Inclusive range [lo, hi] of keys a query row may attend to; empty when lo > hi.
struct KeyRange {
  std::int64_t lo;
  std::int64_t hi;
  [[nodiscard]] bool empty() const { return lo > hi; }
  [[nodiscard]] std::int64_t size() const { return empty() ? 0 : hi - lo + 1; }
};

// One sequence of a (possibly varlen) batch: where it lives in the tensors and its lengths.
struct Sequence {
  std::int64_t slot;      // index into the B dimension (0 for varlen)
  std::int64_t q_offset;  // first token in the N_q dimension (cu_seqlens_q[b] for varlen, else 0)
  std::int64_t k_offset;
  std::int64_t seqlen_q;
  std::int64_t seqlen_k;
  // Key padding: the padded tokens before (left padding) and after (right padding) the valid ones, queries and keys
  // alike; 0 and 0 without padding.
  std::int64_t pad_front = 0;
  std::int64_t pad_back = 0;
  // The valid queries and keys: [pad_front, pad_front + valid_q()) and [pad_front, pad_front + valid_k()).
  [[nodiscard]] std::int64_t valid_q() const { return seqlen_q - pad_front - pad_back; }
  [[nodiscard]] std::int64_t valid_k() const { return seqlen_k - pad_front - pad_back; }
};

// A key-padding mask of a batch padded to one length, as training code meets it (a [B, N] mask of valid tokens):
// each entry's valid tokens are one interval, at the start (right padding) or at the end (left padding).
enum class KeyPadding : std::uint8_t { none, right, left };
[[nodiscard]] std::string_view name(KeyPadding padding);  // "none", "right", "left"

struct Problem {
  std::int64_t batch = 1;     // B
  std::int64_t heads = 1;     // H (query heads)
  std::int64_t heads_kv = 1;  // H_kv; H % H_kv == 0 (GQA when H_kv < H, MQA when H_kv == 1)
  std::int64_t seqlen_q = 1;  // N_q; for varlen the largest entry of the batch
  std::int64_t seqlen_k = 1;  // N_k; for varlen the largest entry of the batch
  std::int64_t head_dim = 64;    // d (queries and keys)
  std::int64_t head_dim_v = 0;   // d_v; 0 means equal to d
  bool causal = false;
  Window window{};
  std::optional<double> softmax_scale;  // default 1/sqrt(d)
  // Varlen batches: cumulative offsets, length B+1, starting at 0 (both given or neither).
  std::vector<std::int64_t> cu_seqlens_q;
  std::vector<std::int64_t> cu_seqlens_k;
  // Attention dropout on P after the softmax (dropout.hpp): p in [0, 1), the mask keyed by (seed, offset, b, h, i, j);
  // under key padding i and j count from the entry's first valid token (dropout_keep_padded), as in unpadded().
  DropoutSpec dropout{};
  // Key padding (not with varlen, which is the unpadded form; N_q == N_k, the queries padded with the keys as in
  // self-attention): entry b's valid tokens are [0, v_b) (right) or [N - v_b, N) (left), v_b = valid_lengths[b]
  // (length B, 0 <= v_b <= N). A padded query row keeps no key (O = 0, LSE = -inf, dQ = 0); no query keeps a
  // padded key (dK = dV = 0).
  KeyPadding key_padding = KeyPadding::none;
  std::vector<std::int64_t> valid_lengths;

  // A varlen problem from per-sequence lengths; B, N_q and N_k follow from them.
  [[nodiscard]] static Problem varlen(std::int64_t heads, std::int64_t heads_kv, std::int64_t head_dim,
                                      const std::vector<std::int64_t>& seqlens_q,
                                      const std::vector<std::int64_t>& seqlens_k);

  // Throws InvalidProblem naming the first invalid field, its value and what is allowed.
  void validate() const;

  [[nodiscard]] bool is_varlen() const { return !cu_seqlens_q.empty(); }
  [[nodiscard]] bool is_padded() const { return key_padding != KeyPadding::none; }
  [[nodiscard]] std::int64_t dv() const { return head_dim_v == 0 ? head_dim : head_dim_v; }
  [[nodiscard]] double scale() const;
  [[nodiscard]] std::int64_t group_size() const { return heads / heads_kv; }
  // Length of the token dimension of the Q-side tensors: N_q for dense batches (per batch entry), the total
  // token count for varlen batches (where the batch dimension is 1).
  [[nodiscard]] std::int64_t total_q() const;
  [[nodiscard]] std::int64_t total_k() const;
  [[nodiscard]] Sequence sequence(std::int64_t b) const;
  // The effective window: causal turns into right = 0 (bottom-right aligned).
  [[nodiscard]] Window effective_window() const;
  [[nodiscard]] bool is_masked() const { return causal || !window.unbounded() || is_padded(); }
  // Keys query row i of sequence s (counted from the sequence's start) may attend to, clamped to [0, s.seqlen_k):
  // the mask rule of mask.hpp with s's key padding.
  [[nodiscard]] KeyRange key_range(const Sequence& s, std::int64_t i) const;
  // The varlen problem of the valid tokens (FlashAttention's unpad_input): sequence b has valid_lengths[b] queries
  // and keys; heads, head dims, mask, scale and dropout as here (the same keep mask on the valid pairs). A problem
  // without key padding is returned as it is.
  [[nodiscard]] Problem unpadded() const;
  // For each token of unpadded()'s packed tensors, its token in this problem's padded tensors, b N + n: the
  // generator draws it there (InputLayout::token_source), so both forms of a row see the same input values.
  [[nodiscard]] std::vector<std::int64_t> padded_tokens() const;
  // Exact number of (query, key) pairs the mask keeps, over the whole batch, per head.
  [[nodiscard]] std::int64_t unmasked_pairs() const;

  // One-line description, e.g. "B=2 H=8 Hkv=2 Nq=128 Nk=256 d=64 causal window=(16,0) varlen" (key padding:
  // "key_padding=right(valid=5,0,7)").
  [[nodiscard]] std::string describe() const;
};

}  // namespace flashlab
