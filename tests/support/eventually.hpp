// Waiting in tests for effects that land on other threads soon after a response.
#pragma once

#include <chrono>
#include <thread>

namespace tollgate::test {

/// Polls cond for up to 6 s; returns its last value.
template <class F>
bool eventually(F cond) {
  for (int i = 0; i < 600; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return cond();
}

}  // namespace tollgate::test
