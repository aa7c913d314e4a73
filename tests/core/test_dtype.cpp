// DType names, sizes and unit roundoffs, and round_to against hand cases and independent references:
// the hardware double -> float conversion for fp32 and tables decoded from every bit pattern for fp16, bf16
// and fp8_e4m3.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/dtype.hpp"

namespace flashlab {
namespace {

const double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::numeric_limits<double>::quiet_NaN();

// Equal as values and in sign (so -0 != +0), or both NaN.
bool same(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

// The non-negative values of a format, indexed by bit pattern k = 0 .. overflow_pattern, in increasing
// order. The last entry is the first pattern past the largest finite value (inf, or NaN for fp8_e4m3),
// decoded as the value its exponent would give if it were finite: IEEE rounding to nearest overflows
// exactly when it would pick that value.
struct ReferenceFormat {
  std::vector<double> value;
  double overflow_result;

  // Nearest entry to x (ties to the even bit pattern), with the IEEE sign symmetry for x < 0.
  [[nodiscard]] double round(double x) const {
    if (x < 0) return -round(-x);
    const std::size_t last = value.size() - 1;
    if (x >= value[last]) return overflow_result;
    std::size_t hi = 1;
    {
      std::size_t lo_bound = 1, hi_bound = last;  // first index with value > x, in [1, last]
      while (lo_bound < hi_bound) {
        const std::size_t mid = (lo_bound + hi_bound) / 2;
        if (value[mid] > x) {
          hi_bound = mid;
        } else {
          lo_bound = mid + 1;
        }
      }
      hi = lo_bound;
    }
    const std::size_t lo = hi - 1;
    const double below = x - value[lo], above = value[hi] - x;  // exact: neighbours of x in binary
    std::size_t pick = lo;
    if (above < below || (above == below && hi % 2 == 0)) pick = hi;
    return pick == last ? overflow_result : value[pick];
  }
};

ReferenceFormat fp16_reference() {
  // 1 sign, 5 exponent (bias 15), 10 fraction bits; exponent 0 = subnormal. 0x7c00 (inf) decodes as 2^16.
  ReferenceFormat f{{}, kInf};
  for (std::uint32_t bits = 0; bits <= 0x7c00; ++bits) {
    const int exponent = static_cast<int>((bits >> 10) & 0x1f);
    const int fraction = static_cast<int>(bits & 0x3ff);
    f.value.push_back(exponent == 0 ? std::ldexp(fraction, -24) : std::ldexp(1024 + fraction, exponent - 25));
  }
  return f;
}

ReferenceFormat bf16_reference() {
  // bf16 is the upper half of an fp32 bit pattern. 0x7f80 (inf) decodes as 2^128.
  ReferenceFormat f{{}, kInf};
  for (std::uint32_t bits = 0; bits < 0x7f80; ++bits) {
    f.value.push_back(static_cast<double>(std::bit_cast<float>(bits << 16)));
  }
  f.value.push_back(std::ldexp(1.0, 128));
  return f;
}

ReferenceFormat fp8_e4m3_reference() {
  // E4M3 "fn": 4 exponent (bias 7), 3 fraction bits, no infinity; 0x7f is NaN and decodes as 480.
  ReferenceFormat f{{}, kNaN};
  for (std::uint32_t bits = 0; bits <= 0x7f; ++bits) {
    const int exponent = static_cast<int>((bits >> 3) & 0xf);
    const int fraction = static_cast<int>(bits & 0x7);
    f.value.push_back(exponent == 0 ? std::ldexp(fraction, -9) : std::ldexp(8 + fraction, exponent - 10));
  }
  return f;
}

// A random double 2^e * m, m uniform in [1, 2) with all 52 fraction bits random, e in [min_e, max_e],
// random sign.
double random_double(std::mt19937_64& rng, int min_e, int max_e) {
  std::uniform_int_distribution<int> exponent(min_e, max_e);
  const double m = 1.0 + static_cast<double>(rng() >> 12) * std::ldexp(1.0, -52);
  const double x = std::ldexp(m, exponent(rng));
  return (rng() & 1) ? -x : x;
}

std::string parse_error(std::string_view text) {
  try {
    (void)parse_dtype(text);
  } catch (const std::invalid_argument& error) {
    return error.what();
  }
  return "(no exception)";
}

// Checks round_to against `reference` at every midpoint between neighbours (ties), just either side of
// it, and at random doubles over [2^min_e, 2^max_e] of both signs.
void check_against_reference(DType dtype, const ReferenceFormat& reference, int min_e, int max_e) {
  INFO("dtype " << name(dtype));
  std::int64_t mismatches = 0;
  auto check = [&](double x) {
    const double expected = reference.round(x), actual = round_to(x, dtype);
    if (!same(actual, expected)) {
      if (++mismatches <= 5) {
        UNSCOPED_INFO("x = " << x << " (" << std::hexfloat << x << "): expected " << expected << ", got " << actual
                             << std::defaultfloat);
      }
    }
  };
  for (std::size_t k = 0; k + 1 < reference.value.size(); ++k) {
    check(reference.value[k]);
    const double midpoint = 0.5 * (reference.value[k] + reference.value[k + 1]);  // exact
    for (const double x : {midpoint, std::nextafter(midpoint, 0.0), std::nextafter(midpoint, kInf)}) {
      check(x);
      check(-x);
    }
  }
  std::mt19937_64 rng(20240611);
  for (int n = 0; n < 200000; ++n) check(random_double(rng, min_e, max_e));
  CHECK(mismatches == 0);
}

}  // namespace

TEST_CASE("dtype names parse back, unknown names list the allowed set", "[dtype]") {
  for (const DType dtype : kAllDTypes) CHECK(parse_dtype(name(dtype)) == dtype);
  CHECK(name(DType::fp8_e4m3) == "fp8_e4m3");
  for (const char* bad : {"fp17", "", "FP16", "float16", "fp16 "}) {
    INFO("text '" << bad << "'");
    CHECK_THROWS_AS(parse_dtype(bad), std::invalid_argument);
    const std::string message = parse_error(bad);
    for (const DType dtype : kAllDTypes) CHECK(message.find(name(dtype)) != std::string::npos);
  }
}

TEST_CASE("dtype sizes and unit roundoffs", "[dtype]") {
  CHECK(size_bytes(DType::fp64) == 8);
  CHECK(size_bytes(DType::fp32) == 4);
  CHECK(size_bytes(DType::fp16) == 2);
  CHECK(size_bytes(DType::bf16) == 2);
  CHECK(size_bytes(DType::fp8_e4m3) == 1);
  CHECK(unit_roundoff(DType::fp64) == std::ldexp(1.0, -53));
  CHECK(unit_roundoff(DType::fp32) == std::ldexp(1.0, -24));
  CHECK(unit_roundoff(DType::fp16) == std::ldexp(1.0, -11));
  CHECK(unit_roundoff(DType::bf16) == std::ldexp(1.0, -8));
  CHECK(unit_roundoff(DType::fp8_e4m3) == std::ldexp(1.0, -4));
  // The format table against the platform's fp32.
  CHECK(format_of(DType::fp32).max_finite == static_cast<double>(std::numeric_limits<float>::max()));
  CHECK(format_of(DType::fp32).precision == std::numeric_limits<float>::digits);
}

TEST_CASE("round_to keeps representable values", "[dtype]") {
  const std::vector<std::pair<DType, std::vector<double>>> cases{
      {DType::fp16,
       {1.0, 1.0 + std::ldexp(1.0, -10), 65504.0, std::ldexp(1.0, -24), 1023 * std::ldexp(1.0, -24),
        std::ldexp(1.0, -14), -3.5, 0.0, -0.0, 2048.0, 4094.0}},
      {DType::bf16,
       {1.0, 1.0 + std::ldexp(1.0, -7), std::ldexp(255.0, 120), std::ldexp(1.0, -133), std::ldexp(1.0, -126), -0.0,
        256.0, 258.0}},
      {DType::fp32,
       {1.0 + std::ldexp(1.0, -23), static_cast<double>(std::numeric_limits<float>::max()),
        static_cast<double>(std::numeric_limits<float>::min()),
        static_cast<double>(std::numeric_limits<float>::denorm_min()), 0.1f, -1e30f}},
      {DType::fp8_e4m3, {448.0, 240.0, 1.125, std::ldexp(1.0, -9), std::ldexp(7.0, -9), std::ldexp(1.0, -6), -0.0}},
      {DType::fp64, {0.1, 1e-310, 1.7976931348623157e308, -0.0}},
  };
  for (const auto& [dtype, values] : cases) {
    for (const double x : values) {
      INFO(name(dtype) << " x = " << x);
      CHECK(same(round_to(x, dtype), x));
      CHECK(same(round_to(-x, dtype), -x));
    }
  }
}

TEST_CASE("round_to rounds ties to even", "[dtype]") {
  // fp16: spacing 2^-10 above 1.
  CHECK(round_to(1.0 + std::ldexp(1.0, -11), DType::fp16) == 1.0);
  CHECK(round_to(1.0 + 3 * std::ldexp(1.0, -11), DType::fp16) == 1.0 + std::ldexp(1.0, -9));
  CHECK(round_to(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -30), DType::fp16) == 1.0 + std::ldexp(1.0, -10));
  CHECK(round_to(-(1.0 + std::ldexp(1.0, -11)), DType::fp16) == -1.0);
  // bf16: spacing 2^-7 above 1.
  CHECK(round_to(1.0 + std::ldexp(1.0, -8), DType::bf16) == 1.0);
  CHECK(round_to(1.0 + 3 * std::ldexp(1.0, -8), DType::bf16) == 1.0 + std::ldexp(1.0, -6));
  // fp32: spacing 2^-23 above 1.
  CHECK(round_to(1.0 + std::ldexp(1.0, -24), DType::fp32) == 1.0);
  CHECK(round_to(1.0 + 3 * std::ldexp(1.0, -24), DType::fp32) == 1.0 + std::ldexp(1.0, -22));
  // fp8_e4m3: spacing 2^-3 above 1.
  CHECK(round_to(1.0 + std::ldexp(1.0, -4), DType::fp8_e4m3) == 1.0);
  CHECK(round_to(1.0 + 3 * std::ldexp(1.0, -4), DType::fp8_e4m3) == 1.25);
}

TEST_CASE("round_to underflows gradually", "[dtype]") {
  // fp16 subnormals are multiples of 2^-24.
  CHECK(same(round_to(std::ldexp(1.0, -25), DType::fp16), 0.0));  // tie between 0 and 2^-24: to 0
  CHECK(same(round_to(-std::ldexp(1.0, -25), DType::fp16), -0.0));
  CHECK(round_to(3 * std::ldexp(1.0, -25), DType::fp16) == std::ldexp(1.0, -23));  // tie: to 2 * 2^-24
  CHECK(round_to(std::ldexp(1.0, -25) + std::ldexp(1.0, -40), DType::fp16) == std::ldexp(1.0, -24));
  CHECK(same(round_to(std::ldexp(1.0, -26), DType::fp16), 0.0));
  CHECK(same(round_to(1e-300, DType::fp16), 0.0));
  CHECK(round_to(std::ldexp(1023.4, -24), DType::fp16) == std::ldexp(1023.0, -24));
  // bf16 and fp32 subnormals: multiples of 2^-133 and 2^-149.
  CHECK(round_to(std::ldexp(3.0, -134), DType::bf16) == std::ldexp(1.0, -132));
  CHECK(same(round_to(std::ldexp(1.0, -134), DType::bf16), 0.0));
  CHECK(round_to(std::ldexp(5.0, -150), DType::fp32) == std::ldexp(2.0, -149));  // 2.5 * 2^-149: to 2
  // fp8_e4m3 subnormals: multiples of 2^-9.
  CHECK(round_to(std::ldexp(3.0, -10), DType::fp8_e4m3) == std::ldexp(2.0, -9));
  CHECK(same(round_to(std::ldexp(1.0, -10), DType::fp8_e4m3), 0.0));
}

TEST_CASE("round_to overflows to infinity, or NaN for fp8_e4m3", "[dtype]") {
  CHECK(round_to(65519.0, DType::fp16) == 65504.0);
  CHECK(round_to(65519.99, DType::fp16) == 65504.0);
  CHECK(round_to(65520.0, DType::fp16) == kInf);  // tie between 65504 and 2^16: even is 2^16, which overflows
  CHECK(round_to(-65520.0, DType::fp16) == -kInf);
  CHECK(round_to(1e300, DType::fp16) == kInf);

  const double bf16_max = std::ldexp(255.0, 120);  // (2 - 2^-7) 2^127
  const double bf16_tie = std::ldexp(511.0, 119);  // halfway to 2^128
  CHECK(round_to(std::nextafter(bf16_tie, 0.0), DType::bf16) == bf16_max);
  CHECK(round_to(bf16_tie, DType::bf16) == kInf);
  CHECK(round_to(-bf16_tie, DType::bf16) == -kInf);

  const double fp32_max = static_cast<double>(std::numeric_limits<float>::max());
  const double fp32_tie = std::ldexp(double((1 << 25) - 1), 103);  // (2 - 2^-24) 2^127
  CHECK(round_to(std::nextafter(fp32_tie, 0.0), DType::fp32) == fp32_max);
  CHECK(round_to(fp32_tie, DType::fp32) == kInf);
  CHECK(round_to(1e300, DType::fp32) == kInf);

  CHECK(round_to(448.0, DType::fp8_e4m3) == 448.0);
  CHECK(round_to(460.0, DType::fp8_e4m3) == 448.0);
  CHECK(round_to(464.0, DType::fp8_e4m3) == 448.0);  // tie between 448 (even) and 480 (the NaN pattern)
  CHECK(std::isnan(round_to(std::nextafter(464.0, kInf), DType::fp8_e4m3)));
  CHECK(std::isnan(round_to(500.0, DType::fp8_e4m3)));
  CHECK(std::isnan(round_to(-500.0, DType::fp8_e4m3)));
  CHECK(std::isnan(round_to(1e300, DType::fp8_e4m3)));
}

TEST_CASE("round_to passes NaN and infinities through", "[dtype]") {
  for (const DType dtype : kAllDTypes) {
    INFO(name(dtype));
    CHECK(std::isnan(round_to(kNaN, dtype)));
    CHECK(std::isnan(round_to(-kNaN, dtype)));
    if (format_of(dtype).has_infinity) {
      CHECK(round_to(kInf, dtype) == kInf);
      CHECK(round_to(-kInf, dtype) == -kInf);
    }
  }
}

TEST_CASE("round_to of an infinity to fp8_e4m3 gives NaN (the format has no infinity)", "[dtype]") {
  // dtype.hpp: "The result is a double exactly representable in `dtype`", and overflow gives NaN.
  CHECK(std::isnan(round_to(kInf, DType::fp8_e4m3)));
  CHECK(std::isnan(round_to(-kInf, DType::fp8_e4m3)));
}

TEST_CASE("round_to is symmetric in sign", "[dtype]") {
  std::mt19937_64 rng(7);
  for (const DType dtype : kAllDTypes) {
    INFO(name(dtype));
    std::int64_t asymmetric = 0;
    for (int n = 0; n < 20000; ++n) {
      const double x = std::abs(random_double(rng, -160, 140));
      if (!same(round_to(-x, dtype), -round_to(x, dtype))) ++asymmetric;
    }
    CHECK(asymmetric == 0);
  }
}

TEST_CASE("round_to fp32 agrees with the hardware conversion to float", "[dtype]") {
  std::mt19937_64 rng(11);
  std::int64_t mismatches = 0;
  auto check = [&](double x) {
    const double expected = static_cast<double>(static_cast<float>(x));
    if (!same(round_to(x, DType::fp32), expected) && ++mismatches <= 5) {
      UNSCOPED_INFO("x = " << std::hexfloat << x << " expected " << expected << " got " << round_to(x, DType::fp32));
    }
  };
  // Random doubles from far below the smallest subnormal (2^-149) to beyond the largest float (2^128).
  for (int n = 0; n < 200000; ++n) check(random_double(rng, -160, 130));
  // Exact ties between neighbouring floats, normal and subnormal, and either side of them.
  for (int n = 0; n < 200000; ++n) {
    const auto bits = static_cast<std::uint32_t>(rng() % 0x7f7fffffu);  // finite, below the largest
    const float f = std::bit_cast<float>(bits);
    const float g = std::nextafter(f, std::numeric_limits<float>::infinity());
    const double midpoint = 0.5 * (static_cast<double>(f) + static_cast<double>(g));
    for (const double x : {midpoint, -midpoint, std::nextafter(midpoint, 0.0), std::nextafter(midpoint, kInf)}) {
      check(x);
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("round_to fp16 agrees with a table of all fp16 values", "[dtype]") {
  check_against_reference(DType::fp16, fp16_reference(), -28, 17);
}

TEST_CASE("round_to bf16 agrees with a table of all bf16 values", "[dtype]") {
  check_against_reference(DType::bf16, bf16_reference(), -136, 128);
}

TEST_CASE("round_to fp8_e4m3 agrees with a table of all fp8_e4m3 values", "[dtype]") {
  check_against_reference(DType::fp8_e4m3, fp8_e4m3_reference(), -12, 9);
}

TEST_CASE("round_to fp64 is the identity", "[dtype]") {
  std::mt19937_64 rng(3);
  std::int64_t changed = 0;
  for (int n = 0; n < 20000; ++n) {
    const double x = random_double(rng, -1074, 1023);
    if (!same(round_to(x, DType::fp64), x)) ++changed;
  }
  CHECK(changed == 0);
}

}  // namespace flashlab
