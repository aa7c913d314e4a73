// `flashlab run`: suite -> rows -> measurements -> results.csv + run.json (DESIGN.md §3, §4).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>

#include "flashlab/harness/suite.hpp"
#include "flashlab/kernels/attention.hpp"

namespace flashlab::harness {

// Exit codes of the flashlab program (documented in harness/README.md).
enum ExitCode : int {
  kExitOk = 0,          // every row ran: ok, oom or unsupported
  kExitRowsFailed = 1,  // the sweep finished, but some rows are `error` or failed verification
  kExitUsage = 2,       // bad command line or malformed suite: nothing ran
  kExitOutput = 3,      // results could not be written (or an existing results.csv does not match)
};

struct RunOptions {
  std::filesystem::path suite;
  std::filesystem::path out = "results";  // results root: <out>/<suite>/<run-id>/
  std::string run_id;                     // default: UTC time; with --resume: the latest run of the suite
  bool resume = false;
  std::string shard;   // "i/n"
  std::string filter;  // "key=value,..."
  bool dry_run = false;
  std::set<std::int64_t> save_tensors;       // row indices (parse_row_list); each must be a row of the suite
  std::optional<std::uint64_t> seed;         // overrides the suite's seed
  std::string command_line;
  bool progress = false;           // progress on stderr
  bool progress_terminal = false;  // stderr is a terminal: one line rewritten in place; else a line per row at most
                                   // every kProgressSeconds, and the first and the last row
};

// "3", "0,5,7", "10-12", "0,4-6": row indices; throws std::invalid_argument naming the bad part.
[[nodiscard]] std::set<std::int64_t> parse_row_list(const std::string& text);

// The row as `variant` runs it: as the suite gives it, or, for a key-padding row that the variant takes only unpadded
// (the fused kernels), its varlen form (Problem::unpadded) with token_source set, so that each token is drawn as its
// token of the padded tensors: both forms of the row see the same input values, and their fp64 reference values
// agree on the valid rows. Nullopt, with `support` saying why, when the variant runs neither.
[[nodiscard]] std::optional<RowSpec> row_as_run(const RowSpec& row, const kernels::Variant& variant,
                                                kernels::Support& support);

// Runs a suite; returns an ExitCode. Throws SuiteError (malformed suite) before anything runs.
int run_suite(const RunOptions& options);

// `flashlab list`: the registry and the device found; with `with_kernels`, each GPU variant's compiled kernels and their
// resources on that device (one line each; a kernel with local memory is marked).
int list_variants(bool with_kernels = false);

}  // namespace flashlab::harness
