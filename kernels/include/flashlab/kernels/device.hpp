// Device utilities for the harness and the GPU tests: seeded input generation on the device, output poisoning,
// L2 flushing between timed repetitions, and the device block of run.json.
//
// No CUDA header appears here: streams are cudaStream_t passed as void* (nullptr = the legacy default stream).
// Every CUDA call is checked; a failure throws flashlab::CudaError naming the call and the source location.
#pragma once

#include <cstdint>
#include <string>

#include "flashlab/core/dtype.hpp"
#include "flashlab/core/generator.hpp"

namespace flashlab::kernels {

// Writes element i (0 <= i < count) of a contiguous device buffer of `dtype` with
// input_value(seed, tensor, i, distribution, dtype, layout), stored exactly (storage.hpp): the same bits as
// core's fill() of a contiguous tensor of `count` elements (which numbers elements by their row-major linear
// index) when `layout` is that tensor's {heads, dim} (of a [.., tokens, heads, dim] buffer).
// dtype: fp64, fp32, fp16 or bf16; fp8_e4m3 throws flashlab::Unsupported.
void generate(void* data, DType dtype, std::int64_t count, std::uint64_t seed, TensorId tensor,
              Distribution distribution, InputLayout layout, void* stream);

// Sets every bit of `count` elements of `dtype` (any dtype): all-ones is a NaN in fp64, fp32, fp16, bf16 and
// fp8_e4m3 alike, so an output element a kernel does not write stays NaN.
void fill_nan(void* data, DType dtype, std::int64_t count, void* stream);

// data[i] = value for 0 <= i < count.
void fill_value(float* data, std::int64_t count, float value, void* stream);

// Makes the next timed region start with a cold L2: owns a buffer of twice the L2 size of the device that is
// current at construction, allocated with cudaMalloc (outside any workspace allocator, so the harness accounts
// for it separately), zeroed once, and read through L2 (never written) on `stream` in flush(): L2 is left holding
// clean lines, so the timed region pays no write-back of the flush.
class L2Flusher {
 public:
  L2Flusher();
  ~L2Flusher();
  L2Flusher(const L2Flusher&) = delete;
  L2Flusher& operator=(const L2Flusher&) = delete;
  L2Flusher(L2Flusher&& other) noexcept;
  L2Flusher& operator=(L2Flusher&& other) noexcept;

  void flush(void* stream);
  [[nodiscard]] std::int64_t bytes() const { return bytes_; }

 private:
  void* buffer_ = nullptr;
  std::int64_t bytes_ = 0;
};

// The device block of run.json. Clocks are the peak rates the driver reports (cudaDevAttrClockRate and
// cudaDevAttrMemoryClockRate), not current clocks.
struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int sm_count = 0;
  std::int64_t l2_bytes = 0;
  std::int64_t memory_bytes = 0;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  int driver_version = 0;   // CUDA version the driver supports, as 1000 * major + 10 * minor (13000 = 13.0)
  int runtime_version = 0;  // CUDA runtime linked into this program, same encoding
  int clock_khz_sm = 0;
  int clock_khz_memory = 0;
  std::string uuid;  // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi prints it
};

[[nodiscard]] DeviceInfo device_info(int device);

// Number of CUDA devices; 0 (never an exception) when there is no device or no usable driver.
[[nodiscard]] int device_count();

// "13.0" for 13000 (the encoding of DeviceInfo::driver_version and runtime_version).
[[nodiscard]] std::string cuda_version_string(int version);

// The cuBLAS library linked in, "13.0.2" (major.minor.patch).
[[nodiscard]] std::string cublas_version();

// Throws flashlab::Unsupported when the current device's compute capability is below major.minor, e.g.
// "GPU NVIDIA T4 has compute capability 7.5; flashlab's CUDA variants need >= 8.0".
void require_compute_capability(int major, int minor);

// Throws flashlab::Unsupported unless the current device has exactly compute capability major.minor: the kernels of
// an architecture-specific target (sm_90a: wgmma, TMA, setmaxnreg) run there only. The message names the variant,
// the target, and the GPU found, e.g. "flash3 runs on sm_90a GPUs (compute capability 9.0, e.g. H100, H200); this
// GPU is NVIDIA A100-SXM4-80GB (8.0)".
void require_architecture(const std::string& variant, int major, int minor, const std::string& target);

}  // namespace flashlab::kernels
