// Storage formats of fp32 / fp16 / bf16 tensors: exact conversion between a double and the stored bits,
// the same on the host and in CUDA kernels. load() and store() of a value already rounded with round_to()
// are exact; store() of any other value rounds to nearest (ties to even) first.
#pragma once

#include <cstdint>
#include <cstring>

#include "flashlab/core/detmath.hpp"
#include "flashlab/core/dtype.hpp"
#include "flashlab/core/host_device.hpp"

namespace flashlab {

namespace storage_detail {
FL_HOST_DEVICE inline std::uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}
FL_HOST_DEVICE inline float bits_float(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}
}  // namespace storage_detail

// IEEE binary16 bits of x (rounded to fp16 first).
FL_HOST_DEVICE inline std::uint16_t fp16_bits(double x) {
  const double r = round_to(x, DType::fp16);
  if (r != r) return 0x7E00;
  const std::uint16_t sign = (r < 0 || (r == 0 && detmath::div(1.0, r) < 0)) ? 0x8000 : 0;
  const double a = r < 0 ? -r : r;
  if (a == 0) return sign;
  if (a > 65504.0) return sign | 0x7C00;
  const int e = detmath::exponent_of(a);
  if (e < -14) return sign | static_cast<std::uint16_t>(detmath::ldexp_exact(a, 24));  // subnormal: a / 2^-24
  const auto mantissa = static_cast<std::uint16_t>(detmath::ldexp_exact(a, 10 - e) - 1024.0);
  return sign | static_cast<std::uint16_t>((e + 15) << 10) | mantissa;
}

FL_HOST_DEVICE inline double fp16_value(std::uint16_t bits) {
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  const int exponent = (bits >> 10) & 0x1F;
  const int mantissa = bits & 0x3FF;
  if (exponent == 0x1F) return mantissa ? detmath::quiet_nan() : sign * detmath::infinity();
  if (exponent == 0) return sign * detmath::ldexp_exact(mantissa, -24);
  return sign * detmath::ldexp_exact(1024 + mantissa, exponent - 25);
}

// bfloat16 bits of x (rounded to bf16 first): the upper half of the float32 bits.
FL_HOST_DEVICE inline std::uint16_t bf16_bits(double x) {
  const double r = round_to(x, DType::bf16);
  if (r != r) return 0x7FC0;
  return static_cast<std::uint16_t>(storage_detail::float_bits(static_cast<float>(r)) >> 16);
}

FL_HOST_DEVICE inline double bf16_value(std::uint16_t bits) {
  return storage_detail::bits_float(static_cast<std::uint32_t>(bits) << 16);
}

// Element `index` of a buffer of `dtype` (fp64, fp32, fp16 or bf16 storage).
FL_HOST_DEVICE inline double load(const void* base, std::int64_t index, DType dtype) {
  switch (dtype) {
    case DType::fp64: return static_cast<const double*>(base)[index];
    case DType::fp32: return static_cast<const float*>(base)[index];
    case DType::fp16: return fp16_value(static_cast<const std::uint16_t*>(base)[index]);
    case DType::bf16: return bf16_value(static_cast<const std::uint16_t*>(base)[index]);
    case DType::fp8_e4m3: break;
  }
  return detmath::quiet_nan();
}

FL_HOST_DEVICE inline void store(void* base, std::int64_t index, DType dtype, double value) {
  switch (dtype) {
    case DType::fp64: static_cast<double*>(base)[index] = value; return;
    case DType::fp32: static_cast<float*>(base)[index] = static_cast<float>(round_to(value, DType::fp32)); return;
    case DType::fp16: static_cast<std::uint16_t*>(base)[index] = fp16_bits(value); return;
    case DType::bf16: static_cast<std::uint16_t*>(base)[index] = bf16_bits(value); return;
    case DType::fp8_e4m3: return;
  }
}

}  // namespace flashlab
