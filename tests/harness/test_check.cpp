// The numerics regression check: `flashlab run --seed`, the output hashes, the band, `flashlab check record` and
// `flashlab check` on hand-made runs (every kind of regression, every refusal), and the stored CPU baseline
// experiments/numerics/cpu.csv against fresh runs of experiments/numerics/cpu.toml.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "catch.hpp"
#include "npy_file.hpp"
#include "flashlab/harness/check.hpp"
#include "flashlab/harness/compare.hpp"
#include "flashlab/harness/results.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/harness/runner.hpp"
#include "flashlab/harness/suite.hpp"
#include "flashlab/harness/verify.hpp"

using namespace flashlab::harness;
namespace fs = std::filesystem;

namespace {

fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("flashlab-check-" + name + "-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct Outcome {
  int code = -1;
  std::string output;  // stdout and stderr
};

// Runs the flashlab binary with `args` (paths here hold no spaces). The CPU reference's backward sums depend on the
// worker count, so the check's platform is "cpu threads=2": the stored baseline was recorded with FLASHLAB_THREADS=2.
Outcome run_flashlab(const std::string& args) {
  setenv("FLASHLAB_THREADS", "2", 1);
  const std::string command = std::string(FLASHLAB_BINARY) + " " + args + " 2>&1";
  Outcome outcome;
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  std::size_t got = 0;
  while ((got = fread(buffer, 1, sizeof buffer, pipe)) > 0) outcome.output.append(buffer, got);
  const int status = pclose(pipe);
  outcome.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return outcome;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string fmt_number(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", x);
  return text;
}

// A hand-made results row of suite `suite`: one tensor (o) with the given errors, bound and hash.
struct Made {
  std::string variant = "cpu-standard";
  std::int64_t seqlen = 17;
  std::string status = "ok";
  double max_abs = 1e-3, rmse = 1e-4, bound = 1e-2, floor = 1e-4;
  std::string hash = "00000000000000aa";
  bool verified = true;
  double time = 1.0, p20 = 0.99, p80 = 1.01;  // ms
};

ResultRow made_row(const std::string& suite, const std::string& seed, std::int64_t index, const Made& m) {
  ResultRow r = {{"key", m.variant + "|N=" + std::to_string(m.seqlen)},
                 {"suite", suite},
                 {"run_id", "r"},
                 {"row_index", std::to_string(index)},
                 {"variant", m.variant},
                 {"pass", "fwd"},
                 {"dtype", "bf16"},
                 {"distribution", "normal"},
                 {"seed", seed},
                 {"batch", "1"},
                 {"heads", "2"},
                 {"heads_kv", "2"},
                 {"seqlen_q", std::to_string(m.seqlen)},
                 {"seqlen_k", std::to_string(m.seqlen)},
                 {"head_dim", "32"},
                 {"head_dim_v", "32"},
                 {"causal", "0"},
                 {"window_left", "-1"},
                 {"window_right", "-1"},
                 {"softmax_scale", "0.17677669529663687"},
                 {"varlen", "0"},
                 {"device", "cpu"},
                 {"status", m.status},
                 {"reason", m.status == "ok" ? "" : "verification failed: o"}};
  if (m.verified) {
    r["err_o_max_abs"] = fmt_number(m.max_abs);
    r["err_o_rmse"] = fmt_number(m.rmse);
    r["err_o_bound"] = fmt_number(m.bound);
    r["err_o_floor"] = fmt_number(m.floor);
  }
  r["hash_o"] = m.hash;
  if (m.status == "ok") {
    r["time_median_ms"] = fmt_number(m.time);
    r["time_p20_ms"] = fmt_number(m.p20);
    r["time_p80_ms"] = fmt_number(m.p80);
  }
  return r;
}

fs::path write_run(const fs::path& root, const std::string& name, const std::string& suite, const std::string& seed,
                   const std::vector<Made>& rows, int threads = 2) {
  const fs::path dir = root / name;
  fs::create_directories(dir);
  ResultsWriter writer(dir / "results.csv");
  for (std::size_t i = 0; i < rows.size(); ++i)
    writer.append(made_row(suite, seed, static_cast<std::int64_t>(i), rows[i]));
  std::ofstream(dir / "run.json") << "{\"suite\": \"" << suite << "\", \"host\": {\"threads\": " << threads
                                  << "}, \"device\": null}\n";
  return dir;
}

const char* kHashSuite = R"(
[suite]
name = "hashes"
warmup = 1
repetitions = 2
[fixed]
heads = 4
heads_kv = 2
head_dim = 16
seqlen = 33
[axes]
variant = ["cpu-reference", "cpu-standard"]
pass = ["fwd", "fwdbwd"]
dtype = ["fp16", "bf16"]
)";

fs::path source_path(const std::string& relative) {
  return fs::path(FLASHLAB_SOURCE_DIR) / relative;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// flashlab run --seed, output hashes

TEST_CASE("command-line errors are one line with the program's name, and --version prints the version", "[harness][cli]") {
  const Outcome version = run_flashlab("--version");
  CHECK(version.code == 0);
  CHECK(version.output.rfind("flashlab 0.", 0) == 0);
  CHECK(contains(version.output, "(commit "));
  const Outcome bogus = run_flashlab("bogus");
  CHECK(bogus.code == 2);
  CHECK(lines_of(bogus.output) ==
        std::vector<std::string>{"flashlab: unknown subcommand 'bogus' (subcommands: list, run, check, compare, merge; flashlab --help)"});
  for (const char* args : {"run", "run --no-such-flag x.toml", "check record --out", "list extra"}) {
    INFO(args);
    const Outcome o = run_flashlab(args);
    CHECK(o.code == 2);
    const std::vector<std::string> lines = lines_of(o.output);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].rfind("flashlab: ", 0) == 0);
  }
}

TEST_CASE("run --seed overrides the suite's seed, in results.csv and run.json", "[check][run]") {
  const fs::path dir = fresh_directory("seed");
  std::ofstream(dir / "suite.toml") << kHashSuite;
  const std::string common = (dir / "suite.toml").string() + " --out " + (dir / "out").string() +
                             " --filter variant=cpu-standard,pass=fwd,dtype=fp16";
  const Outcome run = run_flashlab("run " + common + " --run-id s7 --seed 7");
  INFO(run.output);
  REQUIRE(run.code == kExitOk);
  const auto rows = read_results(dir / "out" / "hashes" / "s7" / "results.csv");
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].at("seed") == "7");
  const std::string info = read_text(dir / "out" / "hashes" / "s7" / "run.json");
  CHECK(contains(info, "\"seed\": 7"));
  CHECK(contains(info, "--run-id s7 --seed 7\""));  // the command line as it was
  // resuming a run with another seed would mix two seeds in one run: refused
  const Outcome other = run_flashlab("run " + common + " --run-id s7 --resume --seed 8");
  CHECK(other.code == kExitUsage);
  CHECK(contains(other.output, "seed 7"));
  fs::remove_all(dir);
}

TEST_CASE("progress reaches a log that is not a terminal: the first and the last row", "[harness][cli]") {
  const fs::path dir = fresh_directory("progress");
  std::ofstream(dir / "suite.toml") << kHashSuite;
  const Outcome run = run_flashlab("run " + (dir / "suite.toml").string() + " --out " + (dir / "out").string() +
                                   " --run-id p --filter pass=fwd");
  INFO(run.output);
  REQUIRE(run.code == kExitOk);
  std::vector<std::string> progress;
  for (const std::string& line : lines_of(run.output)) {
    if (line.rfind("flashlab: hashes [", 0) == 0) progress.push_back(line);
  }
  REQUIRE(progress.size() >= 2);  // 4 rows in well under 30 s: the first and the last
  CHECK(progress.front().rfind("flashlab: hashes [1/4] cpu-reference fwd fp16 N=33 d=16: ok", 0) == 0);
  CHECK(progress.back().rfind("flashlab: hashes [4/4] ", 0) == 0);
  CHECK(contains(progress.back(), "ETA 0:00:00"));
  CHECK(!contains(run.output, "\r"));
  fs::remove_all(dir);
}

TEST_CASE("the end-of-run summary counts each status and gives each distinct reason once", "[harness][cli]") {
  const fs::path dir = fresh_directory("summary");
  std::ofstream(dir / "suite.toml") << R"(
[suite]
name = "summary"
warmup = 0
repetitions = 1
[fixed]
variant = "cpu-standard"
head_dim = 16
[axes]
dtype = ["fp16", "fp8_e4m3"]
seqlen = [17, 33]
)";
  const Outcome run = run_flashlab("run " + (dir / "suite.toml").string() + " --out " + (dir / "out").string() +
                                   " --run-id s");
  INFO(run.output);
  REQUIRE(run.code == kExitOk);
  int summary = 0, reasons = 0;
  for (const std::string& line : lines_of(run.output)) {
    if (line.rfind("summary: 4 rows written, 2 ok, 2 unsupported; 0 already present -> ", 0) == 0) ++summary;
    if (line.rfind("  unsupported x2: ", 0) == 0) ++reasons;
  }
  CHECK(summary == 1);
  CHECK(reasons == 1);
  fs::remove_all(dir);
}

TEST_CASE("output hashes repeat for a seed, differ for another, and hash the tensor's bytes", "[check][hash]") {
  const fs::path dir = fresh_directory("hash");
  RunOptions options;
  options.suite = dir / "suite.toml";
  std::ofstream(options.suite) << kHashSuite;
  options.out = dir / "out";
  std::map<std::string, std::vector<ResultRow>> runs;
  for (const auto& [id, seed] : std::vector<std::pair<std::string, std::uint64_t>>{{"a", 5}, {"b", 5}, {"c", 6}}) {
    options.run_id = id;
    options.seed = seed;
    REQUIRE(run_suite(options) == kExitOk);
    runs[id] = read_results(options.out / "hashes" / id / "results.csv");
  }
  REQUIRE(runs["a"].size() == 8);
  std::set<std::string> variants;
  for (std::size_t i = 0; i < runs["a"].size(); ++i) {
    const ResultRow& a = runs["a"][i];
    const ResultRow& b = runs["b"][i];
    const ResultRow& c = runs["c"][i];
    REQUIRE(a.at("key") == c.at("key"));
    variants.insert(a.at("variant"));
    for (const char* t : {"o", "lse", "dq", "dk", "dv"}) {
      const std::string column = std::string("hash_") + t;
      INFO(a.at("key") << " " << column);
      const bool output = a.at("pass") != "fwd" || std::string(t) == "o" || std::string(t) == "lse";
      if (!output) {
        CHECK(a.at(column).empty());
        continue;
      }
      REQUIRE(a.at(column).size() == 16);
      CHECK(a.at(column).find_first_not_of("0123456789abcdef") == std::string::npos);
      CHECK(a.at(column) == b.at(column));
      CHECK(a.at(column) != c.at(column));
    }
  }
  CHECK(variants == std::set<std::string>{"cpu-reference", "cpu-standard"});

  // hash_o of an fp16 row is FNV-1a 64 of o's bytes: the .npy payload (<f2, the buffer as it is), hashed here
  options.run_id = "saved";
  options.seed = 5;
  options.filter = "variant=cpu-standard,pass=fwd,dtype=fp16";
  const std::int64_t row = 4;  // (cpu-standard, fwd, fp16): variant 1, pass 0, dtype 0 of 2 each, variant slowest
  options.save_tensors = {row};
  REQUIRE(run_suite(options) == kExitOk);
  const auto saved = read_results(options.out / "hashes" / "saved" / "results.csv");
  REQUIRE(saved.size() == 1);
  REQUIRE(saved[0].at("row_index") == std::to_string(row));
  const flashlab::test::NpyFile npy =
      flashlab::test::read_npy(options.out / "hashes" / "saved" / "tensors" / ("row-" + std::to_string(row)) / "o.npy");
  REQUIRE(npy.payload.size() == 33 * 4 * 16 * 2);
  std::uint64_t hash = 0xcbf29ce484222325ULL;  // FNV-1a 64, written out here
  for (const char byte : npy.payload) {
    hash ^= static_cast<unsigned char>(byte);
    hash *= 0x100000001b3ULL;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
  CHECK(saved[0].at("hash_o") == hex);
  CHECK(saved[0].at("hash_o") == runs["a"][static_cast<std::size_t>(row)].at("hash_o"));
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------------------------
// the band

TEST_CASE("the band: log-mean, log-std with the prediction factor, least margin, zeros", "[check][band]") {
  // equal values: sigma = 0, the least margin 10% above them
  const Band same = error_band({2e-3, 2e-3, 2e-3}, 1e-4);
  CHECK(same.hi == Approx(2e-3 * 1.1));
  CHECK(same.stored() == Approx(2e-3));
  CHECK(same.log_std == 0);
  // log values -1, 0, 1: mu = 0, sigma = 1, S = 3: exp(6 sqrt(4/3))
  const Band spread = error_band({std::exp(-1.0), 1.0, std::exp(1.0)}, 0);
  CHECK(*spread.log_mean == Approx(0).margin(1e-15));
  CHECK(spread.log_std == Approx(1));
  CHECK(spread.hi == Approx(std::exp(6 * std::sqrt(4.0 / 3.0))));
  CHECK(spread.min == Approx(std::exp(-1.0)));
  CHECK(spread.max == Approx(std::exp(1.0)));
  // max_abs: at least twice the largest value seen
  CHECK(error_band({1.0, 1.0, 1.0}, 0, kMaxAbsSlack).hi == Approx(2.0));
  // exactly 0 in every seed: the floor
  const Band zero = error_band({0, 0, 0, 0}, 3e-5);
  CHECK_FALSE(zero.log_mean.has_value());
  CHECK(zero.hi == 3e-5);
  CHECK(zero.stored() == 0);
  // some zeros: the statistics of the others, the zeros counted
  const Band some = error_band({0, 1e-3, 1e-3}, 1e-2);
  CHECK(some.zeros == 1);
  CHECK(some.hi == Approx(1.1e-3));
}

// ---------------------------------------------------------------------------------------------------------------
// record and check on hand-made runs

TEST_CASE("record writes bands and hashes, and check finds each kind of regression", "[check][record]") {
  const fs::path dir = fresh_directory("record");
  // rows: 0 a plain row; 1 an error in one run (left out); 2 a row whose hash changes when the seed repeats
  auto rows_of = [](const std::string& seed, double scale, const std::string& flaky_hash, const std::string& status1) {
    Made plain;
    plain.max_abs = 1e-3 * scale;
    plain.rmse = 1e-4 * scale;
    plain.hash = "00000000000000a" + seed;
    Made failing = plain;
    failing.seqlen = 33;
    failing.status = status1;
    Made flaky = plain;
    flaky.variant = "cpu-reference";
    flaky.hash = flaky_hash;
    return std::vector<Made>{plain, failing, flaky};
  };
  std::vector<fs::path> runs = {write_run(dir, "s1", "toy", "1", rows_of("1", 1.0, "1111111111111111", "ok")),
                                write_run(dir, "s2", "toy", "2", rows_of("2", 1.2, "2222222222222222", "error")),
                                write_run(dir, "s3", "toy", "3", rows_of("3", 0.9, "3333333333333333", "ok")),
                                write_run(dir, "s1-again", "toy", "1", rows_of("1", 1.0, "1111111111111112", "ok"))};
  const fs::path baseline = dir / "baseline.csv";
  const Outcome record =
      run_flashlab("check record " + runs[0].string() + " " + runs[1].string() + " " + runs[2].string() + " " +
                   runs[3].string() + " --repeat --out " + baseline.string());
  INFO(record.output);
  REQUIRE(record.code == kExitOk);
  CHECK(contains(record.output, "1 rows not ok in every run"));
  const std::vector<BaselineEntry> entries = read_baseline(baseline);
  REQUIRE(entries.size() == 2);
  const BaselineEntry& plain = entries[0];
  CHECK(plain.key == "cpu-standard|N=17");
  CHECK(plain.tensor == "o");
  CHECK(plain.seeds == 3);
  CHECK(plain.scaled);  // in units of the bound (1e-2 in every seed)
  CHECK(plain.platform == "cpu threads=2");
  const double mu = (std::log(0.1) + std::log(0.12) + std::log(0.09)) / 3;  // max_abs / bound
  CHECK(*plain.bands.at("max_abs").log_mean == Approx(mu));
  CHECK(plain.bands.at("max_abs").hi == Approx(error_band({0.1, 0.12, 0.09}, 0, kMaxAbsSlack).hi));
  CHECK(plain.bands.at("rmse").hi == Approx(error_band({0.01, 0.012, 0.009}, 0).hi));
  CHECK(plain.bitwise == std::optional<bool>(true));
  REQUIRE(plain.hashes.size() == 3);
  CHECK(*plain.hash_of("2") == "00000000000000a2");
  CHECK(entries[1].bitwise == std::optional<bool>(false));  // seed 1 gave two hashes
  const std::string file = read_text(baseline);
  CHECK(contains(lines_of(file)[0], "max_abs_band_hi"));
  CHECK(contains(file, "1:00000000000000a1;2:00000000000000a2;3:00000000000000a3"));

  SECTION("a fresh seed within the band passes; rows the baseline lacks are listed, not failed") {
    const fs::path run = write_run(dir, "s4", "toy", "4", rows_of("4", 1.1, "4444444444444444", "ok"));
    const fs::path report = dir / "report.md";
    const Outcome check =
        run_flashlab("check " + run.string() + " --baseline " + baseline.string() + " --report " + report.string());
    INFO(check.output);
    CHECK(check.code == kExitOk);
    CHECK(contains(check.output, "rows checked: 2"));
    CHECK(contains(check.output, "missing from the baseline (not checked): 1"));
    CHECK(contains(check.output, "1 cpu-standard fwd bf16 normal N=33 d=32"));
    CHECK(contains(read_text(report), "**PASS**"));
  }
  SECTION("an error above its band, in units of this run's bound") {
    auto rows = rows_of("4", 1.0, "4444444444444444", "ok");
    rows[0].max_abs = 0.5 * rows[0].bound;  // 5x the typical 0.1 bound units
    rows[2].bound = 2e-2;                   // twice the bound: the same error is well inside
    rows[2].max_abs = 2.5e-3;
    const RunTable run = load_run(write_run(dir, "big", "toy", "4", rows));
    const CheckResult result = check_against(run, entries);
    REQUIRE(result.regressions.size() == 1);
    const Regression& r = result.regressions[0];
    CHECK(r.row_index == 0);
    CHECK(r.tensor == "o");
    CHECK(r.metric == "max_abs");
    CHECK(r.short_key == "cpu-standard fwd bf16 normal N=17 d=32");
    CHECK(std::stod(r.ratio) == Approx(0.5 / std::exp(mu)).epsilon(1e-3));
    const Outcome check = run_flashlab("check " + run.dir.string() + " --baseline " + baseline.string());
    CHECK(check.code == kExitRowsFailed);
    CHECK(contains(check.output, "FAIL: 1 regression in 1 row"));
  }
  SECTION("a NaN error, an error row and missing verification columns are regressions") {
    auto rows = rows_of("4", 1.0, "4444444444444444", "ok");
    rows[0].rmse = std::numeric_limits<double>::quiet_NaN();
    rows[2].status = "error";
    const CheckResult nan = check_against(load_run(write_run(dir, "nan", "toy", "4", rows)), entries);
    REQUIRE(nan.regressions.size() == 2);
    CHECK(nan.regressions[0].metric == "rmse");
    CHECK(nan.regressions[1].metric == "status");
    CHECK(nan.regressions[1].tensor == "-");
    rows = rows_of("4", 1.0, "4444444444444444", "ok");
    rows[0].verified = false;
    const CheckResult missing = check_against(load_run(write_run(dir, "missing", "toy", "4", rows)), entries);
    REQUIRE(missing.regressions.size() == 1);
    CHECK(missing.regressions[0].metric == "verify");
  }
  SECTION("a recorded seed: a changed hash regresses where bitwise = 1 only, and only on the same platform") {
    auto rows = rows_of("1", 1.0, "9999999999999999", "ok");  // the flaky row's hash changes: not enforced
    rows[0].hash = "00000000000000ff";                        // the bitwise row's changes: a regression
    const RunTable run = load_run(write_run(dir, "again", "toy", "1", rows));
    const CheckResult result = check_against(run, entries);
    CHECK(result.seed_recorded);
    CHECK(result.hashes_compared == 1);
    REQUIRE(result.regressions.size() == 1);
    CHECK(result.regressions[0].metric == "hash");
    CHECK(result.regressions[0].stored == "00000000000000a1");
    CHECK(result.regressions[0].value == "00000000000000ff");
    const RunTable elsewhere = load_run(write_run(dir, "elsewhere", "toy", "1", rows, 16));
    const CheckResult other = check_against(elsewhere, entries);
    CHECK(other.passed());
    CHECK(other.hashes_other_platform == 1);
  }
  SECTION("baseline rows missing from the run are a warning") {
    auto rows = rows_of("4", 1.0, "4444444444444444", "ok");
    rows.pop_back();
    const fs::path run = write_run(dir, "short", "toy", "4", rows);
    const Outcome check = run_flashlab("check " + run.string() + " --baseline " + baseline.string());
    CHECK(check.code == kExitOk);
    CHECK(contains(check.output, "warning: baseline rows missing from the run: 1"));
  }
  fs::remove_all(dir);
}

TEST_CASE("record refuses runs that cannot make a baseline, with one line and exit 2", "[check][record]") {
  const fs::path dir = fresh_directory("refuse");
  const std::vector<Made> rows = {Made{}};
  const fs::path s1 = write_run(dir, "s1", "toy", "1", rows), s2 = write_run(dir, "s2", "toy", "2", rows),
                 s3 = write_run(dir, "s3", "toy", "3", rows), again = write_run(dir, "again", "toy", "2", rows),
                 other = write_run(dir, "other", "another", "4", rows);
  const fs::path out = dir / "b.csv";
  auto refused = [&](const std::string& runs, const std::string& why, const std::string& flags = "") {
    const Outcome o = run_flashlab("check record " + runs + " --out " + out.string() + flags);
    INFO(o.output);
    CHECK(o.code == kExitUsage);
    CHECK(lines_of(o.output).size() == 1);
    CHECK(contains(o.output, why));
    CHECK_FALSE(fs::exists(out));
  };
  refused(s1.string() + " " + s2.string(), "a baseline needs runs of at least 3 seeds");
  refused(s1.string() + " " + s2.string() + " " + again.string(), "share seed 2");
  refused(s1.string() + " " + s2.string() + " " + again.string(), "runs of 2 distinct seeds", " --repeat");
  refused(s1.string() + " " + s2.string() + " " + other.string(), "runs of different suites");
  refused(s1.string() + " " + s2.string() + " " + (dir / "nothing").string(), "nothing: no such run directory");
  fs::create_directories(dir / "empty");
  refused(s1.string() + " " + s2.string() + " " + (dir / "empty").string(), "empty: no results.csv");
  CHECK(run_flashlab("check record " + s1.string() + " " + s2.string() + " " + s3.string() + " --out " + out.string())
            .code == kExitOk);
  fs::remove_all(dir);
}

TEST_CASE("check refuses a malformed baseline or run with one line naming the file, exit 2", "[check]") {
  const fs::path dir = fresh_directory("malformed");
  const std::vector<Made> rows = {Made{}};
  const fs::path s1 = write_run(dir, "s1", "toy", "1", rows), s2 = write_run(dir, "s2", "toy", "2", rows),
                 s3 = write_run(dir, "s3", "toy", "3", rows);
  const fs::path good = dir / "good.csv";
  REQUIRE(
      run_flashlab("check record " + s1.string() + " " + s2.string() + " " + s3.string() + " --out " + good.string())
          .code == kExitOk);
  auto refused = [&](const std::string& args, const std::string& why) {
    const Outcome o = run_flashlab("check " + args);
    INFO(o.output);
    CHECK(o.code == kExitUsage);
    CHECK(lines_of(o.output).size() == 1);
    CHECK(contains(o.output, why));
  };
  // a column missing (renamed in the header)
  const std::string text = read_text(good);
  const fs::path no_column = dir / "no-column.csv";
  {
    std::string renamed = text;
    const std::size_t at = renamed.find(",rmse_band_hi,");
    REQUIRE(at != std::string::npos);
    renamed.replace(at, std::string(",rmse_band_hi,").size(), ",rmse_upper,");
    std::ofstream(no_column) << renamed;
  }
  refused(s1.string() + " --baseline " + no_column.string(), no_column.string() + ": missing column 'rmse_band_hi'");
  // a value that is not a number
  const fs::path bad_number = dir / "bad-number.csv";
  {
    // the floor made unreadable
    std::vector<std::string> lines = lines_of(text);
    std::vector<std::string> fields;
    std::string field_text;
    bool quoted = false;
    for (char c : lines[1]) {
      if (c == '"') quoted = !quoted;
      if (c == ',' && !quoted) {
        fields.push_back(field_text);
        field_text.clear();
      } else {
        field_text += c;
      }
    }
    fields.push_back(field_text);
    std::size_t floor_at = 0;
    {
      std::istringstream names(lines[0]);
      std::string name;
      for (std::size_t i = 0; std::getline(names, name, ','); ++i) {
        if (name == "floor") floor_at = i;
      }
    }
    fields[floor_at] = "1e-x";
    std::ofstream out(bad_number);
    out << lines[0] << "\n";
    for (std::size_t i = 0; i < fields.size(); ++i) out << (i ? "," : "") << fields[i];
    out << "\n";
  }
  refused(s1.string() + " --baseline " + bad_number.string(), bad_number.string() + ":2: column 'floor': '1e-x'");
  refused(s1.string() + " --baseline " + (dir / "absent.csv").string(), "absent.csv: no such baseline file");
  refused((dir / "nothing").string() + " --baseline " + good.string(), "nothing: no such run directory");
  fs::create_directories(dir / "empty");
  refused((dir / "empty").string() + " --baseline " + good.string(), "empty: no results.csv");
  refused(write_run(dir, "another", "another", "9", rows).string() + " --baseline " + good.string(),
          "a run of suite 'another'; the baseline is of suite 'toy'");
  const Outcome usage = run_flashlab("check " + s1.string());
  CHECK(usage.code == kExitUsage);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------------------------
// the stored CPU baseline against fresh runs

namespace {

const fs::path kSuite = source_path("experiments/numerics/cpu.toml");
const fs::path kBaseline = source_path("experiments/numerics/cpu.csv");

// Runs the CPU numerics suite with `seed` into `out`; returns the run directory.
fs::path run_numerics(const fs::path& out, std::uint64_t seed) {
  const std::string id = "seed-" + std::to_string(seed);
  const Outcome run = run_flashlab("run " + kSuite.string() + " --out " + out.string() + " --run-id " + id +
                                   " --seed " + std::to_string(seed));
  INFO(run.output);
  CHECK((run.code == kExitOk || run.code == kExitRowsFailed));  // rows that are errors are the check's to judge
  return out / "numerics_cpu" / id;
}

}  // namespace

TEST_CASE("a fresh seed passes the CPU baseline, and 1.5x the rmse of a tight row fails naming it",
          "[check][numerics]") {
  const fs::path dir = fresh_directory("numerics");
  const std::uint64_t seed = 1000;  // not one of the baseline's
  const fs::path run = run_numerics(dir, seed);
  const Outcome pass = run_flashlab("check " + run.string() + " --baseline " + kBaseline.string());
  INFO(pass.output);
  REQUIRE(pass.code == kExitOk);
  CHECK(contains(pass.output, "seed 1000: not in the baseline"));

  // the (row, tensor) whose rmse band is tightest relative to this run's value
  const std::vector<BaselineEntry> baseline = read_baseline(kBaseline);
  const RunTable fresh = load_run(run);
  std::map<std::string, const ResultRow*> by_key;
  for (const ResultRow& row : fresh.rows) by_key[row.at("key")] = &row;
  const BaselineEntry* tight = nullptr;
  double room = std::numeric_limits<double>::infinity();  // band_hi / value
  for (const BaselineEntry& e : baseline) {
    const auto it = by_key.find(e.key);
    if (it == by_key.end() || it->second->at("status") != "ok" || !e.scaled) continue;
    const std::string prefix = "err_" + e.tensor + "_";
    const double value = std::stod(it->second->at(prefix + "rmse"));
    const double limit = e.bands.at("rmse").hi * std::stod(it->second->at(prefix + "bound"));
    if (value > 0 && limit / value < room) {
      room = limit / value;
      tight = &e;
    }
  }
  REQUIRE(tight != nullptr);
  INFO(tight->key << " " << tight->tensor << ": band_hi / value = " << room);
  REQUIRE(room < 1.5);
  std::vector<ResultRow> rows = fresh.rows;
  std::string index;
  for (ResultRow& row : rows) {
    if (row.at("key") != tight->key) continue;
    const std::string column = "err_" + tight->tensor + "_rmse";
    row[column] = fmt_number(std::stod(row.at(column)) * 1.5);
    index = row.at("row_index");
  }
  const fs::path changed = dir / "changed";
  fs::create_directories(changed);
  fs::copy_file(run / "run.json", changed / "run.json");
  {
    ResultsWriter writer(changed / "results.csv");
    for (const ResultRow& row : rows) writer.append(row);
  }
  const Outcome fail = run_flashlab("check " + changed.string() + " --baseline " + kBaseline.string());
  INFO(fail.output);
  CHECK(fail.code == kExitRowsFailed);
  CHECK(contains(fail.output, "FAIL: 1 regression in 1 row"));
  bool named = false;
  for (const std::string& line : lines_of(fail.output)) {
    named = named || (line.rfind("  " + index + " ", 0) == 0 && contains(line, short_key(*by_key[tight->key])) &&
                      contains(line, " " + tight->tensor + " ") && contains(line, "rmse"));
  }
  CHECK(named);
  fs::remove_all(dir);
}

TEST_CASE("five fresh seeds pass the CPU baseline", "[check][numerics]") {
  const fs::path dir = fresh_directory("five");
  for (const std::uint64_t seed : {1001, 1002, 1003, 1004, 1005}) {
    const fs::path run = run_numerics(dir, seed);
    const Outcome check = run_flashlab("check " + run.string() + " --baseline " + kBaseline.string());
    INFO("seed " << seed << "\n" << check.output);
    CHECK(check.code == kExitOk);
    fs::remove_all(run);
  }
  fs::remove_all(dir);
}

TEST_CASE("a recorded seed reproduces the baseline's hashes bit for bit", "[check][numerics]") {
  const fs::path dir = fresh_directory("recorded");
  const std::vector<BaselineEntry> baseline = read_baseline(kBaseline);
  REQUIRE_FALSE(baseline.front().hashes.empty());
  const std::uint64_t seed = std::stoull(baseline.front().hashes.front().first);
  const fs::path run = run_numerics(dir, seed);
  const Outcome check = run_flashlab("check " + run.string() + " --baseline " + kBaseline.string());
  INFO(check.output);
  CHECK(check.code == kExitOk);
  CHECK(contains(check.output, "recorded in the baseline"));
  const CheckResult result = check_against(load_run(run), baseline);
  CHECK(result.hashes_compared > 0);
  CHECK(result.hashes_other_platform == 0);
  fs::remove_all(dir);
}

// A regression injected into a data path (test-only FLASHLAB_FAULT): cpu-standard's row sum accumulated in the run's
// dtype. The deterministic bound fails the affected rows (the row sum's error is far outside gamma_n of fp32), and the
// check against the stored baseline fails the run; the error growth over the same rows without the fault is stated.
TEST_CASE("an injected fault in a data path is caught by the bound and by the check", "[check][numerics][fault]") {
  const fs::path dir = fresh_directory("fault");
  const std::string filter = " --filter variant=cpu-standard,dtype=bf16 --seed 1000";
  const Outcome clean = run_flashlab("run " + kSuite.string() + " --out " + dir.string() + " --run-id clean" + filter);
  INFO(clean.output);
  REQUIRE(clean.code == kExitOk);
  setenv("FLASHLAB_FAULT", "row_sum_in_dtype", 1);
  const Outcome faulty = run_flashlab("run " + kSuite.string() + " --out " + dir.string() + " --run-id fault" + filter);
  unsetenv("FLASHLAB_FAULT");
  INFO(faulty.output);
  CHECK(contains(faulty.output, "FLASHLAB_FAULT=row_sum_in_dtype"));
  CHECK(faulty.code == kExitRowsFailed);  // rows above their deterministic bound are errors
  const RunTable before = load_run(dir / "numerics_cpu" / "clean");
  const RunTable after = load_run(dir / "numerics_cpu" / "fault");
  REQUIRE(before.rows.size() == after.rows.size());
  int above_bound = 0;
  double growth = 0;  // the largest growth of the LSE error over rows that see more than one key
  for (std::size_t i = 0; i < after.rows.size(); ++i) {
    const ResultRow& a = after.rows[i];
    REQUIRE(a.at("key") == before.rows[i].at("key"));
    above_bound += a.at("status") == "error" && contains(a.at("reason"), "exceeds its deterministic bound");
    if (a.at("err_lse_max_abs").empty() || before.rows[i].at("err_lse_max_abs").empty()) continue;
    const double clean_error = std::stod(before.rows[i].at("err_lse_max_abs"));
    if (clean_error > 0) growth = std::max(growth, std::stod(a.at("err_lse_max_abs")) / clean_error);
  }
  INFO("rows above their bound: " << above_bound << " of " << after.rows.size() << "; LSE error growth up to "
                                  << growth << "x");
  CHECK(above_bound > 0);
  CHECK(growth > 10);
  const Outcome check = run_flashlab("check " + (dir / "numerics_cpu" / "fault").string() + " --baseline " +
                                     kBaseline.string());
  INFO(check.output);
  CHECK(check.code == kExitRowsFailed);
  CHECK(contains(check.output, "FAIL:"));
  setenv("FLASHLAB_FAULT", "no_such_fault", 1);
  const Outcome refused = run_flashlab("run " + kSuite.string() + " --out " + dir.string() + " --run-id bad" + filter);
  unsetenv("FLASHLAB_FAULT");
  CHECK(refused.code == kExitUsage);
  CHECK(contains(refused.output, "FLASHLAB_FAULT = 'no_such_fault' is not a known fault"));
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------------------------
// flashlab compare

namespace {

// Rows by seqlen: A and B of one suite, each verdict once, an error row, a row in each run only.
struct ComparePair {
  fs::path a, b;
};
ComparePair compare_pair(const fs::path& root) {
  auto made = [](std::int64_t n, double time, double p20, double p80, double max_abs = 1e-3) {
    Made m;
    m.seqlen = n;
    m.time = time;
    m.p20 = p20;
    m.p80 = p80;
    m.max_abs = max_abs;
    return m;
  };
  Made failed = made(5, 1, 1, 1);
  failed.status = "error";
  const std::vector<Made> a = {made(1, 1.0, 0.99, 1.01), made(2, 1.0, 0.99, 1.01), made(3, 1.0, 0.90, 1.10),
                               made(4, 1.0, 0.99, 1.01), made(5, 1.0, 0.99, 1.01), made(6, 1.0, 0.99, 1.01)};
  const std::vector<Made> b = {made(1, 0.80, 0.79, 0.81, 2e-3),  // faster, error doubled
                               made(2, 1.20, 1.19, 1.21),        // slower
                               made(3, 1.05, 0.95, 1.15),        // unclear: ranges overlap, medians 5% apart
                               made(4, 1.01, 0.95, 1.30),        // same: medians within 2%
                               failed, made(7, 1, 1, 1)};
  return {write_run(root, "a", "cmp", "1", a), write_run(root, "b", "cmp", "2", b)};
}

}  // namespace

TEST_CASE("compare_runs: the verdict of each row from its recorded quantiles, error ratios, keys in one run", "[harness][compare]") {
  const fs::path root = fresh_directory("compare-unit");
  const ComparePair pair = compare_pair(root);
  const Comparison c = compare_runs(load_run(pair.a), load_run(pair.b));
  REQUIRE(c.rows.size() == 5);
  std::map<std::string, const RowComparison*> by;
  for (const RowComparison& r : c.rows) by[field(r.identity, "seqlen_q")] = &r;
  REQUIRE(by.count("1"));
  CHECK(by["1"]->verdict == Verdict::faster);
  CHECK(*by["1"]->ratio == Approx(0.8));
  CHECK(by["1"]->error_ratio.at("o") == Approx(2.0));
  CHECK(by["2"]->verdict == Verdict::slower);
  CHECK(by["3"]->verdict == Verdict::unclear);
  CHECK(by["4"]->verdict == Verdict::same);
  CHECK_FALSE(by["5"]->verdict.has_value());  // not ok in B: no time compared
  CHECK(by["5"]->status_b == "error");
  CHECK(c.only_a.size() == 1);
  CHECK(c.only_b.size() == 1);
  CHECK(c.counts.at(Verdict::faster) == 1);
  REQUIRE(c.geomean_ratio);
  CHECK(*c.geomean_ratio == Approx(std::pow(0.80 * 1.20 * 1.05 * 1.01, 0.25)));
  // a wider tolerance makes the 5% row the same
  const Comparison wide = compare_runs(load_run(pair.a), load_run(pair.b), 0.06);
  for (const RowComparison& r : wide.rows) {
    if (field(r.identity, "seqlen_q") == "3") CHECK(r.verdict == Verdict::same);
  }
  fs::remove_all(root);
}

TEST_CASE("flashlab compare: summary and table, files, --fail-on slower, refusals", "[harness][compare]") {
  const fs::path root = fresh_directory("compare-cli");
  const ComparePair pair = compare_pair(root);
  const std::string both = pair.a.string() + " " + pair.b.string();

  const Outcome plain = run_flashlab("compare " + both);
  CHECK(plain.code == 0);
  CHECK(contains(plain.output, "5 rows in both, 4 timed in both: 1 faster, 1 slower, 1 same"));
  CHECK(contains(plain.output, "1 unclear"));
  CHECK(contains(plain.output, "rows in A only: 1; in B only: 1"));
  CHECK(contains(plain.output, "| cpu-standard fwd bf16 B=1 H=2 N=2 d=32 | 1 | 1.2 | 1.200 | slower |"));
  CHECK(contains(plain.output, "status ok / error"));

  const Outcome failing = run_flashlab("compare " + both + " --fail-on slower --markdown " +
                                       (root / "c.md").string() + " --csv " + (root / "c.csv").string());
  CHECK(failing.code == 1);
  CHECK(contains(failing.output, "FAIL: 1 rows slower than 1.05x"));
  CHECK(contains(read_text(root / "c.md"), "| row | A ms | B ms | B / A | verdict |"));
  const std::vector<std::string> csv = lines_of(read_text(root / "c.csv"));
  REQUIRE(csv.size() == 6);  // header + 5 rows
  CHECK(contains(csv[0], "time_ratio,verdict,err_o_ratio"));
  CHECK(run_flashlab("compare " + both + " --fail-on slower --threshold 1.25").code == 0);  // 1.2x is within

  CHECK(run_flashlab("compare " + both + " --fail-on faster").code == 2);
  CHECK(run_flashlab("compare " + pair.a.string() + " " + (root / "none").string()).code == 2);
  const fs::path other = write_run(root, "other", "cmp", "1", {Made{.seqlen = 99}});
  const Outcome disjoint = run_flashlab("compare " + pair.a.string() + " " + other.string());
  CHECK(disjoint.code == 2);
  CHECK(contains(disjoint.output, "no row key in common"));
  fs::remove_all(root);
}

// ---------------------------------------------------------------------------------------------------------------
// Estimated costs: --dry-run, max_row_seconds

TEST_CASE("a dry run estimates each row's cost, and a row over max_row_seconds is skipped with its estimate, not run", "[harness][cost]") {
  const fs::path root = fresh_directory("cost");
  const fs::path suite = root / "big.toml";
  std::ofstream(suite) << R"([suite]
name = "big"
warmup = 1
repetitions = 2
max_row_seconds = 60
[fixed]
heads = 1
head_dim = 16
dtype = "bf16"
pass = "fwd"
variant = "cpu-reference"
[axes]
seqlen = [64, 4194304]
)";
  const Outcome dry = run_flashlab("run " + suite.string() + " --dry-run");
  CHECK(dry.code == 0);
  CHECK(contains(dry.output, "GFLOP/s on the CPU workers (measured)"));
  CHECK(contains(dry.output, "Nq=4194304") );
  CHECK(contains(dry.output, "[skipped: over max_row_seconds = 60]"));
  CHECK(contains(dry.output, "estimated total ~"));
  CHECK(contains(dry.output, " h (run "));  // N = 4M in fp64 on the CPU: hours, whatever this machine's rate

  const auto start = std::chrono::steady_clock::now();
  const Outcome run = run_flashlab("run " + suite.string() + " --out " + (root / "out").string() + " --run-id r");
  CHECK(run.code == 0);  // skipped rows are not failures
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(60));  // the N = 4M row never started
  const std::vector<ResultRow> rows = read_results(root / "out" / "big" / "r" / "results.csv");
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].at("status") == "ok");
  CHECK(rows[1].at("status") == "skipped");
  CHECK(contains(rows[1].at("reason"), "estimated cost ~"));
  CHECK(contains(rows[1].at("reason"), "exceeds the suite's max_row_seconds = 60"));
  CHECK(contains(run.output, "1 ok, 1 skipped"));
  fs::remove_all(root);
}

TEST_CASE("check_flops: a sampled check costs less than checking every entry, and nothing with verify = none", "[harness][cost]") {
  SuiteSettings settings;
  flashlab::Problem p;
  p.batch = 4;
  p.heads = 16;
  p.heads_kv = 16;
  p.seqlen_q = p.seqlen_k = 8192;
  p.head_dim = 128;
  const double sampled = check_flops(p, flashlab::Pass::fwdbwd, settings);
  settings.verify = "all";
  const double every = check_flops(p, flashlab::Pass::fwdbwd, settings);
  CHECK(sampled > 0);
  CHECK(sampled < every / 10);
  settings.verify = "none";
  CHECK(check_flops(p, flashlab::Pass::fwdbwd, settings) == 0);
  settings.verify = "auto";
  p.seqlen_q = p.seqlen_k = 64;  // small: every entry, as choose_groups decides
  SuiteSettings every_entry;
  every_entry.verify = "all";
  CHECK(check_flops(p, flashlab::Pass::fwd, settings) == Approx(check_flops(p, flashlab::Pass::fwd, every_entry)));
}

// ---------------------------------------------------------------------------------------------------------------
// --devices: one process per device, shards merged in row order

TEST_CASE("run --devices runs a shard per device and merges them in row order into the run's folder", "[harness][devices]") {
  const fs::path root = fresh_directory("devices");
  const fs::path suite = root / "dev.toml";
  std::ofstream(suite) << R"([suite]
name = "dev"
warmup = 1
repetitions = 2
[fixed]
heads = 2
head_dim = 16
dtype = "bf16"
[axes]
variant = ["cpu-reference", "cpu-standard"]
pass = ["fwd", "fwdbwd"]
seqlen = [17, 64, 97]
)";
  const std::string out = (root / "out").string();
  const Outcome run = run_flashlab("run " + suite.string() + " --out " + out + " --run-id x --devices 4,7,5");
  CHECK(run.code == 0);
  CHECK(contains(run.output, "3 devices (4,7,5), 12 rows merged in row order"));
  const std::vector<ResultRow> rows = read_results(root / "out" / "dev" / "x" / "results.csv");
  REQUIRE(rows.size() == 12);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    CHECK(rows[i].at("row_index") == std::to_string(i));
    CHECK(rows[i].at("status") == "ok");
  }
  // shard i ran with CUDA_VISIBLE_DEVICES = device i, on rows i mod 3
  const char* devices[] = {"4", "7", "5"};
  for (int i = 0; i < 3; ++i) {
    const fs::path shard = root / "out" / "dev" / ("x-shard-" + std::to_string(i) + "-3");
    CHECK(contains(read_text(shard / "run.json"), std::string("\"cuda_visible_devices\": \"") + devices[i] + "\""));
    for (const ResultRow& r : read_results(shard / "results.csv")) CHECK(std::stoi(r.at("row_index")) % 3 == i);
  }
  const std::string merged_json = read_text(root / "out" / "dev" / "x" / "run.json");
  CHECK(contains(merged_json, "\"devices\""));
  CHECK(contains(merged_json, "x-shard-2-3"));
  // resume: nothing runs again, the merged file is rewritten whole
  const Outcome again = run_flashlab("run " + suite.string() + " --out " + out + " --run-id x --devices 4,7,5 --resume");
  CHECK(again.code == 0);
  CHECK(contains(again.output, "0 rows written; 4 already present"));
  CHECK(read_results(root / "out" / "dev" / "x" / "results.csv").size() == 12);
  // shards run by hand (a SLURM array) merged afterwards: the same rows
  for (int i = 0; i < 2; ++i) {
    CHECK(run_flashlab("run " + suite.string() + " --out " + out + " --run-id s --shard " + std::to_string(i) + "/2").code == 0);
  }
  const Outcome merged = run_flashlab("merge " + (root / "out" / "dev" / "s").string() + " --shards 2");
  CHECK(merged.code == 0);
  CHECK(contains(merged.output, "merged 12 rows of 2 shards"));
  const std::vector<ResultRow> by_hand = read_results(root / "out" / "dev" / "s" / "results.csv");
  REQUIRE(by_hand.size() == 12);
  for (std::size_t i = 0; i < by_hand.size(); ++i) CHECK(by_hand[i].at("key") == rows[i].at("key"));
  const Outcome missing = run_flashlab("merge " + (root / "out" / "dev" / "s").string() + " --shards 3");
  CHECK(missing.code == 2);
  CHECK(contains(missing.output, "s-shard-0-3"));
  // refusals
  CHECK(run_flashlab("run " + suite.string() + " --out " + out + " --devices 0,0").code == 2);
  CHECK(run_flashlab("run " + suite.string() + " --out " + out + " --devices 0,").code == 2);
  CHECK(run_flashlab("run " + suite.string() + " --out " + out + " --devices 0,1 --shard 0/2").code == 2);
  fs::remove_all(root);
}

TEST_CASE("experiments/smoke.toml covers every variant the project defines, as it says", "[harness][suite]") {
  const Suite smoke = load_suite(source_path("experiments/smoke.toml"));
  std::set<std::string> variants;
  for (const RowSpec& row : smoke.rows) variants.insert(row.variant);
  CHECK(variants == std::set<std::string>(std::begin(kVariantIds), std::end(kVariantIds)));
}
