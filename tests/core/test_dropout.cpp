// The dropout keep mask (core/dropout.hpp): the counter layout against Philox called by hand, the mask against one
// built patch by patch from Philox (eight 16-bit pieces per draw), the 2 x 4 patch one draw covers and its own counter,
// the kept fraction within a binomial bound, the independence of seeds, offsets and (batch, head)
// subsequences, the threshold, Problem's validation of p, and the coordinates of a key-padded entry (the positions
// inside its valid interval).
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/dropout.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/problem.hpp"

namespace flashlab {
namespace {

// The fraction of (i, j) in [0, rows) x [0, cols) kept.
double kept_fraction(std::uint64_t seed, std::uint64_t offset, std::uint64_t subsequence, double p, std::uint32_t rows,
                     std::uint32_t cols) {
  const std::uint32_t threshold = dropout_keep_threshold16(p);
  std::int64_t kept = 0;
  for (std::uint32_t i = 0; i < rows; ++i) {
    for (std::uint32_t j = 0; j < cols; ++j) kept += dropout_keep(seed, offset, subsequence, i, j, threshold) ? 1 : 0;
  }
  return static_cast<double>(kept) / (static_cast<double>(rows) * cols);
}

TEST_CASE("dropout draws: counter (key quad, row pair, offset + subsequence), key = seed", "[core][dropout]") {
  const std::uint64_t seed = 0x0123456789abcdefull, offset = 0x100000000ull + 7, sub = 5;
  // row 37 = 2 * 16 + 5: row pair 2 * 8 + 5 = 21; key 27 = 16 + 8 + 3: key quad 1 * 4 + 3 / 2 = 5
  const Philox4x32 expected = philox4x32_10({{5u, 21u, 12u, 1u}}, 0x89abcdefu, 0x01234567u);
  const Philox4x32 got = dropout_draw(seed, offset, sub, 37, 27);
  for (int w = 0; w < 4; ++w) CHECK(got.x[w] == expected.x[w]);
  CHECK(dropout_word(37, 27) == 2);  // row 37 in the upper 8 rows of its block (r = 0), key 27 in the upper 8 (q = 1)
  CHECK(dropout_half(27) == 1);      // odd key: the high half
  CHECK(dropout_word(45, 18) == 1);  // row 45 = 37 + 8: r = 1; key 18 = 16 + 2: q = 0
  CHECK(dropout_half(18) == 0);
  CHECK(dropout_keep_bits(0x7FFF8000u, 0x8000u) == 2u);  // low half 0x8000 not below, high half 0x7FFF below
  CHECK(dropout_keep_bits(0xFFFF0000u, 0x10000u) == 3u);  // p = 0: every piece kept
}

TEST_CASE("dropout mask equals one built patch by patch from Philox: 16-bit pieces, word r + 2 q, half c",
          "[core][dropout]") {
  // patch (row block rb, row a in 0..7, key block kb, key pair e in 0..3) has counter (4 kb + e, 8 rb + a) and
  // gives row 16 rb + a + 8 r, key 16 kb + 2 e + 8 q + c the piece (word r + 2 q >> 16 c) & 0xFFFF
  const std::uint64_t seed = 0xfedcba9876543210ull, offset = 3, sub = 0xffffffffull;  // the stream's high word: 1
  const std::uint32_t rows = 40, cols = 40;  // partial blocks at both ends
  for (const double p : {0.1, 0.5}) {
    const std::uint32_t threshold = dropout_keep_threshold16(p);
    std::vector<int> expected(rows * cols, -1);
    for (std::uint32_t rb = 0; rb * 16 < rows; ++rb) {
      for (std::uint32_t a = 0; a < 8; ++a) {
        for (std::uint32_t kb = 0; kb * 16 < cols; ++kb) {
          for (std::uint32_t e = 0; e < 4; ++e) {
            const Philox4x32 d = philox4x32_10({{4 * kb + e, 8 * rb + a, 2u, 1u}}, 0x76543210u, 0xfedcba98u);
            for (std::uint32_t r = 0; r < 2; ++r) {
              for (std::uint32_t q = 0; q < 2; ++q) {
                for (std::uint32_t c = 0; c < 2; ++c) {
                  const std::uint32_t i = 16 * rb + a + 8 * r, j = 16 * kb + 2 * e + 8 * q + c;
                  const std::uint32_t piece = (d.x[r + 2 * q] >> (16 * c)) & 0xFFFFu;
                  if (i < rows && j < cols) expected[i * cols + j] = piece < threshold ? 1 : 0;
                }
              }
            }
          }
        }
      }
    }
    std::int64_t differ = 0;
    for (std::uint32_t i = 0; i < rows; ++i) {
      for (std::uint32_t j = 0; j < cols; ++j) {
        REQUIRE(expected[i * cols + j] >= 0);  // every weight in exactly one patch
        differ += (dropout_keep(seed, offset, sub, i, j, threshold) ? 1 : 0) != expected[i * cols + j];
      }
    }
    INFO("p = " << p);
    CHECK(differ == 0);
  }
}

TEST_CASE("dropout draws: one draw per 2 x 4 patch of two m16n8 fragments, distinct counters across patches",
          "[core][dropout]") {
  std::set<std::pair<std::uint32_t, std::uint32_t>> counters;
  std::set<std::uint32_t> first_words;
  for (std::uint32_t i = 0; i < 64; ++i) {
    for (std::uint32_t j = 0; j < 64; ++j) {
      const std::uint32_t base_i = i - i % 16 + i % 8, base_j = j - j % 16 + j % 8 - j % 2;
      const Philox4x32 a = dropout_draw(1, 0, 0, i, j), b = dropout_draw(1, 0, 0, base_i, base_j);
      for (int w = 0; w < 4; ++w) REQUIRE(a.x[w] == b.x[w]);
      if (i == base_i && j == base_j) {
        counters.insert({dropout_key_quad(j), dropout_row_pair(i)});
        first_words.insert(a.x[0]);
      }
    }
  }
  CHECK(counters.size() == 32 * 16);     // 32 row pairs x 16 key quads: every patch its own counter ...
  CHECK(first_words.size() == 32 * 16);  // ... and its own draw
}

TEST_CASE("dropout keeps 1 - p of the pairs within a binomial bound", "[core][dropout]") {
  for (const double p : {0.1, 0.17, 0.5, 0.9}) {
    const std::uint32_t rows = 200, cols = 300;  // awkward sizes: partial patches at both ends
    const double n = static_cast<double>(rows) * cols;
    const double fraction = kept_fraction(42, 0, 3, p, rows, cols);
    const double keep = dropout_keep_threshold16(p) / 65536.0;  // 1 - p to 2^-16
    const double sigma = std::sqrt(keep * (1 - keep) / n);
    INFO("p = " << p << ": kept " << fraction);
    CHECK(std::abs(keep - (1 - p)) < 1.0 / 65536);
    CHECK(std::abs(fraction - keep) < 5 * sigma);  // P(|Z| > 5) ~ 6e-7
  }
  CHECK(kept_fraction(42, 0, 3, 0.0, 64, 64) == 1.0);
}

TEST_CASE("dropout masks of other seeds, offsets and subsequences are unrelated", "[core][dropout]") {
  const std::uint32_t threshold = dropout_keep_threshold16(0.5);
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

TEST_CASE("dropout keep threshold is floor((1 - p) 2^16): p = 0 keeps all, any p > 0 drops", "[core][dropout]") {
  CHECK(dropout_keep_threshold16(0.0) == 0x10000u);
  CHECK(dropout_keep_threshold16(0.5) == 0x8000u);
  CHECK(dropout_keep_threshold16(0.75) == 0x4000u);
  CHECK(dropout_keep_threshold16(0.1) == static_cast<std::uint32_t>(std::floor(0.9 * 65536.0)));
  CHECK(dropout_keep_threshold16(1.0 / 65536) == 0xFFFFu);  // the resolution: p rounds up to a multiple of 2^-16
  CHECK(dropout_keep_threshold16(1.5 / 65536) == 0xFFFEu);
  CHECK(dropout_keep_threshold16(1e-9) == 0xFFFFu);   // below the resolution: still drops (piece 0xFFFF)
  CHECK(dropout_keep_threshold16(1e-300) == 0xFFFFu);  // 1 - p rounds to 1 in double: clamped, p > 0 drops
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
  const std::uint32_t threshold = dropout_keep_threshold16(0.4);
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
