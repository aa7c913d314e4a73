// The GPU variants of a CUDA build, in the order `flashlab list` shows them.
#include "flashlab/kernels/attention.hpp"
#include "flash2/flash2.hpp"
#include "flash3/flash3.hpp"
#include "standard/standard.hpp"

namespace flashlab::kernels {

const std::vector<Variant>& gpu_variants() {
  static const std::vector<Variant> variants = {standard_variant(), flash2_variant(), flash3_variant()};
  return variants;
}

}  // namespace flashlab::kernels
