// Exact values and a-priori bounds of one group at chosen entries (group_check.hpp). The bound formulas follow
// NUMERICS.md section by section; the names below are its symbols.
#include "flashlab/reference/group_check.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "flashlab/core/dropout.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/parallel.hpp"
#include "exp.hpp"

namespace flashlab::reference {
namespace {

using numerics::Accumulation;
using numerics::DataPath;

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
template <class S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRows = Eigen::Map<const RowMat<double>>;
using RowsView = Eigen::Ref<const RowMat<double>>;

// The rows `which` (sorted) of `m`: `m`'s own rows when they are contiguous (a span: no copy), else gathered into
// `storage`. A work item of a few chosen rows reads the whole span of the rows or keys they meet: copying that span
// per item would cost as much as the item's products.
RowsView rows_of(const ConstRows& m, const std::vector<std::int64_t>& which, RowMat<double>& storage) {
  const auto n = static_cast<std::int64_t>(which.size());
  if (n > 0 && which.back() - which.front() + 1 == n) return m.middleRows(which.front(), n);
  storage.resize(n, m.cols());
  for (std::int64_t r = 0; r < n; ++r) storage.row(r) = m.row(which[static_cast<std::size_t>(r)]);
  return storage;
}

constexpr double kMinusInf = -std::numeric_limits<double>::infinity();
constexpr double kInfinity = std::numeric_limits<double>::infinity();
// The smallest normal fp32 value: the exp of the GPU paths flushes results below it to 0 (ex2.approx.ftz).
const double kFp32MinNormal = numerics::min_normal(DType::fp32);
// Slack of the exponent argument's magnitude: the online softmax's lazy shift lets P reach 2^8 (8 ln 2 < 6 in
// natural-log units), NUMERICS.md §2.
constexpr double kShiftSlack = 6.0;

struct Shape {
  std::int64_t g, nq, nk, d, dv;
  double scale;
};

Shape shape_of(const GroupInputs& in, bool backward) {
  const Problem& p = in.problem;
  p.validate();
  if (p.batch != 1 || p.heads_kv != 1 || p.is_varlen()) {
    throw InvalidProblem("problem", "check_group: a group is one dense sequence with one kv head, found " + p.describe());
  }
  const Shape s{p.heads, p.seqlen_q, p.seqlen_k, p.head_dim, p.dv(), p.scale()};
  auto expect = [](const char* name, std::size_t got, std::int64_t want) {
    if (static_cast<std::int64_t>(got) != want) {
      throw InvalidProblem(name, std::string("check_group: ") + name + " has " + std::to_string(got) + " values, expected " +
                                     std::to_string(want));
    }
  };
  expect("q", in.q.size(), s.g * s.nq * s.d);
  expect("k", in.k.size(), s.nk * s.d);
  expect("v", in.v.size(), s.nk * s.dv);
  if (backward || !in.d_out.empty()) expect("d_out", in.d_out.size(), s.g * s.nq * s.dv);
  return s;
}

// max_j m_jc per column c of a matrix of magnitudes (0 for a matrix without rows: a sequence with no keys).
template <class M>
Vec<double> column_max(const Eigen::MatrixBase<M>& magnitudes) {
  if (magnitudes.rows() == 0) return Vec<double>::Zero(magnitudes.cols());
  return magnitudes.colwise().maxCoeff().transpose();
}

// Rows [0, n) as a choice.
std::vector<std::int64_t> all_rows(std::int64_t n) {
  std::vector<std::int64_t> r(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) r[static_cast<std::size_t>(i)] = i;
  return r;
}

// A row list split into work items: at most 128 rows each, and at least 16 items while an item keeps 4 rows or more,
// so that a sampled check's few dozen rows spread over the cores. The split depends on the list's length alone, not
// on the worker count: results are the same with any FLASHLAB_THREADS.
struct Blocks {
  std::int64_t n, size, count;
  explicit Blocks(std::size_t rows) : n(static_cast<std::int64_t>(rows)) {
    constexpr std::int64_t kMax = 128, kMin = 4, kItems = 16;
    size = std::clamp<std::int64_t>((n + kItems - 1) / kItems, kMin, kMax);
    count = (n + size - 1) / size;
  }
  [[nodiscard]] std::int64_t first(std::int64_t block) const { return block * size; }
  [[nodiscard]] std::int64_t rows(std::int64_t block) const { return std::min(size, n - block * size); }
};

// The mask of one query row: kept keys [lo, hi] (the group is one sequence, with its key padding if any).
KeyRange keys_of(const Problem& p, std::int64_t i) { return p.key_range(p.sequence(0), i); }

// Dropout's factor of weight (i, j) of head h of the group (batch 1: subsequence h, the group's offset): 0 dropped,
// 1 / (1 - p) kept, 1 without dropout. Under key padding the mask is drawn inside the valid interval
// (dropout_keep_padded), and a padded pair, masked already, is 0.
class DropFactor {
 public:
  explicit DropFactor(const GroupInputs& in)
      : spec_(in.problem.dropout),
        threshold_(dropout_keep_threshold16(spec_.p)),
        kept_(1.0 / (1.0 - spec_.p)),
        sequence_(in.problem.sequence(0)) {}
  [[nodiscard]] bool active() const { return spec_.active(); }
  [[nodiscard]] double kept_scale() const { return active() ? kept_ : 1.0; }
  [[nodiscard]] double operator()(std::int64_t h, std::int64_t i, std::int64_t j) const {
    if (!active()) return 1.0;
    return dropout_keep_padded(spec_.seed, spec_.offset, static_cast<std::uint64_t>(h), i, j, sequence_.pad_front,
                               sequence_.valid_q(), sequence_.valid_k(), threshold_)
               ? kept_
               : 0.0;
  }

 private:
  DropoutSpec spec_;
  std::uint32_t threshold_;
  double kept_;
  Sequence sequence_;  // the group's one sequence: where its valid tokens lie
};

// The masks keep a band whose ends move monotonically with the query row (padded rows keep nothing), so the work of a block of rows (or keys)
// is confined to a span: the keys that rows which[first .. first + count) see, or the query rows that see a key of
// [lo, hi]. Entries inside a span that the mask drops are still tested one by one; the spans only skip the columns
// (rows) that no entry of the block keeps. An empty span (lo > hi) when nothing is kept.
KeyRange key_span(const Problem& p, const std::vector<std::int64_t>& which, std::int64_t first, std::int64_t count) {
  KeyRange span{p.seqlen_k, -1};
  for (std::int64_t r = 0; r < count; ++r) {
    const KeyRange keys = keys_of(p, which[static_cast<std::size_t>(first + r)]);
    if (keys.empty()) continue;
    span.lo = std::min(span.lo, keys.lo);
    span.hi = std::max(span.hi, keys.hi);
  }
  return span;
}

KeyRange row_span(const Problem& p, std::int64_t key_lo, std::int64_t key_hi) {
  KeyRange span{p.seqlen_q, -1};
  for (std::int64_t i = 0; i < p.seqlen_q; ++i) {
    const KeyRange keys = keys_of(p, i);
    if (keys.empty() || keys.lo > key_hi || keys.hi < key_lo) continue;
    span.lo = std::min(span.lo, i);
    span.hi = std::max(span.hi, i);
  }
  return span;
}

// The rows [span.lo, span.hi] as a list (none for an empty span).
std::vector<std::int64_t> span_rows(const KeyRange& span) {
  std::vector<std::int64_t> r;
  for (std::int64_t i = span.lo; i <= span.hi; ++i) r.push_back(i);
  return r;
}

std::int64_t span_first(const KeyRange& span) { return span.empty() ? 0 : span.lo; }

// ---------------------------------------------------------------------------------------------------------------
// Values in Scalar arithmetic (double: exact; float: the upcast reference)

template <class S>
struct Values {
  // forward over the rows asked for (all rows of every head when a backward follows)
  std::vector<S> o_all, lse_all;  // [G][N_q][d_v], [G][N_q] (rows not computed are left 0)
  std::vector<S> delta_all;       // D = rowsum(dO o O) [G][N_q], with a backward
  GroupOutputs out;
};

template <class S>
Mat<S> gather(const ConstRows& rows, const std::vector<std::int64_t>& which, std::int64_t first, std::int64_t count) {
  Mat<S> m(count, rows.cols());
  for (std::int64_t r = 0; r < count; ++r) m.row(r) = rows.row(which[static_cast<std::size_t>(first + r)]).template cast<S>();
  return m;
}

// Scores of the rows `which[first .. first + count)` against the keys of `span` (column c: key span.lo + c), masked
// entries -inf.
template <class S, class KeyRows>
Mat<S> masked_scores(const Problem& p, const Mat<S>& q, const KeyRows& k, S scale, const std::vector<std::int64_t>& which,
                     std::int64_t first, const KeyRange& span) {
  const std::int64_t j0 = span_first(span);
  Mat<S> s = scale * (q * k.middleRows(j0, span.size()).transpose());
  for (std::int64_t r = 0; r < s.rows(); ++r) {
    const KeyRange keys = keys_of(p, which[static_cast<std::size_t>(first + r)]);
    for (std::int64_t c = 0; c < s.cols(); ++c) {
      const std::int64_t j = j0 + c;
      if (keys.empty() || j < keys.lo || j > keys.hi) s(r, c) = -std::numeric_limits<S>::infinity();
    }
  }
  return s;
}

// A block of the double inputs as S: the block itself in double (no copy: a key block's item reads every query row),
// a converted copy in `storage` otherwise.
template <class S, class Block>
Eigen::Ref<const RowMat<S>> as_scalar(const Block& block, RowMat<S>& storage) {
  if constexpr (std::is_same_v<S, double>) {
    return block;
  } else {
    storage = block.template cast<S>();
    return storage;
  }
}

template <class S>
Values<S> compute_values(const GroupInputs& in, const Shape& sh, const RowChoice& rows, bool backward, int workers) {
  const Problem& p = in.problem;
  const S scale = static_cast<S>(sh.scale);
  const Mat<S> k = ConstRows(in.k.data(), sh.nk, sh.d).template cast<S>();
  const Mat<S> v = ConstRows(in.v.data(), sh.nk, sh.dv).template cast<S>();
  const std::vector<std::int64_t> forward_rows = backward ? all_rows(sh.nq) : rows.query;
  const DropFactor drop(in);
  Values<S> out;
  out.o_all.assign(static_cast<std::size_t>(sh.g * sh.nq * sh.dv), S(0));
  out.lse_all.assign(static_cast<std::size_t>(sh.g * sh.nq), S(0));
  const Blocks blocks(forward_rows.size());

  // forward: O and LSE of the forward rows, each head
  parallel_for(sh.g * blocks.count, workers, [&](std::int64_t item, int) {
    const std::int64_t h = item / blocks.count, first = blocks.first(item % blocks.count), count = blocks.rows(item % blocks.count);
    const ConstRows q(in.q.data() + h * sh.nq * sh.d, sh.nq, sh.d);
    const Mat<S> qb = gather<S>(q, forward_rows, first, count);
    const KeyRange span = key_span(p, forward_rows, first, count);
    Mat<S> e = masked_scores<S>(p, qb, k, scale, forward_rows, first, span);
    // whole-block operations: contiguous and vectorized (a row of this column-major block is strided)
    const Vec<S> m = e.cols() > 0 ? Vec<S>(e.rowwise().maxCoeff())
                                  : Vec<S>::Constant(count, -std::numeric_limits<S>::infinity());
    const Vec<S> shift = (m.array() == -std::numeric_limits<S>::infinity()).select(S(0), m);
    e.array().colwise() -= shift.array();
    exp_in_place(e.array());  // apart from the broadcast: Eigen vectorizes exp only on a plain array
    const Vec<S> l = e.rowwise().sum();
    if (drop.active()) {  // the numerator's weights Z o P / (1 - p); l keeps every weight
      for (std::int64_t c = 0; c < e.cols(); ++c) {
        for (std::int64_t r = 0; r < count; ++r) e(r, c) *= static_cast<S>(drop(h, forward_rows[static_cast<std::size_t>(first + r)], span_first(span) + c));
      }
    }
    const Mat<S> pv = e * v.middleRows(span_first(span), span.size());
    for (std::int64_t r = 0; r < count; ++r) {
      const std::int64_t i = forward_rows[static_cast<std::size_t>(first + r)];
      auto o = Eigen::Map<Vec<S>>(out.o_all.data() + (h * sh.nq + i) * sh.dv, sh.dv);
      if (m(r) == -std::numeric_limits<S>::infinity() || l(r) == 0) {
        o.setZero();
        out.lse_all[static_cast<std::size_t>(h * sh.nq + i)] = -std::numeric_limits<S>::infinity();
      } else {
        o = pv.row(r).transpose() / l(r);
        out.lse_all[static_cast<std::size_t>(h * sh.nq + i)] = m(r) + std::log(l(r));
      }
    }
  });
  const auto nsel = static_cast<std::int64_t>(rows.query.size());
  out.out.o.resize(static_cast<std::size_t>(sh.g * nsel * sh.dv));
  out.out.lse.resize(static_cast<std::size_t>(sh.g * nsel));
  for (std::int64_t h = 0; h < sh.g; ++h) {
    for (std::int64_t r = 0; r < nsel; ++r) {
      const std::int64_t i = rows.query[static_cast<std::size_t>(r)];
      out.out.lse[static_cast<std::size_t>(h * nsel + r)] = out.lse_all[static_cast<std::size_t>(h * sh.nq + i)];
      for (std::int64_t c = 0; c < sh.dv; ++c) {
        out.out.o[static_cast<std::size_t>((h * nsel + r) * sh.dv + c)] =
            out.o_all[static_cast<std::size_t>((h * sh.nq + i) * sh.dv + c)];
      }
    }
  }
  if (!backward) return out;

  // D = rowsum(dO o O) of every row
  std::vector<S>& delta = out.delta_all;
  delta.assign(static_cast<std::size_t>(sh.g * sh.nq), S(0));
  for (std::int64_t hi = 0; hi < sh.g * sh.nq; ++hi) {
    S sum = 0;
    for (std::int64_t c = 0; c < sh.dv; ++c) {
      sum += static_cast<S>(in.d_out[static_cast<std::size_t>(hi * sh.dv + c)]) * out.o_all[static_cast<std::size_t>(hi * sh.dv + c)];
    }
    delta[static_cast<std::size_t>(hi)] = sum;
  }
  auto probabilities = [&](Mat<S>& s, std::int64_t h, const std::vector<std::int64_t>& which, std::int64_t first) {
    Vec<S> shift(s.rows());
    for (std::int64_t r = 0; r < s.rows(); ++r) {
      const S lse = out.lse_all[static_cast<std::size_t>(h * sh.nq + which[static_cast<std::size_t>(first + r)])];
      shift(r) = std::isinf(lse) ? S(0) : lse;
    }
    s.array().colwise() -= shift.array();
    exp_in_place(s.array());
  };

  // dQ at the chosen query rows
  out.out.dq.assign(static_cast<std::size_t>(sh.g * nsel * sh.d), 0.0);
  const Blocks qblocks(rows.query.size());
  parallel_for(sh.g * qblocks.count, workers, [&](std::int64_t item, int) {
    const std::int64_t h = item / qblocks.count, first = qblocks.first(item % qblocks.count), count = qblocks.rows(item % qblocks.count);
    const ConstRows q(in.q.data() + h * sh.nq * sh.d, sh.nq, sh.d);
    const ConstRows d_out(in.d_out.data() + h * sh.nq * sh.dv, sh.nq, sh.dv);
    const Mat<S> qb = gather<S>(q, rows.query, first, count);
    const Mat<S> dob = gather<S>(d_out, rows.query, first, count);
    const KeyRange span = key_span(p, rows.query, first, count);
    const std::int64_t j0 = span_first(span), n = span.size();
    Mat<S> prob = masked_scores<S>(p, qb, k, scale, rows.query, first, span);
    probabilities(prob, h, rows.query, first);
    Mat<S> ds = dob * v.middleRows(j0, n).transpose();
    if (drop.active()) {  // dP = Z o (dO V^T) / (1 - p)
      for (std::int64_t c = 0; c < n; ++c) {
        for (std::int64_t r = 0; r < count; ++r) ds(r, c) *= static_cast<S>(drop(h, rows.query[static_cast<std::size_t>(first + r)], j0 + c));
      }
    }
    for (std::int64_t r = 0; r < count; ++r) {
      ds.row(r).array() -= delta[static_cast<std::size_t>(h * sh.nq + rows.query[static_cast<std::size_t>(first + r)])];
    }
    ds = ds.cwiseProduct(prob);
    const Mat<S> dq = scale * (ds * k.middleRows(j0, n));
    for (std::int64_t r = 0; r < count; ++r) {
      for (std::int64_t c = 0; c < sh.d; ++c) out.out.dq[static_cast<std::size_t>((h * nsel + first + r) * sh.d + c)] = dq(r, c);
    }
  });

  // dK, dV at the chosen key rows: every query row of every head
  const auto ksel = static_cast<std::int64_t>(rows.key.size());
  out.out.dk.assign(static_cast<std::size_t>(ksel * sh.d), 0.0);
  out.out.dv.assign(static_cast<std::size_t>(ksel * sh.dv), 0.0);
  const Blocks kblocks(rows.key.size());
  parallel_for(kblocks.count, workers, [&](std::int64_t item, int) {
    const std::int64_t first = kblocks.first(item), count = kblocks.rows(item);
    const ConstRows kr(in.k.data(), sh.nk, sh.d), vr(in.v.data(), sh.nk, sh.dv);
    const Mat<S> kb = gather<S>(kr, rows.key, first, count), vb = gather<S>(vr, rows.key, first, count);
    Mat<S> dk = Mat<S>::Zero(count, sh.d), dv = Mat<S>::Zero(count, sh.dv);
    const KeyRange span = row_span(p, rows.key[static_cast<std::size_t>(first)], rows.key[static_cast<std::size_t>(first + count - 1)]);
    const std::int64_t i0 = span_first(span), nr = span.size();
    RowMat<S> q_store, d_out_store;
    for (std::int64_t h = 0; h < sh.g; ++h) {
      const auto q = as_scalar(ConstRows(in.q.data() + h * sh.nq * sh.d, sh.nq, sh.d).middleRows(i0, nr), q_store);
      const auto d_out =
          as_scalar(ConstRows(in.d_out.data() + h * sh.nq * sh.dv, sh.nq, sh.dv).middleRows(i0, nr), d_out_store);
      Mat<S> prob = scale * (q * kb.transpose());
      for (std::int64_t r = 0; r < nr; ++r) {
        const KeyRange keys = keys_of(p, i0 + r);
        const S lse = out.lse_all[static_cast<std::size_t>(h * sh.nq + i0 + r)];
        for (std::int64_t j = 0; j < count; ++j) {
          const std::int64_t key = rows.key[static_cast<std::size_t>(first + j)];
          const bool kept = !keys.empty() && key >= keys.lo && key <= keys.hi;
          prob(r, j) = kept ? std::exp(prob(r, j) - lse) : S(0);
        }
      }
      Mat<S> ds = d_out * vb.transpose();
      if (drop.active()) {  // dP = Z o (dO V^T) / (1 - p), and Z o P / (1 - p) for dV after dS
        for (std::int64_t j = 0; j < count; ++j) {
          const std::int64_t key = rows.key[static_cast<std::size_t>(first + j)];
          for (std::int64_t r = 0; r < nr; ++r) ds(r, j) *= static_cast<S>(drop(h, i0 + r, key));
        }
      }
      for (std::int64_t r = 0; r < nr; ++r) ds.row(r).array() -= delta[static_cast<std::size_t>(h * sh.nq + i0 + r)];
      ds = ds.cwiseProduct(prob);
      if (drop.active()) {
        for (std::int64_t j = 0; j < count; ++j) {
          const std::int64_t key = rows.key[static_cast<std::size_t>(first + j)];
          for (std::int64_t r = 0; r < nr; ++r) prob(r, j) *= static_cast<S>(drop(h, i0 + r, key));
        }
      }
      dv += prob.transpose() * d_out;
      dk += scale * (ds.transpose() * q);
    }
    for (std::int64_t j = 0; j < count; ++j) {
      for (std::int64_t c = 0; c < sh.d; ++c) out.out.dk[static_cast<std::size_t>((first + j) * sh.d + c)] = dk(j, c);
      for (std::int64_t c = 0; c < sh.dv; ++c) out.out.dv[static_cast<std::size_t>((first + j) * sh.dv + c)] = dv(j, c);
    }
  });
  return out;
}

GroupOutputs rounded(const GroupOutputs& o, DType dtype) {
  GroupOutputs r = o;
  for (std::vector<double>* t : {&r.o, &r.dq, &r.dk, &r.dv}) {
    for (double& x : *t) x = round_to(x, dtype);
  }
  for (double& x : r.lse) x = round_to(x, DType::fp32);
  return r;
}

// ---------------------------------------------------------------------------------------------------------------
// Bounds (NUMERICS.md)

// The constants of one path that do not depend on the row.
struct PathConstants {
  const DataPath& path;
  double lambda;
  bool probabilistic;
  [[nodiscard]] double gamma(const Accumulation& a, std::int64_t n) const {
    return probabilistic ? a.gamma_prob(n, lambda) : a.gamma(n);
  }
};

// Rescales of the online softmax over a row of n kept keys (one per key tile at most, +1 for a tile boundary
// that splits the row's first tile).
std::int64_t rescales(const DataPath& path, std::int64_t n) {
  return path.key_tile > 0 ? (n + path.key_tile - 1) / path.key_tile + 1 : 0;
}

// The absolute error of a value stored in the path's low-precision type near or below its normal range: half the
// subnormal spacing (relative rounding covers the rest), §0.
double stored_tiny(const DataPath& path, double value) {
  return std::abs(value) < 2 * numerics::min_normal(path.p_dtype) ? numerics::subnormal_half_spacing(path.p_dtype) : 0;
}
// §1-2: the exponent argument's error delta_ij (natural-log units) of score s against shift `shift`, with a = scale
// |q_i|.|k_j|. The stored-S rounding u_S |s| is part of it in the deterministic bound, and a separate independent
// term in the probabilistic one.
double argument_error(const PathConstants& pc, double gamma_qk, double a, double s, double shift, double extra) {
  const DataPath& path = pc.path;
  double delta = gamma_qk * a + 3 * path.u_arith * (std::abs(s) + std::abs(shift) + kShiftSlack) + extra;
  if (!pc.probabilistic) delta += path.u_scores * std::abs(s);
  if (path.u_scores > 0) delta += stored_tiny(path, s);
  return delta;
}
double weight_error(const DataPath& path, double delta) {
  return std::expm1(delta) * (1 + path.u_exp) + path.u_exp;
}
// The absolute error of a probability p as stored in the path's P type (subnormal rounding, the fp32 exp's flush to
// zero), §3.
double tiny_error(const DataPath& path, double p, bool rounded) {
  if (p == 0) return 0;
  if (p < kFp32MinNormal && path.u_exp > 0) return p;
  if (rounded && p < numerics::min_normal(path.p_dtype)) return std::min(p, numerics::subnormal_half_spacing(path.p_dtype));
  return 0;
}
// Dropout's factor 1 / (1 - p) rounded to the arithmetic's type and multiplied in: a relative error of 2 u per
// weight of the numerator (a factor applied once to O, dV or dP bounds the same per term); a materializing path
// stores dropout(P) and dropout(dP) again in the P type (u_p).
double dropout_rounding(const DropFactor& drop, const DataPath& path) {
  return drop.active() ? 2 * path.u_arith + (path.p_normalized ? path.u_p : 0) : 0;
}
double output_rounding(const DataPath& path, double value, double error) {
  return error + path.u_out * (std::abs(value) + error) + numerics::subnormal_half_spacing(path.out_dtype);
}

// §4, the bound that holds for any weight errors: the computed O is acc / l with acc = sum_j fl(w_j) v_j and
// l = sum_j w_j of the same computed weights w_j >= 0 (or the normalised P of a materializing path), so
// |O^_c| <= (1 + beta)(1 + gamma_pv)(1 + R u_a)(1 + u_fin) / (1 - delta_l) max_j |v_jc| plus the subnormal terms.
double computed_mean_bound(const DataPath& path, std::int64_t n, double big_r, double g_pv, double delta_l, double beta,
                           double v_max) {
  if (!(delta_l < 1)) return kInfinity;
  const double u_fin = path.p_normalized ? 0 : 2 * path.u_arith;
  const double tiny = static_cast<double>(n) * std::max(numerics::subnormal_half_spacing(path.p_dtype), kFp32MinNormal);
  return ((1 + beta) * (1 + g_pv) * (1 + big_r * path.u_arith) * (1 + u_fin) / (1 - delta_l) + tiny * (1 + g_pv)) * v_max;
}

// §4: one entry of O from its consistent (C_c) and numerator-only (N_c) terms: the denominator's error, the final
// division and the output rounding; where the first-order terms are not informative (large argument errors), the
// weighted-mean bound.
struct OTerms {
  double o, cons, num, amax, delta_l, beta, g_pv, big_r;
  std::int64_t n;
  double v_max;
};
double o_bound(const DataPath& path, const OTerms& t) {
  const double u_fin = path.p_normalized ? 0 : 2 * path.u_arith;
  const double den = t.delta_l / (1 - t.delta_l) * (std::abs(t.o) + t.cons + t.num);
  const double e1 = t.cons + t.num + den;
  const double first_order = e1 + u_fin * (std::abs(t.o) + e1);
  const double mean = std::abs(t.o) + computed_mean_bound(path, t.n, t.big_r, t.g_pv, t.delta_l, t.beta, t.v_max);
  const bool informative = t.amax < 1 && t.delta_l < 1 && first_order >= 0;
  return output_rounding(path, t.o, informative ? std::min(first_order, mean) : mean);
}

// The operands' magnitudes that the bounds multiply, computed once per check: |K|, |V|, V^2 and, with a backward,
// |Q| and |dO| of each query head; the column maxima of |K| and |V| over every key (§3, §9).
struct Magnitudes {
  RowMat<double> k_abs, v_abs, v_sq;
  std::vector<RowMat<double>> q_abs, d_out_abs;
  Vec<double> k_max, v_max;

  Magnitudes(const GroupInputs& in, const Shape& sh, bool backward) {
    k_abs = ConstRows(in.k.data(), sh.nk, sh.d).cwiseAbs();
    v_abs = ConstRows(in.v.data(), sh.nk, sh.dv).cwiseAbs();
    v_sq = ConstRows(in.v.data(), sh.nk, sh.dv).cwiseAbs2();
    k_max = column_max(k_abs);
    v_max = column_max(v_abs);
    if (!backward) return;
    for (std::int64_t h = 0; h < sh.g; ++h) {
      q_abs.emplace_back(ConstRows(in.q.data() + h * sh.nq * sh.d, sh.nq, sh.d).cwiseAbs());
      d_out_abs.emplace_back(ConstRows(in.d_out.data() + h * sh.nq * sh.dv, sh.nq, sh.dv).cwiseAbs());
    }
  }
};

struct ForwardRowBounds {
  // per head, all forward rows: B_o [G][N_q][d_v], B_lse [G][N_q]
  std::vector<double> o, lse;

  // A fully masked row (LSE = -inf): its O = 0 and LSE are exact.
  void exact_row(std::size_t row, std::int64_t dv) {
    std::fill_n(o.begin() + static_cast<std::ptrdiff_t>(row * static_cast<std::size_t>(dv)), dv, 0.0);
    lse[row] = 0;
  }
};

// §1-4: forward bounds of the rows `which` of head h (one block), written into `b` at their row positions.
void forward_block_bounds(const GroupInputs& in, const Shape& sh, const PathConstants& pc, const Magnitudes& mag,
                          std::int64_t h, const std::vector<std::int64_t>& which, std::int64_t first, std::int64_t count,
                          const std::vector<double>& o_all, const std::vector<double>& lse_all, ForwardRowBounds& b) {
  const Problem& p = in.problem;
  const DataPath& path = pc.path;
  const ConstRows q(in.q.data() + h * sh.nq * sh.d, sh.nq, sh.d);
  const KeyRange span = key_span(p, which, first, count);
  const std::int64_t j0 = span_first(span), n_span = span.size();
  const Mat<double> qb = gather<double>(q, which, first, count);
  const Mat<double> s = masked_scores<double>(p, qb, ConstRows(in.k.data(), sh.nk, sh.d), sh.scale, which, first,
                                              span);  // column c: key j0 + c, as in every matrix below
  const Mat<double> a = sh.scale * (qb.cwiseAbs() * mag.k_abs.middleRows(j0, n_span).transpose());
  const auto v_abs = mag.v_abs.middleRows(j0, n_span);
  const auto v_sq = mag.v_sq.middleRows(j0, n_span);
  const Vec<double>& v_max = mag.v_max;
  const double gamma_qk = pc.gamma(path.qk, sh.d);
  Mat<double> prob = Mat<double>::Zero(count, n_span), weighted = prob, tiny = prob, prob_sq = prob, prob_sq_s_sq = prob;
  Vec<double> alpha_max = Vec<double>::Zero(count), weighted_sum = alpha_max, indep_lse = alpha_max;
  for (std::int64_t r = 0; r < count; ++r) {
    const std::int64_t i = which[static_cast<std::size_t>(first + r)];
    const double lse = lse_all[static_cast<std::size_t>(h * sh.nq + i)];
    if (std::isinf(lse)) continue;  // fully masked: exact zeros
    const KeyRange keys = keys_of(p, i);
    const double m = s.row(r).maxCoeff();
    const std::int64_t n = keys.size();
    const double rho = static_cast<double>(rescales(path, n)) * (path.u_exp + 2 * path.u_arith);
    double s_abs_max = 0;
    for (std::int64_t c = keys.lo - j0; c <= keys.hi - j0; ++c) s_abs_max = std::max(s_abs_max, std::abs(s(r, c)));
    const double rho_shift = rho + 4 * path.u_arith * s_abs_max;  // the running max's moves, §4
    for (std::int64_t c = keys.lo - j0; c <= keys.hi - j0; ++c) {
      const double pij = std::exp(s(r, c) - lse);
      const double delta = argument_error(pc, gamma_qk, a(r, c), s(r, c), m, 0);
      const double alpha = (1 + weight_error(path, delta)) * (1 + rho_shift) - 1;
      prob(r, c) = pij;
      weighted(r, c) = pij * alpha;
      alpha_max(r) = std::max(alpha_max(r), alpha);
      weighted_sum(r) += pij * alpha;
      tiny(r, c) = tiny_error(path, pij, path.u_p > 0 || path.p_normalized);
      prob_sq(r, c) = pij * pij;
      prob_sq_s_sq(r, c) = pij * pij * s(r, c) * s(r, c);
      indep_lse(r) += pij * pij * s(r, c) * s(r, c);
    }
  }
  // Dropout: the numerator's terms carry Z o P / (1 - p) (the denominator's, weighted_sum and indep_lse, every P)
  const DropFactor drop(in);
  if (drop.active()) {
    for (std::int64_t c = 0; c < n_span; ++c) {
      for (std::int64_t r = 0; r < count; ++r) {
        const double z = drop(h, which[static_cast<std::size_t>(first + r)], j0 + c);
        prob(r, c) *= z;
        weighted(r, c) *= z;
        tiny(r, c) *= z;
        prob_sq(r, c) *= z * z;
        prob_sq_s_sq(r, c) *= z * z;
      }
    }
  }
  const Mat<double> cons_num = weighted * v_abs, pv_abs = prob * v_abs, tiny_v = tiny * v_abs;
  Mat<double> p_round_sq, s_round_sq;
  if (pc.probabilistic) {
    p_round_sq = (prob_sq * v_sq).cwiseSqrt();
    s_round_sq = prob_sq_s_sq * v_sq;
  }
  for (std::int64_t r = 0; r < count; ++r) {
    const std::int64_t i = which[static_cast<std::size_t>(first + r)];
    const std::size_t row = static_cast<std::size_t>(h * sh.nq + i);
    const double lse = lse_all[row];
    if (std::isinf(lse)) {
      b.exact_row(row, sh.dv);
      continue;
    }
    const std::int64_t n = keys_of(p, i).size();
    const double big_r = static_cast<double>(rescales(path, n));
    const double amax = alpha_max(r);
    // 1/l and the product, per term; with dropout 1 / (1 - p) rounded and its product
    const double beta_indep = (path.p_normalized ? 2 * path.u_arith : 0) + dropout_rounding(drop, path);
    const double beta = path.u_p + beta_indep;
    const double g_pv = pc.gamma(path.pv, n);
    const double delta_l = pc.gamma(path.row_sum, numerics::row_sum_depth(n, path.row_sum_chains)) + big_r * path.u_arith;
    for (std::int64_t c = 0; c < sh.dv; ++c) {
      const double o = o_all[row * static_cast<std::size_t>(sh.dv) + static_cast<std::size_t>(c)];
      double cons = (cons_num(r, c) + std::abs(o) * weighted_sum(r)) / (1 - amax);
      double num = (beta + g_pv + big_r * path.u_arith) * (1 + amax) * (1 + beta) * pv_abs(r, c) + tiny_v(r, c) * (1 + g_pv);
      if (pc.probabilistic) {
        // the stored-S and P roundings as independent mean-zero errors (Hoeffding), §5
        cons += pc.lambda * path.u_scores * std::sqrt(2 * s_round_sq(r, c) + 2 * o * o * indep_lse(r)) / (1 - amax);
        num = (beta_indep + g_pv + big_r * path.u_arith) * (1 + amax) * (1 + beta) * pv_abs(r, c) +
              pc.lambda * path.u_p * (1 + amax) * p_round_sq(r, c) + tiny_v(r, c) * (1 + g_pv);
      }
      b.o[row * static_cast<std::size_t>(sh.dv) + static_cast<std::size_t>(c)] =
          o_bound(path, {o, cons, num, amax, delta_l, beta, g_pv, big_r, n, v_max(c) * drop.kept_scale()});
    }
    const double m = s.row(r).maxCoeff();
    // §5: the weighted argument errors, or (log-sum-exp is 1-Lipschitz in the max norm) the largest one
    const double lipschitz = std::log1p(amax) + 2 * path.u_exp;
    double lse_err = weighted_sum(r) < 1 ? std::min(weighted_sum(r) / (1 - weighted_sum(r)), lipschitz) : lipschitz;
    if (pc.probabilistic) lse_err += pc.lambda * path.u_scores * std::sqrt(indep_lse(r));
    lse_err += (delta_l < 1 ? -std::log1p(-delta_l) : kInfinity) + 2 * path.u_arith * std::abs(lse - m) +
               2 * path.u_arith * (std::abs(m) + std::abs(lse));
    b.lse[row] = lse_err + unit_roundoff(DType::fp32) * (std::abs(lse) + lse_err);
  }
}

// §9: a row-level bound of the forward outputs from O(d) per row, for the rows a sampled backward check does not
// compare but whose LSE and O errors propagate into dK and dV: every score is bounded by a_max = scale sum_c |q_c|
// max_j |k_jc| and every |v_jc| by max_j |v_jc|. Never below the per-entry bound of forward_block_bounds.
void row_level_bounds(const GroupInputs& in, const Shape& sh, const DataPath& path, std::int64_t h, std::int64_t i,
                      const std::vector<double>& o_all, const std::vector<double>& lse_all, const Vec<double>& k_max,
                      const Vec<double>& v_max, ForwardRowBounds& b) {
  const std::size_t row = static_cast<std::size_t>(h * sh.nq + i);
  const double lse = lse_all[row];
  if (std::isinf(lse)) {
    b.exact_row(row, sh.dv);
    return;
  }
  const std::int64_t n = keys_of(in.problem, i).size();
  double a_max = 0;
  for (std::int64_t c = 0; c < sh.d; ++c) a_max += std::abs(in.q[static_cast<std::size_t>((h * sh.nq + i) * sh.d + c)]) * k_max(c);
  a_max *= sh.scale;
  const double log_n = std::log(static_cast<double>(std::max<std::int64_t>(n, 1)));
  const double m_abs = std::abs(lse) + log_n;
  const double delta = path.qk.gamma(sh.d) * a_max + path.u_scores * a_max + 3 * path.u_arith * (a_max + m_abs + kShiftSlack);
  const double big_r = static_cast<double>(rescales(path, n));
  const double rho = big_r * (path.u_exp + 2 * path.u_arith) + 4 * path.u_arith * a_max;
  const double amax = (1 + weight_error(path, delta)) * (1 + rho) - 1;
  const DropFactor drop(in);
  const double beta = path.u_p + (path.p_normalized ? 2 * path.u_arith : 0) + dropout_rounding(drop, path);
  const double g_pv = path.pv.gamma(n);
  const double delta_l = path.row_sum.gamma(numerics::row_sum_depth(n, path.row_sum_chains)) + big_r * path.u_arith;
  const double tiny = static_cast<double>(n) * std::max(numerics::subnormal_half_spacing(path.p_dtype), kFp32MinNormal);
  for (std::int64_t c = 0; c < sh.dv; ++c) {
    const double o = o_all[row * static_cast<std::size_t>(sh.dv) + static_cast<std::size_t>(c)];
    const double v_top = v_max(c) * drop.kept_scale();  // dropout: |Z_ij v_jc| / (1 - p) <= max_j |v_jc| / (1 - p)
    const double cons = amax * (v_top + std::abs(o)) / (1 - amax);
    const double num = (beta + g_pv + big_r * path.u_arith) * (1 + amax) * (1 + beta) * v_top + tiny * v_top * (1 + g_pv);
    b.o[row * static_cast<std::size_t>(sh.dv) + static_cast<std::size_t>(c)] =
        o_bound(path, {o, cons, num, amax, delta_l, beta, g_pv, big_r, n, v_top});
  }
  const double lse_err = std::log1p(amax) + 2 * path.u_exp + (delta_l < 1 ? -std::log1p(-delta_l) : kInfinity) +
                         2 * path.u_arith * log_n + 2 * path.u_arith * (m_abs + std::abs(lse));
  b.lse[row] = lse_err + unit_roundoff(DType::fp32) * (std::abs(lse) + lse_err);
}

// The backward's per-entry error of dS (and P) for one block of (query row, key) pairs, §6-8.
struct BackwardEntries {
  Mat<double> p_err;   // |P^ - P| of the P that dV uses (rounded where the path rounds it)
  Mat<double> ds_err;  // |dS^ - dS| before the dS rounding (deterministic) or with it (probabilistic: without)
  Mat<double> prob, ds;
};

// rows: query rows (global indices) of head h; keys: key indices; s: scale q k (unmasked values at kept entries).
BackwardEntries backward_entries(const GroupInputs& in, const Shape& sh, const PathConstants& pc, const Magnitudes& mag,
                                 std::int64_t h, const std::vector<std::int64_t>& rows,
                                 const std::vector<std::int64_t>& keys, const std::vector<double>& o_all,
                                 const std::vector<double>& lse_all, const std::vector<double>& delta_all,
                                 const ForwardRowBounds& fb) {
  const Problem& p = in.problem;
  const DataPath& path = pc.path;
  const auto nr = static_cast<std::int64_t>(rows.size()), nk = static_cast<std::int64_t>(keys.size());
  const ConstRows q(in.q.data() + h * sh.nq * sh.d, sh.nq, sh.d), d_out(in.d_out.data() + h * sh.nq * sh.dv, sh.nq, sh.dv);
  const ConstRows k(in.k.data(), sh.nk, sh.d), v(in.v.data(), sh.nk, sh.dv);
  auto map = [](const RowMat<double>& m) { return ConstRows(m.data(), m.rows(), m.cols()); };
  RowMat<double> store[8];
  const RowsView qr = rows_of(q, rows, store[0]), dor = rows_of(d_out, rows, store[1]);
  const RowsView kk = rows_of(k, keys, store[2]), vk = rows_of(v, keys, store[3]);
  const RowsView q_abs = rows_of(map(mag.q_abs[static_cast<std::size_t>(h)]), rows, store[4]);
  const RowsView d_out_abs = rows_of(map(mag.d_out_abs[static_cast<std::size_t>(h)]), rows, store[5]);
  const RowsView k_abs = rows_of(map(mag.k_abs), keys, store[6]), v_abs = rows_of(map(mag.v_abs), keys, store[7]);
  const Mat<double> s = sh.scale * (qr * kk.transpose());
  const Mat<double> a = sh.scale * (q_abs * k_abs.transpose());
  const Mat<double> dp = dor * vk.transpose();
  const Mat<double> dp_abs = d_out_abs * v_abs.transpose();
  const double gamma_qk = pc.gamma(path.qk, sh.d), gamma_dp = pc.gamma(path.dp, sh.dv), gamma_delta = pc.gamma(path.delta, sh.dv);
  const double u_ds_in_eta = pc.probabilistic ? 0 : path.u_ds;
  const double eta = (1 + path.u_arith) * (1 + path.u_arith) * (1 + u_ds_in_eta) *
                         (1 + (path.ds_from_rounded_p ? path.u_p_bwd : 0)) - 1;
  BackwardEntries e{Mat<double>::Zero(nr, nk), Mat<double>::Zero(nr, nk), Mat<double>::Zero(nr, nk), Mat<double>::Zero(nr, nk)};
  const DropFactor drop(in);
  const double u_drop = dropout_rounding(drop, path);
  for (std::int64_t r = 0; r < nr; ++r) {
    const std::int64_t i = rows[static_cast<std::size_t>(r)];
    const std::size_t row = static_cast<std::size_t>(h * sh.nq + i);
    const double lse = lse_all[row];
    if (std::isinf(lse)) continue;
    const KeyRange range = keys_of(p, i);
    // |D^ - D|: the forward's O error and the dot product's rounding, §7
    double delta_err = 0;
    for (std::int64_t c = 0; c < sh.dv; ++c) {
      const double bo = fb.o[row * static_cast<std::size_t>(sh.dv) + static_cast<std::size_t>(c)];
      const double o = o_all[row * static_cast<std::size_t>(sh.dv) + static_cast<std::size_t>(c)];
      delta_err += std::abs(dor(r, c)) * (bo + gamma_delta * (std::abs(o) + bo));
    }
    const double d = delta_all[row];
    for (std::int64_t j = 0; j < nk; ++j) {
      const std::int64_t key = keys[static_cast<std::size_t>(j)];
      if (range.empty() || key < range.lo || key > range.hi) continue;
      const double pij = std::exp(s(r, j) - lse);
      if (pij == 0) continue;  // below fp64's range: the kernels' fp32 exp flushes it too
      const double delta = argument_error(pc, gamma_qk, a(r, j), s(r, j), lse, fb.lse[row]);
      double alpha = weight_error(path, delta);
      if (pc.probabilistic) alpha += pc.lambda * path.u_scores * std::abs(s(r, j));  // one entry: no averaging
      // dropout: dP = Z o (dO V^T) / (1 - p), its rounding and the factor's (u_drop); dV's weights Z o P / (1 - p)
      const double z = drop(h, i, key);
      const double x = z * dp(r, j) - d;
      double eps = z * (gamma_dp + u_drop) * dp_abs(r, j) + delta_err;
      if (path.u_dp_stored > 0) eps += path.u_dp_stored * (z * std::abs(dp(r, j)) + eps) + z * stored_tiny(path, dp(r, j));
      const double tiny_p = tiny_error(path, pij, path.u_p_bwd > 0);
      e.prob(r, j) = z * pij;
      e.ds(r, j) = pij * x;
      const double u_p_in_err = pc.probabilistic ? 0 : path.u_p_bwd;  // probabilistic: the operand term of §8
      e.p_err(r, j) = z * (pij * ((1 + alpha) * (1 + u_p_in_err) * (1 + u_drop) - 1) + tiny_p);
      e.ds_err(r, j) = pij * (std::abs(x) * ((1 + alpha) * (1 + eta) - 1) + eps * (1 + alpha) * (1 + eta)) +
                       tiny_error(path, pij, path.ds_from_rounded_p) * (std::abs(x) + eps) * (1 + eta);
      if (path.u_ds > 0) e.ds_err(r, j) += stored_tiny(path, pij * x);  // dS stored below the normal range
    }
  }
  return e;
}

// §8: a gradient entry's bound from the accumulated products: `err` = sum |E| |B|, `mag` = sum |X^| |B| with X^ the
// operand as used, `sq` = sqrt(sum X^2 B^2) (probabilistic operand rounding), scaled by `scale` (dQ, dK) or 1 (dV).
double gradient_bound(const PathConstants& pc, const Accumulation& acc, std::int64_t n, double operand_u, double scale,
                      double value, double err, double mag, double sq) {
  const DataPath& path = pc.path;
  const double g = pc.gamma(acc, n);
  double e = err * (1 + g) + g * mag;
  if (pc.probabilistic) e += pc.lambda * operand_u * sq;
  const bool scaled = scale != 1.0;
  e = scale * e * (scaled ? 1 + path.u_arith : 1) + (scaled ? path.u_arith * std::abs(value) : 0);
  return output_rounding(path, value, e);
}

}  // namespace

GroupCheck check_group(const GroupInputs& in, const RowChoice& rows, const GroupCheckOptions& options) {
  const Shape sh = shape_of(in, options.backward);
  for (std::int64_t i : rows.query) {
    if (i < 0 || i >= sh.nq) throw InvalidProblem("rows", "check_group: query row " + std::to_string(i) + " outside [0, N_q)");
  }
  for (std::int64_t j : rows.key) {
    if (j < 0 || j >= sh.nk) throw InvalidProblem("rows", "check_group: key row " + std::to_string(j) + " outside [0, N_k)");
  }
  const int workers = options.workers > 0 ? options.workers : default_worker_count();
  const Values<double> exact = compute_values<double>(in, sh, rows, options.backward, workers);
  GroupCheck result;
  result.exact = exact.out;
  if (options.upcast) {
    result.upcast = rounded(compute_values<float>(in, sh, rows, options.backward, workers).out, *options.upcast);
  }
  if (options.paths.empty()) return result;

  // Per-entry forward bounds at the chosen query rows (every row when all are chosen); a sampled backward check
  // bounds the other rows' LSE and O errors row by row (§9).
  const bool every_query_row = static_cast<std::int64_t>(rows.query.size()) == sh.nq;
  const auto nsel = static_cast<std::int64_t>(rows.query.size()), ksel = static_cast<std::int64_t>(rows.key.size());
  const std::vector<double>& delta_all = exact.delta_all;
  const Magnitudes mag(in, sh, options.backward);  // shared by every path and pass
  for (std::size_t path_index = 0; path_index < options.paths.size(); ++path_index) {
    const DataPath& path = options.paths[path_index];
    const bool with_probabilistic = path_index < options.probabilistic_paths;
    PathBounds pb;
    // the row-level bounds of §9 are the same for both passes (deterministic)
    ForwardRowBounds row_level{std::vector<double>(static_cast<std::size_t>(sh.g * sh.nq * sh.dv)),
                               std::vector<double>(static_cast<std::size_t>(sh.g * sh.nq))};
    if (options.backward && !every_query_row) {
      parallel_for(sh.g, workers, [&](std::int64_t h, int) {
        for (std::int64_t i = 0; i < sh.nq; ++i) {
          row_level_bounds(in, sh, path, h, i, exact.o_all, exact.lse_all, mag.k_max, mag.v_max, row_level);
        }
      });
    }
    for (bool probabilistic : {false, true}) {
      if (probabilistic && !with_probabilistic) break;
      const PathConstants pc{path, options.lambda, probabilistic};
      ForwardRowBounds fb = row_level;
      const Blocks blocks(rows.query.size());
      parallel_for(sh.g * blocks.count, workers, [&](std::int64_t item, int) {
        const std::int64_t h = item / blocks.count, first = blocks.first(item % blocks.count), count = blocks.rows(item % blocks.count);
        forward_block_bounds(in, sh, pc, mag, h, rows.query, first, count, exact.o_all, exact.lse_all, fb);
      });
      GroupOutputs out;
      out.o.resize(static_cast<std::size_t>(sh.g * nsel * sh.dv));
      out.lse.resize(static_cast<std::size_t>(sh.g * nsel));
      for (std::int64_t h = 0; h < sh.g; ++h) {
        for (std::int64_t r = 0; r < nsel; ++r) {
          const auto row = static_cast<std::size_t>(h * sh.nq + rows.query[static_cast<std::size_t>(r)]);
          out.lse[static_cast<std::size_t>(h * nsel + r)] = fb.lse[row];
          for (std::int64_t c = 0; c < sh.dv; ++c) {
            out.o[static_cast<std::size_t>((h * nsel + r) * sh.dv + c)] = fb.o[row * static_cast<std::size_t>(sh.dv) + static_cast<std::size_t>(c)];
          }
        }
      }
      if (options.backward) {
        // dQ at the chosen query rows, §8
        out.dq.assign(static_cast<std::size_t>(sh.g * nsel * sh.d), 0.0);
        const Blocks qblocks(rows.query.size());
        parallel_for(sh.g * qblocks.count, workers, [&](std::int64_t item, int) {
          const std::int64_t h = item / qblocks.count, first = qblocks.first(item % qblocks.count), count = qblocks.rows(item % qblocks.count);
          const std::vector<std::int64_t> block(rows.query.begin() + first, rows.query.begin() + first + count);
          const KeyRange span = key_span(in.problem, block, 0, count);
          const BackwardEntries e =
              backward_entries(in, sh, pc, mag, h, block, span_rows(span), exact.o_all, exact.lse_all, delta_all, fb);
          const auto k_span = mag.k_abs.middleRows(span_first(span), span.size());
          const Mat<double> err = e.ds_err * k_span, mag = (e.ds.cwiseAbs() + e.ds_err) * k_span;
          Mat<double> sq;
          if (probabilistic) sq = (e.ds.cwiseAbs2() * k_span.cwiseAbs2()).cwiseSqrt();
          for (std::int64_t r = 0; r < count; ++r) {
            const std::int64_t n = keys_of(in.problem, block[static_cast<std::size_t>(r)]).size();
            const std::int64_t terms = n + (path.dq_block > 0 ? (n + path.dq_block - 1) / path.dq_block + 1 : 0);
            for (std::int64_t c = 0; c < sh.d; ++c) {
              const auto at = static_cast<std::size_t>((h * nsel + first + r) * sh.d + c);
              out.dq[at] = gradient_bound(pc, path.dq, terms, path.u_ds, sh.scale, exact.out.dq[at], err(r, c), mag(r, c),
                                          probabilistic ? sq(r, c) : 0);
            }
          }
        });
        // dK, dV at the chosen key rows, §8
        out.dk.assign(static_cast<std::size_t>(ksel * sh.d), 0.0);
        out.dv.assign(static_cast<std::size_t>(ksel * sh.dv), 0.0);
        const Blocks kblocks(rows.key.size());
        parallel_for(kblocks.count, workers, [&](std::int64_t item, int) {
          const std::int64_t first = kblocks.first(item), count = kblocks.rows(item);
          const std::vector<std::int64_t> block(rows.key.begin() + first, rows.key.begin() + first + count);
          const KeyRange span = row_span(in.problem, block.front(), block.back());
          const std::vector<std::int64_t> seeing = span_rows(span);  // the query rows that see a key of the block
          Mat<double> dk_err = Mat<double>::Zero(count, sh.d), dk_mag = dk_err, dk_sq = dk_err;
          Mat<double> dv_err = Mat<double>::Zero(count, sh.dv), dv_mag = dv_err, dv_sq = dv_err;
          for (std::int64_t h = 0; h < sh.g; ++h) {
            const BackwardEntries e =
                backward_entries(in, sh, pc, mag, h, seeing, block, exact.o_all, exact.lse_all, delta_all, fb);
            const auto qabs = mag.q_abs[static_cast<std::size_t>(h)].middleRows(span_first(span), span.size());
            const auto doabs = mag.d_out_abs[static_cast<std::size_t>(h)].middleRows(span_first(span), span.size());
            dk_err += e.ds_err.transpose() * qabs;
            dk_mag += (e.ds.cwiseAbs() + e.ds_err).transpose() * qabs;
            dv_err += e.p_err.transpose() * doabs;
            dv_mag += (e.prob + e.p_err).transpose() * doabs;
            if (probabilistic) {
              dk_sq += e.ds.cwiseAbs2().transpose() * qabs.cwiseAbs2();
              dv_sq += e.prob.cwiseAbs2().transpose() * doabs.cwiseAbs2();
            }
          }
          // inner dimension: the group's query rows (G N_q terms at most) plus the G partial sums of GQA
          const std::int64_t terms = sh.g * sh.nq + sh.g;
          for (std::int64_t j = 0; j < count; ++j) {
            for (std::int64_t c = 0; c < sh.d; ++c) {
              const auto at = static_cast<std::size_t>((first + j) * sh.d + c);
              out.dk[at] = gradient_bound(pc, path.dk, terms, path.u_ds, sh.scale, exact.out.dk[at], dk_err(j, c), dk_mag(j, c),
                                          probabilistic ? std::sqrt(dk_sq(j, c)) : 0);
            }
            for (std::int64_t c = 0; c < sh.dv; ++c) {
              const auto at = static_cast<std::size_t>((first + j) * sh.dv + c);
              out.dv[at] = gradient_bound(pc, path.dv, terms, path.u_p_bwd, 1.0, exact.out.dv[at], dv_err(j, c), dv_mag(j, c),
                                          probabilistic ? std::sqrt(dv_sq(j, c)) : 0);
            }
          }
        });
      }
      (probabilistic ? pb.probabilistic : pb.deterministic) = std::move(out);
    }
    // The deterministic bound holds wherever the probabilistic one is larger (few terms, lambda > 1): keep the smaller.
    auto smaller = [](std::vector<double>& prob, const std::vector<double>& det) {
      for (std::size_t i = 0; i < prob.size(); ++i) prob[i] = std::min(prob[i], det[i]);
    };
    if (!with_probabilistic) {
      result.bounds.push_back(std::move(pb));
      continue;
    }
    smaller(pb.probabilistic.o, pb.deterministic.o);
    smaller(pb.probabilistic.lse, pb.deterministic.lse);
    smaller(pb.probabilistic.dq, pb.deterministic.dq);
    smaller(pb.probabilistic.dk, pb.deterministic.dk);
    smaller(pb.probabilistic.dv, pb.deterministic.dv);
    result.bounds.push_back(std::move(pb));
  }
  return result;
}

}  // namespace flashlab::reference
