// Usage and cost through the gateway: from whole answers and streams, asked for when the client
// did not, stripped again for that client, last value wins, priced by the serving target.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "tests/integration/gateway_fixture.hpp"

using namespace tollgate::test;
using json = nlohmann::json;

namespace {

const std::string priced = R"(
currency: USD
server: {listen: "127.0.0.1:0", threads: 1, access_log: "off"}
keys: [{name: team-a, key: tg-test-client-key}]
backends:
  - {name: alpha, kind: openai, base_url: "{A}"}
  - {name: beta, kind: openai, base_url: "{B}"}
routes:
  - model: m
    targets:
      - {backend: alpha, model: up-a, price: {input: 2.0, cached_input: 0.5, output: 8.0}}
      - {backend: beta, model: up-b, price: {input: 1.0, output: 2.0}}
)";

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos;
}

std::string chunk(const std::string& content, const std::string& usage = "") {
  json c = {{"id", "x"}, {"object", "chat.completion.chunk"}, {"choices", json::array()}};
  if (!content.empty()) c["choices"].push_back({{"index", 0}, {"delta", {{"content", content}}}});
  if (!usage.empty()) c["usage"] = json::parse(usage);
  return "data: " + c.dump() + "\n\n";
}

}  // namespace

TEST_CASE("a whole answer's usage is metered and priced by its target", "[metering]") {
  gateway_fixture f(priced);
  http_client c;
  response_script s;
  s.body = R"({"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],
    "usage":{"prompt_tokens":1000,"completion_tokens":200,"prompt_tokens_details":{"cached_tokens":400},
    "completion_tokens_details":{"reasoning_tokens":50}}})";
  f.a.push(s);
  REQUIRE(c.post(f.base + "/v1/chat/completions", R"({"model":"m","messages":[]})", gateway_fixture::auth()).status == 200);
  const auto m = c.get(f.base + "/metrics").body;
  INFO(m);
  CHECK(has_line(m, R"(tollgate_tokens_total{key="team-a",model="m",backend="alpha",kind="prompt"} 600)"));
  CHECK(has_line(m, R"(tollgate_tokens_total{key="team-a",model="m",backend="alpha",kind="cached_prompt"} 400)"));
  CHECK(has_line(m, R"(tollgate_tokens_total{key="team-a",model="m",backend="alpha",kind="completion"} 200)"));
  CHECK(has_line(m, R"(tollgate_tokens_total{key="team-a",model="m",backend="alpha",kind="reasoning"} 50)"));
  // 600 * 2.0 + 400 * 0.5 + 200 * 8.0 per million = 0.003
  CHECK(m.find(R"(tollgate_cost_total{key="team-a",model="m",backend="alpha",currency="USD"} 0.003)") !=
        std::string::npos);
}

TEST_CASE("stream usage is asked for, metered, and kept from a client that did not ask", "[metering]") {
  gateway_fixture f(priced);
  http_client c;
  response_script s;
  s.content_type = "text/event-stream";
  // Some providers repeat a running usage on several chunks: the last one counts, not the sum.
  s.chunks = {chunk("a", R"({"prompt_tokens":10,"completion_tokens":1})"), chunk("b"),
              chunk("", R"({"prompt_tokens":10,"completion_tokens":3})"), "data: [DONE]\n\n"};
  f.a.push(s);
  auto r = c.post(f.base + "/v1/chat/completions",
                  R"({"model":"m","stream":true,"stream_options":{"x_keep":1},"messages":[]})", gateway_fixture::auth());
  REQUIRE(r.status == 200);
  const json sent = json::parse(f.a.requests()[0].body);
  CHECK(sent["stream_options"] == json{{"x_keep", 1}, {"include_usage", true}});
  // The usage-only chunk is gone; content chunks (one of which carries usage) stay as they were.
  CHECK(r.body == chunk("a", R"({"prompt_tokens":10,"completion_tokens":1})") + chunk("b") + "data: [DONE]\n\n");
  const auto m = c.get(f.base + "/metrics").body;
  CHECK(has_line(m, R"(tollgate_tokens_total{key="team-a",model="m",backend="alpha",kind="completion"} 3)"));
  CHECK(has_line(m, R"(tollgate_tokens_total{key="team-a",model="m",backend="alpha",kind="prompt"} 10)"));
}

TEST_CASE("a client that asked for stream usage gets it, untouched", "[metering]") {
  gateway_fixture f(priced);
  http_client c;
  const std::string body = R"({"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"one two"}]})";
  auto r = c.post(f.base + "/v1/chat/completions", body, gateway_fixture::auth());
  REQUIRE(r.status == 200);
  CHECK(f.a.requests()[0].body.find(R"("stream_options":{"include_usage":true})") != std::string::npos);
  CHECK(r.body.find(R"("choices":[],)") != std::string::npos);  // the usage chunk reached the client
  const auto m = c.get(f.base + "/metrics").body;
  CHECK(has_line(m, R"(tollgate_tokens_total{key="team-a",model="m",backend="alpha",kind="completion"} 3)"));
}

TEST_CASE("cost follows the target that served the request", "[metering]") {
  gateway_fixture f(priced);
  http_client c;
  response_script down;
  down.status = 503;
  f.a.push(down);
  response_script s;
  s.body = R"({"object":"chat.completion","choices":[],"usage":{"prompt_tokens":1000000,"completion_tokens":1000000}})";
  f.b.push(s);
  REQUIRE(c.post(f.base + "/v1/chat/completions", R"({"model":"m","messages":[]})", gateway_fixture::auth()).status == 200);
  const auto m = c.get(f.base + "/metrics").body;
  INFO(m);
  CHECK(has_line(m, R"(tollgate_cost_total{key="team-a",model="m",backend="beta",currency="USD"} 3)"));
  CHECK(m.find(R"(tollgate_cost_total{key="team-a",model="m",backend="alpha")") == std::string::npos);
}
