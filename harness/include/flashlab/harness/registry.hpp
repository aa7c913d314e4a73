// The one registry of variants (STYLE.md 1): the CPU variants defined in the harness and the GPU variants of
// kernels/. `flashlab list`, the README table and the runner all read it.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "flashlab/kernels/attention.hpp"

namespace flashlab::harness {

[[nodiscard]] const std::vector<kernels::Variant>& variants();
using kernels::kVariantIds;  // every id the project defines (kernels/attention.hpp)
// The ids of `names` (suite variant names, options allowed) that no build defines.
[[nodiscard]] std::vector<std::string> unknown_variant_ids(const std::vector<std::string>& names);
// "cpu-reference, cpu-standard, standard, flash2"
[[nodiscard]] std::string variant_id_list();
// A variant as a suite names it: `id` or `id[name=value,...]`.
struct VariantChoice {
  const kernels::Variant* variant = nullptr;  // null when `error` says why
  std::map<std::string, std::string> given;   // the options as written (a flag alone: "1")
  kernels::LaunchOptions options;             // as the variant's entry parsed them
  std::string error;
};
// Resolves a name against the registry; the variant's own entry parses and checks the options (Variant::options).
[[nodiscard]] VariantChoice resolve_variant(std::string_view name);
// nullptr when this build has no variant of that name (options are checked as resolve_variant does).
[[nodiscard]] const kernels::Variant* find_variant(std::string_view name);
// Applies the run options of a resolved name to launch params (the variant's defaults where none was given).
void apply_options(const VariantChoice& choice, kernels::AttentionParams& params);

// The CPU variants:
//  cpu-reference  the Eigen reference in double on the run's (rounded) inputs; outputs stored in the dtype
//  cpu-standard   eager attention on the CPU: materializes S and P (and dP/dS) for every head in the run's dtype,
//                 fp32 arithmetic for fp32/fp16/bf16 (fp64 for fp64), rounding where the GPU `standard` rounds
[[nodiscard]] std::vector<kernels::Variant> cpu_variants();

// Test-only fault injection into a variant's data path (kernels::Fault), so that the numerics checks can be shown to
// catch a real regression: the environment variable FLASHLAB_FAULT, empty or unset for none. "row_sum_in_dtype":
// the softmax row sum l accumulated in the run's dtype instead of fp32 (cpu-standard; flash2's forward at
// head_dim 64), as a kernel that kept l in registers of the input type would. make_params sets
// AttentionParams::fault from it. Throws std::invalid_argument naming the allowed values for any other value.
// run.json records it.
[[nodiscard]] kernels::Fault injected_fault();

}  // namespace flashlab::harness
