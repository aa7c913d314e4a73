// Cases whose answer is known by hand.
#include <cmath>

#include "catch.hpp"
#include "support.hpp"

using namespace flashlab;
using flashlab::test::Data;

TEST_CASE("one key: O equals V for every query, dQ = dK = 0, dV sums dO", "[reference][hand]") {
  const std::int64_t nq = GENERATE(1, 17, 97);
  Problem p;
  p.batch = 2;
  p.heads = 4;
  p.heads_kv = 2;
  p.seqlen_q = nq;
  p.seqlen_k = 1;
  p.head_dim = 40;
  const Data data = test::solved(p, 11);
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      const std::int64_t g = h / 2;
      for (std::int64_t i = 0; i < nq; ++i) {
        // dS = P (dP - D) with dP = dO.V and D = dO.O = dO.V: zero up to the rounding of two d-term dot
        // products summed in different orders, |dS| <= 2 d u sum_c |dO_c V_c| (u = 2^-53).
        double dot = 0, dov = 0;
        for (std::int64_t c = 0; c < p.head_dim; ++c) dov += std::abs(data.d_out(b, i, h, c) * data.v(b, 0, g, c));
        const double ds_bound = 2.0 * static_cast<double>(p.head_dim) * 0x1p-53 * dov;
        for (std::int64_t c = 0; c < p.head_dim; ++c) {
          CHECK(data.o(b, i, h, c) == data.v(b, 0, g, c));  // P = 1 exactly
          CHECK(std::abs(data.dq(b, i, h, c)) <= p.scale() * ds_bound * std::abs(data.k(b, 0, g, c)) * 1.01);
          dot += data.q(b, i, h, c) * data.k(b, 0, g, c);
        }
        CHECK(std::abs(data.lse(b, h, i) - p.scale() * dot) <= 1e-14 * std::max(1.0, std::abs(p.scale() * dot)));
      }
    }
    for (std::int64_t g = 0; g < p.heads_kv; ++g) {
      for (std::int64_t c = 0; c < p.head_dim; ++c) {
        // dK = scale sum_i dS_i q_i, each |dS_i| bounded as above
        double dk_bound = 0;
        for (std::int64_t h = 2 * g; h < 2 * g + 2; ++h) {
          for (std::int64_t i = 0; i < nq; ++i) {
            double dov = 0;
            for (std::int64_t e = 0; e < p.head_dim; ++e) dov += std::abs(data.d_out(b, i, h, e) * data.v(b, 0, g, e));
            dk_bound += p.scale() * 2.0 * static_cast<double>(p.head_dim) * 0x1p-53 * dov * std::abs(data.q(b, i, h, c));
          }
        }
        CHECK(std::abs(data.dk(b, 0, g, c)) <= dk_bound * 1.01);
        double sum = 0, magnitude = 0;
        for (std::int64_t h = 2 * g; h < 2 * g + 2; ++h) {
          for (std::int64_t i = 0; i < nq; ++i) {
            sum += data.d_out(b, i, h, c);
            magnitude += std::abs(data.d_out(b, i, h, c));
          }
        }
        CHECK(std::abs(data.dv(b, 0, g, c) - sum) <= 1e-15 * magnitude);
      }
    }
  }
}

TEST_CASE("identical keys: O is the mean of V", "[reference][hand]") {
  const std::int64_t nk = GENERATE(2, 17, 129);
  Problem p;
  p.seqlen_q = 5;
  p.seqlen_k = nk;
  p.head_dim = 8;
  Data data(p);
  data.randomize({.seed = 3});
  for (std::int64_t j = 1; j < nk; ++j) {
    for (std::int64_t c = 0; c < p.head_dim; ++c) data.k(0, j, 0, c) = data.k(0, 0, 0, c);
  }
  data.run_forward();
  for (std::int64_t c = 0; c < p.head_dim; ++c) {
    double mean = 0, magnitude = 0;
    for (std::int64_t j = 0; j < nk; ++j) {
      mean += data.v(0, j, 0, c) / static_cast<double>(nk);
      magnitude += std::abs(data.v(0, j, 0, c)) / static_cast<double>(nk);
    }
    for (std::int64_t i = 0; i < p.seqlen_q; ++i) {
      CHECK(std::abs(data.o(0, i, 0, c) - mean) <= 1e-14 * magnitude);
    }
  }
}

TEST_CASE("a dominant score selects its value row", "[reference][hand]") {
  // Keys are unit vectors e_j; query i is 1000 e_(i % d): its score against key i % d is 1000/sqrt(d),
  // every other score 0, so the other weights are below exp(-350) and O_i = V_(i % d) to rounding.
  Problem p;
  p.seqlen_q = 17;
  p.seqlen_k = 8;
  p.head_dim = 8;
  Data data(p);
  data.randomize({.seed = 5});
  for (std::int64_t j = 0; j < p.seqlen_k; ++j) {
    for (std::int64_t c = 0; c < p.head_dim; ++c) data.k(0, j, 0, c) = j == c ? 1.0 : 0.0;
  }
  for (std::int64_t i = 0; i < p.seqlen_q; ++i) {
    for (std::int64_t c = 0; c < p.head_dim; ++c) data.q(0, i, 0, c) = c == i % 8 ? 1000.0 : 0.0;
  }
  data.run_forward();
  for (std::int64_t i = 0; i < p.seqlen_q; ++i) {
    for (std::int64_t c = 0; c < p.head_dim; ++c) {
      CHECK(std::abs(data.o(0, i, 0, c) - data.v(0, i % 8, 0, c)) <= 1e-15 * std::abs(data.v(0, i % 8, 0, c)));
    }
    CHECK(std::abs(data.lse(0, 0, i) - 1000.0 / std::sqrt(8.0)) <= 1e-13);
  }
}

TEST_CASE("two keys, scale 1: the softmax by hand", "[reference][hand]") {
  // q = (1, 0), K = I, V = [[1, 2], [3, 4]]: S = (1, 0), P = (e, 1) / (e + 1).
  Problem p;
  p.seqlen_q = 1;
  p.seqlen_k = 2;
  p.head_dim = 2;
  p.softmax_scale = 1.0;
  Data data(p);
  data.q(0, 0, 0, 0) = 1;
  data.k(0, 0, 0, 0) = 1;
  data.k(0, 1, 0, 1) = 1;
  data.v(0, 0, 0, 0) = 1;
  data.v(0, 0, 0, 1) = 2;
  data.v(0, 1, 0, 0) = 3;
  data.v(0, 1, 0, 1) = 4;
  data.run_forward();
  const double e = std::exp(1.0), p0 = e / (e + 1), p1 = 1 / (e + 1);
  CHECK(std::abs(data.o(0, 0, 0, 0) - (p0 * 1 + p1 * 3)) <= 4e-16 * 3);
  CHECK(std::abs(data.o(0, 0, 0, 1) - (p0 * 2 + p1 * 4)) <= 4e-16 * 4);
  CHECK(std::abs(data.lse(0, 0, 0) - std::log(e + 1)) <= 4e-16 * 2);
  // dO = (1, 0): dL/dS_j = P_j (V_j0 - O_0); dQ = dS K, dK_j = dS_j q.
  data.d_out(0, 0, 0, 0) = 1;
  data.run_backward();
  const double o0 = p0 * 1 + p1 * 3;
  const double ds0 = p0 * (1 - o0), ds1 = p1 * (3 - o0);
  CHECK(std::abs(data.dq(0, 0, 0, 0) - ds0) <= 1e-15);
  CHECK(std::abs(data.dq(0, 0, 0, 1) - ds1) <= 1e-15);
  CHECK(std::abs(data.dk(0, 0, 0, 0) - ds0) <= 1e-15);
  CHECK(data.dk(0, 0, 0, 1) == 0.0);
  CHECK(std::abs(data.dk(0, 1, 0, 0) - ds1) <= 1e-15);
  CHECK(std::abs(data.dv(0, 0, 0, 0) - p0) <= 1e-15);
  CHECK(std::abs(data.dv(0, 1, 0, 0) - p1) <= 1e-15);
  CHECK(data.dv(0, 0, 0, 1) == 0.0);
}
