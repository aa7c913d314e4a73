// One workspace allocation carved into parts (internal header of kernels/): each part starts kPartAlignment-byte
// aligned when the plan rounds every part's size up with round_up, in the order the plan lists them.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "flashlab/core/allocator.hpp"

namespace flashlab::kernels::detail {

constexpr std::int64_t kPartAlignment = 256;

constexpr std::int64_t round_up(std::int64_t x, std::int64_t multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

class Carver {
 public:
  Carver(const Workspace& workspace, const char* variant) : next_(workspace.as<char>()) {
    if (reinterpret_cast<std::uintptr_t>(next_) % kPartAlignment != 0) {
      throw std::invalid_argument(std::string(variant) + ": the workspace allocator returned memory not aligned to " +
                                  std::to_string(kPartAlignment) + " bytes");
    }
  }
  // The next `bytes` of the allocation; a zero-size part is a pointer nobody may dereference.
  char* take(std::int64_t bytes) {
    char* part = next_;
    next_ += bytes;
    return part;
  }

 private:
  char* next_;
};

}  // namespace flashlab::kernels::detail
