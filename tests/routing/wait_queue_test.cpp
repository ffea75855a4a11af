// A backend's max_concurrency queue by priority: higher first, first come first served within a
// priority, aging against starvation, and shedding from the bottom when it is full.
#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include "routing/health.hpp"

using namespace tollgate::routing;
using namespace std::chrono_literals;
using wr = target_health::wait_result;

namespace {

struct queue_probe {
  target_health h;
  std::vector<std::string> woken;  ///< names, in the order they were woken

  std::shared_ptr<target_health::waiter> waiter(std::string name, int priority, steady_clock::duration waited = {}) {
    auto w = std::make_shared<target_health::waiter>();
    w->wake = [this, name] { woken.push_back(name); };
    w->priority = priority;
    w->since = steady_clock::now() - waited;
    return w;
  }
};

}  // namespace

TEST_CASE("the queue serves the highest priority first, first come first served within one", "[health][priority]") {
  queue_probe q;
  REQUIRE(q.h.try_begin_request(1));
  auto low1 = q.waiter("low1", 0), low2 = q.waiter("low2", 0), high1 = q.waiter("high1", 2),
       normal = q.waiter("normal", 1), high2 = q.waiter("high2", 2);
  for (const auto& w : {low1, low2, high1, normal, high2}) REQUIRE(q.h.wait_for_slot(w, 10, 1, {}) == wr::queued);
  CHECK(q.h.waiting_by_priority()[0] == 2);
  CHECK(q.h.waiting_by_priority()[2] == 2);
  for (int i = 0; i < 5; ++i) q.h.end_request();  // each end hands its slot to the next waiter
  CHECK(q.woken == std::vector<std::string>{"high1", "high2", "normal", "low1", "low2"});
  CHECK(q.h.in_flight() == 1);
  CHECK(q.h.waiting() == 0);
}

TEST_CASE("aging ranks a long waiter above newer higher priority ones", "[health][priority]") {
  queue_probe q;
  REQUIRE(q.h.try_begin_request(1));
  // Aging 1 s: a low waiter that waited 2.5 s ranks 2, as high as a fresh high one, and came first.
  auto old_low = q.waiter("old_low", 0, 2500ms);
  auto high = q.waiter("high", 2);
  auto young_low = q.waiter("young_low", 0, 1500ms);  // ranks 1: below the high one
  REQUIRE(q.h.wait_for_slot(old_low, 10, 1, 1s) == wr::queued);
  REQUIRE(q.h.wait_for_slot(high, 10, 1, 1s) == wr::queued);
  REQUIRE(q.h.wait_for_slot(young_low, 10, 1, 1s) == wr::queued);
  for (int i = 0; i < 3; ++i) q.h.end_request();
  CHECK(q.woken == std::vector<std::string>{"old_low", "high", "young_low"});
  SECTION("without aging, priority alone decides") {
    queue_probe p;
    REQUIRE(p.h.try_begin_request(1));
    auto a = p.waiter("old_low", 0, 2500ms), b = p.waiter("high", 2);
    REQUIRE(p.h.wait_for_slot(a, 10, 1, {}) == wr::queued);
    REQUIRE(p.h.wait_for_slot(b, 10, 1, {}) == wr::queued);
    p.h.end_request();
    CHECK(p.woken == std::vector<std::string>{"high"});
  }
}

TEST_CASE("a full queue sheds its oldest lowest waiter for a higher newcomer, never the reverse", "[health][priority]") {
  queue_probe q;
  REQUIRE(q.h.try_begin_request(1));
  auto low1 = q.waiter("low1", 0), low2 = q.waiter("low2", 0), normal = q.waiter("normal", 1);
  REQUIRE(q.h.wait_for_slot(low1, 3, 1, {}) == wr::queued);
  REQUIRE(q.h.wait_for_slot(normal, 3, 1, {}) == wr::queued);
  REQUIRE(q.h.wait_for_slot(low2, 3, 1, {}) == wr::queued);
  // Full: a high newcomer displaces the oldest of the lowest priority.
  auto high = q.waiter("high", 2);
  CHECK(q.h.wait_for_slot(high, 3, 1, {}) == wr::queued);
  CHECK(q.woken == std::vector<std::string>{"low1"});
  CHECK(q.h.finish_wait(low1) == wr::shed);
  // A low newcomer displaces nobody: no waiter is below it.
  auto late_low = q.waiter("late_low", 0);
  CHECK(q.h.wait_for_slot(late_low, 3, 1, {}) == wr::shed);
  CHECK(q.woken == std::vector<std::string>{"low1"});
  // Nor does a normal one displace the normal waiter: only lower priorities go.
  auto late_normal = q.waiter("late_normal", 1);
  CHECK(q.h.wait_for_slot(late_normal, 3, 1, {}) == wr::queued);
  CHECK(q.woken == std::vector<std::string>{"low1", "low2"});
  CHECK(q.h.waiting() == 3);
  q.h.end_request();
  CHECK(q.woken.back() == "high");
  CHECK(q.h.finish_wait(high) == wr::granted);
}

TEST_CASE("a free slot is granted at once, and a waiter that gives up leaves the queue", "[health][priority]") {
  queue_probe q;
  auto first = q.waiter("first", 1);
  CHECK(q.h.wait_for_slot(first, 10, 1, {}) == wr::granted);
  CHECK(q.h.in_flight() == 1);
  auto second = q.waiter("second", 1);
  CHECK(q.h.wait_for_slot(second, 10, 1, {}) == wr::queued);
  CHECK(q.h.finish_wait(second) == wr::shed);  // its max wait passed
  q.h.end_request();
  CHECK(q.woken.empty());
  CHECK(q.h.in_flight() == 0);
  CHECK(q.h.waiting() == 0);
}
