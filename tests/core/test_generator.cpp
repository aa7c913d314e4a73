// The input generator and the deterministic math under it: detmath::log and sincos_turns against the
// C library, Philox4x32-10 known answers, determinism and stream separation, fill() on strided views,
// rounding to the dtype, the statistics of the iid distributions, and the score structure of the structured
// ones measured on generated Q and K.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
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
// The iid distributions (normal, uniform, outliers) give the same value under any layout.
constexpr InputLayout kAnyLayout{1, 1};

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
    x[static_cast<std::size_t>(i)] = sample(seed, kQ, static_cast<std::uint64_t>(i), distribution, kAnyLayout);
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
      const double x = sample(seed, kQ, i, distribution, kAnyLayout);
      if (sample(seed, kQ, i, distribution, kAnyLayout) != x) ++repeated_differs;
      if (sample(seed + 1, kQ, i, distribution, kAnyLayout) == x) ++seed_equal;
      if (sample(seed + (1ULL << 32), kQ, i, distribution, kAnyLayout) == x) ++seed_high_equal;  // key word 1
      if (sample(seed, kK, i, distribution, kAnyLayout) == x) ++tensor_equal;
      if (sample(seed, kQ, i + 1, distribution, kAnyLayout) == x) ++index_equal;
      if (sample(seed, kQ, i + (1ULL << 32), distribution, kAnyLayout) == x) ++index_high_equal;  // counter word 1
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
    const double x = sample(7, kQ, static_cast<std::uint64_t>(i), Distribution::normal, kAnyLayout);
    const double y = sample(7, kK, static_cast<std::uint64_t>(i), Distribution::normal, kAnyLayout);
    sxy += x * y;
    sxx += x * x;
    syy += y * y;
  }
  // Under independence the sample correlation has standard deviation 1/sqrt(n); allow 5 of them.
  CHECK(std::abs(sxy / std::sqrt(sxx * syy)) < 5.0 / std::sqrt(static_cast<double>(n)));
}

TEST_CASE("input_value is the sample rounded to the nearest dtype value", "[generator]") {
  for (std::uint64_t i = 0; i < 20000; ++i) {
    const double exact = sample(3, kQ, i, Distribution::outliers, kAnyLayout);
    const double half = input_value(3, kQ, i, Distribution::outliers, DType::fp16, kAnyLayout);
    const double bf = input_value(3, kQ, i, Distribution::outliers, DType::bf16, kAnyLayout);
    const double single = input_value(3, kQ, i, Distribution::outliers, DType::fp32, kAnyLayout);
    CHECK(is_fp16_value(half));
    CHECK(is_bf16_value(bf));
    CHECK(single == static_cast<double>(static_cast<float>(exact)));
    // Nearest: within half a spacing, i.e. relative u (or half the subnormal spacing 2^-25 for fp16).
    CHECK(std::abs(half - exact) <= std::max(std::abs(exact) * unit_roundoff(DType::fp16), std::ldexp(1.0, -25)));
    CHECK(std::abs(bf - exact) <= std::abs(exact) * unit_roundoff(DType::bf16));
    CHECK(input_value(3, kQ, i, Distribution::outliers, DType::fp64, kAnyLayout) == exact);
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
                sample(spec.seed, static_cast<std::uint32_t>(TensorId::v), linear, spec.distribution, {4, 17});
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
              sample(spec.seed, static_cast<std::uint32_t>(TensorId::d_out), linear, spec.distribution, {1, 3});
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
      const double expected = sample(spec.seed, kK, static_cast<std::uint64_t>(i), spec.distribution, {1, 33});
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
  CHECK(half.values()[123] ==
        static_cast<float>(round_to(sample(9, kQ, 123, Distribution::outliers, {3, 40}), DType::fp16)));
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
  // kDistributions lists every enumerator once, in declaration order (so a new one cannot be left out).
  for (std::size_t i = 0; i < kDistributions.size(); ++i) CHECK(static_cast<std::size_t>(kDistributions[i]) == i);
  std::set<std::string_view> names;
  for (const Distribution d : kDistributions) {
    INFO(static_cast<int>(d));
    CHECK(name(d) != "?");
    CHECK(parse_distribution(name(d)) == d);
    names.insert(name(d));
  }
  CHECK(names.size() == kDistributions.size());
  const std::vector<std::string> expected = {"normal", "uniform", "outliers", "peaked",
                                             "flat",   "ramp",    "ties",     "large_logits"};
  for (const std::string& n : expected) CHECK(names.contains(n));
  CHECK_THROWS_AS(parse_distribution("gaussian"), std::invalid_argument);
  std::string message;
  try {
    (void)parse_distribution("Normal");
  } catch (const std::invalid_argument& error) {
    message = error.what();
  }
  INFO(message);
  CHECK(message.find("'Normal'") != std::string::npos);
  for (const std::string& allowed : expected) CHECK(message.find(allowed) != std::string::npos);
}

// --- structured distributions ------------------------------------------------------------------------------

namespace {

constexpr std::array<Distribution, 5> kStructured = {Distribution::peaked, Distribution::flat, Distribution::ramp,
                                                     Distribution::ties, Distribution::large_logits};

// Q and K of a [1, N, H, d] problem (N_q = N_k = N) as fill() generates them.
struct QueryKey {
  Tensor<double, 4> q, k;
};
QueryKey query_key(Distribution distribution, DType dtype, std::int64_t n, std::int64_t heads, std::int64_t d,
                   std::uint64_t seed) {
  QueryKey qk{Tensor<double, 4>({1, n, heads, d}), Tensor<double, 4>({1, n, heads, d})};
  fill(qk.q.view(), TensorId::q, {seed, distribution, dtype});
  fill(qk.k.view(), TensorId::k, {seed, distribution, dtype});
  return qk;
}

// Scores q_i . k_j / sqrt(d) of query row i and head h against keys [0, keys), summed in channel order.
std::vector<double> scores(const QueryKey& qk, std::int64_t i, std::int64_t h, std::int64_t keys) {
  const std::int64_t d = qk.q.shape()[3];
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> s(static_cast<std::size_t>(keys));
  for (std::int64_t j = 0; j < keys; ++j) {
    double dot = 0;
    for (std::int64_t c = 0; c < d; ++c) dot += qk.q(0, i, h, c) * qk.k(0, j, h, c);
    s[static_cast<std::size_t>(j)] = dot * scale;
  }
  return s;
}

constexpr std::array<DType, 3> kStructureDTypes = {DType::fp64, DType::fp16, DType::bf16};

}  // namespace

TEST_CASE("coordinates_of decodes token, head and channel", "[generator]") {
  const InputLayout layout{3, 40};
  for (const std::uint64_t token : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{97}, std::uint64_t{1} << 33}) {
    for (std::uint64_t head = 0; head < 3; ++head) {
      for (const std::uint64_t channel : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{39}}) {
        const InputCoordinates at = coordinates_of((token * 3 + head) * 40 + channel, layout);
        CHECK((at.token == token && at.head == head && at.channel == channel));
      }
    }
  }
}

TEST_CASE("structured distributions: V and dO are the normal draw, Q and K built from it as documented",
          "[generator]") {
  // The element-wise constructions, checked exactly against the normal draw of the same element.
  constexpr std::uint64_t seed = 31;
  const InputLayout layout{2, 24};
  const auto q_of = [&](Distribution d, std::uint64_t i) { return sample(seed, kQ, i, d, layout); };
  const auto k_of = [&](Distribution d, std::uint64_t i) { return sample(seed, kK, i, d, layout); };
  std::int64_t wrong = 0;
  for (std::uint64_t i = 0; i < 20000; ++i) {
    const InputCoordinates at = coordinates_of(i, layout);
    const double nq = q_of(Distribution::normal, i), nk = k_of(Distribution::normal, i);
    for (const Distribution d : kStructured) {
      for (const TensorId t : {TensorId::v, TensorId::d_out}) {
        const auto id = static_cast<std::uint32_t>(t);
        wrong += sample(seed, id, i, d, layout) != sample(seed, id, i, Distribution::normal, layout);
      }
    }
    wrong += q_of(Distribution::flat, i) != 1e-3 * nq;
    wrong += k_of(Distribution::flat, i) != nk;
    wrong += q_of(Distribution::large_logits, i) != 32 * nq;
    wrong += k_of(Distribution::large_logits, i) != 32 * nk;
    wrong += q_of(Distribution::ties, i) != std::abs(nq);
    wrong += k_of(Distribution::ties, i) != (at.token % 2 == 0 ? 1.0 : nk);
    wrong += q_of(Distribution::ramp, i) != (at.channel == 0 ? 1.0 : nq);
    wrong += k_of(Distribution::ramp, i) != (at.channel == 0 ? 0.5 * static_cast<double>(at.token % 8192) : nk);
    // peaked: q = 0.5 nq + 1.5 w and k = 0.5 nk + 1.5 w with one code w = +-1 (the generator's operations, so
    // the comparison is exact).
    const auto code_of = [](double value, double normal) {
      if (value == 0.5 * normal + 1.5) return 1;
      if (value == 0.5 * normal - 1.5) return -1;
      return 0;
    };
    const int wq = code_of(q_of(Distribution::peaked, i), nq), wk = code_of(k_of(Distribution::peaked, i), nk);
    wrong += wq == 0 || wq != wk;
  }
  CHECK(wrong == 0);
  // The ramp restarts after kRampPeriod tokens.
  CHECK(k_of(Distribution::ramp, 8191 * 48) == 0.5 * 8191);
  CHECK(k_of(Distribution::ramp, 8192 * 48) == 0.0);
  CHECK(k_of(Distribution::ramp, 8193 * 48) == 0.5);
}

TEST_CASE("peaked: each query row's own key scores highest, by more than 5", "[generator][statistics]") {
  // At d = 64 the own key scores ~18 and the other 255 ~N(0, 6.25): the gap to the next averages 11
  // (standard deviation 1.3); its smallest value over these 512 rows is 6.2, over 20 seeds' 10240 rows 5.1.
  // A code not shared between Q and K, or shared at the wrong token, leaves no gap at all.
  constexpr std::int64_t n = 256, heads = 2, d = 64;
  for (const DType dtype : kStructureDTypes) {
    INFO(name(dtype));
    const QueryKey qk = query_key(Distribution::peaked, dtype, n, heads, d, 5);
    std::int64_t not_own = 0;
    double smallest_gap = std::numeric_limits<double>::infinity();
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t i = 0; i < n; ++i) {
        const std::vector<double> s = scores(qk, i, h, n);
        const auto top = std::max_element(s.begin(), s.end());
        not_own += top - s.begin() != i;
        double second = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j < n; ++j) {
          if (j != i) second = std::max(second, s[static_cast<std::size_t>(j)]);
        }
        smallest_gap = std::min(smallest_gap, s[static_cast<std::size_t>(i)] - second);
      }
    }
    INFO("smallest gap between the own key and the next " << smallest_gap);
    CHECK(not_own == 0);
    CHECK(smallest_gap > 5.0);
  }
}

TEST_CASE("flat: every score is below 0.05 in magnitude", "[generator][statistics]") {
  // Scores are ~N(0, 1e-6): the largest of 131072 is ~5e-3, a tenth of the bound; an unscaled q gives ~4.
  constexpr std::int64_t n = 256, heads = 2, d = 64;
  for (const DType dtype : kStructureDTypes) {
    INFO(name(dtype));
    const QueryKey qk = query_key(Distribution::flat, dtype, n, heads, d, 6);
    double largest = 0;
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t i = 0; i < n; ++i) {
        for (const double s : scores(qk, i, h, n)) largest = std::max(largest, std::abs(s));
      }
    }
    INFO("largest |score| " << largest);
    CHECK(largest < 0.05);
    CHECK(largest > 0.0);  // not degenerate: q rounds to nonzero values in every dtype here
  }
}

TEST_CASE("ramp: the running row max grows on every key tile", "[generator][statistics]") {
  // At d = 64 the ramp adds 0.5/8 per key to the score, on a noise of standard deviation ~1 from the other
  // 63 channels. A 128-key tile rises by 8: the running max grows on every one (smallest rise measured over
  // 6 seeds and 184320 tile steps: 3.5). A 64-key tile rises by 4, about 4 standard deviations of the
  // difference of two tile maxima, so the running max stalls in ~4 of 10^6 tile steps (3 of 761856
  // measured): those are allowed up to 1 in 10^4, far below the half of all steps a ramp in the wrong
  // channel, direction or tensor gives.
  constexpr std::int64_t n = 2048, heads = 2, d = 64;
  for (const DType dtype : kStructureDTypes) {
    INFO(name(dtype));
    const QueryKey qk = query_key(Distribution::ramp, dtype, n, heads, d, 7);
    for (const std::int64_t tile : {128, 64}) {
      std::int64_t stalls = 0, steps = 0;
      for (std::int64_t h = 0; h < heads; ++h) {
        for (std::int64_t i = 0; i < n; i += 3) {  // 683 rows per head, spread over the sequence
          const std::vector<double> s = scores(qk, i, h, n);
          double running = -std::numeric_limits<double>::infinity();
          for (std::int64_t start = 0; start < n; start += tile) {
            const double tile_max = *std::max_element(s.begin() + start, s.begin() + start + tile);
            if (start > 0) {
              ++steps;
              stalls += !(tile_max > running);
            }
            running = std::max(running, tile_max);
          }
        }
      }
      INFO(tile << "-key tiles: the running max stalls in " << stalls << " of " << steps << " tile steps");
      if (tile == 128) CHECK(stalls == 0);
      else CHECK(stalls * 10000 <= steps);
    }
  }
}

TEST_CASE("ties: every even key attains the row max exactly, no odd key does", "[generator][statistics]") {
  // Even keys score sum|q|/8 ~ 6.4 exactly alike (the same products 1 * q_c summed in the same order); odd
  // keys ~N(0, 1) reach ~4 at most among 256.
  constexpr std::int64_t n = 256, heads = 2, d = 64;
  for (const DType dtype : kStructureDTypes) {
    INFO(name(dtype));
    const QueryKey qk = query_key(Distribution::ties, dtype, n, heads, d, 8);
    std::int64_t wrong_rows = 0;
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t i = 0; i < n; ++i) {
        const std::vector<double> s = scores(qk, i, h, n);
        const double top = *std::max_element(s.begin(), s.end());
        std::int64_t at_max = 0, even_at_max = 0;
        for (std::int64_t j = 0; j < n; ++j) {
          if (s[static_cast<std::size_t>(j)] == top) {
            ++at_max;
            even_at_max += j % 2 == 0;
          }
        }
        wrong_rows += at_max != n / 2 || even_at_max != n / 2;
      }
    }
    CHECK(wrong_rows == 0);
  }
}

TEST_CASE("large_logits: scores have a standard deviation of about 1e3", "[generator][statistics]") {
  constexpr std::int64_t n = 256, heads = 2, d = 64;
  for (const DType dtype : kStructureDTypes) {
    INFO(name(dtype));
    const QueryKey qk = query_key(Distribution::large_logits, dtype, n, heads, d, 9);
    std::vector<double> all;
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t i = 0; i < n; ++i) {
        const std::vector<double> s = scores(qk, i, h, n);
        all.insert(all.end(), s.begin(), s.end());
      }
    }
    const double deviation = std::sqrt(moments(all).variance);
    INFO("standard deviation " << deviation);
    CHECK(deviation >= 500.0);
    CHECK(deviation <= 2000.0);
  }
}

TEST_CASE("fill of a structured distribution decodes the logical shape, not the strides", "[generator]") {
  for (const Distribution distribution : kStructured) {
    INFO(name(distribution));
    const InputSpec spec{17, distribution, DType::fp16};
    // Rank 4, column-major: layout {heads = shape[2], dim = shape[3]}.
    const Shape<4> shape{2, 33, 3, 40};
    const Shape<4> column_major{1, 2, 2 * 33, 2 * 33 * 3};
    for (const TensorId tensor : {TensorId::q, TensorId::k}) {
      std::vector<double> buffer(static_cast<std::size_t>(element_count<4>(shape)));
      const TensorView<double, 4> view(buffer.data(), shape, column_major);
      fill(view, tensor, spec);
      std::int64_t wrong = 0;
      std::uint64_t linear = 0;
      for (std::int64_t a = 0; a < shape[0]; ++a) {
        for (std::int64_t b = 0; b < shape[1]; ++b) {
          for (std::int64_t c = 0; c < shape[2]; ++c) {
            for (std::int64_t e = 0; e < shape[3]; ++e, ++linear) {
              wrong += view(a, b, c, e) != input_value(spec.seed, static_cast<std::uint32_t>(tensor), linear,
                                                       distribution, spec.dtype, {3, 40});
            }
          }
        }
      }
      CHECK(wrong == 0);
    }
    // Rank 3, padded: layout {1, last dimension}.
    const Shape<3> shape3{4, 9, 24};
    const Shape<3> padded{9 * 30, 30, 1};
    std::vector<float> buffer3(4 * 9 * 30);
    const TensorView<float, 3> view3(buffer3.data(), shape3, padded);
    fill(view3, TensorId::k, spec);
    std::int64_t wrong = 0;
    std::uint64_t linear = 0;
    for (std::int64_t a = 0; a < shape3[0]; ++a) {
      for (std::int64_t b = 0; b < shape3[1]; ++b) {
        for (std::int64_t c = 0; c < shape3[2]; ++c, ++linear) {
          wrong += view3(a, b, c) != static_cast<float>(input_value(spec.seed, kK, linear, distribution, spec.dtype,
                                                                    {1, 24}));
        }
      }
    }
    CHECK(wrong == 0);
  }
}

TEST_CASE("unpadded inputs hold the padded inputs' valid tokens bit for bit", "[generator][padding]") {
  // A key-padding problem and its unpadded varlen form: fill() of the unpadded tensors with the token remap must give
  // each packed token exactly the values of its token in the padded tensors, for every tensor and distribution (the
  // structured ones decode the token, so the remap must reach them too).
  for (const KeyPadding side : {KeyPadding::right, KeyPadding::left}) {
    Problem p;
    p.batch = 4;
    p.heads = 3;
    p.heads_kv = 1;
    p.seqlen_q = p.seqlen_k = 37;
    p.head_dim = 24;
    p.key_padding = side;
    p.valid_lengths = {37, 0, 5, 20};
    const Problem u = p.unpadded();
    const AttentionShapes padded_shapes = attention_shapes(p), unpadded_shapes = attention_shapes(u);
    const std::vector<std::int64_t> source = p.padded_tokens();
    for (const Distribution distribution : kDistributions) {
      for (const DType dtype : {DType::fp64, DType::bf16}) {
        const InputSpec padded_spec{7, distribution, dtype};
        InputSpec unpadded_spec = padded_spec;
        unpadded_spec.token_source = source;
        for (const TensorId id : {TensorId::q, TensorId::k, TensorId::v, TensorId::d_out}) {
          const bool key_side = id == TensorId::k || id == TensorId::v;
          const Shape<4> shape_p = key_side ? padded_shapes.k : padded_shapes.q;
          const Shape<4> shape_u = key_side ? unpadded_shapes.k : unpadded_shapes.q;
          Tensor<double, 4> a(shape_p), b(shape_u);
          fill(a.view(), id, padded_spec);
          fill(b.view(), id, unpadded_spec);
          INFO(name(side) << " " << name(distribution) << " " << name(dtype) << " tensor " << static_cast<int>(id));
          std::int64_t differ = 0;
          for (std::int64_t t = 0; t < shape_u[1]; ++t) {
            const std::int64_t slot = source[static_cast<std::size_t>(t)] / p.seqlen_q;
            const std::int64_t n = source[static_cast<std::size_t>(t)] % p.seqlen_q;
            for (std::int64_t h = 0; h < shape_u[2]; ++h) {
              for (std::int64_t c = 0; c < shape_u[3]; ++c) {
                differ += std::bit_cast<std::uint64_t>(b(0, t, h, c)) != std::bit_cast<std::uint64_t>(a(slot, n, h, c));
              }
            }
          }
          CHECK(differ == 0);
        }
      }
    }
    // the remap itself, element by element: token t of the unpadded tensor is drawn as its source token
    const InputLayout remapped{3, 24, source.data()};
    for (std::uint64_t index = 0; index < source.size() * 3 * 24; index += 7) {
      const std::uint64_t expected = (static_cast<std::uint64_t>(source[index / 72]) * 3 + (index / 24) % 3) * 24 + index % 24;
      CHECK(source_index(index, remapped) == expected);
      CHECK(input_value(5, kK, index, Distribution::ramp, DType::fp16, remapped) ==
            input_value(5, kK, expected, Distribution::ramp, DType::fp16, InputLayout{3, 24}));
    }
  }
}

TEST_CASE("fill refuses a token remap of the wrong length", "[generator][padding]") {
  Tensor<double, 4> t({1, 5, 2, 8});
  InputSpec spec{1, Distribution::normal, DType::fp64};
  spec.token_source = {0, 1, 2};
  CHECK_THROWS_AS(fill(t.view(), TensorId::q, spec), std::invalid_argument);
}

}  // namespace flashlab
