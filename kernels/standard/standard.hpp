// The `standard` GPU variant (standard.cu): exact attention that materializes the N x N matrices.
#pragma once

#include "flashlab/kernels/attention.hpp"

namespace flashlab::kernels {

// The registry entry of the standard variant.
[[nodiscard]] Variant standard_variant();

}  // namespace flashlab::kernels
