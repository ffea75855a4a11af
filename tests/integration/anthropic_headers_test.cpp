// The client's anthropic-version and anthropic-beta reach kind anthropic upstreams, over real
// sockets and both transports (the curl_transport test runs this file again over libcurl): on
// Messages requests relayed as they are and on requests the gateway translates, merged with what
// the backend's `headers` say, and never on other kinds of backend. The client's own key never
// goes upstream.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "tests/integration/gateway_fixture.hpp"

using namespace tollgate;
using namespace tollgate::test;
using nlohmann::json;

namespace {

std::string headers_yaml() {
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
  - name: claude-configured
    kind: anthropic
    base_url: {B}
    api_key: sk-ant-other
    headers: {anthropic-version: "2023-01-01", Anthropic-Beta: "configured-beta, shared-beta"}
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
  - name: plain
    kind: openai
    base_url: {A}
    api_key: sk-plain
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
routes:
  - model: claude-public
    targets:
      - backend: claude
        model: claude-upstream
  - model: claude-configured
    targets:
      - backend: claude-configured
        model: claude-upstream
  - model: claude-then-plain
    targets:
      - backend: claude
        model: claude-upstream
      - backend: plain
        model: plain-model
  - model: plain-public
    targets:
      - backend: plain
        model: plain-model
)";
}

std::string messages_body(const std::string& model, bool stream = false) {
  return json{{"model", model}, {"max_tokens", 32}, {"stream", stream}, {"messages", json::array({{{"role", "user"}, {"content", "hi there"}}})}}
      .dump();
}

/// The header fields of the last request the fake got (names lower-cased; a field sent twice
/// shows as one list).
std::map<std::string, std::string> last_headers(const fake_upstream& f) {
  const auto seen = f.requests();
  REQUIRE(!seen.empty());
  return seen.back().headers;
}

std::string header(const std::map<std::string, std::string>& h, const std::string& name) {
  const auto it = h.find(name);
  return it == h.end() ? "(absent)" : it->second;
}

}  // namespace

TEST_CASE("a relayed Messages request carries the client's anthropic-version and anthropic-beta, never its key",
          "[integration][relay][anthropic-headers]") {
  gateway_fixture f(headers_yaml());
  http_client c;
  for (const bool stream : {false, true}) {
    INFO("stream " << stream);
    auto r = c.post(f.base + "/v1/messages", messages_body("claude-public", stream),
                    http_options{{"x-api-key: tg-test-client-key", "anthropic-version: 2024-10-22",
                                  "anthropic-beta: prompt-caching-2024-07-31,files-api-2025-04-14"}});
    INFO(r.body);
    REQUIRE(r.status == 200);
    const auto h = last_headers(f.a);
    CHECK(f.a.requests().back().target == "/v1/messages");
    // The client's version wins over the default, once; its betas pass as it sent them.
    CHECK(header(h, "anthropic-version") == "2024-10-22");
    CHECK(header(h, "anthropic-beta") == "prompt-caching-2024-07-31,files-api-2025-04-14");
    // The backend's key, not the client's; no bearer token beside it.
    CHECK(header(h, "x-api-key") == "sk-ant-secret");
    CHECK(header(h, "authorization") == "(absent)");
  }

  // No anthropic-version from the client: the default; no beta: none.
  auto r = c.post(f.base + "/v1/messages", messages_body("claude-public"), http_options{{"x-api-key: tg-test-client-key"}});
  REQUIRE(r.status == 200);
  auto h = last_headers(f.a);
  CHECK(header(h, "anthropic-version") == "2023-06-01");
  CHECK(header(h, "anthropic-beta") == "(absent)");

  // Two anthropic-beta fields are one list.
  r = c.post(f.base + "/v1/messages", messages_body("claude-public"),
             http_options{{"x-api-key: tg-test-client-key", "anthropic-beta: one-beta", "anthropic-beta: two-beta, one-beta"}});
  REQUIRE(r.status == 200);
  CHECK(header(last_headers(f.a), "anthropic-beta") == "one-beta,two-beta");
}

TEST_CASE("the backend's configured anthropic headers are merged with the client's: its version unless the client names one, betas of both",
          "[integration][relay][anthropic-headers]") {
  gateway_fixture f(headers_yaml());
  http_client c;
  auto r = c.post(f.base + "/v1/messages", messages_body("claude-configured"),
                  http_options{{"x-api-key: tg-test-client-key", "anthropic-beta: shared-beta,client-beta"}});
  INFO(r.body);
  REQUIRE(r.status == 200);
  auto h = last_headers(f.b);
  CHECK(header(h, "anthropic-version") == "2023-01-01");
  CHECK(header(h, "anthropic-beta") == "configured-beta,shared-beta,client-beta");
  CHECK(header(h, "x-api-key") == "sk-ant-other");

  r = c.post(f.base + "/v1/messages", messages_body("claude-configured", true),
             http_options{{"x-api-key: tg-test-client-key", "anthropic-version: 2023-06-01"}});
  REQUIRE(r.status == 200);
  h = last_headers(f.b);
  CHECK(header(h, "anthropic-version") == "2023-06-01");
  CHECK(header(h, "anthropic-beta") == "configured-beta,shared-beta");
}

TEST_CASE("translated requests to kind anthropic carry the client's anthropic headers, and OpenAI-style backends never get them",
          "[integration][relay][anthropic-headers]") {
  gateway_fixture f(headers_yaml());
  http_client c;
  const std::string chat = R"({"model":"{MODEL}","messages":[{"role":"user","content":"hi"}]})";
  // A chat completions client in front of an Anthropic upstream, translated.
  auto r = c.post(f.base + "/v1/chat/completions", fill(chat, "MODEL", "claude-public"),
                  gateway_fixture::auth({"anthropic-beta: chat-side-beta", "anthropic-version: 2024-01-01"}));
  INFO(r.body);
  REQUIRE(r.status == 200);
  auto seen = f.a.requests().back();
  CHECK(seen.target == "/v1/messages");
  CHECK(header(seen.headers, "anthropic-beta") == "chat-side-beta");
  CHECK(header(seen.headers, "anthropic-version") == "2024-01-01");
  CHECK(header(seen.headers, "authorization") == "(absent)");

  // A Messages client on a route that may reach an OpenAI-style backend: translated, and the
  // Anthropic upstream still gets its headers.
  r = c.post(f.base + "/v1/messages", messages_body("claude-then-plain"),
             http_options{{"x-api-key: tg-test-client-key", "anthropic-version: 2023-06-01", "anthropic-beta: mixed-beta"}});
  REQUIRE(r.status == 200);
  seen = f.a.requests().back();
  CHECK(seen.target == "/v1/messages");
  CHECK(header(seen.headers, "anthropic-beta") == "mixed-beta");

  // An OpenAI-style upstream: nothing of Anthropic's.
  r = c.post(f.base + "/v1/chat/completions", fill(chat, "MODEL", "plain-public"),
             gateway_fixture::auth({"anthropic-beta: not-for-openai", "anthropic-version: 2023-06-01"}));
  REQUIRE(r.status == 200);
  seen = f.a.requests().back();
  CHECK(seen.target == "/v1/chat/completions");
  CHECK(header(seen.headers, "anthropic-beta") == "(absent)");
  CHECK(header(seen.headers, "anthropic-version") == "(absent)");
  CHECK(header(seen.headers, "authorization") == "Bearer sk-plain");
}
