// Per-key model allowlists and limits (rpm, tpm, max_concurrency) over real sockets.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <future>

#include "tests/integration/gateway_fixture.hpp"

using namespace tollgate::test;
using json = nlohmann::json;

namespace {

const std::string keyed = R"(
server: {listen: "127.0.0.1:0", threads: 2, access_log: "off"}
keys:
  - {name: chat-only, key: tg-chat-only-0001, models: ["chat-*"], rpm: 3}
  - {name: tokens, key: tg-tokens-0000001, tpm: 1000}
  - {name: one-at-a-time, key: tg-single-000001, max_concurrency: 1}
backends:
  - {name: alpha, kind: openai, base_url: "{A}"}
routes:
  - {model: chat-small, targets: [{backend: alpha}]}
  - {model: chat-large, targets: [{backend: alpha}]}
  - {model: embed, targets: [{backend: alpha}]}
)";

http_options as(const std::string& key) {
  http_options o;
  o.headers = {"Authorization: Bearer " + key};
  return o;
}

http_result chat(gateway_fixture& f, const std::string& key, const std::string& model, int max_tokens = 16) {
  http_client c;
  return c.post(f.base + "/v1/chat/completions",
                R"({"model":")" + model + R"(","max_tokens":)" + std::to_string(max_tokens) +
                    R"(,"messages":[{"role":"user","content":"hello"}]})",
                as(key));
}

}  // namespace

TEST_CASE("a key sees and uses only its models", "[limits]") {
  gateway_fixture f(keyed);
  http_client c;
  auto models = json::parse(c.get(f.base + "/v1/models", as("tg-chat-only-0001")).body);
  std::vector<std::string> ids;
  for (const auto& m : models["data"]) ids.push_back(m["id"]);
  CHECK(ids == std::vector<std::string>{"chat-small", "chat-large"});
  auto r = chat(f, "tg-chat-only-0001", "embed");
  CHECK(r.status == 403);
  CHECK(json::parse(r.body)["error"]["code"] == "model_not_allowed");
  CHECK(f.a.request_count() == 0);
  CHECK(chat(f, "tg-tokens-0000001", "embed").status == 200);  // another key may
}

TEST_CASE("rpm: the request past the limit gets 429 with Retry-After", "[limits]") {
  gateway_fixture f(keyed);
  for (int i = 0; i < 3; ++i) CHECK(chat(f, "tg-chat-only-0001", "chat-small").status == 200);
  auto r = chat(f, "tg-chat-only-0001", "chat-small");
  CHECK(r.status == 429);
  CHECK(json::parse(r.body)["error"]["code"] == "rate_limit_exceeded");
  CHECK(json::parse(r.body)["error"]["message"].get<std::string>().find("requests per minute") != std::string::npos);
  const int wait = std::stoi(r.headers["retry-after"]);
  CHECK(wait >= 1);
  CHECK(wait <= 20);  // one request comes back every 60 / 3 seconds
  CHECK(f.a.request_count() == 3);
  CHECK(chat(f, "tg-tokens-0000001", "chat-small").status == 200);  // limits are per key
}

TEST_CASE("tpm admits on an estimate and settles on the real usage", "[limits]") {
  gateway_fixture f(keyed);
  response_script slow = fake_upstream::openai_default({"POST", "/v1/chat/completions", {},
                                                         R"({"model":"m","messages":[{"role":"user","content":"hi"}]})"});
  slow.header_delay = std::chrono::milliseconds(400);
  f.a.push(slow);
  // Estimated at about 900 tokens, it holds most of the minute's 1000 while it runs...
  auto first = std::async(std::launch::async, [&] { return chat(f, "tg-tokens-0000001", "chat-small", 880); });
  REQUIRE(eventually([&] { return f.a.request_count() == 1; }));
  auto refused = chat(f, "tg-tokens-0000001", "chat-small", 880);
  CHECK(refused.status == 429);
  CHECK(json::parse(refused.body)["error"]["message"].get<std::string>().find("tokens per minute") != std::string::npos);
  CHECK(first.get().status == 200);
  // ...and gives back what it did not use (the answer used a handful of tokens). The give-back
  // happens as the request finishes, just after its last bytes reach the client, so the next
  // request may briefly still see the hold: a refused try charges nothing.
  CHECK(eventually([&] { return chat(f, "tg-tokens-0000001", "chat-small", 880).status == 200; }));
}

TEST_CASE("tpm charges what a request used beyond its estimate", "[limits]") {
  gateway_fixture f(keyed);
  // Estimated at a few dozen tokens (max_tokens 1), it reports 900 used.
  response_script heavy;
  heavy.body = R"({"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},)"
               R"("finish_reason":"stop"}],"usage":{"prompt_tokens":500,"completion_tokens":400,"total_tokens":900}})";
  f.a.push(heavy);
  CHECK(chat(f, "tg-tokens-0000001", "chat-small", 1).status == 200);
  // Had only the estimate been charged, 200 more would fit in the minute's 1000.
  auto over = chat(f, "tg-tokens-0000001", "chat-small", 200);
  CHECK(over.status == 429);
  CHECK(json::parse(over.body)["error"]["code"] == "rate_limit_exceeded");
  CHECK(chat(f, "tg-tokens-0000001", "chat-small", 1).status == 200);  // what is left still admits a small one
}

TEST_CASE("limits are kept across a reload", "[limits][reload]") {
  gateway_fixture f(keyed);
  for (int i = 0; i < 3; ++i) REQUIRE(chat(f, "tg-chat-only-0001", "chat-small").status == 200);
  // The same config loaded again, as SIGHUP or a file change does: a new snapshot, the same key.
  auto loaded = tollgate::config::load_string(fill(keyed, "A", f.a.base_url()), "again.yaml",
                                              [](const std::string&) { return std::nullopt; });
  REQUIRE(loaded.value);
  f.server->shared().current.store(
      std::make_shared<const tollgate::gateway::runtime>(std::move(*loaded.value), f.lasting, 2));
  f.server->shared().refresh_keys();
  CHECK(chat(f, "tg-chat-only-0001", "chat-small").status == 429);
  CHECK(f.a.request_count() == 3);
}

TEST_CASE("max_concurrency per key", "[limits]") {
  gateway_fixture f(keyed);
  response_script slow = fake_upstream::openai_default({"POST", "/v1/chat/completions", {},
                                                         R"({"model":"m","messages":[{"role":"user","content":"hi"}]})"});
  slow.header_delay = std::chrono::milliseconds(400);
  f.a.push(slow);
  auto first = std::async(std::launch::async, [&] { return chat(f, "tg-single-000001", "chat-small"); });
  REQUIRE(eventually([&] { return f.a.request_count() == 1; }));
  auto second = chat(f, "tg-single-000001", "chat-small");
  CHECK(second.status == 429);
  CHECK(second.headers.count("retry-after") == 1);
  CHECK(first.get().status == 200);
  // The slot comes back when the first request's accounting is done, a moment after its client has
  // the answer (on a loaded machine, after the client's next request can arrive).
  CHECK(eventually([&] { return chat(f, "tg-single-000001", "chat-small").status == 200; }));
}
