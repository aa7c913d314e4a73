// The harness's tracking allocators: every workspace byte a variant takes is counted (live and peak bytes as
// requested), so workspace_peak_bytes is exact. The device allocator caches freed blocks by size, as
// frameworks' caching allocators do, so that repeated launches do not pay cudaMalloc inside timed regions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "flashlab/core/allocator.hpp"

namespace flashlab::harness {

class TrackingAllocator : public Allocator {
 public:
  [[nodiscard]] std::int64_t live_bytes() const { return live_; }
  [[nodiscard]] std::int64_t peak_bytes() const { return peak_; }
  // Bytes held from the system at most since reset_peak(): live blocks plus freed blocks kept for reuse.
  [[nodiscard]] std::int64_t reserved_peak_bytes() const { return reserved_peak_; }
  void reset_peak() {
    peak_ = live_;
    reserved_peak_ = reserved_;
  }

 protected:
  void count_allocation(std::size_t bytes);
  void count_release(std::size_t bytes);
  void count_reserved(std::int64_t delta);

 private:
  std::int64_t live_ = 0;
  std::int64_t peak_ = 0;
  std::int64_t reserved_ = 0;
  std::int64_t reserved_peak_ = 0;
};

// Host memory (the CPU variants' workspace and inputs).
class HostAllocator final : public TrackingAllocator {
 public:
  ~HostAllocator() override;
  void* allocate(std::size_t bytes, std::string_view what) override;
  void release(void* pointer) noexcept override;

 private:
  std::map<void*, std::size_t> blocks_;
};

#if defined(FLASHLAB_WITH_CUDA)
// Device memory through cudaMalloc, with freed blocks kept for reuse by exact size. A failed cudaMalloc
// frees the cache and retries once, then throws OutOfMemory naming `what`, the size and the free memory.
class DeviceAllocator final : public TrackingAllocator {
 public:
  ~DeviceAllocator() override;
  void* allocate(std::size_t bytes, std::string_view what) override;
  void release(void* pointer) noexcept override;
  // Returns the cached (free) blocks to the driver.
  void trim() noexcept;
  [[nodiscard]] std::int64_t cached_bytes() const;

 private:
  std::map<void*, std::pair<std::size_t, std::size_t>> in_use_;  // pointer -> (block size, bytes requested)
  std::multimap<std::size_t, void*> cache_;
};

// cudaMemGetInfo's free bytes on the current device.
[[nodiscard]] std::int64_t device_free_bytes();
#endif

}  // namespace flashlab::harness
