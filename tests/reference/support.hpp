// Helpers shared by the reference tests: random problems, error norms and an independent naive attention.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "flashlab/core/dropout.hpp"
#include "flashlab/reference/attention_data.hpp"

namespace flashlab::test {

using Data = reference::AttentionData<double>;

// A problem with random normal inputs (Q, K, V, dO), forward and backward done.
inline Data solved(const Problem& problem, std::uint64_t seed, const reference::Options& options = {}) {
  Data data(problem);
  data.randomize({.seed = seed, .distribution = Distribution::normal, .dtype = DType::fp64});
  data.run_forward(options);
  data.run_backward(options);
  return data;
}

// max_i |a_i - b_i| / max_i |b_i| (0 / 0 counts as 0): the max-norm relative error of a against b.
inline double max_norm_relative(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale == 0 ? diff : diff / scale;
}

inline bool all_finite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

// The mask rule of problem.hpp, written out independently of Problem::key_range.
inline bool kept(const Problem& p, std::int64_t i, std::int64_t j, std::int64_t nq, std::int64_t nk) {
  const std::int64_t diagonal = i + nk - nq;
  const std::int64_t right = p.causal ? 0 : p.window.right;
  if (p.window.left >= 0 && j < diagonal - p.window.left) return false;
  if (right >= 0 && j > diagonal + right) return false;
  return true;
}

// The padded tokens before batch entry b's valid ones, written out from the problem's fields: N - v (left padding),
// else 0.
inline std::int64_t padded_front(const Problem& p, std::int64_t b) {
  if (p.key_padding != KeyPadding::left) return 0;
  return p.seqlen_k - p.valid_lengths[static_cast<std::size_t>(b)];
}

// The mask of batch entry b with its key padding written out from the problem's fields: valid tokens [f, f + v),
// f = 0 (right) or N - v (left), queries and keys alike; inside them the rule above on a sequence of length v.
inline bool kept(const Problem& p, std::int64_t b, std::int64_t i, std::int64_t j, std::int64_t nq, std::int64_t nk) {
  if (p.key_padding == KeyPadding::none) return kept(p, i, j, nq, nk);
  const std::int64_t v = p.valid_lengths[static_cast<std::size_t>(b)];
  const std::int64_t f = padded_front(p, b);
  if (i < f || i >= f + v || j < f || j >= f + v) return false;
  return kept(p, i - f, j - f, v, v);
}

// Row-by-row attention in long double with explicit loops: the independent check of the blocked reference. With
// dropout, each (i, j) asks core's dropout_keep (the mask's one definition) and the kept weights are divided by 1 - p;
// under key padding a kept pair asks at its positions inside the valid interval, (i - f, j - f).
struct Naive {
  std::vector<double> o, lse;  // shaped like Data::o and Data::lse
};
inline Naive naive_forward(const Data& data) {
  const Problem& p = data.problem;
  Naive out{std::vector<double>(data.o.values().size()), std::vector<double>(data.lse.values().size())};
  const auto o_view = TensorView<double, 4>(out.o.data(), data.o.shape());
  const auto lse_view = TensorView<double, 3>(out.lse.data(), data.lse.shape());
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const Sequence s = p.sequence(b);
    for (std::int64_t h = 0; h < p.heads; ++h) {
      const std::int64_t g = h / (p.heads / p.heads_kv);
      const std::int64_t f = padded_front(p, b);
      for (std::int64_t i = 0; i < s.seqlen_q; ++i) {
        std::vector<long double> score(static_cast<std::size_t>(s.seqlen_k));
        long double row_max = -std::numeric_limits<long double>::infinity();
        for (std::int64_t j = 0; j < s.seqlen_k; ++j) {
          if (!kept(p, b, i, j, s.seqlen_q, s.seqlen_k)) continue;
          long double dot = 0;
          for (std::int64_t c = 0; c < p.head_dim; ++c) {
            dot += static_cast<long double>(data.q(s.slot, s.q_offset + i, h, c)) *
                   data.k(s.slot, s.k_offset + j, g, c);
          }
          score[j] = dot * p.scale();
          row_max = std::max(row_max, score[j]);
        }
        long double sum = 0;
        std::vector<long double> acc(static_cast<std::size_t>(p.dv()), 0.0L);
        for (std::int64_t j = 0; j < s.seqlen_k; ++j) {
          if (!kept(p, b, i, j, s.seqlen_q, s.seqlen_k)) continue;
          const long double e = std::exp(score[j] - row_max);
          sum += e;
          long double weight = e;
          if (p.dropout.active()) {
            const bool keep =
                dropout_keep(p.dropout.seed, p.dropout.offset, static_cast<std::uint64_t>(b * p.heads + h),
                             static_cast<std::uint32_t>(i - f), static_cast<std::uint32_t>(j - f),
                             dropout_keep_threshold16(p.dropout.p));
            weight = keep ? e / (1.0L - p.dropout.p) : 0.0L;
          }
          for (std::int64_t c = 0; c < p.dv(); ++c) acc[c] += weight * data.v(s.slot, s.k_offset + j, g, c);
        }
        for (std::int64_t c = 0; c < p.dv(); ++c) {
          o_view(s.slot, s.q_offset + i, h, c) = sum == 0 ? 0.0 : static_cast<double>(acc[c] / sum);
        }
        lse_view(s.slot, h, s.q_offset + i) = sum == 0 ? -std::numeric_limits<double>::infinity()
                                                       : static_cast<double>(row_max + std::log(sum));
      }
    }
  }
  return out;
}

// A key-padded problem's two runs compared (tests of the reference with key padding): `dense` ran the padded batch,
// `varlen` its unpadded form (Problem::unpadded) on the same values at the valid tokens. The valid tokens of entry b
// sit at [f, f + v) of the padded tensors and at cu[b] + [0, v) of the varlen ones.
struct PaddedComparison {
  double worst = 0;                  // max |padded - unpadded| over the valid rows of O, LSE, dQ, dK, dV
  std::int64_t padded_not_zero = 0;  // padded rows whose O, dQ, dK, dV are not 0 or whose LSE is not -inf
};
inline PaddedComparison compare_padded_with_unpadded(const Data& dense, const Data& varlen) {
  const Problem& p = dense.problem;
  PaddedComparison out;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const std::int64_t v = p.valid_lengths[static_cast<std::size_t>(b)];
    const std::int64_t f = padded_front(p, b);
    const std::int64_t t0 = varlen.problem.cu_seqlens_q[static_cast<std::size_t>(b)];
    for (std::int64_t n = 0; n < p.seqlen_q; ++n) {
      const bool valid = n >= f && n < f + v;
      for (std::int64_t h = 0; h < p.heads; ++h) {
        const double lse = dense.lse(b, h, n);
        if (valid) {
          const double other = varlen.lse(0, h, t0 + n - f);
          out.worst = std::max(out.worst, std::isinf(other) ? (lse == other ? 0.0 : 1.0) : std::abs(lse - other));
        } else {
          out.padded_not_zero += !(std::isinf(lse) && lse < 0);
        }
        for (std::int64_t c = 0; c < p.dv(); ++c) {
          if (valid) {
            out.worst = std::max(out.worst, std::abs(dense.o(b, n, h, c) - varlen.o(0, t0 + n - f, h, c)));
          } else {
            out.padded_not_zero += dense.o(b, n, h, c) != 0.0;
          }
        }
        for (std::int64_t c = 0; c < p.head_dim; ++c) {
          if (valid) {
            out.worst = std::max(out.worst, std::abs(dense.dq(b, n, h, c) - varlen.dq(0, t0 + n - f, h, c)));
          } else {
            out.padded_not_zero += dense.dq(b, n, h, c) != 0.0;
          }
        }
      }
      for (std::int64_t g = 0; g < p.heads_kv; ++g) {
        for (const auto& [a, z] : {std::pair{&dense.dk, &varlen.dk}, std::pair{&dense.dv, &varlen.dv}}) {
          for (std::int64_t c = 0; c < a->shape()[3]; ++c) {
            if (valid) {
              out.worst = std::max(out.worst, std::abs((*a)(b, n, g, c) - (*z)(0, t0 + n - f, g, c)));
            } else {
              out.padded_not_zero += (*a)(b, n, g, c) != 0.0;
            }
          }
        }
      }
    }
  }
  return out;
}

// LSE values compared where finite; -inf must match exactly.
inline double lse_error(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(b[i]) || std::isinf(a[i])) {
      if (a[i] != b[i]) return std::numeric_limits<double>::infinity();
      continue;
    }
    worst = std::max(worst, std::abs(a[i] - b[i]) / std::max(1.0, std::abs(b[i])));
  }
  return worst;
}

}  // namespace flashlab::test
