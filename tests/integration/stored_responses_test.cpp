// The Responses API's calls on stored responses (GET and DELETE /v1/responses/{id}, input_items,
// cancel) over real sockets, both transports (curl_transport runs this file again over
// libcurl): they reach the `responses: native` backend that created the response, for the key
// that created it; everything else is a 404 that says why.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "tests/integration/gateway_fixture.hpp"
#include "tests/protocol/sse_events.hpp"

using namespace tollgate;
using namespace tollgate::test;
using nlohmann::json;

namespace {

std::string stored_yaml(const std::string& extra_server = {}) {
  return R"(
server:
  listen: 127.0.0.1:0
  threads: 2
  access_log: off
)" + extra_server + R"(
keys:
  - name: tester
    key: tg-test-client-key
  - name: other
    key: tg-other-client-key
backends:
  - name: native-a
    kind: openai
    base_url: {A}
    responses: native
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
  - name: native-b
    kind: openai
    base_url: {B}
    responses: native
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
  - name: chat-only
    kind: openai
    base_url: {B}
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
routes:
  - model: native
    targets:
      - backend: native-a
        model: upstream-a
  - model: native-pair
    retry: {attempts: 2, backoff: 1ms, max_backoff: 2ms}
    targets:
      - backend: native-a
        model: fake-overloaded
      - backend: native-b
        model: upstream-b
  - model: native-both
    targets:
      - backend: native-a
        model: upstream-a
      - backend: native-b
        model: upstream-b
  - model: native-b-only
    targets:
      - backend: native-b
        model: upstream-b
  - model: translated
    targets:
      - backend: chat-only
        model: chat-model
)";
}

std::string replaced(std::string text, const std::string& from, const std::string& to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) text.replace(at, from.size(), to);
  return text;
}

http_options other_key() { return http_options{{"Authorization: Bearer tg-other-client-key"}}; }

http_options with_method(const char* method, http_options o = gateway_fixture::auth()) {
  o.method = method;
  return o;
}

std::string create(gateway_fixture& f, http_client& c, const json& body) {
  auto r = c.post(f.base + "/v1/responses", body.dump(), gateway_fixture::auth());
  INFO(r.body);
  REQUIRE(r.status == 200);
  return json::parse(r.body)["id"].get<std::string>();
}

void check_unknown(const http_result& r, const std::string& id) {
  INFO(r.body);
  CHECK(r.status == 404);
  const json e = json::parse(r.body);
  CHECK(e["error"]["code"] == "response_not_found");
  CHECK(e["error"]["type"] == "invalid_request_error");
  const std::string message = e["error"]["message"].get<std::string>();
  CHECK(message.find(id) != std::string::npos);
  CHECK(message.find("responses: native") != std::string::npos);
  CHECK(message.find("translated") != std::string::npos);
}

}  // namespace

TEST_CASE("a stored response is read, listed and deleted through the backend that made it, for its key only",
          "[integration][relay][stored-responses]") {
  gateway_fixture f(stored_yaml());
  http_client c;
  const std::string id = create(f, c, {{"model", "native"}, {"input", json::array({{{"role", "user"}, {"content", "first"}},
                                                                                   {{"role", "user"}, {"content", "second"}}})}});
  CHECK(id.starts_with("resp_"));

  auto r = c.get(f.base + "/v1/responses/" + id, gateway_fixture::auth({"X-Request-Id: retrieve-1"}));
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(r.headers["x-tollgate-backend"] == "native-a");
  CHECK(r.headers["x-request-id"] == "retrieve-1");
  json got = json::parse(r.body);
  CHECK(got["id"] == id);
  CHECK(got["model"] == "native");  // as its creation named it; the upstream's name in the header
  CHECK(r.headers["x-tollgate-upstream-model"] == "upstream-a");
  CHECK(got["output"][0]["content"][0]["text"] == "echo: second");
  auto seen = f.a.requests().back();
  CHECK(seen.method == "GET");
  CHECK(seen.target == "/v1/responses/" + id);
  CHECK(seen.body.empty());
  CHECK(seen.headers.count("content-length") == 0);
  CHECK(seen.headers["x-request-id"] == "retrieve-1");

  // input_items with its query passed on as it came.
  r = c.get(f.base + "/v1/responses/" + id + "/input_items?limit=1&order=desc", gateway_fixture::auth());
  REQUIRE(r.status == 200);
  CHECK(f.a.requests().back().target == "/v1/responses/" + id + "/input_items?limit=1&order=desc");
  got = json::parse(r.body);
  CHECK(got["object"] == "list");
  REQUIRE(got["data"].size() == 1);
  CHECK(got["data"][0]["content"][0]["text"] == "second");
  CHECK(got["has_more"] == true);

  // Another key: as unknown as an id never seen, and the upstream is not asked.
  const std::size_t asked = f.a.request_count();
  check_unknown(c.get(f.base + "/v1/responses/" + id, other_key()), id);
  check_unknown(c.get(f.base + "/v1/responses/" + id, with_method("DELETE", other_key())), id);
  check_unknown(c.get(f.base + "/v1/responses/" + id + "/input_items", other_key()), id);
  check_unknown(c.get(f.base + "/v1/responses/resp_never_seen", gateway_fixture::auth()), "resp_never_seen");
  CHECK(f.a.request_count() == asked);

  // Deleted upstream, then forgotten here.
  r = c.get(f.base + "/v1/responses/" + id, with_method("DELETE"));
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body) == json{{"id", id}, {"object", "response"}, {"deleted", true}});
  CHECK(f.a.requests().back().method == "DELETE");
  check_unknown(c.get(f.base + "/v1/responses/" + id, gateway_fixture::auth()), id);
  CHECK(f.a.request_count() == asked + 1);

  // Without a key, or with a method these paths do not take.
  r = c.get(f.base + "/v1/responses/" + id);
  CHECK(r.status == 401);
  r = c.post(f.base + "/v1/responses/" + id, "{}", gateway_fixture::auth());
  CHECK(r.status == 405);
  r = c.get(f.base + "/v1/responses/" + id + "/cancel", gateway_fixture::auth());
  CHECK(r.status == 405);
  r = c.get(f.base + "/v1/responses/" + id + "/elsewhere", gateway_fixture::auth());
  CHECK(r.status == 404);
  CHECK(json::parse(r.body)["error"]["code"] == "unknown_url");
}

TEST_CASE("streamed, failed-over and background responses are found where they were made, translated and unstored ones are not",
          "[integration][relay][stored-responses]") {
  gateway_fixture f(stored_yaml());
  http_client c;
  // Streamed: the id comes from response.created.
  auto r = c.post(f.base + "/v1/responses", R"({"model":"native","stream":true,"input":"streamed words"})", gateway_fixture::auth());
  REQUIRE(r.status == 200);
  const auto at = r.body.find("\"id\":\"resp_");
  REQUIRE(at != std::string::npos);
  const std::string streamed_id = r.body.substr(at + 6, r.body.find('"', at + 6) - at - 6);
  r = c.get(f.base + "/v1/responses/" + streamed_id, gateway_fixture::auth());
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body)["output"][0]["content"][0]["text"] == "echo: streamed words");

  // The first backend overloaded, the second made it: the calls go to the second.
  const std::string pair_id = create(f, c, {{"model", "native-pair"}, {"input", "failed over"}});
  const std::size_t a_before = f.a.request_count();
  r = c.get(f.base + "/v1/responses/" + pair_id, gateway_fixture::auth());
  REQUIRE(r.status == 200);
  CHECK(r.headers["x-tollgate-backend"] == "native-b");
  CHECK(f.b.requests().back().target == "/v1/responses/" + pair_id);
  CHECK(f.a.request_count() == a_before);

  // Cancel, POST with no body; a second cancel gets the upstream's own 400.
  const std::string queued = create(f, c, {{"model", "native"}, {"background", true}, {"input", "later"}});
  r = c.post(f.base + "/v1/responses/" + queued + "/cancel", "", gateway_fixture::auth());
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body)["status"] == "cancelled");
  CHECK(f.a.requests().back().method == "POST");
  CHECK(f.a.requests().back().target == "/v1/responses/" + queued + "/cancel");
  r = c.post(f.base + "/v1/responses/" + queued + "/cancel", "", gateway_fixture::auth());
  CHECK(r.status == 400);

  // "store": false: never remembered. Translated: stored nowhere.
  check_unknown(c.get(f.base + "/v1/responses/" + create(f, c, {{"model", "native"}, {"store", false}, {"input", "x"}}),
                      gateway_fixture::auth()),
                "resp_");
  const std::string translated_id = create(f, c, {{"model", "translated"}, {"input", "x"}});
  check_unknown(c.get(f.base + "/v1/responses/" + translated_id, gateway_fixture::auth()), translated_id);
}

TEST_CASE("translated Responses requests refuse store: true and previous_response_id by name", "[integration][relay][stored-responses]") {
  gateway_fixture f(stored_yaml());
  http_client c;
  auto r = c.post(f.base + "/v1/responses", R"({"model":"translated","store":true,"input":"x"})", gateway_fixture::auth());
  INFO(r.body);
  CHECK(r.status == 400);
  CHECK(json::parse(r.body)["error"]["param"] == "store");
  r = c.post(f.base + "/v1/responses", R"({"model":"translated","previous_response_id":"resp_1","input":"x"})", gateway_fixture::auth());
  CHECK(r.status == 400);
  CHECK(json::parse(r.body)["error"]["param"] == "previous_response_id");
  r = c.post(f.base + "/v1/responses", R"({"model":"translated","store":false,"input":"x"})", gateway_fixture::auth());
  CHECK(r.status == 200);
  CHECK(json::parse(r.body)["store"] == false);
}

TEST_CASE("server.remembered_responses bounds what is remembered, and 0 remembers nothing", "[integration][relay][stored-responses][config]") {
  gateway_fixture f(stored_yaml("  remembered_responses: 0\n"));
  http_client c;
  const std::string id = create(f, c, {{"model", "native"}, {"input", "x"}});
  check_unknown(c.get(f.base + "/v1/responses/" + id, gateway_fixture::auth()), id);

  auto bad = config::load_string("server:\n  remembered_responses: -1\nbackends: [{name: a, kind: openai, base_url: \"http://h/v1\"}]\n"
                                 "routes: [{model: m, targets: [{backend: a}]}]\n",
                                 "remember.yaml", [](const std::string&) { return std::nullopt; });
  REQUIRE(!bad.value);
  CHECK(bad.problems[0].to_string().find("remember.yaml:2") != std::string::npos);
  CHECK(bad.problems[0].to_string().find("server.remembered_responses") != std::string::npos);
}

TEST_CASE("a request that continues a stored response goes first to the backend that stored it", "[integration][relay][stored-responses]") {
  gateway_fixture f(stored_yaml());
  http_client c;
  const std::string on_b = create(f, c, {{"model", "native-b-only"}, {"input", "first turn"}});
  // native-both tries native-a first; a follow-up of a response native-b stored goes to native-b.
  const std::size_t a_before = f.a.request_count();
  for (int i = 0; i < 3; ++i) {
    auto r = c.post(f.base + "/v1/responses",
                    json{{"model", "native-both"}, {"previous_response_id", on_b}, {"input", "next turn"}}.dump(),
                    gateway_fixture::auth());
    INFO(r.body);
    REQUIRE(r.status == 200);
    CHECK(r.headers["x-tollgate-backend"] == "native-b");
    CHECK(json::parse(f.b.requests().back().body)["previous_response_id"] == on_b);
  }
  CHECK(f.a.request_count() == a_before);
  // Without one, or with another key's, the route's order holds.
  auto r = c.post(f.base + "/v1/responses", R"({"model":"native-both","input":"fresh"})", gateway_fixture::auth());
  CHECK(r.headers["x-tollgate-backend"] == "native-a");
  r = c.post(f.base + "/v1/responses", json{{"model", "native-both"}, {"previous_response_id", on_b}, {"input", "x"}}.dump(),
             other_key());
  CHECK(r.headers["x-tollgate-backend"] == "native-a");
}

TEST_CASE("a stored response read back as a stream (stream=true) is relayed as it comes", "[integration][relay][stored-responses]") {
  gateway_fixture f(stored_yaml());
  http_client c;
  const std::string id = create(f, c, {{"model", "native"}, {"input", "x"}});
  response_script s;
  s.content_type = "text/event-stream";
  s.chunks = {"event: response.queued\ndata: {\"type\":\"response.queued\",\"sequence_number\":0,\"response\":{\"model\":\"upstream-a\"}}\n\n",
              "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":1}\n\n",
              "event: response.after\ndata: {\"type\":\"response.after\",\"sequence_number\":2}\n\n"};
  f.a.push(s);
  auto r = c.get(f.base + "/v1/responses/" + id + "?stream=true&starting_after=0", gateway_fixture::auth());
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(r.headers["content-type"].find("text/event-stream") != std::string::npos);
  // As sent, the model renamed to the one the client asked for, nothing after the last event.
  CHECK(r.body == replaced(s.chunks[0], "upstream-a", "native") + s.chunks[1]);
  CHECK(r.headers["x-tollgate-upstream-model"] == "upstream-a");
  CHECK(f.a.requests().back().target == "/v1/responses/" + id + "?stream=true&starting_after=0");

  // Cut short: what came, then an error event.
  response_script cut = s;
  cut.reset_after_chunks = 1;
  f.a.push(cut);
  r = c.get(f.base + "/v1/responses/" + id + "?stream=true", gateway_fixture::auth());
  REQUIRE(r.status == 200);
  const auto events = split_sse(r.body);
  REQUIRE(events.size() == 2);
  CHECK(events[0].data["response"]["model"] == "native");
  CHECK(events[1].name == "error");
  CHECK(events[1].data["sequence_number"] == 1);
  CHECK(events[1].data["code"] == "server_error");
}
