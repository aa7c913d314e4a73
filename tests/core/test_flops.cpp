// The flops model: the FlashAttention benchmark convention for dense, causal, windowed, d_v != d and
// varlen problems, and the backward multipliers. Every count here is an integer below 2^53 (or a half
// integer for causal N_q == N_k), so the comparisons are exact.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/flops.hpp"
#include "flashlab/core/problem.hpp"

namespace flashlab {
namespace {

Problem make(std::int64_t batch, std::int64_t heads, std::int64_t nq, std::int64_t nk, std::int64_t d) {
  Problem p;
  p.batch = batch;
  p.heads = heads;
  p.heads_kv = heads;
  p.seqlen_q = nq;
  p.seqlen_k = nk;
  p.head_dim = d;
  return p;
}

// Kept (i, j) pairs of one sequence by problem.hpp's rule: i + (N_k - N_q) - left <= j <= i + (N_k - N_q) + right,
// -1 unbounded, causal meaning right = 0.
double brute_force_pairs(std::int64_t nq, std::int64_t nk, bool causal, std::int64_t left, std::int64_t right) {
  if (causal) right = 0;
  double pairs = 0;
  for (std::int64_t i = 0; i < nq; ++i) {
    for (std::int64_t j = 0; j < nk; ++j) {
      const std::int64_t diagonal = i + nk - nq;
      if ((left < 0 || j >= diagonal - left) && (right < 0 || j <= diagonal + right)) pairs += 1;
    }
  }
  return pairs;
}

}  // namespace

TEST_CASE("dense attention counts 4 B H N_q N_k d", "[flops]") {
  const Problem p = make(3, 5, 97, 129, 80);
  CHECK(attention_flops(p, Pass::fwd) == 4.0 * 3 * 5 * 97 * 129 * 80);
  CHECK(convention_pairs(p) == 3.0 * 97 * 129);
}

TEST_CASE("GQA counts query heads, not KV heads", "[flops]") {
  Problem p = make(2, 8, 128, 128, 64);
  const double mha = attention_flops(p, Pass::fwd);
  p.heads_kv = 2;
  CHECK(attention_flops(p, Pass::fwd) == mha);
  CHECK(mha == 4.0 * 2 * 8 * 128 * 128 * 64);
}

TEST_CASE("d_v != d counts 2 (d + d_v) per pair", "[flops]") {
  Problem p = make(2, 4, 17, 1025, 64);
  p.head_dim_v = 128;
  CHECK(attention_flops(p, Pass::fwd) == 2.0 * (64 + 128) * 2 * 4 * 17 * 1025);
}

TEST_CASE("causal with N_q == N_k counts half the square", "[flops]") {
  for (const std::int64_t n : {1, 17, 128, 1025}) {
    Problem p = make(2, 4, n, n, 64);
    p.causal = true;
    INFO(p.describe());
    CHECK(attention_flops(p, Pass::fwd) == 4.0 * 2 * 4 * static_cast<double>(n) * static_cast<double>(n) * 64 / 2);
    // The convention, not the exact count n (n + 1) / 2.
    CHECK(convention_pairs(p) == 2.0 * static_cast<double>(n) * static_cast<double>(n) / 2);
  }
}

TEST_CASE("causal with N_q != N_k counts the exact kept pairs", "[flops]") {
  for (const auto& [nq, nk] :
       std::vector<std::pair<std::int64_t, std::int64_t>>{{97, 129}, {129, 97}, {1, 1025}, {1025, 1}}) {
    Problem p = make(3, 2, nq, nk, 96);
    p.causal = true;
    INFO(p.describe());
    const double pairs = 3 * brute_force_pairs(nq, nk, true, -1, -1);
    CHECK(convention_pairs(p) == pairs);
    CHECK(attention_flops(p, Pass::fwd) == 4.0 * 2 * 96 * pairs);
  }
  // By hand: N_q = 2, N_k = 5 keeps 4 + 5 keys; N_q = 5, N_k = 2 keeps 0 + 0 + 0 + 1 + 2.
  Problem wide = make(1, 1, 2, 5, 8);
  wide.causal = true;
  CHECK(convention_pairs(wide) == 9);
  Problem tall = make(1, 1, 5, 2, 8);
  tall.causal = true;
  CHECK(convention_pairs(tall) == 3);
}

TEST_CASE("windows count the exact kept pairs, with or without causal", "[flops]") {
  struct Case {
    std::int64_t nq, nk;
    bool causal;
    std::int64_t left, right;
  };
  const Case cases[] = {{257, 257, true, 16, 0}, {257, 257, true, 16, -1}, {128, 128, false, 5, 7},
                        {97, 129, false, 0, 0},  {129, 97, false, 3, 3},   {1025, 1029, false, -1, 0},
                        {64, 192, true, 31, -1}, {200, 64, false, 10, -1}};
  for (const Case& c : cases) {
    Problem p = make(2, 3, c.nq, c.nk, 64);
    p.causal = c.causal;
    p.window = {c.left, c.right};
    INFO(p.describe());
    const double pairs = 2 * brute_force_pairs(c.nq, c.nk, c.causal, c.left, c.right);
    CHECK(convention_pairs(p) == pairs);
    CHECK(attention_flops(p, Pass::fwd) == 4.0 * 3 * 64 * pairs);
  }
  // The causal mask written as a window (-1, 0), with or without `causal`, follows the causal convention.
  for (const bool causal : {false, true}) {
    Problem p = make(2, 3, 1025, 1025, 64);
    p.causal = causal;
    p.window = {-1, 0};
    CHECK(convention_pairs(p) == 2 * 1025.0 * 1025.0 / 2);
  }
  // By hand: window (1, 1) on N = 4 keeps 2 + 3 + 3 + 2 pairs.
  Problem band = make(1, 1, 4, 4, 8);
  band.window = {1, 1};
  CHECK(convention_pairs(band) == 10);
}

TEST_CASE("varlen sums over the sequences", "[flops]") {
  const std::vector<std::int64_t> nqs{17, 0, 129, 64}, nks{33, 5, 129, 0};
  Problem p = Problem::varlen(6, 2, 64, nqs, nks);
  CHECK(attention_flops(p, Pass::fwd) == 4.0 * 6 * 64 * (17 * 33 + 0 * 5 + 129 * 129 + 64 * 0));

  // Causal: the equal-length sequence counts half its square, the others their exact pairs.
  p.causal = true;
  const double pairs = brute_force_pairs(17, 33, true, -1, -1) + 129.0 * 129.0 / 2;
  CHECK(convention_pairs(p) == pairs);
  CHECK(attention_flops(p, Pass::fwd) == 4.0 * 6 * 64 * pairs);

  // Windowed: exact everywhere.
  p.window = {8, 0};
  double windowed = 0;
  for (std::size_t b = 0; b < nqs.size(); ++b) windowed += brute_force_pairs(nqs[b], nks[b], true, 8, 0);
  CHECK(convention_pairs(p) == windowed);
}

TEST_CASE("empty problems count no flops", "[flops]") {
  CHECK(attention_flops(make(2, 4, 0, 128, 64), Pass::fwdbwd) == 0);
  CHECK(attention_flops(make(2, 4, 128, 0, 64), Pass::fwd) == 0);
  Problem causal = make(2, 4, 0, 0, 64);
  causal.causal = true;
  CHECK(attention_flops(causal, Pass::bwd) == 0);
}

TEST_CASE("backward is 2.5 x and forward + backward 3.5 x the forward", "[flops]") {
  Problem p = make(3, 5, 97, 129, 80);
  p.causal = true;
  p.window = {31, 0};
  const double forward = 4.0 * 5 * 80 * 3 * brute_force_pairs(97, 129, true, 31, 0);
  CHECK(attention_flops(p, Pass::fwd) == forward);
  CHECK(attention_flops(p, Pass::bwd) == 2.5 * forward);
  CHECK(attention_flops(p, Pass::fwdbwd) == 3.5 * forward);
}

TEST_CASE("pass names parse back, unknown names list the allowed set", "[flops]") {
  for (const Pass pass : {Pass::fwd, Pass::bwd, Pass::fwdbwd}) CHECK(parse_pass(name(pass)) == pass);
  CHECK(name(Pass::fwdbwd) == "fwdbwd");
  CHECK_THROWS_AS(parse_pass("forward"), std::invalid_argument);
  std::string message;
  try {
    (void)parse_pass("fwd+bwd");
  } catch (const std::invalid_argument& error) {
    message = error.what();
  }
  INFO(message);
  for (const char* allowed : {"fwd", "bwd", "fwdbwd"}) CHECK(message.find(allowed) != std::string::npos);
}

TEST_CASE("key padding counts the valid tokens, as the unpadded varlen form does", "[flops][padding]") {
  for (const bool causal : {false, true}) {
    for (const KeyPadding side : {KeyPadding::right, KeyPadding::left}) {
      Problem p = make(3, 4, 97, 97, 64);
      p.causal = causal;
      p.key_padding = side;
      p.valid_lengths = {97, 0, 40};
      INFO(p.describe());
      const double valid_pairs = causal ? (97.0 * 97 + 40.0 * 40) / 2 : 97.0 * 97 + 40.0 * 40;
      CHECK(convention_pairs(p) == valid_pairs);
      CHECK(attention_flops(p, Pass::fwdbwd) == attention_flops(p.unpadded(), Pass::fwdbwd));
      CHECK(attention_flops(p, Pass::fwd) == 4.0 * 4 * valid_pairs * 64);
    }
  }
}

}  // namespace flashlab
