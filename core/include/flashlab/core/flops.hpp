// The flops model (DESIGN.md §2), the one function every part uses.
//
// Convention of the FlashAttention benchmarks: forward = 2 (d + d_v) flops per kept (query, key) pair and
// head, i.e. 4 B H N_q N_k d when d_v = d; the causal mask (causal, or the window (-1, 0)) with N_q == N_k
// counts exactly half of N_q N_k, every other mask the exact number of kept pairs. Backward = 2.5 x forward (five matrix
// products instead of two), forward + backward = 3.5 x forward. Recomputation is not counted. Under key padding only
// the valid tokens count (half of v_b^2 per entry for the causal mask): a padded problem and its unpadded varlen form
// have the same flops, whatever a materializing variant computes and throws away.
#pragma once

#include <string_view>

#include "flashlab/core/problem.hpp"

namespace flashlab {

enum class Pass { fwd, bwd, fwdbwd };

[[nodiscard]] std::string_view name(Pass pass);
// Parses "fwd" | "bwd" | "fwdbwd"; throws std::invalid_argument naming the allowed set.
[[nodiscard]] Pass parse_pass(std::string_view text);

// Kept pairs under the benchmark convention (per head, summed over the batch).
[[nodiscard]] double convention_pairs(const Problem& problem);
[[nodiscard]] double attention_flops(const Problem& problem, Pass pass);

inline constexpr std::string_view kFlopsConvention =
    "FlashAttention benchmark convention: fwd = 2*(d+d_v)*H*pairs (4*B*H*N_q*N_k*d dense), causal with "
    "N_q == N_k counts N_q*N_k/2 pairs, other masks the exact kept pairs; bwd = 2.5*fwd; fwdbwd = 3.5*fwd";

}  // namespace flashlab
