#include "flashlab/core/allocator.hpp"

#include <fmt/format.h>

#include <new>

#include "flashlab/core/errors.hpp"

namespace flashlab {

void* HeapAllocator::allocate(std::size_t bytes, std::string_view what) {
  void* p = ::operator new(bytes, std::align_val_t{64}, std::nothrow);
  if (!p) throw OutOfMemory(fmt::format("host allocation of {} bytes for {} failed", bytes, what));
  return p;
}

void HeapAllocator::release(void* pointer) noexcept { ::operator delete(pointer, std::align_val_t{64}); }

HeapAllocator& HeapAllocator::instance() {
  static HeapAllocator heap;
  return heap;
}

}  // namespace flashlab
