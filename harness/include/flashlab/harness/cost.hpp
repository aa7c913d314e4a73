// Estimated cost of a row before it runs: what `flashlab run --dry-run` prints beside each row, and what a suite's
// `max_row_seconds` compares with (a row over it is `skipped` with the estimate instead of running for days).
#pragma once

#include <string>

#include "flashlab/harness/suite.hpp"
#include "flashlab/kernels/attention.hpp"

namespace flashlab::harness {

// The rates the estimate divides by. cpu: this host's fp64 matrix-product rate on the CPU workers, measured (the
// CPU variants and the verification run Eigen products; cpu-standard's fp32 runs faster, so its estimate is high).
// gpu: an assumed 50 TFLOP/s for GPU variants (flash2 runs at 100-400 on an H200, standard lower on long rows).
struct CostModel {
  double cpu_flops_per_second = 0;
  double gpu_flops_per_second = 50e12;
  // Times a few fp64 products on every CPU worker (about 0.1 s).
  [[nodiscard]] static CostModel measure();
};

struct RowCost {
  double run_seconds = 0;     // the variant: one verification run, the warm-up and the timed repetitions
  double verify_seconds = 0;  // the fp64 reference and the bounds at the chosen entries (check_flops)
  [[nodiscard]] double total() const { return run_seconds + verify_seconds; }
  [[nodiscard]] std::string describe() const;  // "~3.2 s (run 1.1 s, verify 2.1 s)"
};

[[nodiscard]] RowCost estimate_cost(const RowSpec& row, const SuiteSettings& settings, const kernels::Variant& variant,
                                    const CostModel& model);

}  // namespace flashlab::harness
