// The `flash3` GPU variant: a Hopper (sm_90a) FlashAttention forward on wgmma and TMA with warp specialization, fp16
// and bf16. flash3.cpp holds the registry entry (support rules, options, models, data path) and is built with every
// CUDA build; flash3_fwd.cu holds the kernels and is compiled only when the build targets sm_90a
// (FLASHLAB_HAS_SM90a), so the entry refuses launches in a build without it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flashlab/kernels/attention.hpp"

namespace flashlab::kernels {

// The registry entry of the flash3 variant.
[[nodiscard]] Variant flash3_variant();

namespace flash3 {

// A compiled forward tile: query rows per CTA (64 per consumer warpgroup), keys per K/V tile, K/V ring stages.
struct ForwardTile {
  int head_dim;
  int block_m;
  int block_n;
  int stages;
};

// The forward tiles compiled, the first of each head dim its default (flash3_fwd.cu says why each was chosen). A
// suite picks another with flash3[br=..,bc=..,stages=..]; each is compiled with and without ping-pong
// (flash3[pingpong=0|1]). br = 192 runs three consumer warpgroups (160 registers each instead of 240). The
// persistent schedule (flash3[persistent=1]) is compiled with ping-pong for 128x128/2 at d = 64 and 128 and for
// 192x96/2 at d = 64. The other tiles, which only experiments/flash3_tiles.toml sweeps, need a build with
// -DFLASHLAB_TILE_SWEEP=ON (build time).
inline constexpr ForwardTile kForwardTiles[] = {
    {64, 192, 96, 2},   {64, 128, 128, 2},  // the default, the persistent schedule's
    {128, 128, 128, 2}, {256, 128, 64, 2},  //
#if defined(FLASHLAB_TILE_SWEEP)
    {64, 128, 160, 2},  {64, 128, 128, 4}, {128, 128, 144, 2}, {128, 128, 128, 3},
#endif
};
inline constexpr bool kTileSweep =
#if defined(FLASHLAB_TILE_SWEEP)
    true;
#else
    false;
#endif

// The tile a launch uses: the head dim's default, or the first with `block_m` query rows, `block_n` keys and `stages`
// stages (each: any when 0); nullptr when none is compiled.
[[nodiscard]] const ForwardTile* find_tile(std::int64_t head_dim, int block_m, int block_n, int stages);

// The tiles of head dim d as "128x128/2 (default), ..." (rows x keys / stages) for messages and `flashlab list`.
[[nodiscard]] std::string tiles_of(std::int64_t head_dim);

// Whether flash3 runs problem p on the persistent 128x128/2 kernel when a launch names no tile, ping-pong or
// persistent option: at d = 64 and 128 when a query sees at most 512 (d = 64) or 1024 (d = 128) keys on average
// (flash3.cpp says what was measured).
[[nodiscard]] bool default_persistent(const Problem& p);

// Whether ping-pong scheduling is on by default for a head dim (flash3_fwd.cu says why).
[[nodiscard]] bool default_pingpong(std::int64_t head_dim);

// The forward launch (sm_90a build only): Q, K, V given; O and LSE written. Checks done by the caller.
// persistent: one CTA per multiprocessor walking the work tiles, longest first (compiled for each head dim's default
// tile with ping-pong).
void launch_forward(const AttentionParams& params, const ForwardTile& tile, bool pingpong, bool persistent,
                    void* stream);

// The forward's kernels on the current device (sm_90a build only).
[[nodiscard]] std::vector<KernelInfo> forward_kernels();

}  // namespace flash3
}  // namespace flashlab::kernels
