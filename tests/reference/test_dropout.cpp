// Dropout in the reference (core/dropout.hpp): the forward against the naive attention asking the mask entry by entry,
// the LSE untouched by dropout, the mean over many masks approaching the attention without dropout, and a key-padded
// batch with dropout equal to its unpadded varlen form (the mask drawn inside the valid interval).
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

// Key padding with dropout, run both ways as the harness runs a padded row: the padded batch (the materializing
// variants) and its unpadded varlen form (the fused kernels) on the same values at the valid tokens. The mask of the
// padded batch is drawn at the positions inside each entry's valid interval, so both forms drop the same (token, token)
// pairs and agree to fp64 rounding, forward (O, LSE) and backward (dQ, dK, dV); drawn at the padded tensors' positions,
// a left-padded entry would drop other pairs and its rows would differ by O(1).
TEST_CASE("key padding with dropout: the padded batch equals its unpadded varlen form",
          "[reference][dropout][padding]") {
  for (const KeyPadding side : {KeyPadding::right, KeyPadding::left}) {
    for (const bool causal : {false, true}) {
      Problem base;
      base.batch = 4;
      base.heads = 6;
      base.heads_kv = 2;  // GQA 3:1
      base.seqlen_q = base.seqlen_k = 53;
      base.head_dim = 16;
      base.causal = causal;
      base.key_padding = side;
      base.valid_lengths = {53, 0, 20, 37};  // unpadded, empty, 20 and 37 of 53 valid
      const Problem p = with_dropout(base, 0.3, 91, 5);
      INFO(p.describe());
      const Problem unpadded = p.unpadded();
      REQUIRE(unpadded.dropout == p.dropout);
      const InputSpec spec{.seed = 17, .distribution = Distribution::normal, .dtype = DType::fp64};
      InputSpec remapped = spec;
      remapped.token_source = p.padded_tokens();
      Data dense(p), varlen(unpadded), plain(base);
      dense.randomize(spec);
      plain.randomize(spec);
      varlen.randomize(remapped);
      for (Data* data : {&dense, &varlen, &plain}) {
        data->run_forward({.row_block = 16});
        data->run_backward({.row_block = 16});
      }
      // each form against the independent naive attention (its own statement of the padded coordinates)
      for (const Data* data : {&dense, &varlen}) {
        const test::Naive naive = test::naive_forward(*data);
        CHECK(test::max_norm_relative(data->o.values(), naive.o) <= 1e-13);
        CHECK(test::lse_error(data->lse.values(), naive.lse) <= 1e-13);
      }
      const test::PaddedComparison both = test::compare_padded_with_unpadded(dense, varlen);
      CHECK(both.worst <= 1e-13);
      CHECK(both.padded_not_zero == 0);
      // dropout acted: O and every gradient differ from the run without it; the LSE does not
      CHECK(dense.o.values() != plain.o.values());
      CHECK(dense.dq.values() != plain.dq.values());
      CHECK(dense.dk.values() != plain.dk.values());
      CHECK(dense.dv.values() != plain.dv.values());
      CHECK(dense.lse.values() == plain.lse.values());
    }
  }
}
