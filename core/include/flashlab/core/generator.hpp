// Counter-based, seeded input generator: element i of tensor t for seed s has one value wherever it is
// computed (host now, CUDA kernels later), because it is a pure function of (s, t, i) built from
// Philox4x32-10 (Salmon et al., SC'11) and the deterministic functions of detmath.hpp.
//
// Distributions (before rounding to the run's dtype):
//   normal    N(0, 1)                        (Box-Muller)
//   uniform   U[-1, 1)
//   outliers  N(0, 1) + N(0, 100) * Bernoulli(0.001), i.e. a standard normal plus, with probability 1/1000,
//             a normal of variance 100 (standard deviation 10): the test input of the FlashAttention-3
//             paper (Shah et al., 2024, §4.3).
#pragma once

#include <cstdint>
#include <string_view>

#include "flashlab/core/detmath.hpp"
#include "flashlab/core/dtype.hpp"
#include "flashlab/core/host_device.hpp"
#include "flashlab/core/tensor.hpp"

namespace flashlab {

enum class Distribution : std::uint8_t { normal, uniform, outliers };

[[nodiscard]] std::string_view name(Distribution distribution);
// Parses "normal" | "uniform" | "outliers"; throws std::invalid_argument naming the allowed set.
[[nodiscard]] Distribution parse_distribution(std::string_view text);

// Stream ids of the attention inputs, so Q, K, V and dO of one seed are independent.
enum class TensorId : std::uint32_t { q = 1, k = 2, v = 3, d_out = 4 };

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

namespace detail {
inline constexpr double kTwoPow53Inv = 1.0 / 9007199254740992.0;  // 2^-53
// 53 random bits from two words, as a double in [0, 1).
FL_HOST_DEVICE inline double unit_interval(std::uint32_t hi, std::uint32_t lo) {
  const std::uint64_t bits = (static_cast<std::uint64_t>(hi) << 21) ^ (lo >> 11);
  return static_cast<double>(bits) * kTwoPow53Inv;
}
FL_HOST_DEVICE inline Philox4x32 draw(std::uint64_t seed, std::uint32_t tensor, std::uint64_t index,
                                      std::uint32_t lane) {
  return philox4x32_10({{static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32), tensor,
                         lane}},
                       static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
}
// Two independent N(0,1) values (Box-Muller on u1 in (0, 1], u2 in [0, 1)).
FL_HOST_DEVICE inline detmath::SinCos normal_pair(const Philox4x32& r) {
  const double u1 = 1.0 - unit_interval(r.x[0], r.x[1]);
  const double u2 = unit_interval(r.x[2], r.x[3]);
  const double radius = detmath::sqrt_rn(detmath::mul(-2.0, detmath::log(u1)));
  const detmath::SinCos sc = detmath::sincos_turns(u2);
  return {detmath::mul(radius, sc.sin), detmath::mul(radius, sc.cos)};
}
}  // namespace detail

inline constexpr double kOutlierProbability = 0.001;
inline constexpr double kOutlierStddev = 10.0;  // N(0, 100): variance 100

// The exact (unrounded) sample for element `index` of tensor `tensor` under `seed`.
FL_HOST_DEVICE inline double sample(std::uint64_t seed, std::uint32_t tensor, std::uint64_t index,
                                    Distribution distribution) {
  const Philox4x32 r0 = detail::draw(seed, tensor, index, 0);
  switch (distribution) {
    case Distribution::uniform:
      return detmath::add(detmath::mul(2.0, detail::unit_interval(r0.x[0], r0.x[1])), -1.0);
    case Distribution::outliers: {
      const double base = detail::normal_pair(r0).cos;
      const Philox4x32 r1 = detail::draw(seed, tensor, index, 1);
      if (detail::unit_interval(r1.x[0], r1.x[1]) >= kOutlierProbability) return base;
      const Philox4x32 r2 = detail::draw(seed, tensor, index, 2);
      return detmath::add(base, detmath::mul(kOutlierStddev, detail::normal_pair(r2).cos));
    }
    case Distribution::normal: break;
  }
  return detail::normal_pair(r0).cos;
}

// The input value as a kernel running in `dtype` sees it: the sample rounded to `dtype`.
FL_HOST_DEVICE inline double input_value(std::uint64_t seed, std::uint32_t tensor, std::uint64_t index,
                                         Distribution distribution, DType dtype) {
  return round_to(sample(seed, tensor, index, distribution), dtype);
}

struct InputSpec {
  std::uint64_t seed = 0;
  Distribution distribution = Distribution::normal;
  DType dtype = DType::fp64;  // values are rounded to this type
};

// Fills `out` element by element; element (i0, i1, ...) gets the sample of its row-major linear index in
// the view's shape (independent of the view's strides). Runs on all cores.
template <class T, int Rank>
void fill(TensorView<T, Rank> out, TensorId tensor, const InputSpec& spec);

}  // namespace flashlab
