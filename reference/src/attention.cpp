#include "flashlab/reference/attention.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "flashlab/core/dropout.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/parallel.hpp"
#include "exp.hpp"

namespace flashlab::reference {
namespace {

template <class S>
using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;
template <class S>
using RowMajorMatrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// `count` consecutive tokens of one head of a [B, N, H, d] tensor, as a (count x d) matrix.
template <class S>
using TokenRows = Eigen::Map<RowMajorMatrix<std::remove_const_t<S>>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using ConstTokenRows = Eigen::Map<const RowMajorMatrix<S>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using MatrixMap = Eigen::Map<Matrix<S>>;

// A rows x cols column-major scratch matrix taken from the workspace allocator.
template <class S>
struct Scratch {
  Workspace memory;
  MatrixMap<S> matrix{nullptr, 0, 0};
  Scratch() = default;
  Scratch(Allocator& allocator, std::int64_t rows, std::int64_t cols, const char* what)
      : memory(allocator, static_cast<std::size_t>(rows * cols) * sizeof(S), what),
        matrix(memory.as<S>(), rows, cols) {}
};

Allocator& workspace_of(const Options& options) {
  return options.workspace ? *options.workspace : HeapAllocator::instance();
}

template <class T>
auto token_rows(const TensorView<T, 4>& t, std::int64_t slot, std::int64_t token, std::int64_t head,
                std::int64_t count) {
  using Map = std::conditional_t<std::is_const_v<T>, ConstTokenRows<std::remove_const_t<T>>, TokenRows<T>>;
  return Map(t.data() + (count > 0 ? t.offset(slot, token, head, 0) : 0), count, t.size(3),
             Eigen::OuterStride<>(t.stride(1)));
}

template <class T, int Rank>
void check_tensor(const char* name, const TensorView<T, Rank>& view, const std::type_identity_t<Shape<Rank>>& expected) {
  check_shape(name, view, expected);
  if (view.size(Rank - 1) > 1 && view.stride(Rank - 1) != 1) {
    throw InvalidProblem(name, std::string("tensor ") + name + " has stride " +
                                   std::to_string(view.stride(Rank - 1)) +
                                   " in its last dimension: the reference needs it contiguous (stride 1)");
  }
}

int requested_workers(const Options& options) {
  if (options.row_block < 1) {
    throw std::invalid_argument("reference row_block = " + std::to_string(options.row_block) + ": must be >= 1");
  }
  return options.workers > 0 ? options.workers : default_worker_count();
}

std::int64_t blocks_of(std::int64_t rows, std::int64_t row_block) { return (rows + row_block - 1) / row_block; }

// Forward work: one item per (sequence, head, row block).
struct ForwardItem {
  std::int64_t b, h, i0;
};

std::vector<ForwardItem> plan_forward(const Problem& p, std::int64_t row_block) {
  std::vector<ForwardItem> items;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const Sequence s = p.sequence(b);
    for (std::int64_t h = 0; h < p.heads; ++h) {
      for (std::int64_t i0 = 0; i0 < s.seqlen_q; i0 += row_block) items.push_back({b, h, i0});
    }
  }
  return items;
}

// Backward work: a unit is (sequence, kv head) and owns dK, dV of that kv head; its row blocks
// (group_size heads x blocks per head) are cut into `slices` contiguous items when units are fewer than
// workers. Items of a sliced unit write partial sums, added in slice order afterwards.
struct BackwardItem {
  std::int64_t b, g;
  std::int64_t begin, end;        // range of the unit's row blocks
  std::int64_t partial = -1;      // index of its partial-sum buffer, -1 when it writes dK, dV itself
  std::int64_t first_of_unit;     // index of the unit's first item
  std::int64_t slices;
};

struct BackwardPlan {
  std::vector<BackwardItem> items;
  std::int64_t partial_buffers = 0;
  int workers = 1;
};

BackwardPlan plan_backward(const Problem& p, std::int64_t row_block, int workers) {
  BackwardPlan plan;
  const std::int64_t units = p.batch * p.heads_kv;
  const std::int64_t slices_wanted = std::max<std::int64_t>(1, (workers + units - 1) / units);
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const std::int64_t blocks = p.group_size() * blocks_of(p.sequence(b).seqlen_q, row_block);
    const std::int64_t slices = std::clamp<std::int64_t>(slices_wanted, 1, std::max<std::int64_t>(1, blocks));
    for (std::int64_t g = 0; g < p.heads_kv; ++g) {
      const auto first = static_cast<std::int64_t>(plan.items.size());
      for (std::int64_t s = 0; s < slices; ++s) {
        BackwardItem item{b, g, blocks * s / slices, blocks * (s + 1) / slices, -1, first, slices};
        if (slices > 1) item.partial = plan.partial_buffers++;
        plan.items.push_back(item);
      }
    }
  }
  plan.workers = static_cast<int>(std::min<std::int64_t>(workers, std::max<std::size_t>(1, plan.items.size())));
  return plan;
}

// The key columns [c0, c0 + width) any row of the block [i0, i0 + rows) may see: key_range's bounds are
// non-decreasing in i over the valid rows (padded rows keep nothing), so the block's first valid row gives the lowest
// and its last valid row the highest.
struct Columns {
  std::int64_t c0, width;
};
Columns block_columns(const Problem& p, const Sequence& s, std::int64_t i0, std::int64_t rows) {
  const std::int64_t first = std::max(i0, s.pad_front);
  const std::int64_t last = std::min(i0 + rows, s.seqlen_q - s.pad_back) - 1;
  if (first > last) return {0, 0};
  const std::int64_t c0 = p.key_range(s, first).lo;
  const std::int64_t c1 = p.key_range(s, last).hi + 1;
  return {c0, std::max<std::int64_t>(0, c1 - c0)};
}

// Scores S = scale Q K^T of one row block, masked entries set to -inf.
// Row sums of `block` (or of the elementwise product of two blocks) in one fixed order, j = 0, 1, ... in sequence,
// whatever the operands' addresses. Eigen's vectorized reductions start at the first aligned packet, so their
// association, and the last bit of the sum, would follow where malloc put the scratch or where the caller keeps its
// tensors: the reference would not repeat bit for bit across runs or callers (it differed in the last bit of O).
template <class Scalar, class Block>
void ordered_row_sums(const Block& block, Vector<Scalar>& sums) {
  for (Eigen::Index r = 0; r < block.rows(); ++r) {
    Scalar sum = 0;
    for (Eigen::Index j = 0; j < block.cols(); ++j) sum += block(r, j);
    sums(r) = sum;
  }
}
template <class Scalar, class A, class B, class Sums>
void ordered_row_dots(const A& a, const B& b, Sums&& sums) {
  for (Eigen::Index r = 0; r < a.rows(); ++r) {
    Scalar sum = 0;
    for (Eigen::Index j = 0; j < a.cols(); ++j) sum += a(r, j) * b(r, j);
    sums(r) = sum;
  }
}

template <class Scalar, class Block, class QRows, class KRows>
void masked_scores(const Problem& p, const Sequence& s, std::int64_t i0, std::int64_t c0, const QRows& q,
                   const KRows& k, Block& scores) {
  scores.noalias() = static_cast<Scalar>(p.scale()) * (q * k.transpose());
  if (!p.is_masked()) return;
  const Scalar minus_inf = -std::numeric_limits<Scalar>::infinity();
  const std::int64_t width = scores.cols();
  for (std::int64_t r = 0; r < scores.rows(); ++r) {
    const KeyRange keys = p.key_range(s, i0 + r);
    std::int64_t keep_begin = 0, keep_end = 0;  // kept columns [keep_begin, keep_end) of this row
    if (!keys.empty()) {
      keep_begin = std::clamp<std::int64_t>(keys.lo - c0, 0, width);
      keep_end = std::clamp<std::int64_t>(keys.hi + 1 - c0, keep_begin, width);
    }
    scores.row(r).head(keep_begin).setConstant(minus_inf);
    scores.row(r).tail(width - keep_end).setConstant(minus_inf);
  }
}

// Dropout (core/dropout.hpp) on a block of weights of query head h of sequence b (s = p.sequence(b)), rows i0 + r, keys
// c0 + c: a dropped weight becomes 0, a kept one is multiplied by `kept_scale`. Under key padding the mask is drawn at
// the positions inside the valid interval (dropout_keep_padded); a padded pair's weight, already 0, stays 0.
template <class Scalar, class Block>
void drop_weights(const Problem& p, const Sequence& s, std::int64_t b, std::int64_t h, std::int64_t i0, std::int64_t c0,
                  Scalar kept_scale, Block& block) {
  const DropoutSpec& dropout = p.dropout;
  const std::uint32_t threshold = dropout_keep_threshold16(dropout.p);
  const auto subsequence = static_cast<std::uint64_t>(b * p.heads + h);
  for (std::int64_t c = 0; c < block.cols(); ++c) {
    for (std::int64_t r = 0; r < block.rows(); ++r) {
      const bool keep = dropout_keep_padded(dropout.seed, dropout.offset, subsequence, i0 + r, c0 + c, s.pad_front,
                                            s.valid_q(), s.valid_k(), threshold);
      block(r, c) = keep ? block(r, c) * kept_scale : Scalar(0);
    }
  }
}

template <class Scalar>
Scalar kept_scale_of(const Problem& p) {
  return static_cast<Scalar>(1.0 / (1.0 - p.dropout.p));
}

template <class Scalar>
void check_forward(const Problem& p, const ForwardArgs<Scalar>& a) {
  p.validate();
  const AttentionShapes shapes = attention_shapes(p);
  check_tensor("q", a.q, shapes.q);
  check_tensor("k", a.k, shapes.k);
  check_tensor("v", a.v, shapes.v);
  check_tensor("o", a.o, shapes.o);
  check_tensor("lse", a.lse, shapes.lse);
}

template <class Scalar>
void check_backward(const Problem& p, const BackwardArgs<Scalar>& a) {
  p.validate();
  const AttentionShapes shapes = attention_shapes(p);
  check_tensor("q", a.q, shapes.q);
  check_tensor("k", a.k, shapes.k);
  check_tensor("v", a.v, shapes.v);
  check_tensor("o", a.o, shapes.o);
  check_tensor("lse", a.lse, shapes.lse);
  check_tensor("d_out", a.d_out, shapes.o);
  check_tensor("dq", a.dq, shapes.q);
  check_tensor("dk", a.dk, shapes.k);
  check_tensor("dv", a.dv, shapes.v);
}

}  // namespace

template <class Scalar>
void forward(const Problem& p, const ForwardArgs<Scalar>& a, const Options& options) {
  check_forward(p, a);
  const int workers_wanted = requested_workers(options);
  const std::int64_t br = options.row_block;
  const std::vector<ForwardItem> items = plan_forward(p, br);
  const int workers = static_cast<int>(std::min<std::int64_t>(workers_wanted, std::max<std::size_t>(1, items.size())));
  const Scalar minus_inf = -std::numeric_limits<Scalar>::infinity();
  // Each worker's score block, taken up front so that the workspace is the same whatever the scheduling.
  std::vector<Scratch<Scalar>> scores;
  scores.reserve(static_cast<std::size_t>(workers));
  for (int w = 0; w < workers && !items.empty(); ++w) {
    scores.emplace_back(workspace_of(options), br, p.seqlen_k, "reference scores");
  }

  parallel_for(static_cast<std::int64_t>(items.size()), workers, [&](std::int64_t index, int worker) {
    const ForwardItem& it = items[static_cast<std::size_t>(index)];
    const Sequence s = p.sequence(it.b);
    const std::int64_t rows = std::min(br, s.seqlen_q - it.i0);
    const std::int64_t g = it.h / p.group_size();
    auto o = token_rows(a.o, s.slot, s.q_offset + it.i0, it.h, rows);
    auto lse = [&](std::int64_t r) -> Scalar& { return a.lse(s.slot, it.h, s.q_offset + it.i0 + r); };
    const Columns cols = block_columns(p, s, it.i0, rows);
    if (cols.width == 0) {  // every row of the block is fully masked
      o.setZero();
      for (std::int64_t r = 0; r < rows; ++r) lse(r) = minus_inf;
      return;
    }
    const auto q = token_rows(a.q, s.slot, s.q_offset + it.i0, it.h, rows);
    const auto k = token_rows(a.k, s.slot, s.k_offset + cols.c0, g, cols.width);
    const auto v = token_rows(a.v, s.slot, s.k_offset + cols.c0, g, cols.width);
    auto block = scores[static_cast<std::size_t>(worker)].matrix.topLeftCorner(rows, cols.width);

    // prologue: masked scores and their row maxima (m_i)
    masked_scores<Scalar>(p, s, it.i0, cols.c0, q, k, block);
    Vector<Scalar> row_max = block.rowwise().maxCoeff();
    // A fully masked row has max -inf; shift it by 0 so that exp(-inf - 0) = 0 instead of NaN.
    for (std::int64_t r = 0; r < rows; ++r) {
      if (row_max(r) == minus_inf) row_max(r) = 0;
    }
    // softmax numerator, row sums (l_i) and O = P V / l
    block.array().colwise() -= row_max.array();
    exp_in_place(block.array());
    Vector<Scalar> row_sum(rows);
    ordered_row_sums<Scalar>(block, row_sum);
    // dropout on the weights after the row sums: l_i and the LSE come from the undropped P
    if (p.dropout.active()) drop_weights(p, s, it.b, it.h, it.i0, cols.c0, kept_scale_of<Scalar>(p), block);
    o.noalias() = block * v;
    for (std::int64_t r = 0; r < rows; ++r) {
      if (row_sum(r) == 0) {
        o.row(r).setZero();
        lse(r) = minus_inf;
      } else {
        o.row(r) /= row_sum(r);
        lse(r) = row_max(r) + std::log(row_sum(r));
      }
    }
  });
}

template <class Scalar>
void backward(const Problem& p, const BackwardArgs<Scalar>& a, const Options& options) {
  check_backward(p, a);
  const std::int64_t br = options.row_block;
  const BackwardPlan plan = plan_backward(p, br, requested_workers(options));
  const std::int64_t d = p.head_dim, dv = p.dv(), group = p.group_size();
  const auto scale = static_cast<Scalar>(p.scale());
  const Scalar minus_inf = -std::numeric_limits<Scalar>::infinity();

  // Per worker, taken up front: P and dP/dS blocks (Br x N_k), dK/dV accumulators (N_k x d, N_k x d_v), D (Br).
  struct WorkerScratch {
    Scratch<Scalar> p, ds, dk, dv, delta;
  };
  Allocator& allocator = workspace_of(options);
  const std::int64_t nk_max = p.seqlen_k;
  std::vector<WorkerScratch> scratch;
  scratch.reserve(static_cast<std::size_t>(plan.workers));
  for (int w = 0; w < plan.workers; ++w) {
    scratch.push_back({Scratch<Scalar>(allocator, br, nk_max, "reference P"),
                       Scratch<Scalar>(allocator, br, nk_max, "reference dS"),
                       Scratch<Scalar>(allocator, nk_max, d, "reference dK accumulator"),
                       Scratch<Scalar>(allocator, nk_max, dv, "reference dV accumulator"),
                       Scratch<Scalar>(allocator, br, 1, "reference D")});
  }
  std::vector<Scratch<Scalar>> partial_dk, partial_dv;
  for (std::int64_t i = 0; i < plan.partial_buffers; ++i) {
    partial_dk.emplace_back(allocator, nk_max, d, "reference partial dK");
    partial_dv.emplace_back(allocator, nk_max, dv, "reference partial dV");
  }

  parallel_for(static_cast<std::int64_t>(plan.items.size()), plan.workers, [&](std::int64_t index, int worker) {
    const BackwardItem& it = plan.items[static_cast<std::size_t>(index)];
    const Sequence s = p.sequence(it.b);
    const std::int64_t nk = s.seqlen_k;
    const std::int64_t blocks_per_head = blocks_of(s.seqlen_q, br);
    WorkerScratch& w = scratch[static_cast<std::size_t>(worker)];
    auto dk_acc = w.dk.matrix.topRows(nk);
    auto dv_acc = w.dv.matrix.topRows(nk);
    dk_acc.setZero();
    dv_acc.setZero();

    for (std::int64_t t = it.begin; t < it.end; ++t) {
      const std::int64_t h = it.g * group + t / blocks_per_head;
      const std::int64_t i0 = (t % blocks_per_head) * br;
      const std::int64_t rows = std::min(br, s.seqlen_q - i0);
      const std::int64_t q0 = s.q_offset + i0;
      auto dq = token_rows(a.dq, s.slot, q0, h, rows);
      const Columns cols = block_columns(p, s, i0, rows);
      if (cols.width == 0) {  // fully masked rows: no gradient flows
        dq.setZero();
        continue;
      }
      const auto q = token_rows(a.q, s.slot, q0, h, rows);
      const auto o = token_rows(a.o, s.slot, q0, h, rows);
      const auto d_out = token_rows(a.d_out, s.slot, q0, h, rows);
      const auto k = token_rows(a.k, s.slot, s.k_offset + cols.c0, it.g, cols.width);
      const auto v = token_rows(a.v, s.slot, s.k_offset + cols.c0, it.g, cols.width);
      auto prob = w.p.matrix.topLeftCorner(rows, cols.width);
      auto ds = w.ds.matrix.topLeftCorner(rows, cols.width);
      auto delta = w.delta.matrix.col(0).head(rows);

      // recompute P = exp(S - LSE); a fully masked row (LSE = -inf, all S = -inf) is shifted by 0 -> P = 0
      masked_scores<Scalar>(p, s, i0, cols.c0, q, k, prob);
      for (std::int64_t r = 0; r < rows; ++r) {
        const Scalar lse = a.lse(s.slot, h, q0 + r);
        prob.row(r).array() -= lse == minus_inf ? Scalar(0) : lse;
      }
      exp_in_place(prob.array());
      ordered_row_dots<Scalar>(d_out, o, delta);
      if (!p.dropout.active()) {
        dv_acc.middleRows(cols.c0, cols.width).noalias() += prob.transpose() * d_out;
        // dS = P * (dP - D), dP = dO V^T
        ds.noalias() = d_out * v.transpose();
        ds.array() = prob.array() * (ds.array().colwise() - delta.array());
      } else {
        // dP = Z o (dO V^T) / (1 - p), dS = P o (dP - D), then P -> Z o P / (1 - p) for dV (core/dropout.hpp)
        ds.noalias() = d_out * v.transpose();
        drop_weights(p, s, it.b, h, i0, cols.c0, kept_scale_of<Scalar>(p), ds);
        ds.array() = prob.array() * (ds.array().colwise() - delta.array());
        drop_weights(p, s, it.b, h, i0, cols.c0, kept_scale_of<Scalar>(p), prob);
        dv_acc.middleRows(cols.c0, cols.width).noalias() += prob.transpose() * d_out;
      }
      dq.noalias() = scale * (ds * k);
      dk_acc.middleRows(cols.c0, cols.width).noalias() += scale * (ds.transpose() * q);
    }

    if (it.partial < 0) {
      token_rows(a.dk, s.slot, s.k_offset, it.g, nk) = dk_acc;
      token_rows(a.dv, s.slot, s.k_offset, it.g, nk) = dv_acc;
    } else {
      partial_dk[static_cast<std::size_t>(it.partial)].matrix.topRows(nk) = dk_acc;
      partial_dv[static_cast<std::size_t>(it.partial)].matrix.topRows(nk) = dv_acc;
    }
  });

  // epilogue: add the partial sums of sliced units in slice order
  for (const BackwardItem& it : plan.items) {
    if (it.partial < 0 || &it != &plan.items[static_cast<std::size_t>(it.first_of_unit)]) continue;
    const Sequence s = p.sequence(it.b);
    auto dk = token_rows(a.dk, s.slot, s.k_offset, it.g, s.seqlen_k);
    auto dv_out = token_rows(a.dv, s.slot, s.k_offset, it.g, s.seqlen_k);
    // sum into the first slice's buffer, in slice order
    const std::int64_t nk = s.seqlen_k;
    auto sum_dk = partial_dk[static_cast<std::size_t>(it.partial)].matrix.topRows(nk);
    auto sum_dv = partial_dv[static_cast<std::size_t>(it.partial)].matrix.topRows(nk);
    for (std::int64_t slice = 1; slice < it.slices; ++slice) {
      const auto next = static_cast<std::size_t>(plan.items[static_cast<std::size_t>(it.first_of_unit + slice)].partial);
      sum_dk += partial_dk[next].matrix.topRows(nk);
      sum_dv += partial_dv[next].matrix.topRows(nk);
    }
    dk = sum_dk;
    dv_out = sum_dv;
  }
}

std::int64_t workspace_bytes(const Problem& p, Pass pass, std::int64_t scalar_bytes, const Options& options) {
  p.validate();
  const int workers = requested_workers(options);
  const std::int64_t br = options.row_block, nk = p.seqlen_k;
  const auto forward_items = static_cast<std::int64_t>(plan_forward(p, br).size());
  const std::int64_t forward_workers = std::min<std::int64_t>(workers, forward_items);
  const std::int64_t forward_bytes = scalar_bytes * forward_workers * br * nk;
  const BackwardPlan plan = plan_backward(p, br, workers);
  const std::int64_t kv_rows = nk * (p.head_dim + p.dv());
  const std::int64_t backward_bytes =
      scalar_bytes * (plan.workers * (2 * br * nk + br + kv_rows) + plan.partial_buffers * kv_rows);
  switch (pass) {
    case Pass::fwd: return forward_bytes;
    case Pass::bwd: return backward_bytes;
    case Pass::fwdbwd: return std::max(forward_bytes, backward_bytes);
  }
  return 0;
}

template void forward<double>(const Problem&, const ForwardArgs<double>&, const Options&);
template void forward<float>(const Problem&, const ForwardArgs<float>&, const Options&);
template void backward<double>(const Problem&, const BackwardArgs<double>&, const Options&);
template void backward<float>(const Problem&, const BackwardArgs<float>&, const Options&);

}  // namespace flashlab::reference
