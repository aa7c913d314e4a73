// The one host API every attention variant (GPU kernels here, CPU variants in the harness) is called through:
// a flat params struct with explicit strides, a workspace allocator owned by the caller, and a registry entry.
// No CUDA or Eigen types appear here, so the harness and CPU-only builds include it freely.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flashlab/core/allocator.hpp"
#include "flashlab/core/dtype.hpp"
#include "flashlab/core/flops.hpp"
#include "flashlab/core/numerics.hpp"
#include "flashlab/core/problem.hpp"

namespace flashlab::kernels {

// Strides in elements of a [B, N, H, d] tensor (varlen: [1, total, H, d]); the last dimension is contiguous.
struct Strides {
  std::int64_t batch = 0;
  std::int64_t token = 0;
  std::int64_t head = 0;
};

// Contiguous BSHD strides for `heads` heads of dimension `dim` and `tokens` tokens per batch entry.
[[nodiscard]] Strides contiguous_bshd(std::int64_t tokens, std::int64_t heads, std::int64_t dim);

// Test-only faults a variant can inject into its data path (the harness sets them from FLASHLAB_FAULT), so that the
// tests can show that the numerics checks catch a real regression. `none` in every real run.
//   row_sum_in_dtype: the softmax row sum l accumulated in the run's dtype instead of fp32.
enum class Fault : std::uint8_t { none, row_sum_in_dtype };
[[nodiscard]] std::string_view name(Fault fault);  // "none", "row_sum_in_dtype"
// Parses a fault's name ("" is none); throws std::invalid_argument naming the known ones.
[[nodiscard]] Fault parse_fault(std::string_view text);

// The run options of a launch: what a suite may choose per variant as `id[name=value,...]`, parsed by the variant's
// own registry entry (Variant::options). Default-constructed: every variant's defaults.
struct LaunchOptions {
  bool deterministic = false;  // bitwise repeatable backward where a variant offers it
  // Forward tile (query rows x keys per tile) where a variant offers a choice; 0 and 0: the variant's default.
  int block_m = 0;
  int block_n = 0;
  int stages = 0;     // pipeline stages of the K/V ring where a variant offers a choice; 0: its default
  int pingpong = -1;  // warpgroup ping-pong scheduling where a variant offers it: 1 on, 0 off, -1 its default
  int persistent = -1;  // a persistent grid (one CTA per multiprocessor walking the work) where offered; as pingpong
};

// Everything a forward or backward launch needs. Tensors are in `dtype` (fp32, fp16 or bf16 storage)
// except LSE (float32, [B, H, N_q] or varlen [1, H, total_q], contiguous) and pointers live where the
// variant runs (device memory for GPU variants, host memory for CPU variants). Filled once by the harness.
struct AttentionParams {
  Problem problem;  // validated; problem.scale() is the softmax scale
  DType dtype = DType::fp16;

  // forward inputs and outputs (backward reads o and lse as inputs)
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;
  Strides q_strides, k_strides, v_strides, o_strides;

  // backward
  const void* d_out = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  Strides d_out_strides, dq_strides, dk_strides, dv_strides;

  // varlen offsets (length B+1, int32, where the variant runs); null for dense batches
  const std::int32_t* cu_seqlens_q = nullptr;
  const std::int32_t* cu_seqlens_k = nullptr;
  // key padding: problem.valid_lengths (length B, int32, where the variant runs); null without key padding
  const std::int32_t* valid_lengths = nullptr;

  LaunchOptions options;
  // Test-only (above). cpu-standard and flash2's forward (head_dim 64, where it is compiled; Unsupported elsewhere)
  // inject it; the other variants run unchanged, so baselines stay clean.
  Fault fault = Fault::none;
};

// Workspace memory (core/allocator.hpp): every buffer a variant needs beyond the params' tensors comes from
// the launch context's allocator, so the harness measures it exactly.
using flashlab::Allocator;
using flashlab::Workspace;

// Where a launch runs: the workspace allocator and, for GPU variants, the cudaStream_t (as void*).
struct LaunchContext {
  Allocator& workspace;
  void* stream = nullptr;
};

enum class Device { cpu, cuda };
[[nodiscard]] std::string_view name(Device device);

// Whether a variant runs a (problem, dtype, pass); when not, why (one line, for the `unsupported` row).
struct Support {
  bool ok = true;
  std::string reason;
  [[nodiscard]] static Support yes() { return {}; }
  [[nodiscard]] static Support no(std::string why) { return {false, std::move(why)}; }
};

// A compiled GPU kernel of a variant and what the device reports for it (cudaFuncGetAttributes).
struct KernelInfo {
  std::string name;                       // e.g. "forward d=64 128x128 bf16"
  int registers = 0;                      // per thread
  std::int64_t local_bytes = 0;           // per thread: spilled registers and stack; 0 when all stays in registers
  std::int64_t static_shared_bytes = 0;   // per block
  std::int64_t dynamic_shared_bytes = 0;  // per block, as launched
};

// A run option of a variant, given in a suite as `id[name=value,...]` (`id[name]` means name=1). The variant's entry
// parses and validates it; the harness knows no option by name.
struct VariantOption {
  std::string name;
  std::string meaning;  // one line, for `flashlab list`
  // Sets `options` from the text of the value; returns why the value is not valid (one line naming what is), or "".
  std::function<std::string(std::string_view value, LaunchOptions& options)> apply;
};
// A 0/1 switch of a bool field of LaunchOptions.
[[nodiscard]] VariantOption switch_option(std::string name, std::string meaning, bool LaunchOptions::*field);
// A positive integer below 10000 (a tile size) into an int field of LaunchOptions.
[[nodiscard]] VariantOption size_option(std::string name, std::string meaning, int LaunchOptions::*field);

// Every variant id the project defines, whatever the build compiled (a CPU build has no GPU variants): a suite that
// names another id is malformed, one this build lacks gets `unsupported` rows. A test keeps it equal to the registry
// of a CUDA build.
inline constexpr std::string_view kVariantIds[] = {"cpu-reference", "cpu-standard", "standard", "flash2", "flash3"};

// One registry entry (STYLE.md 1). `flashlab list`, the README table and the harness all read these.
struct Variant {
  std::string id;           // e.g. "standard"
  std::string description;  // one line
  Device device = Device::cuda;
  bool materializes = false;  // allocates N x N buffers
  std::string supported;      // human summary of dtypes / head dims / features, for `flashlab list`
  std::function<Support(const Problem&, DType, Pass)> supports;
  // Predicted workspace bytes of one launch of `pass` (fwd: forward; bwd: backward; fwdbwd: the larger).
  std::function<std::int64_t(const Problem&, DType, Pass)> workspace_model;
  // HBM bytes the variant's algorithm moves (core/bytes.hpp) under the run options (its tile), the results'
  // bytes_model_variant. Empty: materializing variants use standard_bytes, others have no model.
  std::function<double(const Problem&, DType, Pass, const LaunchOptions&)> bytes_model;
  std::function<void(const AttentionParams&, const LaunchContext&)> forward;
  std::function<void(const AttentionParams&, const LaunchContext&)> backward;
  // The variant's own compiled kernels on the current CUDA device (throws without one); empty function: none
  // reported. `flashlab list --kernels` prints them; the GPU tests require local_bytes = 0 (no spills).
  std::function<std::vector<KernelInfo>()> kernels;
  // Run options a suite may give as `id[name=value,...]`, parsed here (none: the variant takes no option), and their
  // check taken together once each is applied, e.g. "br and bc go together": why they do not fit, or "".
  std::vector<VariantOption> options;
  std::function<std::string(const LaunchOptions&)> check_options;
  // Where the variant's arithmetic rounds for (problem, dtype) under launch params (its tile options): the a-priori
  // error bound of every verified row follows it (reference/NUMERICS.md). Stated beside the kernels it describes.
  std::function<numerics::DataPath(const Problem&, DType, const AttentionParams&)> data_path;
  // Which of its kernels the variant runs for (problem, dtype, pass) under the run options, one line (flash3:
  // "128x128/2, ping-pong, persistent"), where the choice depends on more than the variant name and the head dim:
  // the results' `launch`. Empty function: the column stays empty.
  std::function<std::string(const Problem&, DType, Pass, const LaunchOptions&)> describe_launch;
};

// The GPU variants of this build (empty when built without CUDA).
[[nodiscard]] const std::vector<Variant>& gpu_variants();

}  // namespace flashlab::kernels
