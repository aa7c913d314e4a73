// GPU tests of the flash3 variant (Hopper forward: wgmma, TMA, warp specialization): the flash2 test matrix under the
// one verification rule (check_forward, gpu_support.hpp) with standard as the baseline, the stress inputs, the support
// rules, launch-time refusals and the kernels' resources. On a GPU other than compute capability 9.0 every launch is
// refused with `Unsupported` naming the GPU, which is what the accuracy tests then check instead.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

#include "catch.hpp"
#include "gpu_support.hpp"
#include "flashlab/core/bytes.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/kernels/attention.hpp"
#include "flashlab/kernels/device.hpp"
#include "flash3/flash3.hpp"

namespace {

using namespace flashlab;
using namespace flashlab::gpu_test;

constexpr std::uint64_t kSeed = 20261130;
// flash3's tiles: 4, or 8 with -DFLASHLAB_TILE_SWEEP=ON (flash3.hpp)
#if defined(FLASHLAB_TILE_SWEEP)
constexpr int kTiles = 8;
#else
constexpr int kTiles = 4;
#endif
// flash3's forward kernels: each tile with and without ping-pong, and the persistent 128x128/2 of d = 64 and 128
// and 192x96/2 of d = 64 (ping-pong), each in fp16 and bf16
constexpr std::size_t kKernels = (kTiles * 2 + 3) * 2;

// Whether this GPU runs flash3's sm_90a kernels (compute capability 9.0).
bool hopper() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.major == 9 && prop.minor == 0;
}

// The flash2 matrix on flash3's head dims: N in {1, 17, 97, 128, 129, 255, 1025, 4097} (partial query and key
// tiles, one-row sequences, tile multiples), each mask kind, N_q != N_k both ways, GQA, MQA and varlen with empty
// sequences.
std::vector<Case> accuracy_cases() {
  std::vector<Case> cases;
  cases.push_back({"dense N=1, d=64", dense(2, 2, 2, 1, 1, 64)});
  cases.push_back({"dense N=17, d=128", dense(2, 3, 3, 17, 17, 128)});
  cases.push_back({"dense N=97, d=256", dense(1, 2, 2, 97, 97, 256)});
  cases.push_back({"causal N=128, d=128", causal(dense(2, 2, 2, 128, 128, 128))});
  cases.push_back({"dense N=129, d=64", dense(1, 2, 2, 129, 129, 64)});
  cases.push_back({"dense N=129, d=256", dense(1, 2, 2, 129, 129, 256)});
  cases.push_back({"causal N=255, d=256", causal(dense(1, 2, 2, 255, 255, 256))});
  cases.push_back({"window (16, 8), N=255, d=64", windowed(dense(1, 2, 2, 255, 255, 64), 16, 8)});
  cases.push_back({"window (32, 0), N=1025, d=128", windowed(dense(1, 2, 2, 1025, 1025, 128), 32, 0)});
  cases.push_back({"window (200, 100), N=1025, d=256", windowed(dense(1, 1, 1, 1025, 1025, 256), 200, 100)});
  cases.push_back({"causal N=4097, d=64", causal(dense(1, 1, 1, 4097, 4097, 64))});
  cases.push_back({"dense N=4097, d=128", dense(1, 1, 1, 4097, 4097, 128)});
  cases.push_back({"dense N=1025, d=256", dense(1, 1, 1, 1025, 1025, 256)});
  cases.push_back({"causal N_q=129 > N_k=17 (fully masked rows)", causal(dense(2, 2, 2, 129, 17, 64))});
  cases.push_back({"causal N_q=1025 > N_k=255 (fully masked blocks)", causal(dense(1, 2, 2, 1025, 255, 128))});
  cases.push_back({"causal N_q=17 < N_k=129", causal(dense(2, 2, 2, 17, 129, 256))});
  cases.push_back({"causal N_q=97 < N_k=1025, window (32, 0)", windowed(causal(dense(1, 2, 2, 97, 1025, 64)), 32, 0)});
  cases.push_back({"window (16, 8), N_q=255 > N_k=97", windowed(dense(1, 2, 2, 255, 97, 128), 16, 8)});
  cases.push_back({"GQA 4:1, N=129, d=64", dense(2, 8, 2, 129, 129, 64)});
  cases.push_back({"GQA 4:1 causal, N=255, d=128", causal(dense(1, 8, 2, 255, 255, 128))});
  cases.push_back({"MQA 4:1 causal, N=1025, d=128", causal(dense(1, 4, 1, 1025, 1025, 128))});
  cases.push_back({"MQA 2:1, N_q=97, N_k=255, d=256", dense(1, 2, 1, 97, 255, 256)});
  cases.push_back(
      {"varlen GQA 2:1 with empty entries", Problem::varlen(4, 2, 64, {17, 0, 97, 128, 1}, {33, 5, 0, 129, 1025})});
  cases.push_back(
      {"varlen causal, N_q != N_k, empty entry", causal(Problem::varlen(2, 2, 256, {129, 17, 0}, {17, 129, 3}))});
  cases.push_back({"varlen window (16, 8), d=128",
                   windowed(Problem::varlen(2, 1, 128, {255, 0, 64, 129}, {255, 17, 64, 97}), 16, 8)});
  return cases;
}

}  // namespace

TEST_CASE("flash3 is registered with its support rules", "[gpu][flash3]") {
  const kernels::Variant& v = variant("flash3");
  CHECK(v.device == kernels::Device::cuda);
  CHECK_FALSE(v.materializes);
  CHECK_FALSE(v.description.empty());
  const Problem p = dense(1, 2, 2, 64, 64, 128);
  for (const std::int64_t d : {64, 128, 256}) {
    Problem q = p;
    q.head_dim = d;
    for (DType dtype : {DType::fp16, DType::bf16}) CHECK(v.supports(q, dtype, Pass::fwd).ok);
  }
  for (const std::int64_t d : {32, 96, 40}) {
    Problem q = p;
    q.head_dim = d;
    const kernels::Support s = v.supports(q, DType::bf16, Pass::fwd);
    CHECK_FALSE(s.ok);
    CHECK(s.reason.find("head_dim = " + std::to_string(d)) != std::string::npos);
  }
  for (DType dtype : {DType::fp32, DType::fp64, DType::fp8_e4m3}) {
    const kernels::Support s = v.supports(p, dtype, Pass::fwd);
    CHECK_FALSE(s.ok);
    CHECK(s.reason.find("flash3 runs fp16 and bf16") != std::string::npos);
  }
  for (Pass pass : {Pass::bwd, Pass::fwdbwd}) {
    const kernels::Support s = v.supports(p, DType::bf16, pass);
    CHECK_FALSE(s.ok);
    CHECK(s.reason.find("forward") != std::string::npos);
  }
  Problem dv = p;
  dv.head_dim_v = 64;
  CHECK(v.supports(dv, DType::fp16, Pass::fwd).reason.find("head_dim_v") != std::string::npos);
  // FlashAttention's bytes model with 128 query rows per CTA; no workspace
  const Problem big = dense(2, 4, 4, 4096, 4096, 128);
  CHECK(v.bytes_model(big, DType::bf16, Pass::fwd, {}) == flash_bytes(big, DType::bf16, Pass::fwd, 128));
  CHECK(v.workspace_model(big, DType::bf16, Pass::fwd) == 0);
  // a tile this build lacks: the models still answer (the launch refuses it, and a suite row is `unsupported`)
  kernels::LaunchOptions missing;
  missing.block_n = 176;
  CHECK(v.bytes_model(big, DType::bf16, Pass::fwd, missing) == flash_bytes(big, DType::bf16, Pass::fwd, 128));
  AttentionParams missing_params;
  missing_params.options = missing;
  CHECK_NOTHROW(v.data_path(big, DType::bf16, missing_params));
  // options: br, bc, stages, pingpong, persistent, each parsed by the entry; the tile they name is checked at launch
  kernels::LaunchOptions parsed;
  for (const kernels::VariantOption& o : v.options) {
    const bool flag = o.name == "pingpong" || o.name == "persistent";
    CHECK(o.apply(flag ? "1" : "192", parsed).empty());
  }
  CHECK(parsed.block_m == 192);
  CHECK(parsed.pingpong == 1);
  CHECK(parsed.persistent == 1);
  for (const char* flag : {"pingpong", "persistent"}) {
    const auto option = std::find_if(v.options.begin(), v.options.end(), [&](const auto& o) { return o.name == flag; });
    REQUIRE(option != v.options.end());
    CHECK_FALSE(option->apply("2", parsed).empty());
  }
}

// The schedule flash3 picks when a launch names none: the persistent 128x128/2 kernel where a query sees few keys on
// average (at most 512 at d = 64, 1024 at d = 128), one CTA per tile otherwise; the models follow the tile it runs.
TEST_CASE("flash3 picks the persistent schedule for short problems when none is named", "[gpu][flash3]") {
  // (d, causal, N, persistent?) at 16k tokens: the mean keys per query are N, or N / 2 with the causal mask (the
  // flops convention's pairs)
  struct Case {
    std::int64_t d;
    bool causal;
    std::int64_t n;
    bool persistent;
  };
  for (const Case c : {Case{64, false, 512, true}, Case{64, false, 1024, false}, Case{64, true, 1024, true},
                       Case{64, true, 1026, false}, Case{128, false, 1024, true}, Case{128, false, 1025, false},
                       Case{128, true, 2048, true}, Case{128, true, 2050, false}, Case{256, false, 128, false},
                       Case{256, true, 512, false}}) {
    CAPTURE(c.d, c.causal, c.n);
    Problem p = dense(16384 / c.n, 2048 / c.d, 2048 / c.d, c.n, c.n, c.d);
    if (c.causal) p = causal(p);
    CHECK(kernels::flash3::default_persistent(p) == c.persistent);
  }
  // varlen: the mean over the packed queries, d = 128 (256 and 1792 tokens: 1600 keys per query; 2 x 1024: 1024)
  CHECK_FALSE(kernels::flash3::default_persistent(Problem::varlen(2, 2, 128, {256, 1792}, {256, 1792})));
  CHECK(kernels::flash3::default_persistent(Problem::varlen(2, 2, 128, {1024, 1024}, {1024, 1024})));
  // the bytes model follows the tile: 128 query rows for the short d = 64 problem, the 192-row default for the long
  // one and for a short one whose launch names an option
  const kernels::Variant& v = variant("flash3");
  const Problem short64 = dense(32, 32, 32, 512, 512, 64);
  const Problem long64 = dense(2, 32, 32, 8192, 8192, 64);
  CHECK(v.bytes_model(short64, DType::bf16, Pass::fwd, {}) == flash_bytes(short64, DType::bf16, Pass::fwd, 128));
  CHECK(v.bytes_model(long64, DType::bf16, Pass::fwd, {}) == flash_bytes(long64, DType::bf16, Pass::fwd, 192));
  kernels::LaunchOptions named;
  named.pingpong = 1;
  CHECK(v.bytes_model(short64, DType::bf16, Pass::fwd, named) == flash_bytes(short64, DType::bf16, Pass::fwd, 192));
  // and the results' `launch` says which kernel ran
  REQUIRE(v.describe_launch);
  CHECK(v.describe_launch(short64, DType::bf16, Pass::fwd, {}) == "128x128/2, ping-pong, persistent");
  CHECK(v.describe_launch(long64, DType::bf16, Pass::fwd, {}) == "192x96/2, ping-pong, one CTA per tile");
  CHECK(v.describe_launch(short64, DType::bf16, Pass::fwd, named) == "192x96/2, ping-pong, one CTA per tile");
  kernels::LaunchOptions plain;
  plain.pingpong = 0;
  CHECK(v.describe_launch(dense(1, 8, 8, 4096, 4096, 256), DType::fp16, Pass::fwd, plain) ==
        "128x64/2, one CTA per tile");
}

// No local memory (spills or stack) in any flash3 kernel, and each kernel is compiled for this GPU's architecture.
TEST_CASE("no flash3 kernel uses local memory (no register spills)", "[gpu][flash3]") {
  if (!hopper()) {
    WARN("flash3: not a compute capability 9.0 GPU, its sm_90a kernels have no image here");
    return;
  }
  const kernels::Variant& v = variant("flash3");
  const std::vector<kernels::KernelInfo> list = v.kernels();
  CHECK(list.size() == kKernels);
  for (const kernels::KernelInfo& k : list) {
    INFO(k.name << ": " << k.registers << " registers, " << k.local_bytes << " bytes of local memory");
    CHECK(k.local_bytes == 0);
    CHECK(k.registers > 0);
    CHECK(k.registers <= 168);  // 384 threads at one CTA per SM: the entry budget before setmaxnreg
    CHECK(k.dynamic_shared_bytes <= 227 * 1024);
  }
}

// The main loops run on Hopper's asynchronous tensor cores: every flash3 kernel's SASS (cuobjdump of this executable)
// holds HGMMA instructions, at least one per k16 step of S = Q K^T and of P V of the smallest tile (d = 64, 96 keys:
// 4 + 6). cuobjdump is FLASHLAB_CUOBJDUMP if set, else the build's CUDA toolkit's if it exists here, else PATH's.
namespace {
std::string cuobjdump() {
  if (const char* env = std::getenv("FLASHLAB_CUOBJDUMP"); env != nullptr && *env != '\0') return env;
  const std::string toolkit = std::string(FLASHLAB_CUDA_BIN_DIR) + "/cuobjdump";
  return access(toolkit.c_str(), X_OK) == 0 ? toolkit : "cuobjdump";
}
}  // namespace

TEST_CASE("flash3 kernels issue HGMMA (SASS)", "[gpu][flash3]") {
  if (!hopper()) return;
  const std::string tool = cuobjdump();
  // this executable's path (in the shell popen starts, /proc/self/exe would be the shell's or cuobjdump's own)
  char self[4096] = {};
  REQUIRE(readlink("/proc/self/exe", self, sizeof(self) - 1) > 0);
  FILE* pipe = popen(("'" + tool + "' --dump-sass '" + self + "' 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::map<std::string, int> hgmma;  // flash3 forward kernel -> HGMMA instructions
  std::string function;
  char line[4096];
  while (std::fgets(line, sizeof(line), pipe) != nullptr) {
    const std::string text(line);
    if (const auto at = text.find("Function : "); at != std::string::npos) {
      function = text.substr(at + 11);
      const bool ours = function.find("flash3") != std::string::npos && function.find("forward_kernel") != std::string::npos;
      if (!ours) function.clear();
      if (ours) hgmma[function] += 0;
    } else if (!function.empty() && text.find("HGMMA") != std::string::npos) {
      ++hgmma[function];
    }
  }
  const int status = pclose(pipe);
  INFO(tool << " exit status " << status << " (set FLASHLAB_CUOBJDUMP to the CUDA toolkit's cuobjdump)");
  REQUIRE(status == 0);
  CHECK(hgmma.size() == kKernels);
  for (const auto& [name, count] : hgmma) {
    INFO(name << ": " << count << " HGMMA");
    CHECK(count >= 4 + 6);
  }
}

TEST_CASE("flash3 forward matches the fp64 reference under the baseline rule", "[gpu][flash3]") {
  if (!hopper()) {
    const Problem p = dense(1, 1, 1, 64, 64, 128);
    Stream stream;
    DeviceTensors t(p, DType::bf16, kSeed, stream.get());
    CountingAllocator allocator;
    try {
      variant("flash3").forward(t.params(), {allocator, stream.get()});
      FAIL("flash3 launched on a GPU that is not compute capability 9.0");
    } catch (const Unsupported& e) {
      CHECK(std::string(e.what()).find("sm_90a") != std::string::npos);
    }
    return;
  }
  // the schedule flash3 picks (the persistent kernel for the short problems at d = 64 and 128), and one CTA per tile
  kernels::LaunchOptions one_cta_per_tile;
  one_cta_per_tile.persistent = 0;
  for (const kernels::LaunchOptions& options : {kernels::LaunchOptions{}, one_cta_per_tile}) {
    for (const Case& c : accuracy_cases()) {
      for (DType dtype : {DType::fp16, DType::bf16}) check_forward("flash3", c, dtype, options, kSeed);
    }
  }
}

// Inputs that stress the numerics, on shapes where the online softmax rescales across many key tiles.
TEST_CASE("flash3 forward on stress inputs stays within its bound", "[gpu][flash3][numerics]") {
  if (!hopper()) return;
  const std::vector<Case> cases = {{"dense N=1025, d=64", dense(1, 2, 2, 1025, 1025, 64)},
                                   {"causal N=777, d=128", causal(dense(1, 2, 2, 777, 777, 128))},
                                   {"GQA 2:1 N_q=129 < N_k=2049, d=256", dense(1, 2, 1, 129, 2049, 256)}};
  for (const Distribution distribution : kStressDistributions) {
    for (const Case& c : cases) {
      for (DType dtype : {DType::fp16, DType::bf16}) check_forward("flash3", c, dtype, {}, kSeed, distribution);
    }
  }
}

// Every compiled tile (flash3[br=..,bc=..,stages=..]) with and without ping-pong (flash3[pingpong=0|1]), found by
// trying br in {128, 192}, bc in {64, 80, ..., 192} and 2 to 4 stages: a tile that is not compiled is refused with
// Unsupported before any launch. Two awkward problems per head dim: causal with N_q > N_k (partial tiles, fully masked rows) and a varlen
// window batch with an empty sequence.
TEST_CASE("every flash3 tile and schedule matches the fp64 reference under the baseline rule", "[gpu][flash3]") {
  if (!hopper()) return;
  const kernels::Variant& flash = variant("flash3");
  int tiles = 0;
  for (const std::int64_t d : {64, 128, 256}) {
    const std::vector<Case> cases = {
        {"causal N_q=1000 > N_k=777", causal(dense(1, 2, 2, 1000, 777, d))},
        {"varlen window (100, 8), empty entry",
         windowed(Problem::varlen(2, 1, d, {97, 0, 530}, {255, 17, 529}), 100, 8)}};
    for (int br : {128, 192}) {
     for (int bc = 64; bc <= 192; bc += 16) {
      for (int stages = 2; stages <= 4; ++stages) {
        kernels::LaunchOptions options;
        options.block_m = br;
        options.block_n = bc;
        options.stages = stages;
        const Problem one = dense(1, 1, 1, 1, 1, d);
        Stream stream;
        DeviceTensors t(one, DType::bf16, kSeed, stream.get());
        AttentionParams probe = t.params();
        probe.options = options;
        CountingAllocator allocator;
        try {
          flash.forward(probe, {allocator, stream.get()});
          stream.sync();
        } catch (const Unsupported& e) {
          CHECK(std::string(e.what()).find("no forward tile") != std::string::npos);
#if !defined(FLASHLAB_TILE_SWEEP)
          CHECK(std::string(e.what()).find("-DFLASHLAB_TILE_SWEEP=ON") != std::string::npos);
#endif
          continue;
        }
        ++tiles;
        for (const int pingpong : {0, 1}) {
          options.pingpong = pingpong;
          for (const Case& c : cases) {
            for (DType dtype : {DType::fp16, DType::bf16}) check_forward("flash3", c, dtype, options, kSeed);
          }
        }
      }
     }
    }
  }
  CHECK(tiles == kTiles);
}

// The persistent schedule (flash3[persistent=1], with ping-pong: tile 128x128/2 at d = 64 and 128, 192x96/2 at
// d = 64): one CTA per multiprocessor walks the work tiles longest first, so the K/V rings and the Q tile pass from
// one tile to the next. The flash2 matrix on those head dims, problems with several tiles per CTA (more tiles than multiprocessors:
// causal, GQA, varlen with empty sequences, fully masked query blocks among them), and the refusals elsewhere.
TEST_CASE("flash3's persistent schedule matches the fp64 reference under the baseline rule", "[gpu][flash3]") {
  if (!hopper()) return;
  kernels::LaunchOptions options;
  options.persistent = 1;
  options.block_m = 128;
  options.block_n = 128;
  options.stages = 2;
  std::vector<Case> cases;
  for (const Case& c : accuracy_cases()) {
    if (c.problem.head_dim <= 128) cases.push_back(c);
  }
  cases.push_back({"causal B=2 H=4 N=4097, d=128 (264 tiles)", causal(dense(2, 4, 4, 4097, 4097, 128))});
  cases.push_back({"GQA 8:1 window (300, 0), B=3 H=16 N=1500, d=64", windowed(dense(3, 16, 2, 1500, 1500, 64), 300, 0)});
  cases.push_back({"causal N_q=2049 > N_k=300, H=40, d=64 (fully masked blocks)", causal(dense(1, 40, 40, 2049, 300, 64))});
  cases.push_back({"varlen causal H=12, empty entries, d=128",
                   causal(Problem::varlen(12, 4, 128, {600, 0, 1, 1200, 333}, {600, 7, 0, 1200, 900}))});
  for (const Case& c : cases) {
    for (DType dtype : {DType::fp16, DType::bf16}) check_forward("flash3", c, dtype, options, kSeed);
  }
  // the 192-row tile (three consumers) at d = 64
  kernels::LaunchOptions rows192 = options;
  rows192.block_m = 192;
  rows192.block_n = 96;
  for (const Case& c : cases) {
    if (c.problem.head_dim != 64) continue;
    for (DType dtype : {DType::fp16, DType::bf16}) check_forward("flash3", c, dtype, rows192, kSeed);
  }
  // refused: d = 256, no ping-pong
  const Problem p256 = dense(1, 2, 2, 65, 65, 256), p64 = dense(1, 2, 2, 65, 65, 64);
  struct Refusal {
    const Problem* problem;
    int block_m, block_n, pingpong;
  };
  for (const Refusal r : {Refusal{&p256, 0, 0, -1}, Refusal{&p64, 192, 96, 0}, Refusal{&p64, 128, 128, 0}}) {
    Stream stream;
    DeviceTensors t(*r.problem, DType::bf16, kSeed, stream.get());
    AttentionParams a = t.params();
    a.options = options;
    a.options.block_m = r.block_m;
    a.options.block_n = r.block_n;
    a.options.stages = 0;
    a.options.pingpong = r.pingpong;
    CountingAllocator allocator;
    try {
      variant("flash3").forward(a, {allocator, stream.get()});
      FAIL("flash3 ran a persistent schedule it does not have");
    } catch (const Unsupported& e) {
      CHECK(std::string(e.what()).find("persistent schedule is compiled with ping-pong for tile 128x128/2") !=
            std::string::npos);
    }
  }
}

TEST_CASE("flash3 rejects what it cannot run at launch", "[gpu][flash3]") {
  const kernels::Variant& v = variant("flash3");
  const Problem p = dense(1, 2, 2, 65, 65, 128);
  Stream stream;
  DeviceTensors t(p, DType::bf16, 3, stream.get());
  CountingAllocator allocator;
  const LaunchContext ctx{allocator, stream.get()};
  {
    AttentionParams a = t.params();
    a.q = static_cast<const char*>(a.q) + 2;  // one element off 16-byte alignment
    CHECK_THROWS_AS(v.forward(a, ctx), InvalidProblem);
  }
  {
    AttentionParams a = t.params();
    a.v_strides.token += 4;  // not a multiple of 8 elements (TMA strides are multiples of 16 bytes)
    CHECK_THROWS_AS(v.forward(a, ctx), InvalidProblem);
  }
  {
    AttentionParams a = t.params();
    a.dtype = DType::fp32;
    CHECK_THROWS_AS(v.forward(a, ctx), Unsupported);
  }
  {
    AttentionParams a = t.params();
    a.options.block_n = 96;  // not a compiled tile at d = 128
    try {
      v.forward(a, ctx);
      FAIL("flash3 launched a tile it does not have");
    } catch (const Unsupported& e) {
      CHECK(std::string(e.what()).find(hopper() ? "bc = 96" : "sm_90a") != std::string::npos);
    }
  }
  {
    AttentionParams a = t.params();
    a.options.stages = 7;  // no tile has 7 stages
    try {
      v.forward(a, ctx);
      FAIL("flash3 launched a ring it does not have");
    } catch (const Unsupported& e) {
      CHECK(std::string(e.what()).find(hopper() ? "stages = 7" : "sm_90a") != std::string::npos);
    }
  }
  CHECK_THROWS_AS(v.backward(t.params(), ctx), Unsupported);
  stream.sync();
  CHECK(allocator.calls() == 0);
  CHECK(count_nan(decode(t.o, DType::bf16)) == static_cast<std::int64_t>(t.o.bytes() / 2));
}

// A small matrix for compute-sanitizer (memcheck, racecheck, initcheck, synccheck): partial query and key tiles, a
// causal mask with fully masked rows, GQA, a varlen batch with empty sequences, each head dim, both schedules. flash3's
// kernels alone (verified by the bound, no standard baseline), so a report names them.
TEST_CASE("flash3 forward on a small matrix (sanitizer run)", "[gpu][flash3][sanitize]") {
  if (!hopper()) return;
  const std::vector<Case> cases = {
      {"causal N_q=129 > N_k=65, d=64", causal(dense(1, 2, 2, 129, 65, 64))},
      {"GQA 2:1 N=200, d=128", dense(1, 4, 2, 200, 200, 128)},
      {"varlen window (16, 8), empty entry, d=256", windowed(Problem::varlen(2, 1, 256, {70, 0, 130}, {97, 17, 129}), 16, 8)}};
  for (const int pingpong : {0, 1}) {
    kernels::LaunchOptions options;
    options.pingpong = pingpong;
    for (const Case& c : cases) check_forward("flash3", c, DType::bf16, options, kSeed, Distribution::normal, false);
  }
  // the persistent schedule with more work tiles than multiprocessors (the handoffs between tiles)
  kernels::LaunchOptions persistent;
  persistent.persistent = 1;
  persistent.block_m = 128;
  persistent.block_n = 128;
  for (const Case& c : {Case{"persistent causal H=80 N_q=257 > N_k=129, d=64", causal(dense(1, 80, 8, 257, 129, 64))},
                        Case{"persistent varlen H=70, empty entry, d=128",
                             Problem::varlen(70, 70, 128, {130, 0, 129}, {97, 17, 200})}}) {
    check_forward("flash3", c, DType::bf16, persistent, kSeed, Distribution::normal, false);
  }
}
