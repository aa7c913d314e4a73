// The `flash2` GPU variant: FlashAttention-2 on tensor cores (mma.sync m16n8k16, ldmatrix, cp.async), fp16 and
// bf16. flash2_fwd.cu holds the forward kernel, the support rules and the registry entry; flash2_bwd.cu the
// backward (preprocessing, main and epilogue kernels) and its workspace model.
#pragma once

#include <cstdint>
#include <vector>

#include "flashlab/kernels/attention.hpp"

namespace flashlab::kernels {

// The registry entry of the flash2 variant.
[[nodiscard]] Variant flash2_variant();

namespace flash2 {

// Whether flash2 runs (problem, dtype, pass): the same rules for fwd, bwd and fwdbwd.
[[nodiscard]] Support supports(const Problem& p, DType dtype, Pass pass);

// Keys per CTA of the backward at head dim d (its key blocks: Q, dO, LSE, D are read once per key block).
[[nodiscard]] int backward_block_n(std::int64_t head_dim);

// Bytes the backward allocates from the workspace for (problem, dtype): exactly what backward() allocates.
[[nodiscard]] std::int64_t backward_workspace_bytes(const Problem& p, DType dtype);

// The backward launcher (Q, K, V, O, LSE, dO given; dQ, dK, dV written).
void backward(const AttentionParams& params, const LaunchContext& ctx);

// The backward's kernels (main kernel per head dim and tile, preprocessing, dQ conversion, GQA sums) on the
// current device; the forward's are listed with them by the variant's `kernels`.
[[nodiscard]] std::vector<KernelInfo> backward_kernels();

}  // namespace flash2
}  // namespace flashlab::kernels
