#include "flashlab/core/dtype.hpp"

#include <stdexcept>

namespace flashlab {

std::string_view name(DType dtype) {
  switch (dtype) {
    case DType::fp64: return "fp64";
    case DType::fp32: return "fp32";
    case DType::fp16: return "fp16";
    case DType::bf16: return "bf16";
    case DType::fp8_e4m3: return "fp8_e4m3";
  }
  return "?";
}

DType parse_dtype(std::string_view text) {
  for (DType dtype : kAllDTypes) {
    if (name(dtype) == text) return dtype;
  }
  throw std::invalid_argument("unknown dtype '" + std::string(text) +
                              "': expected one of fp64, fp32, fp16, bf16, fp8_e4m3");
}

int size_bytes(DType dtype) {
  switch (dtype) {
    case DType::fp64: return 8;
    case DType::fp32: return 4;
    case DType::fp16:
    case DType::bf16: return 2;
    case DType::fp8_e4m3: return 1;
  }
  return 0;
}

double unit_roundoff(DType dtype) { return detmath::ldexp_exact(1.0, -format_of(dtype).precision); }

}  // namespace flashlab
