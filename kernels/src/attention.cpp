#include "flashlab/kernels/attention.hpp"

namespace flashlab::kernels {

Strides contiguous_bshd(std::int64_t tokens, std::int64_t heads, std::int64_t dim) {
  return {tokens * heads * dim, heads * dim, dim};
}

std::string_view name(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

}  // namespace flashlab::kernels
