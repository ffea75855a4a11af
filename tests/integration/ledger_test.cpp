// The usage ledger in real SQLite: one record per proxied request, with what served it and what
// it used, written by the time the server has shut down.
#include <catch2/catch.hpp>

#include <sqlite3.h>

#include <unistd.h>

#include <cstdio>

#include "tests/integration/gateway_fixture.hpp"
#include "tests/integration/sqlite_probe.hpp"

using namespace tollgate::test;


TEST_CASE("every proxied request leaves one ledger record", "[ledger]") {
  const std::string path = "/tmp/tollgate-ledger-test-" + std::to_string(::getpid()) + ".db";
  std::remove(path.c_str());
  {
    gateway_fixture f("store: {sqlite: " + path + "}\n" + gateway_fixture::default_yaml());
    http_client c;
    const std::string url = f.base + "/v1/chat/completions";
    for (int i = 0; i < 3; ++i) {
      REQUIRE(c.post(url, R"({"model":"chat-public","messages":[{"role":"user","content":"one two three"}]})",
                     gateway_fixture::auth({"X-Request-Id: plain-" + std::to_string(i)}))
                  .status == 200);
    }
    REQUIRE(c.post(url, R"({"model":"chat-alias","stream":true,"messages":[{"role":"user","content":"four five"}]})",
                   gateway_fixture::auth({"X-Request-Id: streamed"}))
                .status == 200);
    response_script busy;
    busy.status = 503;
    f.a.push(busy);
    REQUIRE(c.post(url, R"({"model":"failover-public","messages":[]})", gateway_fixture::auth({"X-Request-Id: moved"}))
                .status == 200);
    REQUIRE(c.post(url, R"({"model":"nobody","messages":[]})", gateway_fixture::auth({"X-Request-Id: unknown"}))
                .status == 404);
    REQUIRE(c.get(f.base + "/v1/models", gateway_fixture::auth()).status == 200);  // not a proxied request
    f.server->shutdown(std::chrono::seconds(5));
  }
  db d(path);
  CHECK(d.one("SELECT count(*) FROM usage_ledger") == "6");
  CHECK(d.one("SELECT key || '|' || model || '|' || route || '|' || backend || '|' || upstream_model || '|' || status "
              "FROM usage_ledger WHERE request_id = 'plain-0'") == "tester|chat-public|chat-public|alpha|upstream-model-a|200");
  // The fake's usage: prompt = words of the last message + 1, completion = words of "echo: ...".
  CHECK(d.one("SELECT prompt_tokens || '/' || completion_tokens FROM usage_ledger WHERE request_id = 'plain-1'") == "4/4");
  CHECK(d.one("SELECT prompt_tokens || '/' || completion_tokens || '/' || stream FROM usage_ledger "
              "WHERE request_id = 'streamed'") == "3/3/1");
  CHECK(d.one("SELECT backend || '|' || upstream_model FROM usage_ledger WHERE request_id = 'moved'") == "beta|model-b");
  CHECK(d.one("SELECT route || '|' || backend || '|' || status || '|' || ifnull(prompt_tokens, 'none') "
              "FROM usage_ledger WHERE request_id = 'unknown'") == "||404|none");
  CHECK(d.one("SELECT count(*) FROM usage_ledger WHERE first_byte_ms IS NOT NULL AND latency_ms >= first_byte_ms") == "5");
  CHECK(d.one("PRAGMA journal_mode") == "wal");
  std::remove(path.c_str());
  std::remove((path + "-wal").c_str());
  std::remove((path + "-shm").c_str());
}
