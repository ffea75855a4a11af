// Memory for the one asynchronous operation of a kind that an object has in flight at a time (a
// transfer's read of its upstream socket, say). Asio makes each operation's state with the
// handler's associated allocator; by default that is the thread's recycling cache, whose few
// blocks every stream's operations share, so that with many streams an operation of another size
// finds no block that fits and goes to malloc. An op_allocator bound to the handler
// (`net::bind_allocator(op_allocator<void>(memory), handler)`) makes it in the object's own
// memory, which the handler keeps alive; a second operation while the first is alive, or one
// larger than the memory, falls back to the heap.
#pragma once

#include <cstddef>
#include <new>

namespace tollgate::adapters {

class op_memory {
 public:
  op_memory() = default;
  op_memory(const op_memory&) = delete;
  op_memory& operator=(const op_memory&) = delete;

  void* allocate(std::size_t bytes) {
    if (!used_ && bytes <= sizeof(storage_)) {
      used_ = true;
      return storage_;
    }
    return ::operator new(bytes);
  }
  /// Whether an operation's state is in the memory now.
  bool in_use() const noexcept { return used_; }
  void deallocate(void* p) noexcept {
    if (p == storage_) {
      used_ = false;
    } else {
      ::operator delete(p);
    }
  }

 private:
  alignas(std::max_align_t) unsigned char storage_[320];
  bool used_ = false;
};

template <typename T>
class op_allocator {
 public:
  using value_type = T;
  explicit op_allocator(op_memory& m) noexcept : m_(&m) {}
  template <typename U>
  op_allocator(const op_allocator<U>& other) noexcept : m_(other.m_) {}

  T* allocate(std::size_t n) { return static_cast<T*>(m_->allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) noexcept { m_->deallocate(p); }

  template <typename U>
  bool operator==(const op_allocator<U>& other) const noexcept {
    return m_ == other.m_;
  }

 private:
  template <typename>
  friend class op_allocator;
  op_memory* m_;
};

}  // namespace tollgate::adapters
