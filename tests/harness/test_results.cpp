// results.csv: quoting, the writer (new file, resume, crash truncation, header mismatch) and the reader.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "catch.hpp"
#include "flashlab/harness/results.hpp"

using flashlab::harness::completed_keys;
using flashlab::harness::csv_escape;
using flashlab::harness::read_results;
using flashlab::harness::result_columns;
using flashlab::harness::ResultRow;
using flashlab::harness::ResultsWriter;

namespace {

// A fresh directory per test, removed at the end.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("flashlab_results_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::string header_line() {
  std::string line;
  for (const std::string& column : result_columns()) line += (line.empty() ? "" : ",") + column;
  return line + "\n";
}

// A CSV line with `key` in the first column and the other columns empty.
std::string row_line(const std::string& key) {
  return csv_escape(key) + std::string(result_columns().size() - 1, ',') + "\n";
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

// "k<i>" (built with append: GCC 12 warns falsely, -Wrestrict, on "k" + std::to_string(i)).
std::string numbered_key(std::size_t i) {
  return std::string("k").append(std::to_string(i));
}

const std::vector<std::string> kAwkward = {"",     "plain",    "a,b",         "say \"hi\"",    "\"",
                                           "\"\"", ",",        "line\nbreak", "crlf\r\nend",   "trailing\n",
                                           "\n",   " spaced ", "x=1|y=2,3",   "unicode: µs ±", "'single'"};

}  // namespace

TEST_CASE("results: csv_escape quotes exactly the fields that need it") {
  CHECK(csv_escape("") == "");
  CHECK(csv_escape("plain") == "plain");
  CHECK(csv_escape(" spaced ") == " spaced ");
  CHECK(csv_escape("a,b") == "\"a,b\"");
  CHECK(csv_escape("say \"hi\"") == "\"say \"\"hi\"\"\"");
  CHECK(csv_escape("\"") == "\"\"\"\"");
  CHECK(csv_escape("line\nbreak") == "\"line\nbreak\"");
  CHECK(csv_escape("cr\rx") == "\"cr\rx\"");
  CHECK(csv_escape("window=-1,-1") == "\"window=-1,-1\"");
}

TEST_CASE("results: the columns are unique and start with the row key") {
  const auto& columns = result_columns();
  REQUIRE_FALSE(columns.empty());
  CHECK(columns.front() == "key");
  for (std::size_t i = 0; i < columns.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) CHECK(columns[i] != columns[j]);
    CHECK(csv_escape(columns[i]) == columns[i]);
  }
}

TEST_CASE("results: a new file gets the header, rows round-trip awkward strings") {
  TempDir dir;
  const auto path = dir / "results.csv";
  {
    ResultsWriter writer(path);
    CHECK(writer.path() == path);
    CHECK(slurp(path) == header_line());
    for (std::size_t i = 0; i < kAwkward.size(); ++i) {
      writer.append({{"key", numbered_key(i)}, {"reason", kAwkward[i]}, {"suite", kAwkward[kAwkward.size() - 1 - i]}});
    }
    writer.append({});  // every column empty
  }
  const std::vector<ResultRow> rows = read_results(path);
  REQUIRE(rows.size() == kAwkward.size() + 1);
  for (std::size_t i = 0; i < kAwkward.size(); ++i) {
    INFO(i);
    CHECK(rows[i].size() == result_columns().size());
    CHECK(rows[i].at("key") == numbered_key(i));
    CHECK(rows[i].at("reason") == kAwkward[i]);
    CHECK(rows[i].at("suite") == kAwkward[kAwkward.size() - 1 - i]);
    CHECK(rows[i].at("status").empty());
  }
  for (const auto& [column, value] : rows.back()) CHECK(value.empty());
}

TEST_CASE("results: a row with an unknown column is refused and nothing is written") {
  TempDir dir;
  const auto path = dir / "results.csv";
  ResultsWriter writer(path);
  CHECK_THROWS_AS(writer.append({{"key", "k"}, {"no_such_column", "1"}}), std::invalid_argument);
  CHECK_THROWS_WITH(writer.append({{"key", "k"}, {"no_such_column", "1"}}), Catch::Contains("no_such_column"));
  CHECK(slurp(path) == header_line());
}

TEST_CASE("results: resuming appends to an existing file without a second header") {
  TempDir dir;
  const auto path = dir / "results.csv";
  {
    ResultsWriter writer(path);
    writer.append({{"key", "a"}, {"status", "ok"}});
    writer.append({{"key", "b,with comma"}, {"status", "error"}, {"reason", "line 1\nline 2"}});
  }
  {
    ResultsWriter writer(path);
    writer.append({{"key", "c"}, {"status", "ok"}});
  }
  ResultsWriter empty_reopen(path);  // a reopen that appends nothing changes nothing
  const std::string text = slurp(path);
  CHECK(count(text, "key,suite,run_id") == 1);
  CHECK(text.rfind(header_line(), 0) == 0);
  const auto rows = read_results(path);
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].at("key") == "a");
  CHECK(rows[1].at("key") == "b,with comma");
  CHECK(rows[1].at("reason") == "line 1\nline 2");
  CHECK(rows[2].at("key") == "c");
  CHECK(completed_keys(path) == std::set<std::string>{"a", "b,with comma", "c"});
}

TEST_CASE("results: reopening truncates an incomplete last line left by a crash") {
  TempDir dir;
  const auto path = dir / "results.csv";
  const std::string complete = header_line() + row_line("done");

  SECTION("cut in an unquoted field") {
    spit(path, complete + "partial,ro");
  }
  SECTION("cut inside a quoted field that holds a newline") {
    spit(path, complete + "\"partial\nrow, still");
  }
  SECTION("cut right after a closing quote") {
    spit(path, complete + "\"partial\"");
  }
  SECTION("cut between CR and LF") {
    spit(path, complete + "partial" + std::string(result_columns().size() - 1, ',') + "\r");
  }
  SECTION("cut after the first field") {
    spit(path, complete + "partial,");
  }

  CHECK(read_results(path).size() == 1);  // the reader ignores the partial line
  CHECK(completed_keys(path) == std::set<std::string>{"done"});
  {
    ResultsWriter writer(path);
    CHECK(slurp(path) == complete);
    writer.append({{"key", "next"}});
  }
  CHECK(slurp(path) == complete + row_line("next"));
  const auto rows = read_results(path);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].at("key") == "done");
  CHECK(rows[1].at("key") == "next");
}

TEST_CASE("results: a header cut short by a crash is rewritten") {
  TempDir dir;
  const auto path = dir / "results.csv";
  const std::string header = header_line();
  spit(path, header.substr(0, header.size() / 2));
  CHECK(read_results(path).empty());
  CHECK(completed_keys(path).empty());
  {
    ResultsWriter writer(path);
    writer.append({{"key", "k"}});
  }
  CHECK(slurp(path) == header + row_line("k"));
}

TEST_CASE("results: an existing file with other columns is refused and left untouched") {
  TempDir dir;
  const auto path = dir / "results.csv";
  std::string other_header = header_line();
  other_header.replace(other_header.find("status"), 6, "state");

  for (const std::string& bytes :
       {std::string("a,b,c\n1,2,3\n"), std::string("a,b,c\n1,2,3\npartial"), std::string("not a results file"),
        other_header + row_line("k"), header_line().substr(0, header_line().size() - 1) + ",extra\n"}) {
    INFO(bytes);
    spit(path, bytes);
    CHECK_THROWS_AS(ResultsWriter(path), std::runtime_error);
    CHECK_THROWS_WITH(ResultsWriter(path), Catch::Contains(path.string()) && Catch::Contains("columns differ"));
    CHECK(slurp(path) == bytes);
  }
}

TEST_CASE("results: completed_keys of a missing, an empty and a filled file") {
  TempDir dir;
  CHECK(completed_keys(dir / "missing.csv").empty());
  const auto path = dir / "results.csv";
  {
    ResultsWriter writer(path);
    CHECK(completed_keys(path).empty());
    writer.append({{"key", "variant=standard|pass=fwd|window=-1,-1"}, {"status", "ok"}});
    writer.append({{"key", "variant=flash|pass=bwd|window=-1,-1"}, {"status", "oom"}});
  }
  CHECK(completed_keys(path) ==
        std::set<std::string>{"variant=standard|pass=fwd|window=-1,-1", "variant=flash|pass=bwd|window=-1,-1"});
  const auto no_key = dir / "no_key.csv";
  spit(no_key, "a,b\n1,2\n");
  CHECK_THROWS_WITH(completed_keys(no_key), Catch::Contains("no_key.csv") && Catch::Contains("'key'"));
}

TEST_CASE("results: read_results names the file and line of a malformed line") {
  TempDir dir;
  const auto path = dir / "bad.csv";
  struct Case {
    std::string bytes;
    std::string where;
  };
  const std::vector<Case> cases = {
      {"a,b,c\n1,2,3\n1,2\n", ":3:"},         // too few fields
      {"a,b,c\n1,2,3\n1,2,3,4\n", ":3:"},     // too many fields
      {"a,b,c\n\"x\ny\",2,3\n1,2\n", ":4:"},  // lines count the newline inside quotes
      {"a,b,c\n1,2,3\n\n", ":3:"},            // an empty line is one empty field
      {"a,b,c\n1,x\"y,3\n", ":2:"},           // quote inside an unquoted field
      {"a,b,c\n\"1\"x,2,3\n", ":2:"},         // text after a closing quote
      {"a,b,a\n1,2,3\n", ":1:"},              // a column twice
  };
  for (const Case& c : cases) {
    INFO(c.bytes);
    spit(path, c.bytes);
    CHECK_THROWS_AS(read_results(path), std::runtime_error);
    CHECK_THROWS_WITH(read_results(path), Catch::Contains(path.string() + c.where));
  }
  CHECK_THROWS_WITH(read_results(dir / "missing.csv"), Catch::Contains("missing.csv"));
}

TEST_CASE("results: read_results accepts CRLF line ends and quoted empty fields") {
  TempDir dir;
  const auto path = dir / "crlf.csv";
  spit(path, "key,reason\r\n\"\",\"a\r\nb\"\r\nk2,\r\n");
  const auto rows = read_results(path);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].at("key").empty());
  CHECK(rows[0].at("reason") == "a\r\nb");
  CHECK(rows[1].at("key") == "k2");
  CHECK(rows[1].at("reason").empty());
}

TEST_CASE("results: a second writer on the same file is refused while the first is open") {
  TempDir dir;
  const auto path = dir / "results.csv";
  ResultsWriter first(path);
  CHECK_THROWS_AS(ResultsWriter(path), std::runtime_error);
  ResultsWriter moved(std::move(first));
  moved.append({{"key", "k"}});
  CHECK(completed_keys(path) == std::set<std::string>{"k"});
}
