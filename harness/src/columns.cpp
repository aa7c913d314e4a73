// The results.csv columns, in file order (documented in harness/README.md). Append new columns at the end
// of a group only with a note in the README; reports/ reads columns by name.
#include "flashlab/harness/results.hpp"

namespace flashlab::harness {

const std::vector<std::string>& result_columns() {
  static const std::vector<std::string> columns = [] {
    std::vector<std::string> c = {
        // identity
        "key", "suite", "run_id", "row_index", "variant", "pass", "dtype", "distribution", "seed",
        "batch", "heads", "heads_kv", "seqlen_q", "seqlen_k", "head_dim", "head_dim_v", "causal",
        "window_left", "window_right", "softmax_scale", "varlen", "materializes", "device", "dropout", "dropout_seed",
        "key_padding", "valid_tokens", "unpadded",
        // outcome
        "status", "reason", "launch",
        // time (milliseconds; cold repetitions)
        "warmup", "time_samples", "time_median_ms", "time_p20_ms", "time_p80_ms", "time_min_ms", "time_spread",
        "flops", "tflops",
        // memory (bytes)
        "workspace_peak_bytes", "workspace_model_bytes", "workspace_reserved_bytes", "device_peak_bytes", "memgetinfo_delta_bytes", "io_bytes",
        // HBM traffic (bytes; profiled pass)
        "dram_read_bytes", "dram_write_bytes", "l2_read_bytes", "l2_write_bytes", "bytes_model_min",
        "bytes_model_variant",
        // verification
        "verified_heads", "verified_rows", "data_path", "bound_lambda", "verify_seconds"};
    for (const char* t : {"o", "lse", "dq", "dk", "dv"}) {
      for (const char* m : {"max_abs", "rel_fro", "rmse", "bias", "max_rel", "worst_index",
                            "baseline", "baseline_rel_fro", "baseline_rmse", "baseline_bias", "baseline_max_rel",
                            "upcast", "upcast_rmse", "floor", "rule_pass",
                            "bound", "bound_prob", "tightness", "tightness_prob", "prob_exceed", "bound_pass", "pass"}) {
        c.push_back(std::string("err_") + t + "_" + m);
      }
    }
    c.push_back("verify_pass");
    // output hashes (FNV-1a 64 of each output tensor's bytes after the last timed repetition)
    for (const char* t : {"o", "lse", "dq", "dk", "dv"}) c.push_back(std::string("hash_") + t);
    return c;
  }();
  return columns;
}

}  // namespace flashlab::harness
