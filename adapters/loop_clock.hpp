#pragma once

#include <chrono>

namespace tollgate::adapters {

/// steady_clock, read once for all that one socket read's completion does. A proxied request
/// asks for the time about ten times (its start, its admission, the attempt's plan and start, the
/// call's deadline, the upstream request's send, the answer's first byte, ...), nearly all of them
/// in the two handlers that take the client's request and the upstream's answer; each reading costs
/// 25 to 40 ns (tests/perf/machine_costs.cpp). Inside a scope (edge reads open one around their
/// handler, adapters/edge_read.hpp) the first now() reads the clock and the others return that
/// reading: the time as that handler began its work, which is what each of those uses wants within
/// the microseconds a handler takes. Outside any scope, and on threads that never open one, now()
/// is steady_clock::now().
///
/// Only what runs synchronously inside the scope sees the kept reading: a wait (a timer, another
/// read) ends the handler, and what resumes after it reads the clock anew. Code that waits for the
/// time to pass inside one handler must read steady_clock itself.
class loop_clock {
 public:
  using clock = std::chrono::steady_clock;

  static clock::time_point now() noexcept {
    if (!held_) return clock::now();
    if (!read_) {
      at_ = clock::now();
      read_ = true;
    }
    return at_;
  }

  /// Keeps one reading for what runs until it ends; a nested scope takes its own reading and gives
  /// the outer one back when it ends.
  class scope {
   public:
    scope() noexcept : held_before_(held_), read_before_(read_), at_before_(at_) {
      held_ = true;
      read_ = false;
    }
    ~scope() {
      held_ = held_before_;
      read_ = read_before_;
      at_ = at_before_;
    }
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;

   private:
    bool held_before_;
    bool read_before_;
    clock::time_point at_before_;
  };

 private:
  static constinit inline thread_local bool held_ = false;
  static constinit inline thread_local bool read_ = false;
  static constinit inline thread_local clock::time_point at_{};
};

}  // namespace tollgate::adapters
