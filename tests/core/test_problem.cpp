// Problem: validation messages, varlen construction, the mask's key ranges and pair counts, sequences,
// scale and describe().
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/mask.hpp"
#include "flashlab/core/problem.hpp"

namespace flashlab {
namespace {

// Runs validate() and checks that it throws InvalidProblem for `field` with every fragment (the bad value
// and the rule) in its message.
void require_invalid(const Problem& problem, const std::string& field, const std::vector<std::string>& fragments) {
  INFO("expected invalid field " << field << " in " << problem.describe());
  bool threw = false;
  try {
    problem.validate();
  } catch (const InvalidProblem& error) {
    threw = true;
    const std::string message = error.what();
    INFO("message: " << message);
    CHECK(error.field() == field);
    CHECK(message.find(field) != std::string::npos);
    for (const std::string& fragment : fragments) {
      INFO("fragment: " << fragment);
      CHECK(message.find(fragment) != std::string::npos);
    }
  }
  REQUIRE(threw);
}

Problem dense(std::int64_t nq, std::int64_t nk) {
  Problem p;
  p.batch = 2;
  p.heads = 8;
  p.heads_kv = 2;
  p.seqlen_q = nq;
  p.seqlen_k = nk;
  p.head_dim = 64;
  return p;
}

// The mask rule of problem.hpp, written out: key j is kept for query i when
// i + (N_k - N_q) - left <= j <= i + (N_k - N_q) + right, -1 = unbounded, causal meaning right = 0.
bool kept(std::int64_t i, std::int64_t j, std::int64_t nq, std::int64_t nk, bool causal, Window window) {
  const std::int64_t right = causal ? 0 : window.right;
  const std::int64_t diagonal = i + nk - nq;
  const bool left_ok = window.left == -1 || j >= diagonal - window.left;
  const bool right_ok = right == -1 || j <= diagonal + right;
  return left_ok && right_ok;
}

std::int64_t brute_force_pairs(const Problem& p, const std::vector<std::int64_t>& nqs,
                               const std::vector<std::int64_t>& nks) {
  std::int64_t pairs = 0;
  for (std::size_t b = 0; b < nqs.size(); ++b) {
    for (std::int64_t i = 0; i < nqs[b]; ++i) {
      for (std::int64_t j = 0; j < nks[b]; ++j) pairs += kept(i, j, nqs[b], nks[b], p.causal, p.window) ? 1 : 0;
    }
  }
  return pairs;
}

// A sequence of lengths (nq, nk) without key padding.
Sequence unpadded_sequence(std::int64_t nq, std::int64_t nk) { return {0, 0, 0, nq, nk}; }

void check_range(const Problem& p, std::int64_t i, std::int64_t nq, std::int64_t nk, std::int64_t lo, std::int64_t hi) {
  INFO("row " << i << " of Nq=" << nq << " Nk=" << nk << " in " << p.describe());
  const KeyRange r = p.key_range(unpadded_sequence(nq, nk), i);
  CHECK(r.lo == lo);
  CHECK(r.hi == hi);
  CHECK(!r.empty());
  CHECK(r.size() == hi - lo + 1);
}

void check_empty(const Problem& p, std::int64_t i, std::int64_t nq, std::int64_t nk) {
  INFO("row " << i << " of Nq=" << nq << " Nk=" << nk << " in " << p.describe());
  const KeyRange r = p.key_range(unpadded_sequence(nq, nk), i);
  CHECK(r.empty());
  CHECK(r.size() == 0);
}

}  // namespace

TEST_CASE("validate rejects counts below their minimum", "[problem]") {
  SECTION("batch") {
    Problem p = dense(4, 4);
    p.batch = 0;
    require_invalid(p, "batch", {"0", ">= 1"});
    p.batch = -3;
    require_invalid(p, "batch", {"-3", ">= 1"});
  }
  SECTION("heads") {
    Problem p = dense(4, 4);
    p.heads = 0;
    require_invalid(p, "heads", {"0", ">= 1"});
  }
  SECTION("heads_kv below 1") {
    Problem p = dense(4, 4);
    p.heads_kv = 0;
    require_invalid(p, "heads_kv", {"0", ">= 1"});
  }
  SECTION("heads_kv not dividing heads") {
    Problem p = dense(4, 4);
    p.heads = 8;
    p.heads_kv = 3;
    require_invalid(p, "heads_kv", {"3", "divide", "8"});
    p.heads_kv = 16;  // more KV heads than query heads
    require_invalid(p, "heads_kv", {"16", "divide", "8"});
  }
  SECTION("negative sequence lengths") {
    Problem p = dense(4, 4);
    p.seqlen_q = -1;
    require_invalid(p, "seqlen_q", {"-1", ">= 0"});
    p = dense(4, 4);
    p.seqlen_k = -5;
    require_invalid(p, "seqlen_k", {"-5", ">= 0"});
  }
  SECTION("head dims") {
    Problem p = dense(4, 4);
    p.head_dim = 0;
    require_invalid(p, "head_dim", {"0", ">= 1"});
    p.head_dim = -64;
    require_invalid(p, "head_dim", {"-64", ">= 1"});
    p = dense(4, 4);
    p.head_dim_v = -1;
    require_invalid(p, "head_dim_v", {"-1", ">= 0"});
  }
}

TEST_CASE("validate rejects bad windows and scales", "[problem]") {
  SECTION("window sides below -1") {
    Problem p = dense(4, 4);
    p.window = {-2, 3};
    require_invalid(p, "window.left", {"-2", ">= -1"});
    p.window = {3, -7};
    require_invalid(p, "window.right", {"-7", ">= -1"});
  }
  SECTION("causal with a right window") {
    Problem p = dense(4, 4);
    p.causal = true;
    p.window = {-1, 3};
    require_invalid(p, "window.right", {"3", "causal", "0"});
  }
  SECTION("softmax_scale not finite or not positive") {
    Problem p = dense(4, 4);
    p.softmax_scale = std::numeric_limits<double>::quiet_NaN();
    require_invalid(p, "softmax_scale", {"nan", "finite", "> 0"});
    p.softmax_scale = std::numeric_limits<double>::infinity();
    require_invalid(p, "softmax_scale", {"inf", "finite", "> 0"});
    p.softmax_scale = 0.0;
    require_invalid(p, "softmax_scale", {"= 0", "> 0"});
    p.softmax_scale = -0.5;
    require_invalid(p, "softmax_scale", {"-0.5", "> 0"});
  }
}

TEST_CASE("validate rejects inconsistent varlen offsets", "[problem]") {
  SECTION("only one of cu_seqlens_q / cu_seqlens_k") {
    Problem p = Problem::varlen(4, 4, 64, {3, 5}, {3, 5});
    p.cu_seqlens_k.clear();
    require_invalid(p, "cu_seqlens_k", {"cu_seqlens_q"});
    p = Problem::varlen(4, 4, 64, {3, 5}, {3, 5});
    p.cu_seqlens_q.clear();
    require_invalid(p, "cu_seqlens_q", {"cu_seqlens_k"});
  }
  SECTION("wrong size") {
    Problem p = Problem::varlen(4, 4, 64, {3, 5}, {3, 5});
    p.batch = 3;  // needs 4 offsets, has 3
    INFO(p.describe());
    bool threw = false;
    try {
      p.validate();
    } catch (const InvalidProblem& error) {
      threw = true;
      const std::string message = error.what();
      INFO("message: " << message);
      CHECK(error.field().rfind("cu_seqlens_q", 0) == 0);
      CHECK(message.find("cu_seqlens_q") != std::string::npos);
      CHECK(message.find("3") != std::string::npos);  // the size found
      CHECK(message.find("4") != std::string::npos);  // batch + 1
    }
    CHECK(threw);
  }
  SECTION("first offset not 0") {
    Problem p = Problem::varlen(4, 4, 64, {3, 5}, {3, 5});
    p.cu_seqlens_k = {2, 5, 10};
    require_invalid(p, "cu_seqlens_k[0]", {"= 2", "0"});
  }
  SECTION("decreasing offset") {
    Problem p = Problem::varlen(4, 4, 64, {4, 0, 2}, {4, 0, 2});
    p.cu_seqlens_q = {0, 4, 2, 6};
    require_invalid(p, "cu_seqlens_q[2]", {"= 2", "4"});
    p = Problem::varlen(4, 4, 64, {4, 0, 2}, {4, 0, 2});
    p.cu_seqlens_k = {0, 4, 4, 3};
    require_invalid(p, "cu_seqlens_k[3]", {"= 3", "4"});
  }
  SECTION("seqlen not the longest sequence") {
    Problem p = Problem::varlen(4, 4, 64, {3, 0, 5}, {7, 2, 1});
    p.seqlen_q = 4;
    require_invalid(p, "seqlen_q", {"4", "5"});
    p = Problem::varlen(4, 4, 64, {3, 0, 5}, {7, 2, 1});
    p.seqlen_k = 8;
    require_invalid(p, "seqlen_k", {"8", "7"});
  }
}

TEST_CASE("validate rejects shapes whose tensors exceed 2^53 elements", "[problem]") {
  Problem p = dense(1 << 20, 1 << 20);
  p.batch = 1 << 20;
  p.heads = 1 << 10;
  p.heads_kv = 1;
  require_invalid(p, "shape", {"2^53"});  // 2^56 elements in Q

  // 2^32 * 2^32 elements: the int64 product would wrap to 0.
  Problem wrap;
  wrap.batch = std::int64_t{1} << 32;
  wrap.seqlen_q = std::int64_t{1} << 32;
  wrap.seqlen_k = 1;
  wrap.head_dim = 1;
  require_invalid(wrap, "shape", {"2^53"});

  // A large d_v counts too: Q is small, V and O are not.
  Problem wide = dense(1 << 20, 1 << 20);
  wide.batch = 1 << 20;
  wide.heads = 1 << 10;
  wide.heads_kv = 1;
  wide.head_dim = 1;
  wide.seqlen_q = 1;
  wide.seqlen_k = 1;
  wide.head_dim_v = std::int64_t{1} << 40;
  require_invalid(wide, "shape", {"2^53"});

  // The limit itself: 2^20 * 2^20 * 2^7 * 2^6 = 2^53 elements pass, one more column per head does not.
  Problem limit = dense(1 << 20, 1 << 20);
  limit.batch = 1 << 20;
  limit.heads = 1 << 7;
  limit.heads_kv = 1;
  limit.head_dim = 1 << 6;
  CHECK_NOTHROW(limit.validate());
  limit.head_dim_v = (1 << 6) + 1;
  require_invalid(limit, "shape", {"2^53"});

  Problem large = dense(1 << 20, 1 << 20);  // 2 * 2^20 * 8 * 64 = 2^30 elements: fine
  CHECK_NOTHROW(large.validate());
}

TEST_CASE("valid problems pass validate", "[problem]") {
  std::vector<Problem> problems;
  problems.push_back(Problem{});
  problems.push_back(dense(0, 0));
  problems.push_back(dense(0, 17));
  problems.push_back(dense(17, 0));
  problems.push_back(dense(97, 1025));
  problems.push_back(dense(1025, 97));
  Problem gqa = dense(129, 129);
  gqa.heads = 12;
  gqa.heads_kv = 4;
  problems.push_back(gqa);
  Problem mqa = dense(129, 127);
  mqa.heads = 7;
  mqa.heads_kv = 1;
  problems.push_back(mqa);
  Problem causal = dense(17, 129);
  causal.causal = true;
  problems.push_back(causal);
  causal.window = {16, 0};
  problems.push_back(causal);
  causal.window = {-1, -1};
  problems.push_back(causal);
  Problem window = dense(128, 128);
  window.window = {0, 5};
  window.head_dim_v = 80;
  window.softmax_scale = 0.3;
  problems.push_back(window);
  problems.push_back(Problem::varlen(8, 2, 40, {3, 0, 129}, {0, 17, 1}));
  problems.push_back(Problem::varlen(8, 8, 256, {0, 0}, {0, 0}));
  for (const Problem& p : problems) {
    INFO(p.describe());
    CHECK_NOTHROW(p.validate());
  }
}

TEST_CASE("Problem::varlen builds offsets and maximum lengths", "[problem]") {
  const Problem p = Problem::varlen(8, 2, 40, {3, 0, 129, 17}, {5, 2, 0, 200});
  CHECK(p.is_varlen());
  CHECK(p.batch == 4);
  CHECK(p.heads == 8);
  CHECK(p.heads_kv == 2);
  CHECK(p.head_dim == 40);
  CHECK(p.dv() == 40);
  CHECK(p.cu_seqlens_q == std::vector<std::int64_t>{0, 3, 3, 132, 149});
  CHECK(p.cu_seqlens_k == std::vector<std::int64_t>{0, 5, 7, 7, 207});
  CHECK(p.seqlen_q == 129);
  CHECK(p.seqlen_k == 200);
  CHECK(p.total_q() == 149);
  CHECK(p.total_k() == 207);
  CHECK(!p.causal);
  CHECK(p.window.unbounded());
  CHECK_NOTHROW(p.validate());
}

TEST_CASE("key_range under causal masks", "[problem][mask]") {
  Problem p;
  p.causal = true;
  SECTION("N_q == N_k: row i keeps keys 0..i") {
    for (std::int64_t i = 0; i < 5; ++i) check_range(p, i, 5, 5, 0, i);
  }
  SECTION("N_q < N_k: bottom-right aligned, row i keeps keys 0..i + N_k - N_q") {
    check_range(p, 0, 2, 5, 0, 3);
    check_range(p, 1, 2, 5, 0, 4);
  }
  SECTION("N_q > N_k: the first N_q - N_k rows keep nothing") {
    check_empty(p, 0, 5, 2);
    check_empty(p, 1, 5, 2);
    check_empty(p, 2, 5, 2);
    check_range(p, 3, 5, 2, 0, 0);
    check_range(p, 4, 5, 2, 0, 1);
  }
  SECTION("window (-1, 0) without causal is the same mask") {
    Problem w;
    w.window = {-1, 0};
    for (std::int64_t i = 0; i < 7; ++i) {
      const KeyRange a = p.key_range(unpadded_sequence(7, 4), i), b = w.key_range(unpadded_sequence(7, 4), i);
      CHECK(a.size() == b.size());
      if (!a.empty()) {
        CHECK(a.lo == b.lo);
        CHECK(a.hi == b.hi);
      }
    }
  }
}

TEST_CASE("key_range under sliding windows", "[problem][mask]") {
  Problem p;
  SECTION("window (2, 1), N_q == N_k == 8") {
    p.window = {2, 1};
    check_range(p, 0, 8, 8, 0, 1);
    check_range(p, 1, 8, 8, 0, 2);
    check_range(p, 4, 8, 8, 2, 5);
    check_range(p, 7, 8, 8, 5, 7);
  }
  SECTION("one-sided windows") {
    p.window = {2, -1};
    check_range(p, 4, 8, 8, 2, 7);
    check_range(p, 1, 8, 8, 0, 7);
    p.window = {-1, 1};
    check_range(p, 4, 8, 8, 0, 5);
    check_range(p, 7, 8, 8, 0, 7);
  }
  SECTION("window (0, 0) keeps only the diagonal") {
    p.window = {0, 0};
    check_range(p, 3, 8, 8, 3, 3);
    check_range(p, 0, 3, 6, 3, 3);
  }
  SECTION("window + causal") {
    p.causal = true;
    p.window = {2, -1};
    check_range(p, 0, 8, 8, 0, 0);
    check_range(p, 4, 8, 8, 2, 4);
    p.window = {1, 0};
    check_range(p, 0, 3, 6, 2, 3);  // diagonal at i + 3
    check_range(p, 2, 3, 6, 4, 5);
  }
  SECTION("N_q > N_k with a two-sided window") {
    p.window = {1, 1};
    check_empty(p, 0, 6, 3);  // diagonal at -3: keys -4..-2
    check_empty(p, 1, 6, 3);
    check_range(p, 2, 6, 3, 0, 0);  // diagonal -1: keys -2..0
    check_range(p, 3, 6, 3, 0, 1);
    check_range(p, 5, 6, 3, 1, 2);
  }
}

TEST_CASE("unmasked_pairs matches a brute-force count of the mask rule", "[problem][mask]") {
  const std::vector<std::int64_t> lengths{0, 1, 17, 64, 129};
  const std::vector<Window> windows{{-1, -1}, {0, 0}, {3, -1}, {-1, 5}, {16, 0}, {5, 7}, {0, -1}, {200, 1}};
  for (const bool causal : {false, true}) {
    for (const Window window : windows) {
      if (causal && window.right > 0) continue;  // invalid: causal already fixes right = 0
      for (const std::int64_t nq : lengths) {
        for (const std::int64_t nk : lengths) {
          Problem p = dense(nq, nk);
          p.batch = 3;
          p.causal = causal;
          p.window = window;
          INFO(p.describe());
          CHECK(p.unmasked_pairs() == brute_force_pairs(p, {nq, nq, nq}, {nk, nk, nk}));
        }
      }
    }
  }
  SECTION("varlen with zero-length entries") {
    const std::vector<std::int64_t> nqs{3, 0, 129, 17, 5}, nks{7, 4, 129, 0, 1};
    for (const bool causal : {false, true}) {
      for (const Window window : windows) {
        if (causal && window.right > 0) continue;
        Problem p = Problem::varlen(4, 2, 64, nqs, nks);
        p.causal = causal;
        p.window = window;
        INFO(p.describe());
        CHECK(p.unmasked_pairs() == brute_force_pairs(p, nqs, nks));
      }
    }
  }
}

TEST_CASE("sequence(b) locates each sequence", "[problem]") {
  SECTION("dense") {
    Problem p = dense(17, 129);
    p.batch = 3;
    for (std::int64_t b = 0; b < 3; ++b) {
      const Sequence s = p.sequence(b);
      CHECK(s.slot == b);
      CHECK(s.q_offset == 0);
      CHECK(s.k_offset == 0);
      CHECK(s.seqlen_q == 17);
      CHECK(s.seqlen_k == 129);
    }
  }
  SECTION("varlen") {
    const Problem p = Problem::varlen(4, 2, 64, {3, 0, 5}, {4, 2, 0});
    const Sequence s0 = p.sequence(0), s1 = p.sequence(1), s2 = p.sequence(2);
    CHECK((s0.slot == 0 && s0.q_offset == 0 && s0.k_offset == 0 && s0.seqlen_q == 3 && s0.seqlen_k == 4));
    CHECK((s1.slot == 0 && s1.q_offset == 3 && s1.k_offset == 4 && s1.seqlen_q == 0 && s1.seqlen_k == 2));
    CHECK((s2.slot == 0 && s2.q_offset == 3 && s2.k_offset == 6 && s2.seqlen_q == 5 && s2.seqlen_k == 0));
  }
}

TEST_CASE("scale, dv, group size and masking flags", "[problem]") {
  Problem p = dense(4, 4);
  CHECK(p.scale() == 0.125);  // 1/sqrt(64), exact
  p.head_dim = 80;
  // 1/sqrt(d): two roundings (sqrt, division) in the scale and two more in s * s * 80, each at most eps/2,
  // so |s^2 d - 1| <= (2 * 2 + 2) * eps / 2 = 3 eps (to first order); 4 eps leaves room for the second order.
  CHECK(std::abs(p.scale() * p.scale() * 80.0 - 1.0) <= 4 * std::numeric_limits<double>::epsilon());
  CHECK(p.scale() == 1.0 / std::sqrt(80.0));
  p.softmax_scale = 0.3;
  CHECK(p.scale() == 0.3);

  CHECK(p.dv() == 80);
  p.head_dim_v = 128;
  CHECK(p.dv() == 128);
  CHECK(p.group_size() == 4);

  CHECK(!p.is_masked());
  p.causal = true;
  CHECK(p.is_masked());
  CHECK(p.effective_window() == Window{-1, 0});
  p.window = {16, -1};
  CHECK(p.effective_window() == Window{16, 0});
  p.causal = false;
  CHECK(p.is_masked());
  CHECK(p.effective_window() == Window{16, -1});
}

TEST_CASE("describe() mentions the problem's features", "[problem]") {
  auto contains = [](const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; };
  Problem p = dense(128, 256);
  const std::string plain = p.describe();
  INFO(plain);
  for (const char* part : {"B=2", "H=8", "Hkv=2", "Nq=128", "Nk=256", "d=64"}) CHECK(contains(plain, part));
  for (const char* part : {"causal", "window", "varlen", "dv", "scale"}) CHECK(!contains(plain, part));

  p.causal = true;
  p.window = {16, 0};
  p.head_dim_v = 80;
  p.softmax_scale = 0.25;
  const std::string masked = p.describe();
  INFO(masked);
  for (const char* part : {"causal", "window=(16,0)", "dv=80", "scale=0.25"}) CHECK(contains(masked, part));

  const std::string varlen = Problem::varlen(4, 2, 64, {3, 0, 5}, {4, 2, 0}).describe();
  INFO(varlen);
  CHECK(contains(varlen, "varlen"));
}

}  // namespace flashlab

TEST_CASE("kept_keys is the mask rule key by key, and its tile-index form clamps empty ranges", "[problem][mask]") {
  // the rule itself, key by key: i + N_k - N_q - left <= j <= i + N_k - N_q + right, unbounded when negative
  auto kept = [](std::int64_t left, std::int64_t right, std::int64_t i, std::int64_t nq, std::int64_t j, std::int64_t nk) {
    const std::int64_t diagonal = i + nk - nq;
    return (left < 0 || j >= diagonal - left) && (right < 0 || j <= diagonal + right);
  };
  for (const std::int64_t nq : {1, 3, 9}) {
    for (const std::int64_t nk : {1, 4, 9}) {
      for (const std::int64_t left : {-1, 0, 2, 20}) {
        for (const std::int64_t right : {-1, 0, 1, 20}) {
          for (std::int64_t i = 0; i < nq; ++i) {
            INFO("N_q " << nq << " N_k " << nk << " window " << left << "," << right << " row " << i);
            const flashlab::KeptKeys<std::int64_t> r = flashlab::kept_keys<std::int64_t>(left, right, i, nq, nk);
            const flashlab::KeptKeys<std::int64_t> t = flashlab::kept_keys<std::int64_t, true>(left, right, i, nq, nk);
            for (std::int64_t j = 0; j < nk; ++j) {
              CHECK((r.lo <= j && j <= r.hi) == kept(left, right, i, nq, j, nk));
              CHECK((t.lo <= j && j <= t.hi) == kept(left, right, i, nq, j, nk));
            }
            CHECK(r.lo >= 0);
            CHECK(r.hi <= nk - 1);
            CHECK((t.lo >= 0 && t.lo <= nk && t.hi >= -1 && t.hi <= nk - 1));
          }
        }
      }
    }
  }
}

namespace flashlab {
namespace {

// Key padding written out for one batch entry of N tokens with v valid ones: the valid tokens are [f, f + v) with
// f = 0 (right) or N - v (left); query i keeps key j when both are valid and the unpadded rule of a sequence of
// length v keeps (i - f, j - f).
bool kept_with_padding(bool left_side, std::int64_t n, std::int64_t v, std::int64_t i, std::int64_t j, bool causal,
                       Window window) {
  const std::int64_t f = left_side ? n - v : 0;
  if (i < f || i >= f + v || j < f || j >= f + v) return false;
  return kept(i - f, j - f, v, v, causal, window);
}

Problem padded(KeyPadding side, std::int64_t n, std::vector<std::int64_t> valid) {
  Problem p;
  p.batch = static_cast<std::int64_t>(valid.size());
  p.heads = 4;
  p.heads_kv = 2;
  p.seqlen_q = p.seqlen_k = n;
  p.head_dim = 32;
  p.key_padding = side;
  p.valid_lengths = std::move(valid);
  return p;
}

}  // namespace

TEST_CASE("key_range under key padding keeps exactly the valid pairs of the mask", "[problem][mask][padding]") {
  struct Mask {
    bool causal;
    Window window;
  };
  const std::int64_t n = GENERATE(1, 17, 33);
  for (const KeyPadding side : {KeyPadding::right, KeyPadding::left}) {
    for (const Mask mask : {Mask{false, {}}, Mask{true, {}}, Mask{false, {3, 2}}, Mask{true, {4, 0}}, Mask{false, {0, 0}}}) {
      Problem p = padded(side, n, {n, 0, n / 2, 1});
      p.causal = mask.causal;
      p.window = mask.window;
      REQUIRE_NOTHROW(p.validate());
      for (std::int64_t b = 0; b < p.batch; ++b) {
        const Sequence s = p.sequence(b);
        const std::int64_t v = p.valid_lengths[static_cast<std::size_t>(b)];
        for (std::int64_t i = 0; i < n; ++i) {
          INFO(p.describe() << " entry " << b << " row " << i);
          const KeyRange r = p.key_range(s, i);
          std::int64_t kept_count = 0;
          for (std::int64_t j = 0; j < n; ++j) {
            const bool expected = kept_with_padding(side == KeyPadding::left, n, v, i, j, mask.causal, mask.window);
            CHECK((!r.empty() && r.lo <= j && j <= r.hi) == expected);
            kept_count += expected ? 1 : 0;
          }
          CHECK(r.size() == kept_count);
        }
      }
    }
  }
}

TEST_CASE("kept_keys_padded is kept_keys without padding and stays in the tile-index limits", "[problem][mask][padding]") {
  for (const std::int64_t n : {1, 5, 9}) {
    for (const std::int64_t left : {-1, 0, 2}) {
      for (const std::int64_t right : {-1, 0, 3}) {
        for (std::int64_t i = 0; i < n; ++i) {
          const KeptKeys<std::int64_t> a = kept_keys<std::int64_t>(left, right, i, n, n);
          const KeptKeys<std::int64_t> b = kept_keys_padded<std::int64_t>(left, right, i, n, n, 0, 0);
          CHECK((a.lo == b.lo && a.hi == b.hi));
          for (std::int64_t front = 0; front <= n; ++front) {
            for (std::int64_t back = 0; front + back <= n; ++back) {
              INFO("N " << n << " window " << left << "," << right << " row " << i << " pad " << front << "," << back);
              const KeptKeys<std::int64_t> t = kept_keys_padded<std::int64_t, true>(left, right, i, n, n, front, back);
              CHECK((t.lo >= 0 && t.lo <= n && t.hi >= -1 && t.hi <= n - 1));
              const bool padded_row = i < front || i >= n - back;
              if (padded_row) CHECK(t.lo > t.hi);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("validate rejects inconsistent key padding", "[problem][padding]") {
  SECTION("valid lengths without key padding") {
    Problem p = padded(KeyPadding::right, 8, {8, 3});
    p.key_padding = KeyPadding::none;
    require_invalid(p, "valid_lengths", {"[8, 3]", "without key padding"});
  }
  SECTION("one valid length per batch entry") {
    Problem p = padded(KeyPadding::right, 8, {8, 3});
    p.batch = 3;
    require_invalid(p, "valid_lengths.size", {"2", "batch = 3"});
  }
  SECTION("a valid length above N") {
    require_invalid(padded(KeyPadding::left, 8, {8, 9}), "valid_lengths[1]", {"9", "[0, seqlen_k = 8]"});
    require_invalid(padded(KeyPadding::left, 8, {-1, 2}), "valid_lengths[0]", {"-1", "[0, seqlen_k = 8]"});
  }
  SECTION("queries padded with the keys: N_q == N_k") {
    Problem p = padded(KeyPadding::right, 8, {8, 3});
    p.seqlen_q = 4;
    require_invalid(p, "seqlen_k", {"8", "seqlen_q = 4", "self-attention"});
  }
  SECTION("not with varlen") {
    Problem p = Problem::varlen(2, 1, 16, {3, 5}, {3, 5});
    p.key_padding = KeyPadding::right;
    p.valid_lengths = {3, 5};
    require_invalid(p, "key_padding", {"right", "varlen"});
  }
}

TEST_CASE("unpadded() and padded_tokens() are unpad_input's varlen form and index map", "[problem][padding]") {
  for (const KeyPadding side : {KeyPadding::right, KeyPadding::left}) {
    Problem p = padded(side, 6, {4, 0, 6, 1});
    p.causal = true;
    p.window = {2, -1};
    p.softmax_scale = 0.5;
    p.head_dim_v = 16;
    const Problem u = p.unpadded();
    REQUIRE_NOTHROW(u.validate());
    CHECK(u.is_varlen());
    CHECK_FALSE(u.is_padded());
    CHECK(u.cu_seqlens_q == std::vector<std::int64_t>{0, 4, 4, 10, 11});
    CHECK(u.cu_seqlens_k == u.cu_seqlens_q);
    CHECK(u.seqlen_q == 6);
    CHECK((u.heads == 4 && u.heads_kv == 2 && u.head_dim == 32 && u.dv() == 16));
    CHECK((u.causal && u.window == p.window && u.scale() == 0.5));
    const std::vector<std::int64_t> tokens = p.padded_tokens();
    const std::vector<std::int64_t> expected =
        side == KeyPadding::right ? std::vector<std::int64_t>{0, 1, 2, 3, 12, 13, 14, 15, 16, 17, 18}
                                  : std::vector<std::int64_t>{2, 3, 4, 5, 12, 13, 14, 15, 16, 17, 23};
    CHECK(tokens == expected);
    // the two forms keep the same pairs, so they count the same flops
    CHECK(p.unmasked_pairs() == u.unmasked_pairs());
  }
  const Problem plain = dense(5, 5);
  CHECK(plain.unpadded().describe() == plain.describe());
  CHECK(plain.padded_tokens().size() == 10);
}

TEST_CASE("describe() names the key padding", "[problem][padding]") {
  const std::string text = padded(KeyPadding::left, 8, {8, 3}).describe();
  INFO(text);
  CHECK(text.find("key_padding=left(valid=8,3)") != std::string::npos);
  CHECK(name(KeyPadding::right) == "right");
}

}  // namespace flashlab
