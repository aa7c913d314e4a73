#include "flashlab/core/bytes.hpp"

#include <cmath>

namespace flashlab {
namespace {

constexpr double kFloatBytes = 4.0;

struct Sizes {
  double q, k, v, o, rows;  // elements of Q, K, V, O over the batch; query rows x heads (LSE entries)
};

Sizes sizes(const Problem& p) {
  const auto tq = static_cast<double>(p.is_varlen() ? p.total_q() : p.batch * p.seqlen_q);
  const auto tk = static_cast<double>(p.is_varlen() ? p.total_k() : p.batch * p.seqlen_k);
  const auto h = static_cast<double>(p.heads), hkv = static_cast<double>(p.heads_kv);
  const auto d = static_cast<double>(p.head_dim), dv = static_cast<double>(p.dv());
  return {tq * h * d, tk * hkv * d, tk * hkv * dv, tq * h * dv, tq * h};
}

// Sum over sequences of N_q * N_k, per query head, times the heads.
double score_elements(const Problem& p) {
  double n = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const Sequence s = p.sequence(b);
    n += static_cast<double>(s.seqlen_q) * static_cast<double>(s.seqlen_k);
  }
  return n * static_cast<double>(p.heads);
}

double forward_minimum(const Problem& p, double s) {
  const Sizes z = sizes(p);
  return s * (z.q + z.k + z.v + z.o) + kFloatBytes * z.rows;
}

double backward_minimum(const Problem& p, double s) {
  const Sizes z = sizes(p);
  return s * (2 * (z.q + z.k + z.v) + 2 * z.o) + kFloatBytes * z.rows;
}

double by_pass(Pass pass, double fwd, double bwd) {
  switch (pass) {
    case Pass::fwd: return fwd;
    case Pass::bwd: return bwd;
    case Pass::fwdbwd: return fwd + bwd;
  }
  return fwd;
}

}  // namespace

double minimum_bytes(const Problem& p, DType dtype, Pass pass) {
  const double s = size_bytes(dtype);
  return by_pass(pass, forward_minimum(p, s), backward_minimum(p, s));
}

double standard_bytes(const Problem& p, DType dtype, Pass pass) {
  const double s = size_bytes(dtype);
  const double n2 = score_elements(p);
  const double rows = sizes(p).rows;
  return by_pass(pass, forward_minimum(p, s) + 4 * s * n2,
                 backward_minimum(p, s) + 10 * s * n2 + 2 * kFloatBytes * rows);
}

double flash_bytes(const Problem& p, DType dtype, Pass pass, double block_rows) {
  const double s = size_bytes(dtype);
  const Sizes z = sizes(p);
  const double dense = score_elements(p);
  const double kept = dense > 0 ? convention_pairs(p) * static_cast<double>(p.heads) / dense : 0.0;
  // passes over the streamed operand: one per block of the other side, scaled by the kept fraction
  double q_blocks = 0, k_blocks = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const Sequence seq = p.sequence(b);
    const double weight = p.batch > 0 ? 1.0 / static_cast<double>(p.batch) : 0.0;
    q_blocks += weight * std::ceil(static_cast<double>(seq.seqlen_q) / block_rows);
    k_blocks += weight * std::ceil(static_cast<double>(seq.seqlen_k) / block_rows);
  }
  const double forward = s * (z.q + kept * q_blocks * (z.k + z.v) + z.o) + kFloatBytes * z.rows;
  // preprocessing reads O and dO and writes D; each key block reads Q, dO, LSE and D and reads and writes the
  // fp32 dQ accumulator; K, V are read and dK, dV written once; the final conversion reads fp32 dQ, writes dQ.
  const double preprocess = 2 * s * z.o + kFloatBytes * z.rows;
  const double per_key_block = s * (z.q + z.o) + 2 * kFloatBytes * z.rows + 2 * kFloatBytes * z.q;
  const double backward = preprocess + kept * k_blocks * per_key_block + 2 * s * (z.k + z.v) +
                          kFloatBytes * z.q + s * z.q;
  return by_pass(pass, forward, backward);
}

}  // namespace flashlab
