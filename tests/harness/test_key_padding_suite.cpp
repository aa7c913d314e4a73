// Key padding end to end on the CPU: a suite of right- and left-padded rows (drawn and listed valid lengths, an empty
// and a full batch entry), without and with dropout, runs on cpu-reference and cpu-standard, every row verified; and
// the unpadded route the fused kernels take (row_as_run), run here with cpu-reference standing in for a variant that
// refuses padded batches: its inputs equal the padded ones at the valid tokens, its outputs match the padded run's
// (with dropout too: both forms draw the mask inside the valid interval), and both pass verification.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "flashlab/harness/backend.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/harness/results.hpp"
#include "flashlab/harness/runner.hpp"
#include "flashlab/harness/suite.hpp"
#include "row_support.hpp"
#include "flashlab/harness/verify.hpp"
#include "npy_file.hpp"

using namespace flashlab;
using namespace flashlab::harness;
using flashlab::test::row_of;
namespace fs = std::filesystem;

namespace {

// GQA 2:1, N = 97 (not a tile multiple) with a quarter of the tokens padded, and N = 17 with an unpadded, an empty
// and a one-token entry; causal and a window.
const char* const kPaddingSuite = R"(
[suite]
name = "key_padding"
warmup = 0
repetitions = 1

[fixed]
pass = "fwdbwd"
heads = 4
heads_kv = 2
head_dim = 24

[axes]
variant = ["cpu-reference", "cpu-standard"]
dtype = ["bf16"]
key_padding = ["right", "left"]
causal = [false, true]

[[sweep]]
fixed = { seqlen = 97, batch = 3, padded_fraction = 0.25, padding_seed = 1 }
[[sweep]]
fixed = { seqlen = 17, valid_lengths = [17, 0, 5, 1], window = [4, -1] }
)";

// Dropout under key padding: left padding (the side whose padded and unpadded positions differ) and right, causal
// and not, GQA 2:1; every entry but the full one padded, one empty.
const char* const kPaddingDropoutSuite = R"(
[suite]
name = "key_padding_dropout"
warmup = 0
repetitions = 1

[fixed]
pass = "fwdbwd"
heads = 4
heads_kv = 2
head_dim = 24
dropout = 0.1
dropout_seed = 5

[axes]
variant = ["cpu-reference", "cpu-standard"]
dtype = ["bf16", "fp32"]
key_padding = ["left", "right"]
causal = [false, true]

[[sweep]]
fixed = { seqlen = 61, valid_lengths = [61, 30, 0, 45] }
)";

}  // namespace

TEST_CASE("a key-padding suite runs on the CPU variants: every row ok and verified", "[harness][run][padding]") {
  const fs::path dir = fs::temp_directory_path() / ("flashlab-test-padding-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  RunOptions options;
  options.suite = dir / "key_padding.toml";
  std::ofstream(options.suite) << kPaddingSuite;
  options.out = dir / "results";
  options.run_id = "r1";
  const Suite suite = load_suite(options.suite);
  REQUIRE(suite.rows.size() == 2 * (2 * 2 * 2));

  CHECK(run_suite(options) == kExitOk);
  const auto rows = read_results(options.out / "key_padding" / "r1" / "results.csv");
  REQUIRE(rows.size() == suite.rows.size());
  for (const ResultRow& r : rows) {
    INFO(r.at("key") << " " << r.at("reason"));
    CHECK(r.at("status") == "ok");
    CHECK(r.at("verify_pass") == "1");
    CHECK(r.at("varlen") == "0");
    CHECK(r.at("unpadded") == "0");  // the CPU variants read the padded tensors and mask
    CHECK((r.at("key_padding") == "right" || r.at("key_padding") == "left"));
    CHECK(r.at("valid_tokens") == (r.at("seqlen_q") == "97" ? "218" : "23"));  // 291 - round(0.25 * 291); 17+0+5+1
    CHECK(r.at("key").find("|pad=") != std::string::npos);
    CHECK(r.at("workspace_peak_bytes") == r.at("workspace_model_bytes"));
    for (const char* tensor : {"o", "lse", "dq", "dk", "dv"})
      CHECK(r.at(std::string("err_") + tensor + "_pass") == "1");
  }

  // --save-tensors of a padded row writes its valid lengths (<i4) beside its tensors
  options.run_id = "saved";
  options.filter = "variant=cpu-reference,causal=false,key_padding=left,seqlen=17";
  const std::vector<RowSpec> picked = filter_rows(suite.rows, options.filter);
  REQUIRE(picked.size() == 1);
  options.save_tensors = {picked[0].index};
  REQUIRE(run_suite(options) == kExitOk);
  const fs::path saved = options.out / "key_padding" / "saved" / "tensors" / ("row-" + std::to_string(picked[0].index));
  const test::NpyFile npy = test::read_npy(saved / "valid_lengths.npy");
  CHECK(npy.header.find("'descr': '<i4'") != std::string::npos);
  REQUIRE(npy.payload.size() == 4 * 4);
  std::vector<std::int32_t> lengths(4);
  std::memcpy(lengths.data(), npy.payload.data(), 16);
  CHECK(lengths == std::vector<std::int32_t>{17, 0, 5, 1});
  CHECK(fs::exists(saved / "lse_ref.npy"));
  fs::remove_all(dir);
}

TEST_CASE("a key-padding suite with dropout runs on the CPU variants: every row ok and verified",
          "[harness][run][padding][dropout]") {
  const fs::path dir = fs::temp_directory_path() / ("flashlab-test-padding-dropout-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  RunOptions options;
  options.suite = dir / "key_padding_dropout.toml";
  std::ofstream(options.suite) << kPaddingDropoutSuite;
  options.out = dir / "results";
  options.run_id = "r1";
  const Suite suite = load_suite(options.suite);
  REQUIRE(suite.rows.size() == 2 * 2 * 2 * 2);

  CHECK(run_suite(options) == kExitOk);
  const auto rows = read_results(options.out / "key_padding_dropout" / "r1" / "results.csv");
  REQUIRE(rows.size() == suite.rows.size());
  std::set<std::string> sides;
  for (const ResultRow& r : rows) {
    INFO(r.at("key") << " " << r.at("reason"));
    CHECK(r.at("status") == "ok");
    CHECK(r.at("verify_pass") == "1");
    CHECK(r.at("unpadded") == "0");
    CHECK(r.at("dropout") == "0.1");
    CHECK(r.at("dropout_seed") == "5");
    CHECK(r.at("key").find("|dropout=0.1|dropout_seed=5") != std::string::npos);
    CHECK(r.at("valid_tokens") == "136");
    sides.insert(r.at("key_padding"));
    for (const char* tensor : {"o", "lse", "dq", "dk", "dv"})
      CHECK(r.at(std::string("err_") + tensor + "_pass") == "1");
  }
  CHECK(sides == std::set<std::string>{"left", "right"});
  fs::remove_all(dir);
}

TEST_CASE("a variant that refuses padded batches runs the unpadded varlen form on the same values",
          "[harness][verify][padding]") {
  // cpu-reference as a fused kernel sees it: padded batches unsupported, varlen supported
  kernels::Variant fused = *find_variant("cpu-reference");
  fused.supports = [](const Problem& p, DType, Pass) {
    return p.is_padded() ? kernels::Support::no("takes key padding as its unpadded varlen form")
                         : kernels::Support::yes();
  };
  const kernels::Variant& dense_variant = *find_variant("cpu-reference");
  auto backend = make_cpu_backend();
  SuiteSettings settings;
  for (const auto& [side, rate] : {std::pair{KeyPadding::right, 0.0}, std::pair{KeyPadding::left, 0.0},
                                   std::pair{KeyPadding::right, 0.2}, std::pair{KeyPadding::left, 0.2}}) {
    Problem p;
    p.batch = 4;
    p.heads = 4;
    p.heads_kv = 2;
    p.seqlen_q = p.seqlen_k = 33;
    p.head_dim = 16;
    p.causal = true;
    p.key_padding = side;
    p.valid_lengths = {33, 0, 7, 20};
    p.dropout = {rate, 11, 0};
    const RowSpec row = row_of("cpu-reference", Pass::fwdbwd, DType::bf16, p);
    INFO(p.describe());

    kernels::Support support;
    const std::optional<RowSpec> dense = row_as_run(row, dense_variant, support);
    REQUIRE(dense.has_value());
    CHECK(dense->token_source.empty());
    const std::optional<RowSpec> unpadded = row_as_run(row, fused, support);
    REQUIRE(unpadded.has_value());
    CHECK(unpadded->problem.is_varlen());
    CHECK(unpadded->problem.cu_seqlens_q == std::vector<std::int64_t>{0, 33, 33, 40, 60});
    CHECK(unpadded->problem.dropout == p.dropout);
    CHECK(unpadded->token_source == p.padded_tokens());

    // each form: run, verify against its own fp64 check, keep O, LSE, dK of every head
    struct Outputs {
      std::vector<std::vector<double>> o, lse, dk;
    };
    auto run = [&](const RowSpec& r) {
      backend->prepare(r, 5);
      dense_variant.forward(backend->params(), backend->context());
      dense_variant.backward(backend->params(), backend->context());
      CheckSubject subject;
      subject.path = dense_variant.data_path(r.problem, r.dtype, {});
      subject.baseline_path = find_variant("cpu-standard")->data_path(r.problem, r.dtype, {});
      const InputSpec inputs{5, r.distribution, r.dtype, r.token_source};
      const Expectation expected(r.problem, r.dtype, r.pass, inputs, choose_groups(r.problem, r.pass, settings),
                                 subject);
      const Verification v =
          expected.check([&](const std::string& t, std::int64_t b, std::int64_t h,
                             const std::vector<std::int64_t>& rows) { return backend->fetch(t, b, h, &rows); });
      INFO(v.failure);
      CHECK(v.pass);
      CHECK(v.verified_heads.rfind("all", 0) == 0);
      Outputs out;
      for (std::int64_t b = 0; b < p.batch; ++b) {
        for (std::int64_t h = 0; h < p.heads; ++h) {
          out.o.push_back(backend->fetch("o", b, h));
          out.lse.push_back(backend->fetch("lse", b, h));
        }
        for (std::int64_t g = 0; g < p.heads_kv; ++g) out.dk.push_back(backend->fetch("dk", b, g));
      }
      backend->release();
      return out;
    };
    const Outputs a = run(*dense), z = run(*unpadded);
    // the valid rows of the padded run are the unpadded run's rows (the same values in, the same fp64 sums rounded
    // to bf16); its padded rows are fully masked
    std::int64_t differ = 0, padded_wrong = 0;
    for (std::int64_t b = 0; b < p.batch; ++b) {
      const std::int64_t v = p.valid_lengths[static_cast<std::size_t>(b)];
      const std::int64_t f = side == KeyPadding::left ? p.seqlen_q - v : 0;
      for (std::int64_t h = 0; h < p.heads; ++h) {
        const auto at = static_cast<std::size_t>(b * p.heads + h);
        for (std::int64_t n = 0; n < p.seqlen_q; ++n) {
          const bool valid = n >= f && n < f + v;
          const double lse = a.lse[at][static_cast<std::size_t>(n)];
          if (valid) {
            differ += lse != z.lse[at][static_cast<std::size_t>(n - f)];
          } else {
            padded_wrong += !(std::isinf(lse) && lse < 0);
          }
          for (std::int64_t c = 0; c < p.head_dim; ++c) {
            const double o = a.o[at][static_cast<std::size_t>(n * p.head_dim + c)];
            if (valid) {
              differ += o != z.o[at][static_cast<std::size_t>((n - f) * p.head_dim + c)];
            } else {
              padded_wrong += o != 0.0;
            }
          }
        }
      }
      for (std::int64_t g = 0; g < p.heads_kv; ++g) {
        const auto at = static_cast<std::size_t>(b * p.heads_kv + g);
        for (std::int64_t n = 0; n < p.seqlen_k; ++n) {
          for (std::int64_t c = 0; c < p.head_dim; ++c) {
            const double dk = a.dk[at][static_cast<std::size_t>(n * p.head_dim + c)];
            if (n >= f && n < f + v) {
              differ += std::abs(dk - z.dk[at][static_cast<std::size_t>((n - f) * p.head_dim + c)]) >
                        1e-2 * std::abs(dk) + 1e-6;
            } else {
              padded_wrong += dk != 0.0;
            }
          }
        }
      }
    }
    CHECK(differ == 0);
    CHECK(padded_wrong == 0);
  }
}
