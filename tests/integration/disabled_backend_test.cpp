// Optional backends whose key is unset: the gateway starts without them; a route that still has
// another target uses it, and a route left with none answers 503 saying what is missing.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "tests/integration/gateway_fixture.hpp"

using namespace tollgate::test;
using json = nlohmann::json;

namespace {

// The fixture's environment is empty, so ${PAID_KEY} is unset.
const std::string yaml = R"(
server: {listen: 127.0.0.1:0, threads: 1, access_log: off}
keys: [{name: tester, key: tg-test-client-key}]
backends:
  - {name: paid, kind: openai, optional: true, base_url: "https://api.example.invalid/v1", api_key: "${PAID_KEY}"}
  - {name: alpha, kind: openai, base_url: "{A}"}
routes:
  - model: mixed
    targets: [{backend: paid}, {backend: alpha, model: from-alpha}]
  - model: only-paid
    targets: [{backend: paid}]
  - model: falls-back
    fallbacks: [only-paid]
    targets: [{backend: alpha}]
)";

std::string chat(const std::string& model) {
  return R"({"model":")" + model + R"(","messages":[{"role":"user","content":"hi"}]})";
}

}  // namespace

TEST_CASE("a route to disabled backends answers 503 with the reason", "[integration][disabled]") {
  gateway_fixture f(yaml);
  http_client c;
  const std::string url = f.base + "/v1/chat/completions";

  auto r = c.post(url, chat("only-paid"), gateway_fixture::auth());
  INFO(r.body);
  REQUIRE(r.status == 503);
  const json body = json::parse(r.body);
  CHECK(body["error"]["code"] == "backend_disabled");
  CHECK(body["error"]["message"] ==
        "The model `only-paid` is not available: every backend it routes to is disabled: 'paid' (environment "
        "variable PAID_KEY is not set).");
  CHECK(r.headers.count("x-request-id") == 1);
  CHECK(r.headers.count("x-tollgate-backend") == 0);

  // The mixed route goes to the backend that is there.
  auto ok = c.post(url, chat("mixed"), gateway_fixture::auth());
  CHECK(ok.status == 200);
  CHECK(ok.headers["x-tollgate-backend"] == "alpha");
  REQUIRE(f.a.request_count() == 1);
  CHECK(json::parse(f.a.requests()[0].body)["model"] == "from-alpha");

  // A fallback to a disabled route is skipped: the client gets the real failure.
  f.a.push(response_script{.status = 500, .body = R"({"error":{"message":"boom","type":"server_error"}})"});
  auto failed = c.post(url, chat("falls-back"), gateway_fixture::auth());
  CHECK(failed.status == 500);
  CHECK(failed.body.find("boom") != std::string::npos);

  // The route is still listed: a client learns why it fails from the 503, not from a 404.
  auto models = json::parse(c.get(f.base + "/v1/models", gateway_fixture::auth()).body);
  std::vector<std::string> ids;
  for (const auto& m : models["data"]) ids.push_back(m["id"]);
  CHECK(ids == std::vector<std::string>{"mixed", "only-paid", "falls-back"});
  // /readyz: ready on the backend that is there, and says which one is disabled.
  auto ready = c.get(f.base + "/readyz");
  CHECK(ready.status == 200);
  CHECK(json::parse(ready.body)["backends"] == json{{"alpha", "up"}, {"paid", "disabled"}});
}
