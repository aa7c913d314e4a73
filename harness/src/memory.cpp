#include "flashlab/harness/memory.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "flashlab/core/errors.hpp"

#if defined(FLASHLAB_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace flashlab::harness {

void TrackingAllocator::count_allocation(std::size_t bytes) {
  live_ += static_cast<std::int64_t>(bytes);
  peak_ = std::max(peak_, live_);
}

void TrackingAllocator::count_release(std::size_t bytes) { live_ -= static_cast<std::int64_t>(bytes); }

void TrackingAllocator::count_reserved(std::int64_t delta) {
  reserved_ += delta;
  reserved_peak_ = std::max(reserved_peak_, reserved_);
}

HostAllocator::~HostAllocator() {
  for (auto& [pointer, bytes] : blocks_) HeapAllocator::instance().release(pointer);
}

void* HostAllocator::allocate(std::size_t bytes, std::string_view what) {
  void* p = HeapAllocator::instance().allocate(std::max<std::size_t>(bytes, 1), what);
  blocks_[p] = bytes;
  count_allocation(bytes);
  count_reserved(static_cast<std::int64_t>(bytes));
  return p;
}

void HostAllocator::release(void* pointer) noexcept {
  const auto it = blocks_.find(pointer);
  if (it == blocks_.end()) return;
  count_release(it->second);
  count_reserved(-static_cast<std::int64_t>(it->second));
  blocks_.erase(it);
  HeapAllocator::instance().release(pointer);
}

#if defined(FLASHLAB_WITH_CUDA)

std::int64_t device_free_bytes() {
  std::size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return -1;
  return static_cast<std::int64_t>(free);
}

DeviceAllocator::~DeviceAllocator() {
  trim();
  for (auto& [pointer, sizes] : in_use_) cudaFree(pointer);
}

void* DeviceAllocator::allocate(std::size_t bytes, std::string_view what) {
  const std::size_t size = std::max<std::size_t>(bytes, 1);
  void* p = nullptr;
  if (const auto cached = cache_.find(size); cached != cache_.end()) {
    p = cached->second;
    cache_.erase(cached);
  } else {
    cudaError_t status = cudaMalloc(&p, size);
    if (status == cudaErrorMemoryAllocation && !cache_.empty()) {
      cudaGetLastError();  // clear the error before retrying
      trim();
      status = cudaMalloc(&p, size);
    }
    if (status == cudaSuccess) count_reserved(static_cast<std::int64_t>(size));
    if (status != cudaSuccess) {
      cudaGetLastError();
      if (status == cudaErrorMemoryAllocation) {
        throw OutOfMemory(fmt::format("device allocation of {:.2f} GiB for {} failed ({:.2f} GiB free)",
                                      static_cast<double>(size) / (1 << 30), what,
                                      static_cast<double>(device_free_bytes()) / (1 << 30)));
      }
      throw CudaError(fmt::format("cudaMalloc({} bytes) for {}: {}", size, what, cudaGetErrorString(status)));
    }
  }
  in_use_[p] = {size, bytes};
  count_allocation(bytes);
  return p;
}

void DeviceAllocator::release(void* pointer) noexcept {
  const auto it = in_use_.find(pointer);
  if (it == in_use_.end()) return;
  cache_.emplace(it->second.first, pointer);
  count_release(it->second.second);
  in_use_.erase(it);
}

void DeviceAllocator::trim() noexcept {
  for (auto& [bytes, pointer] : cache_) {
    cudaFree(pointer);
    count_reserved(-static_cast<std::int64_t>(bytes));
  }
  cache_.clear();
}

std::int64_t DeviceAllocator::cached_bytes() const {
  std::int64_t total = 0;
  for (const auto& [bytes, pointer] : cache_) total += static_cast<std::int64_t>(bytes);
  return total;
}

#endif

}  // namespace flashlab::harness
