// An allocator that keeps the blocks it is given back, on the thread that gives them back, for
// that thread's next allocation of the same type. For objects made and dropped once a request
// that are larger than glibc's per-thread cache takes (1,032 bytes: a transfer is about 2.2 KB),
// whose malloc and free otherwise go through the arena's bins, their lock and their
// consolidation (tests/perf/README.md, "A transfer's memory kept by its thread").
//
// `std::allocate_shared<T>(kept_blocks<T>{}, ...)`: the allocator is rebound to the shared
// state's type, whose blocks are then kept; at most `Kept` a thread, the rest freed as usual.
// Blocks kept by a thread are freed when it ends.
#pragma once

#include <array>
#include <cstddef>
#include <memory>

namespace tollgate::adapters {

template <class T, std::size_t Kept = 32>
class kept_blocks {
 public:
  using value_type = T;
  template <class U>
  struct rebind {
    using other = kept_blocks<U, Kept>;
  };

  kept_blocks() noexcept = default;
  template <class U>
  kept_blocks(const kept_blocks<U, Kept>&) noexcept {}  // NOLINT(google-explicit-constructor): rebinding

  T* allocate(std::size_t n) {
    if (n == 1) {
      if (T* p = shelf().take(); p != nullptr) return p;
    }
    return std::allocator<T>{}.allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (n == 1 && shelf().put(p)) return;
    std::allocator<T>{}.deallocate(p, n);
  }

  /// Blocks this thread keeps now (for tests).
  static std::size_t kept() noexcept { return shelf().count; }

  template <class U>
  bool operator==(const kept_blocks<U, Kept>&) const noexcept {
    return true;
  }

 private:
  struct kept_list {
    std::array<T*, Kept> blocks{};
    std::size_t count = 0;

    T* take() noexcept { return count == 0 ? nullptr : blocks[--count]; }
    bool put(T* p) noexcept {
      if (count == Kept) return false;
      blocks[count++] = p;
      return true;
    }
    kept_list() = default;
    kept_list(const kept_list&) = delete;
    kept_list& operator=(const kept_list&) = delete;
    ~kept_list() {
      while (count > 0) std::allocator<T>{}.deallocate(blocks[--count], 1);
    }
  };

  static kept_list& shelf() noexcept {
    thread_local kept_list list;
    return list;
  }
};

}  // namespace tollgate::adapters
