// Active health checks, /readyz and /admin/backends over real sockets.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <thread>

#include "tests/integration/gateway_fixture.hpp"

using namespace tollgate::test;
using json = nlohmann::json;

namespace {

const std::string checked = R"(
server: {listen: "127.0.0.1:0", threads: 2, access_log: "off", admin_key: adm-0123456789abcdef}
keys: [{name: tester, key: tg-test-client-key}]
backends:
  - name: alpha
    kind: openai
    base_url: {A}
    api_key: sk-alpha
    health_check: {path: /models, interval: 50ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2}
  - name: beta
    kind: openai
    base_url: {B}
routes:
  - model: pair
    targets: [{backend: alpha}, {backend: beta}]
)";

json admin_backends(http_client& c, const gateway_fixture& f) {
  http_options o;
  o.headers = {"Authorization: Bearer adm-0123456789abcdef"};
  auto r = c.get(f.base + "/admin/backends", o);
  REQUIRE(r.status == 200);
  return json::parse(r.body)["data"];
}

std::size_t posts(const fake_upstream& u) {
  std::size_t n = 0;
  for (const auto& r : u.requests()) n += r.method == "POST";
  return n;
}

}  // namespace

TEST_CASE("active checks take a backend out and bring it back", "[health][integration]") {
  gateway_fixture f(checked);
  http_client c;
  const std::string chat = R"({"model":"pair","messages":[{"role":"user","content":"x"}]})";
  REQUIRE(eventually([&] { return f.a.request_count() >= 2; }));  // probes arrive
  const auto probe = f.a.requests().front();
  CHECK(probe.method == "GET");
  CHECK(probe.target == "/v1/models");
  CHECK(probe.headers.at("authorization") == "Bearer sk-alpha");
  CHECK(c.post(f.base + "/v1/chat/completions", chat, gateway_fixture::auth()).headers["x-tollgate-backend"] == "alpha");

  // alpha's health endpoint starts failing: after two failed probes it is marked down.
  f.a.set_default([](const recorded_request& r) {
    if (r.method == "GET") {
      response_script s;
      s.status = 503;
      s.body = "{}";
      return s;
    }
    return fake_upstream::openai_default(r);
  });
  REQUIRE(eventually([&] { return admin_backends(c, f)[0]["active_check"] == "down"; }));
  auto ready = c.get(f.base + "/readyz");
  CHECK(ready.status == 200);  // beta still serves
  CHECK(json::parse(ready.body)["backends"]["alpha"] == "down");
  const auto before = posts(f.a);
  for (int i = 0; i < 5; ++i) {
    auto r = c.post(f.base + "/v1/chat/completions", chat, gateway_fixture::auth());
    CHECK(r.status == 200);
    CHECK(r.headers["x-tollgate-backend"] == "beta");
  }
  CHECK(posts(f.a) == before);  // no traffic went to the backend marked down

  f.a.set_default(&fake_upstream::openai_default);
  REQUIRE(eventually([&] { return admin_backends(c, f)[0]["active_check"] == "up"; }));
  CHECK(c.post(f.base + "/v1/chat/completions", chat, gateway_fixture::auth()).headers["x-tollgate-backend"] == "alpha");
}

TEST_CASE("readyz is 503 when no backend can serve", "[health][integration]") {
  gateway_fixture f(R"(
server: {listen: "127.0.0.1:0", threads: 1, access_log: "off"}
backends:
  - name: gone
    kind: openai
    base_url: http://127.0.0.1:1/v1
    health_check: {interval: 50ms, timeout: 200ms, unhealthy_after: 1}
routes:
  - model: m
    targets: [{backend: gone}]
)");
  http_client c;
  REQUIRE(eventually([&] { return c.get(f.base + "/readyz").status == 503; }));
  const json body = json::parse(c.get(f.base + "/readyz").body);
  CHECK(body["backends"]["gone"] == "down");
  CHECK(c.get(f.base + "/healthz").status == 200);  // the process itself is fine
}

TEST_CASE("the admin API needs the admin key, and is off without one", "[admin][integration]") {
  gateway_fixture f(checked);
  http_client c;
  CHECK(c.get(f.base + "/admin/backends").status == 401);
  CHECK(c.get(f.base + "/admin/backends", gateway_fixture::auth()).status == 401);  // a client key is not enough
  auto list = admin_backends(c, f);
  REQUIRE(list.size() == 2);
  CHECK(list[0]["name"] == "alpha");
  CHECK(list[1]["active_check"] == "off");
  CHECK(list[1]["healthy"] == true);
  http_options o;
  o.headers = {"Authorization: Bearer adm-0123456789abcdef"};
  CHECK(c.get(f.base + "/admin/nothing", o).status == 404);

  gateway_fixture plain;
  auto off = c.get(plain.base + "/admin/backends", o);
  CHECK(off.status == 404);
  CHECK(json::parse(off.body)["error"]["message"].get<std::string>().find("admin_key") != std::string::npos);
}
