// CPU variants: the harness does real work where there is no GPU, through the same params and allocator.
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <limits>

#include "flashlab/core/dropout.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/parallel.hpp"
#include "flashlab/core/storage.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/reference/attention.hpp"

namespace flashlab::harness {
namespace {

using kernels::AttentionParams;
using kernels::LaunchContext;
using kernels::Strides;
using kernels::Support;

Shape<4> strides4(const Strides& s) { return {s.batch, s.token, s.head, 1}; }

// Element sizes of the tensors of a problem.
struct Elements {
  std::int64_t q, k, v, o, rows;
};
Elements elements(const Problem& p) {
  const AttentionShapes s = attention_shapes(p);
  return {element_count<4>(s.q), element_count<4>(s.k), element_count<4>(s.v), element_count<4>(s.o),
          element_count<3>(s.lse)};
}

// Copies a strided tensor of `dtype` into contiguous doubles and back.
void load_all(const void* source, DType dtype, const Shape<4>& shape, const Strides& strides, double* target) {
  const TensorView<const char, 4> view(static_cast<const char*>(source), shape, strides4(strides));
  std::int64_t linear = 0;
  for (std::int64_t a = 0; a < shape[0]; ++a)
    for (std::int64_t n = 0; n < shape[1]; ++n)
      for (std::int64_t h = 0; h < shape[2]; ++h)
        for (std::int64_t c = 0; c < shape[3]; ++c) target[linear++] = load(source, view.offset(a, n, h, c), dtype);
}
void store_all(const double* source, void* target, DType dtype, const Shape<4>& shape, const Strides& strides) {
  const TensorView<char, 4> view(static_cast<char*>(target), shape, strides4(strides));
  std::int64_t linear = 0;
  for (std::int64_t a = 0; a < shape[0]; ++a)
    for (std::int64_t n = 0; n < shape[1]; ++n)
      for (std::int64_t h = 0; h < shape[2]; ++h)
        for (std::int64_t c = 0; c < shape[3]; ++c) store(target, view.offset(a, n, h, c), dtype, source[linear++]);
}

Support cpu_dtypes(DType dtype) {
  if (dtype == DType::fp8_e4m3) return Support::no("fp8_e4m3 is not supported on the CPU (fp64, fp32, fp16, bf16)");
  return Support::yes();
}

// ---------------------------------------------------------------------------------------------------------
// cpu-reference: the Eigen reference in double. Inputs of other dtypes are widened (exactly) into double
// copies, outputs rounded back; LSE is float32 as in every variant.

reference::Options reference_options(Allocator* workspace) { return {.row_block = 128, .workers = 0, .workspace = workspace}; }

std::int64_t reference_model(const Problem& p, DType dtype, Pass pass) {
  const Elements e = elements(p);
  const std::int64_t widen = dtype == DType::fp64 ? 0 : 1;
  const std::int64_t fwd = 8 * (widen * (e.q + e.k + e.v + e.o) + e.rows) +
                           reference::workspace_bytes(p, Pass::fwd, 8, reference_options(nullptr));
  const std::int64_t bwd = 8 * (widen * 2 * (e.q + e.k + e.v + e.o) + e.rows) +
                           reference::workspace_bytes(p, Pass::bwd, 8, reference_options(nullptr));
  return pass == Pass::fwd ? fwd : pass == Pass::bwd ? bwd : std::max(fwd, bwd);
}

// A double view of a params tensor: the tensor itself for fp64, else a widened copy in `copy`.
TensorView<const double, 4> widened(const void* data, DType dtype, const Shape<4>& shape, const Strides& strides,
                                    Allocator& a, Workspace& copy, const char* what) {
  if (dtype == DType::fp64) return {static_cast<const double*>(data), shape, strides4(strides)};
  copy = Workspace(a, static_cast<std::size_t>(element_count<4>(shape)) * 8, what);
  load_all(data, dtype, shape, strides, copy.as<double>());
  return {copy.as<const double>(), shape};
}
TensorView<double, 4> output(void* data, DType dtype, const Shape<4>& shape, const Strides& strides, Allocator& a,
                             Workspace& copy, const char* what) {
  if (dtype == DType::fp64) return {static_cast<double*>(data), shape, strides4(strides)};
  copy = Workspace(a, static_cast<std::size_t>(element_count<4>(shape)) * 8, what);
  return {copy.as<double>(), shape};
}

void reference_forward(const AttentionParams& p, const LaunchContext& ctx) {
  const AttentionShapes s = attention_shapes(p.problem);
  Allocator& a = ctx.workspace;
  Workspace q_copy, k_copy, v_copy, o_copy;
  const auto q = widened(p.q, p.dtype, s.q, p.q_strides, a, q_copy, "widened Q");
  const auto k = widened(p.k, p.dtype, s.k, p.k_strides, a, k_copy, "widened K");
  const auto v = widened(p.v, p.dtype, s.v, p.v_strides, a, v_copy, "widened V");
  const auto o = output(p.o, p.dtype, s.o, p.o_strides, a, o_copy, "double O");
  Workspace lse(a, static_cast<std::size_t>(element_count<3>(s.lse)) * 8, "double LSE");
  reference::forward<double>(p.problem, {q, k, v, o, {lse.as<double>(), s.lse}}, reference_options(&a));
  if (p.dtype != DType::fp64) store_all(o_copy.as<double>(), p.o, p.dtype, s.o, p.o_strides);
  for (std::int64_t i = 0; i < element_count<3>(s.lse); ++i) p.lse[i] = static_cast<float>(lse.as<double>()[i]);
}

void reference_backward(const AttentionParams& p, const LaunchContext& ctx) {
  const AttentionShapes s = attention_shapes(p.problem);
  Allocator& a = ctx.workspace;
  Workspace q_copy, k_copy, v_copy, o_copy, do_copy, dq_copy, dk_copy, dv_copy;
  const auto q = widened(p.q, p.dtype, s.q, p.q_strides, a, q_copy, "widened Q");
  const auto k = widened(p.k, p.dtype, s.k, p.k_strides, a, k_copy, "widened K");
  const auto v = widened(p.v, p.dtype, s.v, p.v_strides, a, v_copy, "widened V");
  const auto o = widened(p.o, p.dtype, s.o, p.o_strides, a, o_copy, "widened O");
  const auto d_out = widened(p.d_out, p.dtype, s.o, p.d_out_strides, a, do_copy, "widened dO");
  const auto dq = output(p.dq, p.dtype, s.q, p.dq_strides, a, dq_copy, "double dQ");
  const auto dk = output(p.dk, p.dtype, s.k, p.dk_strides, a, dk_copy, "double dK");
  const auto dv = output(p.dv, p.dtype, s.v, p.dv_strides, a, dv_copy, "double dV");
  Workspace lse(a, static_cast<std::size_t>(element_count<3>(s.lse)) * 8, "double LSE");
  for (std::int64_t i = 0; i < element_count<3>(s.lse); ++i) lse.as<double>()[i] = p.lse[i];
  reference::backward<double>(p.problem, {q, k, v, o, {lse.as<double>(), s.lse}, d_out, dq, dk, dv},
                              reference_options(&a));
  if (p.dtype != DType::fp64) {
    store_all(dq_copy.as<double>(), p.dq, p.dtype, s.q, p.dq_strides);
    store_all(dk_copy.as<double>(), p.dk, p.dtype, s.k, p.dk_strides);
    store_all(dv_copy.as<double>(), p.dv, p.dtype, s.v, p.dv_strides);
  }
}

// ---------------------------------------------------------------------------------------------------------
// cpu-standard: eager attention that materializes the N x N matrices of every head in the run's dtype.
// Arithmetic in C (float for fp32/fp16/bf16, double for fp64); values are rounded to the dtype where an eager
// framework stores them: S, P, dP, dS and every output.

constexpr std::int64_t kStandardRowBlock = 64;

template <class C>
using Mat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic>;
template <class C>
using MatMap = Eigen::Map<Mat<C>>;

// Offsets of each (sequence, head) N_q x N_k block in the materialized buffers.
struct ScoreLayout {
  std::vector<std::int64_t> base;  // per sequence: first element of head 0
  std::int64_t total = 0;
};
ScoreLayout score_layout(const Problem& p) {
  ScoreLayout layout;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const Sequence s = p.sequence(b);
    layout.base.push_back(layout.total);
    layout.total += p.heads * s.seqlen_q * s.seqlen_k;
  }
  return layout;
}

int standard_workers(const Problem& p, Pass pass) {
  const std::int64_t items = p.batch * (pass == Pass::fwd ? p.heads : p.heads_kv);
  return static_cast<int>(std::clamp<std::int64_t>(default_worker_count(), 1, std::max<std::int64_t>(1, items)));
}

// Per-worker scratch, in elements of C: forward Q_h, K_g, V_g (N x d), a score block and an O block;
// backward adds dO_h, O_h, dK_g and dV_g accumulators, a second score block and a dQ block.
std::int64_t standard_scratch(const Problem& p, Pass pass) {
  const std::int64_t nq = p.seqlen_q, nk = p.seqlen_k, d = p.head_dim, dv = p.dv(), br = kStandardRowBlock;
  if (pass == Pass::fwd) return nq * d + nk * (d + dv) + br * nk + br * dv;
  return nq * (d + 2 * dv) + 2 * nk * (d + dv) + 2 * br * nk + br * d;
}

std::int64_t standard_model(const Problem& p, DType dtype, Pass pass) {
  const std::int64_t c = dtype == DType::fp64 ? 8 : 4, s = size_bytes(dtype);
  const std::int64_t n2 = score_layout(p).total;
  const std::int64_t fwd = s * n2 + c * standard_workers(p, Pass::fwd) * standard_scratch(p, Pass::fwd);
  const std::int64_t bwd = 2 * s * n2 + 4 * elements(p).rows +
                           c * standard_workers(p, Pass::bwd) * standard_scratch(p, Pass::bwd);
  return pass == Pass::fwd ? fwd : pass == Pass::bwd ? bwd : std::max(fwd, bwd);
}

template <class C>
C rounded(double x, DType dtype) {
  return static_cast<C>(round_to(x, dtype));
}

// Copies rows [t0, t0 + n) of one head of a params tensor into a (n x dim) matrix of C.
template <class C>
void gather(const void* data, DType dtype, const Strides& st, std::int64_t slot, std::int64_t t0, std::int64_t head,
            std::int64_t n, std::int64_t dim, MatMap<C>& out) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t base = slot * st.batch + (t0 + i) * st.token + head * st.head;
    for (std::int64_t c = 0; c < dim; ++c) out(i, c) = static_cast<C>(load(data, base + c, dtype));
  }
}
template <class Block>
void scatter(const Block& m, void* data, DType dtype, const Strides& st, std::int64_t slot, std::int64_t t0,
             std::int64_t head) {
  for (std::int64_t i = 0; i < m.rows(); ++i) {
    const std::int64_t base = slot * st.batch + (t0 + i) * st.token + head * st.head;
    for (std::int64_t c = 0; c < m.cols(); ++c) store(data, base + c, dtype, static_cast<double>(m(i, c)));
  }
}

// Dropout's factor of weight (i, j) of query head h of sequence b (s = its Sequence) as PyTorch's eager dropout
// applies it: 0 dropped, 1 / (1 - p) in C kept (core/dropout.hpp for the mask; under key padding drawn inside the
// valid interval, dropout_keep_padded, and 0 for a padded pair, whose weight is 0 already), 1 without dropout.
template <class C>
class DropFactor {
 public:
  explicit DropFactor(const Problem& p)
      : spec_(p.dropout), heads_(p.heads), threshold_(dropout_keep_threshold16(spec_.p)),
        kept_(static_cast<C>(1.0 / (1.0 - spec_.p))) {}
  [[nodiscard]] bool active() const { return spec_.active(); }
  [[nodiscard]] C operator()(const Sequence& s, std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) const {
    return dropout_keep_padded(spec_.seed, spec_.offset, static_cast<std::uint64_t>(b * heads_ + h), i, j, s.pad_front,
                               s.valid_q(), s.valid_k(), threshold_)
               ? kept_
               : C(0);
  }

 private:
  DropoutSpec spec_;
  std::int64_t heads_;
  std::uint32_t threshold_;
  C kept_;
};

struct Scratch {
  Workspace memory;
  std::int64_t used = 0;
  template <class C>
  MatMap<C> take(std::int64_t rows, std::int64_t cols) {
    C* p = memory.as<C>() + used;
    used += rows * cols;
    return MatMap<C>(p, rows, cols);
  }
};

template <class C>
void standard_forward_impl(const AttentionParams& p, const LaunchContext& ctx) {
  const bool row_sum_in_dtype = p.fault == kernels::Fault::row_sum_in_dtype;  // test-only
  const Problem& pr = p.problem;
  const DType dt = p.dtype;
  const ScoreLayout layout = score_layout(pr);
  Workspace scores(ctx.workspace, static_cast<std::size_t>(layout.total * size_bytes(dt)), "materialized S/P");
  const int workers = standard_workers(pr, Pass::fwd);
  std::vector<Scratch> scratch(static_cast<std::size_t>(workers));
  for (auto& s : scratch) {
    s.memory = Workspace(ctx.workspace, static_cast<std::size_t>(standard_scratch(pr, Pass::fwd)) * sizeof(C),
                         "standard scratch");
  }
  const C minus_inf = -std::numeric_limits<C>::infinity();
  const DropFactor<C> drop(pr);
  parallel_for(pr.batch * pr.heads, workers, [&](std::int64_t item, int worker) {
    const std::int64_t b = item / pr.heads, h = item % pr.heads, g = h / pr.group_size();
    const Sequence s = pr.sequence(b);
    const std::int64_t nq = s.seqlen_q, nk = s.seqlen_k;
    Scratch& w = scratch[static_cast<std::size_t>(worker)];
    w.used = 0;
    auto q = w.take<C>(nq, pr.head_dim);
    auto k = w.take<C>(nk, pr.head_dim);
    auto v = w.take<C>(nk, pr.dv());
    auto block = w.take<C>(kStandardRowBlock, nk);
    auto o_block = w.take<C>(kStandardRowBlock, pr.dv());
    gather(p.q, dt, p.q_strides, s.slot, s.q_offset, h, nq, pr.head_dim, q);
    gather(p.k, dt, p.k_strides, s.slot, s.k_offset, g, nk, pr.head_dim, k);
    gather(p.v, dt, p.v_strides, s.slot, s.k_offset, g, nk, pr.dv(), v);
    const std::int64_t base = layout.base[static_cast<std::size_t>(b)] + h * nq * nk;
    void* sp = scores.as<char>();
    // S = scale Q K^T, stored in the dtype with masked entries -inf
    for (std::int64_t i0 = 0; i0 < nq; i0 += kStandardRowBlock) {
      const std::int64_t rows = std::min(kStandardRowBlock, nq - i0);
      auto sb = block.topLeftCorner(rows, nk);
      sb.noalias() = static_cast<C>(pr.scale()) * (q.middleRows(i0, rows) * k.transpose());
      for (std::int64_t r = 0; r < rows; ++r) {
        const KeyRange keys = pr.key_range(s, i0 + r);
        for (std::int64_t j = 0; j < nk; ++j) {
          const bool kept = !keys.empty() && j >= keys.lo && j <= keys.hi;
          store(sp, base + (i0 + r) * nk + j, dt, kept ? static_cast<double>(sb(r, j)) : static_cast<double>(minus_inf));
        }
      }
    }
    // softmax in C on the stored S, P stored in place, LSE in float32
    for (std::int64_t i = 0; i < nq; ++i) {
      C row_max = minus_inf;
      for (std::int64_t j = 0; j < nk; ++j) row_max = std::max(row_max, static_cast<C>(load(sp, base + i * nk + j, dt)));
      const C shift = row_max == minus_inf ? C(0) : row_max;
      C row_sum = 0;
      for (std::int64_t j = 0; j < nk; ++j) {
        row_sum += std::exp(static_cast<C>(load(sp, base + i * nk + j, dt)) - shift);
        if (row_sum_in_dtype) row_sum = rounded<C>(static_cast<double>(row_sum), dt);  // injected fault
      }
      for (std::int64_t j = 0; j < nk; ++j) {
        const C e = std::exp(static_cast<C>(load(sp, base + i * nk + j, dt)) - shift);
        store(sp, base + i * nk + j, dt, row_sum == 0 ? 0.0 : static_cast<double>(e / row_sum));
      }
      const std::int64_t lse_index = (s.slot * pr.heads + h) * (pr.is_varlen() ? pr.total_q() : pr.seqlen_q) + s.q_offset + i;
      p.lse[lse_index] = row_sum == 0 ? -std::numeric_limits<float>::infinity()
                                      : static_cast<float>(static_cast<double>(shift) + std::log(static_cast<double>(row_sum)));
    }
    // O = P V; with dropout O = dropout(P) V, dropout(P) = P Z / (1 - p) rounded to the dtype as an eager framework
    // stores it
    for (std::int64_t i0 = 0; i0 < nq; i0 += kStandardRowBlock) {
      const std::int64_t rows = std::min(kStandardRowBlock, nq - i0);
      auto pb = block.topLeftCorner(rows, nk);
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t j = 0; j < nk; ++j) {
          pb(r, j) = static_cast<C>(load(sp, base + (i0 + r) * nk + j, dt));
          if (drop.active()) pb(r, j) = rounded<C>(static_cast<double>(pb(r, j) * drop(s, b, h, i0 + r, j)), dt);
        }
      }
      auto ob = o_block.topRows(rows);
      ob.noalias() = pb * v;
      scatter(ob, p.o, dt, p.o_strides, s.slot, s.q_offset + i0, h);
    }
  });
}

template <class C>
void standard_backward_impl(const AttentionParams& p, const LaunchContext& ctx) {
  const Problem& pr = p.problem;
  const DType dt = p.dtype;
  const ScoreLayout layout = score_layout(pr);
  const std::size_t n2_bytes = static_cast<std::size_t>(layout.total * size_bytes(dt));
  Workspace probabilities(ctx.workspace, n2_bytes, "materialized P");
  Workspace score_grads(ctx.workspace, n2_bytes, "materialized dP/dS");
  Workspace delta(ctx.workspace, static_cast<std::size_t>(elements(pr).rows) * 4, "rowsum(dO * O)");
  const int workers = standard_workers(pr, Pass::bwd);
  std::vector<Scratch> scratch(static_cast<std::size_t>(workers));
  for (auto& s : scratch) {
    s.memory = Workspace(ctx.workspace, static_cast<std::size_t>(standard_scratch(pr, Pass::bwd)) * sizeof(C),
                         "standard scratch");
  }
  const auto scale = static_cast<C>(pr.scale());
  const std::int64_t lse_stride = pr.is_varlen() ? pr.total_q() : pr.seqlen_q;
  const DropFactor<C> drop(pr);
  parallel_for(pr.batch * pr.heads_kv, workers, [&](std::int64_t item, int worker) {
    const std::int64_t b = item / pr.heads_kv, g = item % pr.heads_kv;
    const Sequence s = pr.sequence(b);
    const std::int64_t nq = s.seqlen_q, nk = s.seqlen_k, d = pr.head_dim, dv = pr.dv();
    Scratch& w = scratch[static_cast<std::size_t>(worker)];
    w.used = 0;
    auto q = w.take<C>(nq, d);
    auto d_out = w.take<C>(nq, dv);
    auto o = w.take<C>(nq, dv);
    auto k = w.take<C>(nk, d);
    auto v = w.take<C>(nk, dv);
    auto dk = w.take<C>(nk, d);
    auto dvacc = w.take<C>(nk, dv);
    auto pblock = w.take<C>(kStandardRowBlock, nk);
    auto sblock = w.take<C>(kStandardRowBlock, nk);
    auto dq_block = w.take<C>(kStandardRowBlock, d);
    gather(p.k, dt, p.k_strides, s.slot, s.k_offset, g, nk, d, k);
    gather(p.v, dt, p.v_strides, s.slot, s.k_offset, g, nk, dv, v);
    dk.setZero();
    dvacc.setZero();
    void* pp = probabilities.as<char>();
    void* gp = score_grads.as<char>();
    for (std::int64_t h = g * pr.group_size(); h < (g + 1) * pr.group_size(); ++h) {
      gather(p.q, dt, p.q_strides, s.slot, s.q_offset, h, nq, d, q);
      gather(p.d_out, dt, p.d_out_strides, s.slot, s.q_offset, h, nq, dv, d_out);
      gather(p.o, dt, p.o_strides, s.slot, s.q_offset, h, nq, dv, o);
      const std::int64_t base = layout.base[static_cast<std::size_t>(b)] + h * nq * nk;
      for (std::int64_t i0 = 0; i0 < nq; i0 += kStandardRowBlock) {
        const std::int64_t rows = std::min(kStandardRowBlock, nq - i0);
        auto pb = pblock.topLeftCorner(rows, nk);
        auto sb = sblock.topLeftCorner(rows, nk);
        // P = exp(S - LSE) from the recomputed S (rounded to the dtype), stored in the dtype
        sb.noalias() = scale * (q.middleRows(i0, rows) * k.transpose());
        for (std::int64_t r = 0; r < rows; ++r) {
          const KeyRange keys = pr.key_range(s, i0 + r);
          const float lse = p.lse[(s.slot * pr.heads + h) * lse_stride + s.q_offset + i0 + r];
          for (std::int64_t j = 0; j < nk; ++j) {
            const bool kept = !keys.empty() && j >= keys.lo && j <= keys.hi && std::isfinite(lse);
            const C sv = rounded<C>(static_cast<double>(sb(r, j)), dt);
            const C pv = kept ? rounded<C>(static_cast<double>(std::exp(sv - static_cast<C>(lse))), dt) : C(0);
            store(pp, base + (i0 + r) * nk + j, dt, static_cast<double>(pv));
            pb(r, j) = pv;
          }
        }
        // dP = dO V^T (stored), D = rowsum(dO * O), dS = P * (dP - D) (stored); with dropout dP -> dP Z / (1 - p)
        // (stored) and dV from dropout(P)
        sb.noalias() = d_out.middleRows(i0, rows) * v.transpose();
        for (std::int64_t r = 0; r < rows; ++r) {
          C row_delta = 0;
          for (std::int64_t c = 0; c < dv; ++c) row_delta += d_out(i0 + r, c) * o(i0 + r, c);
          delta.as<float>()[(s.slot * pr.heads + h) * lse_stride + s.q_offset + i0 + r] = static_cast<float>(row_delta);
          for (std::int64_t j = 0; j < nk; ++j) {
            C dp = rounded<C>(static_cast<double>(sb(r, j)), dt);
            store(gp, base + (i0 + r) * nk + j, dt, static_cast<double>(dp));
            if (drop.active()) dp = rounded<C>(static_cast<double>(dp * drop(s, b, h, i0 + r, j)), dt);
            const C ds = rounded<C>(static_cast<double>(pb(r, j) * (dp - row_delta)), dt);
            store(gp, base + (i0 + r) * nk + j, dt, static_cast<double>(ds));
            sb(r, j) = ds;
          }
        }
        if (drop.active()) {
          for (std::int64_t r = 0; r < rows; ++r) {
            for (std::int64_t j = 0; j < nk; ++j)
              pb(r, j) = rounded<C>(static_cast<double>(pb(r, j) * drop(s, b, h, i0 + r, j)), dt);
          }
        }
        dvacc.noalias() += pb.transpose() * d_out.middleRows(i0, rows);
        auto dqb = dq_block.topRows(rows);
        dqb.noalias() = scale * (sb * k);
        scatter(dqb, p.dq, dt, p.dq_strides, s.slot, s.q_offset + i0, h);
        dk.noalias() += scale * (sb.transpose() * q.middleRows(i0, rows));
      }
    }
    scatter(dk, p.dk, dt, p.dk_strides, s.slot, s.k_offset, g);
    scatter(dvacc, p.dv, dt, p.dv_strides, s.slot, s.k_offset, g);
  });
}

void standard_forward(const AttentionParams& p, const LaunchContext& ctx) {
  p.dtype == DType::fp64 ? standard_forward_impl<double>(p, ctx) : standard_forward_impl<float>(p, ctx);
}
void standard_backward(const AttentionParams& p, const LaunchContext& ctx) {
  p.dtype == DType::fp64 ? standard_backward_impl<double>(p, ctx) : standard_backward_impl<float>(p, ctx);
}

}  // namespace

kernels::Fault injected_fault() {
  const char* value = std::getenv("FLASHLAB_FAULT");
  try {
    return kernels::parse_fault(value ? value : "");
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("FLASHLAB_FAULT = ") + e.what());
  }
}

std::vector<kernels::Variant> cpu_variants() {
  std::vector<kernels::Variant> v;
  v.push_back({.id = "cpu-reference",
               .description = "Eigen reference in double on the run's inputs (blocked rows, O(N) workspace)",
               .device = kernels::Device::cpu,
               .materializes = false,
               .supported = "fp64 fp32 fp16 bf16; any head dim; causal, window, GQA/MQA, varlen, key padding, dropout",
               .supports = [](const Problem&, DType dtype, Pass) { return cpu_dtypes(dtype); },
               .workspace_model = reference_model,
               .bytes_model = {},
               .forward = reference_forward,
               .backward = reference_backward,
               .kernels = {},
               .options = {},
               .check_options = {},
               // fp64 throughout, outputs rounded to the dtype
               .data_path = [](const Problem&, DType dtype, const AttentionParams&) {
                 return numerics::reference_path(dtype);
               }});
  v.push_back({.id = "cpu-standard",
               .description = "eager attention on the CPU: materializes S, P (and dP, dS) of every head in the dtype",
               .device = kernels::Device::cpu,
               .materializes = true,
               .supported = "fp64 fp32 fp16 bf16 (fp32 arithmetic, fp64 for fp64); any head dim; causal, window, GQA/MQA, varlen, key padding, dropout",
               .supports = [](const Problem&, DType dtype, Pass) { return cpu_dtypes(dtype); },
               .workspace_model = standard_model,
               .bytes_model = {},
               .forward = standard_forward,
               .backward = standard_backward,
               .kernels = {},
               .options = {},
               .check_options = {},
               // S, P, dP, dS rounded to the dtype where standard rounds them; Eigen products and std::exp in fp32
               // (fp64 for fp64 runs), rounding to nearest
               .data_path = [](const Problem&, DType dtype, const AttentionParams&) {
                 const DType arith = dtype == DType::fp64 ? DType::fp64 : DType::fp32;
                 return numerics::materializing_path(dtype, arith, false, 2 * unit_roundoff(arith),
                                                     "S, P, dP, dS stored in " + std::string(name(dtype)) +
                                                         "; Eigen products and softmax in " + std::string(name(arith)));
               }});
  return v;
}

}  // namespace flashlab::harness
