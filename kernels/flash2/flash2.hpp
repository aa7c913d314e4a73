// The `flash2` GPU variant: FlashAttention-2 on tensor cores (mma.sync m16n8k16, ldmatrix, cp.async), fp16 and
// bf16. flash2_fwd.cu holds the forward kernel and the registry entry; the backward is not written yet.
#pragma once

#include "flashlab/kernels/attention.hpp"

namespace flashlab::kernels {

// The registry entry of the flash2 variant.
[[nodiscard]] Variant flash2_variant();

}  // namespace flashlab::kernels
