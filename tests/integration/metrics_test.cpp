// /metrics over a real socket: exact counts after known traffic, bounded labels, and the text
// format as promtool reads it.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "tests/integration/gateway_fixture.hpp"
#include "tests/support/eventually.hpp"

using namespace tollgate::test;

namespace {

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos;
}

}  // namespace

TEST_CASE("metrics count requests, attempts and backend health", "[metrics][integration]") {
  gateway_fixture f;
  http_client c;
  const std::string url = f.base + "/v1/chat/completions";
  for (int i = 0; i < 3; ++i) {
    REQUIRE(c.post(url, R"({"model":"chat-alias","messages":[]})", gateway_fixture::auth()).status == 200);
  }
  response_script busy;
  busy.status = 503;
  busy.body = R"({"error":{"message":"busy","type":"server_error","code":"busy"}})";
  f.a.push(busy);
  REQUIRE(c.post(url, R"({"model":"failover-public","messages":[]})", gateway_fixture::auth()).status == 200);
  REQUIRE(c.post(url, R"({"model":"fam-x\"} 1\nfake_metric 2","messages":[]})", gateway_fixture::auth()).status == 200);
  REQUIRE(c.post(url, R"({"model":"nobody","messages":[]})", gateway_fixture::auth()).status == 404);

  // A request is counted once its accounting is done, which may be just after its client has the
  // answer: scrape until only the scrape itself is in flight.
  http_result r;
  REQUIRE(eventually([&] {
    r = c.get(f.base + "/metrics");
    return r.status == 200 && has_line(r.body, "tollgate_requests_in_flight 1");
  }));
  CHECK(r.headers["content-type"].find("text/plain; version=0.0.4") == 0);
  const std::string& m = r.body;
  INFO(m);
  CHECK(has_line(m, R"(tollgate_requests_total{model="chat-public",backend="alpha",status_class="2xx"} 3)"));
  CHECK(has_line(m, R"(tollgate_requests_total{model="failover-public",backend="beta",status_class="2xx"} 1)"));
  // A wildcard route is labelled by its pattern, never by the name the client made up.
  CHECK(has_line(m, R"(tollgate_requests_total{model="fam-*",backend="beta",status_class="2xx"} 1)"));
  CHECK(m.find("fake_metric") == std::string::npos);
  CHECK(has_line(m, R"(tollgate_requests_total{model="",backend="",status_class="4xx"} 1)"));
  CHECK(has_line(m, R"(tollgate_upstream_attempts_total{backend="alpha",outcome="error_status"} 1)"));
  CHECK(has_line(m, R"(tollgate_upstream_attempts_total{backend="alpha",outcome="ok"} 3)"));
  CHECK(has_line(m, R"(tollgate_upstream_attempts_total{backend="beta",outcome="ok"} 2)"));
  CHECK(has_line(m, R"(tollgate_request_duration_seconds_count{model="chat-public"} 3)"));
  CHECK(has_line(m, R"(tollgate_upstream_first_byte_seconds_count{backend="alpha"} 4)"));
  CHECK(has_line(m, R"(tollgate_backend_healthy{backend="alpha"} 1)"));
  CHECK(has_line(m, R"(tollgate_requests_in_flight 1)"));  // the scrape itself
  CHECK(m.find("tg-test-client-key") == std::string::npos);
}

TEST_CASE("metrics count each request under its own labels when they change from one to the next",
          "[metrics][integration]") {
  // A worker remembers the cells of its last request's labels: requests on one connection (one
  // worker) whose route, backend, key or status class change, alone or together, must each land
  // in their own cells.
  std::string yaml = gateway_fixture::default_yaml();
  const std::string key = "    key: tg-test-client-key\n";
  yaml.replace(yaml.find(key), key.size(), key + "  - name: other\n    key: tg-other-client-key\n");
  gateway_fixture f(yaml);
  const auto other = [] {
    http_options o;
    o.headers.emplace_back("Authorization: Bearer tg-other-client-key");
    return o;
  };
  const auto answer = [](int prompt, int completion) {
    response_script s;
    s.body = R"({"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":)" +
             std::to_string(prompt) + R"(,"completion_tokens":)" + std::to_string(completion) +
             R"(,"total_tokens":)" + std::to_string(prompt + completion) + "}}";
    return s;
  };
  http_client c;
  const std::string url = f.base + "/v1/chat/completions";
  const std::string chat = R"({"model":"chat-public","messages":[]})";
  const std::string failover = R"({"model":"failover-public","messages":[]})";
  f.a.push(answer(10, 1));
  REQUIRE(c.post(url, chat, gateway_fixture::auth()).status == 200);
  f.a.push(answer(20, 2));  // the same labels
  REQUIRE(c.post(url, chat, gateway_fixture::auth()).status == 200);
  f.b.push(answer(30, 3));  // every label changes
  REQUIRE(c.post(url, R"({"model":"fam-x","messages":[]})", other()).status == 200);
  f.a.push(answer(40, 4));  // the route and backend change, the key stays
  REQUIRE(c.post(url, chat, other()).status == 200);
  f.a.push(answer(50, 5));  // the key changes alone
  REQUIRE(c.post(url, chat, gateway_fixture::auth()).status == 200);
  REQUIRE(c.post(url, failover, gateway_fixture::auth()).status == 200);
  response_script refused;
  refused.status = 400;
  refused.body = R"({"error":{"message":"bad","type":"invalid_request_error","code":"bad"}})";
  f.a.push(refused);  // the status class changes alone
  REQUIRE(c.post(url, failover, gateway_fixture::auth()).status == 400);
  REQUIRE(c.post(url, failover, gateway_fixture::auth()).status == 200);
  REQUIRE(c.post(url, R"({"model":"nobody","messages":[]})", gateway_fixture::auth()).status == 404);
  f.a.push(answer(60, 6));
  REQUIRE(c.post(url, chat, gateway_fixture::auth()).status == 200);

  http_result r;
  REQUIRE(eventually([&] {
    r = c.get(f.base + "/metrics");
    return r.status == 200 && has_line(r.body, "tollgate_requests_in_flight 1");
  }));
  const std::string& m = r.body;
  INFO(m);
  CHECK(has_line(m, R"(tollgate_requests_total{model="chat-public",backend="alpha",status_class="2xx"} 5)"));
  CHECK(has_line(m, R"(tollgate_requests_total{model="fam-*",backend="beta",status_class="2xx"} 1)"));
  CHECK(has_line(m, R"(tollgate_requests_total{model="failover-public",backend="alpha",status_class="2xx"} 2)"));
  CHECK(has_line(m, R"(tollgate_requests_total{model="failover-public",backend="alpha",status_class="4xx"} 1)"));
  CHECK(has_line(m, R"(tollgate_requests_total{model="",backend="",status_class="4xx"} 1)"));
  CHECK(has_line(m, R"(tollgate_tokens_total{key="tester",model="chat-public",backend="alpha",kind="prompt"} 140)"));
  CHECK(has_line(m, R"(tollgate_tokens_total{key="tester",model="chat-public",backend="alpha",kind="completion"} 14)"));
  CHECK(has_line(m, R"(tollgate_tokens_total{key="other",model="chat-public",backend="alpha",kind="prompt"} 40)"));
  CHECK(has_line(m, R"(tollgate_tokens_total{key="other",model="chat-public",backend="alpha",kind="completion"} 4)"));
  CHECK(has_line(m, R"(tollgate_tokens_total{key="other",model="fam-*",backend="beta",kind="prompt"} 30)"));
  CHECK(has_line(m, R"(tollgate_tokens_total{key="other",model="fam-*",backend="beta",kind="completion"} 3)"));
  CHECK(m.find(R"(tollgate_tokens_total{key="tester",model="fam-*")") == std::string::npos);
  CHECK(has_line(m, R"(tollgate_request_duration_seconds_count{model="chat-public"} 5)"));
  CHECK(has_line(m, R"(tollgate_request_duration_seconds_count{model="fam-*"} 1)"));
  CHECK(has_line(m, R"(tollgate_request_duration_seconds_count{model="failover-public"} 3)"));
  CHECK(has_line(m, R"(tollgate_upstream_attempts_total{backend="alpha",outcome="ok"} 8)"));
  CHECK(has_line(m, R"(tollgate_upstream_attempts_total{backend="beta",outcome="ok"} 1)"));
  CHECK(has_line(m, R"(tollgate_upstream_first_byte_seconds_count{backend="alpha"} 8)"));
  CHECK(has_line(m, R"(tollgate_upstream_first_byte_seconds_count{backend="beta"} 1)"));
  CHECK(has_line(m, R"(tollgate_upstream_duration_seconds_count{backend="alpha"} 8)"));
  CHECK(has_line(m, R"(tollgate_upstream_duration_seconds_count{backend="beta"} 1)"));
}

TEST_CASE("promtool accepts the exposition", "[metrics][integration]") {
  std::string yaml = gateway_fixture::default_yaml();
  const std::string key = "    key: tg-test-client-key\n";
  yaml.replace(yaml.find(key), key.size(), key + "    budget: 5/day\n");
  gateway_fixture f(yaml);
  http_client c;
  c.post(f.base + "/v1/chat/completions", R"({"model":"chat-public","messages":[]})", gateway_fixture::auth());
  c.post(f.base + "/v1/chat/completions",
         R"({"model":"chat-public","stream":true,"messages":[{"role":"user","content":"three more words"}]})",
         gateway_fixture::auth());
  const auto m = c.get(f.base + "/metrics").body;
  for (const char* family : {"tollgate_time_to_first_token_seconds_bucket{", "tollgate_time_per_output_token_seconds_sum{",
                             "tollgate_upstream_duration_seconds_count{", "tollgate_gateway_overhead_seconds_count ",
                             "tollgate_key_budget_remaining{key=\"tester\",period=\"day\",currency=\"CNY\"} 5"}) {
    INFO(family);
    CHECK(m.find(family) != std::string::npos);
  }
  const std::string path = "/tmp/tollgate-metrics-" + std::to_string(f.server->port()) + ".txt";
  std::ofstream(path) << m;
  REQUIRE(std::system("command -v promtool >/dev/null") == 0);  // deploy/setup.sh installs it
  const std::string cmd = "promtool check metrics < " + path + " > " + path + ".out 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream out(path + ".out");
  const std::string said((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  INFO(said);
  CHECK(rc == 0);
  std::remove(path.c_str());
  std::remove((path + ".out").c_str());
}
