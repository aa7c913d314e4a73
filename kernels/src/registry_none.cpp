// A build without CUDA has no GPU variants.
#include "flashlab/kernels/attention.hpp"

namespace flashlab::kernels {

const std::vector<Variant>& gpu_variants() {
  static const std::vector<Variant> none;
  return none;
}

}  // namespace flashlab::kernels
