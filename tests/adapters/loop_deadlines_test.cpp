// loop_deadlines: the calls' deadlines on one timer. Each entry fires once its deadline has passed
// (never before), in deadline order across lanes; an entry taken off, or destroyed, never fires;
// the timer, armed for a deadline taken off, is armed again for the next one.
#include <catch2/catch.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "adapters/loop_deadlines.hpp"

using namespace tollgate::adapters;
namespace net = boost::asio;
using namespace std::chrono_literals;
using clock_type = loop_deadlines::clock;

namespace {

/// An entry that notes when and in which order it fired, and may run something then.
struct noting final : loop_deadlines::entry {
  noting(std::string n, std::vector<std::string>& log) : name(std::move(n)), log_(log) {}
  void on_deadline() override {
    fired_at = clock_type::now();
    log_.push_back(name);
    if (then) then();
  }
  std::string name;
  std::optional<clock_type::time_point> fired_at;
  std::function<void()> then;

 private:
  std::vector<std::string>& log_;
};

/// A loop, its deadlines and the order entries fired in.
struct loop_fixture {
  net::io_context io;
  loop_deadlines list{io};
  std::vector<std::string> log;

  /// Runs the loop until nothing is left to do, or 2 s (a deadline that never fires ends the run
  /// there instead of hanging).
  void run() { io.run_for(2s); }
};

}  // namespace

TEST_CASE_METHOD(loop_fixture, "loop deadlines: entries fire in deadline order across lanes, never early",
                 "[adapters][loop_deadlines]") {
  noting a("a", log), b("b", log), c("c", log), d("d", log);
  const auto start = clock_type::now();
  list.set(a, 60ms);
  list.set(b, 20ms);
  list.set(c, 40ms);
  list.set(d, 20ms);  // b's lane, after b
  CHECK(a.set());
  run();
  CHECK(log == std::vector<std::string>{"b", "d", "c", "a"});
  REQUIRE(a.fired_at);
  REQUIRE(b.fired_at);
  REQUIRE(c.fired_at);
  CHECK(*b.fired_at - start >= 20ms);
  CHECK(*c.fired_at - start >= 40ms);
  CHECK(*a.fired_at - start >= 60ms);
  CHECK_FALSE(a.set());  // taken off before it fired
}

TEST_CASE_METHOD(loop_fixture,
                 "loop deadlines: a deadline taken off or an entry destroyed never fires, and the next one does",
                 "[adapters][loop_deadlines]") {
  noting first("first", log), later("later", log);
  auto gone = std::make_unique<noting>("gone", log);
  list.set(first, 10ms);  // the timer is armed for this one
  list.set(*gone, 15ms);
  list.set(later, 30ms);
  list.cancel(first);
  gone.reset();
  list.cancel(first);  // again: nothing
  const auto start = clock_type::now();
  run();
  CHECK(log == std::vector<std::string>{"later"});
  REQUIRE(later.fired_at);
  CHECK(*later.fired_at - start >= 25ms);
}

TEST_CASE_METHOD(loop_fixture, "loop deadlines: setting again moves the deadline, in either direction",
                 "[adapters][loop_deadlines]") {
  noting x("x", log), y("y", log);
  const auto start = clock_type::now();
  list.set(x, 10ms);
  list.set(y, 40ms);
  list.set(x, 80ms);  // later than y now
  list.set_at(y, start + 20ms, 40ms);  // earlier, in its lane
  run();
  CHECK(log == std::vector<std::string>{"y", "x"});
  REQUIRE(x.fired_at);
  CHECK(*x.fired_at - start >= 80ms);
}

TEST_CASE_METHOD(loop_fixture, "loop deadlines: a lane set out of order keeps its deadlines in order",
                 "[adapters][loop_deadlines]") {
  std::vector<std::unique_ptr<noting>> entries;
  const auto start = clock_type::now();
  for (int ms : {50, 10, 30, 20, 40, 10}) {
    entries.push_back(std::make_unique<noting>(std::to_string(ms), log));
    list.set_at(*entries.back(), start + std::chrono::milliseconds(ms), 100ms);  // all in one lane
  }
  run();
  CHECK(log == std::vector<std::string>{"10", "10", "20", "30", "40", "50"});
}

TEST_CASE_METHOD(loop_fixture, "loop deadlines: an entry's on_deadline may set deadlines and take others off",
                 "[adapters][loop_deadlines]") {
  noting first("first", log), victim("victim", log), again("again", log);
  int times = 0;
  again.then = [&] {
    if (++times < 3) list.set(again, 5ms);  // itself, from its own deadline
  };
  first.then = [&] {
    list.cancel(victim);  // due at the same moment: taken off before its turn
    list.set(again, 5ms);
  };
  list.set_at(first, clock_type::now() + 10ms, 10ms);
  list.set_at(victim, first.at(), 10ms);
  run();
  CHECK(log == std::vector<std::string>{"first", "again", "again", "again"});
}

TEST_CASE_METHOD(loop_fixture, "loop deadlines: new durations reuse empty lanes, so reloads do not grow the lists",
                 "[adapters][loop_deadlines]") {
  noting a("a", log), b("b", log);
  for (int ms = 100; ms < 200; ++ms) {  // a hundred timeouts, one in use at a time
    list.set(a, std::chrono::milliseconds(ms));
    list.cancel(a);
  }
  CHECK(list.lanes() == 1);
  list.set(a, 300ms);
  list.set(b, 5ms);  // a second duration while the first is in use
  CHECK(list.lanes() == 2);
  list.cancel(a);
  run();
  CHECK(log == std::vector<std::string>{"b"});
}

TEST_CASE("loop deadlines: after shutdown nothing is kept, and entries go safely", "[adapters][loop_deadlines]") {
  std::vector<std::string> log;
  noting outlives("outlives", log);
  {
    net::io_context io;
    loop_deadlines list(io);
    noting before("before", log);
    list.set(before, 10ms);
    list.set(outlives, 10ms);
    list.shutdown();
    noting after("after", log);
    list.set(after, 1ms);
    CHECK_FALSE(after.set());
    io.run_for(100ms);
  }  // the list goes before `outlives`: it forgets it
  CHECK(log.empty());
  CHECK_FALSE(outlives.set());
}
