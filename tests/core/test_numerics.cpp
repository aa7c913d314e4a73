// core/numerics: the error statistics of the one verification rule, FlashAttention-3's floor and the gamma
// constants of the bounds, against values worked out by hand.
#include <cmath>
#include <limits>

#include "catch.hpp"
#include "flashlab/core/numerics.hpp"

namespace flashlab::numerics {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

TEST_CASE("abs_difference: equal infinities are exact, other non-finite values infinitely wrong", "[numerics]") {
  CHECK(abs_difference(1.5, 1.0) == 0.5);
  CHECK(abs_difference(-kInf, -kInf) == 0);
  CHECK(abs_difference(kInf, -kInf) == kInf);
  CHECK(abs_difference(2.0, -kInf) == kInf);
  CHECK(abs_difference(std::nan(""), 1.0) == kInf);
}

TEST_CASE("ErrorAccumulator: max, rel. Frobenius, RMSE, bias, guarded max_rel, worst entry", "[numerics]") {
  ErrorAccumulator a(2.5);  // guard 2.5e-2
  CHECK(a.add(1.1, 1.0, 0));        // the first entry is the worst so far
  CHECK(a.add(2.0, 2.5, 1));        // |-0.5| > 0.1
  CHECK_FALSE(a.add(-kInf, -kInf, 2));  // an exact -inf (a fully masked row's LSE)
  CHECK_FALSE(a.add(0.011, 0.01, 3));   // below the guard: no relative error counted
  const ErrorStats s = a.finish();
  CHECK(s.count == 4);
  CHECK(s.worst == 1);
  CHECK(s.max_abs == Approx(0.5));
  const double sq = 0.1 * 0.1 + 0.5 * 0.5 + 0.001 * 0.001;
  CHECK(s.rmse == Approx(std::sqrt(sq / 3)));
  CHECK(s.bias == Approx((0.1 - 0.5 + 0.001) / 3));
  CHECK(s.rel_fro == Approx(std::sqrt(sq / (1.0 + 6.25 + 1e-4))));
  CHECK(s.max_rel == Approx(0.2));  // 0.5 / 2.5 beats 0.1 / 1.0; 0.001 / 0.01 is below the guard

  ErrorAccumulator exact;
  exact.add(0.0, 0.0, 0);
  CHECK(exact.finish().rel_fro == 0);  // no error on a zero reference
  ErrorAccumulator wrong;
  wrong.add(1e-9, 0.0, 0);
  CHECK(wrong.finish().rel_fro == kInf);  // an error where the reference is exactly zero
  ErrorAccumulator broken;
  broken.add(1.0, 1.0, 0);
  CHECK(broken.add(std::nan(""), 1.0, 1));
  CHECK(broken.finish().max_abs == kInf);
  CHECK(broken.finish().worst == 1);
}

TEST_CASE("one_step_noise: the rounding of one add and subtract of 0.3 in the output dtype", "[numerics]") {
  // bf16: fl(1 + 0.3) = 1.296875, fl(1.296875 - 0.3) = 0.99609375 (spacing 2^-8 below 1)
  CHECK(one_step_noise(1.0, DType::bf16) == std::ldexp(1.0, -8));
  // a zero reference: bf16(0.3) = 0.30078125, 0.30078125 - 0.3 = 7.8125e-4 (2^-10 * 0.8), rounded to bf16
  CHECK(one_step_noise(0.0, DType::bf16) == Approx(7.8125e-4).epsilon(4e-3));
  // fp16(0.3) = 0.300048828125: 4.8828125e-5
  CHECK(one_step_noise(0.0, DType::fp16) == Approx(4.8828125e-5).epsilon(1e-3));
  CHECK(one_step_noise(-kInf, DType::fp32) == 0);
  CHECK(rule_factor("o") == 2);
  CHECK(rule_factor("lse") == 2);
  CHECK(rule_factor("dq") == 3);
}

TEST_CASE("gamma constants: deterministic n u / (1 - n u), 2u when truncating, probabilistic below", "[numerics]") {
  const double u = std::ldexp(1.0, -24);
  const Accumulation nearest{u, false}, truncating{u, true};
  CHECK(nearest.gamma(0) == 0);
  CHECK(nearest.gamma(10) == Approx(10 * u / (1 - 10 * u)));
  CHECK(truncating.gamma(10) == Approx(20 * u / (1 - 20 * u)));
  CHECK(Accumulation{0.5, false}.gamma(2) == kInf);  // n u >= 1: no bound
  for (const std::int64_t n : {1, 64, 4096, 1 << 20}) {
    INFO(n);
    CHECK(nearest.gamma_prob(n, 4.0) <= nearest.gamma(n));
    CHECK(truncating.gamma_prob(n, 4.0) <= truncating.gamma(n));
    // the truncation's bias stays: at least n u
    CHECK(truncating.gamma_prob(n, 4.0) >= n * u);
  }
  CHECK(nearest.gamma_prob(1 << 20, 4.0) == Approx(std::expm1(4.0 * 1024 * u + (1 << 20) * u * u / (1 - u))));
  CHECK(row_sum_depth(100, 1) == 100);
  CHECK(row_sum_depth(100, 4) == 25 + 2);
  CHECK(row_sum_depth(5, 3) == 2 + 2);
}

TEST_CASE("the rule judges low-precision variants in fp16 and bf16 on the rule's own inputs only", "[numerics]") {
  const DataPath fp32_path = materializing_path(DType::bf16, DType::fp32, true, 0, "");
  CHECK(rule_judges(DType::bf16, fp32_path, Distribution::normal));
  CHECK(rule_judges(DType::fp16, fp32_path, Distribution::uniform));
  CHECK_FALSE(rule_judges(DType::fp32, fp32_path, Distribution::normal));
  CHECK_FALSE(rule_judges(DType::bf16, reference_path(DType::bf16), Distribution::normal));  // fp64 arithmetic
  for (Distribution stress : kDistributions) {
    if (stress != Distribution::normal && stress != Distribution::uniform) CHECK_FALSE(rule_judges(DType::bf16, fp32_path, stress));
  }
}

TEST_CASE("one_step_noise is at least the unit roundoff of the reference", "[numerics]") {
  // these fp32 values survive + 0.3 - 0.3 exactly: FlashAttention-3's realized noise is 0, the floor keeps u |r|
  for (double r : {8.5, -5.25, 0.375, 8.40000057220459}) {
    CHECK(one_step_noise(r, DType::fp32) == unit_roundoff(DType::fp32) * std::abs(r));
  }
}

}  // namespace
}  // namespace flashlab::numerics
