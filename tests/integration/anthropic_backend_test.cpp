// A kind anthropic backend over real sockets: the fake upstream speaks Anthropic's Messages wire
// format on /v1/messages (x-api-key and anthropic-version required, unknown fields refused), and
// OpenAI-style clients reach it through the gateway, whole answers, streams, tools and errors.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "tests/protocol/sse_events.hpp"
#include "tests/integration/gateway_fixture.hpp"
#include "tests/support/eventually.hpp"

using namespace tollgate;
using namespace tollgate::test;
using nlohmann::json;

namespace {

std::string anthropic_yaml() {
  return R"(
server:
  listen: 127.0.0.1:0
  threads: 2
  access_log: off
keys:
  - name: tester
    key: tg-test-client-key
backends:
  - name: claude
    kind: anthropic
    base_url: {A}
    api_key: sk-ant-secret
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
  - name: beta
    kind: openai
    base_url: {B}
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
routes:
  - model: claude-public
    targets:
      - backend: claude
        model: claude-upstream
        price: {input: 3, cached_input: 0.3, cache_write: 3.75, output: 15}
  - model: claude-then-beta
    targets:
      - backend: claude
        model: claude-upstream
      - backend: beta
        model: beta-model
)";
}

json chat_body(const std::string& model, const std::string& text, bool stream = false) {
  json b = {{"model", model}, {"messages", json::array({{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", text}}})}};
  if (stream) b["stream"] = true;
  return b;
}

struct streamed {
  std::string text;
  std::string arguments;
  std::string finish;
  json usage;
  bool done = false;
};

streamed read_chat_stream(const std::string& body) {
  streamed s;
  for (const auto& e : split_sse(body)) {
    if (e.done) {
      s.done = true;
      continue;
    }
    if (e.data.contains("usage") && !e.data["usage"].is_null()) s.usage = e.data["usage"];
    if (e.data["choices"].empty()) continue;
    const json& d = e.data["choices"][0]["delta"];
    if (d.contains("content") && d["content"].is_string()) s.text += d["content"].get<std::string>();
    if (d.contains("tool_calls")) s.arguments += d["tool_calls"][0]["function"].value("arguments", "");
    if (!e.data["choices"][0]["finish_reason"].is_null()) s.finish = e.data["choices"][0]["finish_reason"];
  }
  return s;
}

}  // namespace

TEST_CASE("a chat request reaches an Anthropic upstream as a Messages request and comes back as chat", "[integration][anthropic]") {
  gateway_fixture f(anthropic_yaml());
  http_client c;
  auto r = c.post(f.base + "/v1/chat/completions", chat_body("claude-public", "hello there").dump(), gateway_fixture::auth());
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(r.headers["x-tollgate-backend"] == "claude");
  const json answer = json::parse(r.body);
  CHECK(answer["object"] == "chat.completion");
  CHECK(answer["choices"][0]["message"]["content"] == "echo: hello there");
  CHECK(answer["choices"][0]["finish_reason"] == "stop");
  // input 3 + cache read 2 + cache write 1
  CHECK(answer["usage"]["prompt_tokens"] == 6);
  CHECK(answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 2);
  CHECK(answer["usage"]["cache_creation_input_tokens"] == 1);
  CHECK(answer["usage"]["completion_tokens"] == 3);
  // Each kind of prompt token at its price: (3 * 3 + 2 * 0.3 + 1 * 3.75 + 3 * 15) / 1e6.
  // The answer's accounting may land just after the client has it.
  std::string metrics;
  CHECK(eventually([&] {
    metrics = c.get(f.base + "/metrics").body;
    return metrics.find("tollgate_cost_total{") != std::string::npos;
  }));
  INFO(metrics);
  CHECK(metrics.find(R"(kind="cache_write_prompt"} 1)") != std::string::npos);
  CHECK(metrics.find(R"(kind="prompt"} 3)") != std::string::npos);
  const auto cost_at = metrics.find("tollgate_cost_total{");
  REQUIRE(cost_at != std::string::npos);
  const auto cost_line = metrics.substr(cost_at, metrics.find('\n', cost_at) - cost_at);
  CHECK(cost_line.find(R"(model="claude-public",backend="claude")") != std::string::npos);
  CHECK(std::stod(cost_line.substr(cost_line.rfind(' ') + 1)) == Approx((3 * 3 + 2 * 0.3 + 1 * 3.75 + 3 * 15) / 1e6));

  const auto seen = f.a.requests();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].target == "/v1/messages");
  CHECK(seen[0].headers.at("x-api-key") == "sk-ant-secret");
  CHECK(seen[0].headers.at("anthropic-version") == "2023-06-01");
  CHECK(seen[0].headers.count("authorization") == 0);
  const json sent = json::parse(seen[0].body);
  CHECK(sent["model"] == "claude-upstream");
  CHECK(sent["max_tokens"] == 4096);
  CHECK(sent["system"] == json::array({{{"type", "text"}, {"text", "be brief"}}}));
  CHECK(sent["messages"] == json::array({{{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "hello there"}}})}}}));
}

TEST_CASE("a chat stream from an Anthropic upstream arrives as chunks, with usage only when asked", "[integration][anthropic]") {
  gateway_fixture f(anthropic_yaml());
  http_client c;
  json body = chat_body("claude-public", "one two three", true);
  body["stream_options"] = {{"include_usage", true}};
  auto r = c.post(f.base + "/v1/chat/completions", body.dump(), gateway_fixture::auth());
  REQUIRE(r.status == 200);
  CHECK(r.headers["content-type"].starts_with("text/event-stream"));
  const auto s = read_chat_stream(r.body);
  CHECK(s.text == "echo: one two three");
  CHECK(s.finish == "stop");
  CHECK(s.done);
  CHECK(s.usage["prompt_tokens"] == 7);
  CHECK(s.usage["completion_tokens"] == 4);

  // Without include_usage the client sees no usage chunk, yet the gateway metered it (asked for
  // it on the client's behalf).
  auto quiet = c.post(f.base + "/v1/chat/completions", chat_body("claude-public", "a b", true).dump(), gateway_fixture::auth());
  REQUIRE(quiet.status == 200);
  const auto q = read_chat_stream(quiet.body);
  CHECK(q.text == "echo: a b");
  CHECK(q.usage.is_null());
  CHECK(eventually([&] {
    return c.get(f.base + "/metrics").body.find(
               R"(tollgate_tokens_total{key="tester",model="claude-public",backend="claude",kind="cached_prompt"} 4)") !=
           std::string::npos;
  }));
}

TEST_CASE("tool calls round-trip through an Anthropic upstream, whole and streamed", "[integration][anthropic]") {
  gateway_fixture f(anthropic_yaml());
  http_client c;
  json body = chat_body("claude-public", "weather in Paris");
  body["tools"] = json::array({{{"type", "function"},
                                {"function", {{"name", "get_weather"}, {"parameters", {{"type", "object"}, {"properties", {{"text", {{"type", "string"}}}}}}}}}}});
  auto r = c.post(f.base + "/v1/chat/completions", body.dump(), gateway_fixture::auth());
  REQUIRE(r.status == 200);
  const json answer = json::parse(r.body);
  const json& call = answer["choices"][0]["message"]["tool_calls"][0];
  CHECK(answer["choices"][0]["finish_reason"] == "tool_calls");
  CHECK(call["id"] == "toolu_fake1");
  CHECK(call["function"]["name"] == "get_weather");
  CHECK(json::parse(call["function"]["arguments"].get<std::string>()) == json{{"text", "weather in Paris"}});
  CHECK(json::parse(f.a.requests()[0].body)["tools"][0]["input_schema"]["properties"]["text"]["type"] == "string");

  // The tool's answer goes back as a tool_result block.
  body["messages"].push_back(answer["choices"][0]["message"]);
  body["messages"].push_back({{"role", "tool"}, {"tool_call_id", "toolu_fake1"}, {"content", "sunny"}});
  auto r2 = c.post(f.base + "/v1/chat/completions", body.dump(), gateway_fixture::auth());
  REQUIRE(r2.status == 200);
  CHECK(json::parse(r2.body)["choices"][0]["message"]["content"] == "tool said: sunny");
  const json sent = json::parse(f.a.requests()[1].body);
  // The assistant turn as the upstream gave it: its text, then its tool_use.
  CHECK(sent["messages"][1]["content"][0] == json{{"type", "text"}, {"text", "echo: weather in Paris"}});
  CHECK(sent["messages"][1]["content"][1]["type"] == "tool_use");
  CHECK(sent["messages"][2]["content"][0] == json{{"type", "tool_result"}, {"tool_use_id", "toolu_fake1"}, {"content", "sunny"}});

  json streamed_body = chat_body("claude-public", "weather in Rome", true);
  streamed_body["tools"] = body["tools"];
  auto r3 = c.post(f.base + "/v1/chat/completions", streamed_body.dump(), gateway_fixture::auth());
  REQUIRE(r3.status == 200);
  const auto s = read_chat_stream(r3.body);
  CHECK(s.finish == "tool_calls");
  CHECK(json::parse(s.arguments) == json{{"text", "weather in Rome"}});
}

TEST_CASE("Anthropic upstream errors reach chat clients in OpenAI's shape, 529 fails over", "[integration][anthropic]") {
  gateway_fixture f(anthropic_yaml());
  http_client c;
  response_script unauthorized;
  unauthorized.status = 401;
  unauthorized.body = R"({"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}})";
  f.a.push(unauthorized);
  auto r = c.post(f.base + "/v1/chat/completions", chat_body("claude-public", "x").dump(), gateway_fixture::auth());
  CHECK(r.status == 401);
  CHECK(json::parse(r.body)["error"]["message"] == "invalid x-api-key");
  CHECK(json::parse(r.body)["error"]["code"] == "invalid_api_key");

  response_script overloaded;
  overloaded.status = 529;
  overloaded.body = R"({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})";
  f.a.push(overloaded);
  auto alone = c.post(f.base + "/v1/chat/completions", chat_body("claude-public", "x").dump(), gateway_fixture::auth());
  CHECK(alone.status == 503);
  CHECK(json::parse(alone.body)["error"]["code"] == "overloaded");

  f.a.push(overloaded);
  auto failover = c.post(f.base + "/v1/chat/completions", chat_body("claude-then-beta", "x").dump(), gateway_fixture::auth());
  CHECK(failover.status == 200);
  CHECK(failover.headers["x-tollgate-backend"] == "beta");
  CHECK(f.b.request_count() == 1);
}

TEST_CASE("chat fields Messages cannot carry get a 400 naming them, and nothing goes upstream", "[integration][anthropic]") {
  gateway_fixture f(anthropic_yaml());
  http_client c;
  json body = chat_body("claude-public", "x");
  body["n"] = 3;
  auto r = c.post(f.base + "/v1/chat/completions", body.dump(), gateway_fixture::auth());
  CHECK(r.status == 400);
  CHECK(json::parse(r.body)["error"]["param"] == "n");
  CHECK(json::parse(r.body)["error"]["code"] == "unsupported_by_backend");
  auto emb = c.post(f.base + "/v1/embeddings", R"({"model":"claude-public","input":"x"})", gateway_fixture::auth());
  CHECK(emb.status == 400);
  CHECK(f.a.request_count() == 0);
}
