// GPU tests of the standard variant: forward and backward against the fp64 Eigen reference on identical inputs
// (generated on the device, filled on the host from the same seed and dtype rounding), the workspace model against
// the bytes actually allocated, and out-of-memory behaviour.
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

std::vector<Case> accuracy_cases() {
  std::vector<Case> cases;
  cases.push_back({"dense N=1", dense(2, 2, 2, 1, 1, 32)});
  {
    Problem p = dense(2, 3, 3, 17, 17, 64);
    p.head_dim_v = 32;
    cases.push_back({"dense N=17, d_v != d", p});
  }
  cases.push_back({"dense N=97, d=40", dense(1, 2, 2, 97, 97, 40)});
  {
    Problem p = dense(2, 2, 2, 129, 129, 64);
    p.causal = true;
    cases.push_back({"causal N=129", p});
  }
  {
    Problem p = dense(1, 2, 2, 1025, 1025, 32);
    p.window = {16, 8};
    cases.push_back({"window (16, 8), N=1025", p});
  }
  cases.push_back({"GQA 4:1, N=128", dense(2, 8, 2, 128, 128, 64)});
  {
    Problem p = dense(1, 4, 1, 1025, 1025, 64);
    p.causal = true;
    cases.push_back({"MQA 4:1 causal, N=1025", p});
  }
  {
    Problem p = dense(2, 2, 2, 129, 17, 64);
    p.causal = true;
    cases.push_back({"causal N_q=129 > N_k=17 (fully masked rows)", p});
  }
  {
    Problem p = dense(2, 2, 2, 17, 129, 64);
    p.causal = true;
    cases.push_back({"causal N_q=17 < N_k=129", p});
  }
  cases.push_back(
      {"varlen GQA 2:1 with empty entries", Problem::varlen(4, 2, 64, {17, 0, 97, 128, 1}, {33, 5, 0, 129, 1025})});
  {
    Problem p = Problem::varlen(2, 2, 32, {129, 17, 0}, {17, 129, 3});
    p.causal = true;
    cases.push_back({"varlen causal, N_q != N_k, empty entry", p});
  }
  // Rows of every forward softmax configuration: register tiles (a warp or a block of 128 per row) and the
  // two-read kernel with 256 and 512 threads, in every dtype; the backward kernel with a warp and a block per row.
  for (std::int64_t seqlen_k : {300, 3000, 6000, 12000, 20000, 40000, 70000}) {
    Problem p = dense(1, 2, 2, 3, seqlen_k, 32);
    if (seqlen_k % 2000 == 0) {
      p.window = {seqlen_k / 2, -1};
    } else {
      p.causal = true;
    }
    cases.push_back({"long rows N_q=3, N_k=" + std::to_string(seqlen_k), p});
  }
  return cases;
}

constexpr std::uint64_t kSeed = 20261121;

// Forward and backward of standard against the fp64 reference under the one verification rule (harness/verify.hpp):
// standard materializes, so it has no baseline (no row is its own): every entry within the deterministic bound of
// its data path.
void check_case(const Case& c, DType dtype, Distribution distribution = Distribution::normal) {
  INFO(c.name << " [" << c.problem.describe() << "] " << name(dtype) << " " << name(distribution));
  const Problem& p = c.problem;
  const kernels::Variant& variant = gpu_test::variant("standard");
  REQUIRE(variant.supports(p, dtype, Pass::fwdbwd).ok);
  Stream stream;
  DeviceTensors t(p, dtype, kSeed, stream.get(), distribution);
  const AttentionParams params = t.params();
  CountingAllocator allocator;
  const LaunchContext ctx{allocator, stream.get()};

  variant.forward(params, ctx);
  stream.sync();
  CHECK(allocator.peak() == variant.workspace_model(p, dtype, Pass::fwd));
  CHECK(allocator.live_count() == 0);
  allocator.reset_peak();
  variant.backward(params, ctx);
  stream.sync();
  CHECK(allocator.peak() == variant.workspace_model(p, dtype, Pass::bwd));
  CHECK(allocator.live_count() == 0);

  reference::AttentionData<double> ref(p);
  ref.randomize({kSeed, distribution, dtype});

  // the inputs are bit for bit those of the reference
  CHECK(bit_mismatches(decode(t.q, dtype), ref.q.values()) == 0);
  CHECK(bit_mismatches(decode(t.k, dtype), ref.k.values()) == 0);
  CHECK(bit_mismatches(decode(t.v, dtype), ref.v.values()) == 0);
  CHECK(bit_mismatches(decode(t.d_out, dtype), ref.d_out.values()) == 0);

  const std::vector<double> o = decode(t.o, dtype), lse = decode(t.lse, DType::fp32);
  const std::vector<double> dq = decode(t.dq, dtype), dk = decode(t.dk, dtype), dv = decode(t.dv, dtype);
  // every output element written, none NaN
  CHECK(count_nan(o) == 0);
  CHECK(count_nan(lse) == 0);
  CHECK(count_nan(dq) == 0);
  CHECK(count_nan(dk) == 0);
  CHECK(count_nan(dv) == 0);

  check_verified(verify_outputs(variant, params, Pass::fwdbwd, distribution, kSeed, host_outputs(t, true), nullptr));

  // fully masked rows: LSE = -inf, O = 0 and dQ = 0 exactly
  const MaskedRows masked = masked_rows(lse, t.shapes.lse, {{&o, p.dv()}, {&dq, p.head_dim}});
  CHECK(masked.rows == fully_masked_rows(p));
  CHECK(masked.nonzero == 0);
}

}  // namespace

TEST_CASE("standard is registered with its support rules", "[gpu][standard]") {
  const kernels::Variant& v = variant("standard");
  CHECK(v.device == kernels::Device::cuda);
  CHECK(v.materializes);
  CHECK_FALSE(v.description.empty());
  CHECK_FALSE(v.supported.empty());
  const Problem p = dense(1, 2, 2, 64, 64, 64);
  for (DType dtype : {DType::fp32, DType::fp16, DType::bf16}) CHECK(v.supports(p, dtype, Pass::fwdbwd).ok);
  for (DType dtype : {DType::fp64, DType::fp8_e4m3}) {
    const kernels::Support s = v.supports(p, dtype, Pass::fwd);
    CHECK_FALSE(s.ok);
    CHECK_FALSE(s.reason.empty());
  }
  Problem odd = dense(1, 2, 2, 64, 64, 36);
  CHECK_FALSE(v.supports(odd, DType::fp16, Pass::fwd).ok);
  odd.head_dim = 64;
  odd.head_dim_v = 20;
  CHECK_FALSE(v.supports(odd, DType::fp16, Pass::fwd).ok);
}

TEST_CASE("standard matches the fp64 reference", "[gpu][standard]") {
  for (const Case& c : accuracy_cases()) {
    for (DType dtype : {DType::fp32, DType::fp16, DType::bf16}) check_case(c, dtype);
  }
}

// Inputs that stress the numerics: the bound follows S and P stored in the dtype (large logits lose most of their
// accuracy there, and the bound says so).
TEST_CASE("standard on stress inputs stays within its bound", "[gpu][standard][numerics]") {
  const std::vector<Case> cases = {{"causal N=513, d=64", causal(dense(1, 2, 2, 513, 513, 64))},
                                   {"GQA 2:1 N_q=97 < N_k=1025, d=128", dense(1, 2, 1, 97, 1025, 128)}};
  for (const Distribution distribution : kStressDistributions) {
    for (const Case& c : cases) {
      for (DType dtype : {DType::fp32, DType::fp16, DType::bf16}) check_case(c, dtype, distribution);
    }
  }
}

// Key padding runs dense: every score computed, the padded keys masked and the padded query rows fully masked. The
// check covers every entry, padded rows and keys included (their reference values are 0 and -inf, exactly).
TEST_CASE("standard runs key-padded batches dense and masked", "[gpu][standard][padding]") {
  const std::vector<Case> cases = {
      {"right padding N=97, empty and full entries",
       key_padded(dense(4, 4, 2, 97, 97, 64), KeyPadding::right, {97, 0, 40, 1})},
      {"left padding causal N=97", key_padded(causal(dense(3, 2, 2, 97, 97, 64)), KeyPadding::left, {5, 97, 60})},
      {"left padding window (8, 0), N=129, long rows", key_padded(windowed(dense(2, 2, 1, 129, 129, 32), 8, 0),
                                                                   KeyPadding::left, {129, 3})}};
  for (const Case& c : cases) {
    for (DType dtype : {DType::fp32, DType::bf16}) check_case(c, dtype);
  }
}

TEST_CASE("standard allocates exactly its workspace model", "[gpu][standard]") {
  const kernels::Variant& v = variant("standard");
  std::vector<Problem> problems = {dense(2, 4, 4, 256, 256, 64), dense(3, 8, 2, 100, 37, 128),
                                   Problem::varlen(8, 2, 64, {5, 0, 300, 64}, {7, 33, 0, 1000}),
                                   Problem::varlen(4, 4, 32, {1, 2, 3}, {3, 2, 1})};
  problems[1].causal = true;
  for (const Problem& p : problems) {
    for (DType dtype : {DType::fp32, DType::fp16, DType::bf16}) {
      INFO(p.describe() << " " << name(dtype));
      Stream stream;
      DeviceTensors t(p, dtype, 7, stream.get());
      CountingAllocator allocator;
      const std::int64_t fwd = v.workspace_model(p, dtype, Pass::fwd);
      const std::int64_t bwd = v.workspace_model(p, dtype, Pass::bwd);
      CHECK(v.workspace_model(p, dtype, Pass::fwdbwd) == std::max(fwd, bwd));
      v.forward(t.params(), {allocator, stream.get()});
      stream.sync();
      CHECK(allocator.peak() == fwd);
      allocator.reset_peak();
      v.backward(t.params(), {allocator, stream.get()});
      stream.sync();
      CHECK(allocator.peak() == bwd);
      CHECK(allocator.live_bytes() == 0);
      CHECK(allocator.live_count() == 0);
    }
  }
}

TEST_CASE("standard turns a refused allocation into OutOfMemory without leaking", "[gpu][standard][sanitize]") {
  const kernels::Variant& v = variant("standard");
  Problem p = Problem::varlen(4, 2, 64, {33, 0, 17}, {65, 9, 0});
  p.causal = true;
  Stream stream;
  DeviceTensors t(p, DType::bf16, 11, stream.get());
  for (Pass pass : {Pass::fwd, Pass::bwd}) {
    INFO(name(pass));
    auto launch = [&](kernels::Allocator& allocator) {
      const LaunchContext ctx{allocator, stream.get()};
      if (pass == Pass::fwd) {
        v.forward(t.params(), ctx);
      } else {
        v.backward(t.params(), ctx);
      }
    };
    CountingAllocator counting;
    launch(counting);
    stream.sync();
    const int allocations = counting.calls();
    CHECK(allocations >= 1);
    // refuse each allocation of the launch in turn
    for (int refused = 0; refused < allocations; ++refused) {
      CountingAllocator refusing(refused);
      CHECK_THROWS_AS(launch(refusing), OutOfMemory);
      stream.sync();
      CHECK(refusing.live_count() == 0);
      CHECK(refusing.live_bytes() == 0);
    }
    // the variant is usable afterwards (the cuBLAS handle's lock was released, nothing was left enqueued)
    CountingAllocator again;
    launch(again);
    stream.sync();
    CHECK(again.live_count() == 0);
  }
  CHECK(count_nan(decode(t.o, DType::bf16)) == 0);
  CHECK(count_nan(decode(t.dq, DType::bf16)) == 0);
}
