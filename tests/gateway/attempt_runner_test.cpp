// The attempt runner without a network: scripted backend calls on a fake clock. Each call's events
// come at set offsets from its start; waiting (backoff, hedging) moves the clock instead of
// sleeping, so every rule of retries, Retry-After, failover, fallbacks and hedging runs in
// microseconds and the same way every time.
#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <deque>
#include <map>
#include <stdexcept>

#include "gateway/proxy/attempt_runner.hpp"
#include "routing/route_table.hpp"

namespace config = tollgate::config;
namespace routing = tollgate::routing;
namespace adapters = tollgate::adapters;
namespace net = boost::asio;
using namespace std::chrono_literals;
using tollgate::gateway::attempt_env;
using tollgate::gateway::attempt_runner;
using tollgate::gateway::attempt_sink;
using tollgate::gateway::attempts_result;
using tollgate::gateway::buffered_response;
using tollgate::gateway::client_watch;
using tollgate::gateway::delivery;
using tollgate::gateway::steady_clock;
using event = adapters::call_event;
using ending = attempts_result::end;

namespace {

struct fake_clock {
  steady_clock::time_point now = steady_clock::time_point{} + 1h;
};

/// One event of a scripted call and when (after the call starts) it is there.
struct step {
  steady_clock::duration at;
  event ev;
};
using script = std::vector<step>;

event head_event(int status, std::vector<std::pair<std::string, std::string>> headers) {
  event e;
  e.type = event::kind::head;
  e.head.status = status;
  e.head.headers = std::move(headers);
  return e;
}
event data_event(std::string data) {
  event e;
  e.type = event::kind::data;
  e.data = std::move(data);
  return e;
}
event end_event() { return event{}; }
event failed_event(adapters::failure f, std::string message) {
  event e;
  e.type = event::kind::failed;
  e.error = f;
  e.message = std::move(message);
  return e;
}

/// A whole JSON answer whose head (and body) come at `at`.
script answer(int status, std::string body, steady_clock::duration at = 0ms,
              std::vector<std::pair<std::string, std::string>> headers = {}) {
  headers.emplace_back("content-type", "application/json");
  return {{at, head_event(status, std::move(headers))}, {at, data_event(std::move(body))}, {at, end_event()}};
}
script fails(adapters::failure f, std::string message, steady_clock::duration at = 0ms) {
  return {{at, failed_event(f, std::move(message))}};
}

/// What happened to the calls the runner started.
struct call_log {
  std::vector<std::string> started;    ///< backends, in order
  std::vector<std::string> destroyed;  ///< backends whose call ended (destroyed), in order
  std::vector<std::string> cancelled;  ///< backends whose call was cancelled
};

class fake_call final : public adapters::call {
 public:
  fake_call(fake_clock& clock, std::string backend, script s, call_log& log)
      : clock_(clock), backend_(std::move(backend)), steps_(std::move(s)), started_(clock.now), log_(log) {}
  ~fake_call() override { log_.destroyed.push_back(backend_); }

  net::awaitable<event> next() override {
    if (cancelled_) co_return failed_event(adapters::failure::cancelled, "cancelled");
    if (i_ >= steps_.size()) co_return steps_.back().ev;
    const step& s = steps_[i_++];
    if (clock_.now < started_ + s.at) clock_.now = started_ + s.at;  // waiting for it
    co_return s.ev;
  }
  void cancel() override {
    cancelled_ = true;
    log_.cancelled.push_back(backend_);
  }
  bool ready() const override { return cancelled_ || i_ >= steps_.size() || clock_.now >= next_at(); }
  void on_ready(std::function<void()>) override {}
  steady_clock::time_point next_at() const {
    return i_ < steps_.size() ? started_ + steps_[i_].at : steady_clock::time_point::min();
  }

 private:
  fake_clock& clock_;
  std::string backend_;
  script steps_;
  std::size_t i_ = 0;
  steady_clock::time_point started_;
  call_log& log_;
  bool cancelled_ = false;
};

/// The runner's world: the fake clock, the real route table's plan, scripted calls per backend.
class fake_env final : public attempt_env {
 public:
  fake_env(fake_clock& clock, const routing::route_table& table) : clock_(clock), table_(table) {}

  std::map<std::string, std::deque<script>> scripts;  ///< the calls each backend will make, in order
  call_log log;
  std::vector<steady_clock::duration> sleeps;
  std::uint64_t random_value = 0;
  bool slot_frees = false;    ///< wait_for_slot: a slot frees before queue_timeout
  bool client_leaves = false; ///< the client closes its connection during the first watched call
  unsigned watches = 0;
  unsigned unwatched = 0;

  steady_clock::time_point now() override { return clock_.now; }
  std::uint64_t random() override { return random_value; }
  void plan(const routing::route& r, steady_clock::time_point now, std::vector<std::size_t>& out) override {
    table_.plan(r, 0, routing::pick_context{0}, now, out);
  }
  std::unique_ptr<adapters::call> start(const routing::target& t) override {
    auto& queue = scripts[t.backend];
    if (queue.empty()) throw std::logic_error("no scripted call left for " + t.backend);
    script s = std::move(queue.front());
    queue.pop_front();
    log.started.push_back(t.backend);
    return std::make_unique<fake_call>(clock_, t.backend, std::move(s), log);
  }
  net::awaitable<void> sleep(steady_clock::duration d) override {
    sleeps.push_back(d);
    clock_.now += d;
    co_return;
  }
  net::awaitable<bool> wait_ready(adapters::call& a, adapters::call* b, steady_clock::duration timeout) override {
    auto first = static_cast<fake_call&>(a).next_at();
    if (b != nullptr) first = std::min(first, static_cast<fake_call*>(b)->next_at());
    const auto deadline = clock_.now + timeout;
    if (first <= deadline) {
      clock_.now = std::max(clock_.now, first);
      co_return true;
    }
    clock_.now = deadline;
    co_return false;
  }
  net::awaitable<bool> wait_for_slot(const routing::target& t) override {
    if (!slot_frees) {
      clock_.now += t.queue_timeout;
      co_return false;
    }
    t.health->end_request();  // another request ends...
    co_return t.health->try_begin_request(t.max_concurrency);  // ...and this one takes its slot
  }
  std::shared_ptr<client_watch> watch(adapters::call& call, bool) override {
    auto w = std::make_shared<client_watch>();
    w->active = &call;
    if (client_leaves && watches++ == 0) {
      w->gone = true;
      call.cancel();
    }
    return w;
  }
  void unwatch(const std::shared_ptr<client_watch>& w) override {
    if (!w->done) ++unwatched;
    w->done = true;
  }

 private:
  fake_clock& clock_;
  const routing::route_table& table_;
};

/// The client: records what reached it.
class fake_sink final : public attempt_sink {
 public:
  std::vector<std::string> relayed;  ///< backends whose answer was read, in order
  std::vector<std::pair<std::string, std::string>> ended;  ///< backend, outcome label
  std::optional<buffered_response> whole;
  std::string streamed;
  bool throw_on_deliver = false;

  void on_attempt(const routing::target& t) override { relayed.push_back(t.backend); }
  net::awaitable<delivery> deliver_stream(adapters::call& call, const adapters::response_head&) override {
    for (;;) {
      event ev = co_await call.next();
      if (ev.type == event::kind::data) streamed += ev.data;
      if (ev.type == event::kind::end) co_return delivery{true, true, false};
      if (ev.type == event::kind::failed) co_return delivery{true, true, true};
    }
  }
  bool deliver_whole(buffered_response& res, bool& keep) override {
    if (throw_on_deliver) throw std::runtime_error("the client's write failed badly");
    whole = std::move(res);
    keep = true;
    return true;
  }
  net::awaitable<bool> deliver_whole_rest() override { co_return true; }
  void on_attempt_end(const routing::target& t, const char* outcome, double) override {
    ended.emplace_back(t.backend, outcome);
  }
};

/// Backends a, b and c; routes "main" (a, b), "solo" (a), "rescue" (c), "wide" (a, b, c).
config::config make_config() {
  config::config c;
  for (const char* name : {"a", "b", "c"}) {
    config::backend_config b;
    b.name = name;
    b.remote()->base_url = std::string("http://127.0.0.1:1/") + name;
    b.timeouts.first_token = 2s;
    b.timeouts.total = 30s;
    b.ejection.after_failures = 2;
    c.backends.push_back(b);
  }
  c.routes.push_back({.model = "main", .targets = {{"a", ""}, {"b", ""}}});
  c.routes.push_back({.model = "solo", .targets = {{"a", ""}}});
  c.routes.push_back({.model = "rescue", .targets = {{"c", ""}}});
  c.routes.push_back({.model = "wide", .targets = {{"a", ""}, {"b", ""}, {"c", ""}}});
  return c;
}

struct world {
  explicit world(config::config c) : cfg(std::move(c)), table(cfg), env(clock, table) {}
  config::config cfg;
  routing::route_table table;
  fake_clock clock;
  fake_env env;
  fake_sink sink;
  std::vector<std::size_t> order;
  steady_clock::time_point t0 = clock.now;

  const routing::route& route(const std::string& name) { return *table.resolve(name); }
  routing::target_health& health(const std::string& model, std::size_t i) { return *route(model).targets[i].health; }

  attempts_result run(const std::string& model, bool stream = false) {
    net::io_context io;
    attempts_result out;
    attempt_runner runner(env, sink, order);
    net::co_spawn(io, runner.run(route(model), t0, stream, out), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    io.run();
    return out;
  }
};

}  // namespace

TEST_CASE("attempt runner: a broken attempt fails over to the next target after a jittered backoff",
          "[attempt_runner]") {
  world w(make_config());
  w.env.scripts["a"].push_back(fails(adapters::failure::connect, "connection refused"));
  w.env.scripts["b"].push_back(answer(200, R"({"ok":true})", 30ms));
  w.env.random_value = 57;  // full jitter over [0, backoff 100 ms]: 57 ms
  const auto r = w.run("main");
  CHECK(r.how == ending::answered);
  CHECK(r.keep_alive);
  CHECK(w.env.log.started == std::vector<std::string>{"a", "b"});
  CHECK(w.env.sleeps == std::vector<steady_clock::duration>{57ms});
  REQUIRE(w.sink.whole);
  CHECK(w.sink.whole->status == 200);
  CHECK(w.sink.whole->body == R"({"ok":true})");
  REQUIRE(r.failures.size() == 1);
  CHECK(r.failures[0].backend == "a");
  CHECK(r.failures[0].error == adapters::failure::connect);
  CHECK(r.failures[0].message == "connection refused");
  CHECK(r.attempts == 2);
  CHECK(r.target == &w.route("main").targets[1]);
  CHECK(r.first_byte == Approx(0.030));
  CHECK(w.sink.ended == std::vector<std::pair<std::string, std::string>>{{"a", "failed"}, {"b", "ok"}});
  CHECK(w.health("main", 0).consecutive_failures() == 1);
  CHECK(w.health("main", 0).in_flight() == 0);
  CHECK(w.health("main", 1).in_flight() == 0);
  CHECK(w.env.unwatched == 2);
}

TEST_CASE("attempt runner: Retry-After sets the least wait before the next attempt", "[attempt_runner]") {
  auto cfg = make_config();
  cfg.routes[1].retry.attempts = 2;  // solo: a, twice
  world w(std::move(cfg));
  w.env.scripts["a"].push_back(answer(429, R"({"error":{"message":"slow down"}})", 0ms, {{"retry-after", "2"}}));
  w.env.scripts["a"].push_back(answer(200, "{}"));
  w.env.random_value = 10;
  const auto r = w.run("solo");
  CHECK(r.how == ending::answered);
  CHECK(w.env.sleeps == std::vector<steady_clock::duration>{2000ms});
  REQUIRE(r.failures.size() == 1);
  CHECK(r.failures[0].status == 429);
  CHECK(w.sink.ended == std::vector<std::pair<std::string, std::string>>{{"a", "error_status"}, {"a", "ok"}});
}

TEST_CASE("attempt runner: the backoff doubles per attempt up to max_backoff", "[attempt_runner]") {
  auto cfg = make_config();
  cfg.routes[1].retry = {.attempts = 5, .backoff = 100ms, .max_backoff = 250ms};
  world w(std::move(cfg));
  for (int i = 0; i < 4; ++i) w.env.scripts["a"].push_back(answer(503, "busy"));
  w.env.scripts["a"].push_back(answer(200, "{}"));
  w.env.random_value = 1000;  // caps 100, 200, 250, 250: 1000 % (cap + 1)
  const auto r = w.run("solo");
  CHECK(r.how == ending::answered);
  CHECK(w.env.sleeps == std::vector<steady_clock::duration>{1000ms % 101, 1000ms % 201, 1000ms % 251, 1000ms % 251});
  CHECK(r.failures.size() == 4);
}

TEST_CASE("attempt runner: a retry that would pass the deadline is not made and the last answer stands",
          "[attempt_runner]") {
  auto cfg = make_config();
  cfg.routes[1].retry.attempts = 3;
  world w(std::move(cfg));  // deadline: the backends' total timeout, 30 s
  w.env.scripts["a"].push_back(answer(429, "try later", 0ms, {{"retry-after", "60"}}));
  const auto r = w.run("solo");
  CHECK(r.how == ending::exhausted);
  CHECK(w.env.log.started.size() == 1);
  CHECK(w.env.sleeps.empty());
  REQUIRE(r.last_response);
  CHECK(r.last_response->status == 429);
  CHECK(r.last_response->body == "try later");
  CHECK(r.last_response->headers == std::vector<std::pair<std::string, std::string>>{{"retry-after", "60"}});
  CHECK_FALSE(r.last_failure);
  CHECK(w.health("solo", 0).in_flight() == 0);
}

TEST_CASE("attempt runner: when every attempt fails, each failure is kept and the last is reported",
          "[attempt_runner]") {
  world w(make_config());
  w.env.scripts["a"].push_back(fails(adapters::failure::connect, "refused"));
  w.env.scripts["b"].push_back(answer(502, "bad gateway"));
  w.env.scripts["c"].push_back(fails(adapters::failure::timeout, "no first token in 2s", 2s));
  const auto r = w.run("wide");
  CHECK(r.how == ending::exhausted);
  REQUIRE(r.failures.size() == 3);
  CHECK(r.failures[0].backend == "a");
  CHECK(r.failures[1].backend == "b");
  CHECK(r.failures[1].status == 502);
  CHECK(r.failures[2].backend == "c");
  CHECK(r.failures[2].error == adapters::failure::timeout);
  REQUIRE(r.last_failure);
  CHECK(r.last_failure->message == "no first token in 2s");
  CHECK_FALSE(r.last_response);  // the last attempt broke: its failure, not b's answer, is reported
  CHECK(r.attempts == 3);
  CHECK(w.sink.relayed == std::vector<std::string>{"a", "b", "c"});
  CHECK_FALSE(w.sink.whole);
}

TEST_CASE("attempt runner: an exhausted route moves to its fallbacks", "[attempt_runner]") {
  auto cfg = make_config();
  cfg.routes[1].fallbacks = {"rescue"};
  world w(std::move(cfg));
  w.env.scripts["a"].push_back(answer(500, "oops"));
  w.env.scripts["c"].push_back(answer(200, R"({"from":"c"})"));
  const auto r = w.run("solo");
  CHECK(r.how == ending::answered);
  CHECK(w.env.log.started == std::vector<std::string>{"a", "c"});
  REQUIRE(w.sink.whole);
  CHECK(w.sink.whole->body == R"({"from":"c"})");
  CHECK(r.failures.size() == 1);
}

TEST_CASE("attempt runner: context_length_exceeded switches to the context fallbacks, not the other targets",
          "[attempt_runner]") {
  auto cfg = make_config();
  cfg.routes[0].context_fallbacks = {"rescue"};
  world w(std::move(cfg));
  w.env.scripts["a"].push_back(answer(400, R"({"error":{"code":"context_length_exceeded"}})"));
  w.env.scripts["c"].push_back(answer(200, "{}"));
  const auto r = w.run("main");
  CHECK(r.how == ending::answered);
  CHECK(w.env.log.started == std::vector<std::string>{"a", "c"});  // b, main's other target, is skipped
  CHECK(w.health("main", 0).consecutive_failures() == 0);  // the backend is fine; the prompt is long
}

TEST_CASE("attempt runner: context_length_exceeded without context fallbacks is the client's answer",
          "[attempt_runner]") {
  world w(make_config());
  w.env.scripts["a"].push_back(answer(400, R"({"error":{"code":"context_length_exceeded"}})"));
  const auto r = w.run("solo");
  CHECK(r.how == ending::exhausted);
  REQUIRE(r.last_response);
  CHECK(r.last_response->status == 400);
}

TEST_CASE("attempt runner: a non-retryable error status is relayed at once", "[attempt_runner]") {
  world w(make_config());
  w.env.scripts["a"].push_back(answer(401, "bad upstream key"));
  const auto r = w.run("main");
  CHECK(r.how == ending::answered);
  CHECK(w.env.log.started == std::vector<std::string>{"a"});
  REQUIRE(w.sink.whole);
  CHECK(w.sink.whole->status == 401);
}

TEST_CASE("attempt runner: an encoded answer fails the attempt over", "[attempt_runner]") {
  world w(make_config());
  w.env.scripts["a"].push_back(answer(200, "gzip bytes", 0ms, {{"content-encoding", "gzip"}}));
  w.env.scripts["b"].push_back(answer(200, "{}"));
  const auto r = w.run("main");
  CHECK(r.how == ending::answered);
  REQUIRE(r.failures.size() == 1);
  CHECK(r.failures[0].message == "upstream answered with Content-Encoding gzip (identity was asked for)");
}

TEST_CASE("attempt runner: hedging sends a second attempt when the first is slow and the faster one wins",
          "[attempt_runner]") {
  auto cfg = make_config();
  cfg.routes[0].hedge_after = 100ms;
  world w(std::move(cfg));
  w.env.scripts["a"].push_back(answer(200, R"({"from":"a"})", 1500ms));
  w.env.scripts["b"].push_back(answer(200, R"({"from":"b"})", 50ms));
  const auto r = w.run("main");
  CHECK(r.how == ending::answered);
  CHECK(w.env.log.started == std::vector<std::string>{"a", "b"});
  CHECK(w.env.log.destroyed.front() == "a");  // the slower one, cancelled before b is read
  REQUIRE(w.sink.whole);
  CHECK(w.sink.whole->body == R"({"from":"b"})");
  CHECK(w.sink.relayed == std::vector<std::string>{"b"});
  CHECK(r.attempts == 2);
  CHECK(w.env.sleeps.empty());  // a hedge is not a retry: no backoff
  CHECK(w.clock.now - w.t0 == 150ms);
  CHECK(w.health("main", 0).in_flight() == 0);
  CHECK(w.health("main", 1).in_flight() == 0);
  CHECK(w.env.unwatched == 2);  // a's watch moved to b, then b's ended
}

TEST_CASE("attempt runner: hedging keeps the first attempt when it answers first", "[attempt_runner]") {
  auto cfg = make_config();
  cfg.routes[0].hedge_after = 100ms;
  world w(std::move(cfg));
  w.env.scripts["a"].push_back(answer(200, R"({"from":"a"})", 120ms));
  w.env.scripts["b"].push_back(answer(200, R"({"from":"b"})", 500ms));
  const auto r = w.run("main");
  CHECK(r.how == ending::answered);
  CHECK(w.sink.whole->body == R"({"from":"a"})");
  CHECK(w.env.log.destroyed.front() == "b");
  CHECK(w.clock.now - w.t0 == 120ms);
}

TEST_CASE("attempt runner: no hedge when the first attempt answers in time, or with one target",
          "[attempt_runner]") {
  auto cfg = make_config();
  cfg.routes[0].hedge_after = 100ms;
  cfg.routes[1].hedge_after = 100ms;
  world w(std::move(cfg));
  w.env.scripts["a"].push_back(answer(200, "{}", 80ms));
  CHECK(w.run("main").how == ending::answered);
  CHECK(w.env.log.started == std::vector<std::string>{"a"});
  w.env.scripts["a"].push_back(answer(200, "{}", 900ms));
  CHECK(w.run("solo").how == ending::answered);
  CHECK(w.env.log.started == std::vector<std::string>{"a", "a"});
}

TEST_CASE("attempt runner: a hedged wait is bounded by the first-token timeouts", "[attempt_runner]") {
  auto cfg = make_config();
  cfg.routes[0].hedge_after = 100ms;
  world w(std::move(cfg));
  w.env.scripts["a"].push_back(fails(adapters::failure::timeout, "a: no first token", 10s));
  w.env.scripts["b"].push_back(fails(adapters::failure::timeout, "b: no first token", 10s));
  const auto r = w.run("main");
  // Both attempts were used by the hedge: the first one is read (its timeout ends it).
  CHECK(r.how == ending::exhausted);
  CHECK(r.attempts == 2);
  CHECK(w.env.log.started == std::vector<std::string>{"a", "b"});
  CHECK(w.env.log.destroyed.front() == "b");
  REQUIRE(r.last_failure);
  CHECK(r.last_failure->message == "a: no first token");
}

TEST_CASE("attempt runner: a stream is relayed as it comes and a break mid-stream is final", "[attempt_runner]") {
  world w(make_config());
  w.env.scripts["a"].push_back({{0ms, head_event(200, {{"content-type", "text/event-stream"}})},
                                {10ms, data_event("data: {\"x\":1}\n\n")},
                                {20ms, failed_event(adapters::failure::broken, "reset")}});
  const auto r = w.run("main", true);
  CHECK(r.how == ending::answered);
  CHECK(w.env.log.started == std::vector<std::string>{"a"});  // the client has part of it: no failover
  CHECK(w.sink.streamed == "data: {\"x\":1}\n\n");
  CHECK(w.sink.ended == std::vector<std::pair<std::string, std::string>>{{"a", "failed"}});
  CHECK(w.health("main", 0).consecutive_failures() == 1);
}

TEST_CASE("attempt runner: a client that leaves ends the attempts", "[attempt_runner]") {
  world w(make_config());
  w.env.client_leaves = true;
  w.env.scripts["a"].push_back(answer(200, "{}", 5s));
  const auto r = w.run("main");
  CHECK(r.how == ending::client_gone);
  CHECK(w.env.log.started == std::vector<std::string>{"a"});
  CHECK(w.env.log.cancelled == std::vector<std::string>{"a"});
  CHECK(r.failures.empty());  // not the backend's failure
  CHECK(w.health("main", 0).consecutive_failures() == 0);
  CHECK(w.sink.ended == std::vector<std::pair<std::string, std::string>>{{"a", "cancelled"}});
}

TEST_CASE("attempt runner: concurrency slots are freed when delivery throws", "[attempt_runner]") {
  world w(make_config());
  w.sink.throw_on_deliver = true;
  w.env.scripts["a"].push_back(answer(200, "{}"));
  CHECK_THROWS_WITH(w.run("main"), "the client's write failed badly");
  CHECK(w.health("main", 0).in_flight() == 0);
  CHECK(w.env.unwatched == 1);
  CHECK(w.env.log.destroyed == std::vector<std::string>{"a"});
}

TEST_CASE("attempt runner: every target full with a full queue sheds the request", "[attempt_runner]") {
  auto cfg = make_config();
  cfg.backends[0].max_concurrency = 1;
  world w(std::move(cfg));
  auto& h = w.health("solo", 0);
  REQUIRE(h.try_begin_request(1));  // another request holds a's only slot
  const auto r = w.run("solo");
  CHECK(r.how == ending::exhausted);
  CHECK(r.shed);
  CHECK(w.env.log.started.empty());
  CHECK(w.clock.now - w.t0 == 5s);  // waited queue_timeout in the queue
  CHECK(h.in_flight() == 1);
  h.end_request();
}

TEST_CASE("attempt runner: a full target is waited for when a slot frees", "[attempt_runner]") {
  auto cfg = make_config();
  cfg.backends[0].max_concurrency = 1;
  world w(std::move(cfg));
  auto& h = w.health("solo", 0);
  REQUIRE(h.try_begin_request(1));
  w.env.slot_frees = true;  // the other request ends while this one waits
  w.env.scripts["a"].push_back(answer(200, "{}"));
  const auto r = w.run("solo");
  CHECK(r.how == ending::answered);
  CHECK_FALSE(r.shed);
  CHECK(h.in_flight() == 0);
}

TEST_CASE("attempt runner: an ejected target is passed over while another can take the request",
          "[attempt_runner]") {
  world w(make_config());
  auto& a = w.health("main", 0);
  const auto& ejection = w.route("main").targets[0].ejection;
  a.record_failure(w.clock.now, ejection);
  a.record_failure(w.clock.now, ejection);  // after_failures 2: ejected for its cooldown
  REQUIRE(a.ejected(w.clock.now));
  w.env.scripts["b"].push_back(fails(adapters::failure::broken, "b broke"));
  w.env.scripts["b"].push_back(answer(200, R"({"from":"b"})"));
  const auto r = w.run("main");
  CHECK(r.how == ending::answered);
  CHECK(w.env.log.started == std::vector<std::string>{"b", "b"});
  CHECK(a.in_flight() == 0);

  // With no other target, the ejected one is tried anyway.
  w.env.scripts["a"].push_back(answer(200, R"({"from":"a"})"));
  CHECK(w.run("solo").how == ending::answered);
  CHECK(w.env.log.started.back() == "a");
  CHECK(w.sink.whole->body == R"({"from":"a"})");
}
