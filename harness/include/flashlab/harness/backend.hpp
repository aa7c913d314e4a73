// Where a row runs: host memory and a host clock (CPU variants) or a CUDA device with events, an L2 flush
// and CUPTI (GPU variants). The runner (runner.cpp) measures through this interface only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "flashlab/harness/memory.hpp"
#include "flashlab/harness/suite.hpp"
#include "flashlab/kernels/attention.hpp"

namespace flashlab::harness {

struct Traffic {
  double dram_read_bytes = 0, dram_write_bytes = 0, l2_read_bytes = 0, l2_write_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  [[nodiscard]] virtual kernels::Device device() const = 0;
  // The variant's workspace allocator (peak reset per row by the runner).
  [[nodiscard]] virtual TrackingAllocator& workspace() = 0;
  // Allocates the row's tensors (throws OutOfMemory), generates Q, K, V, dO, poisons the outputs with NaN and
  // fills params(). `seed` and the row's distribution and dtype select the inputs.
  virtual void prepare(const RowSpec& row, std::uint64_t seed) = 0;
  [[nodiscard]] virtual const kernels::AttentionParams& params() const = 0;
  [[nodiscard]] virtual kernels::LaunchContext context() = 0;
  [[nodiscard]] virtual std::int64_t io_bytes() const = 0;
  virtual void synchronize() = 0;
  // `warmup` untimed then `repetitions` timed runs of `region`, each timed one cold (caches flushed before it,
  // outside the timed interval where the backend can flush). Milliseconds per repetition.
  [[nodiscard]] virtual std::vector<double> time(const std::function<void()>& region, int warmup,
                                                 int repetitions) = 0;
  // One head of an output, widened to double: rows x dim, row-major (see verify.hpp); only the head's rows `rows`
  // (in that order) when given.
  [[nodiscard]] virtual std::vector<double> fetch(const std::string& tensor, std::int64_t b, std::int64_t head,
                                                  const std::vector<std::int64_t>* rows = nullptr) = 0;
  // FNV-1a 64 (hash.hpp) of a whole output tensor's bytes as the variant left them, in its storage dtype (LSE
  // float32): o, lse, dq, dk or dv. Empty for a gradient of a forward-only row (o and lse are the row's outputs in
  // every pass: the runner's verification run computes them before a backward).
  [[nodiscard]] virtual std::string output_hash(const std::string& tensor) = 0;
  // HBM traffic of `region` after a cache flush; nullopt with `why` set when the backend cannot measure it.
  [[nodiscard]] virtual std::optional<Traffic> traffic(const std::function<void()>& region, std::string& why) = 0;
  // Device memory in use by this row as cudaMemGetInfo sees it (free before the row minus free now);
  // nullopt where there is no such measure.
  [[nodiscard]] virtual std::optional<std::int64_t> memgetinfo_delta() = 0;
  // Writes the row's tensors as .npy files into `dir`.
  virtual void save_tensors(const std::string& dir, Pass pass) = 0;
  // Frees the row's tensors and cached workspace.
  virtual void release() = 0;
};

[[nodiscard]] std::unique_ptr<Backend> make_cpu_backend();
// Throws Unsupported when there is no usable CUDA device (or the build has no CUDA).
[[nodiscard]] std::unique_ptr<Backend> make_gpu_backend();

}  // namespace flashlab::harness
