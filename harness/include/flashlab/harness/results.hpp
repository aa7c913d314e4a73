// results.csv: one row per (problem, dtype, variant, pass), stable documented columns (harness/README.md),
// appended and flushed as each row ends, so a crash loses at most the row in flight.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace flashlab::harness {

// The columns, in file order. Values are written as text; an empty field means "not measured".
[[nodiscard]] const std::vector<std::string>& result_columns();

// One result row: column name -> value. Columns not set are written empty.
using ResultRow = std::map<std::string, std::string>;

// Appends rows to results.csv. Opening an existing file (resume) checks its header equals result_columns()
// and truncates a last line left incomplete by a crash; a new file gets the header. A file whose header
// differs is never changed: the constructor throws std::runtime_error instead. While a writer is open it holds
// an exclusive lock on the file, so a second writer (another process on the same file) fails at once.
class ResultsWriter {
 public:
  explicit ResultsWriter(const std::filesystem::path& path);
  ~ResultsWriter();
  ResultsWriter(const ResultsWriter&) = delete;
  ResultsWriter& operator=(const ResultsWriter&) = delete;
  ResultsWriter(ResultsWriter&& other) noexcept;
  ResultsWriter& operator=(ResultsWriter&& other) noexcept;

  // Writes one line and flushes it to disk (fsync). Throws std::invalid_argument for a column name that is
  // not in result_columns(), std::runtime_error when the write fails.
  void append(const ResultRow& row);
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;  // POSIX descriptor opened with O_APPEND
};

// Reads a results.csv written by ResultsWriter (RFC 4180 quoting). Throws std::runtime_error naming the file
// and line on malformed input; ignores an incomplete last line.
[[nodiscard]] std::vector<ResultRow> read_results(const std::filesystem::path& path);

// Keys (column "key") of the rows already in a results file; empty when the file does not exist.
[[nodiscard]] std::set<std::string> completed_keys(const std::filesystem::path& path);

// CSV field quoting (RFC 4180): quotes fields holding a comma, quote, CR or LF.
[[nodiscard]] std::string csv_escape(const std::string& field);

}  // namespace flashlab::harness
