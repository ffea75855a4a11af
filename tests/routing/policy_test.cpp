#include <catch2/catch.hpp>

#include <map>
#include <string>

#include "routing/health.hpp"
#include "routing/route_table.hpp"

namespace config = tollgate::config;
using namespace tollgate::routing;

namespace {

config::config three_targets(const std::string& strategy, std::vector<unsigned> weights) {
  config::config c;
  for (const char* name : {"a", "b", "c"}) {
    c.backends.push_back({.name = name, .settings = tollgate::config::openai_backend_config{{.base_url = "http://127.0.0.1:1/v1"}}});
  }
  config::route_config r{.model = "m", .strategy = strategy};
  r.targets = {{"a", "", weights[0]}, {"b", "", weights[1]}, {"c", "", weights[2]}};
  c.routes.push_back(r);
  return c;
}

std::string first_choices(const route_table& t, int n, std::uint64_t random = 0) {
  const route* r = t.resolve("m");
  std::string seq;
  std::vector<std::size_t> order;
  for (int i = 0; i < n; ++i) {
    t.plan(*r, 0, pick_context{random}, steady_clock::now(), order);
    seq += r->targets[order.front()].backend;
  }
  return seq;
}

}  // namespace

TEST_CASE("the registry knows the built-in strategies", "[policy]") {
  for (const char* name : {"priority", "weighted", "least_busy", "latency", "cost"}) CHECK(make_policy(name) != nullptr);
  CHECK(make_policy("round-robin-ish") == nullptr);
  CHECK(policy_names().size() == 5);
  route_table t(three_targets("nope", {1, 1, 1}));
  REQUIRE(t.unknown_strategies().size() == 1);
  CHECK(t.unknown_strategies()[0].name == "nope");
}

TEST_CASE("priority keeps config order", "[policy]") {
  route_table t(three_targets("priority", {1, 1, 1}));
  CHECK(first_choices(t, 4) == "aaaa");
}

TEST_CASE("weighted is smooth", "[policy]") {
  route_table t(three_targets("weighted", {5, 1, 1}));
  CHECK(first_choices(t, 14) == "aabacaaaabacaa");
  route_table even(three_targets("weighted", {1, 1, 1}));
  CHECK(first_choices(even, 6) == "abcabc");
}

TEST_CASE("least_busy prefers the target with fewer requests in flight", "[policy]") {
  health_registry health;
  route_table t(three_targets("least_busy", {1, 1, 1}), health, 1);
  health.get("a")->try_begin_request(0);
  health.get("a")->try_begin_request(0);
  health.get("b")->try_begin_request(0);
  // Whatever two it draws, it never puts the busiest first when a less busy one was drawn.
  std::map<std::string, int> firsts;
  for (std::uint64_t r = 0; r < 64; ++r) firsts[first_choices(t, 1, r * 0x9e3779b97f4a7c15ull)]++;
  CHECK(firsts["a"] == 0);
  CHECK(firsts["c"] > firsts["b"]);
}

TEST_CASE("an ejected backend goes last in the plan", "[policy][health]") {
  health_registry health;
  route_table t(three_targets("priority", {1, 1, 1}), health, 1);
  const config::ejection_config eject_at_once{1, std::chrono::seconds(30), std::chrono::minutes(1)};
  health.get("a")->record_failure(steady_clock::now(), eject_at_once);
  std::vector<std::size_t> order;
  t.plan(*t.resolve("m"), 0, {}, steady_clock::now(), order);
  CHECK(order == std::vector<std::size_t>{1, 2, 0});
}

TEST_CASE("ejection: threshold, cooldown, half-open trial, growing cooldown", "[health]") {
  target_health h;
  const config::ejection_config cfg{3, std::chrono::seconds(10), std::chrono::seconds(25)};
  const auto t0 = steady_clock::now();
  h.record_failure(t0, cfg);
  h.record_failure(t0, cfg);
  CHECK(h.admit(t0));
  h.record_failure(t0, cfg);  // third in a row: ejected for 10 s
  CHECK_FALSE(h.admit(t0 + std::chrono::seconds(9)));
  CHECK(h.ejected(t0 + std::chrono::seconds(9)));
  CHECK(h.admit(t0 + std::chrono::seconds(11)));        // the one trial
  CHECK_FALSE(h.admit(t0 + std::chrono::seconds(11)));  // no second one while it runs
  const auto t1 = t0 + std::chrono::seconds(12);
  h.record_failure(t1, cfg);  // trial failed: 20 s this time
  CHECK_FALSE(h.admit(t1 + std::chrono::seconds(19)));
  CHECK(h.admit(t1 + std::chrono::seconds(21)));
  const auto t2 = t1 + std::chrono::seconds(22);
  h.record_failure(t2, cfg);  // 40 s capped at 25 s
  CHECK_FALSE(h.admit(t2 + std::chrono::seconds(24)));
  CHECK(h.admit(t2 + std::chrono::seconds(26)));
  h.record_success();  // trial passed: closed again
  CHECK_FALSE(h.ejected(t2 + std::chrono::seconds(26)));
  CHECK(h.admit(t2 + std::chrono::seconds(26)));
  CHECK(h.consecutive_failures() == 0);
  CHECK(h.ejections() == 0);
}

TEST_CASE("an abandoned trial frees the slot", "[health]") {
  target_health h;
  const config::ejection_config cfg{1, std::chrono::seconds(1), std::chrono::seconds(1)};
  const auto t0 = steady_clock::now();
  h.record_failure(t0, cfg);
  CHECK(h.admit(t0 + std::chrono::seconds(2)));
  CHECK_FALSE(h.admit(t0 + std::chrono::seconds(2)));
  h.record_abandoned();
  CHECK(h.admit(t0 + std::chrono::seconds(2)));
}

TEST_CASE("ejection can be turned off", "[health]") {
  target_health h;
  const config::ejection_config off{0, std::chrono::seconds(1), std::chrono::seconds(1)};
  for (int i = 0; i < 100; ++i) h.record_failure(steady_clock::now(), off);
  CHECK(h.admit(steady_clock::now()));
}

TEST_CASE("concurrency slots and the wait queue", "[health]") {
  using wr = target_health::wait_result;
  target_health h;
  CHECK(h.try_begin_request(2));
  CHECK(h.try_begin_request(2));
  CHECK_FALSE(h.try_begin_request(2));
  int woken = 0;
  auto waiter = [&](int add) {
    auto w = std::make_shared<target_health::waiter>();
    w->wake = [&woken, add] { woken += add; };
    w->since = steady_clock::now();
    return w;
  };
  auto w1 = waiter(1), w2 = waiter(10), w3 = waiter(100);
  CHECK(h.wait_for_slot(w1, 2, 2, {}) == wr::queued);
  CHECK(h.wait_for_slot(w2, 2, 2, {}) == wr::queued);
  CHECK(h.wait_for_slot(w3, 2, 2, {}) == wr::shed);  // the queue is bounded
  h.end_request();  // hands the slot to the longest waiter only
  CHECK(woken == 1);
  CHECK(h.finish_wait(w1) == wr::granted);
  CHECK(h.in_flight() == 2);
  CHECK_FALSE(h.try_begin_request(2));  // the slot went to w1, not to a newcomer
  CHECK(h.finish_wait(w2) == wr::shed);  // w2 gave up and left the queue
  h.end_request();
  CHECK(woken == 1);  // nobody to wake
  CHECK(h.waiting() == 0);
  CHECK(h.in_flight() == 1);
}

TEST_CASE("cost puts the cheapest target first", "[policy]") {
  auto c = three_targets("cost", {1, 1, 1});
  c.routes[0].targets[0].price = {4.0, 1.0, 16.0};  // 20 per million in + out
  c.routes[0].targets[1].price = {1.0, 0.5, 2.0};   // 3
  c.routes[0].targets[2].price = {2.0, 0.5, 8.0};   // 10
  route_table t(c);
  std::vector<std::size_t> order;
  t.plan(*t.resolve("m"), 0, {}, steady_clock::now(), order);
  CHECK(order == std::vector<std::size_t>{1, 2, 0});
}

TEST_CASE("latency tries unmeasured targets, then the fastest", "[policy]") {
  health_registry health;
  route_table t(three_targets("latency", {1, 1, 1}), health, 1);
  health.get("a")->record_first_byte(std::chrono::microseconds(900));
  health.get("b")->record_first_byte(std::chrono::microseconds(300));
  std::vector<std::size_t> order;
  t.plan(*t.resolve("m"), 0, {}, steady_clock::now(), order);
  CHECK(order == std::vector<std::size_t>{2, 1, 0});
  health.get("c")->record_first_byte(std::chrono::microseconds(2000));
  for (int i = 0; i < 10; ++i) health.get("a")->record_first_byte(std::chrono::microseconds(100));
  t.plan(*t.resolve("m"), 0, {}, steady_clock::now(), order);
  CHECK(order == std::vector<std::size_t>{0, 1, 2});  // a got faster: the average follows
}
