// The input generator and the deterministic math under it: detmath::log and sincos_turns against the
// C library, Philox4x32-10 known answers, determinism and stream separation, fill() on strided views,
// rounding to the dtype, and the statistics of the three distributions.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/detmath.hpp"
#include "flashlab/core/dtype.hpp"
#include "flashlab/core/generator.hpp"
#include "flashlab/core/tensor.hpp"

namespace flashlab {
namespace {

constexpr std::uint32_t kQ = static_cast<std::uint32_t>(TensorId::q);
constexpr std::uint32_t kK = static_cast<std::uint32_t>(TensorId::k);

// Unit in the last place of a finite nonzero double.
double ulp(double x) {
  return std::ldexp(1.0, detmath::exponent_of(x) - 52);
}

struct Moments {
  double mean;
  double variance;  // unbiased
};
Moments moments(const std::vector<double>& x) {
  double sum = 0;
  for (const double v : x) sum += v;
  const double mean = sum / static_cast<double>(x.size());
  double squares = 0;
  for (const double v : x) squares += (v - mean) * (v - mean);
  return {mean, squares / static_cast<double>(x.size() - 1)};
}

// Kolmogorov-Smirnov statistic: the largest distance between the empirical CDF of x and `cdf`.
template <class Cdf>
double ks_statistic(std::vector<double> x, Cdf cdf) {
  std::sort(x.begin(), x.end());
  const double n = static_cast<double>(x.size());
  double d = 0;
  for (std::size_t k = 0; k < x.size(); ++k) {
    const double f = cdf(x[k]);
    d = std::max({d, f - static_cast<double>(k) / n, static_cast<double>(k + 1) / n - f});
  }
  return d;
}

double normal_cdf(double x) {
  return 0.5 * std::erfc(-x / std::numbers::sqrt2);
}

std::vector<double> draw(std::uint64_t seed, Distribution distribution, std::int64_t n) {
  std::vector<double> x(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    x[static_cast<std::size_t>(i)] = sample(seed, kQ, static_cast<std::uint64_t>(i), distribution);
  }
  return x;
}

// True when x is a finite fp16 value: |x| <= 65504 and a multiple of its spacing 2^(max(e, -14) - 10).
bool is_fp16_value(double x) {
  if (x == 0) return true;
  if (!std::isfinite(x) || std::abs(x) > 65504.0) return false;
  const int e = std::max(static_cast<int>(std::floor(std::log2(std::abs(x)))), -14);
  const double steps = std::ldexp(x, 10 - e);
  return steps == std::floor(steps);
}

// True when x is a bf16 value: a float whose lower 16 bits are zero.
bool is_bf16_value(double x) {
  const auto f = static_cast<float>(x);
  return static_cast<double>(f) == x && (std::bit_cast<std::uint32_t>(f) & 0xffffu) == 0;
}

}  // namespace

// --- detmath ---------------------------------------------------------------------------------------------

TEST_CASE("detmath::log is within 4 ulp of std::log", "[detmath]") {
  // detmath.hpp promises "a few ulp"; the C library's log is within 1 ulp, so 4 ulp separates a correct
  // series from a wrong constant or a missing term (each of which costs far more than 4 ulp).
  std::mt19937_64 rng(5);
  std::vector<double> xs{1.0,
                         0.5,
                         2.0,
                         std::ldexp(1.0, -53),
                         1.0 - std::ldexp(1.0, -53),
                         1.0 + std::ldexp(1.0, -52),
                         detmath::kSqrtHalf,
                         std::nextafter(detmath::kSqrtHalf, 0.0),
                         std::numbers::sqrt2,
                         std::numbers::e,
                         std::numeric_limits<double>::min(),
                         std::numeric_limits<double>::denorm_min(),
                         std::numeric_limits<double>::max()};
  // (0, 1] as Box-Muller draws it: 1 - k 2^-53.
  for (int n = 0; n < 100000; ++n) xs.push_back(1.0 - static_cast<double>(rng() >> 11) * std::ldexp(1.0, -53));
  // Every binade of the doubles, subnormals included.
  std::uniform_int_distribution<int> exponent(-1074, 1023);
  for (int n = 0; n < 100000; ++n) {
    xs.push_back(std::ldexp(1.0 + static_cast<double>(rng() >> 12) * std::ldexp(1.0, -52), exponent(rng)));
  }
  double worst = 0, worst_x = 0;
  for (const double x : xs) {
    const double expected = std::log(x);
    const double error =
        expected == 0 ? std::abs(detmath::log(x)) : std::abs(detmath::log(x) - expected) / ulp(expected);
    if (error > worst) {
      worst = error;
      worst_x = x;
    }
  }
  INFO("worst error " << worst << " ulp at x = " << std::hexfloat << worst_x);
  CHECK(worst <= 4.0);
  CHECK(detmath::log(1.0) == 0.0);
}

TEST_CASE("detmath::sincos_turns matches sin and cos of 2 pi u", "[detmath]") {
  // Reference in long double (64-bit significand on x86), so that rounding 2 pi u in double (up to
  // 7e-16 of angle near u = 1) does not enter. The tolerance 1e-15 is 4.5 ulp of 1: the reduction to
  // |a| <= pi/4 is exact except for kHalfPi (2^-53 relative), and Horner adds a few roundings of values <= 1.
  REQUIRE(std::numeric_limits<long double>::digits >= 64);
  constexpr long double kTwoPi = 6.283185307179586476925286766559005768L;
  auto check = [](double u, double& worst) {
    const detmath::SinCos sc = detmath::sincos_turns(u);
    const long double angle = kTwoPi * static_cast<long double>(u);
    const double ds = std::abs(sc.sin - static_cast<double>(std::sin(angle)));
    const double dc = std::abs(sc.cos - static_cast<double>(std::cos(angle)));
    worst = std::max({worst, ds, dc});
  };
  double worst = 0;
  std::mt19937_64 rng(9);
  for (int n = 0; n < 200000; ++n) check(static_cast<double>(rng() >> 11) * std::ldexp(1.0, -53), worst);
  for (int k = 0; k < 1024; ++k) check(k / 1024.0, worst);
  check(1.0 - std::ldexp(1.0, -53), worst);
  check(0.125, worst);
  check(std::ldexp(1.0, -40), worst);
  INFO("worst absolute error " << worst);
  CHECK(worst <= 1e-15);

  // Quarter turns reduce to a = 0 exactly, where the series give sin 0 = 0 and cos 0 = 1 exactly.
  const detmath::SinCos zero = detmath::sincos_turns(0.0);
  CHECK((zero.sin == 0.0 && zero.cos == 1.0));
  const detmath::SinCos quarter = detmath::sincos_turns(0.25);
  CHECK((quarter.sin == 1.0 && quarter.cos == 0.0));
  const detmath::SinCos half = detmath::sincos_turns(0.5);
  CHECK((half.sin == 0.0 && half.cos == -1.0));
  const detmath::SinCos three_quarters = detmath::sincos_turns(0.75);
  CHECK((three_quarters.sin == -1.0 && three_quarters.cos == 0.0));
}

// --- Philox and the generator ----------------------------------------------------------------------------

TEST_CASE("Philox4x32-10 reproduces the Random123 known-answer vectors", "[generator]") {
  // Random123 tests/kat_vectors, "philox4x32 10" lines: counter words, key words, output words.
  struct Kat {
    Philox4x32 counter;
    std::uint32_t key0, key1;
    Philox4x32 expected;
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}},
       0xffffffff,
       0xffffffff,
       {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}},
       0xa4093822,
       0x299f31d0,
       {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
  };
  for (const Kat& kat : kats) {
    const Philox4x32 out = philox4x32_10(kat.counter, kat.key0, kat.key1);
    for (int w = 0; w < 4; ++w) {
      INFO("counter word 0 " << std::hex << kat.counter.x[0] << ", output word " << w);
      CHECK(out.x[w] == kat.expected.x[w]);
    }
  }
}

TEST_CASE("samples are a pure function of (seed, tensor, index)", "[generator]") {
  const std::uint64_t seed = 0x1234'5678'9abcULL;
  for (const Distribution distribution : {Distribution::normal, Distribution::uniform, Distribution::outliers}) {
    INFO(name(distribution));
    std::int64_t repeated_differs = 0;
    std::int64_t seed_equal = 0, seed_high_equal = 0, tensor_equal = 0, index_equal = 0, index_high_equal = 0;
    for (std::uint64_t i = 0; i < 2000; ++i) {
      const double x = sample(seed, kQ, i, distribution);
      if (sample(seed, kQ, i, distribution) != x) ++repeated_differs;
      if (sample(seed + 1, kQ, i, distribution) == x) ++seed_equal;
      if (sample(seed + (1ULL << 32), kQ, i, distribution) == x) ++seed_high_equal;  // key word 1
      if (sample(seed, kK, i, distribution) == x) ++tensor_equal;
      if (sample(seed, kQ, i + 1, distribution) == x) ++index_equal;
      if (sample(seed, kQ, i + (1ULL << 32), distribution) == x) ++index_high_equal;  // counter word 1
    }
    CHECK(repeated_differs == 0);
    // Two independent 53-bit draws coincide with probability ~2^-50; any equality means shared streams.
    CHECK(seed_equal == 0);
    CHECK(seed_high_equal == 0);
    CHECK(tensor_equal == 0);
    CHECK(index_equal == 0);
    CHECK(index_high_equal == 0);
  }
}

TEST_CASE("streams of different tensors are uncorrelated", "[generator]") {
  constexpr std::int64_t n = 200000;
  double sxy = 0, sxx = 0, syy = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double x = sample(7, kQ, static_cast<std::uint64_t>(i), Distribution::normal);
    const double y = sample(7, kK, static_cast<std::uint64_t>(i), Distribution::normal);
    sxy += x * y;
    sxx += x * x;
    syy += y * y;
  }
  // Under independence the sample correlation has standard deviation 1/sqrt(n); allow 5 of them.
  CHECK(std::abs(sxy / std::sqrt(sxx * syy)) < 5.0 / std::sqrt(static_cast<double>(n)));
}

TEST_CASE("input_value is the sample rounded to the nearest dtype value", "[generator]") {
  for (std::uint64_t i = 0; i < 20000; ++i) {
    const double exact = sample(3, kQ, i, Distribution::outliers);
    const double half = input_value(3, kQ, i, Distribution::outliers, DType::fp16);
    const double bf = input_value(3, kQ, i, Distribution::outliers, DType::bf16);
    const double single = input_value(3, kQ, i, Distribution::outliers, DType::fp32);
    CHECK(is_fp16_value(half));
    CHECK(is_bf16_value(bf));
    CHECK(single == static_cast<double>(static_cast<float>(exact)));
    // Nearest: within half a spacing, i.e. relative u (or half the subnormal spacing 2^-25 for fp16).
    CHECK(std::abs(half - exact) <= std::max(std::abs(exact) * unit_roundoff(DType::fp16), std::ldexp(1.0, -25)));
    CHECK(std::abs(bf - exact) <= std::abs(exact) * unit_roundoff(DType::bf16));
    CHECK(input_value(3, kQ, i, Distribution::outliers, DType::fp64) == exact);
  }
}

TEST_CASE("fill puts the sample of each logical linear index at its logical position", "[generator]") {
  const InputSpec spec{42, Distribution::normal, DType::fp64};
  SECTION("column-major strides, more elements than one work chunk") {
    const Shape<4> shape{3, 129, 4, 17};  // 26316 elements
    const Shape<4> column_major{1, 3, 3 * 129, 3 * 129 * 4};
    std::vector<double> buffer(static_cast<std::size_t>(element_count<4>(shape)),
                               std::numeric_limits<double>::quiet_NaN());
    const TensorView<double, 4> view(buffer.data(), shape, column_major);
    REQUIRE(!view.is_contiguous());
    fill(view, TensorId::v, spec);
    std::int64_t wrong = 0;
    std::uint64_t linear = 0;
    for (std::int64_t a = 0; a < shape[0]; ++a) {
      for (std::int64_t b = 0; b < shape[1]; ++b) {
        for (std::int64_t c = 0; c < shape[2]; ++c) {
          for (std::int64_t d = 0; d < shape[3]; ++d, ++linear) {
            const double expected =
                sample(spec.seed, static_cast<std::uint32_t>(TensorId::v), linear, spec.distribution);
            if (!(view(a, b, c, d) == expected)) ++wrong;
          }
        }
      }
    }
    CHECK(wrong == 0);
    CHECK(std::none_of(buffer.begin(), buffer.end(), [](double v) { return std::isnan(v); }));
  }
  SECTION("padded strides leave the gaps alone") {
    const Shape<3> shape{2, 5, 3};
    const Shape<3> padded{40, 7, 2};
    const float sentinel = -12345.0f;
    std::vector<float> buffer(1 * 40 + 4 * 7 + 2 * 2 + 1, sentinel);
    const TensorView<float, 3> view(buffer.data(), shape, padded);
    fill(view, TensorId::d_out, spec);
    std::set<std::int64_t> covered;
    std::int64_t wrong = 0;
    std::uint64_t linear = 0;
    for (std::int64_t a = 0; a < 2; ++a) {
      for (std::int64_t b = 0; b < 5; ++b) {
        for (std::int64_t c = 0; c < 3; ++c, ++linear) {
          covered.insert(view.offset(a, b, c));
          const double expected =
              sample(spec.seed, static_cast<std::uint32_t>(TensorId::d_out), linear, spec.distribution);
          if (view(a, b, c) != static_cast<float>(expected)) ++wrong;
        }
      }
    }
    CHECK(wrong == 0);
    for (std::size_t k = 0; k < buffer.size(); ++k) {
      if (!covered.contains(static_cast<std::int64_t>(k))) CHECK(buffer[k] == sentinel);
    }
  }
  SECTION("a contiguous tensor holds the samples in row-major order") {
    Tensor<double, 3> dense({5, 17, 33});
    fill(dense.view(), TensorId::k, spec);
    for (std::int64_t i = 0; i < dense.numel(); ++i) {
      const double expected = sample(spec.seed, kK, static_cast<std::uint64_t>(i), spec.distribution);
      if (dense.values()[static_cast<std::size_t>(i)] != expected) FAIL("element " << i);
    }
  }
}

TEST_CASE("fill rounds to the dtype", "[generator]") {
  Tensor<float, 4> half({2, 17, 3, 40});
  fill(half.view(), TensorId::q, {9, Distribution::outliers, DType::fp16});
  Tensor<float, 4> brain({2, 17, 3, 40});
  fill(brain.view(), TensorId::q, {9, Distribution::outliers, DType::bf16});
  Tensor<double, 3> single({3, 5, 97});
  fill(single.view(), TensorId::q, {9, Distribution::uniform, DType::fp32});
  std::int64_t not_half = 0, not_bf16 = 0, not_single = 0;
  for (const float v : half.values()) not_half += is_fp16_value(v) ? 0 : 1;
  for (const float v : brain.values()) not_bf16 += is_bf16_value(v) ? 0 : 1;
  for (const double v : single.values()) not_single += static_cast<double>(static_cast<float>(v)) == v ? 0 : 1;
  CHECK(not_half == 0);
  CHECK(not_bf16 == 0);
  CHECK(not_single == 0);
  // The values are the rounded samples, not merely representable ones.
  CHECK(half.values()[123] == static_cast<float>(round_to(sample(9, kQ, 123, Distribution::outliers), DType::fp16)));
}

// --- statistics (fixed seeds, so each check either always passes or always fails) ---------------------------

TEST_CASE("normal samples follow N(0, 1)", "[generator][statistics]") {
  constexpr std::int64_t n = 200000;
  const std::vector<double> x = draw(2024, Distribution::normal, n);
  const Moments m = moments(x);
  const double rn = static_cast<double>(n);
  // Mean: standard error 1/sqrt(n). Variance: the sample variance of a normal has standard error
  // sqrt(2/(n-1)). Five standard errors each.
  CHECK(std::abs(m.mean) < 5.0 / std::sqrt(rn));
  CHECK(std::abs(m.variance - 1.0) < 5.0 * std::sqrt(2.0 / (rn - 1)));
  // Kolmogorov-Smirnov: the 1% critical value of sqrt(n) D is 1.628.
  const double d = ks_statistic(x, normal_cdf);
  INFO("KS distance " << d);
  CHECK(d < 1.628 / std::sqrt(rn));
}

TEST_CASE("uniform samples follow the uniform distribution on -1 <= x < 1", "[generator][statistics]") {
  constexpr std::int64_t n = 200000;
  const std::vector<double> x = draw(2024, Distribution::uniform, n);
  CHECK(std::all_of(x.begin(), x.end(), [](double v) { return v >= -1.0 && v < 1.0; }));
  const Moments m = moments(x);
  const double rn = static_cast<double>(n);
  // Variance 1/3; the sample variance has variance (mu_4 - sigma^4)/n with mu_4 = 1/5: (1/5 - 1/9)/n.
  CHECK(std::abs(m.mean) < 5.0 * std::sqrt(1.0 / 3.0 / rn));
  CHECK(std::abs(m.variance - 1.0 / 3.0) < 5.0 * std::sqrt((1.0 / 5.0 - 1.0 / 9.0) / rn));
  const double d = ks_statistic(x, [](double v) { return 0.5 * (v + 1.0); });
  INFO("KS distance " << d);
  CHECK(d < 1.628 / std::sqrt(rn));
}

TEST_CASE("outlier samples: N(0, 1) plus N(0, 100) with probability 0.001", "[generator][statistics]") {
  // Ten times the other tests' n: 200000 samples hold only ~200 outliers, and with them an outlier
  // standard deviation of 7 instead of 10 still passes both checks below (variance 1.049 is 4 standard
  // errors from 1.1; the tail count 79 is 3 standard deviations from 110).
  constexpr std::int64_t n = 2000000;
  const double rn = static_cast<double>(n);
  const std::vector<double> x = draw(2024, Distribution::outliers, n);
  const Moments m = moments(x);
  // X = Z + B Y, Z ~ N(0,1), Y ~ N(0,100), B ~ Bernoulli(p): Var X = 1 + 100 p = 1.1, and
  // E X^4 = 3 + 6 * 100 p + 3 * 100^2 p = 33.6, so the sample variance has standard error
  // sqrt((33.6 - 1.1^2) / n) ~ 0.0040. Five of them (0.020) tell 1.1 from a plain normal's 1.0 and from
  // the 1.049 of an outlier deviation of 7.
  const double p = kOutlierProbability;
  const double variance = 1.0 + 100.0 * p;
  const double fourth = 3.0 + 6.0 * 100.0 * p + 3.0 * 100.0 * 100.0 * p;
  CHECK(std::abs(m.mean) < 5.0 * std::sqrt(variance / rn));
  CHECK(std::abs(m.variance - variance) < 5.0 * std::sqrt((fourth - variance * variance) / rn));
  // |X| > 6: a standard normal almost never (2e-9); with an outlier, X ~ N(0, 101) exceeds 6 with
  // probability erfc(6 / sqrt(202)) ~ 0.55. Expected count ~1100, binomial standard deviation ~33.
  const double q = (1 - p) * std::erfc(6.0 / std::sqrt(2.0)) + p * std::erfc(6.0 / std::sqrt(2.0 * 101.0));
  const auto beyond =
      static_cast<double>(std::count_if(x.begin(), x.end(), [](double v) { return std::abs(v) > 6.0; }));
  INFO("|x| > 6: " << beyond << " of " << n << ", expected " << rn * q);
  CHECK(std::abs(beyond - rn * q) < 5.0 * std::sqrt(rn * q * (1 - q)));
}

TEST_CASE("distribution names parse back, unknown names list the allowed set", "[generator]") {
  for (const Distribution d : {Distribution::normal, Distribution::uniform, Distribution::outliers}) {
    CHECK(parse_distribution(name(d)) == d);
  }
  CHECK_THROWS_AS(parse_distribution("gaussian"), std::invalid_argument);
  std::string message;
  try {
    (void)parse_distribution("Normal");
  } catch (const std::invalid_argument& error) {
    message = error.what();
  }
  INFO(message);
  for (const char* allowed : {"normal", "uniform", "outliers"}) CHECK(message.find(allowed) != std::string::npos);
}

}  // namespace flashlab
