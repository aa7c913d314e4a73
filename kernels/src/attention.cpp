#include "flashlab/kernels/attention.hpp"

#include <stdexcept>
#include <string>

namespace flashlab::kernels {

Strides contiguous_bshd(std::int64_t tokens, std::int64_t heads, std::int64_t dim) {
  return {tokens * heads * dim, heads * dim, dim};
}

std::string_view name(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

std::string_view name(Fault fault) { return fault == Fault::row_sum_in_dtype ? "row_sum_in_dtype" : "none"; }

Fault parse_fault(std::string_view text) {
  if (text.empty() || text == name(Fault::none)) return Fault::none;
  if (text == name(Fault::row_sum_in_dtype)) return Fault::row_sum_in_dtype;
  throw std::invalid_argument("'" + std::string(text) + "' is not a known fault (test-only; allowed: " +
                              std::string(name(Fault::row_sum_in_dtype)) + ", or empty for none)");
}

}  // namespace flashlab::kernels
