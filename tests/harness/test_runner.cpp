// The runner end to end on the CPU variants: rows and statuses, workspace accounting, verification, resume
// after a killed process, shards, saved tensors.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <cstring>
#include <iterator>
#include <set>
#include <thread>

#include "catch.hpp"
#include "npy_file.hpp"
#include "flashlab/harness/backend.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/harness/results.hpp"
#include "flashlab/harness/run_info.hpp"
#include "flashlab/harness/runner.hpp"
#include "flashlab/harness/verify.hpp"
#include "row_support.hpp"

using namespace flashlab;
using namespace flashlab::harness;
using flashlab::test::row_of;
namespace fs = std::filesystem;

namespace {

fs::path fresh_directory(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("flashlab-test-" + name + "-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

fs::path write_suite(const fs::path& dir, const std::string& text) {
  const fs::path path = dir / "suite.toml";
  std::ofstream(path) << text;
  return path;
}

const char* kSmallSuite = R"(
[suite]
name = "small"
warmup = 1
repetitions = 2

[fixed]
batch = 2
heads = 4
head_dim = 16

[axes]
variant = ["cpu-reference", "cpu-standard", "flash2"]
pass = ["fwd", "fwdbwd"]
dtype = ["fp16", "bf16", "fp8_e4m3"]
seqlen = [17, 64]
heads_kv = [2, 3]
)";

std::vector<Problem> awkward_problems() {
  std::vector<Problem> out;
  Problem gqa;
  gqa.batch = 2;
  gqa.heads = 4;
  gqa.heads_kv = 1;
  gqa.seqlen_q = 17;
  gqa.seqlen_k = 33;
  gqa.head_dim = 24;
  gqa.causal = true;
  out.push_back(gqa);
  Problem varlen = Problem::varlen(2, 2, 16, {5, 0, 31}, {7, 3, 31});
  varlen.window = {4, 2};
  out.push_back(varlen);
  return out;
}

}  // namespace

TEST_CASE("CPU variants take exactly their modelled workspace", "[harness][memory]") {
  auto backend = make_cpu_backend();
  for (const char* id : {"cpu-reference", "cpu-standard"}) {
    const kernels::Variant* v = find_variant(id);
    REQUIRE(v != nullptr);
    for (const Problem& p : awkward_problems()) {
      for (DType dtype : {DType::fp64, DType::fp16, DType::bf16}) {
        for (Pass pass : {Pass::fwd, Pass::bwd}) {
          INFO(id << " " << name(dtype) << " " << name(pass) << " " << p.describe());
          backend->workspace().reset_peak();
          backend->prepare(row_of(id, pass, dtype, p), 3);
          v->forward(backend->params(), backend->context());
          if (pass == Pass::fwd) {
            CHECK(backend->workspace().peak_bytes() == v->workspace_model(p, dtype, Pass::fwd));
          } else {
            backend->workspace().reset_peak();
            v->backward(backend->params(), backend->context());
            CHECK(backend->workspace().peak_bytes() == v->workspace_model(p, dtype, Pass::bwd));
          }
          CHECK(backend->workspace().live_bytes() == 0);
          backend->release();
        }
      }
    }
  }
}

// The check's view of a CPU variant: its data path, and cpu-standard as the baseline of a non-materializing one.
CheckSubject subject_of(const kernels::Variant& v, const Problem& p, DType dtype) {
  CheckSubject subject;
  subject.path = v.data_path(p, dtype, {});
  subject.materializing = v.materializes;
  if (!v.materializes) subject.baseline_path = find_variant("cpu-standard")->data_path(p, dtype, {});
  return subject;
}

// A GPU row whose baseline cannot run (standard out of memory) gets cpu-standard over the chosen groups only while
// that stays cheap: at N = 32768 one group is 2.7e11 flops, and the row is judged by its bound with the reason said
// (memory_scaling's N = 131072 rows took minutes of CPU each before).
TEST_CASE("a row whose baseline would cost too much on the CPU is judged by its bound", "[harness][verify]") {
  Problem p;
  p.seqlen_q = p.seqlen_k = 32768;
  p.head_dim = 64;
  SuiteSettings settings;
  const GroupChoice choice = choose_groups(p, Pass::fwd, settings);
  REQUIRE_FALSE(choice.all_rows);  // sampled rows: the reference itself stays cheap
  const Expectation expected(p, DType::bf16, Pass::fwd, {3, Distribution::normal, DType::bf16}, choice,
                             subject_of(*find_variant("cpu-reference"), p, DType::bf16));
  const FetchOutput zeros = [&](const std::string& t, std::int64_t, std::int64_t, const std::vector<std::int64_t>& rows) {
    return std::vector<double>(rows.size() * (t == "lse" ? 1 : 64), 0.0);
  };
  const Verification v = expected.check(zeros);
  CHECK(v.verified_heads.find("no baseline (standard could not run; cpu-standard over the groups would be 275 GFLOP)") !=
        std::string::npos);
  for (const auto& [tensor, e] : v.tensors) CHECK_FALSE(e.baseline.has_value());
  CHECK_FALSE(v.pass);  // zeros are far outside the bound: the bound still judges
}

TEST_CASE("verification passes real outputs within their bounds and fails wrong ones", "[harness][verify]") {
  auto backend = make_cpu_backend();
  SuiteSettings settings;
  std::vector<Problem> problems = awkward_problems();
  Problem single_key;  // window (0, 0): every row sees one key, O = V exactly
  single_key.heads = single_key.heads_kv = 2;
  single_key.seqlen_q = single_key.seqlen_k = 33;
  single_key.head_dim = 16;
  single_key.window = {0, 0};
  problems.push_back(single_key);
  problems.push_back(Problem::varlen(2, 1, 16, {9, 4, 0}, {0, 12, 5}));  // a sequence without keys, one without queries
  for (const Problem& p : problems) {
    for (const char* id : {"cpu-reference", "cpu-standard"}) {
      for (const DType dtype : {DType::bf16, DType::fp32}) {
        INFO(id << " " << name(dtype) << " " << p.describe());
        const kernels::Variant* v = find_variant(id);
        backend->prepare(row_of(id, Pass::fwdbwd, dtype, p), 9);
        v->forward(backend->params(), backend->context());
        v->backward(backend->params(), backend->context());
        const Expectation expected(p, dtype, Pass::fwdbwd, {9, Distribution::normal, dtype},
                                   choose_groups(p, Pass::fwdbwd, settings), subject_of(*v, p, dtype));
        const FetchOutput fetch = [&](const std::string& t, std::int64_t b, std::int64_t h,
                                      const std::vector<std::int64_t>& rows) { return backend->fetch(t, b, h, &rows); };
        const Verification good = expected.check(fetch);
        CHECK(good.verified_heads == (v->materializes ? "all; no baseline (materializing): the bound judges"
                                                      : "all; baseline: cpu-standard"));
        INFO(good.failure);
        CHECK(good.pass);
        REQUIRE(good.tensors.size() == 5);
        for (const auto& [tensor, e] : good.tensors) {
          INFO(tensor << " error " << e.error.max_abs << " bound " << e.bound);
          CHECK(std::isfinite(e.error.max_abs));
          CHECK(e.above_bound == 0);
          CHECK(e.bound >= e.error.max_abs);
          CHECK(e.bound_prob <= e.bound);
          CHECK(e.baseline.has_value() == !v->materializes);
          CHECK(e.upcast.has_value());
        }
        // one element of dV off by half the tensor's scale must exceed its bound (and the k = 3 rule)
        const FetchOutput wrong = [&](const std::string& t, std::int64_t b, std::int64_t h,
                                      const std::vector<std::int64_t>& rows) {
          std::vector<double> values = backend->fetch(t, b, h, &rows);
          if (t == "dv" && h == 0 && !values.empty()) values[0] += 0.5;  // each sequence that has keys
          return values;
        };
        const Verification bad = expected.check(wrong);
        CHECK_FALSE(bad.pass);
        CHECK_FALSE(bad.tensors.at("dv").pass);
        CHECK(bad.tensors.at("dv").above_bound >= 1);
        CHECK(bad.failure.find("dv") != std::string::npos);
        CHECK(bad.tensors.at("o").pass);
        backend->release();
      }
    }
  }
}

TEST_CASE("the bounds hold on inputs that stress the numerics, and stay finite", "[harness][verify]") {
  auto backend = make_cpu_backend();
  SuiteSettings settings;
  Problem p;
  p.heads = 2;
  p.heads_kv = 1;
  p.seqlen_q = 70;
  p.seqlen_k = 300;
  p.head_dim = 32;
  p.causal = true;
  for (const Distribution distribution : kDistributions) {
    for (const char* id : {"cpu-reference", "cpu-standard"}) {
      for (const DType dtype : {DType::bf16, DType::fp16}) {
        INFO(id << " " << name(dtype) << " " << name(distribution));
        const kernels::Variant* v = find_variant(id);
        RowSpec row = row_of(id, Pass::fwdbwd, dtype, p);
        row.distribution = distribution;
        backend->prepare(row, 11);
        v->forward(backend->params(), backend->context());
        v->backward(backend->params(), backend->context());
        const Expectation expected(p, dtype, Pass::fwdbwd, {11, distribution, dtype},
                                   choose_groups(p, Pass::fwdbwd, settings), subject_of(*v, p, dtype));
        const Verification result =
            expected.check([&](const std::string& t, std::int64_t b, std::int64_t h,
                               const std::vector<std::int64_t>& rows) { return backend->fetch(t, b, h, &rows); });
        INFO(result.failure);
        CHECK(result.pass);
        for (const auto& [tensor, e] : result.tensors) {
          INFO(tensor << " error " << e.error.max_abs << " bound " << e.bound);
          CHECK(e.above_bound == 0);
          CHECK(e.bound >= 0);
          CHECK(e.bound_prob >= 0);
          CHECK(e.bound_prob <= e.bound);
        }
        backend->release();
      }
    }
  }
}

TEST_CASE("a run writes one row per expanded row, with statuses and reasons", "[harness][run]") {
  const fs::path dir = fresh_directory("run");
  RunOptions options;
  options.suite = write_suite(dir, kSmallSuite);
  options.out = dir / "results";
  options.run_id = "r1";
  const int code = run_suite(options);
  const auto rows = read_results(options.out / "small" / "r1" / "results.csv");
  REQUIRE(rows.size() == 3 * 2 * 3 * 2 * 2);
  std::set<std::string> keys;
  int ok = 0;
  for (const ResultRow& r : rows) {
    keys.insert(r.at("key"));
    const std::string& status = r.at("status");
    if (r.at("variant") == "flash2") {
      // a variant the project defines that this build lacks (or, in a CUDA build, one with no GPU here)
      if (!find_variant("flash2")) {
        CHECK(status == "unsupported");
        CHECK(r.at("reason").find("flash2") != std::string::npos);
      }
    } else if (r.at("heads_kv") == "3") {
      CHECK(status == "error");
      CHECK(r.at("reason").find("heads_kv") != std::string::npos);
    } else if (r.at("dtype") == "fp8_e4m3") {
      CHECK(status == "unsupported");
    } else {
      CHECK(status == "ok");
      CHECK(r.at("verify_pass") == "1");
      CHECK(std::stod(r.at("time_median_ms")) > 0);
      CHECK(std::stod(r.at("tflops")) > 0);
      CHECK(r.at("workspace_peak_bytes") == r.at("workspace_model_bytes"));
      ++ok;
    }
  }
  CHECK(ok == 2 * 2 * 2 * 2);
  CHECK(keys.size() == rows.size());
  CHECK(code == kExitRowsFailed);  // the heads_kv = 3 rows are errors
  const fs::path run_dir = options.out / "small" / "r1";
  REQUIRE(fs::exists(run_dir / "run.json"));
  // provenance: the host, the build, the git state and a copy of the suite as it ran
  std::ifstream in(run_dir / "run.json");
  const std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* part : {"\"cpu_model\"", "\"cores\"", "\"memory_bytes\"", "\"os\"", "\"cxx_compiler\"",
                           "\"cxx_flags\"", "\"eigen\"", "\"git_dirty\"", "\"tile_sweep\"",
                           "\"suite_copy\": \"suite.toml\""}) {
    INFO(part);
    CHECK(json.find(part) != std::string::npos);
  }
  CHECK(json.find("\"cxx_compiler\": \"\"") == std::string::npos);  // filled in by the build
  // the commit the binary was built from: a full hash (the tests run from a git checkout), maybe "+dirty", and the
  // same one run.json's build block records
  const std::string built = harness::build_commit();
  REQUIRE(built.size() >= 40);
  CHECK(built.substr(0, 40).find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK((built.size() == 40 || built.substr(40) == "+dirty"));
  const std::size_t build_at = json.find("\"build\": {");
  REQUIRE(build_at != std::string::npos);
  const std::string build_block = json.substr(build_at, json.find('}', build_at) - build_at);
  CHECK(build_block.find("\"git_commit\": \"" + built + "\"") != std::string::npos);
  std::ifstream copy(run_dir / "suite.toml"), original(options.suite);
  const std::string copied((std::istreambuf_iterator<char>(copy)), std::istreambuf_iterator<char>());
  const std::string text((std::istreambuf_iterator<char>(original)), std::istreambuf_iterator<char>());
  CHECK(copied == text);
  CHECK_FALSE(text.empty());
  fs::remove_all(dir);
}

TEST_CASE("shards are disjoint and together complete", "[harness][run]") {
  const fs::path dir = fresh_directory("shards");
  const fs::path suite = write_suite(dir, kSmallSuite);
  std::multiset<std::string> keys;
  for (int i = 0; i < 3; ++i) {
    RunOptions options;
    options.suite = suite;
    options.out = dir / "results";
    options.shard = std::to_string(i) + "/3";
    options.filter = "dtype=fp8_e4m3,heads_kv=2";  // quick rows (unsupported); the split is what is tested
    options.run_id = "shards";  // one id for all shards: each writes its own folder, shards-shard-i-3
    CHECK(run_suite(options) == kExitOk);
    const fs::path folder = options.out / "small" / ("shards-shard-" + std::to_string(i) + "-3");
    for (const ResultRow& r : read_results(folder / "results.csv")) keys.insert(r.at("key"));
  }
  CHECK(keys.size() == 3 * 2 * 2);  // variants x passes x lengths
  CHECK(std::set<std::string>(keys.begin(), keys.end()).size() == keys.size());
  fs::remove_all(dir);
}

TEST_CASE("a run id that is not one plain name, or a filter that matches nothing, is refused", "[harness][run]") {
  const fs::path dir = fresh_directory("refusals");
  RunOptions options;
  options.suite = write_suite(dir, kSmallSuite);
  options.out = dir / "results";
  options.filter = "dtype=fp8_e4m3";
  for (const char* id : {"../escape", "a/b", "..", ".", "with space"}) {
    INFO(id);
    options.run_id = id;
    CHECK(run_suite(options) == kExitUsage);
  }
  CHECK_FALSE(fs::exists(dir / "escape"));
  CHECK_FALSE(fs::exists(options.out / "small" / "a"));
  options.run_id = "ok";
  options.filter = "variant=cpu-reference,dtype=fp32";  // the suite has no fp32 rows
  CHECK(run_suite(options) == kExitUsage);
  CHECK_FALSE(fs::exists(options.out / "small" / "ok" / "results.csv"));
  fs::remove_all(dir);
}

TEST_CASE("a suite naming a variant no build defines is refused before anything runs", "[harness][run]") {
  const fs::path dir = fresh_directory("unknown-variant");
  std::string text = kSmallSuite;
  const std::string listed = R"(variant = ["cpu-reference", "cpu-standard", "flash2"])";
  text.replace(text.find(listed), listed.size(), R"(variant = ["cpu-reference", "cpu-refrence[x=1]"])");
  RunOptions options;
  options.suite = write_suite(dir, text.c_str());
  options.out = dir / "results";
  options.run_id = "r";
  CHECK(run_suite(options) == kExitUsage);
  CHECK_FALSE(fs::exists(options.out / "small"));
  options.dry_run = true;
  CHECK(run_suite(options) == kExitUsage);
  CHECK(unknown_variant_ids({"cpu-reference", "cpu-refrence[x=1]", "flash2[br=64,bc=64]", "cpu-refrence"}) ==
        std::vector<std::string>{"cpu-refrence"});
  fs::remove_all(dir);
}

TEST_CASE("the list of variant ids is the registry's", "[harness][registry]") {
  std::set<std::string> listed(std::begin(kVariantIds), std::end(kVariantIds)), registered;
  for (const kernels::Variant& v : variants()) registered.insert(v.id);
  for (const std::string& id : registered) CHECK(listed.count(id) == 1);
  // a CUDA build registers every variant
  if (!kernels::gpu_variants().empty()) CHECK(registered == listed);
  CHECK(variant_id_list() == "cpu-reference, cpu-standard, standard, flash2, flash3");
}

TEST_CASE("resume refuses a suite edited since the run started, and leaves the run as it was", "[harness][run]") {
  const fs::path dir = fresh_directory("resume-edited");
  RunOptions options;
  options.suite = write_suite(dir, kSmallSuite);
  options.out = dir / "results";
  options.run_id = "r";
  options.filter = "dtype=fp8_e4m3,heads_kv=2";  // quick rows
  CHECK(run_suite(options) == kExitOk);
  const fs::path csv = options.out / "small" / "r" / "results.csv";
  const auto before = read_results(csv);
  options.resume = true;
  CHECK(run_suite(options) == kExitOk);  // unchanged: resumes (nothing left to run)
  std::string edited = kSmallSuite;
  edited.replace(edited.find("repetitions = 2"), 15, "repetitions = 3");
  write_suite(dir, edited);
  CHECK(run_suite(options) == kExitUsage);
  CHECK(read_results(csv) == before);
  fs::remove_all(dir);
}

TEST_CASE("resume after the process is killed mid-run loses and duplicates nothing", "[harness][run]") {
  const fs::path dir = fresh_directory("resume");
  // cpu-reference rows at N = 1024 take long enough to kill the run between rows.
  const fs::path suite = write_suite(dir, R"(
[suite]
name = "slow"
warmup = 0
repetitions = 3
verify = "none"
[fixed]
heads = 8
head_dim = 64
variant = "cpu-reference"
pass = "fwdbwd"
dtype = "bf16"
[axes]
seqlen = [512, 1024]
batch = [1, 2, 3, 4]
)");
  const fs::path csv = dir / "results" / "slow" / "killed" / "results.csv";
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    const std::string out = (dir / "results").string(), path = suite.string();
    execl(FLASHLAB_BINARY, FLASHLAB_BINARY, "run", path.c_str(), "--out", out.c_str(), "--run-id", "killed",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  // kill it once two rows are on disk
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::size_t written = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    written = fs::exists(csv) ? read_results(csv).size() : 0;
    if (written >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  REQUIRE(written >= 2);
  const std::size_t before = read_results(csv).size();
  CHECK(before < 8);  // killed before the end

  RunOptions options;
  options.suite = suite;
  options.out = dir / "results";
  options.resume = true;  // picks the latest run of the suite: "killed"
  CHECK(run_suite(options) == kExitOk);
  const auto rows = read_results(csv);
  std::set<std::string> keys;
  for (const ResultRow& r : rows) {
    keys.insert(r.at("key"));
    CHECK(r.at("status") == "ok");
  }
  CHECK(rows.size() == 8);
  CHECK(keys.size() == 8);
  fs::remove_all(dir);
}

namespace {

// The payload of an .npy file as doubles ('<f8' or '<f4'), and its header.
std::vector<double> npy_values(const fs::path& file, std::string* header_out = nullptr) {
  const flashlab::test::NpyFile npy = flashlab::test::read_npy(file);
  if (header_out) *header_out = npy.header;
  const bool f8 = npy.header.find("'descr': '<f8'") != std::string::npos;
  std::vector<double> values;
  for (std::size_t at = 0; at + (f8 ? 8 : 4) <= npy.payload.size(); at += f8 ? 8 : 4) {
    if (f8) {
      double x;
      std::memcpy(&x, npy.payload.data() + at, 8);
      values.push_back(x);
    } else {
      float x;
      std::memcpy(&x, npy.payload.data() + at, 4);
      values.push_back(x);
    }
  }
  return values;
}

}  // namespace

TEST_CASE("save-tensors writes the rows' tensors and their fp64 reference as .npy, for a list or ranges of rows", "[harness][run]") {
  const fs::path dir = fresh_directory("save");
  RunOptions options;
  options.suite = write_suite(dir, kSmallSuite);
  options.out = dir / "results";
  options.run_id = "r";
  options.filter = "variant=cpu-standard,dtype=bf16,seqlen=17,heads_kv=2";  // its fwd and fwdbwd rows
  run_suite(options);
  std::map<std::string, std::int64_t> index_of;  // by pass
  for (const ResultRow& r : read_results(options.out / "small" / "r" / "results.csv")) {
    index_of[r.at("pass")] = std::stoll(r.at("row_index"));
  }
  REQUIRE(index_of.size() == 2);
  const std::int64_t index = index_of.at("fwdbwd"), forward = index_of.at("fwd");
  fs::remove_all(options.out);
  options.save_tensors = parse_row_list(std::to_string(forward) + "," + std::to_string(index) + "-" + std::to_string(index));
  run_suite(options);
  const fs::path tensors = options.out / "small" / "r" / "tensors" / ("row-" + std::to_string(index));
  for (const char* t : {"q", "k", "v", "o", "lse", "d_out", "dq", "dk", "dv"}) {
    INFO(t);
    std::string header;
    REQUIRE(fs::exists(tensors / (std::string(t) + ".npy")));
    (void)npy_values(tensors / (std::string(t) + ".npy"), &header);
    CHECK(header.substr(1, 5) == "NUMPY");
    CHECK(header.find("'descr': '<f4'") != std::string::npos);  // bf16 widened to float32
  }
  CHECK(fs::file_size(tensors / "q.npy") == 128 + 2 * 17 * 4 * 16 * 4);
  // the fp64 reference of the same inputs: the row's bf16 outputs lie within bf16 rounding of it
  for (const char* t : {"o", "dq", "dk", "dv"}) {
    INFO(t);
    std::string header;
    const std::vector<double> exact = npy_values(tensors / (std::string(t) + "_ref.npy"), &header);
    CHECK(header.find("'descr': '<f8'") != std::string::npos);
    const std::vector<double> got = npy_values(tensors / (std::string(t) + ".npy"));
    REQUIRE(exact.size() == got.size());
    double worst = 0, scale = 0;
    for (std::size_t e = 0; e < got.size(); ++e) {
      worst = std::max(worst, std::abs(got[e] - exact[e]));
      scale = std::max(scale, std::abs(exact[e]));
    }
    CHECK(scale > 0);
    CHECK(worst <= 0.05 * scale);  // bf16 (u = 2^-8) and its propagation, not another problem's values
    CHECK(worst > 0);              // the outputs are rounded, the reference is not
  }
  CHECK(fs::exists(tensors / "lse_ref.npy"));
  CHECK_FALSE(fs::exists(tensors / "cu_seqlens_q.npy"));  // a dense problem
  // the forward row is saved too, without gradients, and no other row
  std::set<std::string> saved;
  for (const auto& entry : fs::directory_iterator(options.out / "small" / "r" / "tensors")) {
    saved.insert(entry.path().filename().string());
  }
  CHECK(saved == std::set<std::string>{"row-" + std::to_string(forward), "row-" + std::to_string(index)});
  const fs::path forward_dir = options.out / "small" / "r" / "tensors" / ("row-" + std::to_string(forward));
  CHECK(fs::exists(forward_dir / "o_ref.npy"));
  CHECK_FALSE(fs::exists(forward_dir / "dq_ref.npy"));

  // a row outside the suite is refused before anything runs
  options.run_id = "outside";
  options.save_tensors = {0, 9999};
  CHECK(run_suite(options) == kExitUsage);
  CHECK_FALSE(fs::exists(options.out / "small" / "outside"));
  fs::remove_all(dir);
}

TEST_CASE("parse_row_list takes single rows, lists and ranges and refuses anything else", "[harness][run]") {
  CHECK(parse_row_list("3") == std::set<std::int64_t>{3});
  CHECK(parse_row_list("0,5,7") == std::set<std::int64_t>{0, 5, 7});
  CHECK(parse_row_list("10-12,4") == std::set<std::int64_t>{4, 10, 11, 12});
  for (const char* bad : {"", "a", "3,", "-1", "5-3", "1-", "1.5", "0-200000"}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_row_list(bad), std::invalid_argument);
  }
}

TEST_CASE("variant options are parsed, checked and applied", "[harness][registry]") {
  const VariantChoice plain = resolve_variant("cpu-standard");
  REQUIRE(plain.variant != nullptr);
  CHECK(plain.given.empty());
  const VariantChoice unknown = resolve_variant("cpu-standard[deterministic=1]");
  CHECK(unknown.variant == nullptr);
  CHECK(unknown.error.find("unknown option 'deterministic'") != std::string::npos);
  CHECK(unknown.error.find("options of cpu-standard: none") != std::string::npos);
  const VariantChoice missing = resolve_variant("no-such[x=1]");
  CHECK(missing.variant == nullptr);
  CHECK(missing.error.find("no variant 'no-such'") != std::string::npos);
  const VariantChoice unclosed = resolve_variant("cpu-standard[x=1");
  CHECK(unclosed.variant == nullptr);
  kernels::AttentionParams params;
  params.options.deterministic = true;
  apply_options(plain, params);
  CHECK_FALSE(params.options.deterministic);
  if (const kernels::Variant* flash2 = find_variant("flash2")) {  // CUDA builds
    const VariantChoice on = resolve_variant("flash2[deterministic=1]");
    REQUIRE(on.variant == flash2);
    apply_options(on, params);
    CHECK(params.options.deterministic);
    CHECK(resolve_variant("flash2[deterministic]").options.deterministic);  // a flag alone means 1
    CHECK(resolve_variant("flash2[deterministic=2]").error.find("must be 0 or 1") != std::string::npos);
    CHECK(resolve_variant("flash2[deterministic=1,deterministic=0]").error.find("given twice") != std::string::npos);

    const VariantChoice tile = resolve_variant("flash2[br=128,bc=64]");
    REQUIRE(tile.variant == flash2);
    apply_options(tile, params);
    CHECK(params.options.block_m == 128);
    CHECK(params.options.block_n == 64);
    CHECK_FALSE(params.options.deterministic);
    apply_options(on, params);
    CHECK(params.options.block_m == 0);
    CHECK(params.options.block_n == 0);
    CHECK(resolve_variant("flash2[br=128]").error.find("br and bc go together") != std::string::npos);
    CHECK(resolve_variant("flash2[br=0,bc=64]").error.find("positive integer") != std::string::npos);
    CHECK(resolve_variant("flash2[br=12x,bc=64]").error.find("positive integer") != std::string::npos);
    CHECK(resolve_variant("flash2[br=99999999,bc=64]").error.find("positive integer") != std::string::npos);
  }
}

TEST_CASE("fp64 rows run on the CPU variants and are verified, the reference's own rounding added to each bound", "[harness][run]") {
  const fs::path dir = fresh_directory("fp64");
  RunOptions options;
  options.suite = write_suite(dir, R"([suite]
name = "f64"
warmup = 0
repetitions = 1
[fixed]
pass = "fwdbwd"
heads = 4
heads_kv = 2
head_dim = 32
dtype = "fp64"
[axes]
variant = ["cpu-reference", "cpu-standard", "flash2"]
seqlen = [17, 129]
causal = [false, true]
distribution = ["normal", "outliers", "large_logits"]
)");
  options.out = dir / "results";
  options.run_id = "r";
  CHECK(run_suite(options) == kExitOk);
  const auto rows = read_results(options.out / "f64" / "r" / "results.csv");
  REQUIRE(rows.size() == 3 * 2 * 2 * 3);
  int ok = 0;
  for (const ResultRow& r : rows) {
    INFO(r.at("key") << " " << r.at("reason"));
    CHECK(r.at("dtype") == "fp64");
    if (r.at("variant") == "flash2") {  // no fp64 GPU kernel (or no GPU variant in this build)
      CHECK(r.at("status") == "unsupported");
      continue;
    }
    CHECK(r.at("status") == "ok");
    CHECK(r.at("verify_pass") == "1");
    for (const char* t : {"o", "lse", "dq", "dk", "dv"}) {
      CHECK(r.at(std::string("err_") + t + "_bound_pass") == "1");
      CHECK(std::stod(r.at(std::string("err_") + t + "_bound")) > 0);
      // normal inputs: O at fp64's rounding; LSE is stored in fp32 (the API's type), and the backward recomputes P
      // from it, so LSE and the gradients err at fp32's (large_logits cancel in dS further; its bounds say so)
      if (r.at("distribution") == "normal") {
        CHECK(std::stod(r.at(std::string("err_") + t + "_rel_fro")) < (std::string(t) == "o" ? 1e-12 : 1e-6));
      }
    }
    ++ok;
  }
  CHECK(ok == 2 * 2 * 2 * 3);
  fs::remove_all(dir);
}

TEST_CASE("verification with dropout: the same mask passes, another mask fails", "[harness][verify][dropout]") {
  auto backend = make_cpu_backend();
  SuiteSettings settings;
  for (Problem p : awkward_problems()) {
    p.dropout = {0.2, 5, 1};
    Problem other_mask = p;
    other_mask.dropout.seed = 6;
    for (const char* id : {"cpu-reference", "cpu-standard"}) {
      for (const DType dtype : {DType::bf16, DType::fp32}) {
        INFO(id << " " << name(dtype) << " " << p.describe());
        const kernels::Variant* v = find_variant(id);
        REQUIRE(v->supports(p, dtype, Pass::fwdbwd).ok);
        const Expectation expected(p, dtype, Pass::fwdbwd, {9, Distribution::normal, dtype},
                                   choose_groups(p, Pass::fwdbwd, settings), subject_of(*v, p, dtype));
        const FetchOutput fetch = [&](const std::string& t, std::int64_t b, std::int64_t h,
                                      const std::vector<std::int64_t>& rows) { return backend->fetch(t, b, h, &rows); };
        backend->prepare(row_of(id, Pass::fwdbwd, dtype, p), 9);
        v->forward(backend->params(), backend->context());
        v->backward(backend->params(), backend->context());
        const Verification good = expected.check(fetch);
        INFO(good.failure);
        CHECK(good.pass);
        for (const auto& [tensor, e] : good.tensors) {
          INFO(tensor << " error " << e.error.max_abs << " bound " << e.bound);
          CHECK(e.above_bound == 0);
        }
        backend->release();
        backend->prepare(row_of(id, Pass::fwdbwd, dtype, other_mask), 9);
        v->forward(backend->params(), backend->context());
        v->backward(backend->params(), backend->context());
        const Verification bad = expected.check(fetch);
        CHECK_FALSE(bad.pass);
        CHECK_FALSE(bad.tensors.at("o").pass);
        CHECK(bad.tensors.at("lse").pass);  // the LSE does not depend on the mask
        backend->release();
      }
    }
  }
}

TEST_CASE("a suite with dropout runs on the CPU variants and records it", "[harness][run][dropout]") {
  const fs::path dir = fresh_directory("dropout");
  RunOptions options;
  options.suite = write_suite(dir, R"(
[suite]
name = "dropout"
warmup = 0
repetitions = 1

[fixed]
batch = 2
heads = 2
head_dim = 16
seqlen = 33
dropout_seed = 7

[axes]
variant = ["cpu-reference", "cpu-standard", "standard", "flash3"]
pass = ["fwdbwd"]
dtype = ["fp16"]
dropout = [0.0, 0.17]
)");
  options.out = dir / "results";
  options.run_id = "r";
  CHECK(run_suite(options) == kExitOk);
  const auto rows = read_results(options.out / "dropout" / "r" / "results.csv");
  REQUIRE(rows.size() == 8);
  int passed_with_dropout = 0;
  for (const auto& row : rows) {
    INFO(row.at("variant") << " dropout " << row.at("dropout") << ": " << row.at("status") << " " << row.at("reason"));
    const bool dropout = row.at("dropout") == "0.17";
    CHECK(row.at("dropout_seed") == "7");
    if (row.at("variant").rfind("cpu-", 0) == 0) {
      CHECK(row.at("status") == "ok");
      CHECK(row.at("verify_pass") == "1");
      passed_with_dropout += dropout ? 1 : 0;
    } else if (dropout) {
      CHECK(row.at("status") == "unsupported");
    }
  }
  CHECK(passed_with_dropout == 2);
  fs::remove_all(dir);
}
