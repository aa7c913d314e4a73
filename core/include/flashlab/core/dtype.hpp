// Element types of a run and exact rounding of doubles to them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "flashlab/core/detmath.hpp"
#include "flashlab/core/host_device.hpp"

namespace flashlab {

// fp64 is for the reference only; fp8_e4m3 is reserved for later kernels.
enum class DType : std::uint8_t { fp64, fp32, fp16, bf16, fp8_e4m3 };

inline constexpr DType kAllDTypes[] = {DType::fp64, DType::fp32, DType::fp16, DType::bf16,
                                       DType::fp8_e4m3};

[[nodiscard]] std::string_view name(DType dtype);
// Parses "fp64" | "fp32" | "fp16" | "bf16" | "fp8_e4m3"; throws std::invalid_argument naming the allowed set.
[[nodiscard]] DType parse_dtype(std::string_view text);
[[nodiscard]] int size_bytes(DType dtype);

// A binary floating-point format: `precision` significand bits (with the implicit one), the smallest
// normal exponent and the largest finite value. Values are x = m * 2^e with 1 <= m < 2.
struct FloatFormat {
  int precision;
  int min_normal_exponent;
  double max_finite;
  bool has_infinity;  // fp8_e4m3 has none: overflow gives NaN
};

FL_HOST_DEVICE constexpr FloatFormat format_of(DType dtype) {
  switch (dtype) {
    case DType::fp32: return {24, -126, 3.4028234663852886e38, true};
    case DType::fp16: return {11, -14, 65504.0, true};
    case DType::bf16: return {8, -126, 3.3895313892515355e38, true};
    case DType::fp8_e4m3: return {4, -6, 448.0, false};
    case DType::fp64: break;
  }
  return {53, -1022, 1.7976931348623157e308, true};
}

// Unit roundoff u = 2^-precision (round to nearest): 2^-24 fp32, 2^-11 fp16, 2^-8 bf16.
[[nodiscard]] double unit_roundoff(DType dtype);

// Rounds x to the nearest value of `dtype` (ties to even), with gradual underflow and IEEE overflow
// (to +-inf, or NaN for fp8_e4m3). The result is a double exactly representable in `dtype`.
// Uses only exact operations (integer rounding of the significand bits, or scaling by powers of two and one
// rint), so host and device agree bitwise.
FL_HOST_DEVICE inline double round_to(double x, DType dtype) {
  if (dtype == DType::fp64 || !(x == x) || x == 0.0) return x;  // fp64, NaN, +-0
  const FloatFormat f = format_of(dtype);
  if (x - x != 0.0) return f.has_infinity ? x : detmath::quiet_nan();  // +-inf
  double r;
  const std::uint64_t bits = detmath::bits_of(x);
  const int biased = detmath::biased_exponent(bits);
  if (biased != 0 && biased - 1023 >= f.min_normal_exponent) {
    // |x| in the format's normal range: round the 52 stored significand bits to precision - 1, ties to even.
    // A carry out of the significand moves into the exponent field, which is the next power of two.
    const int drop = detmath::kExponentShift - (f.precision - 1);
    const std::uint64_t low = (std::uint64_t{1} << drop) - 1;
    const std::uint64_t kept_lsb = (bits >> drop) & 1u;
    r = detmath::from_bits((bits + (low >> 1) + kept_lsb) & ~low);
  } else {
    // subnormal in the format (or in double): round at the format's smallest spacing
    const int shift = f.precision - 1 - f.min_normal_exponent;  // x * 2^shift has its last kept bit at 2^0
    r = detmath::ldexp_exact(detmath::rint_even(detmath::ldexp_exact(x, shift)), -shift);
  }
  const double magnitude = r < 0 ? -r : r;
  if (magnitude > f.max_finite) {
    if (!f.has_infinity) return detmath::quiet_nan();
    return r < 0 ? -detmath::infinity() : detmath::infinity();
  }
  return r;
}

}  // namespace flashlab
