// The `flash3` registry entry: support rules, run options, memory and bytes models, data path. Built with every CUDA
// build; the kernels (flash3_fwd.cu) only where the build targets sm_90a (FLASHLAB_HAS_SM90a), and they run only on
// a compute capability 9.0 GPU (require_architecture gives the `unsupported` row elsewhere).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "flash3/flash3.hpp"
#include "flashlab/core/bytes.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/flops.hpp"
#include "flashlab/kernels/device.hpp"
#include "src/flash_data_path.hpp"
#include "src/launch_checks.hpp"

namespace flashlab::kernels {
namespace flash3 {

const ForwardTile* find_tile(std::int64_t head_dim, int block_m, int block_n, int stages) {
  for (const ForwardTile& t : kForwardTiles) {
    if (t.head_dim == head_dim && (block_m == 0 || t.block_m == block_m) && (block_n == 0 || t.block_n == block_n) &&
        (stages == 0 || t.stages == stages)) {
      return &t;
    }
  }
  return nullptr;
}

// Short problems pay each CTA's prologue (barrier set-up, the Q load, the first S GEMM with nothing to overlap) and
// epilogue on every work tile; the persistent kernel with its two Q tiles loads the next tile's Q while the current
// one runs. Measured on the H200 (bf16, 16k tokens, model dim 2048; experiments/results/h200-2026-11-30/
// flash3_persistent_q2/), the persistent 128x128/2 kernel against each head dim's default, as the mean number of
// keys a query sees grows:
//   d = 64 (default 192x96/2): 256 keys +12%, 512 keys +4% .. +10%; 1024 keys -2% .. -7%;
//   d = 128 (default 128x128/2): 256 keys +15%, 512 keys +8%, 1024 keys +1% .. +3%; 2048 keys -2%.
// d = 256 has no persistent kernel (its state spills).
bool default_persistent(const Problem& p) {
  if (p.head_dim != 64 && p.head_dim != 128) return false;
  const double queries = p.is_varlen() ? static_cast<double>(p.total_q()) : static_cast<double>(p.batch) * p.seqlen_q;
  if (queries <= 0) return false;
  const double keys_per_query = convention_pairs(p) / queries;
  return keys_per_query <= (p.head_dim == 64 ? 512.0 : 1024.0);
}

// On at every head dim: measured ahead (d = 256: +1.6% over 6 rows) or level (d = 64, 128: within 0.5%) with the
// default tiles (experiments/flash3_tiles.toml, kernels/README.md).
bool default_pingpong(std::int64_t) { return true; }

std::string tiles_of(std::int64_t head_dim) {
  std::string list;
  for (const ForwardTile& t : kForwardTiles) {
    if (t.head_dim != head_dim) continue;
    list += (list.empty() ? "" : ", ") + std::to_string(t.block_m) + "x" + std::to_string(t.block_n) + "/" +
            std::to_string(t.stages) + (list.empty() ? " (default)" : "");
  }
  return list;
}

namespace {

Support supports(const Problem& p, DType dtype, Pass pass) {
  if (p.dropout.active()) return Support::no("flash3 has no dropout (a forward for inference); flash2 has it");
  if (dtype != DType::fp16 && dtype != DType::bf16) {
    return Support::no("flash3 runs fp16 and bf16 (wgmma); " + std::string(name(dtype)) +
                       (dtype == DType::fp32 ? " has no path here: use standard" : " is not implemented"));
  }
  if (pass != Pass::fwd) {
    return Support::no("flash3 is a forward kernel; its backward is not written yet (flash2 runs the backward)");
  }
  const std::int64_t d = p.head_dim;
  if (d != 64 && d != 128 && d != 256) {
    return Support::no("flash3 has kernels for head_dim 64, 128 and 256; head_dim = " + std::to_string(d) +
                       " is not one of them (pad it with zeros to the next one, or use flash2)");
  }
  return detail::fused_kernel_limits("flash3", p);
}

// Whether a launch leaves the schedule to flash3: no tile, ping-pong or persistent option.
bool schedule_open(const LaunchOptions& o) {
  return o.block_m == 0 && o.block_n == 0 && o.stages == 0 && o.pingpong < 0 && o.persistent < 0;
}

// What a launch runs: its tile (null when the options name one this build lacks), ping-pong, and whether the
// persistent schedule walks the work tiles. Where the options leave the schedule open and the problem is short
// (default_persistent), the persistent kernel on 128x128/2.
struct Schedule {
  const ForwardTile* tile;
  bool pingpong;
  bool persistent;
};

Schedule schedule_of(const Problem& p, const LaunchOptions& o) {
  if (schedule_open(o) && default_persistent(p)) {
    if (const ForwardTile* tile = find_tile(p.head_dim, 128, 128, 2)) return {tile, default_pingpong(p.head_dim), true};
  }
  return {find_tile(p.head_dim, o.block_m, o.block_n, o.stages),
          o.pingpong < 0 ? default_pingpong(p.head_dim) : o.pingpong == 1, o.persistent == 1};
}

// The schedule's tile; Unsupported, naming the compiled tiles, where the options name one this build lacks.
const ForwardTile& compiled_tile(const Schedule& s, const Problem& p, const LaunchOptions& options) {
  if (s.tile == nullptr) {
    throw Unsupported("flash3: no forward tile with br = " + std::to_string(options.block_m) + ", bc = " +
                      std::to_string(options.block_n) + ", stages = " +
                      std::to_string(options.stages) + " at head_dim " + std::to_string(p.head_dim) +
                      " (compiled, rows x keys / stages: " + tiles_of(p.head_dim) +
                      (kTileSweep ? ")" : "; the tile sweep's tiles need a build with -DFLASHLAB_TILE_SWEEP=ON)"));
  }
  return *s.tile;
}

void forward(const AttentionParams& params, const LaunchContext& ctx) {
  detail::check_launch("flash3", params, Pass::fwd, supports);
#if defined(FLASHLAB_HAS_SM90a)
  require_architecture("flash3", 9, 0, "sm_90a");
  const Schedule s = schedule_of(params.problem, params.options);
  launch_forward(params, compiled_tile(s, params.problem, params.options), s.pingpong, s.persistent, ctx.stream);
#else
  (void)ctx;
  throw Unsupported("flash3: this build has no sm_90a code (configure with CMAKE_CUDA_ARCHITECTURES including 90a)");
#endif
}

void backward(const AttentionParams& params, const LaunchContext&) {
  detail::check_launch("flash3", params, Pass::bwd, supports);  // throws: flash3 has no backward
}

std::vector<KernelInfo> kernels() {
#if defined(FLASHLAB_HAS_SM90a)
  return forward_kernels();
#else
  return {};
#endif
}

// The tile the models describe: the launch's, or for a tile this build lacks (refused at launch, where the row
// becomes `unsupported`) the one the options name, the default's sizes filling what they leave open.
ForwardTile model_tile(const Schedule& s, const Problem& p, const LaunchOptions& options) {
  if (s.tile != nullptr) return *s.tile;
  const ForwardTile* fallback = find_tile(p.head_dim, 0, 0, 0);
  ForwardTile t = fallback != nullptr ? *fallback : ForwardTile{static_cast<int>(p.head_dim), 128, 128, 2};
  if (options.block_m > 0) t.block_m = options.block_m;
  if (options.block_n > 0) t.block_n = options.block_n;
  return t;
}

ForwardTile model_tile(const Problem& p, const LaunchOptions& options) {
  return model_tile(schedule_of(p, options), p, options);
}

// The results' `launch`: the tile (rows x keys / stages) and the schedule a launch runs, e.g. "192x96/2, ping-pong,
// one CTA per tile" or, for a short problem, "128x128/2, ping-pong, persistent".
std::string describe_launch(const Problem& p, DType, Pass, const LaunchOptions& o) {
  const Schedule s = schedule_of(p, o);
  const ForwardTile t = model_tile(s, p, o);
  return std::to_string(t.block_m) + "x" + std::to_string(t.block_n) + "/" + std::to_string(t.stages) +
         (s.pingpong ? ", ping-pong" : "") + (s.persistent ? ", persistent" : ", one CTA per tile");
}

// FlashAttention's bytes model with the tile's query rows per CTA: K and V are streamed once per query block.
double bytes_model(const Problem& p, DType dtype, Pass pass, const LaunchOptions& options) {
  return flash_bytes(p, dtype, pass, model_tile(p, options).block_m);
}

// Where flash3 rounds (reference/NUMERICS.md): flash2's forward on other instructions (wgmma; P from registers).
numerics::DataPath data_path(const Problem& p, DType dtype, const AttentionParams& params) {
  return online_softmax_forward_path(dtype, model_tile(p, params.options).block_n, "wgmma");
}

}  // namespace
}  // namespace flash3

Variant flash3_variant() {
  Variant v;
  v.id = "flash3";
  std::string tiles;
  for (const int d : {64, 128, 256}) tiles += (tiles.empty() ? "d = " : "; d = ") + std::to_string(d) + ": " + flash3::tiles_of(d);
  v.options = {size_option("br", "forward tile: query rows per CTA, 64 per consumer warpgroup (rows x keys / stages: " +
                               tiles + ")",
                           &LaunchOptions::block_m),
               size_option("bc", "forward tile: keys per K/V tile (of the tiles above)", &LaunchOptions::block_n),
               size_option("stages", "stages of the K and V rings (of the tiles above)", &LaunchOptions::stages),
               VariantOption{"pingpong", "1: the consumer warpgroups take turns to issue their GEMMs; 0: they do not",
                             [](std::string_view value, LaunchOptions& o) {
                               if (value != "0" && value != "1") return std::string("pingpong takes 0 or 1");
                               o.pingpong = value == "1";
                               return std::string();
                             }},
               VariantOption{"persistent",
                             "1: one CTA per multiprocessor walks the work tiles, each head's longest first (tile "
                             "128x128/2 with ping-pong, d = 64 and 128; 192x96/2 at d = 64); 0: one CTA per tile; "
                             "default (no tile, pingpong or persistent option): persistent 128x128/2 where a query "
                             "sees at most 512 keys on average at d = 64 or 1024 at d = 128, one CTA per tile "
                             "otherwise",
                             [](std::string_view value, LaunchOptions& o) {
                               if (value != "0" && value != "1") return std::string("persistent takes 0 or 1");
                               o.persistent = value == "1";
                               return std::string();
                             }}};
  v.check_options = {};  // each option names a tile, checked together at launch (compiled_tile)
  v.description =
      "FlashAttention-3 style forward for Hopper (sm_90a): TMA loads by a producer warpgroup, two consumer "
      "warpgroups on wgmma with the next S = Q K^T overlapping the softmax, mbarrier pipelines, O(N) memory";
  v.device = Device::cuda;
  v.materializes = false;
  v.supported =
      "fp16, bf16; head_dim 64, 128, 256 with head_dim_v == head_dim; causal, sliding window, GQA/MQA, varlen, "
      "N_q != N_k; fwd only; compute capability 9.0 (sm_90a build)";
  v.supports = flash3::supports;
  v.workspace_model = [](const Problem&, DType, Pass) -> std::int64_t { return 0; };
  v.bytes_model = flash3::bytes_model;
  v.describe_launch = flash3::describe_launch;
  v.forward = flash3::forward;
  v.backward = flash3::backward;
  v.kernels = flash3::kernels;
  v.data_path = flash3::data_path;
  return v;
}

}  // namespace flashlab::kernels
