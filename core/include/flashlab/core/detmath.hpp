// Deterministic elementary functions: the same bits on the host and in CUDA kernels.
//
// The library log/cos differ between glibc and CUDA's libdevice in the last bit, which would make an
// input generated on the GPU differ from the same input generated on the CPU. These versions use only
// IEEE-754 basic operations (+ - * / sqrt, correctly rounded everywhere), exact scalings by powers of two
// and a fixed evaluation order, so the result is a pure function of the input. On the device, additions
// and multiplications go through the _rn intrinsics, which nvcc never fuses into FMAs; host code is built
// with -ffp-contract=off for the same reason. Accuracy: a few ulp, plenty for random inputs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "flashlab/core/host_device.hpp"

namespace flashlab::detmath {

FL_HOST_DEVICE inline double add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
FL_HOST_DEVICE inline double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
FL_HOST_DEVICE inline double div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
FL_HOST_DEVICE inline double sqrt_rn(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
FL_HOST_DEVICE inline double rint_even(double a) {  // round half to even (the default rounding mode)
#if defined(__CUDA_ARCH__)
  return ::rint(a);
#else
  return std::nearbyint(a);
#endif
}
// The IEEE-754 bits of a double and back.
FL_HOST_DEVICE inline std::uint64_t bits_of(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<std::uint64_t>(__double_as_longlong(x));
#else
  std::uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
FL_HOST_DEVICE inline double from_bits(std::uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}
inline constexpr int kExponentShift = 52;
inline constexpr std::uint64_t kExponentMask = 0x7FFull << kExponentShift;
// The biased exponent field: 0 for zeros and subnormals, 0x7FF for infinities and NaN.
FL_HOST_DEVICE inline int biased_exponent(std::uint64_t bits) {
  return static_cast<int>((bits & kExponentMask) >> kExponentShift);
}

// a * 2^e, exact whenever the result is a normal double. Normal in, normal out is a change of the exponent
// field; everything else (zeros, subnormals, overflow, inf, NaN) goes to the library's ldexp.
FL_HOST_DEVICE inline double ldexp_exact(double a, int e) {
  const std::uint64_t bits = bits_of(a);
  const int biased = biased_exponent(bits);
  if (biased != 0 && biased != 0x7FF && e > -0x7FF && e < 0x7FF) {
    const int scaled = biased + e;
    if (scaled > 0 && scaled < 0x7FF) {
      return from_bits((bits & ~kExponentMask) | (static_cast<std::uint64_t>(scaled) << kExponentShift));
    }
  }
#if defined(__CUDA_ARCH__)
  return ::ldexp(a, e);
#else
  return std::ldexp(a, e);
#endif
}
// For finite nonzero x: the e with 2^e <= |x| < 2^(e+1) (read from the exponent field; frexp for subnormals).
FL_HOST_DEVICE inline int exponent_of(double x) {
  const int biased = biased_exponent(bits_of(x));
  if (biased != 0) return biased - 1023;
  int e = 0;
#if defined(__CUDA_ARCH__)
  ::frexp(x, &e);
#else
  std::frexp(x, &e);
#endif
  return e - 1;
}
FL_HOST_DEVICE inline double infinity() { return std::numeric_limits<double>::infinity(); }
FL_HOST_DEVICE inline double quiet_nan() { return std::numeric_limits<double>::quiet_NaN(); }

inline constexpr double kLn2Hi = 6.93147180369123816490e-01;  // ln 2 split so that e*kLn2Hi is exact
inline constexpr double kLn2Lo = 1.90821492927058770002e-10;
inline constexpr double kSqrtHalf = 0.70710678118654752440;
inline constexpr double kHalfPi = 1.57079632679489661923;

// Natural log of a positive finite x. With x = m 2^e, m in [sqrt(1/2), sqrt(2)):
// log m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m-1)/(m+1), |s| <= 0.172; 11 terms leave
// a truncation below 1e-18.
FL_HOST_DEVICE inline double log(double x) {
  int e = exponent_of(x) + 1;
  double m = ldexp_exact(x, -e);  // [0.5, 1)
  if (m < kSqrtHalf) {
    m = ldexp_exact(m, 1);
    e -= 1;
  }
  const double s = div(add(m, -1.0), add(m, 1.0));
  const double z = mul(s, s);
  double poly = 1.0 / 21.0;
  for (int k = 9; k >= 0; --k) poly = add(mul(poly, z), 1.0 / (2 * k + 1));
  const double log_m = mul(mul(2.0, s), poly);
  return add(mul(e, kLn2Hi), add(mul(e, kLn2Lo), log_m));
}

// cos(2 pi u) and sin(2 pi u) for u in [0, 1). 4u = k + r exactly with |r| <= 1/2, so the angle left
// after removing k quarter turns is a = r pi/2, |a| <= pi/4, where Taylor series to degree 20 are exact
// to below 1e-20.
struct SinCos {
  double sin;
  double cos;
};
FL_HOST_DEVICE inline SinCos sincos_turns(double u) {
  const double t = mul(4.0, u);
  const double k = rint_even(t);
  const double a = mul(add(t, -k), kHalfPi);
  const double a2 = mul(a, a);
  double c = 1.0;  // cos a = sum (-1)^n a^2n / (2n)!, Horner from n = 10
  double s = 1.0;  // sin a / a = sum (-1)^n a^2n / (2n+1)!
  for (int n = 10; n >= 1; --n) {
    c = add(1.0, -mul(c, div(a2, (2.0 * n - 1) * (2.0 * n))));
    s = add(1.0, -mul(s, div(a2, (2.0 * n) * (2.0 * n + 1))));
  }
  s = mul(s, a);
  switch (static_cast<int>(k) & 3) {
    case 0: return {s, c};
    case 1: return {c, -s};
    case 2: return {-s, -c};
    default: return {-c, s};
  }
}

}  // namespace flashlab::detmath
