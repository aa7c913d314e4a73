// Test support of the harness tests: a suite row made by hand.
#pragma once

#include <string>

#include "flashlab/core/dtype.hpp"
#include "flashlab/core/flops.hpp"
#include "flashlab/core/problem.hpp"
#include "flashlab/harness/suite.hpp"

namespace flashlab::test {

// The row of `variant` running `p` in `dtype` for `pass` (normal inputs, index 0).
inline harness::RowSpec row_of(const std::string& variant, Pass pass, DType dtype, const Problem& p) {
  harness::RowSpec row;
  row.variant = variant;
  row.pass = pass;
  row.dtype = dtype;
  row.problem = p;
  return row;
}

}  // namespace flashlab::test
