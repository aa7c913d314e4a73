// results.csv: RFC 4180 fields, one record per line ending in '\n' (a reader also accepts "\r\n"), written with
// POSIX write + fsync so that a row is on disk when append() returns. A crash can leave at most one record
// without its final '\n'; the writer truncates it on reopening and the reader ignores it.
#include "flashlab/harness/results.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string_view>
#include <utility>

namespace flashlab::harness {
namespace {

struct CsvRecord {
  std::vector<std::string> fields;
  std::size_t line = 0;  // 1-based line on which the record starts
};

struct CsvScan {
  std::vector<CsvRecord> records;  // the complete records, in file order
  std::size_t complete_bytes = 0;  // bytes up to and including the last complete record's line end
};

// Splits `text` into records. A record is complete when its line end (outside quotes) is present; the bytes
// after the last complete record are an incomplete record left by a crash and are not returned.
// Throws std::runtime_error "FILE:LINE: ..." on a quote where RFC 4180 allows none.
CsvScan scan_csv(std::string_view text, const std::string& file) {
  CsvScan scan;
  std::size_t pos = 0;
  std::size_t line = 1;
  const std::size_t n = text.size();
  auto malformed = [&](std::string_view problem) {
    return std::runtime_error(fmt::format("{}:{}: malformed CSV: {}", file, line, problem));
  };
  while (pos < n) {
    CsvRecord record;
    record.line = line;
    std::string field;
    bool complete = false;
    while (!complete) {
      if (pos < n && text[pos] == '"') {  // quoted field
        ++pos;
        bool closed = false;
        while (pos < n && !closed) {
          const char c = text[pos];
          if (c != '"') {
            if (c == '\n') ++line;
            field += c;
            ++pos;
          } else if (pos + 1 < n && text[pos + 1] == '"') {
            field += '"';
            pos += 2;
          } else {
            ++pos;
            closed = true;
          }
        }
        if (!closed || pos == n) return scan;  // cut inside the field or before its line end
        const char next = text[pos];
        if (next != ',' && next != '\n' && !(next == '\r' && pos + 1 < n && text[pos + 1] == '\n')) {
          if (next == '\r' && pos + 1 == n) return scan;
          throw malformed("a closing quote must be followed by a comma or the line end");
        }
      } else {  // unquoted field
        while (pos < n && text[pos] != ',' && text[pos] != '\n' &&
               !(text[pos] == '\r' && pos + 1 < n && text[pos + 1] == '\n')) {
          if (text[pos] == '"') throw malformed("a quote inside an unquoted field");
          field += text[pos];
          ++pos;
        }
        if (pos == n) return scan;
        if (text[pos] == '\r' && pos + 1 == n) return scan;
      }
      record.fields.push_back(std::move(field));
      field.clear();
      if (text[pos] == ',') {
        ++pos;
      } else {
        pos += text[pos] == '\r' ? 2 : 1;
        ++line;
        complete = true;
      }
    }
    scan.records.push_back(std::move(record));
    scan.complete_bytes = pos;
  }
  return scan;
}

std::string csv_line(const std::vector<std::string>& fields) {
  std::string line;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) line += ',';
    line += csv_escape(fields[i]);
  }
  line += '\n';
  return line;
}

std::string errno_text() {
  return std::strerror(errno);
}

std::string read_file(int fd, const std::filesystem::path& path) {
  std::string content;
  char buffer[1 << 16];
  for (off_t offset = 0;;) {
    const ssize_t got = ::pread(fd, buffer, sizeof buffer, offset);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(fmt::format("{}: cannot read: {}", path.string(), errno_text()));
    }
    if (got == 0) return content;
    content.append(buffer, static_cast<std::size_t>(got));
    offset += got;
  }
}

void write_all(int fd, std::string_view data, const std::filesystem::path& path) {
  while (!data.empty()) {
    const ssize_t put = ::write(fd, data.data(), data.size());
    if (put < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(fmt::format("{}: cannot write: {}", path.string(), errno_text()));
    }
    data.remove_prefix(static_cast<std::size_t>(put));
  }
  if (::fsync(fd) != 0) throw std::runtime_error(fmt::format("{}: fsync failed: {}", path.string(), errno_text()));
}

// Makes a newly created file's directory entry durable too.
void sync_directory(const std::filesystem::path& file) {
  const std::filesystem::path dir = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

[[noreturn]] void header_differs(const std::filesystem::path& path, const std::string& detail) {
  throw std::runtime_error(
      fmt::format("{}: the header's columns differ from this build's results columns ({}); the file is left unchanged: "
                  "write to a new file",
                  path.string(), detail));
}

void check_header(const std::filesystem::path& path, const std::vector<std::string>& found) {
  const std::vector<std::string>& expected = result_columns();
  for (std::size_t i = 0; i < found.size() && i < expected.size(); ++i) {
    if (found[i] != expected[i]) {
      header_differs(path, fmt::format("column {} is '{}', expected '{}'", i + 1, found[i], expected[i]));
    }
  }
  if (found.size() != expected.size()) {
    header_differs(path, fmt::format("{} columns, expected {}", found.size(), expected.size()));
  }
}

struct Table {
  std::vector<std::string> header;
  std::vector<ResultRow> rows;
};

Table read_table(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("{}: cannot open for reading", path.string()));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw std::runtime_error(fmt::format("{}: cannot read", path.string()));
  CsvScan scan = scan_csv(text, path.string());
  Table table;
  if (scan.records.empty()) return table;
  table.header = std::move(scan.records.front().fields);
  for (std::size_t i = 0; i < table.header.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (table.header[i] == table.header[j]) {
        throw std::runtime_error(
            fmt::format("{}:1: column '{}' appears twice in the header", path.string(), table.header[i]));
      }
    }
  }
  for (std::size_t r = 1; r < scan.records.size(); ++r) {
    const CsvRecord& record = scan.records[r];
    if (record.fields.size() != table.header.size()) {
      throw std::runtime_error(fmt::format("{}:{}: {} fields, the header has {}", path.string(), record.line,
                                           record.fields.size(), table.header.size()));
    }
    ResultRow row;
    for (std::size_t i = 0; i < record.fields.size(); ++i) row.emplace(table.header[i], record.fields[i]);
    table.rows.push_back(std::move(row));
  }
  return table;
}

}  // namespace

std::string csv_escape(const std::string& field) {
  if (field.find_first_of(",\"\r\n") == std::string::npos) return field;
  std::string quoted = "\"";
  for (char c : field) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  quoted += '"';
  return quoted;
}

ResultsWriter::ResultsWriter(const std::filesystem::path& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error(fmt::format("{}: cannot open for appending: {}", path.string(), errno_text()));
  try {
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
      throw std::runtime_error(fmt::format("{}: another writer has the file open", path.string()));
    }
    const std::string content = read_file(fd_, path_);
    const CsvScan scan = scan_csv(content, path_.string());
    const std::string header = csv_line(result_columns());
    if (scan.records.empty()) {
      // A new file, or a header cut short by a crash: anything else is some other file.
      if (header.compare(0, content.size(), content) != 0) {
        header_differs(path_, "its first line is not a results header");
      }
      if (!content.empty() && ::ftruncate(fd_, 0) != 0) {
        throw std::runtime_error(fmt::format("{}: cannot truncate: {}", path.string(), errno_text()));
      }
      write_all(fd_, header, path_);
      if (content.empty()) sync_directory(path_);
      return;
    }
    check_header(path_, scan.records.front().fields);
    if (scan.complete_bytes < content.size()) {  // the row in flight when a previous run stopped
      if (::ftruncate(fd_, static_cast<off_t>(scan.complete_bytes)) != 0 || ::fsync(fd_) != 0) {
        throw std::runtime_error(
            fmt::format("{}: cannot truncate the incomplete last line: {}", path.string(), errno_text()));
      }
    }
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

ResultsWriter::~ResultsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

ResultsWriter::ResultsWriter(ResultsWriter&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

ResultsWriter& ResultsWriter::operator=(ResultsWriter&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void ResultsWriter::append(const ResultRow& row) {
  if (fd_ < 0) throw std::runtime_error(fmt::format("{}: the writer was moved from", path_.string()));
  const std::vector<std::string>& columns = result_columns();
  std::vector<std::string> fields(columns.size());
  std::size_t used = 0;
  for (std::size_t i = 0; i < columns.size(); ++i) {
    const auto it = row.find(columns[i]);
    if (it == row.end()) continue;
    fields[i] = it->second;
    ++used;
  }
  if (used != row.size()) {
    for (const auto& [column, value] : row) {
      bool known = false;
      for (const std::string& c : columns) known = known || c == column;
      if (!known) throw std::invalid_argument(fmt::format("{}: unknown results column '{}'", path_.string(), column));
    }
  }
  write_all(fd_, csv_line(fields), path_);
}

std::vector<ResultRow> read_results(const std::filesystem::path& path) {
  return read_table(path).rows;
}

std::set<std::string> completed_keys(const std::filesystem::path& path) {
  std::set<std::string> keys;
  if (!std::filesystem::exists(path)) return keys;
  const Table table = read_table(path);
  if (table.header.empty()) return keys;
  bool has_key = false;
  for (const std::string& column : table.header) has_key = has_key || column == "key";
  if (!has_key) throw std::runtime_error(fmt::format("{}: the header has no 'key' column", path.string()));
  for (const ResultRow& row : table.rows) keys.insert(row.at("key"));
  return keys;
}

}  // namespace flashlab::harness
