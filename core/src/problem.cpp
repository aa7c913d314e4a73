#include "flashlab/core/problem.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "flashlab/core/errors.hpp"
#include "flashlab/core/mask.hpp"

namespace flashlab {
namespace {

[[noreturn]] void fail(const std::string& field, const std::string& value, const std::string& allowed) {
  throw InvalidProblem(field, fmt::format("invalid problem: {} = {}: {}", field, value, allowed));
}

void require_at_least(const char* field, std::int64_t value, std::int64_t minimum, const char* meaning = "") {
  if (value < minimum) fail(field, std::to_string(value), fmt::format("must be >= {}{}", minimum, meaning));
}

std::int64_t max_length(const std::vector<std::int64_t>& cu) {
  std::int64_t longest = 0;
  for (std::size_t b = 0; b + 1 < cu.size(); ++b) longest = std::max(longest, cu[b + 1] - cu[b]);
  return longest;
}

void validate_cu_seqlens(const char* name, const std::vector<std::int64_t>& cu, std::int64_t batch,
                         const char* seqlen_field, std::int64_t seqlen) {
  if (static_cast<std::int64_t>(cu.size()) != batch + 1) {
    fail(fmt::format("{}.size", name), std::to_string(cu.size()),
         fmt::format("must be batch + 1 = {} (cumulative offsets starting at 0)", batch + 1));
  }
  if (cu[0] != 0) fail(fmt::format("{}[0]", name), std::to_string(cu[0]), "must be 0");
  for (std::size_t b = 1; b < cu.size(); ++b) {
    if (cu[b] < cu[b - 1]) {
      fail(fmt::format("{}[{}]", name, b), std::to_string(cu[b]),
           fmt::format("must be >= {}[{}] = {} (offsets are non-decreasing; lengths >= 0)", name, b - 1,
                       cu[b - 1]));
    }
  }
  const std::int64_t longest = max_length(cu);
  if (seqlen != longest) {
    fail(seqlen_field, std::to_string(seqlen),
         fmt::format("must equal the longest sequence in {}, {}", name, longest));
  }
}

void validate_key_padding(const Problem& p) {
  if (!p.is_padded()) {
    if (!p.valid_lengths.empty()) {
      fail("valid_lengths", fmt::format("[{}]", fmt::join(p.valid_lengths, ", ")),
           "must be empty without key padding (key_padding = none)");
    }
    return;
  }
  if (p.is_varlen()) {
    fail("key_padding", std::string(name(p.key_padding)),
         "must be none for a varlen problem (varlen is the unpadded form of a padded batch)");
  }
  if (p.seqlen_q != p.seqlen_k) {
    fail("seqlen_k", std::to_string(p.seqlen_k),
         fmt::format("must equal seqlen_q = {} under key padding (the queries are padded with the keys, as in "
                     "self-attention)",
                     p.seqlen_q));
  }
  if (static_cast<std::int64_t>(p.valid_lengths.size()) != p.batch) {
    fail("valid_lengths.size", std::to_string(p.valid_lengths.size()),
         fmt::format("must be batch = {} (one valid length per batch entry)", p.batch));
  }
  for (std::size_t b = 0; b < p.valid_lengths.size(); ++b) {
    if (p.valid_lengths[b] < 0 || p.valid_lengths[b] > p.seqlen_k) {
      fail(fmt::format("valid_lengths[{}]", b), std::to_string(p.valid_lengths[b]),
           fmt::format("must be in [0, seqlen_k = {}]", p.seqlen_k));
    }
  }
}

}  // namespace

std::string_view name(KeyPadding padding) {
  switch (padding) {
    case KeyPadding::none: return "none";
    case KeyPadding::right: return "right";
    case KeyPadding::left: return "left";
  }
  return "?";
}

Problem Problem::varlen(std::int64_t heads, std::int64_t heads_kv, std::int64_t head_dim,
                        const std::vector<std::int64_t>& seqlens_q, const std::vector<std::int64_t>& seqlens_k) {
  Problem p;
  p.batch = static_cast<std::int64_t>(seqlens_q.size());
  p.heads = heads;
  p.heads_kv = heads_kv;
  p.head_dim = head_dim;
  auto cumulate = [](const std::vector<std::int64_t>& lengths) {
    std::vector<std::int64_t> cu{0};
    for (auto n : lengths) cu.push_back(cu.back() + n);
    return cu;
  };
  p.cu_seqlens_q = cumulate(seqlens_q);
  p.cu_seqlens_k = cumulate(seqlens_k);
  p.seqlen_q = max_length(p.cu_seqlens_q);
  p.seqlen_k = max_length(p.cu_seqlens_k);
  return p;
}

void Problem::validate() const {
  require_at_least("batch", batch, 1);
  require_at_least("heads", heads, 1);
  require_at_least("heads_kv", heads_kv, 1);
  if (heads % heads_kv != 0) {
    fail("heads_kv", std::to_string(heads_kv),
         fmt::format("must divide heads = {} (H_kv == H, GQA with H % H_kv == 0, or MQA with H_kv = 1)", heads));
  }
  require_at_least("seqlen_q", seqlen_q, 0);
  require_at_least("seqlen_k", seqlen_k, 0);
  require_at_least("head_dim", head_dim, 1);
  require_at_least("head_dim_v", head_dim_v, 0, " (0 means equal to head_dim)");
  require_at_least("window.left", window.left, -1, " (-1 means unbounded)");
  require_at_least("window.right", window.right, -1, " (-1 means unbounded)");
  if (causal && window.right > 0) {
    fail("window.right", std::to_string(window.right),
         "must be -1 or 0 when causal (causal already keeps only keys j <= i + N_k - N_q)");
  }
  if (softmax_scale && !(std::isfinite(*softmax_scale) && *softmax_scale > 0)) {
    fail("softmax_scale", fmt::format("{}", *softmax_scale), "must be finite and > 0 (default 1/sqrt(head_dim))");
  }
  if (!(dropout.p >= 0 && dropout.p < 1)) {
    fail("dropout", fmt::format("{}", dropout.p), "must be in [0, 1) (the probability of dropping a weight)");
  }
  if (cu_seqlens_q.empty() != cu_seqlens_k.empty()) {
    const char* missing = cu_seqlens_q.empty() ? "cu_seqlens_q" : "cu_seqlens_k";
    fail(missing, "(empty)", "varlen needs both cu_seqlens_q and cu_seqlens_k, each of length batch + 1");
  }
  if (is_varlen()) {
    validate_cu_seqlens("cu_seqlens_q", cu_seqlens_q, batch, "seqlen_q", seqlen_q);
    validate_cu_seqlens("cu_seqlens_k", cu_seqlens_k, batch, "seqlen_k", seqlen_k);
  }
  validate_key_padding(*this);
  // Element counts must fit comfortably in 64-bit indices (and in doubles, exactly).
  constexpr double kMaxElements = 9007199254740992.0;  // 2^53
  const double tokens = std::max<double>(static_cast<double>(total_q()), static_cast<double>(total_k()));
  const double elements = (is_varlen() ? 1.0 : static_cast<double>(batch)) * tokens * static_cast<double>(heads) *
                          static_cast<double>(std::max(head_dim, dv()));
  if (elements > kMaxElements) {
    fail("shape", describe(), "a tensor would hold more than 2^53 elements");
  }
}

double Problem::scale() const {
  return softmax_scale ? *softmax_scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

std::int64_t Problem::total_q() const { return is_varlen() ? cu_seqlens_q.back() : seqlen_q; }
std::int64_t Problem::total_k() const { return is_varlen() ? cu_seqlens_k.back() : seqlen_k; }

Sequence Problem::sequence(std::int64_t b) const {
  if (is_varlen()) {
    const auto i = static_cast<std::size_t>(b);
    return {0, cu_seqlens_q[i], cu_seqlens_k[i], cu_seqlens_q[i + 1] - cu_seqlens_q[i],
            cu_seqlens_k[i + 1] - cu_seqlens_k[i]};
  }
  if (!is_padded()) return {b, 0, 0, seqlen_q, seqlen_k};
  const PaddedTokens<std::int64_t> pad = flashlab::padded_tokens<std::int64_t>(
      key_padding == KeyPadding::left, seqlen_k, valid_lengths[static_cast<std::size_t>(b)]);
  return {b, 0, 0, seqlen_q, seqlen_k, pad.front, pad.back};
}

Window Problem::effective_window() const {
  Window w = window;
  if (causal) w.right = 0;
  return w;
}

KeyRange Problem::key_range(const Sequence& s, std::int64_t i) const {
  const Window w = effective_window();
  const KeptKeys<std::int64_t> kept =
      kept_keys_padded<std::int64_t>(w.left, w.right, i, s.seqlen_q, s.seqlen_k, s.pad_front, s.pad_back);
  return {kept.lo, kept.hi};
}

Problem Problem::unpadded() const {
  if (!is_padded()) return *this;
  Problem p = varlen(heads, heads_kv, head_dim, valid_lengths, valid_lengths);
  p.head_dim_v = head_dim_v;
  p.causal = causal;
  p.window = window;
  p.softmax_scale = softmax_scale;
  p.dropout = dropout;
  return p;
}

std::vector<std::int64_t> Problem::padded_tokens() const {
  std::vector<std::int64_t> tokens;
  for (std::int64_t b = 0; b < batch; ++b) {
    const Sequence s = sequence(b);
    for (std::int64_t n = s.pad_front; n < s.seqlen_q - s.pad_back; ++n) tokens.push_back(b * seqlen_q + n);
  }
  return tokens;
}

std::int64_t Problem::unmasked_pairs() const {
  std::int64_t pairs = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    const Sequence s = sequence(b);
    if (!is_masked()) {
      pairs += s.seqlen_q * s.seqlen_k;
      continue;
    }
    for (std::int64_t i = 0; i < s.seqlen_q; ++i) pairs += key_range(s, i).size();
  }
  return pairs;
}

std::string Problem::describe() const {
  std::string text = fmt::format("B={} H={} Hkv={} Nq={} Nk={} d={}", batch, heads, heads_kv, seqlen_q, seqlen_k,
                                 head_dim);
  if (dv() != head_dim) text += fmt::format(" dv={}", dv());
  if (causal) text += " causal";
  if (!window.unbounded()) text += fmt::format(" window=({},{})", window.left, window.right);
  if (softmax_scale) text += fmt::format(" scale={}", *softmax_scale);
  if (dropout.active()) text += fmt::format(" dropout={} seed={} offset={}", dropout.p, dropout.seed, dropout.offset);
  if (is_varlen()) text += fmt::format(" varlen(total_q={} total_k={})", total_q(), total_k());
  if (is_padded()) text += fmt::format(" key_padding={}(valid={})", name(key_padding), fmt::join(valid_lengths, ","));
  return text;
}

}  // namespace flashlab
