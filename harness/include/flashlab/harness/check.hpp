// `flashlab check`: the numerics regression check of DESIGN.md §5 (documented in harness/README.md).
//
// `record` reads several runs of one suite that differ only in their seed and writes a baseline: per (row key, output
// tensor), the spread of the errors across seeds (log-mean and log-std of max_abs and rmse), the band a fresh seed
// stays in, and each seed's output hash. `check` compares one run with a baseline: an error above its band, a row that
// is `error` now, a tensor whose verification columns are missing, or (deterministic rows only) a changed hash for a
// recorded seed is a regression.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "flashlab/harness/results.hpp"

namespace flashlab::harness {

// Bad usage or malformed input (a missing file or column, runs that cannot make a baseline): one line naming the file
// and the problem; exit code 2.
class CheckError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The band (harness/README.md says why these choices). A metric is measured in units of the row's own deterministic
// bound (err_<t>_<metric> / err_<t>_bound, the bound being computed from the same data) where every seed has a finite
// positive bound, else as it is. With log-mean mu and log-std sigma over S seeds its upper limit is
// exp(mu + max(kBandSigmas * sigma * sqrt(1 + 1/S), log(1 + kBandMargin))), for max_abs at least kMaxAbsSlack times
// the largest value seen.
inline constexpr double kBandSigmas = 6.0;
inline constexpr double kBandMargin = 0.10;
inline constexpr double kMaxAbsSlack = 2.0;  // one binade: max_abs of a rounded output moves in powers of two
inline constexpr const char* kBandMetrics[] = {"max_abs", "rmse"};

struct Band {
  int seeds = 0;                   // values
  int zeros = 0;                   // values exactly 0 (left out of the log statistics)
  std::optional<double> log_mean;  // over the positive values; none when every value is 0
  double log_std = 0;              // sample standard deviation (S - 1), 0 for a single positive value
  double min = 0, max = 0;
  double hi = 0;  // band_hi, in the band's units
  // exp(log_mean): the typical value, 0 when every value was 0.
  [[nodiscard]] double stored() const;
};
// The band of one metric over the seeds' values. `least_factor`: band_hi is at least this times the largest value
// (kMaxAbsSlack for max_abs, 1 for rmse). `floor` (the row's err_<t>_floor) is the band of a metric that is exactly 0
// in every seed.
[[nodiscard]] Band error_band(const std::vector<double>& values, double floor, double least_factor = 1.0);

// The columns that name a row's problem (copied into a baseline, shown by compare).
[[nodiscard]] const std::vector<std::string>& identity_columns();
// A row's value in `column`, empty when the row has no such column.
[[nodiscard]] const std::string& field(const ResultRow& row, const std::string& column);
// The number a whole field holds; none for an empty field or one that is not a number.
[[nodiscard]] std::optional<double> parse_number(const std::string& text);
// The parts of `text` between separators: "a,,b" -> {"a", "", "b"}, "" -> {""}.
[[nodiscard]] std::vector<std::string> split(const std::string& text, char separator);

// One run directory: its results.csv and what run.json says of the machine.
struct RunTable {
  std::filesystem::path dir;
  std::filesystem::path csv;
  std::string suite;
  std::string seed;         // the `seed` column (one value in a run)
  std::string device_name;  // run.json device.name; empty without a GPU
  int threads = 0;          // run.json host.threads (CPU workers); 0 when unknown
  std::vector<ResultRow> rows;
  // Where a row's outputs were made: "cpu threads=T" or "cuda NAME". Hashes are compared only on the same platform
  // (the CPU reference splits its backward sums by the worker count; GPUs differ in SM counts and instructions).
  [[nodiscard]] std::string platform(const ResultRow& row) const;
};
// Throws CheckError naming the directory or file: no results.csv, malformed CSV, a required column missing, no rows,
// rows of several suites or seeds.
[[nodiscard]] RunTable load_run(const std::filesystem::path& dir);

// One line of a baseline file: one (row key, output tensor).
struct BaselineEntry {
  std::string suite, key, platform, tensor;
  ResultRow identity;  // variant, pass, dtype, distribution and the problem columns, for display
  int seeds = 0;
  double floor = 0;                      // the largest err_<t>_floor of the seeds
  bool scaled = false;                   // the bands are of metric / err_<t>_bound ("bound"), else raw
  std::optional<double> bound_log_mean;  // of err_<t>_bound over the seeds (scaled lines)
  double bound_log_std = 0;
  std::map<std::string, Band> bands;  // by metric (kBandMetrics)
  std::optional<bool> bitwise;        // recorded with --repeat: a repeated seed gave the same bits
  std::vector<std::pair<std::string, std::string>> hashes;  // (seed, hash) in the order recorded; hash may be empty
  [[nodiscard]] const std::string* hash_of(const std::string& seed) const;
};

struct RecordSummary {
  std::size_t rows = 0;                         // rows with a line
  std::size_t not_ok = 0;                       // rows left out: status != ok in some run
  std::size_t not_everywhere = 0;               // rows left out: not in every run
  std::size_t bitwise = 0, bitwise_tested = 0;  // (key, tensor) pairs with bitwise = 1, and with a repeated seed
  std::vector<std::string> seeds;               // distinct, in the order given
  std::size_t repeats = 0;                      // runs of a seed given before
};
// The baseline of `runs` (at least 3 distinct seeds; a seed twice only with `repeat`). Throws CheckError.
[[nodiscard]] std::vector<BaselineEntry> make_baseline(const std::vector<RunTable>& runs, bool repeat,
                                                       RecordSummary* summary = nullptr);
// The baseline columns, in file order (harness/README.md).
[[nodiscard]] const std::vector<std::string>& baseline_columns();
// Writes atomically (a temporary file renamed); throws std::runtime_error when it cannot.
void write_baseline(const std::filesystem::path& file, const std::vector<BaselineEntry>& entries);
// Throws CheckError "FILE: problem" (or "FILE:LINE: ...") on a missing file or column, a malformed number, a
// repeated (key, tensor), lines of several suites, no lines.
[[nodiscard]] std::vector<BaselineEntry> read_baseline(const std::filesystem::path& file);

// One regressed (row, tensor) and why.
struct Regression {
  std::int64_t row_index = -1;
  std::string key;                            // the full row key
  std::string short_key;                      // variant pass dtype dist N d flags
  std::string tensor;                         // "-" for a row-level regression (status)
  std::string metric;                         // max_abs, rmse, hash, verify (columns missing), status
  std::string stored, value, ratio, band_hi;  // as printed; empty where they do not apply
};

struct CheckResult {
  std::string run_seed;
  bool seed_recorded = false;             // the run's seed is one of the baseline's
  std::size_t rows_checked = 0;           // run rows whose key is in the baseline
  std::size_t pairs_checked = 0;          // (row, tensor) pairs compared
  std::size_t hashes_compared = 0;        // bitwise (row, tensor) pairs whose hash was compared
  std::size_t hashes_other_platform = 0;  // bitwise pairs not compared: recorded on another platform
  std::vector<std::string> bound_moved;   // scaled pairs whose bound left the spread recorded ("row_index short_key t")
  std::vector<Regression> regressions;    // by row, then tensor
  std::vector<std::string> not_in_baseline;  // run rows without a baseline line ("row_index short_key")
  std::vector<std::string> not_in_run;       // baseline rows the run lacks (short keys)
  std::vector<std::string> not_run;  // baseline rows that are oom/unsupported now ("row_index short_key: status")
  [[nodiscard]] bool passed() const { return regressions.empty(); }
};
// Compares a run with a baseline. Throws CheckError on a run of another suite or a malformed value in the run.
[[nodiscard]] CheckResult check_against(const RunTable& run, const std::vector<BaselineEntry>& baseline);

// "variant pass dtype dist N=.. d=.. flags" of a results row or a baseline line's identity.
[[nodiscard]] std::string short_key(const ResultRow& row);

// The subcommands: print a summary (record) or the regression table (check) and return an ExitCode (runner.hpp):
// 0 no regression, 1 regressions; throw CheckError on bad usage.
int record_baseline(const std::vector<std::filesystem::path>& runs, const std::filesystem::path& out, bool repeat);
int check_run(const std::filesystem::path& run, const std::filesystem::path& baseline,
              const std::filesystem::path& report);

}  // namespace flashlab::harness
