// exp over a block of scores, vectorized, with exact zeros below the normal range (shared by the blocked reference
// and check_group).
#pragma once

#include <Eigen/Core>

#include <limits>

namespace flashlab::reference {

// Replaces every entry x of `out` (a plain array or an array view of a block, contiguous columns) by exp(x).
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
  auto& a = const_cast<Eigen::ArrayBase<Derived>&>(out);  // Eigen's idiom for writable temporary views
  a = a.exp();
  a = (a < std::numeric_limits<Scalar>::min()).select(Scalar(0), a);
}

}  // namespace flashlab::reference
