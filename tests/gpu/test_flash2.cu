// GPU tests of the flash2 variant (forward): against the fp64 Eigen reference on identical inputs (generated on the
// device, filled on the host from the same seed and dtype rounding) under the baseline rule of DESIGN.md §5, with
// the standard variant run on the same inputs as the baseline; support rules and launch-time checks.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "catch.hpp"
#include "gpu_support.hpp"
#include "flashlab/core/bytes.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/generator.hpp"
#include "flashlab/core/storage.hpp"
#include "flashlab/core/tensor.hpp"
#include "flashlab/kernels/attention.hpp"
#include "flashlab/kernels/device.hpp"
#include "flashlab/reference/attention_data.hpp"

namespace {

using namespace flashlab;
using namespace flashlab::gpu_test;

// Awkward lengths on purpose (N in {1, 17, 97, 128, 129, 255, 1025, 4097}: partial query and key tiles, one-row
// sequences, tile multiples), every head dim, each mask kind, N_q != N_k both ways, GQA, MQA and varlen.
std::vector<Case> accuracy_cases() {
  std::vector<Case> cases;
  cases.push_back({"dense N=1, d=32", dense(2, 2, 2, 1, 1, 32)});
  cases.push_back({"dense N=17, d=64", dense(2, 3, 3, 17, 17, 64)});
  cases.push_back({"dense N=97, d=96", dense(1, 2, 2, 97, 97, 96)});
  cases.push_back({"causal N=128, d=128", causal(dense(2, 2, 2, 128, 128, 128))});
  cases.push_back({"dense N=129, d=256", dense(1, 2, 2, 129, 129, 256)});
  cases.push_back({"causal N=255, d=256", causal(dense(1, 2, 2, 255, 255, 256))});
  cases.push_back({"window (16, 8), N=255, d=64", windowed(dense(1, 2, 2, 255, 255, 64), 16, 8)});
  cases.push_back({"window (32, 0), N=1025, d=128", windowed(dense(1, 2, 2, 1025, 1025, 128), 32, 0)});
  cases.push_back({"window (16, 8), N=1025, d=32", windowed(dense(1, 1, 1, 1025, 1025, 32), 16, 8)});
  cases.push_back({"causal N=4097, d=64", causal(dense(1, 1, 1, 4097, 4097, 64))});
  cases.push_back({"dense N=1025, d=96", dense(1, 1, 1, 1025, 1025, 96)});
  cases.push_back({"causal N_q=129 > N_k=17 (fully masked rows)", causal(dense(2, 2, 2, 129, 17, 64))});
  cases.push_back({"causal N_q=1025 > N_k=255 (fully masked blocks)", causal(dense(1, 2, 2, 1025, 255, 128))});
  cases.push_back({"causal N_q=17 < N_k=129", causal(dense(2, 2, 2, 17, 129, 32))});
  cases.push_back({"causal N_q=97 < N_k=1025, window (32, 0)", windowed(causal(dense(1, 2, 2, 97, 1025, 64)), 32, 0)});
  cases.push_back({"window (16, 8), N_q=255 > N_k=97", windowed(dense(1, 2, 2, 255, 97, 96), 16, 8)});
  cases.push_back({"GQA 4:1, N=129, d=64", dense(2, 8, 2, 129, 129, 64)});
  cases.push_back({"GQA 4:1 causal, N=255, d=96", causal(dense(1, 8, 2, 255, 255, 96))});
  cases.push_back({"MQA 4:1 causal, N=1025, d=128", causal(dense(1, 4, 1, 1025, 1025, 128))});
  cases.push_back({"MQA 2:1, N_q=97, N_k=255, d=256", dense(1, 2, 1, 97, 255, 256)});
  cases.push_back(
      {"varlen GQA 2:1 with empty entries", Problem::varlen(4, 2, 64, {17, 0, 97, 128, 1}, {33, 5, 0, 129, 1025})});
  cases.push_back(
      {"varlen causal, N_q != N_k, empty entry", causal(Problem::varlen(2, 2, 32, {129, 17, 0}, {17, 129, 3}))});
  cases.push_back({"varlen window (16, 8), d=128",
                   windowed(Problem::varlen(2, 1, 128, {255, 0, 64, 129}, {255, 17, 64, 97}), 16, 8)});
  return cases;
}

constexpr std::uint64_t kSeed = 20261122;

// One forward of flash2 (its default tile, or block_m x block_n) under the one verification rule
// (check_forward, gpu_support.hpp).
void check_case(const Case& c, DType dtype, int block_m = 0, int block_n = 0,
                Distribution distribution = Distribution::normal) {
  kernels::LaunchOptions options;
  options.block_m = block_m;
  options.block_n = block_n;
  check_forward("flash2", c, dtype, options, kSeed, distribution);
}

// Run options with a forward tile (0, 0: the default).
kernels::LaunchOptions tile(int block_m, int block_n) {
  kernels::LaunchOptions o;
  o.block_m = block_m;
  o.block_n = block_n;
  return o;
}

}  // namespace

TEST_CASE("flash2 is registered with its support rules", "[gpu][flash2]") {
  const kernels::Variant& v = variant("flash2");
  CHECK(v.device == kernels::Device::cuda);
  CHECK_FALSE(v.materializes);
  CHECK_FALSE(v.description.empty());
  CHECK_FALSE(v.supported.empty());
  const Problem p = dense(1, 2, 2, 64, 64, 64);
  for (std::int64_t d : {32, 64, 96, 128, 256}) {
    Problem q = p;
    q.head_dim = d;
    for (DType dtype : {DType::fp16, DType::bf16}) CHECK(v.supports(q, dtype, Pass::fwd).ok);
  }
  for (DType dtype : {DType::fp32, DType::fp64, DType::fp8_e4m3}) {
    INFO(name(dtype));
    const kernels::Support s = v.supports(p, dtype, Pass::fwd);
    CHECK_FALSE(s.ok);
    CHECK(s.reason.find("flash2 runs fp16 and bf16") != std::string::npos);
  }
  Problem odd = p;
  odd.head_dim = 40;
  const kernels::Support d40 = v.supports(odd, DType::fp16, Pass::fwd);
  CHECK_FALSE(d40.ok);
  CHECK(d40.reason.find("head_dim = 40") != std::string::npos);
  odd.head_dim = 64;
  odd.head_dim_v = 32;
  const kernels::Support dv = v.supports(odd, DType::bf16, Pass::fwd);
  CHECK_FALSE(dv.ok);
  CHECK(dv.reason.find("head_dim_v") != std::string::npos);
  for (Pass pass : {Pass::bwd, Pass::fwdbwd}) {
    CHECK(v.supports(p, DType::fp16, pass).ok);
    CHECK_FALSE(v.supports(p, DType::fp32, pass).ok);
    CHECK_FALSE(v.supports(odd, DType::bf16, pass).ok);
  }
  // bytes model: FlashAttention's, with the forward's B_r (default 128 at d = 64, or the run's br) and the
  // backward's 128 keys per CTA
  REQUIRE(v.bytes_model);
  const Problem big = dense(2, 4, 4, 4096, 4096, 64);
  CHECK(v.bytes_model(big, DType::bf16, Pass::fwd, tile(0, 0)) == flash_bytes(big, DType::bf16, Pass::fwd, 128));
  CHECK(v.bytes_model(big, DType::bf16, Pass::fwd, tile(64, 64)) == flash_bytes(big, DType::bf16, Pass::fwd, 64));
  CHECK(v.bytes_model(big, DType::bf16, Pass::bwd, tile(64, 64)) == flash_bytes(big, DType::bf16, Pass::bwd, 128));
  CHECK(v.bytes_model(big, DType::bf16, Pass::fwdbwd, tile(0, 0)) ==
        v.bytes_model(big, DType::bf16, Pass::fwd, tile(0, 0)) + v.bytes_model(big, DType::bf16, Pass::bwd, tile(0, 0)));
  CHECK(v.bytes_model(big, DType::bf16, Pass::fwd, tile(32, 64)) > v.bytes_model(big, DType::bf16, Pass::fwd, tile(128, 64)));
  CHECK(v.workspace_model(p, DType::fp16, Pass::fwd) == 0);
  CHECK(v.workspace_model(p, DType::fp16, Pass::fwdbwd) == v.workspace_model(p, DType::fp16, Pass::bwd));
}

// Issue requirement: no local-memory spills. cudaFuncGetAttributes' localSizeBytes counts spill slots and stack
// frames; the kernels have neither, so every compiled kernel (both dtypes, every forward tile, every backward tile
// and helper kernel) must report 0, on the architecture this build runs (sm_80 or sm_90a SASS).
TEST_CASE("no flash2 kernel uses local memory (no register spills)", "[gpu][flash2]") {
  const kernels::Variant& v = variant("flash2");
  REQUIRE(v.kernels);
  const std::vector<kernels::KernelInfo> list = v.kernels();
  int forward = 0, backward_main = 0, fault = 0, dropout_forward = 0, dropout_backward = 0;
  for (const kernels::KernelInfo& k : list) {
    INFO(k.name << ": " << k.registers << " registers, " << k.local_bytes << " bytes of local memory");
    CHECK(k.local_bytes == 0);
    CHECK(k.registers > 0);
    CHECK(k.registers <= 255);
    const bool test_only = k.name.find("(test-only)") != std::string::npos;
    const bool dropout = k.name.size() >= 8 && k.name.compare(k.name.size() - 8, 8, " dropout") == 0;
    fault += test_only;
    forward += !test_only && !dropout && k.name.rfind("forward d=", 0) == 0;
    backward_main += !dropout && k.name.rfind("backward d=", 0) == 0;
    dropout_forward += dropout && k.name.rfind("forward d=", 0) == 0;
    dropout_backward += dropout && k.name.rfind("backward d=", 0) == 0;
  }
#if defined(FLASHLAB_TILE_SWEEP)
  CHECK(forward == 2 * 17);  // the forward tiles of kernels/README.md, fp16 and bf16
#else
  CHECK(forward == 2 * 5);  // the default tile of each head dim, fp16 and bf16 (FLASHLAB_TILE_SWEEP: all 17)
#endif
  CHECK(backward_main == 2 * 6);                      // d = 32, 64 (one and two dO buffers), 96, 128, 256
  CHECK(fault == 2);                                  // the test-only fault kernel (d = 64 default tile), fp16, bf16
  CHECK(dropout_forward == 2 * 5);                    // kDropoutConfigs: one tile per head dim, fp16 and bf16
  CHECK(dropout_backward == backward_main);           // every backward tile has its dropout twin
  CHECK(list.size() == std::size_t(forward + backward_main + fault + dropout_forward + dropout_backward +
                                   2 * 3));  // + preprocess, dQ conversion, GQA sums
}

TEST_CASE("flash2 forward matches the fp64 reference under the baseline rule", "[gpu][flash2]") {
  for (const Case& c : accuracy_cases()) {
    for (DType dtype : {DType::fp16, DType::bf16}) check_case(c, dtype);
  }
}

// Inputs that stress the numerics (the FlashAttention-3 outliers; peaked, flat, ramp, ties, large logits), each dtype,
// on shapes where the online softmax rescales across many key tiles.
TEST_CASE("flash2 forward on stress inputs stays within its bound", "[gpu][flash2][numerics]") {
  const std::vector<Case> cases = {{"dense N=1025, d=64", dense(1, 2, 2, 1025, 1025, 64)},
                                   {"causal N=777, d=128", causal(dense(1, 2, 2, 777, 777, 128))},
                                   {"GQA 2:1 N_q=129 < N_k=2049, d=256", dense(1, 2, 1, 129, 2049, 256)}};
  for (const Distribution distribution : kStressDistributions) {
    for (const Case& c : cases) {
      for (DType dtype : {DType::fp16, DType::bf16}) check_case(c, dtype, 0, 0, distribution);
    }
  }
}

// Every compiled forward tile (flash2[br=..,bc=..]), found by trying B_r, B_c in {32, 64, 128, 256}: a tile that
// is not compiled is refused with Unsupported before any launch. Two awkward problems per head dim: causal with
// N_q > N_k (partial tiles, fully masked rows) and a varlen window batch with an empty sequence.
TEST_CASE("every flash2 forward tile matches the fp64 reference under the baseline rule", "[gpu][flash2]") {
  const kernels::Variant& flash = variant("flash2");
  for (const std::int64_t d : {32, 64, 96, 128, 256}) {
    const std::vector<Case> cases = {
        {"causal N_q=255 > N_k=129", causal(dense(1, 2, 2, 255, 129, d))},
        {"varlen window (16, 8), empty entry", windowed(Problem::varlen(2, 1, d, {97, 0, 130}, {255, 17, 129}), 16, 8)}};
    int tiles = 0;
    for (const int br : {32, 64, 128, 256}) {
      for (const int bc : {32, 64, 128, 256}) {
        // is the tile compiled? one launch on a one-token problem answers
        const Problem one = dense(1, 1, 1, 1, 1, d);
        Stream stream;
        DeviceTensors t(one, DType::bf16, kSeed, stream.get());
        AttentionParams probe = t.params();
        probe.options.block_m = br;
        probe.options.block_n = bc;
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
        for (const Case& c : cases) {
          for (DType dtype : {DType::fp16, DType::bf16}) check_case(c, dtype, br, bc);
        }
      }
    }
    INFO("head_dim " << d);
#if defined(FLASHLAB_TILE_SWEEP)
    CHECK(tiles >= 2);  // the default and at least one other per head dim (d = 96 has two, the others three+)
#else
    CHECK(tiles == 1);  // the default alone; the refusal names FLASHLAB_TILE_SWEEP (checked above)
#endif
  }
}

TEST_CASE("flash2 rejects what it cannot run at launch", "[gpu][flash2]") {
  const kernels::Variant& v = variant("flash2");
  const Problem p = dense(1, 2, 2, 65, 65, 64);
  Stream stream;
  DeviceTensors t(p, DType::fp16, 3, stream.get());
  CountingAllocator allocator;
  const LaunchContext ctx{allocator, stream.get()};
  {
    AttentionParams a = t.params();
    a.o = static_cast<char*>(a.o) + 2;  // one element off 16-byte alignment
    CHECK_THROWS_AS(v.forward(a, ctx), InvalidProblem);
  }
  {
    AttentionParams a = t.params();
    a.k_strides.token += 4;  // not a multiple of 8 elements
    CHECK_THROWS_AS(v.forward(a, ctx), InvalidProblem);
  }
  {
    AttentionParams a = t.params();
    a.dtype = DType::fp32;
    CHECK_THROWS_AS(v.forward(a, ctx), Unsupported);
  }
  {
    AttentionParams a = t.params();
    a.d_out = nullptr;  // a forward's params: no dO, dQ, dK, dV given
    a.dq = nullptr;
    a.dk = nullptr;
    a.dv = nullptr;
    CHECK_THROWS_AS(v.backward(a, ctx), InvalidProblem);
  }
  stream.sync();
  CHECK(allocator.calls() == 0);
  // nothing was launched: the outputs are still poisoned
  CHECK(count_nan(decode(t.o, DType::fp16)) == static_cast<std::int64_t>(t.o.bytes() / 2));
}

// The test-only fault Fault::row_sum_in_dtype (l_i accumulated in the input dtype) must be caught by the bound: the
// same forward with and without it, the clean one within its bound, the faulty one above it in LSE and O, with the
// error growth stated. Outside the compiled tile the fault is refused.
TEST_CASE("an injected fault in flash2's data path exceeds its bound", "[gpu][flash2][numerics]") {
  const kernels::Variant& flash = variant("flash2");
  const kernels::Variant& standard = variant("standard");
  const Problem p = dense(1, 2, 2, 1025, 1025, 64);
  for (DType dtype : {DType::fp16, DType::bf16}) {
    INFO(name(dtype));
    Stream stream;
    DeviceTensors t(p, dtype, kSeed, stream.get());
    AttentionParams params = t.params();
    CountingAllocator allocator;
    standard.forward(params, {allocator, stream.get()});
    stream.sync();
    const HostOutputs standard_out = host_outputs(t, false);
    flash.forward(params, {allocator, stream.get()});
    stream.sync();
    const harness::Verification clean =
        verify_outputs(flash, params, Pass::fwd, Distribution::normal, kSeed, host_outputs(t, false), &standard_out);
    check_verified(clean);
    t.poison(stream.get());
    params.fault = kernels::Fault::row_sum_in_dtype;
    flash.forward(params, {allocator, stream.get()});
    stream.sync();
    const harness::Verification faulty =
        verify_outputs(flash, params, Pass::fwd, Distribution::normal, kSeed, host_outputs(t, false), &standard_out);
    const double lse_growth = faulty.tensors.at("lse").error.max_abs / clean.tensors.at("lse").error.max_abs;
    const double o_growth = faulty.tensors.at("o").error.max_abs / clean.tensors.at("o").error.max_abs;
    INFO("faulty: " << faulty.failure << "; error growth: LSE " << lse_growth << "x, O " << o_growth << "x");
    CHECK_FALSE(faulty.pass);
    CHECK(faulty.tensors.at("lse").above_bound > 0);
    CHECK(lse_growth > 10);
    WARN("flash2 " << name(dtype) << " with l_i in the dtype: LSE error x" << lse_growth << ", O error x" << o_growth
                   << "; " << faulty.failure);
    Problem other = p;
    other.head_dim = 128;
    DeviceTensors u(other, dtype, kSeed, stream.get());
    AttentionParams refused = u.params();
    refused.fault = kernels::Fault::row_sum_in_dtype;
    CHECK_THROWS_AS(flash.forward(refused, {allocator, stream.get()}), Unsupported);
  }
}
