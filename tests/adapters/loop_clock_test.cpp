// loop_clock: a live reading outside any scope; one kept reading for all of a scope, however long
// it runs; a nested scope's own reading, with the outer one given back when it ends; and the
// readings of a thread that has no scope open, while another thread holds one.
#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "adapters/loop_clock.hpp"

using tollgate::adapters::loop_clock;
using namespace std::chrono_literals;

TEST_CASE("loop clock: outside a scope every reading is the clock's", "[adapters][loop_clock]") {
  const auto a = loop_clock::now();
  std::this_thread::sleep_for(2ms);
  const auto b = loop_clock::now();
  CHECK(b - a >= 2ms);
  CHECK(loop_clock::now() >= b);
}

TEST_CASE("loop clock: a scope keeps its first reading, and a nested scope takes its own and gives the outer one back",
          "[adapters][loop_clock]") {
  const auto before = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point outer;
  {
    const loop_clock::scope scope;
    std::this_thread::sleep_for(1ms);
    outer = loop_clock::now();  // read here, at the first use, not when the scope opened
    CHECK(outer - before >= 1ms);
    std::this_thread::sleep_for(2ms);
    CHECK(loop_clock::now() == outer);
    {
      const loop_clock::scope inner_scope;
      const auto inner = loop_clock::now();
      CHECK(inner - outer >= 2ms);
      std::this_thread::sleep_for(2ms);
      CHECK(loop_clock::now() == inner);
    }
    CHECK(loop_clock::now() == outer);
    {
      const loop_clock::scope unread;  // ends without a reading: the outer one is still kept
    }
    CHECK(loop_clock::now() == outer);
  }
  std::this_thread::sleep_for(1ms);
  CHECK(loop_clock::now() - outer >= 5ms);  // live again
}

TEST_CASE("loop clock: a scope is its own thread's", "[adapters][loop_clock]") {
  const loop_clock::scope scope;
  const auto kept = loop_clock::now();
  std::chrono::steady_clock::time_point a, b;
  std::thread other([&] {
    a = loop_clock::now();
    std::this_thread::sleep_for(2ms);
    b = loop_clock::now();
  });
  other.join();
  CHECK(b - a >= 2ms);
  CHECK(a >= kept);
  CHECK(loop_clock::now() == kept);
}
