// GPU tests of the flash2 backward: dQ, dK, dV against the fp64 Eigen reference on identical inputs (generated on
// the device, filled on the host from the same seed and dtype rounding) under the baseline rule of DESIGN.md §5
// (k = 3 for gradients), with `standard` run on the same inputs and dO as the baseline. On the GPU the backward takes
// the flash2 forward's O and LSE, as a training step does. Also: exact zeros where no key or no query is seen, the
// workspace against workspace_model, bitwise repeatability of the deterministic mode, and a small fwd+bwd launch
// tagged [sanitize] for compute-sanitizer.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// Rows (token, head) of dQ whose query sees no key, and rows of dK / dV whose key no query of the sequence sees
// (Problem::key_range; masks do not depend on the head, so a key no query sees is unseen by every head of its group).
struct UnseenRows {
  std::vector<std::int64_t> queries;  // token index in the [B', T_q] flattening
  std::vector<std::int64_t> keys;     // token index in the [B', T_k] flattening
};
UnseenRows unseen_rows(const Problem& p, const AttentionShapes& shapes) {
  UnseenRows u;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const Sequence s = p.sequence(b);
    std::vector<char> seen(static_cast<std::size_t>(s.seqlen_k), 0);
    for (std::int64_t i = 0; i < s.seqlen_q; ++i) {
      const KeyRange r = p.key_range(s, i);
      if (r.empty()) u.queries.push_back(s.slot * shapes.q[1] + s.q_offset + i);
      for (std::int64_t j = r.lo; j <= r.hi; ++j) seen[static_cast<std::size_t>(j)] = 1;
    }
    for (std::int64_t j = 0; j < s.seqlen_k; ++j) {
      if (!seen[static_cast<std::size_t>(j)]) u.keys.push_back(s.slot * shapes.k[1] + s.k_offset + j);
    }
  }
  return u;
}

// Nonzero entries in the given token rows (all heads) of a [B', T, heads, dim] tensor.
std::int64_t nonzero_in_rows(const std::vector<double>& x, const std::vector<std::int64_t>& rows, std::int64_t heads,
                             std::int64_t dim) {
  std::int64_t n = 0;
  for (std::int64_t row : rows) {
    for (std::int64_t e = 0; e < heads * dim; ++e) n += x[static_cast<std::size_t>(row * heads * dim + e)] != 0;
  }
  return n;
}

// Awkward lengths on purpose (partial query and key blocks of the backward's tiles, one-key rows, tile multiples),
// every head dim, each mask kind, N_q != N_k both ways with fully masked rows, GQA, MQA and varlen with empty entries.
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
  cases.push_back({"causal N=1025, d=32", causal(dense(1, 2, 2, 1025, 1025, 32))});
  cases.push_back({"dense N=1025, d=96", dense(1, 1, 1, 1025, 1025, 96)});
  cases.push_back({"causal N=4097, d=64", causal(dense(1, 1, 1, 4097, 4097, 64))});
  cases.push_back({"causal N_q=129 > N_k=17 (fully masked rows)", causal(dense(2, 2, 2, 129, 17, 64))});
  cases.push_back({"causal N_q=1025 > N_k=255 (fully masked blocks)", causal(dense(1, 2, 2, 1025, 255, 128))});
  cases.push_back({"causal N_q=17 < N_k=129 (unseen keys)", causal(dense(2, 2, 2, 17, 129, 32))});
  cases.push_back({"causal N_q=97 < N_k=1025, window (32, 0)", windowed(causal(dense(1, 2, 2, 97, 1025, 64)), 32, 0)});
  cases.push_back({"window (16, 8), N_q=255 > N_k=97", windowed(dense(1, 2, 2, 255, 97, 96), 16, 8)});
  cases.push_back({"GQA 4:1, N=129, d=64", dense(2, 8, 2, 129, 129, 64)});
  cases.push_back({"GQA 4:1 causal, N=255, d=256", causal(dense(1, 8, 2, 255, 255, 256))});
  cases.push_back({"MQA 4:1 causal, N=1025, d=128", causal(dense(1, 4, 1, 1025, 1025, 128))});
  cases.push_back({"MQA 2:1, N_q=97, N_k=255, d=96", dense(1, 2, 1, 97, 255, 96)});
  cases.push_back(
      {"varlen GQA 2:1 with empty entries", Problem::varlen(4, 2, 64, {17, 0, 97, 128, 1}, {33, 5, 0, 129, 1025})});
  cases.push_back(
      {"varlen causal, N_q != N_k, empty entry", causal(Problem::varlen(2, 2, 32, {129, 17, 0}, {17, 129, 3}))});
  cases.push_back({"varlen window (16, 8), d=128",
                   windowed(Problem::varlen(2, 1, 128, {255, 0, 64, 129}, {255, 17, 64, 97}), 16, 8)});
  return cases;
}

constexpr std::uint64_t kSeed = 20261123;

struct Gradients {
  std::vector<double> dq, dk, dv;
};

Gradients read_gradients(const DeviceTensors& t) {
  return {decode(t.dq, t.dtype), decode(t.dk, t.dtype), decode(t.dv, t.dtype)};
}

// Forward and backward of flash2 against the fp64 reference under the one verification rule (harness/verify.hpp):
// every entry within the deterministic bound of flash2's data path, and the FlashAttention rule with the standard
// variant's forward and backward on the same inputs and dO as the baseline.
void check_case(const Case& c, DType dtype, Distribution distribution = Distribution::normal) {
  INFO(c.name << " [" << c.problem.describe() << "] " << name(dtype) << " " << name(distribution));
  const Problem& p = c.problem;
  const kernels::Variant& flash = variant("flash2");
  const kernels::Variant& baseline = variant("standard");
  REQUIRE(flash.supports(p, dtype, Pass::bwd).ok);
  REQUIRE(flash.supports(p, dtype, Pass::fwdbwd).ok);
  REQUIRE(baseline.supports(p, dtype, Pass::fwdbwd).ok);
  Stream stream;
  DeviceTensors t(p, dtype, kSeed, stream.get(), distribution);
  const AttentionParams params = t.params();

  // the baseline: standard forward and backward in the same dtype on the same inputs and dO
  CountingAllocator baseline_allocator;
  baseline.forward(params, {baseline_allocator, stream.get()});
  baseline.backward(params, {baseline_allocator, stream.get()});
  stream.sync();
  const HostOutputs standard_out = host_outputs(t, true);

  // flash2: forward (its O and LSE are the backward's inputs), then backward, on poisoned outputs
  t.poison(stream.get());
  CountingAllocator allocator;
  flash.forward(params, {allocator, stream.get()});
  stream.sync();
  CHECK(allocator.peak() == 0);
  allocator.reset_peak();
  flash.backward(params, {allocator, stream.get()});
  stream.sync();
  CHECK(allocator.peak() == flash.workspace_model(p, dtype, Pass::bwd));
  CHECK(allocator.calls() <= 1);  // one allocation per launch
  CHECK(allocator.live_count() == 0);
  CHECK(flash.workspace_model(p, dtype, Pass::fwdbwd) == flash.workspace_model(p, dtype, Pass::bwd));
  const Gradients g = read_gradients(t);
  const HostOutputs flash_out = host_outputs(t, true);

  reference::AttentionData<double> ref(p);
  ref.randomize({kSeed, distribution, dtype});
  CHECK(bit_mismatches(decode(t.q, dtype), ref.q.values()) == 0);
  CHECK(bit_mismatches(decode(t.k, dtype), ref.k.values()) == 0);
  CHECK(bit_mismatches(decode(t.v, dtype), ref.v.values()) == 0);
  CHECK(bit_mismatches(decode(t.d_out, dtype), ref.d_out.values()) == 0);
  CHECK(count_nan(g.dq) == 0);
  CHECK(count_nan(g.dk) == 0);
  CHECK(count_nan(g.dv) == 0);

  check_verified(verify_outputs(flash, params, Pass::fwdbwd, distribution, kSeed, flash_out, &standard_out));

  // exact zeros: dQ rows that see no key, dK / dV rows that no query sees
  const UnseenRows unseen = unseen_rows(p, t.shapes);
  INFO(unseen.queries.size() << " query rows see no key, " << unseen.keys.size() << " key rows are seen by none");
  CHECK(nonzero_in_rows(g.dq, unseen.queries, p.heads, p.head_dim) == 0);
  CHECK(nonzero_in_rows(g.dk, unseen.keys, p.heads_kv, p.head_dim) == 0);
  CHECK(nonzero_in_rows(g.dv, unseen.keys, p.heads_kv, p.dv()) == 0);
}

std::vector<unsigned char> concat_bytes(const DeviceTensors& t) {
  std::vector<unsigned char> all = t.dq.to_host();
  for (const DeviceBuffer* b : {&t.dk, &t.dv}) {
    const std::vector<unsigned char> x = b->to_host();
    all.insert(all.end(), x.begin(), x.end());
  }
  return all;
}

}  // namespace

TEST_CASE("flash2 backward supports what the forward supports", "[gpu][flash2]") {
  const kernels::Variant& v = variant("flash2");
  REQUIRE(v.backward);
  for (std::int64_t d : {32, 64, 96, 128, 256}) {
    const Problem p = dense(2, 4, 2, 100, 70, d);
    for (DType dtype : {DType::fp16, DType::bf16}) {
      for (Pass pass : {Pass::bwd, Pass::fwdbwd}) CHECK(v.supports(p, dtype, pass).ok);
      CHECK(v.workspace_model(p, dtype, Pass::bwd) > 0);
      CHECK(v.workspace_model(p, dtype, Pass::fwdbwd) == v.workspace_model(p, dtype, Pass::bwd));
    }
  }
  CHECK_FALSE(v.supports(dense(1, 2, 2, 64, 64, 64), DType::fp32, Pass::bwd).ok);
  CHECK_FALSE(v.supports(dense(1, 2, 2, 64, 64, 40), DType::fp16, Pass::bwd).ok);
}

TEST_CASE("flash2 backward matches the fp64 reference under the baseline rule", "[gpu][flash2]") {
  for (const Case& c : accuracy_cases()) {
    for (DType dtype : {DType::fp16, DType::bf16}) check_case(c, dtype);
  }
}

// Inputs that stress the numerics, forward and backward, each dtype.
TEST_CASE("flash2 backward on stress inputs stays within its bound", "[gpu][flash2][numerics]") {
  const std::vector<Case> cases = {{"causal N=513, d=64", causal(dense(1, 2, 2, 513, 513, 64))},
                                   {"GQA 2:1 N_q=97 < N_k=1025, d=128", dense(1, 2, 1, 97, 1025, 128)}};
  for (const Distribution distribution : kStressDistributions) {
    for (const Case& c : cases) {
      for (DType dtype : {DType::fp16, DType::bf16}) check_case(c, dtype, distribution);
    }
  }
}

TEST_CASE("flash2 deterministic backward is bitwise repeatable", "[gpu][flash2]") {
  const std::vector<Case> cases = {
      {"MQA 4:1 causal, N=1025, d=64", causal(dense(2, 4, 1, 1025, 1025, 64))},
      {"dense N_q=255, N_k=1025, d=128", dense(1, 2, 2, 255, 1025, 128)},
      {"varlen window (64, 16), d=256", windowed(Problem::varlen(2, 2, 256, {300, 0, 129}, {257, 33, 700}), 64, 16)},
  };
  for (const Case& c : cases) {
    for (DType dtype : {DType::fp16, DType::bf16}) {
      INFO(c.name << " [" << c.problem.describe() << "] " << name(dtype));
      const kernels::Variant& flash = variant("flash2");
      Stream stream;
      DeviceTensors t(c.problem, dtype, kSeed + 1, stream.get());
      AttentionParams params = t.params();
      params.options.deterministic = true;
      CountingAllocator allocator;
      const LaunchContext ctx{allocator, stream.get()};
      flash.forward(params, ctx);
      std::vector<unsigned char> first;
      for (int run = 0; run < 10; ++run) {
        kernels::fill_nan(t.dq.get(), dtype, element_count<4>(t.shapes.q), stream.get());
        kernels::fill_nan(t.dk.get(), dtype, element_count<4>(t.shapes.k), stream.get());
        kernels::fill_nan(t.dv.get(), dtype, element_count<4>(t.shapes.v), stream.get());
        flash.backward(params, ctx);
        stream.sync();
        const std::vector<unsigned char> bytes = concat_bytes(t);
        if (run == 0) {
          first = bytes;
          CHECK(count_nan(decode(t.dq, dtype)) == 0);
        } else {
          INFO("run " << run);
          CHECK(std::memcmp(bytes.data(), first.data(), bytes.size()) == 0);
        }
      }
      CHECK(allocator.peak() == flash.workspace_model(c.problem, dtype, Pass::bwd));
    }
  }
}

// A few awkward shapes, fwd + bwd (deterministic too), checking only that every output is finite: small enough
// to run under compute-sanitizer (memcheck, racecheck, initcheck, synccheck) in seconds.
TEST_CASE("flash2 forward and backward on awkward shapes, for compute-sanitizer", "[gpu][flash2][sanitize]") {
  const std::vector<Problem> problems = {
      causal(dense(1, 2, 1, 67, 33, 64)),
      windowed(dense(1, 2, 2, 33, 130, 32), 8, 4),
      dense(1, 1, 1, 17, 65, 256),
      causal(Problem::varlen(1, 1, 128, {40, 0, 17}, {9, 3, 80})),
  };
  for (const Problem& p : problems) {
    for (DType dtype : {DType::fp16, DType::bf16}) {
      for (bool deterministic : {false, true}) {
        INFO(p.describe() << " " << name(dtype) << (deterministic ? " deterministic" : ""));
        const kernels::Variant& flash = variant("flash2");
        Stream stream;
        DeviceTensors t(p, dtype, kSeed + 2, stream.get());
        AttentionParams params = t.params();
        params.options.deterministic = deterministic;
        CountingAllocator allocator;
        const LaunchContext ctx{allocator, stream.get()};
        flash.forward(params, ctx);
        flash.backward(params, ctx);
        stream.sync();
        CHECK(count_nan(decode(t.o, dtype)) == 0);
        const Gradients g = read_gradients(t);
        for (const std::vector<double>* x : {&g.dq, &g.dk, &g.dv}) {
          CHECK(std::all_of(x->begin(), x->end(), [](double value) { return std::isfinite(value); }));
        }
      }
    }
  }
}
