// Exact attention on the CPU (Eigen): forward (O, LSE) and backward (dQ, dK, dV), templated on the scalar.
// Double is flashlab's ground truth; float builds too.
//
// Forward, per query row i of head h (kv head g = h / (H / H_kv)) over the keys K the mask keeps:
//   S = scale * q_i K^T,  m = max S,  l = sum exp(S - m),  O_i = exp(S - m) V / l,  LSE_i = m + log l.
// Backward, with P = exp(S - LSE_i) recomputed from the saved LSE and D_i = rowsum(dO_i * O_i):
//   dV_g += P^T dO_i,  dP = dO_i V^T,  dS = P * (dP - D_i),  dQ_i = scale dS K,  dK_g += scale dS^T q_i.
// A fully masked row (no key kept) gives O = 0, LSE = -inf and zero gradients.
// Dropout (problem.dropout, core/dropout.hpp): O_i = (Z_i o P_i / (1 - p)) V with l and LSE from the undropped P;
// backward dV_g += (Z o P / (1 - p))^T dO_i, dP = Z o (dO_i V^T) / (1 - p), the rest as above; Z is
// dropout_keep at (seed, offset, b H + h, i, j), i and j counted from the start of the sequence (under key padding
// from its first valid token, dropout_keep_padded: the padded batch drops the pairs its unpadded varlen form drops).
//
// Memory is bounded: query rows are processed in blocks of `row_block` rows as matrix products; only a
// row_block x N_k score block (and in backward, dP) exists per worker, never N x N. See workspace_bytes.
// Work is spread over all cores: forward over (sequence, head, row block); backward over (sequence, kv head)
// units and, when there are fewer units than workers, over slices of each unit's row blocks whose dK, dV
// partial sums are added in slice order (deterministic for a given worker count).
#pragma once

#include <cstdint>

#include "flashlab/core/allocator.hpp"
#include "flashlab/core/flops.hpp"
#include "flashlab/core/problem.hpp"
#include "flashlab/core/tensor.hpp"

namespace flashlab::reference {

struct Options {
  std::int64_t row_block = 128;      // query rows per block (>= 1)
  int workers = 0;                   // 0: default_worker_count()
  Allocator* workspace = nullptr;    // where the workspace comes from; null: the heap, untracked
};

template <class Scalar>
struct ForwardArgs {
  TensorView<const Scalar, 4> q, k, v;
  TensorView<Scalar, 4> o;
  TensorView<Scalar, 3> lse;
};

template <class Scalar>
struct BackwardArgs {
  TensorView<const Scalar, 4> q, k, v, o;
  TensorView<const Scalar, 3> lse;
  TensorView<const Scalar, 4> d_out;
  TensorView<Scalar, 4> dq, dk, dv;
};

// Shapes must be those of attention_shapes(problem) and every tensor's last dimension contiguous;
// otherwise InvalidProblem names the tensor. The problem is validated first.
template <class Scalar>
void forward(const Problem& problem, const ForwardArgs<Scalar>& args, const Options& options = {});
template <class Scalar>
void backward(const Problem& problem, const BackwardArgs<Scalar>& args, const Options& options = {});

// Bytes the reference takes from Options::workspace beyond its inputs and outputs, exactly (Eigen's GEMM
// packing buffers, a few MiB bounded by the cache sizes, and O(Br) row vectors are not counted):
//   forward:  s * W * Br * N_k
//   backward: s * [W * (2 Br N_k + Br + N_k (d + d_v)) + P * N_k (d + d_v)]
// with s = sizeof(Scalar), W the workers used, Br the row block, N_k the longest key sequence and P the
// partial dK/dV buffers (0 when there are at least W (sequence, kv head) units, else about W).
[[nodiscard]] std::int64_t workspace_bytes(const Problem& problem, Pass pass, std::int64_t scalar_bytes,
                                           const Options& options = {});

}  // namespace flashlab::reference
