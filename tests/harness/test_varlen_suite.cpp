// Varlen suite keys end to end: a suite of listed (seqlens_q, seqlens_k) and drawn (seqlens) lengths runs on the CPU
// variants, forward and backward, and every row is a verified varlen row.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "npy_file.hpp"
#include "flashlab/harness/results.hpp"
#include "flashlab/harness/runner.hpp"
#include "flashlab/harness/suite.hpp"

using namespace flashlab;
using namespace flashlab::harness;
namespace fs = std::filesystem;

namespace {

// Awkward on purpose (STYLE.md 7): an empty sequence, a sequence without keys, lengths of 1, 17 and 129, N_k != N_q,
// GQA 2:1, a causal window; and a drawn batch with empty sequences (min = 0).
const char* const kVarlenSuite = R"(
[suite]
name = "varlen"
warmup = 0
repetitions = 1

[fixed]
pass = "fwdbwd"
heads = 4
heads_kv = 2
head_dim = 24

[axes]
variant = ["cpu-reference", "cpu-standard"]
dtype = ["fp16", "bf16"]
causal = [false, true]

[[sweep]]
fixed = { seqlens_q = [17, 0, 1, 129], seqlens_k = [33, 5, 0, 129], window = [16, -1] }

[[sweep]]
fixed = { seqlens = { tokens = 200, distribution = "loguniform", seed = 3, min = 0, max = 64 } }
)";

}  // namespace

TEST_CASE("a varlen suite runs on the CPU variants: every row ok, verified and marked varlen",
          "[harness][run][varlen]") {
  const fs::path dir = fs::temp_directory_path() / ("flashlab-test-varlen-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  RunOptions options;
  options.suite = dir / "varlen.toml";
  std::ofstream(options.suite) << kVarlenSuite;
  options.out = dir / "results";
  options.run_id = "r1";

  // the drawn batch holds an empty sequence, so both sweeps exercise one
  const Suite suite = load_suite(options.suite);
  REQUIRE(suite.rows.size() == 2 * (2 * 2 * 2));
  for (const RowSpec& row : suite.rows) {
    INFO(row.key());
    REQUIRE(row.problem.is_varlen());
    const auto& cu = row.problem.cu_seqlens_q;
    bool empty = false;
    for (std::size_t b = 0; b + 1 < cu.size(); ++b) empty = empty || cu[b + 1] == cu[b];
    CHECK(empty);
    CHECK(cu.back() == (row.index < 8 ? 17 + 1 + 129 : 200));
  }

  const int code = run_suite(options);
  CHECK(code == kExitOk);
  const auto rows = read_results(options.out / "varlen" / "r1" / "results.csv");
  REQUIRE(rows.size() == suite.rows.size());
  std::set<std::string> keys;
  for (const ResultRow& r : rows) {
    INFO(r.at("key") << " " << r.at("reason"));
    keys.insert(r.at("key"));
    CHECK(r.at("status") == "ok");
    CHECK(r.at("verify_pass") == "1");
    CHECK(r.at("varlen") == "1");
    CHECK(r.at("key").find("|cu_q=0,") != std::string::npos);
    CHECK(r.at("workspace_peak_bytes") == r.at("workspace_model_bytes"));
    for (const char* tensor : {"o", "lse", "dq", "dk", "dv"})
      CHECK(r.at(std::string("err_") + tensor + "_pass") == "1");
  }
  CHECK(keys.size() == rows.size());
  // the listed batch: B = 4, N_q and N_k its longest sequences
  const auto listed =
      std::find_if(rows.begin(), rows.end(), [](const ResultRow& r) { return r.at("row_index") == "0"; });
  REQUIRE(listed != rows.end());
  CHECK(listed->at("batch") == "4");
  CHECK(listed->at("seqlen_q") == "129");
  CHECK(listed->at("seqlen_k") == "129");

  // --save-tensors of a varlen row writes its offsets (<i4) beside its tensors and the fp64 reference
  options.run_id = "saved";
  options.filter = "variant=cpu-reference,dtype=fp16,causal=false";
  options.save_tensors = {0};
  REQUIRE(run_suite(options) == kExitOk);
  const fs::path saved = options.out / "varlen" / "saved" / "tensors" / "row-0";
  for (const auto& [name, expected] : {std::pair{"cu_seqlens_q", std::vector<std::int32_t>{0, 17, 17, 18, 147}},
                                       std::pair{"cu_seqlens_k", std::vector<std::int32_t>{0, 33, 38, 38, 167}}}) {
    INFO(name);
    const flashlab::test::NpyFile npy = flashlab::test::read_npy(saved / (std::string(name) + ".npy"));
    CHECK(npy.header.find("'descr': '<i4'") != std::string::npos);
    REQUIRE(npy.payload.size() == 4 * expected.size());
    std::vector<std::int32_t> offsets(expected.size());
    std::memcpy(offsets.data(), npy.payload.data(), 4 * expected.size());
    CHECK(offsets == expected);
  }
  CHECK(fs::exists(saved / "o_ref.npy"));
  CHECK(fs::exists(saved / "dk_ref.npy"));
  fs::remove_all(dir);
}
