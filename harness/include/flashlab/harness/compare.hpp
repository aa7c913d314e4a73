// `flashlab compare A B`: two runs row by row on their keys (documented in harness/README.md).
//
// Per row present in both: the time ratio B / A of the medians with a verdict that accounts for the noise the runs
// recorded (the p20-p80 range of each row's samples), and the error ratio B / A of every output tensor. A summary
// counts the verdicts; the table goes out as markdown and CSV; `--fail-on slower` makes a slower row past a
// threshold exit 1.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "flashlab/harness/check.hpp"

namespace flashlab::harness {

// faster / slower: the p20-p80 ranges of the two rows do not overlap (B's lies below / above A's) and the medians
// differ by more than the `same` tolerance; same: the medians differ by at most that tolerance; unclear: neither
// (the ranges overlap with medians further apart, or a range is missing).
enum class Verdict { faster, slower, same, unclear };
[[nodiscard]] const char* name(Verdict verdict);

struct RowComparison {
  std::string key;
  ResultRow identity;  // A's row: variant, pass, dtype and the problem columns, for display
  std::string status_a, status_b;
  // times (median, p20, p80; ms) where the row is ok in both runs and has them; the ratio B / A of the medians
  std::optional<double> time_a, time_b, ratio;
  std::optional<Verdict> verdict;
  // err_<t>_max_abs B / A per output tensor measured in both (0 / 0 = 1; x / 0 = inf)
  std::map<std::string, double> error_ratio;
};

struct Comparison {
  std::vector<RowComparison> rows;       // keys in both runs, in A's row order
  std::vector<std::string> only_a, only_b;  // keys in one run only
  std::map<Verdict, int> counts;
  std::optional<double> geomean_ratio;  // over the rows with a ratio
};

// Rows are matched on their `key` column. `same`: the relative difference of the medians below which a row is the
// same (default 2%).
[[nodiscard]] Comparison compare_runs(const RunTable& a, const RunTable& b, double same = 0.02);

struct CompareOptions {
  std::filesystem::path a, b;
  std::filesystem::path markdown, csv;  // also write the table here (empty: not written)
  bool fail_on_slower = false;
  double threshold = 1.05;  // with fail_on_slower: exit 1 when a `slower` row's ratio exceeds this
  double same = 0.02;
};

// Prints the summary and the table (markdown) to stdout, writes the files asked for. Returns 0, or 1 with
// fail_on_slower when a row is slower past the threshold. Throws CheckError on unreadable runs (exit 2).
int compare_command(const CompareOptions& options);

}  // namespace flashlab::harness
