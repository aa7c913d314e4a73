// The HBM-traffic profiler counts the bytes a region of known traffic moves: a copy of X bytes reads X and
// writes X, in DRAM and in L2 requests. No CUPTI access fails these tests (with the reason), never skips them.
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "catch.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/harness/traffic.hpp"

namespace {

using flashlab::harness::TrafficCounts;
using flashlab::harness::TrafficProfiler;

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr std::size_t kGiB = std::size_t{1} << 30;
constexpr unsigned kThreads = 256;
constexpr unsigned kBlocksPerSm = 8;

void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) FAIL(std::string(call) + ": " + cudaGetErrorString(status));
}
#define CHECK_CUDA(call) check_cuda((call), #call)

// 16 bytes per thread per step: every byte of src is read once and every byte of dst written once.
__global__ void copy_words(const uint4* __restrict__ src, uint4* __restrict__ dst, std::size_t words) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < words; i += stride) {
    dst[i] = src[i];
  }
}

// Device buffers freed on scope exit.
struct DeviceBuffer {
  explicit DeviceBuffer(std::size_t bytes) { CHECK_CUDA(cudaMalloc(&data, bytes)); }
  ~DeviceBuffer() { static_cast<void>(cudaFree(data)); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data = nullptr;
};

void copy(const DeviceBuffer& src, const DeviceBuffer& dst, std::size_t bytes) {
  int sms = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  copy_words<<<static_cast<unsigned>(sms) * kBlocksPerSm, kThreads>>>(
      static_cast<const uint4*>(src.data), static_cast<uint4*>(dst.data), bytes / sizeof(uint4));
  CHECK_CUDA(cudaGetLastError());
}

// The profiler, or a test failure naming why CUPTI profiling is unavailable: a machine where these tests run
// is one where the traffic columns are expected.
std::unique_ptr<TrafficProfiler> make_profiler() {
  try {
    return std::make_unique<TrafficProfiler>(0);
  } catch (const flashlab::Unsupported& error) {
    FAIL("TrafficProfiler unavailable: " << error.what());
  }
  return nullptr;
}

void print(const char* what, const TrafficCounts& counts) {
  std::printf(
      "traffic %s: dram read %.0f B, dram write %.0f B (%.0f B drained after the region), "
      "L2 read %.0f B, L2 write %.0f B, %d pass(es)\n",
      what, counts.dram_read_bytes, counts.dram_write_bytes, counts.dram_write_drained_bytes, counts.l2_read_bytes,
      counts.l2_write_bytes, counts.passes);
}

double relative_error(double measured, double expected) {
  return std::abs(measured - expected) / expected;
}

}  // namespace

TEST_CASE("a 1 GiB copy reads and writes 1 GiB of DRAM and of L2 requests", "[gpu][traffic]") {
  const std::unique_ptr<TrafficProfiler> profiler = make_profiler();
  INFO("chip " << profiler->chip() << ", L2 flush buffer " << profiler->flush_bytes() << " B");
  constexpr std::size_t kBytes = kGiB;  // 20x the L2 of an H100 (50 MB), 17x an H200's (60 MB)
  const DeviceBuffer src(kBytes);
  const DeviceBuffer dst(kBytes);
  CHECK_CUDA(cudaMemset(src.data, 1, kBytes));
  CHECK_CUDA(cudaDeviceSynchronize());

  const TrafficCounts counts = profiler->measure([&] { copy(src, dst, kBytes); });
  print("copy 1 GiB", counts);
  const double expected = static_cast<double>(kBytes);
  CHECK(counts.passes >= 1);
  CHECK(relative_error(counts.dram_read_bytes, expected) < 0.02);
  CHECK(relative_error(counts.dram_write_bytes, expected) < 0.02);
  CHECK(relative_error(counts.l2_read_bytes, expected) < 0.02);
  CHECK(relative_error(counts.l2_write_bytes, expected) < 0.02);
}

TEST_CASE("an 8 MiB copy run twice: L2 requests count both runs, DRAM only the first read and one write-back",
          "[gpu][traffic]") {
  const std::unique_ptr<TrafficProfiler> profiler = make_profiler();
  constexpr std::size_t kBytes = 8 * kMiB;  // src and dst together fit in L2 many times over
  const DeviceBuffer src(kBytes);
  const DeviceBuffer dst(kBytes);
  CHECK_CUDA(cudaMemset(src.data, 1, kBytes));
  CHECK_CUDA(cudaDeviceSynchronize());

  const TrafficCounts counts = profiler->measure([&] {
    copy(src, dst, kBytes);
    copy(src, dst, kBytes);
  });
  print("copy 8 MiB twice", counts);
  const double once = static_cast<double>(kBytes);
  // The second copy finds src in L2 and overwrites dst there: one DRAM read of src, one write-back of dst
  // (when the profiler drains L2 after the region), but two runs' worth of L2 requests.
  CHECK(relative_error(counts.dram_read_bytes, once) < 0.02);
  CHECK(relative_error(counts.dram_write_bytes, once) < 0.02);
  CHECK(relative_error(counts.l2_read_bytes, 2 * once) < 0.02);
  CHECK(relative_error(counts.l2_write_bytes, 2 * once) < 0.02);
}
