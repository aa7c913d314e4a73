// The dropout keep mask (core/dropout.hpp): the counter layout against Philox called by hand, the 2 x 2 patch one draw
// covers, the kept fraction within a binomial bound, the independence of seeds, offsets and (batch, head)
// subsequences, the threshold, Problem's validation of p, and the coordinates of a key-padded entry (the positions
// inside its valid interval).
#include <cmath>
#include <cstdint>
#include <set>
#include <string>

#include "catch.hpp"
#include "flashlab/core/dropout.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/problem.hpp"

namespace flashlab {
namespace {

// The fraction of (i, j) in [0, rows) x [0, cols) kept.
double kept_fraction(std::uint64_t seed, std::uint64_t offset, std::uint64_t subsequence, double p, std::uint32_t rows,
                     std::uint32_t cols) {
  const std::uint32_t threshold = dropout_keep_threshold(p);
  std::int64_t kept = 0;
  for (std::uint32_t i = 0; i < rows; ++i) {
    for (std::uint32_t j = 0; j < cols; ++j) kept += dropout_keep(seed, offset, subsequence, i, j, threshold) ? 1 : 0;
  }
  return static_cast<double>(kept) / (static_cast<double>(rows) * cols);
}

TEST_CASE("dropout draws: counter (key pair, row pair, offset + subsequence), key = seed", "[core][dropout]") {
  const std::uint64_t seed = 0x0123456789abcdefull, offset = 0x100000000ull + 7, sub = 5;
  // row 37 = 2 * 16 + 5: row pair 2 * 8 + 5 = 21; key 11: key pair 5
  const Philox4x32 expected = philox4x32_10({{5u, 21u, 12u, 1u}}, 0x89abcdefu, 0x01234567u);
  const Philox4x32 got = dropout_draw(seed, offset, sub, 37, 11);
  for (int w = 0; w < 4; ++w) CHECK(got.x[w] == expected.x[w]);
  CHECK(dropout_word(37, 11) == 1);  // row 37 is in the upper 8 rows of its block (r = 0), key 11 odd (c = 1)
  CHECK(dropout_word(45, 10) == 2);  // row 45 = 37 + 8: r = 1
}

TEST_CASE("dropout draws: one draw per 2 x 2 patch of an m16n8 fragment, distinct across patches", "[core][dropout]") {
  std::set<std::uint32_t> first_words;
  for (std::uint32_t i = 0; i < 64; ++i) {
    for (std::uint32_t j = 0; j < 32; ++j) {
      const std::uint32_t base_i = i - i % 16 + i % 8, base_j = j - j % 2;
      const Philox4x32 a = dropout_draw(1, 0, 0, i, j), b = dropout_draw(1, 0, 0, base_i, base_j);
      for (int w = 0; w < 4; ++w) REQUIRE(a.x[w] == b.x[w]);
      if (i == base_i && j == base_j) first_words.insert(a.x[0]);
    }
  }
  CHECK(first_words.size() == 32 * 16);  // every patch its own draw
}

TEST_CASE("dropout keeps 1 - p of the pairs within a binomial bound", "[core][dropout]") {
  for (const double p : {0.1, 0.17, 0.5, 0.9}) {
    const std::uint32_t rows = 200, cols = 300;  // awkward sizes: partial patches at both ends
    const double n = static_cast<double>(rows) * cols;
    const double fraction = kept_fraction(42, 0, 3, p, rows, cols);
    const double sigma = std::sqrt(p * (1 - p) / n);
    INFO("p = " << p << ": kept " << fraction);
    CHECK(std::abs(fraction - (1 - p)) < 5 * sigma);  // P(|Z| > 5) ~ 6e-7
  }
  CHECK(kept_fraction(42, 0, 3, 0.0, 64, 64) == 1.0);
}

TEST_CASE("dropout masks of other seeds, offsets and subsequences are unrelated", "[core][dropout]") {
  const std::uint32_t threshold = dropout_keep_threshold(0.5);
  auto agreement = [&](std::uint64_t s1, std::uint64_t o1, std::uint64_t b1, std::uint64_t s2, std::uint64_t o2,
                       std::uint64_t b2) {
    std::int64_t same = 0, total = 0;
    for (std::uint32_t i = 0; i < 128; ++i) {
      for (std::uint32_t j = 0; j < 128; ++j, ++total) {
        same += dropout_keep(s1, o1, b1, i, j, threshold) == dropout_keep(s2, o2, b2, i, j, threshold) ? 1 : 0;
      }
    }
    return static_cast<double>(same) / static_cast<double>(total);
  };
  CHECK(agreement(1, 0, 0, 1, 0, 0) == 1.0);
  // independent masks agree on half the pairs: 0.5 +- 5 sigma, sigma = 0.5 / 128
  for (const double a : {agreement(1, 0, 0, 2, 0, 0), agreement(1, 0, 0, 1, 0, 1), agreement(1, 0, 0, 1, 4, 0),
                         agreement(1, 0, 0, 1ull << 32, 0, 0)}) {
    CHECK(std::abs(a - 0.5) < 5 * 0.5 / 128);
  }
  // the offset adds to the subsequence: a call at offset B H continues where (b, h) of the first call stop
  CHECK(agreement(1, 6, 0, 1, 0, 6) == 1.0);
}

TEST_CASE("dropout keep threshold is floor((1 - p) 2^32)", "[core][dropout]") {
  CHECK(dropout_keep_threshold(0.0) == 0xFFFFFFFFu);
  CHECK(dropout_keep_threshold(0.5) == 0x80000000u);
  CHECK(dropout_keep_threshold(0.75) == 0x40000000u);
  CHECK(dropout_keep_threshold(0.1) == static_cast<std::uint32_t>(std::floor(0.9 * 4294967296.0)));
}

TEST_CASE("Problem validates dropout p: 0 <= p < 1", "[core][dropout]") {
  Problem p;
  for (const double bad : {1.0, -0.1, 1.5, std::nan("")}) {
    p.dropout.p = bad;
    CHECK_THROWS_AS(p.validate(), InvalidProblem);
  }
  p.dropout = {0.1, 7, 8};
  CHECK_NOTHROW(p.validate());
  CHECK(p.describe().find("dropout=0.1 seed=7 offset=8") != std::string::npos);
}

TEST_CASE("Problem takes dropout under key padding, and its unpadded form keeps the dropout", "[core][dropout]") {
  for (const KeyPadding side : {KeyPadding::right, KeyPadding::left}) {
    Problem p;
    p.batch = 2;
    p.seqlen_q = p.seqlen_k = 16;
    p.key_padding = side;
    p.valid_lengths = {16, 9};
    p.dropout = {0.1, 7, 3};
    CHECK_NOTHROW(p.validate());
    const Problem unpadded = p.unpadded();
    CHECK(unpadded.is_varlen());
    CHECK(unpadded.dropout == p.dropout);
    CHECK_NOTHROW(unpadded.validate());
  }
}

TEST_CASE("key padding with dropout: the padded mask is the unpadded one shifted by each entry's padding",
          "[core][dropout]") {
  const std::uint32_t threshold = dropout_keep_threshold(0.4);
  const std::int64_t n = 40;
  for (const std::int64_t valid : {std::int64_t{0}, std::int64_t{1}, std::int64_t{23}, n}) {
    for (const bool left : {false, true}) {
      const std::int64_t front = left ? n - valid : 0;
      std::int64_t differ = 0, padded_kept = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
          const bool keep = dropout_keep_padded(3, 1, 7, i, j, front, valid, valid, threshold);
          const bool inside = i >= front && i < front + valid && j >= front && j < front + valid;
          if (!inside) {
            padded_kept += keep;
          } else {
            differ += keep != dropout_keep(3, 1, 7, static_cast<std::uint32_t>(i - front),
                                           static_cast<std::uint32_t>(j - front), threshold);
          }
        }
      }
      INFO("valid " << valid << (left ? " left" : " right"));
      CHECK(differ == 0);
      CHECK(padded_kept == 0);
    }
  }
}

}  // namespace
}  // namespace flashlab
