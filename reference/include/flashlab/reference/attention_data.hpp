// Owning host tensors for one attention problem, with views ready for forward() and backward().
#pragma once

#include "flashlab/core/generator.hpp"
#include "flashlab/core/tensor.hpp"
#include "flashlab/reference/attention.hpp"

namespace flashlab::reference {

template <class Scalar>
struct AttentionData {
  Problem problem;
  Tensor<Scalar, 4> q, k, v, o, d_out, dq, dk, dv;
  Tensor<Scalar, 3> lse;

  explicit AttentionData(Problem p) : problem(std::move(p)) {
    problem.validate();
    const AttentionShapes s = attention_shapes(problem);
    q = Tensor<Scalar, 4>(s.q);
    k = Tensor<Scalar, 4>(s.k);
    v = Tensor<Scalar, 4>(s.v);
    o = Tensor<Scalar, 4>(s.o);
    d_out = Tensor<Scalar, 4>(s.o);
    dq = Tensor<Scalar, 4>(s.q);
    dk = Tensor<Scalar, 4>(s.k);
    dv = Tensor<Scalar, 4>(s.v);
    lse = Tensor<Scalar, 3>(s.lse);
  }

  // Fills Q, K, V and dO from the counter-based generator.
  void randomize(const InputSpec& spec) {
    fill(q.view(), TensorId::q, spec);
    fill(k.view(), TensorId::k, spec);
    fill(v.view(), TensorId::v, spec);
    fill(d_out.view(), TensorId::d_out, spec);
  }

  [[nodiscard]] ForwardArgs<Scalar> forward_args() { return {q.view(), k.view(), v.view(), o.view(), lse.view()}; }
  [[nodiscard]] BackwardArgs<Scalar> backward_args() {
    return {q.view(), k.view(), v.view(), o.view(), lse.view(), d_out.view(), dq.view(), dk.view(), dv.view()};
  }
  void run_forward(const Options& options = {}) { forward(problem, forward_args(), options); }
  void run_backward(const Options& options = {}) { backward(problem, backward_args(), options); }
};

}  // namespace flashlab::reference
