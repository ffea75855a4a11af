// Requests relayed untranslated, over real sockets: Anthropic Messages to kind anthropic
// upstreams, and the Responses API to kind openai upstreams with `responses: native`. What chat
// completions cannot carry reaches the upstream byte for byte, answers and streams come back as
// the upstream sent them (the model renamed), and the usage they report is metered and ledgered.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "tests/integration/gateway_fixture.hpp"
#include "tests/integration/sqlite_probe.hpp"
#include "tests/protocol/sse_events.hpp"
#include "tests/support/eventually.hpp"

using namespace tollgate;
using namespace tollgate::test;
using nlohmann::json;

namespace {

std::string relay_yaml(const std::string& db_path) {
  return "store: {sqlite: " + db_path + ", flush_interval: sync}\n" + R"(
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
  - name: claude2
    kind: anthropic
    base_url: {B}
    api_key: sk-ant-other
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
  - name: beta
    kind: openai
    base_url: {B}
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
  - name: native
    kind: openai
    base_url: {A}
    responses: native
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
  - name: gone
    kind: anthropic
    base_url: http://127.0.0.1:1/v1
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 5s}
routes:
  - model: claude-public
    targets:
      - backend: claude
        model: claude-upstream
        price: {input: 3, cached_input: 0.3, cache_write: 3.75, output: 15}
  - model: claude-pair
    retry: {attempts: 2, backoff: 1ms, max_backoff: 2ms}
    targets:
      - backend: claude
        model: claude-upstream
      - backend: claude2
        model: claude-upstream-2
  - model: claude-then-beta
    targets:
      - backend: claude
        model: claude-upstream
      - backend: beta
        model: beta-model
  - model: claude-falls-to-chat
    fallbacks: [chat-beta]
    targets:
      - backend: claude
        model: claude-upstream
  - model: chat-beta
    targets:
      - backend: beta
        model: beta-model
  - model: claude-gone
    retry: {attempts: 1}
    targets:
      - backend: gone
  - model: responses-native
    targets:
      - backend: native
        model: native-upstream
        price: {input: 2, cached_input: 0.5, output: 8}
  - model: responses-mixed
    targets:
      - backend: native
        model: native-upstream
      - backend: beta
        model: beta-model
)";
}

std::string db_path(const char* name) { return temp_db("tollgate-relay-" + std::string(name)); }

http_options anthropic_headers() {
  return http_options{{"x-api-key: tg-test-client-key", "anthropic-version: 2023-06-01"}};
}

/// A Messages request with what chat completions cannot carry: cache_control marks (on system,
/// a document and the last turn), a PDF document block with citations, and an assistant turn's
/// thinking block with its signature.
json rich_messages(const std::string& model, const std::string& last_text) {
  return json{
      {"model", model},
      {"max_tokens", 2048},
      {"thinking", {{"type", "enabled"}, {"budget_tokens", 1024}}},
      {"system", json::array({{{"type", "text"}, {"text", "You answer from the contract."}, {"cache_control", {{"type", "ephemeral"}}}}})},
      {"messages",
       json::array({
           {{"role", "user"},
            {"content", json::array({{{"type", "document"},
                                      {"source", {{"type", "base64"}, {"media_type", "application/pdf"}, {"data", "JVBERi0xLjQK"}}},
                                      {"title", "contract.pdf"},
                                      {"citations", {{"enabled", true}}},
                                      {"cache_control", {{"type", "ephemeral"}, {"ttl", "1h"}}}},
                                     {{"type", "text"}, {"text", "What is the term?"}}})}},
           {{"role", "assistant"},
            {"content", json::array({{{"type", "thinking"}, {"thinking", "The term is in section 2."}, {"signature", "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}},
                                     {{"type", "text"}, {"text", "Twelve months."}}})}},
           {{"role", "user"},
            {"content", json::array({{{"type", "text"}, {"text", last_text}, {"cache_control", {{"type", "ephemeral"}}}}})}},
       })}};
}

std::string anthropic_sse(const json& data) {
  return "event: " + data["type"].get<std::string>() + "\ndata: " + data.dump() + "\n\n";
}

/// A stream as Anthropic sends it for extended thinking: a thinking block with its signature,
/// then text, then usage.
std::vector<std::string> thinking_stream(const std::string& model) {
  return {
      anthropic_sse({{"type", "message_start"},
                     {"message", {{"id", "msg_01"}, {"type", "message"}, {"role", "assistant"}, {"model", model},
                                  {"content", json::array()}, {"stop_reason", nullptr}, {"stop_sequence", nullptr},
                                  {"usage", {{"input_tokens", 40}, {"cache_creation_input_tokens", 7}, {"cache_read_input_tokens", 1200},
                                             {"output_tokens", 1}}}}}}),
      anthropic_sse({{"type", "content_block_start"}, {"index", 0}, {"content_block", {{"type", "thinking"}, {"thinking", ""}, {"signature", ""}}}}),
      anthropic_sse({{"type", "content_block_delta"}, {"index", 0}, {"delta", {{"type", "thinking_delta"}, {"thinking", "Section 2 says"}}}}),
      anthropic_sse({{"type", "content_block_delta"}, {"index", 0}, {"delta", {{"type", "signature_delta"}, {"signature", "EqQBCgIYAhIMsig=="}}}}),
      anthropic_sse({{"type", "content_block_stop"}, {"index", 0}}),
      "event: ping\ndata: {\"type\": \"ping\"}\n\n",
      anthropic_sse({{"type", "content_block_start"}, {"index", 1}, {"content_block", {{"type", "text"}, {"text", ""}}}}),
      anthropic_sse({{"type", "content_block_delta"}, {"index", 1},
                     {"delta", {{"type", "citations_delta"}, {"citation", {{"type", "page_location"}, {"cited_text", "12 months"},
                                                                           {"document_index", 0}, {"start_page_number", 2}, {"end_page_number", 3}}}}}}),
      anthropic_sse({{"type", "content_block_delta"}, {"index", 1}, {"delta", {{"type", "text_delta"}, {"text", "Twelve months."}}}}),
      anthropic_sse({{"type", "content_block_stop"}, {"index", 1}}),
      anthropic_sse({{"type", "message_delta"}, {"delta", {{"stop_reason", "end_turn"}, {"stop_sequence", nullptr}}},
                     {"usage", {{"output_tokens", 31}}}}),
      anthropic_sse({{"type", "message_stop"}}),
  };
}

std::string joined(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += p;
  return out;
}

std::string replaced(std::string text, const std::string& from, const std::string& to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) text.replace(at, from.size(), to);
  return text;
}

}  // namespace

TEST_CASE("a Messages request to kind anthropic upstreams is relayed untranslated, cache_control, documents and thinking signatures included",
          "[integration][relay]") {
  const std::string path = db_path("messages");
  remove_db(path);
  {
    gateway_fixture f(relay_yaml(path));
    http_client c;
    // Written with spaces and in an order of its own: the upstream gets these very bytes, but
    // for the model's value.
    const std::string sent = rich_messages("claude-public", "And the notice period?").dump(2);
    auto opts = anthropic_headers();
    opts.headers.emplace_back("X-Request-Id: relayed-whole");
    auto r = c.post(f.base + "/v1/messages", sent, opts);
    INFO(r.body);
    REQUIRE(r.status == 200);
    CHECK(r.headers["x-tollgate-backend"] == "claude");
    CHECK(r.headers["x-tollgate-upstream-model"] == "claude-upstream");

    const auto seen = f.a.requests();
    REQUIRE(seen.size() == 1);
    CHECK(seen[0].target == "/v1/messages");
    CHECK(seen[0].headers.at("x-api-key") == "sk-ant-secret");
    CHECK(seen[0].headers.at("anthropic-version") == "2023-06-01");
    CHECK(seen[0].body == replaced(sent, "\"claude-public\"", "\"claude-upstream\""));
    const json up = json::parse(seen[0].body);
    CHECK(up["system"][0]["cache_control"]["type"] == "ephemeral");
    CHECK(up["messages"][0]["content"][0]["type"] == "document");
    CHECK(up["messages"][0]["content"][0]["cache_control"]["ttl"] == "1h");
    CHECK(up["messages"][1]["content"][0]["signature"] == "EqQBCgIYAhIM1gbcDa9GJwZA2b3h");

    // The upstream's message as it sent it, naming the model the client asked for.
    const json answer = json::parse(r.body);
    CHECK(answer["type"] == "message");
    CHECK(answer["id"] == "msg_fake1");
    CHECK(answer["model"] == "claude-public");
    CHECK(answer["content"][0]["text"] == "echo: And the notice period?");
    CHECK(answer["usage"] == json{{"input_tokens", 5}, {"cache_creation_input_tokens", 1}, {"cache_read_input_tokens", 2}, {"output_tokens", 5}});

    // Streamed: Anthropic's events, thinking signature and citations included, byte for byte
    // but for the model's name.
    response_script s;
    s.content_type = "text/event-stream";
    s.chunks = thinking_stream("claude-upstream");
    f.a.push(s);
    json streamed = rich_messages("claude-public", "Stream it.");
    streamed["stream"] = true;
    opts = anthropic_headers();
    opts.headers.emplace_back("X-Request-Id: relayed-stream");
    r = c.post(f.base + "/v1/messages", streamed.dump(), opts);
    REQUIRE(r.status == 200);
    CHECK(r.headers["content-type"].find("text/event-stream") != std::string::npos);
    CHECK(r.body == replaced(joined(thinking_stream("claude-upstream")), "\"model\":\"claude-upstream\"", "\"model\":\"claude-public\""));
    const auto up_stream = json::parse(f.a.requests().back().body);
    CHECK(up_stream["stream"] == true);
    CHECK(!up_stream.contains("stream_options"));  // nothing added that Anthropic would refuse
    f.server->shutdown(std::chrono::seconds(5));
  }
  // Metered from the upstream's own usage: Anthropic's input_tokens leave out cache reads and
  // writes, which the prompt counts; each kind at its price.
  db d(path);
  CHECK(d.one("SELECT prompt_tokens || '/' || cached_tokens || '/' || cache_write_tokens || '/' || completion_tokens || '/' || "
              "usage_source || '/' || route || '/' || upstream_model FROM usage_ledger WHERE request_id = 'relayed-whole'") ==
        "8/2/1/5/upstream/claude-public/claude-upstream");
  CHECK(std::stod(d.one("SELECT cost FROM usage_ledger WHERE request_id = 'relayed-whole'")) ==
        Approx((5 * 3 + 2 * 0.3 + 1 * 3.75 + 5 * 15) / 1e6));
  CHECK(d.one("SELECT prompt_tokens || '/' || cached_tokens || '/' || cache_write_tokens || '/' || completion_tokens || '/' || "
              "usage_source || '/' || stream FROM usage_ledger WHERE request_id = 'relayed-stream'") == "1247/1200/7/31/upstream/1");
  CHECK(std::stod(d.one("SELECT cost FROM usage_ledger WHERE request_id = 'relayed-stream'")) ==
        Approx((40 * 3 + 1200 * 0.3 + 7 * 3.75 + 31 * 15) / 1e6));
  remove_db(path);
}

TEST_CASE("a relayed Messages stream ends at message_stop, and one cut short ends with Anthropic's error event",
          "[integration][relay]") {
  const std::string path = db_path("stream-end");
  remove_db(path);
  gateway_fixture f(relay_yaml(path));
  http_client c;
  const std::string body = R"({"model":"claude-public","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]})";

  // Bytes after message_stop are not relayed.
  response_script s;
  s.content_type = "text/event-stream";
  s.chunks = thinking_stream("claude-upstream");
  s.chunks.back() += "event: ping\ndata: {\"type\": \"ping\"}\n\n";
  f.a.push(s);
  auto r = c.post(f.base + "/v1/messages", body, anthropic_headers());
  REQUIRE(r.status == 200);
  CHECK(r.body.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));

  // The upstream ends after message_delta: the client gets what came, then an error event.
  response_script cut;
  cut.content_type = "text/event-stream";
  cut.chunks = thinking_stream("claude-upstream");
  cut.chunks.pop_back();
  f.a.push(cut);
  r = c.post(f.base + "/v1/messages", body, anthropic_headers());
  REQUIRE(r.status == 200);
  const auto events = split_sse(r.body);
  REQUIRE(events.size() == cut.chunks.size() + 1);
  CHECK(events[events.size() - 2].name == "message_delta");
  CHECK(events.back().name == "error");
  CHECK(events.back().data["type"] == "error");
  CHECK(events.back().data["error"]["type"] == "api_error");
  CHECK(events.back().data["error"]["message"].get<std::string>().find("message_stop") != std::string::npos);
  remove_db(path);
}

TEST_CASE("relayed Messages requests fail over on 529, and the last 529 reaches the client as Anthropic sent it",
          "[integration][relay]") {
  const std::string path = db_path("failover");
  remove_db(path);
  gateway_fixture f(relay_yaml(path));
  http_client c;
  // Both fakes speak Anthropic on /v1/messages; the first is overloaded once.
  response_script overloaded;
  overloaded.status = 529;
  overloaded.body = R"({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})";
  f.a.push(overloaded);
  auto r = c.post(f.base + "/v1/messages",
                  R"({"model":"claude-pair","max_tokens":64,"messages":[{"role":"user","content":"again"}]})", anthropic_headers());
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(r.headers["x-tollgate-backend"] == "claude2");
  CHECK(json::parse(r.body)["model"] == "claude-pair");
  CHECK(json::parse(f.b.requests().back().body)["model"] == "claude-upstream-2");
  CHECK(f.b.requests().back().headers.at("x-api-key") == "sk-ant-other");

  f.a.push(overloaded);
  f.b.push(overloaded);
  r = c.post(f.base + "/v1/messages",
             R"({"model":"claude-pair","max_tokens":64,"messages":[{"role":"user","content":"again"}]})", anthropic_headers());
  CHECK(r.status == 529);
  CHECK(r.body == overloaded.body);

  // Anthropic's own 400s pass as they are.
  r = c.post(f.base + "/v1/messages", R"({"model":"claude-public","messages":[{"role":"user","content":"no max_tokens"}]})",
             anthropic_headers());
  CHECK(r.status == 400);
  CHECK(json::parse(r.body) == json{{"type", "error"}, {"error", {{"type", "invalid_request_error"}, {"message", "max_tokens: Field required"}}}});
  remove_db(path);
}

TEST_CASE("the gateway's own errors on a relayed Messages request are in Anthropic's shape", "[integration][relay]") {
  const std::string path = db_path("errors");
  remove_db(path);
  gateway_fixture f(relay_yaml(path));
  http_client c;
  const std::string body = R"({"model":"claude-gone","max_tokens":64,"messages":[{"role":"user","content":"hi"}]})";
  auto r = c.post(f.base + "/v1/messages", body, anthropic_headers());
  CHECK(r.status == 502);
  json e = json::parse(r.body);
  CHECK(e["type"] == "error");
  CHECK(e["error"]["type"] == "api_error");

  r = c.post(f.base + "/v1/messages", body, http_options{{"x-api-key: tg-wrong", "anthropic-version: 2023-06-01"}});
  CHECK(r.status == 401);
  CHECK(json::parse(r.body)["error"]["type"] == "authentication_error");
  remove_db(path);
}

TEST_CASE("a Messages request whose route may reach an OpenAI-style backend is translated, as before", "[integration][relay]") {
  const std::string path = db_path("mixed");
  remove_db(path);
  gateway_fixture f(relay_yaml(path));
  http_client c;
  const std::string body =
      R"({"model":"MODEL","max_tokens":64,"system":[{"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}}],)"
      R"("messages":[{"role":"user","content":"hello"}]})";
  for (const std::string model : {"claude-then-beta", "claude-falls-to-chat"}) {
    INFO(model);
    auto r = c.post(f.base + "/v1/messages", replaced(body, "MODEL", model), anthropic_headers());
    INFO(r.body);
    REQUIRE(r.status == 200);
    CHECK(json::parse(r.body)["content"][0]["text"] == "echo: hello");
    // The Messages request the anthropic backend built from chat completions: the mark is gone.
    const json up = json::parse(f.a.requests().back().body);
    CHECK(up["system"] == json::array({{{"type", "text"}, {"text", "be brief"}}}));
  }
  remove_db(path);
}

TEST_CASE("a Responses API request to a backend with responses: native is relayed untranslated", "[integration][relay]") {
  const std::string path = db_path("responses");
  remove_db(path);
  {
    gateway_fixture f(relay_yaml(path));
    http_client c;
    // previous_response_id, a built-in tool and include are what the translation refuses.
    const std::string sent = json{{"model", "responses-native"},
                                  {"previous_response_id", "resp_earlier"},
                                  {"store", true},
                                  {"include", json::array({"file_search_call.results"})},
                                  {"tools", json::array({{{"type", "web_search_preview"}}})},
                                  {"input", json::array({{{"role", "user"}, {"content", json::array({{{"type", "input_text"}, {"text", "one two"}}})}}})}}
                                 .dump();
    auto r = c.post(f.base + "/v1/responses", sent, gateway_fixture::auth({"X-Request-Id: responses-whole"}));
    INFO(r.body);
    REQUIRE(r.status == 200);
    CHECK(r.headers["x-tollgate-backend"] == "native");
    CHECK(r.headers["x-tollgate-upstream-model"] == "native-upstream");
    const auto seen = f.a.requests();
    REQUIRE(seen.size() == 1);
    CHECK(seen[0].target == "/v1/responses");
    CHECK(seen[0].body == replaced(sent, "\"responses-native\"", "\"native-upstream\""));
    const json answer = json::parse(r.body);
    CHECK(answer["object"] == "response");
    CHECK(answer["model"] == "responses-native");
    CHECK(answer["previous_response_id"] == "resp_earlier");
    CHECK(answer["output"][0]["content"][0]["text"] == "echo: one two");

    const std::string streamed = R"({"model":"responses-native","stream":true,"input":"three four five"})";
    r = c.post(f.base + "/v1/responses", streamed, gateway_fixture::auth({"X-Request-Id: responses-stream"}));
    REQUIRE(r.status == 200);
    const auto events = split_sse(r.body);
    REQUIRE(events.size() == 12);
    CHECK(events.front().name == "response.created");
    CHECK(events.front().data["response"]["model"] == "responses-native");
    CHECK(events.back().name == "response.completed");
    CHECK(events.back().data["response"]["model"] == "responses-native");
    CHECK(events.back().data["sequence_number"] == 11);
    std::string text;
    for (const auto& e : events) {
      if (e.name == "response.output_text.delta") text += e.data["delta"].get<std::string>();
    }
    CHECK(text == "echo: three four five");
    CHECK(f.a.requests().back().body == replaced(streamed, "\"responses-native\"", "\"native-upstream\""));

    // Cut short before response.completed: an error event, numbered after the last one.
    response_script cut;
    cut.content_type = "text/event-stream";
    cut.chunks = {"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"model\":\"native-upstream\"}}\n\n"};
    f.a.push(cut);
    r = c.post(f.base + "/v1/responses", streamed, gateway_fixture::auth());
    const auto broken = split_sse(r.body);
    REQUIRE(broken.size() == 2);
    CHECK(broken[0].data["response"]["model"] == "responses-native");
    CHECK(broken[1].name == "error");
    CHECK(broken[1].data["sequence_number"] == 1);
    CHECK(broken[1].data["code"] == "server_error");

    // A route that may reach a backend without the Responses API is translated.
    r = c.post(f.base + "/v1/responses", R"({"model":"responses-mixed","input":"six"})", gateway_fixture::auth());
    REQUIRE(r.status == 200);
    CHECK(f.a.requests().back().target == "/v1/chat/completions");
    CHECK(json::parse(r.body)["output"][0]["content"][0]["text"] == "echo: six");
    f.server->shutdown(std::chrono::seconds(5));
  }
  db d(path);
  // The fake: input = words + 2 (1 cached), output = words of the answer.
  CHECK(d.one("SELECT prompt_tokens || '/' || cached_tokens || '/' || cache_write_tokens || '/' || completion_tokens || '/' || "
              "usage_source FROM usage_ledger WHERE request_id = 'responses-whole'") == "4/1/0/3/upstream");
  CHECK(std::stod(d.one("SELECT cost FROM usage_ledger WHERE request_id = 'responses-whole'")) ==
        Approx((3 * 2 + 1 * 0.5 + 3 * 8) / 1e6));
  CHECK(d.one("SELECT prompt_tokens || '/' || cached_tokens || '/' || completion_tokens || '/' || usage_source || '/' || stream "
              "FROM usage_ledger WHERE request_id = 'responses-stream'") == "5/1/4/upstream/1");
  remove_db(path);
}

TEST_CASE("responses: is checked when the config loads", "[integration][relay][config]") {
  auto bad = config::load_string(
      "backends: [{name: a, kind: openai, base_url: \"http://h/v1\", responses: sometimes}]\n"
      "routes: [{model: m, targets: [{backend: a}]}]\n",
      "relay.yaml", [](const std::string&) { return std::nullopt; });
  REQUIRE(!bad.value);
  REQUIRE(!bad.problems.empty());
  CHECK(bad.problems[0].to_string().find("relay.yaml:1") != std::string::npos);
  CHECK(bad.problems[0].to_string().find("backends[0].responses") != std::string::npos);
  CHECK(bad.problems[0].to_string().find("native or translate") != std::string::npos);

  auto foreign = config::load_string(
      "backends: [{name: a, kind: anthropic, base_url: \"http://h/v1\", responses: native}]\n"
      "routes: [{model: m, targets: [{backend: a}]}]\n",
      "relay.yaml", [](const std::string&) { return std::nullopt; });
  REQUIRE(!foreign.value);
  CHECK(foreign.problems[0].to_string().find("backends[0].responses") != std::string::npos);
}
