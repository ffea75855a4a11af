#include <catch2/catch.hpp>
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "gateway/keys/migrations.hpp"
#include "gateway/keys/store.hpp"
#include "tests/integration/sqlite_probe.hpp"

using namespace tollgate::gateway;

namespace {

std::string temp_db(const char* name) {
  auto p = std::filesystem::temp_directory_path() / (std::string(name) + "-" + std::to_string(::getpid()) + ".db");
  std::filesystem::remove(p);
  return p.string();
}

}  // namespace

TEST_CASE("SQLite migrations: a new database gets every version, once", "[store]") {
  const auto path = temp_db("migrate-new");
  {
    auto st = open_sqlite_store(path);  // migrates
    auto again = open_sqlite_store(path);  // finds nothing to do
  }
  tollgate::test::db probe(path);
  CHECK(probe.one("SELECT MAX(version) FROM schema_migrations") == std::to_string(sqlite_schema_latest()));
  CHECK(probe.one("SELECT COUNT(*) FROM schema_migrations") == std::to_string(sqlite_schema_latest()));
  CHECK(probe.one("SELECT COUNT(*) FROM pragma_table_info('usage_ledger') WHERE name = 'first_token_ms'") == "1");
  CHECK(probe.one("SELECT value FROM store_meta WHERE name = 'keys_version'") == "0");
  std::filesystem::remove(path);
}

TEST_CASE("SQLite migrations: a database from before migrations keeps its rows and gains columns", "[store]") {
  const auto path = temp_db("migrate-old");
  {
    tollgate::test::db old(path);
    // The ledger as the first releases wrote it: no usage_source, no first_token_ms, no versions.
    REQUIRE(sqlite3_exec(old.handle,
                         "CREATE TABLE usage_ledger (request_id TEXT NOT NULL, unix_ms INTEGER NOT NULL, key TEXT NOT "
                         "NULL, model TEXT NOT NULL, route TEXT NOT NULL, backend TEXT NOT NULL, upstream_model TEXT "
                         "NOT NULL, prompt_tokens INTEGER, cached_tokens INTEGER, completion_tokens INTEGER, "
                         "reasoning_tokens INTEGER, cost REAL, status INTEGER NOT NULL, latency_ms REAL NOT NULL, "
                         "first_byte_ms REAL, stream INTEGER NOT NULL);"
                         "INSERT INTO usage_ledger VALUES ('r1', 5, 'k', 'm', 'm', 'b', 'u', 1, 0, 2, 0, 0.5, 200, 3, 1, 0);",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  auto st = open_sqlite_store(path);
  CHECK(st->spent_since("k", 0) == Approx(0.5));
  tollgate::test::db probe(path);
  CHECK(probe.one("SELECT MAX(version) FROM schema_migrations") == std::to_string(sqlite_schema_latest()));
  CHECK(probe.one("SELECT COUNT(*) FROM pragma_table_info('usage_ledger') WHERE name IN ('usage_source', "
                  "'first_token_ms', 'cache_write_tokens')") == "3");
  CHECK(probe.one("SELECT usage_source FROM usage_ledger") == "NULL");
  std::filesystem::remove(path);
}

TEST_CASE("SQLite migrations: a database from a newer tollgate is refused, by name", "[store]") {
  const auto path = temp_db("migrate-newer");
  { open_sqlite_store(path); }
  {
    tollgate::test::db db(path);
    REQUIRE(sqlite3_exec(db.handle,
                         "INSERT INTO schema_migrations (version, description, applied_unix) VALUES (99, 'future', 0)",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  CHECK_THROWS_WITH(open_sqlite_store(path), Catch::Contains("schema version 99 is newer than this tollgate knows"));
  std::filesystem::remove(path);
}

TEST_CASE("SQLite migrations: keys stored before priorities existed become normal, and new ones keep theirs",
          "[store][priority]") {
  const auto path = temp_db("migrate-key-priority");
  {
    auto st = open_sqlite_store(path);
    stored_key k;
    k.limits.name = "old";
    k.limits.digest = std::string(32, 'a');
    k.prefix = "tg-aaaa";
    st->create_key(k);
  }
  {
    // Back to schema 4, as a tollgate before key priorities left it.
    tollgate::test::db db(path);
    REQUIRE(sqlite3_exec(db.handle,
                         "ALTER TABLE api_keys DROP COLUMN priority; DELETE FROM schema_migrations WHERE version > 4",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  auto st = open_sqlite_store(path);
  stored_key k;
  k.limits.name = "new";
  k.limits.digest = std::string(32, 'b');
  k.limits.priority = 0;
  k.prefix = "tg-bbbb";
  st->create_key(k);
  const auto keys = st->keys(false);
  REQUIRE(keys.size() == 2);
  CHECK(keys[0].limits.name == "old");
  CHECK(keys[0].limits.priority == 1);
  CHECK(keys[1].limits.priority == 0);
  tollgate::test::db probe(path);
  CHECK(probe.one("SELECT MAX(version) FROM schema_migrations") == std::to_string(sqlite_schema_latest()));
  CHECK(probe.one("SELECT description FROM schema_migrations WHERE version = 5") == "api keys: priority");
  // A row edited by hand out of range is read within 0..9.
  REQUIRE(sqlite3_exec(probe.handle, "UPDATE api_keys SET priority = 42 WHERE name = 'old'", nullptr, nullptr, nullptr) ==
          SQLITE_OK);
  CHECK(st->keys(false)[0].limits.priority == 9);
  std::filesystem::remove(path);
}
