// Host helpers of the GPU variants' launch code (internal header of kernels/, CUDA only): what the device reports
// for a compiled kernel, the device checks done once per device and process, and the shared-memory limit. The
// checks of the caller's tensors are src/launch_checks.hpp, CUDA error checks src/check.hpp.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "flashlab/core/errors.hpp"
#include "flashlab/kernels/attention.hpp"
#include "flashlab/kernels/device.hpp"
#include "src/check.hpp"

namespace flashlab::kernels {

// What the current device reports for a kernel (Variant::kernels).
template <class Kernel>
KernelInfo kernel_info(Kernel* kernel, std::string name, std::int64_t dynamic_shared_bytes) {
  cudaFuncAttributes a{};
  FL_CUDA_CHECK(cudaFuncGetAttributes(&a, reinterpret_cast<const void*>(kernel)));
  return {std::move(name), a.numRegs, static_cast<std::int64_t>(a.localSizeBytes),
          static_cast<std::int64_t>(a.sharedSizeBytes), dynamic_shared_bytes};
}

// Runs `check` (which throws when the current device does not qualify) once per device and process for each
// `checked` set (one static per call site): the property queries cost more than a launch.
template <class Check>
void once_per_device(std::atomic<std::uint64_t>& checked, Check check) {
  int device = 0;
  FL_CUDA_CHECK(cudaGetDevice(&device));
  const std::uint64_t bit = device < 64 ? std::uint64_t{1} << device : 0;
  if (bit != 0 && (checked.load(std::memory_order_relaxed) & bit) != 0) return;
  check();
  checked.fetch_or(bit, std::memory_order_relaxed);
}

// Compute capability 8.0 or newer (mma.sync, cp.async, ldmatrix): flash2's GPUs.
inline void require_sm80() {
  static std::atomic<std::uint64_t> checked{0};
  once_per_device(checked, [] { require_compute_capability(8, 0); });
}

// A device attribute of the current device, queried once per device and process.
template <cudaDeviceAttr kAttribute>
int device_attribute() {
  constexpr int kDevices = 64;
  static std::atomic<int> known[kDevices] = {};
  int device = 0;
  FL_CUDA_CHECK(cudaGetDevice(&device));
  if (device < kDevices) {
    if (const int value = known[device].load(std::memory_order_relaxed); value > 0) return value;
  }
  int value = 0;
  FL_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttribute, device));
  if (device < kDevices) known[device].store(value, std::memory_order_relaxed);
  return value;
}

// The dynamic shared memory a block may opt in to on the current device (163 KB on A100, 227 KB on H100/H200, 99 KB
// on sm_86/sm_89 GPUs).
inline int shared_bytes_per_block() { return device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(); }

// The multiprocessors of the current device (a persistent grid's size).
inline int multiprocessors() { return device_attribute<cudaDevAttrMultiProcessorCount>(); }

// `what` (a kernel of `variant` and its tile) needs `bytes` of shared memory per block: Unsupported, naming both
// sizes, where this GPU offers less.
inline void require_shared_bytes(const std::string& variant, int bytes, const std::string& what) {
  const int available = shared_bytes_per_block();
  if (bytes > available) {
    throw Unsupported(variant + ": " + what + " needs " + std::to_string(bytes / 1024) +
                      " KB of shared memory per block; this GPU offers " + std::to_string(available / 1024) +
                      " KB (A100: 163 KB, H100/H200: 227 KB)");
  }
}

}  // namespace flashlab::kernels
