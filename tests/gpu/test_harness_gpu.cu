// The harness on the GPU: the device allocator's accounting, and a suite through run_suite with the standard
// variant (verified under the baseline rule, workspace equal to the model, traffic measured, OOM as a row).
#include <cuda_runtime.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include <cmath>

#include "catch.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/harness/memory.hpp"
#include "flashlab/harness/results.hpp"
#include "flashlab/harness/runner.hpp"

using namespace flashlab;
using namespace flashlab::harness;
namespace fs = std::filesystem;

TEST_CASE("the device allocator counts live and peak bytes and reuses freed blocks", "[gpu][harness]") {
  DeviceAllocator allocator;
  void* a = allocator.allocate(1000, "a");
  void* b = allocator.allocate(3000, "b");
  CHECK(allocator.live_bytes() == 4000);
  CHECK(allocator.peak_bytes() == 4000);
  allocator.release(a);
  CHECK(allocator.live_bytes() == 3000);
  CHECK(allocator.cached_bytes() == 1000);
  void* c = allocator.allocate(1000, "c");  // the cached block comes back
  CHECK(c == a);
  CHECK(allocator.peak_bytes() == 4000);
  allocator.release(b);
  allocator.release(c);
  CHECK(allocator.live_bytes() == 0);
  allocator.reset_peak();
  CHECK(allocator.peak_bytes() == 0);
  // more than the device has: OutOfMemory naming what it was for, and the allocator still works
  std::size_t free = 0, total = 0;
  REQUIRE(cudaMemGetInfo(&free, &total) == cudaSuccess);
  REQUIRE_THROWS_AS(allocator.allocate(2 * total, "a huge buffer"), OutOfMemory);
  try {
    (void)allocator.allocate(2 * total, "a huge buffer");
  } catch (const OutOfMemory& e) {
    CHECK(std::string(e.what()).find("a huge buffer") != std::string::npos);
  }
  void* d = allocator.allocate(64, "after the failure");
  CHECK(d != nullptr);
  allocator.release(d);
}

static bool ends_with(const std::string& text, const std::string& tail) {
  return text.size() >= tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0;
}

TEST_CASE("a GPU suite runs through the harness: verified, measured, OOM recorded", "[gpu][harness]") {
  const fs::path dir = fs::temp_directory_path() / ("flashlab-gpu-suite-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "suite.toml") << R"(
[suite]
name = "gpu_suite"
warmup = 1
repetitions = 3
[[sweep]]
fixed = { variant = "standard", batch = 2, heads = 4, heads_kv = 2, head_dim = 64 }
axes = { pass = ["fwd", "fwdbwd"], dtype = ["fp32", "fp16", "bf16"], seqlen = [97, 1024], causal = [false, true] }
[[sweep]]
fixed = { variant = "flash2", batch = 2, heads = 4, heads_kv = 2, head_dim = 64 }
axes = { pass = ["fwd", "fwdbwd"], dtype = ["fp16", "bf16"], seqlen = [97, 1024] }
[[sweep]]
fixed = { variant = "standard", pass = "fwdbwd", dtype = "bf16", batch = 1, heads = 64, head_dim = 128, seqlen = 262144 }
)";
  RunOptions options;
  options.suite = dir / "suite.toml";
  options.out = dir / "results";
  // CUDA loads a kernel's module on its first launch (lazy loading), and memgetinfo_delta_bytes of the row that
  // first launches it includes that code (measured: 72 MiB more on the first fp32 standard row when this test runs
  // alone). A first run loads every kernel the suite uses; the second is the one checked.
  options.run_id = "warm";
  (void)run_suite(options);
  options.run_id = "r";
  const int code = run_suite(options);
  const auto rows = read_results(options.out / "gpu_suite" / "r" / "results.csv");
  REQUIRE(rows.size() == 2 * 3 * 2 * 2 + 2 * 2 * 2 + 1);
  for (const ResultRow& r : rows) {
    INFO(r.at("key") << ": " << r.at("status") << " " << r.at("reason"));
    if (r.at("seqlen_q") == "262144") {
      CHECK(r.at("status") == "oom");  // 2 x 64 heads x 262144^2 x 2 bytes of N x N buffers
      continue;
    }
    CHECK(r.at("status") == "ok");
    CHECK(r.at("verify_pass") == "1");
    CHECK(r.at("err_o_bound_pass") == "1");
    CHECK(std::stod(r.at("err_o_bound")) >= std::stod(r.at("err_o_max_abs")));
    CHECK_FALSE(r.at("data_path").empty());
    if (r.at("variant") == "flash2") {
      // the FlashAttention rule against standard on the GPU, on the same inputs
      CHECK(ends_with(r.at("verified_heads"), "; baseline: standard on the GPU"));
      CHECK(r.at("err_o_rule_pass") == "1");
      CHECK_FALSE(r.at("err_o_baseline").empty());
      continue;
    }
    // standard materializes: no row is its own baseline, the bound judges it
    CHECK(ends_with(r.at("verified_heads"), "; no baseline (materializing): the bound judges"));
    CHECK_FALSE(r.at("verified_rows").empty());
    CHECK(r.at("err_o_baseline").empty());
    CHECK(r.at("err_o_rule_pass").empty());
    CHECK(r.at("workspace_peak_bytes") == r.at("workspace_model_bytes"));
    // cudaMemGetInfo sees the row's tensors and every block the workspace allocator holds, up to the driver's
    // allocation granularity (2 MiB pages, a few blocks)
    const double held = std::stod(r.at("io_bytes")) + std::stod(r.at("workspace_reserved_bytes"));
    CHECK(std::stod(r.at("memgetinfo_delta_bytes")) >= held);
    CHECK(std::stod(r.at("memgetinfo_delta_bytes")) <= held + 32.0 * (1 << 20));
    CHECK(std::stod(r.at("time_median_ms")) > 0);
    REQUIRE(!r.at("dram_read_bytes").empty());
    // the standard variant reads at least its inputs once
    CHECK(std::stod(r.at("dram_read_bytes")) + std::stod(r.at("l2_read_bytes")) > 0);
    CHECK(std::stod(r.at("l2_read_bytes")) >= 0.9 * std::stod(r.at("bytes_model_min")) / 2);
  }
  CHECK(code == kExitOk);
  fs::remove_all(dir);
}

#include "flashlab/harness/backend.hpp"
#include "flashlab/harness/registry.hpp"

TEST_CASE("standard on small awkward shapes, for the sanitizers", "[gpu][standard][sanitize]") {
  // Every path in a few small launches: padded score rows (N_k not a multiple of 8), fully masked rows,
  // GQA, a window, varlen with empty sequences; fp32, fp16 and bf16. The outputs must all be written.
  std::vector<Problem> problems;
  Problem gqa;
  gqa.batch = 2;
  gqa.heads = 4;
  gqa.heads_kv = 1;
  gqa.seqlen_q = 40;
  gqa.seqlen_k = 33;
  gqa.head_dim = 64;
  gqa.causal = true;
  problems.push_back(gqa);
  Problem window = gqa;
  window.heads_kv = 4;
  window.causal = false;
  window.window = {5, 3};
  window.seqlen_k = 97;
  problems.push_back(window);
  problems.push_back(Problem::varlen(2, 2, 32, {5, 0, 17}, {9, 3, 0}));
  const kernels::Variant* standard = find_variant("standard");
  REQUIRE(standard != nullptr);
  auto backend = make_gpu_backend();
  for (const Problem& p : problems) {
    for (DType dtype : {DType::fp32, DType::fp16, DType::bf16}) {
      INFO(p.describe() << " " << name(dtype));
      RowSpec row;
      row.variant = "standard";
      row.pass = Pass::fwdbwd;
      row.dtype = dtype;
      row.problem = p;
      backend->prepare(row, 5);
      standard->forward(backend->params(), backend->context());
      standard->backward(backend->params(), backend->context());
      backend->synchronize();
      for (const char* tensor : {"o", "dq"}) {
        for (std::int64_t b = 0; b < p.batch; ++b) {
          for (std::int64_t h = 0; h < p.heads; ++h) {
            for (double x : backend->fetch(tensor, b, h)) CHECK(std::isfinite(x));
          }
        }
      }
      for (const char* tensor : {"dk", "dv"}) {
        for (std::int64_t b = 0; b < p.batch; ++b) {
          for (std::int64_t g = 0; g < p.heads_kv; ++g) {
            for (double x : backend->fetch(tensor, b, g)) CHECK(std::isfinite(x));
          }
        }
      }
      backend->release();
    }
  }
}

TEST_CASE("flash2 forward on small awkward shapes, for the sanitizers", "[gpu][flash2][sanitize]") {
  // Tile edges (N not a multiple of 64), fully masked rows and whole fully masked query blocks, a window, GQA,
  // varlen with empty sequences, head dims 32 and 64 (two tile configurations).
  std::vector<Problem> problems;
  Problem causal;
  causal.batch = 2;
  causal.heads = 4;
  causal.heads_kv = 1;
  causal.seqlen_q = 130;
  causal.seqlen_k = 33;
  causal.head_dim = 64;
  causal.causal = true;
  problems.push_back(causal);
  Problem window = causal;
  window.heads_kv = 2;
  window.causal = false;
  window.window = {5, 3};
  window.seqlen_k = 97;
  problems.push_back(window);
  problems.push_back(Problem::varlen(2, 2, 32, {5, 0, 77}, {9, 3, 0}));
  const kernels::Variant* flash2 = find_variant("flash2");
  REQUIRE(flash2 != nullptr);
  auto backend = make_gpu_backend();
  for (const Problem& p : problems) {
    for (DType dtype : {DType::fp16, DType::bf16}) {
      INFO(p.describe() << " " << name(dtype));
      RowSpec row;
      row.variant = "flash2";
      row.pass = Pass::fwd;
      row.dtype = dtype;
      row.problem = p;
      backend->prepare(row, 7);
      flash2->forward(backend->params(), backend->context());
      backend->synchronize();
      for (std::int64_t b = 0; b < p.batch; ++b) {
        for (std::int64_t h = 0; h < p.heads; ++h) {
          for (double x : backend->fetch("o", b, h)) CHECK(std::isfinite(x));
          for (double x : backend->fetch("lse", b, h)) CHECK(!std::isnan(x));
        }
      }
      backend->release();
    }
  }
}

TEST_CASE("a key-padding suite runs both ways on the GPU: standard dense, the fused kernels unpadded",
          "[gpu][harness][padding]") {
  // One suite row, two runs: standard reads the padded tensors and masks; flash2 and flash3 run the unpadded varlen
  // form, drawn from the same values (the generator's token remap), with standard on the same varlen inputs as the
  // baseline. Every row verified against the fp64 reference.
  const fs::path dir = fs::temp_directory_path() / ("flashlab-gpu-padding-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "suite.toml") << R"(
[suite]
name = "gpu_padding"
warmup = 0
repetitions = 1
profile = false
[fixed]
heads = 4
heads_kv = 2
head_dim = 64
dtype = "bf16"
[axes]
key_padding = ["right", "left"]
causal = [false, true]
[[sweep]]
fixed = { seqlen = 257, batch = 4, padded_fraction = 0.25, padding_seed = 3 }
axes = { variant = ["standard", "flash2"], pass = ["fwd", "fwdbwd"] }
[[sweep]]
fixed = { seqlen = 97, valid_lengths = [97, 0, 1, 64], variant = "flash3", pass = "fwd" }
)";
  RunOptions options;
  options.suite = dir / "suite.toml";
  options.out = dir / "results";
  options.run_id = "r";
  const int code = run_suite(options);
  const auto rows = read_results(options.out / "gpu_padding" / "r" / "results.csv");
  REQUIRE(rows.size() == 2 * 2 * (2 * 2 + 1));
  int major = 0;
  REQUIRE(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess);
  for (const ResultRow& r : rows) {
    INFO(r.at("key") << ": " << r.at("status") << " " << r.at("reason"));
    if (r.at("variant") == "flash3" && major != 9) {  // its sm_90a kernels run on Hopper only
      CHECK(r.at("status") == "unsupported");
      continue;
    }
    CHECK(r.at("status") == "ok");
    CHECK(r.at("verify_pass") == "1");
    CHECK(r.at("varlen") == "0");
    CHECK(r.at("unpadded") == (r.at("variant") == "standard" ? "0" : "1"));
    if (r.at("variant") != "standard") CHECK(ends_with(r.at("verified_heads"), "; baseline: standard on the GPU"));
  }
  CHECK(code == kExitOk);
  fs::remove_all(dir);
}
