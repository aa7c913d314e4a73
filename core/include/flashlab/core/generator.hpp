// Counter-based, seeded input generator: element i of tensor t for seed s has one value wherever it is
// computed (host or CUDA kernel), because it is a pure function of (s, t, i, distribution, layout) built from
// Philox4x32-10 (Salmon et al., SC'11) and the deterministic functions of detmath.hpp.
//
// The attention inputs are contiguous [.., tokens, heads, dim] (BSHD [B, N, H, d]; varlen [1, total, H, d]).
// The iid distributions ignore where an element sits; the structured ones read its coordinates from the
// linear index through an InputLayout: channel = i % dim, head = (i / dim) % heads, token = i / (dim heads),
// the packed token (slot * N + n for a dense batch, the packed position for varlen). The unpadded (varlen) tensors
// of a key-padding problem draw each token as its token in the padded tensors (InputLayout::token_source), so the
// padded and the unpadded runs of one row see the same values.
//
// Distributions (before rounding to the run's dtype). Below, "normal" is the element's own N(0, 1) draw (the
// value `normal` gives it); in the structured distributions (peaked to large_logits) V and dO are that draw,
// and so are Q and K unless stated.
//   normal        N(0, 1)                        (Box-Muller)
//   uniform       U[-1, 1)
//   outliers      N(0, 1) + N(0, 100) * Bernoulli(0.001), i.e. a standard normal plus, with probability 1/1000,
//                 a normal of variance 100 (standard deviation 10): the test input of the FlashAttention-3
//                 paper (Shah et al., 2024, §4.3).
//   peaked        one score per query row far above the rest, so P is nearly one-hot and the row sum l_i is
//                 carried by a single term (the regime where a bad rescale or an off-by-one in the key index
//                 shows at once). A code w(token, channel) = +-1, a Philox sign keyed by seed and token only
//                 (the same for every head and for Q and K), enters both: q = 0.5 normal + 1.5 w,
//                 k = 0.5 normal + 1.5 w. Query token t and key token t share the code, so with the scale
//                 1/sqrt(d) their score is about 2.25 sqrt(d) (18 at d = 64, standard deviation ~1.1), while
//                 any other pair scores N(0, 6.25) (each product has variance (0.25 + 2.25)^2). The peak
//                 is at the key of the same packed position: each row's own position when N_q = N_k (the
//                 diagonal, visible under every causal or window mask); with N_q != N_k or different varlen
//                 offsets a row whose position holds another sequence's key sees only the background.
//   flat          near-uniform softmax rows: q = 1e-3 normal, so every score is ~1e-3 and P ~ 1/N_k. O is
//                 then a mean of N_k values of V, and l_i a sum of N_k nearly equal terms: the test of
//                 accumulation error growing with N.
//   ramp          a running maximum that moves on every key tile: q channel 0 = 1 exactly,
//                 k channel 0 = 0.5 (token mod 8192), the other channels normal. Scores rise along the keys by
//                 0.5/sqrt(d) per key (8 natural-log units per 128 keys at d = 64), so m_i grows on every tile
//                 and each tile rescales the accumulator by a factor far from 1 (a skipped or stale rescale
//                 gives a wrong O). The noise of the other channels has standard deviation ~1: at d = 64 the
//                 running max grows on every 128-key tile (smallest rise measured: 3.5) and stalls on ~4 in
//                 10^6 64-key tiles (rise 4); the rise per tile falls as 1/sqrt(d). The period 8192 keeps
//                 k's channel 0 below 4096, inside fp16's range; rounded to fp16 or bf16 (11 and 8
//                 significant bits) it rises in steps once past 2^10 or 2^7, never falling within a period.
//   ties          many scores tied exactly at the row maximum: q = |normal| (non-negative); k = 1 exactly on
//                 every channel of an even (packed) token, normal on an odd one. Every even key scores exactly
//                 sum|q|/sqrt(d) (~0.8 sqrt(d)), above the odd keys' ~N(0, 1) (variance sum q^2 / d): half
//                 the row shares the maximum, so exp(s - m_i) is exactly 1 for N_k/2 keys at once and a max
//                 reduction that is not exact, or that treats the first or last maximum specially, shows.
//   large_logits  logits of scale ~1e3: q = 32 normal, k = 32 normal, so with the scale 1/sqrt(d) the scores
//                 are ~N(0, 1024^2). exp overflows unless the row max is subtracted first, P is nearly
//                 one-hot, and the LSE is the max plus a tiny correction, so an fp32 LSE keeps only its
//                 leading digits: the test of the max subtraction and of the LSE's rounding.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

#include "flashlab/core/detmath.hpp"
#include "flashlab/core/dtype.hpp"
#include "flashlab/core/host_device.hpp"
#include "flashlab/core/philox.hpp"
#include "flashlab/core/tensor.hpp"

namespace flashlab {

enum class Distribution : std::uint8_t { normal, uniform, outliers, peaked, flat, ramp, ties, large_logits };

// Every distribution, in declaration order: the one list that parsing, the suites and the tests iterate.
inline constexpr std::array<Distribution, 8> kDistributions = {
    Distribution::normal, Distribution::uniform, Distribution::outliers, Distribution::peaked,
    Distribution::flat,   Distribution::ramp,    Distribution::ties,     Distribution::large_logits};

[[nodiscard]] std::string_view name(Distribution distribution);
// Parses any name(d) of kDistributions; throws std::invalid_argument naming the allowed set.
[[nodiscard]] Distribution parse_distribution(std::string_view text);

// How a linear index of a contiguous [.., tokens, heads, dim] input tensor decodes into coordinates.
struct InputLayout {
  std::int64_t heads = 1;
  std::int64_t dim = 1;
  // Unpadded inputs (a key-padding problem run as its varlen form, Problem::unpadded): token t is drawn as token
  // token_source[t] of the padded tensor (Problem::padded_tokens), so both forms hold the same values bit for bit.
  // Null: every token is itself. A host pointer on the host, a device pointer in a kernel.
  const std::int64_t* token_source = nullptr;
};
// channel = index % dim, head = (index / dim) % heads, token = index / (dim * heads): the packed token, i.e.
// slot * N + n for a dense batch and the packed position for varlen.
struct InputCoordinates {
  std::uint64_t token;
  std::uint64_t head;
  std::uint64_t channel;
};
FL_HOST_DEVICE inline InputCoordinates coordinates_of(std::uint64_t index, InputLayout layout) {
  const auto dim = static_cast<std::uint64_t>(layout.dim);
  const auto heads = static_cast<std::uint64_t>(layout.heads);
  return {index / (dim * heads), (index / dim) % heads, index % dim};
}

// The index an element is drawn as: itself, or under a token remap the same (head, channel) of its source token.
FL_HOST_DEVICE inline std::uint64_t source_index(std::uint64_t index, InputLayout layout) {
  if (layout.token_source == nullptr) return index;
  const InputCoordinates at = coordinates_of(index, layout);
  const auto source = static_cast<std::uint64_t>(layout.token_source[at.token]);
  return (source * static_cast<std::uint64_t>(layout.heads) + at.head) * static_cast<std::uint64_t>(layout.dim) +
         at.channel;
}

// Stream ids of the attention inputs, so Q, K, V and dO of one seed are independent.
enum class TensorId : std::uint32_t { q = 1, k = 2, v = 3, d_out = 4 };

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

// peaked: q, k = kPeakNoise normal + kPeakAmplitude w. The shared part gives the matching pair a score of
// kPeakAmplitude^2 sqrt(d), the noise keeps every element random and every row distinct.
inline constexpr double kPeakNoise = 0.5;
inline constexpr double kPeakAmplitude = 1.5;
// Stream word of the peak code: no TensorId, so the code is independent of every tensor's own draws.
inline constexpr std::uint32_t kPeakCodeStream = 0x636f6465u;  // "code"
// flat: the query scale that makes every score ~1e-3.
inline constexpr double kFlatQueryScale = 1e-3;
// ramp: k channel 0 = kRampStep (token mod kRampPeriod); q channel 0 = kRampQuery.
inline constexpr double kRampStep = 0.5;
inline constexpr std::uint64_t kRampPeriod = 8192;
inline constexpr double kRampQuery = 1.0;
// ties: the value of every channel of an even key token.
inline constexpr double kTiedKey = 1.0;
// large_logits: q and k scale; scores ~ N(0, kLargeLogitScale^4) with the scale 1/sqrt(d).
inline constexpr double kLargeLogitScale = 32.0;

namespace detail {
// The peak code w(token, channel) = +-1: one Philox draw per (token, channel) on its own stream, keyed by the
// seed alone, so Q and K (and every head) see the same code.
FL_HOST_DEVICE inline double peak_code(std::uint64_t seed, const InputCoordinates& at) {
  const Philox4x32 r = draw(seed, kPeakCodeStream, at.token, static_cast<std::uint32_t>(at.channel));
  return (r.x[0] & 1u) != 0 ? 1.0 : -1.0;
}
// |x|, exact (a sign flip) on host and device alike.
FL_HOST_DEVICE inline double magnitude(double x) { return x < 0 ? -x : x; }
}  // namespace detail

// The exact (unrounded) sample for element `index` of tensor `tensor` under `seed`; `layout` says how `index`
// decodes into (token, head, channel) for the structured distributions (the iid ones ignore it) and, with a token
// remap, which element it is drawn as (source_index).
FL_HOST_DEVICE inline double sample(std::uint64_t seed, std::uint32_t tensor, std::uint64_t element,
                                    Distribution distribution, InputLayout layout) {
  const std::uint64_t index = source_index(element, layout);
  const Philox4x32 r0 = detail::draw(seed, tensor, index, 0);
  if (distribution == Distribution::uniform) {
    return detmath::add(detmath::mul(2.0, detail::unit_interval(r0.x[0], r0.x[1])), -1.0);
  }
  const double normal = detail::normal_pair(r0).cos;
  const bool is_q = tensor == static_cast<std::uint32_t>(TensorId::q);
  const bool is_k = tensor == static_cast<std::uint32_t>(TensorId::k);
  switch (distribution) {
    case Distribution::outliers: {
      const Philox4x32 r1 = detail::draw(seed, tensor, index, 1);
      if (detail::unit_interval(r1.x[0], r1.x[1]) >= kOutlierProbability) return normal;
      const Philox4x32 r2 = detail::draw(seed, tensor, index, 2);
      return detmath::add(normal, detmath::mul(kOutlierStddev, detail::normal_pair(r2).cos));
    }
    case Distribution::peaked: {
      if (!is_q && !is_k) return normal;
      const double code = detail::peak_code(seed, coordinates_of(index, layout));
      return detmath::add(detmath::mul(kPeakNoise, normal), detmath::mul(kPeakAmplitude, code));
    }
    case Distribution::flat: return is_q ? detmath::mul(kFlatQueryScale, normal) : normal;
    case Distribution::ramp: {
      const InputCoordinates at = coordinates_of(index, layout);
      if (at.channel != 0 || (!is_q && !is_k)) return normal;
      return is_q ? kRampQuery : detmath::mul(kRampStep, static_cast<double>(at.token % kRampPeriod));
    }
    case Distribution::ties: {
      if (is_q) return detail::magnitude(normal);
      if (is_k && coordinates_of(index, layout).token % 2 == 0) return kTiedKey;
      return normal;
    }
    case Distribution::large_logits: return is_q || is_k ? detmath::mul(kLargeLogitScale, normal) : normal;
    case Distribution::normal:
    case Distribution::uniform: break;
  }
  return normal;
}

// The input value as a kernel running in `dtype` sees it: the sample rounded to `dtype`.
FL_HOST_DEVICE inline double input_value(std::uint64_t seed, std::uint32_t tensor, std::uint64_t index,
                                         Distribution distribution, DType dtype, InputLayout layout) {
  return round_to(sample(seed, tensor, index, distribution, layout), dtype);
}

struct InputSpec {
  std::uint64_t seed = 0;
  Distribution distribution = Distribution::normal;
  DType dtype = DType::fp64;  // values are rounded to this type
  // Unpadded inputs: each token's source token (InputLayout::token_source, Problem::padded_tokens); empty: none.
  std::vector<std::int64_t> token_source{};
};

// Fills `out` element by element; element (i0, i1, ...) gets the sample of its row-major linear index in
// the view's shape (independent of the view's strides), with the layout of the shape's last two dimensions:
// Rank 4 reads [.., tokens, heads, dim] (heads = shape[2], dim = shape[3]), any other rank
// [tokens, dim] (heads = 1, dim = the last dimension); with spec.token_source (one entry per token) each token is
// drawn as its source token. Runs on all cores.
template <class T, int Rank>
void fill(TensorView<T, Rank> out, TensorId tensor, const InputSpec& spec);

}  // namespace flashlab
