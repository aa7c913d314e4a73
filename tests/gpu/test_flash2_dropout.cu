// GPU tests of flash2 with dropout (core/dropout.hpp): forward and backward against the fp64 reference under the same
// mask (the deterministic bound of flash2's data path alone: standard has no dropout, so there is no baseline), the
// kernel's mask against core's entry by entry with the kept fraction within a binomial bound, and bitwise repeatable
// outputs. Tagged [dropout].
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/dropout.hpp"
#include "gpu_support.hpp"

namespace {

using namespace flashlab;
using namespace flashlab::gpu_test;

constexpr std::uint64_t kSeed = 20261201;

Problem with_dropout(Problem p, double rate, std::uint64_t seed, std::uint64_t offset) {
  p.dropout = {rate, seed, offset};
  return p;
}

// Awkward shapes: partial tiles, every head dim, masks, N_q != N_k, GQA and varlen with an empty entry.
std::vector<Case> dropout_cases() {
  std::vector<Case> cases;
  cases.push_back({"dense N=17, d=32", dense(2, 2, 2, 17, 17, 32)});
  cases.push_back({"causal N=129, d=64", causal(dense(2, 3, 3, 129, 129, 64))});
  cases.push_back({"dense N_q=97, N_k=255, d=96", dense(1, 2, 2, 97, 255, 96)});
  cases.push_back({"window (32, 0), N=1025, d=128", windowed(dense(1, 2, 2, 1025, 1025, 128), 32, 0)});
  cases.push_back({"causal N=255, d=256", causal(dense(1, 2, 2, 255, 255, 256))});
  cases.push_back({"GQA 4:1 causal, N=1025, d=64", causal(dense(1, 8, 2, 1025, 1025, 64))});
  cases.push_back({"varlen GQA 2:1 with an empty entry", Problem::varlen(4, 2, 64, {17, 0, 97, 128}, {33, 5, 0, 129})});
  return cases;
}

}  // namespace

TEST_CASE("flash2 with dropout: forward and backward within the bound of the fp64 reference under the same mask",
          "[flash2][dropout]") {
  const kernels::Variant& flash = variant("flash2");
  for (const Case& base : dropout_cases()) {
    for (const DType dtype : {DType::fp16, DType::bf16}) {
      const Problem p = with_dropout(base.problem, 0.17, 77, 5);
      INFO(base.name << " [" << p.describe() << "] " << name(dtype));
      REQUIRE(flash.supports(p, dtype, Pass::fwdbwd).ok);
      Stream stream;
      DeviceTensors t(p, dtype, kSeed, stream.get(), Distribution::normal);
      const AttentionParams params = t.params();
      t.poison(stream.get());
      CountingAllocator allocator;
      flash.forward(params, {allocator, stream.get()});
      flash.backward(params, {allocator, stream.get()});
      stream.sync();
      const HostOutputs out = host_outputs(t, true);
      check_verified(verify_outputs(flash, params, Pass::fwdbwd, Distribution::normal, kSeed, out, nullptr));
    }
  }
}

TEST_CASE("flash2 drops exactly core's mask, and keeps 1 - p of the weights within a binomial bound",
          "[flash2][dropout]") {
  // window (0, 0): row i sees key i alone, P = 1, so O_i = Z_ii V_i / (1 - p): O_i != 0 exactly where (i, i) is kept
  const kernels::Variant& flash = variant("flash2");
  for (const double rate : {0.1, 0.5}) {
    const Problem p = with_dropout(windowed(dense(2, 4, 4, 4097, 4097, 64), 0, 0), rate, 3, 11);
    INFO(p.describe());
    Stream stream;
    DeviceTensors t(p, DType::bf16, kSeed, stream.get(), Distribution::uniform);
    CountingAllocator allocator;
    flash.forward(t.params(), {allocator, stream.get()});
    stream.sync();
    const std::vector<double> o = decode(t.o, DType::bf16), v = decode(t.v, DType::bf16);
    const std::uint32_t threshold = dropout_keep_threshold16(rate);
    std::int64_t kept = 0, total = 0, mismatches = 0;
    for (std::int64_t b = 0; b < p.batch; ++b) {
      for (std::int64_t i = 0; i < p.seqlen_q; ++i) {
        for (std::int64_t h = 0; h < p.heads; ++h, ++total) {
          const auto row = static_cast<std::size_t>(((b * p.seqlen_q + i) * p.heads + h) * p.head_dim);
          const bool keep = dropout_keep(3, 11, static_cast<std::uint64_t>(b * p.heads + h), static_cast<std::uint32_t>(i),
                                         static_cast<std::uint32_t>(i), threshold);
          bool nonzero = false;
          for (std::int64_t c = 0; c < p.head_dim; ++c) nonzero |= o[row + static_cast<std::size_t>(c)] != 0;
          bool v_nonzero = false;
          for (std::int64_t c = 0; c < p.head_dim; ++c) v_nonzero |= v[row + static_cast<std::size_t>(c)] != 0;
          if (v_nonzero && nonzero != keep) ++mismatches;
          kept += keep ? 1 : 0;
        }
      }
    }
    CHECK(mismatches == 0);
    const double fraction = static_cast<double>(kept) / static_cast<double>(total);
    CHECK(std::abs(fraction - (1 - rate)) < 5 * std::sqrt(rate * (1 - rate) / static_cast<double>(total)));
  }
}

TEST_CASE("flash2 with dropout repeats bit for bit (deterministic backward)", "[flash2][dropout]") {
  const kernels::Variant& flash = variant("flash2");
  const Problem p = with_dropout(causal(dense(2, 4, 2, 1025, 1025, 128)), 0.1, 9, 0);
  auto run = [&]() {
    Stream stream;
    DeviceTensors t(p, DType::fp16, kSeed, stream.get(), Distribution::normal);
    AttentionParams params = t.params();
    params.options.deterministic = true;
    CountingAllocator allocator;
    flash.forward(params, {allocator, stream.get()});
    flash.backward(params, {allocator, stream.get()});
    stream.sync();
    std::vector<unsigned char> all = t.o.to_host();
    for (const DeviceBuffer* b : {&t.lse, &t.dq, &t.dk, &t.dv}) {
      const std::vector<unsigned char> bytes = b->to_host();
      all.insert(all.end(), bytes.begin(), bytes.end());
    }
    return all;
  };
  CHECK(run() == run());
}
