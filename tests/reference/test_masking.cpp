// Masks, fully masked rows and empty sequences, checked against the independent naive attention.
#include "catch.hpp"
#include "support.hpp"

using namespace flashlab;
using flashlab::test::Data;

namespace {

void check_against_naive(const Data& data) {
  const test::Naive naive = test::naive_forward(data);
  // Double against long double with the same mask: rounding of d-term dot products and N_k-term sums.
  CHECK(test::max_norm_relative(data.o.values(), naive.o) <= 1e-13);
  CHECK(test::lse_error(data.lse.values(), naive.lse) <= 1e-13);
}

}  // namespace

TEST_CASE("forward matches the naive attention under every mask", "[reference][mask]") {
  const std::int64_t nq = GENERATE(1, 17, 97, 128, 129);
  const std::int64_t nk = GENERATE(1, 17, 127, 129);
  struct Mask {
    bool causal;
    Window window;
  };
  for (const Mask mask : {Mask{false, {}}, Mask{true, {}}, Mask{false, {8, 0}}, Mask{false, {0, 5}},
                          Mask{false, {3, 3}}, Mask{true, {16, -1}}, Mask{true, {0, 0}}}) {
    Problem p;
    p.batch = 2;
    p.heads = 2;
    p.heads_kv = 1;
    p.seqlen_q = nq;
    p.seqlen_k = nk;
    p.head_dim = 32;
    p.causal = mask.causal;
    p.window = mask.window;
    INFO(p.describe());
    Data data(p);
    data.randomize({.seed = 61, .distribution = Distribution::outliers});
    data.run_forward({.row_block = 16});
    check_against_naive(data);
  }
}

TEST_CASE("fully masked rows give O = 0, LSE = -inf and zero gradients, never NaN", "[reference][mask]") {
  // Causal with N_q > N_k: query i keeps keys j <= i - (N_q - N_k), so the first N_q - N_k rows keep none.
  Problem p;
  p.heads = 2;
  p.seqlen_q = 97;
  p.seqlen_k = 17;
  p.head_dim = 40;
  p.causal = true;
  const Data data = test::solved(p, 71, {.row_block = 32});
  const std::int64_t masked_rows = p.seqlen_q - p.seqlen_k;
  for (std::int64_t h = 0; h < p.heads; ++h) {
    for (std::int64_t i = 0; i < p.seqlen_q; ++i) {
      const bool masked = i < masked_rows;
      CHECK(std::isinf(data.lse(0, h, i)) == masked);
      for (std::int64_t c = 0; c < p.head_dim; ++c) {
        if (masked) {
          CHECK(data.o(0, i, h, c) == 0.0);
          CHECK(data.dq(0, i, h, c) == 0.0);
        }
        CHECK(std::isfinite(data.o(0, i, h, c)));
        CHECK(std::isfinite(data.dq(0, i, h, c)));
      }
    }
  }
  CHECK(test::all_finite(data.dk.values()));
  CHECK(test::all_finite(data.dv.values()));
  check_against_naive(data);
}

TEST_CASE("a window that keeps only the diagonal gives O = V of the same position", "[reference][mask]") {
  Problem p;
  p.heads = 2;
  p.heads_kv = 2;
  p.seqlen_q = p.seqlen_k = 33;
  p.head_dim = 8;
  p.window = {0, 0};
  const Data data = test::solved(p, 81);
  for (std::int64_t i = 0; i < p.seqlen_q; ++i) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      for (std::int64_t c = 0; c < p.head_dim; ++c) CHECK(data.o(0, i, h, c) == data.v(0, i, h, c));
    }
  }
}

TEST_CASE("keys no query can see get zero dK and dV", "[reference][mask]") {
  // Window (2, 0) with N_k = N_q + 10: query i sees keys i+8 .. i+10, so keys 0..7 are never seen.
  Problem p;
  p.seqlen_q = 20;
  p.seqlen_k = 30;
  p.head_dim = 8;
  p.window = {2, 0};
  const Data data = test::solved(p, 91);
  for (std::int64_t j = 0; j < 8; ++j) {
    for (std::int64_t c = 0; c < p.head_dim; ++c) {
      CHECK(data.dk(0, j, 0, c) == 0.0);
      CHECK(data.dv(0, j, 0, c) == 0.0);
    }
  }
  double seen = 0;
  for (std::int64_t c = 0; c < p.head_dim; ++c) seen += std::abs(data.dv(0, 8, 0, c));
  CHECK(seen > 0);
}

TEST_CASE("empty sequences are fine", "[reference][mask]") {
  SECTION("N_q = 0") {
    Problem p;
    p.seqlen_q = 0;
    p.seqlen_k = 17;
    const Data data = test::solved(p, 1);
    CHECK(data.o.numel() == 0);
    CHECK(test::max_norm_relative(data.dk.values(), std::vector<double>(data.dk.values().size(), 0.0)) == 0.0);
    CHECK(test::max_norm_relative(data.dv.values(), std::vector<double>(data.dv.values().size(), 0.0)) == 0.0);
  }
  SECTION("N_k = 0") {
    Problem p;
    p.seqlen_q = 17;
    p.seqlen_k = 0;
    const Data data = test::solved(p, 1);
    for (double x : data.o.values()) CHECK(x == 0.0);
    for (double x : data.dq.values()) CHECK(x == 0.0);
    for (double x : data.lse.values()) CHECK(std::isinf(x));
  }
  SECTION("varlen entries with no queries or no keys") {
    Problem p = Problem::varlen(2, 2, 16, {0, 5, 0, 3}, {0, 0, 7, 4});
    const Data data = test::solved(p, 2);
    for (std::int64_t i = 0; i < 5; ++i) {  // sequence 1: queries without keys
      for (std::int64_t h = 0; h < 2; ++h) {
        CHECK(std::isinf(data.lse(0, h, i)));
        for (std::int64_t c = 0; c < 16; ++c) CHECK(data.o(0, i, h, c) == 0.0);
      }
    }
    for (std::int64_t j = 0; j < 7; ++j) {  // sequence 2: keys without queries
      for (std::int64_t g = 0; g < 2; ++g) {
        for (std::int64_t c = 0; c < 16; ++c) {
          CHECK(data.dk(0, j, g, c) == 0.0);
          CHECK(data.dv(0, j, g, c) == 0.0);
        }
      }
    }
    check_against_naive(data);
  }
}

TEST_CASE("large scores do not overflow", "[reference][mask]") {
  Problem p;
  p.seqlen_q = p.seqlen_k = 97;
  p.head_dim = 40;
  p.softmax_scale = 50.0;  // scores of outlier inputs reach ~1e5: exp would overflow without the max shift
  Data data(p);
  data.randomize({.seed = 3, .distribution = Distribution::outliers});
  data.run_forward();
  data.run_backward();
  CHECK(test::all_finite(data.o.values()));
  CHECK(test::all_finite(data.lse.values()));
  CHECK(test::all_finite(data.dq.values()));
  CHECK(test::all_finite(data.dk.values()));
  check_against_naive(data);
}

TEST_CASE("a masked key's value never reaches O or dQ, however large", "[reference][mask]") {
  // Causal, N = 32, blocks of 16 rows: key 31 lies in the second block's span but only row 31 keeps it. A masked
  // weight must be an exact 0: a tiny nonzero one (Eigen's exp(-inf) is a subnormal 5.6e-309) times V = 1e300
  // would move the other rows by 1e-8.
  Problem p;
  p.heads = 2;
  p.seqlen_q = p.seqlen_k = 32;
  p.head_dim = 8;
  p.causal = true;
  auto solve = [&](double v_last) {
    Data data(p);
    data.randomize({.seed = 17, .distribution = Distribution::normal, .dtype = DType::fp64});
    for (std::int64_t c = 0; c < p.head_dim; ++c) data.v(0, 31, 0, c) = v_last;
    data.run_forward({.row_block = 16});
    data.run_backward({.row_block = 16});
    return data;
  };
  const Data plain = solve(0.0), large = solve(1e300);
  for (std::int64_t h = 0; h < p.heads; ++h) {
    for (std::int64_t i = 0; i < 31; ++i) {
      CHECK(large.lse(0, h, i) == plain.lse(0, h, i));
      for (std::int64_t c = 0; c < p.head_dim; ++c) {
        INFO("h " << h << " row " << i << " col " << c);
        CHECK(large.o(0, i, h, c) == plain.o(0, i, h, c));
        CHECK(large.dq(0, i, h, c) == plain.dq(0, i, h, c));
      }
    }
  }
}

// Key padding, run both ways: the padded batch masked (materializing variants read the padded tensors) and its unpadded
// varlen form (the fused kernels), on inputs that share their values through the generator's token remap. The valid
// rows must agree between the two, and both with the independent naive attention; padded query rows are fully masked
// (O = 0, LSE = -inf, dQ = 0) and padded keys get no gradient.
TEST_CASE("key padding: the padded batch masked equals its unpadded varlen form", "[reference][mask][padding]") {
  struct Mask {
    bool causal;
    Window window;
  };
  for (const KeyPadding side : {KeyPadding::right, KeyPadding::left}) {
    for (const Mask mask : {Mask{false, {}}, Mask{true, {}}, Mask{false, {5, 3}}, Mask{true, {9, 0}}}) {
      Problem p;
      p.batch = 5;
      p.heads = 4;
      p.heads_kv = 2;
      p.seqlen_q = p.seqlen_k = 97;
      p.head_dim = 24;
      p.causal = mask.causal;
      p.window = mask.window;
      p.key_padding = side;
      p.valid_lengths = {97, 0, 1, 40, 96};  // unpadded, empty, a single token, and in between
      INFO(p.describe());
      const InputSpec spec{.seed = 83, .distribution = Distribution::outliers, .dtype = DType::fp64};
      InputSpec remapped = spec;
      remapped.token_source = p.padded_tokens();
      Data dense(p), varlen(p.unpadded());
      dense.randomize(spec);
      varlen.randomize(remapped);
      for (Data* data : {&dense, &varlen}) {
        data->run_forward({.row_block = 16});
        data->run_backward({.row_block = 16});
      }
      check_against_naive(dense);
      check_against_naive(varlen);

      const test::PaddedComparison both = test::compare_padded_with_unpadded(dense, varlen);
      // the same fp64 arithmetic on the same values, only in other blocks of rows: equal to a few units in the last
      // place of the O(1)..O(10) values
      CHECK(both.worst <= 1e-13);
      CHECK(both.padded_not_zero == 0);
    }
  }
}
