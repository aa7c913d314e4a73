// Dropout in the reference (core/dropout.hpp): the forward against the naive attention asking the mask entry by entry,
// the LSE untouched by dropout, and the mean over many masks approaching the attention without dropout.
#include "catch.hpp"
#include "support.hpp"

using namespace flashlab;
using flashlab::test::Data;

namespace {

Problem with_dropout(Problem p, double rate, std::uint64_t seed, std::uint64_t offset = 0) {
  p.dropout = {rate, seed, offset};
  return p;
}

}  // namespace

TEST_CASE("forward with dropout matches the naive attention under the same mask", "[reference][dropout]") {
  Problem dense;
  dense.batch = 2;
  dense.heads = 4;
  dense.heads_kv = 2;
  dense.seqlen_q = GENERATE(1, 17, 97);
  dense.seqlen_k = GENERATE(17, 129);
  dense.head_dim = 24;
  dense.causal = GENERATE(false, true);
  Problem varlen = Problem::varlen(2, 1, 16, {5, 0, 33, 17}, {7, 3, 40, 1});
  varlen.window = {9, 4};
  for (const Problem& base : {dense, varlen}) {
    for (const double rate : {0.17, 0.5}) {
      const Problem p = with_dropout(base, rate, 77, 3);
      INFO(p.describe());
      Data data(p);
      data.randomize({.seed = 5, .distribution = Distribution::normal});
      data.run_forward({.row_block = 16});
      const test::Naive naive = test::naive_forward(data);
      CHECK(test::max_norm_relative(data.o.values(), naive.o) <= 1e-13);
      // the LSE is that of the undropped P, bit for bit
      Data plain(base);
      plain.randomize({.seed = 5, .distribution = Distribution::normal});
      plain.run_forward({.row_block = 16});
      CHECK(data.lse.values() == plain.lse.values());
      CHECK(data.o.values() != plain.o.values());
    }
  }
}

TEST_CASE("forward with dropout repeats bit for bit and follows seed and offset", "[reference][dropout]") {
  Problem p;
  p.batch = 2;
  p.heads = 3;
  p.seqlen_q = p.seqlen_k = 65;
  p.head_dim = 16;
  auto output = [&](std::uint64_t seed, std::uint64_t offset, int workers) {
    Data data(with_dropout(p, 0.2, seed, offset));
    data.randomize({.seed = 9, .distribution = Distribution::normal});
    data.run_forward({.row_block = 16, .workers = workers});
    return data.o.values();
  };
  CHECK(output(1, 0, 1) == output(1, 0, 2));
  CHECK(output(1, 0, 1) != output(2, 0, 1));
  CHECK(output(1, 0, 1) != output(1, 6, 1));
}

TEST_CASE("the mean of O over independent masks approaches O without dropout", "[reference][dropout]") {
  Problem p;
  p.seqlen_q = 8;
  p.seqlen_k = 32;
  p.head_dim = 8;
  Data plain(p);
  plain.randomize({.seed = 3, .distribution = Distribution::normal});
  plain.run_forward();
  constexpr int kMasks = 400;
  std::vector<double> mean(plain.o.values().size(), 0.0);
  for (int m = 0; m < kMasks; ++m) {
    Data data(with_dropout(p, 0.25, 11, static_cast<std::uint64_t>(m)));  // offset m: a fresh mask per call (B H = 1)
    data.randomize({.seed = 3, .distribution = Distribution::normal});
    data.run_forward();
    for (std::size_t i = 0; i < mean.size(); ++i) mean[i] += data.o.values()[i] / kMasks;
  }
  // E[O] = O without dropout; each entry's standard error is below max|v| sqrt(p / (1 - p) / kMasks) ~ 0.1
  double worst = 0;
  for (std::size_t i = 0; i < mean.size(); ++i) worst = std::max(worst, std::abs(mean[i] - plain.o.values()[i]));
  CHECK(worst < 0.15);
}
