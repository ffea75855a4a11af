// The usage ledger in real SQLite: one record per proxied request, with what served it and what
// it used, written by the time the server has shut down.
#include <catch2/catch.hpp>

#include <sqlite3.h>

#include <cstdio>

#include "tests/integration/gateway_fixture.hpp"
#include "gateway/accounting/ledger.hpp"
#include "tests/integration/sqlite_probe.hpp"

using namespace tollgate::test;


TEST_CASE("every proxied request leaves one ledger record", "[ledger]") {
  const std::string path = temp_db("tollgate-ledger-test");
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

TEST_CASE("records the database refuses while another process holds it are written once it lets go",
          "[ledger]") {
  const std::string path = temp_db("tollgate-ledger-locked");
  remove_db(path);
  {
    tollgate::gateway::usage_ledger ledger(path, 1, std::chrono::milliseconds(50));
    db other(path);
    // Another writer (a `tollgate keys` command, a backup) holds the write lock.
    REQUIRE(sqlite3_exec(other.handle, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
    for (int i = 0; i < 3; ++i) {
      tollgate::gateway::ledger_record r;
      r.request_id = "held-" + std::to_string(i);
      r.key = "k";
      r.status = 200;
      ledger.append(0, r);
    }
    ledger.flush();
    CHECK(ledger.unwritten() == 3);
    tollgate::gateway::ledger_record later;
    later.request_id = "after";
    ledger.append(0, later);
    ledger.flush();
    CHECK(ledger.unwritten() == 4);  // still refused: nothing lost, nothing written twice
    REQUIRE(sqlite3_exec(other.handle, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
    ledger.flush();
    CHECK(ledger.unwritten() == 0);
  }
  db d(path);
  CHECK(d.one("SELECT count(*) FROM usage_ledger") == "4");
  CHECK(d.one("SELECT count(DISTINCT request_id) FROM usage_ledger") == "4");
  CHECK(d.one("SELECT group_concat(request_id) FROM (SELECT request_id FROM usage_ledger ORDER BY rowid)") ==
        "held-0,held-1,held-2,after");
  remove_db(path);
}

TEST_CASE("store.flush_interval: sync commits each record before append returns", "[ledger][hardening]") {
  const std::string path = temp_db("tollgate-ledger-sync");
  remove_db(path);
  {
    // Synchronous: a record is in the database (its WAL) as soon as append returns, so a process
    // killed right after a request ended has its row.
    tollgate::gateway::usage_ledger ledger(path, 2, std::chrono::seconds(5), std::chrono::milliseconds(0));
    tollgate::gateway::ledger_record r;
    r.request_id = "sync-1";
    r.status = 200;
    ledger.append(1, r);
    db d(path);
    CHECK(d.one("SELECT count(*) FROM usage_ledger WHERE request_id = 'sync-1'") == "1");
  }
  remove_db(path);
  const auto loaded = tollgate::config::load_string(
      "store: {sqlite: x.db, flush_interval: sync}\nbackends: [{name: a, kind: openai, base_url: \"http://h/v1\"}]\n"
      "routes: [{model: m, targets: [{backend: a}]}]\n",
      "t.yaml", [](const std::string&) { return std::nullopt; });
  REQUIRE(loaded.value);
  CHECK(loaded.value->ledger_flush_interval.count() == 0);
}
