// Fault injection: one of two backends fails in each way a provider can; requests that can
// succeed must, and retries must not hammer a failing backend.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <atomic>
#include <map>
#include <future>
#include <thread>

#include "tests/integration/gateway_fixture.hpp"

using namespace tollgate::test;
using json = nlohmann::json;

namespace {

const std::string two_backends = R"(
server: {listen: "127.0.0.1:0", threads: 2, access_log: "off"}
keys: [{name: tester, key: tg-test-client-key}]
backends:
  - name: alpha
    kind: openai
    base_url: {A}
    timeouts: {connect: 1s, first_token: 500ms, idle: 500ms, total: 20s}
    ejection: {after_failures: 2, cooldown: 1s, max_cooldown: 4s}
  - name: beta
    kind: openai
    base_url: {B}
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
routes:
  - model: pair
    retry: {attempts: 3, backoff: 10ms, max_backoff: 50ms}
    targets: [{backend: alpha, model: a-model}, {backend: beta, model: b-model}]
  - model: alpha-only
    retry: {attempts: 2, backoff: 10ms, max_backoff: 20ms}
    fallbacks: [beta-only]
    context_fallbacks: [long-context]
    targets: [{backend: alpha}]
  - model: beta-only
    targets: [{backend: beta}]
  - model: long-context
    targets: [{backend: beta, model: beta-128k}]
  - model: split
    strategy: weighted
    targets: [{backend: alpha, weight: 3}, {backend: beta, weight: 1}]
)";

http_result chat(http_client& c, const gateway_fixture& f, const std::string& model, bool stream = false) {
  const std::string body = R"({"model":")" + model + R"(","stream":)" + (stream ? "true" : "false") +
                           R"(,"messages":[{"role":"user","content":"hi"}]})";
  return c.post(f.base + "/v1/chat/completions", body, gateway_fixture::auth());
}

response_script status_script(int status, std::vector<std::pair<std::string, std::string>> headers = {}) {
  response_script s;
  s.status = status;
  s.headers = std::move(headers);
  s.body = R"({"error":{"message":"injected","type":"server_error","code":"injected_)" + std::to_string(status) + "\"}}";
  return s;
}

response_script cut_stream() {
  response_script s;
  s.content_type = "text/event-stream";
  s.chunks = {"data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n"};
  s.reset_after_chunks = 1;
  return s;
}

}  // namespace

TEST_CASE("every way of failing before the first byte fails over to the other backend", "[resilience]") {
  struct fault {
    const char* name;
    response_script script;
  };
  response_script reset;
  reset.reset_before_headers = true;
  response_script hang;
  hang.hang = true;
  response_script slow;
  slow.header_delay = std::chrono::milliseconds(1500);  // past alpha's 500 ms first_token timeout
  slow.body = R"({"late":true})";
  const std::vector<fault> faults = {
      {"500", status_script(500)},
      {"502", status_script(502)},
      {"503", status_script(503)},
      {"504", status_script(504)},
      {"429 with Retry-After", status_script(429, {{"Retry-After", "0"}})},
      {"reset before headers", reset},
      {"hang", hang},
      {"slow first token", slow},
  };
  for (bool stream : {false, true}) {
    for (const auto& fault : faults) {
      DYNAMIC_SECTION(fault.name << (stream ? " (stream)" : "")) {
        gateway_fixture f(two_backends);
        http_client c;
        f.a.push(fault.script);
        auto r = chat(c, f, "pair", stream);
        INFO(r.body);
        CHECK(r.status == 200);
        CHECK(r.headers["x-tollgate-backend"] == "beta");
        CHECK(f.a.request_count() == 1);
        REQUIRE(f.b.request_count() == 1);
        CHECK(json::parse(f.b.requests()[0].body)["model"] == "b-model");
      }
    }
  }
}

TEST_CASE("a stream cut mid-way fails over when nothing reached the client yet", "[resilience]") {
  gateway_fixture f(two_backends);
  http_client c;
  // Non-stream request, upstream sends a chunked body and breaks: the client has nothing yet.
  response_script cut;
  cut.chunks = {R"({"partial":)", "true}"};
  cut.reset_after_chunks = 1;
  f.a.push(cut);
  auto r = chat(c, f, "pair");
  CHECK(r.status == 200);
  CHECK(r.headers["x-tollgate-backend"] == "beta");
}

TEST_CASE("a stream that broke after its first byte ends with an error event, no retry", "[resilience]") {
  gateway_fixture f(two_backends);
  http_client c;
  f.a.push(cut_stream());
  auto r = chat(c, f, "pair", true);
  CHECK(r.status == 200);
  CHECK(r.body.starts_with("data: {\"n\":1}\n\n"));
  CHECK(r.body.find("\"error\"") != std::string::npos);
  CHECK(f.b.request_count() == 0);
}

TEST_CASE("when every attempt fails the last upstream answer passes through", "[resilience]") {
  gateway_fixture f(two_backends);
  http_client c;
  f.a.push(status_script(503));
  f.b.push(status_script(500));
  f.a.push(status_script(502));
  auto r = chat(c, f, "pair");
  CHECK(r.status == 502);  // three attempts: alpha, beta, alpha again
  CHECK(json::parse(r.body)["error"]["code"] == "injected_502");
  CHECK(f.a.request_count() == 2);
  CHECK(f.b.request_count() == 1);
}

TEST_CASE("Retry-After is honoured, and one beyond the deadline is not waited for", "[resilience]") {
  gateway_fixture f(two_backends);
  http_client c;
  f.a.push(status_script(429, {{"Retry-After", "0.2"}}));
  auto r = chat(c, f, "alpha-only");
  CHECK(r.status == 200);
  CHECK(f.a.request_count() == 2);

  // 100 s is past the route's 20 s budget: the 429 goes back to the client at once, Retry-After
  // included, rather than holding the request or retrying early.
  f.a.push(status_script(429, {{"Retry-After", "100"}}));
  f.b.push(status_script(429, {{"Retry-After", "100"}}));
  auto limited = chat(c, f, "alpha-only");
  CHECK(limited.status == 429);
  CHECK(limited.headers["retry-after"] == "100");
  CHECK(f.a.request_count() == 3);
}

TEST_CASE("fallback routes are tried when every target of a route failed", "[resilience]") {
  gateway_fixture f(two_backends);
  http_client c;
  f.a.push(status_script(500));
  f.a.push(status_script(500));
  auto r = chat(c, f, "alpha-only");
  CHECK(r.status == 200);
  CHECK(r.headers["x-tollgate-backend"] == "beta");
  CHECK(f.a.request_count() == 2);
}

TEST_CASE("context_length_exceeded goes to the context fallback", "[resilience]") {
  gateway_fixture f(two_backends);
  http_client c;
  response_script too_long;
  too_long.status = 400;
  too_long.body = R"({"error":{"message":"maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}})";
  f.a.push(too_long);
  auto r = chat(c, f, "alpha-only");
  CHECK(r.status == 200);
  REQUIRE(f.b.request_count() == 1);
  CHECK(json::parse(f.b.requests()[0].body)["model"] == "beta-128k");
  CHECK(f.a.request_count() == 1);  // not retried on alpha: the prompt will not fit there
}

TEST_CASE("a failing backend is ejected, then let back in by a trial", "[resilience]") {
  gateway_fixture f(two_backends);
  http_client c;
  f.a.push(status_script(500));
  f.a.push(status_script(500));
  CHECK(chat(c, f, "pair").status == 200);  // alpha fails, beta answers
  CHECK(chat(c, f, "pair").status == 200);  // alpha fails again: ejected (after_failures: 2)
  CHECK(f.a.request_count() == 2);
  for (int i = 0; i < 5; ++i) CHECK(chat(c, f, "pair").headers["x-tollgate-backend"] == "beta");
  CHECK(f.a.request_count() == 2);  // no request reached alpha while it cooled down
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  auto trial = chat(c, f, "pair");
  CHECK(trial.headers["x-tollgate-backend"] == "alpha");  // half-open trial succeeds
  CHECK(chat(c, f, "pair").headers["x-tollgate-backend"] == "alpha");
  CHECK(f.a.request_count() == 4);
}

TEST_CASE("weighted routes follow their weights", "[resilience]") {
  gateway_fixture f(two_backends);
  http_client c;  // one connection: one worker, one weighted round robin
  int alpha = 0;
  for (int i = 0; i < 40; ++i) alpha += chat(c, f, "split").headers["x-tollgate-backend"] == "alpha";
  CHECK(alpha == 30);
}

TEST_CASE("a backend killed under load costs no request that could succeed", "[resilience]") {
  auto victim = std::make_unique<fake_upstream>();
  gateway_fixture f(fill(two_backends, "A", victim->base_url()));
  std::atomic<int> ok{0}, failed{0}, cut{0}, ok_before{0};
  std::atomic<bool> killed{false};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      http_client c;
      for (int i = 0; i < 150; ++i) {
        auto r = chat(c, f, "pair", (i + t) % 2 == 1);
        // A stream already under way when alpha died may end with an error event (allowed: the
        // first byte had been sent); anything else must have succeeded.
        if (r.status != 200) {
          failed++;
        } else if (r.body.find("\"error\"") != std::string::npos) {
          cut++;
        } else {
          ok++;
          if (!killed) ok_before++;
        }
      }
    });
  }
  while (ok_before < 50) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  victim.reset();  // alpha goes away under load: open connections reset, new ones refused
  killed = true;
  for (auto& t : clients) t.join();
  INFO("ok " << ok << ", cut mid-stream " << cut << ", failed " << failed);
  CHECK(failed == 0);
  CHECK(ok + cut == 600);
  CHECK(cut <= 4);  // at most the streams in flight at the moment of the kill
}

TEST_CASE("max_concurrency queues a bounded number and sheds the rest with 503", "[resilience][limits]") {
  gateway_fixture f(R"(
server: {listen: "127.0.0.1:0", threads: 2, access_log: "off"}
keys: [{name: tester, key: tg-test-client-key}]
backends:
  - {name: alpha, kind: openai, base_url: "{A}", max_concurrency: 2, max_queue: 1, queue_timeout: 5s}
  - {name: beta, kind: openai, base_url: "{B}", max_concurrency: 1}
routes:
  - model: limited
    targets: [{backend: alpha}]
  - model: spill
    targets: [{backend: beta}, {backend: alpha}]
)");
  auto slow = [](const recorded_request& r) {
    auto s = fake_upstream::openai_default(r);
    s.header_delay = std::chrono::milliseconds(400);
    return s;
  };
  f.a.set_default(slow);
  f.b.set_default(slow);

  std::vector<std::future<http_result>> calls;
  for (int i = 0; i < 4; ++i) {
    calls.push_back(std::async(std::launch::async, [&] {
      http_client c;
      return chat(c, f, "limited");
    }));
  }
  int ok = 0, shed = 0;
  for (auto& call : calls) {
    auto r = call.get();
    if (r.status == 200) ++ok;
    if (r.status == 503) {
      ++shed;
      CHECK(json::parse(r.body)["error"]["code"] == "overloaded");
      CHECK(r.headers["retry-after"] == "1");
    }
  }
  CHECK(ok == 3);  // two at once, one after waiting in the queue
  CHECK(shed == 1);
  CHECK(f.a.request_count() == 3);

  // A full backend spills to the route's next target instead of queueing.
  std::vector<std::future<http_result>> spill;
  for (int i = 0; i < 2; ++i) {
    spill.push_back(std::async(std::launch::async, [&] {
      http_client c;
      return chat(c, f, "spill");
    }));
  }
  std::map<std::string, int> by_backend;
  for (auto& call : spill) {
    auto r = call.get();
    CHECK(r.status == 200);
    by_backend[r.headers["x-tollgate-backend"]]++;
  }
  CHECK(by_backend["beta"] == 1);
  CHECK(by_backend["alpha"] == 1);
}

TEST_CASE("hedging: a slow first target gets company, the first answer wins", "[resilience][hedge]") {
  gateway_fixture f(R"(
server: {listen: "127.0.0.1:0", threads: 1, access_log: "off"}
keys: [{name: tester, key: tg-test-client-key}]
backends:
  - {name: alpha, kind: openai, base_url: "{A}"}
  - {name: beta, kind: openai, base_url: "{B}"}
routes:
  - model: hedged
    hedge: {after: 150ms}
    targets: [{backend: alpha}, {backend: beta}]
)");
  http_client c;
  // alpha is fast: no hedge is sent.
  auto fast = chat(c, f, "hedged");
  CHECK(fast.headers["x-tollgate-backend"] == "alpha");
  CHECK(f.b.request_count() == 0);

  // alpha stalls before its headers: beta is asked after 150 ms, answers, and alpha is cancelled.
  response_script stall;
  stall.header_delay = std::chrono::seconds(2);
  stall.content_type = "text/event-stream";
  for (int i = 0; i < 50; ++i) stall.chunks.push_back("data: {}\n\n");
  f.a.push(stall);
  auto r = chat(c, f, "hedged", true);
  CHECK(r.status == 200);
  CHECK(r.headers["x-tollgate-backend"] == "beta");
  CHECK(r.body.ends_with("data: [DONE]\n\n"));
  CHECK(f.b.request_count() == 1);
  CHECK(eventually([&] { return f.a.client_aborts() == 1; }));
}

TEST_CASE("a backend that goes down and comes back gets its traffic back", "[resilience]") {
  auto victim = std::make_unique<fake_upstream>();
  const std::uint16_t port = victim->port();
  gateway_fixture f(fill(two_backends, "A", victim->base_url()));
  http_client c;
  CHECK(chat(c, f, "pair").headers["x-tollgate-backend"] == "alpha");
  victim.reset();  // down: connections refused
  for (int i = 0; i < 6; ++i) {
    auto r = chat(c, f, "pair");
    CHECK(r.status == 200);
    CHECK(r.headers["x-tollgate-backend"] == "beta");
  }
  victim = std::make_unique<fake_upstream>("127.0.0.1", port);  // back, on the same address
  // After the cooldown (1 s, doubled at most to 4 s) a trial request finds it and it is back.
  CHECK(eventually([&] { return chat(c, f, "pair").headers["x-tollgate-backend"] == "alpha"; }));
  CHECK(chat(c, f, "pair").headers["x-tollgate-backend"] == "alpha");
  CHECK(victim->request_count() >= 2);
}
