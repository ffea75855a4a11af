// The endpoints clients other than OpenAI chat call, over real sockets in front of the fake
// upstream: /v1/messages, /v1/responses, /v1/models/{id}, CORS, and x-ratelimit-* headers.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "tests/protocol/sse_events.hpp"
#include "tests/integration/gateway_fixture.hpp"

using namespace tollgate;
using namespace tollgate::test;
using nlohmann::json;

namespace {

std::string surface_yaml() {
  return R"(
server:
  listen: 127.0.0.1:0
  threads: 2
  access_log: off
  cors: {origins: ["https://app.example.com"]}
keys:
  - name: tester
    key: tg-test-client-key
  - name: limited
    key: tg-limited-client-key
    rpm: 2
    tpm: 100000
backends:
  - name: alpha
    kind: openai
    base_url: {A}
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
  - name: claude
    kind: anthropic
    base_url: {B}
    api_key: sk-ant
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
routes:
  - model: chat-public
    targets:
      - backend: alpha
        model: upstream-model-a
  - model: claude-public
    targets:
      - backend: claude
        model: claude-upstream
)";
}

http_options anthropic_auth(const std::string& key = "tg-test-client-key") {
  http_options o;
  o.headers = {"x-api-key: " + key, "anthropic-version: 2023-06-01"};
  return o;
}

json message_request(const std::string& model, bool stream = false) {
  json r = {{"model", model}, {"max_tokens", 32}, {"messages", json::array({{{"role", "user"}, {"content", "hi there"}}})}};
  if (stream) r["stream"] = true;
  return r;
}

}  // namespace

TEST_CASE("POST /v1/messages answers an Anthropic message from an OpenAI-style upstream", "[integration][api_surface]") {
  gateway_fixture f(surface_yaml());
  http_client c;
  auto r = c.post(f.base + "/v1/messages", message_request("chat-public").dump(), anthropic_auth());
  INFO(r.body);
  REQUIRE(r.status == 200);
  const json m = json::parse(r.body);
  CHECK(m["type"] == "message");
  CHECK(m["model"] == "chat-public");
  CHECK(m["content"][0]["text"] == "echo: hi there");
  CHECK(m["usage"]["input_tokens"] == 3);
  CHECK(r.headers["x-tollgate-upstream-model"] == "upstream-model-a");
  const auto seen = f.a.requests();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].target == "/v1/chat/completions");
  CHECK(json::parse(seen[0].body)["max_tokens"] == 32);
}

TEST_CASE("a streamed /v1/messages is Anthropic's event sequence, over either backend kind", "[integration][api_surface]") {
  gateway_fixture f(surface_yaml());
  http_client c;
  for (const char* model : {"chat-public", "claude-public"}) {
    auto r = c.post(f.base + "/v1/messages", message_request(model, true).dump(), anthropic_auth());
    REQUIRE(r.status == 200);
    CHECK(r.headers["content-type"].starts_with("text/event-stream"));
    std::vector<std::string> names;
    std::string text;
    json usage, start_usage;
    for (const auto& e : split_sse(r.body)) {
      names.push_back(e.name);
      if (e.name == "content_block_delta") text += e.data["delta"]["text"].get<std::string>();
      if (e.name == "message_start") start_usage = e.data["message"]["usage"];
      if (e.name == "message_delta") usage = e.data["usage"];
    }
    INFO(model << ": " << r.body);
    REQUIRE(names.size() >= 6);
    CHECK(names.front() == "message_start");
    CHECK(names[1] == "content_block_start");
    CHECK(names[names.size() - 3] == "content_block_stop");
    CHECK(names[names.size() - 2] == "message_delta");
    CHECK(names.back() == "message_stop");
    CHECK(text == "echo: hi there");
    CHECK(usage["output_tokens"] == 3);
    // Anthropic itself (relayed, for claude-public) counts the input in message_start only.
    CHECK((usage.contains("input_tokens") ? usage["input_tokens"] : start_usage["input_tokens"]) == 3);
  }
  // The Anthropic upstream's cache reads and writes reach the Anthropic client as such.
  auto whole = c.post(f.base + "/v1/messages", message_request("claude-public").dump(), anthropic_auth());
  const json u = json::parse(whole.body)["usage"];
  CHECK(u == json{{"input_tokens", 3}, {"cache_creation_input_tokens", 1}, {"cache_read_input_tokens", 2}, {"output_tokens", 3}});
}

TEST_CASE("extended thinking reaches either backend kind: reasoning_effort, or thinking with the client's or the effort's budget",
          "[integration][api_surface]") {
  gateway_fixture f(surface_yaml());
  http_client c;
  json r = message_request("chat-public");
  r["max_tokens"] = 32000;
  r["thinking"] = {{"type", "enabled"}, {"budget_tokens", 10000}};
  REQUIRE(c.post(f.base + "/v1/messages", r.dump(), anthropic_auth()).status == 200);
  r["model"] = "claude-public";  // relayed: Anthropic gets the client's own budget
  REQUIRE(c.post(f.base + "/v1/messages", r.dump(), anthropic_auth()).status == 200);
  // A chat client's reasoning_effort becomes the effort's budget.
  const json chat = {{"model", "claude-public"}, {"max_tokens", 32000}, {"reasoning_effort", "medium"},
                     {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}};
  REQUIRE(c.post(f.base + "/v1/chat/completions", chat.dump(), gateway_fixture::auth()).status == 200);
  const auto to_chat = f.a.requests(), to_claude = f.b.requests();
  REQUIRE(to_chat.size() == 1);
  REQUIRE(to_claude.size() == 2);
  CHECK(json::parse(to_chat[0].body)["reasoning_effort"] == "medium");
  CHECK(json::parse(to_claude[0].body)["thinking"] == json{{"type", "enabled"}, {"budget_tokens", 10000}});
  CHECK(json::parse(to_claude[1].body)["thinking"] == json{{"type", "enabled"}, {"budget_tokens", 8192}});
  // A budget Anthropic would refuse is refused in translation, in its shape, before any upstream call.
  r["model"] = "chat-public";
  r["thinking"]["budget_tokens"] = 100;
  auto bad = c.post(f.base + "/v1/messages", r.dump(), anthropic_auth());
  CHECK(bad.status == 400);
  CHECK(json::parse(bad.body)["error"]["type"] == "invalid_request_error");
  CHECK(json::parse(bad.body)["error"]["message"].get<std::string>().find("budget_tokens") != std::string::npos);
  CHECK(f.a.requests().size() == 1);
}

TEST_CASE("/v1/messages errors are Anthropic-shaped: 401, 400 naming the field, 404", "[integration][api_surface]") {
  gateway_fixture f(surface_yaml());
  http_client c;
  auto unauth = c.post(f.base + "/v1/messages", message_request("chat-public").dump(), anthropic_auth("tg-wrong"));
  CHECK(unauth.status == 401);
  CHECK(json::parse(unauth.body)["type"] == "error");
  CHECK(json::parse(unauth.body)["error"]["type"] == "authentication_error");

  json bad = message_request("chat-public");
  bad["messages"][0]["content"] = json::array({{{"type", "document"}, {"source", json::object()}}});
  auto refused = c.post(f.base + "/v1/messages", bad.dump(), anthropic_auth());
  CHECK(refused.status == 400);
  CHECK(json::parse(refused.body)["error"]["type"] == "invalid_request_error");
  CHECK(json::parse(refused.body)["error"]["message"].get<std::string>().starts_with("messages[0].content[0].type"));

  auto missing = c.post(f.base + "/v1/messages", message_request("no-such").dump(), anthropic_auth());
  CHECK(missing.status == 404);
  CHECK(json::parse(missing.body)["error"]["type"] == "not_found_error");

  response_script upstream_429;
  upstream_429.status = 429;
  upstream_429.headers.emplace_back("Retry-After", "0");
  upstream_429.body = R"({"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}})";
  f.a.push(upstream_429);
  auto limited = c.post(f.base + "/v1/messages", message_request("chat-public").dump(), anthropic_auth());
  CHECK(limited.status == 429);
  CHECK(json::parse(limited.body)["error"] == json{{"type", "rate_limit_error"}, {"message", "slow down"}});
  CHECK(f.a.request_count() == 1);  // the refusals above never left the gateway
}

TEST_CASE("POST /v1/responses, whole and streamed", "[integration][api_surface]") {
  gateway_fixture f(surface_yaml());
  http_client c;
  auto r = c.post(f.base + "/v1/responses", R"({"model":"chat-public","input":"hello","metadata":{"a":"b"}})",
                        gateway_fixture::auth());
  INFO(r.body);
  REQUIRE(r.status == 200);
  const json resp = json::parse(r.body);
  CHECK(resp["object"] == "response");
  CHECK(resp["model"] == "chat-public");
  CHECK(resp["metadata"] == json{{"a", "b"}});
  CHECK(resp["output"][0]["content"][0]["text"] == "echo: hello");

  auto s = c.post(f.base + "/v1/responses", R"({"model":"claude-public","input":"one two","stream":true})",
                        gateway_fixture::auth());
  REQUIRE(s.status == 200);
  const auto ev = split_sse(s.body);
  REQUIRE(ev.size() > 4);
  CHECK(ev.front().name == "response.created");
  CHECK(ev.back().name == "response.completed");
  CHECK(ev.back().data["response"]["output"][0]["content"][0]["text"] == "echo: one two");
  CHECK(ev.back().data["response"]["usage"]["input_tokens"] == 6);  // 3 + cache read 2 + cache write 1

  auto refused = c.post(f.base + "/v1/responses", R"({"model":"chat-public","input":"x","previous_response_id":"r"})",
                              gateway_fixture::auth());
  CHECK(refused.status == 400);
  CHECK(json::parse(refused.body)["error"]["param"] == "previous_response_id");
  CHECK(c.get(f.base + "/v1/responses", gateway_fixture::auth()).status == 405);
}

TEST_CASE("GET /v1/models/{id} in OpenAI's or Anthropic's shape", "[integration][api_surface]") {
  gateway_fixture f(surface_yaml());
  http_client c;
  auto r = c.get(f.base + "/v1/models/chat-public", gateway_fixture::auth());
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body) == json{{"id", "chat-public"}, {"object", "model"}, {"created", 0}, {"owned_by", "tollgate"}});
  CHECK(c.get(f.base + "/v1/models/nope", gateway_fixture::auth()).status == 404);
  CHECK(c.get(f.base + "/v1/models/chat-public").status == 401);
  // Ids come percent-encoded from SDKs that encode path segments (org%2Fmodel).
  auto enc = c.get(f.base + "/v1/models/chat%2Dpublic", gateway_fixture::auth());
  REQUIRE(enc.status == 200);
  CHECK(json::parse(enc.body)["id"] == "chat-public");
  auto slash = c.get(f.base + "/v1/models/org%2Fnope", gateway_fixture::auth());
  CHECK(slash.status == 404);
  CHECK(json::parse(slash.body)["error"]["message"].get<std::string>().find("`org/nope`") != std::string::npos);
  for (const char* bad : {"/v1/models/chat%2", "/v1/models/chat%zzpublic"}) {
    auto b = c.get(f.base + bad, gateway_fixture::auth());
    CHECK(b.status == 400);
    CHECK(json::parse(b.body)["error"]["message"] == "the model id in the path is not valid percent-encoding");
  }
  auto a = c.get(f.base + "/v1/models/claude-public", anthropic_auth());
  CHECK(json::parse(a.body)["type"] == "model");
  auto a404 = c.get(f.base + "/v1/models/nope", anthropic_auth());
  CHECK(json::parse(a404.body)["error"]["type"] == "not_found_error");
}

TEST_CASE("CORS: preflights are answered and answers carry the allowed origin only", "[integration][api_surface]") {
  gateway_fixture f(surface_yaml());
  http_client c;
  http_options pre;
  pre.headers = {"Origin: https://app.example.com", "Access-Control-Request-Method: POST",
                 "Access-Control-Request-Headers: authorization, content-type"};
  pre.method = "OPTIONS";
  auto p = c.get(f.base + "/v1/chat/completions", pre);
  CHECK(p.status == 204);
  CHECK(p.headers["access-control-allow-origin"] == "https://app.example.com");
  CHECK(p.headers["access-control-allow-headers"] == "authorization, content-type");
  CHECK(p.headers["access-control-allow-methods"].find("POST") != std::string::npos);

  auto opts = gateway_fixture::auth({"Origin: https://app.example.com"});
  auto r = c.post(f.base + "/v1/chat/completions", R"({"model":"chat-public","messages":[{"role":"user","content":"x"}]})", opts);
  CHECK(r.status == 200);
  CHECK(r.headers["access-control-allow-origin"] == "https://app.example.com");
  CHECK(r.headers["access-control-expose-headers"].find("x-request-id") != std::string::npos);

  auto other = gateway_fixture::auth({"Origin: https://evil.example.com"});
  auto o = c.post(f.base + "/v1/chat/completions", R"({"model":"chat-public","messages":[{"role":"user","content":"x"}]})", other);
  CHECK(o.status == 200);
  CHECK(o.headers.count("access-control-allow-origin") == 0);

  gateway_fixture off;  // no server.cors: no headers, and OPTIONS is not a preflight
  auto n = c.post(off.base + "/v1/chat/completions", R"({"model":"chat-public","messages":[{"role":"user","content":"x"}]})", opts);
  CHECK(n.headers.count("access-control-allow-origin") == 0);
  CHECK(c.get(off.base + "/v1/chat/completions", pre).status != 204);
}

TEST_CASE("keys with limits get x-ratelimit headers as OpenAI sends them", "[integration][api_surface]") {
  gateway_fixture f(surface_yaml());
  http_client c;
  http_options limited;
  limited.headers = {"Authorization: Bearer tg-limited-client-key"};
  const std::string body = R"({"model":"chat-public","messages":[{"role":"user","content":"x"}]})";
  auto r1 = c.post(f.base + "/v1/chat/completions", body, limited);
  REQUIRE(r1.status == 200);
  CHECK(r1.headers["x-ratelimit-limit-requests"] == "2");
  CHECK(r1.headers["x-ratelimit-remaining-requests"] == "1");
  CHECK(r1.headers["x-ratelimit-limit-tokens"] == "100000");
  CHECK(std::stoll(r1.headers["x-ratelimit-remaining-tokens"]) < 100000);
  CHECK(r1.headers["x-ratelimit-reset-requests"].ends_with("s"));
  auto r2 = c.post(f.base + "/v1/chat/completions", body, limited);
  CHECK(r2.headers["x-ratelimit-remaining-requests"] == "0");
  auto r3 = c.post(f.base + "/v1/chat/completions", body, limited);
  CHECK(r3.status == 429);
  CHECK(r3.headers["x-ratelimit-remaining-requests"] == "0");
  // A key without limits gets none.
  auto plain = c.post(f.base + "/v1/chat/completions", body, gateway_fixture::auth());
  CHECK(plain.headers.count("x-ratelimit-limit-requests") == 0);
}
