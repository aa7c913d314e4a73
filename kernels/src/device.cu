// Device utilities (device.hpp): generation, poisoning, L2 flushing, device information.
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstdio>
#include <utility>

#include "check.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/storage.hpp"
#include "flashlab/kernels/device.hpp"

namespace flashlab::kernels {
namespace {

constexpr int kThreads = 256;
// Grid-stride kernels launch at most this many blocks per multiprocessor: enough to fill it, and a grid size
// that fits gridDim.x for any element count.
constexpr int kBlocksPerSm = 8;

cudaStream_t as_stream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

unsigned grid_for(std::int64_t count) {
  int device = 0;
  int sm_count = 0;
  FL_CUDA_CHECK(cudaGetDevice(&device));
  FL_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  const std::int64_t needed = (count + kThreads - 1) / kThreads;
  return static_cast<unsigned>(
      std::max<std::int64_t>(1, std::min<std::int64_t>(needed, std::int64_t{sm_count} * kBlocksPerSm)));
}

__global__ void __launch_bounds__(kThreads)
    generate_kernel(void* data, DType dtype, std::int64_t count, std::uint64_t seed, std::uint32_t tensor,
                    Distribution distribution, InputLayout layout) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += stride) {
    store(data, i, dtype, input_value(seed, tensor, static_cast<std::uint64_t>(i), distribution, dtype, layout));
  }
}

// Reads `count` 16-byte words through L2 (ld.global.cg: L2, not L1) and writes nothing: the buffer is zero, so
// the xor is zero and the store, which only keeps the compiler from dropping the loads, never runs.
__global__ void __launch_bounds__(kThreads) read_through_l2_kernel(const uint4* data, std::int64_t count,
                                                                    unsigned* sink) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  unsigned x = 0;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += stride) {
    const uint4 v = __ldcg(data + i);
    x ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (x != 0) *sink = x;
}

__global__ void __launch_bounds__(kThreads) fill_value_kernel(float* data, std::int64_t count, float value) {
  const std::int64_t stride = std::int64_t{gridDim.x} * blockDim.x;
  for (std::int64_t i = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += stride) {
    data[i] = value;
  }
}

}  // namespace

void generate(void* data, DType dtype, std::int64_t count, std::uint64_t seed, TensorId tensor,
              Distribution distribution, InputLayout layout, void* stream) {
  if (dtype == DType::fp8_e4m3) {
    throw Unsupported("generate: fp8_e4m3 has no storage format in flashlab yet (fp64, fp32, fp16, bf16 do)");
  }
  if (count <= 0) return;
  generate_kernel<<<grid_for(count), kThreads, 0, as_stream(stream)>>>(
      data, dtype, count, seed, static_cast<std::uint32_t>(tensor), distribution, layout);
  FL_CUDA_CHECK_LAUNCH("generate_kernel");
}

void fill_nan(void* data, DType dtype, std::int64_t count, void* stream) {
  if (count <= 0) return;
  const auto bytes = static_cast<std::size_t>(count) * static_cast<std::size_t>(size_bytes(dtype));
  FL_CUDA_CHECK(cudaMemsetAsync(data, 0xFF, bytes, as_stream(stream)));
}

void fill_value(float* data, std::int64_t count, float value, void* stream) {
  if (count <= 0) return;
  fill_value_kernel<<<grid_for(count), kThreads, 0, as_stream(stream)>>>(data, count, value);
  FL_CUDA_CHECK_LAUNCH("fill_value_kernel");
}

L2Flusher::L2Flusher() {
  int device = 0;
  int l2 = 0;
  FL_CUDA_CHECK(cudaGetDevice(&device));
  FL_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  bytes_ = 2 * std::int64_t{l2};
  if (bytes_ > 0) {
    FL_CUDA_CHECK(cudaMalloc(&buffer_, static_cast<std::size_t>(bytes_)));
    FL_CUDA_CHECK(cudaMemset(buffer_, 0, static_cast<std::size_t>(bytes_)));  // once: flush() only reads it
    FL_CUDA_CHECK(cudaDeviceSynchronize());
  }
}

L2Flusher::~L2Flusher() {
  if (buffer_) cudaFree(buffer_);  // a destructor does not throw; a failure here leaves nothing to undo
}

L2Flusher::L2Flusher(L2Flusher&& other) noexcept
    : buffer_(std::exchange(other.buffer_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

L2Flusher& L2Flusher::operator=(L2Flusher&& other) noexcept {
  if (this != &other) {
    if (buffer_) cudaFree(buffer_);
    buffer_ = std::exchange(other.buffer_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void L2Flusher::flush(void* stream) {
  if (!buffer_) return;
  // Reading twice L2's size through L2 evicts every line it held (dirty ones are written back now, not in the
  // timed region) and leaves it full of clean lines, which the region's misses evict without a write-back. A
  // memset, which this replaced, left L2 full of dirty lines of the flush buffer, and the region paid their
  // write-back (experiments/results: flashlab compare of the two on the speed rows).
  const std::int64_t words = bytes_ / static_cast<std::int64_t>(sizeof(uint4));
  read_through_l2_kernel<<<grid_for(words), kThreads, 0, as_stream(stream)>>>(static_cast<const uint4*>(buffer_),
                                                                               words, static_cast<unsigned*>(buffer_));
  FL_CUDA_CHECK_LAUNCH("read_through_l2_kernel");
}

DeviceInfo device_info(int device) {
  DeviceInfo info;
  info.ordinal = device;
  cudaDeviceProp prop{};
  FL_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  info.l2_bytes = prop.l2CacheSize;
  info.memory_bytes = static_cast<std::int64_t>(prop.totalGlobalMem);
  info.compute_capability_major = prop.major;
  info.compute_capability_minor = prop.minor;
  FL_CUDA_CHECK(cudaDriverGetVersion(&info.driver_version));
  FL_CUDA_CHECK(cudaRuntimeGetVersion(&info.runtime_version));
  FL_CUDA_CHECK(cudaDeviceGetAttribute(&info.clock_khz_sm, cudaDevAttrClockRate, device));
  FL_CUDA_CHECK(cudaDeviceGetAttribute(&info.clock_khz_memory, cudaDevAttrMemoryClockRate, device));
  const auto* u = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
  char text[48];
  std::snprintf(text, sizeof text, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
                u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  info.uuid = text;
  return info;
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error so later calls start clean
    return 0;
  }
  return count;
}

std::string cublas_version() {
  int major = 0, minor = 0, patch = 0;
  if (cublasGetProperty(MAJOR_VERSION, &major) != CUBLAS_STATUS_SUCCESS ||
      cublasGetProperty(MINOR_VERSION, &minor) != CUBLAS_STATUS_SUCCESS ||
      cublasGetProperty(PATCH_LEVEL, &patch) != CUBLAS_STATUS_SUCCESS) {
    return "unknown";
  }
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

std::string cuda_version_string(int version) {
  return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
}

void require_compute_capability(int major, int minor) {
  int device = 0;
  FL_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  FL_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (prop.major < major || (prop.major == major && prop.minor < minor)) {
    throw Unsupported("GPU " + std::string(prop.name) + " has compute capability " + std::to_string(prop.major) + "." +
                      std::to_string(prop.minor) + "; flashlab's CUDA variants need >= " + std::to_string(major) + "." +
                      std::to_string(minor));
  }
}

void require_architecture(const std::string& variant, int major, int minor, const std::string& target) {
  int device = 0;
  FL_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  FL_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (prop.major != major || prop.minor != minor) {
    throw Unsupported(variant + " runs on " + target + " GPUs (compute capability " + std::to_string(major) + "." +
                      std::to_string(minor) + "); this GPU is " + std::string(prop.name) + " (" +
                      std::to_string(prop.major) + "." + std::to_string(prop.minor) + ")");
  }
}

}  // namespace flashlab::kernels
