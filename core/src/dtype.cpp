#include "flashlab/core/dtype.hpp"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#if defined(__x86_64__) && defined(__AVX2__) && defined(__GNUC__)
// Built for x86-64-v3 (FLASHLAB_HOST_ARCH): before any other code runs, refuse a CPU without AVX2 and FMA with a
// one-line error instead of an illegal instruction. Compiled for the baseline so that it runs anywhere.
__attribute__((constructor(101), target("arch=x86-64"))) static void flashlab_require_host_arch() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::fputs("flashlab: built for x86-64-v3 CPUs (AVX2, FMA) and this CPU lacks them; rebuild with "
               "-DFLASHLAB_HOST_ARCH= (the compiler's default instruction set)\n",
               stderr);
    std::_Exit(2);
  }
}
#endif

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
