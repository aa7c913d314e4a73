#include "flashlab/core/generator.hpp"

#include <stdexcept>
#include <string>

#include "flashlab/core/parallel.hpp"

namespace flashlab {

std::string_view name(Distribution distribution) {
  switch (distribution) {
    case Distribution::normal: return "normal";
    case Distribution::uniform: return "uniform";
    case Distribution::outliers: return "outliers";
    case Distribution::peaked: return "peaked";
    case Distribution::flat: return "flat";
    case Distribution::ramp: return "ramp";
    case Distribution::ties: return "ties";
    case Distribution::large_logits: return "large_logits";
  }
  return "?";
}

Distribution parse_distribution(std::string_view text) {
  std::string allowed;
  for (Distribution d : kDistributions) {
    if (name(d) == text) return d;
    allowed += (allowed.empty() ? "" : ", ") + std::string(name(d));
  }
  throw std::invalid_argument("unknown distribution '" + std::string(text) + "': expected one of " + allowed);
}

template <class T, int Rank>
void fill(TensorView<T, Rank> out, TensorId tensor, const InputSpec& spec) {
  constexpr std::int64_t kChunk = 1 << 14;
  const std::int64_t n = out.numel();
  const Shape<Rank> logical = contiguous_strides<Rank>(out.shape());
  InputLayout layout{1, out.shape()[Rank - 1]};  // [.., tokens, dim]
  if (!spec.token_source.empty()) layout.token_source = spec.token_source.data();
  if constexpr (Rank == 4) layout.heads = out.shape()[2];  // [.., tokens, heads, dim]
  if (!spec.token_source.empty() && static_cast<std::int64_t>(spec.token_source.size()) * layout.heads * layout.dim != n) {
    throw std::invalid_argument("fill: token_source has " + std::to_string(spec.token_source.size()) +
                                " entries, the tensor " + std::to_string(n / (layout.heads * layout.dim)) + " tokens");
  }
  parallel_for((n + kChunk - 1) / kChunk, default_worker_count(), [&](std::int64_t chunk, int) {
    const std::int64_t end = std::min(n, (chunk + 1) * kChunk);
    for (std::int64_t linear = chunk * kChunk; linear < end; ++linear) {
      std::int64_t rest = linear, offset = 0;
      for (int dim = 0; dim < Rank; ++dim) {
        offset += (rest / logical[dim]) * out.stride(dim);
        rest %= logical[dim];
      }
      out.data()[offset] = static_cast<T>(input_value(spec.seed, static_cast<std::uint32_t>(tensor),
                                                      static_cast<std::uint64_t>(linear), spec.distribution,
                                                      spec.dtype, layout));
    }
  });
}

template void fill<double, 4>(TensorView<double, 4>, TensorId, const InputSpec&);
template void fill<float, 4>(TensorView<float, 4>, TensorId, const InputSpec&);
template void fill<double, 3>(TensorView<double, 3>, TensorId, const InputSpec&);
template void fill<float, 3>(TensorView<float, 3>, TensorId, const InputSpec&);

}  // namespace flashlab
