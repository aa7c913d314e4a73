// The one registry of variants (STYLE.md 1): the CPU variants defined in the harness and the GPU variants of
// kernels/. `flashlab list`, the README table and the runner all read it.
#pragma once

#include <string_view>
#include <vector>

#include "flashlab/kernels/attention.hpp"

namespace flashlab::harness {

[[nodiscard]] const std::vector<kernels::Variant>& variants();
// nullptr when this build has no variant of that id.
[[nodiscard]] const kernels::Variant* find_variant(std::string_view id);

// The CPU variants:
//  cpu-reference  the Eigen reference in double on the run's (rounded) inputs; outputs stored in the dtype
//  cpu-standard   eager attention on the CPU: materializes S and P (and dP/dS) for every head in the run's dtype,
//                 fp32 arithmetic for fp32/fp16/bf16 (fp64 for fp64), rounding where the GPU `standard` rounds
[[nodiscard]] std::vector<kernels::Variant> cpu_variants();

}  // namespace flashlab::harness
