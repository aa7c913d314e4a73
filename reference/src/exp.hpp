// exp over a block of scores, vectorized, with exact zeros below the normal range (shared by the blocked reference
// and check_group).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <limits>

namespace flashlab::reference {

// Replaces every entry x of `out` (a plain array or an array view of a block with a contiguous inner dimension) by
// exp(x), the same bits wherever the data lies.
//
// Eigen's vectorized exp is accurate to about an ulp over the normal range, but for every argument below about
// ln(min normal) (-708.4 in double, -87.3 in float) -- a masked score's -inf among them -- it returns a subnormal
// (5.6e-309 in double) instead of the tiny or zero value. Every result below the smallest normal number becomes 0:
// masked keys get the exact zero weight the mask asks for, a weight that truly is that small errs by less than the
// smallest normal number (far below any output's rounding), and no subnormal operand reaches the products that
// follow, where each costs a microcode assist (a causal block ran 10x slower).
template <class Derived>
void exp_in_place(const Eigen::ArrayBase<Derived>& out) {
  using Scalar = typename Derived::Scalar;
  using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
  constexpr int kLanes = Eigen::internal::packet_traits<Scalar>::size;
  auto& a = const_cast<Derived&>(out.derived());  // Eigen's idiom for writable temporary views
  eigen_assert(a.innerStride() == 1);
  const Scalar tiny = std::numeric_limits<Scalar>::min();
  // Every entry through the same vectorized exp, packets from the start of each inner run and the tail in a padded
  // packet: Eigen's own a.exp() peels to the first aligned packet and takes its scalar exp there, so which entries got
  // which exp (they differ in the last bit) followed the buffer's address, and results did not repeat bit for bit
  // across runs (malloc'd scratch) or callers (their tensors' alignment).
  for (Eigen::Index outer = 0; outer < a.outerSize(); ++outer) {
    Scalar* x = a.data() + outer * a.outerStride();
    const Eigen::Index n = a.innerSize();
    Eigen::Index j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      Eigen::internal::pstoreu(x + j, Eigen::internal::pexp(Eigen::internal::ploadu<Packet>(x + j)));
    }
    if (j < n) {
      Scalar tail[kLanes] = {};
      std::copy(x + j, x + n, tail);
      Eigen::internal::pstoreu(tail, Eigen::internal::pexp(Eigen::internal::ploadu<Packet>(tail)));
      std::copy(tail, tail + (n - j), x + j);
    }
    for (Eigen::Index i = 0; i < n; ++i) x[i] = x[i] < tiny ? Scalar(0) : x[i];
  }
}

}  // namespace flashlab::reference
