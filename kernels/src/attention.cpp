#include "flashlab/kernels/attention.hpp"

#include <stdexcept>
#include <string>

namespace flashlab::kernels {

Strides contiguous_bshd(std::int64_t tokens, std::int64_t heads, std::int64_t dim) {
  return {tokens * heads * dim, heads * dim, dim};
}

VariantOption switch_option(std::string name, std::string meaning, bool LaunchOptions::*field) {
  std::string option = name;
  return {std::move(name), std::move(meaning), [option, field](std::string_view value, LaunchOptions& options) {
            if (value != "0" && value != "1") return option + " must be 0 or 1, found '" + std::string(value) + "'";
            options.*field = value == "1";
            return std::string();
          }};
}

VariantOption size_option(std::string name, std::string meaning, int LaunchOptions::*field) {
  std::string option = name;
  return {std::move(name), std::move(meaning), [option, field](std::string_view value, LaunchOptions& options) {
            const bool digits =
                !value.empty() && value.size() <= 4 && value.find_first_not_of("0123456789") == std::string_view::npos;
            if (!digits || std::stoi(std::string(value)) == 0) {
              return option + " must be a positive integer below 10000 (a tile size), found '" + std::string(value) + "'";
            }
            options.*field = std::stoi(std::string(value));
            return std::string();
          }};
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
