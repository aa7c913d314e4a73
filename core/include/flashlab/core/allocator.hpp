// Workspace memory. Every buffer a variant (or the reference) needs beyond its inputs and outputs comes from
// an Allocator owned by the caller, so the harness measures workspace exactly.
#pragma once

#include <cstddef>
#include <utility>
#include <string_view>

namespace flashlab {

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Throws flashlab::OutOfMemory naming `what` and the size when the memory is not there.
  virtual void* allocate(std::size_t bytes, std::string_view what) = 0;
  virtual void release(void* pointer) noexcept = 0;
};

// A workspace buffer released when it goes out of scope.
class Workspace {
 public:
  Workspace() = default;
  Workspace(Allocator& allocator, std::size_t bytes, std::string_view what)
      : allocator_(&allocator), pointer_(bytes ? allocator.allocate(bytes, what) : nullptr), bytes_(bytes) {}
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  Workspace(Workspace&& other) noexcept { swap(other); }
  Workspace& operator=(Workspace&& other) noexcept {
    Workspace moved(std::move(other));
    swap(moved);
    return *this;
  }
  ~Workspace() {
    if (pointer_) allocator_->release(pointer_);
  }
  template <class T>
  [[nodiscard]] T* as() const {
    return static_cast<T*>(pointer_);
  }
  [[nodiscard]] std::size_t bytes() const { return bytes_; }

 private:
  void swap(Workspace& other) noexcept {
    std::swap(allocator_, other.allocator_);
    std::swap(pointer_, other.pointer_);
    std::swap(bytes_, other.bytes_);
  }
  Allocator* allocator_ = nullptr;
  void* pointer_ = nullptr;
  std::size_t bytes_ = 0;
};

// Plain host memory (operator new), untracked: the default where no caller-owned allocator is given.
class HeapAllocator final : public Allocator {
 public:
  void* allocate(std::size_t bytes, std::string_view what) override;
  void release(void* pointer) noexcept override;
  static HeapAllocator& instance();
};

}  // namespace flashlab
