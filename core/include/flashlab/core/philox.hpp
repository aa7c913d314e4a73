// Philox4x32-10 (Salmon et al., SC'11), the counter-based generator under the input generator (generator.hpp) and
// the dropout mask (dropout.hpp), on the host and the device alike.
#pragma once

#include <cstdint>

#include "flashlab/core/host_device.hpp"

namespace flashlab {

struct Philox4x32 {
  std::uint32_t x[4];
};

// Philox4x32 with 10 rounds (the Random123 constants).
FL_HOST_DEVICE inline Philox4x32 philox4x32_10(Philox4x32 ctr, std::uint32_t key0, std::uint32_t key1) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(kMul0) * ctr.x[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(kMul1) * ctr.x[2];
    const auto hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const auto hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    ctr = {{hi1 ^ ctr.x[1] ^ key0, lo1, hi0 ^ ctr.x[3] ^ key1, lo0}};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return ctr;
}

}  // namespace flashlab
