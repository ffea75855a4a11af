#include "gateway/keys/migrations.hpp"

#include <sqlite3.h>

#include <functional>
#include <vector>

#include "gateway/keys/store.hpp"

namespace tollgate::gateway {

namespace {

void exec(sqlite3* db, const char* sql, const std::string& what) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    const std::string why = error != nullptr ? error : sqlite3_errmsg(db);
    sqlite3_free(error);
    throw store_error("store " + what + ": " + why);
  }
}

bool has_column(sqlite3* db, const char* table, const char* column) {
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT 1 FROM pragma_table_info(?) WHERE name = ?", -1, &q, nullptr) != SQLITE_OK) {
    return false;
  }
  sqlite3_bind_text(q, 1, table, -1, SQLITE_STATIC);
  sqlite3_bind_text(q, 2, column, -1, SQLITE_STATIC);
  const bool found = sqlite3_step(q) == SQLITE_ROW;
  sqlite3_finalize(q);
  return found;
}

struct migration {
  int version;
  const char* what;
  std::function<void(sqlite3*, const std::string&)> apply;
};

// Tables are created with IF NOT EXISTS: databases written before migrations were recorded
// already hold them, and take version 1 to 3 as what they have.
const std::vector<migration>& migrations() {
  static const std::vector<migration> list = {
      {1, "usage ledger",
       [](sqlite3* db, const std::string& what) {
         exec(db, R"sql(
CREATE TABLE IF NOT EXISTS usage_ledger (
  request_id TEXT NOT NULL,
  unix_ms INTEGER NOT NULL,
  key TEXT NOT NULL,
  model TEXT NOT NULL,
  route TEXT NOT NULL,
  backend TEXT NOT NULL,
  upstream_model TEXT NOT NULL,
  prompt_tokens INTEGER,
  cached_tokens INTEGER,
  completion_tokens INTEGER,
  reasoning_tokens INTEGER,
  cost REAL,
  status INTEGER NOT NULL,
  latency_ms REAL NOT NULL,
  first_byte_ms REAL,
  stream INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_ledger_time ON usage_ledger (unix_ms);
CREATE INDEX IF NOT EXISTS usage_ledger_key_time ON usage_ledger (key, unix_ms);
)sql",
              what);
       }},
      {2, "usage ledger: usage_source, first_token_ms",
       [](sqlite3* db, const std::string& what) {
         if (!has_column(db, "usage_ledger", "usage_source")) {
           exec(db, "ALTER TABLE usage_ledger ADD COLUMN usage_source TEXT", what);
         }
         if (!has_column(db, "usage_ledger", "first_token_ms")) {
           exec(db, "ALTER TABLE usage_ledger ADD COLUMN first_token_ms REAL", what);
         }
       }},
      {3, "api keys",
       [](sqlite3* db, const std::string& what) {
         exec(db, R"sql(
CREATE TABLE IF NOT EXISTS api_keys (
  name TEXT NOT NULL,
  digest TEXT NOT NULL UNIQUE,
  prefix TEXT NOT NULL,
  models TEXT NOT NULL,
  rpm INTEGER NOT NULL,
  tpm INTEGER NOT NULL,
  max_concurrency INTEGER NOT NULL,
  budget REAL NOT NULL,
  budget_period TEXT NOT NULL,
  expires_unix INTEGER NOT NULL,
  created_unix INTEGER NOT NULL,
  revoked_unix INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (name) WHERE revoked_unix = 0;
CREATE TABLE IF NOT EXISTS store_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO store_meta (name, value) VALUES ('keys_version', 0);
)sql",
              what);
       }},
      {4, "usage ledger: priority",
       [](sqlite3* db, const std::string& what) {
         if (!has_column(db, "usage_ledger", "priority")) {
           exec(db, "ALTER TABLE usage_ledger ADD COLUMN priority INTEGER", what);
         }
       }},
      {5, "api keys: priority",
       [](sqlite3* db, const std::string& what) {
         // Keys made before priorities existed are normal (1), as static keys are by default.
         if (!has_column(db, "api_keys", "priority")) {
           exec(db, "ALTER TABLE api_keys ADD COLUMN priority INTEGER NOT NULL DEFAULT 1", what);
         }
       }},
      {6, "usage ledger: cache_write_tokens",
       [](sqlite3* db, const std::string& what) {
         // Rows written before have NULL: their cache writes are in prompt_tokens, uncounted apart.
         if (!has_column(db, "usage_ledger", "cache_write_tokens")) {
           exec(db, "ALTER TABLE usage_ledger ADD COLUMN cache_write_tokens INTEGER", what);
         }
       }},
  };
  return list;
}

}  // namespace

int sqlite_schema_latest() { return migrations().back().version; }

int sqlite_schema_version(sqlite3* db) {
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", -1, &q, nullptr) != SQLITE_OK) {
    return 0;  // no table yet
  }
  const int v = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int(q, 0) : 0;
  sqlite3_finalize(q);
  return v;
}

void migrate_sqlite(sqlite3* db, const std::string& what) {
  // WAL cannot be switched inside a transaction; it is a property of the file, set once.
  exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;", what);
  exec(db, "BEGIN IMMEDIATE", what);
  try {
    exec(db,
         "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
         "applied_unix INTEGER NOT NULL)",
         what);
    const int current = sqlite_schema_version(db);
    if (current > sqlite_schema_latest()) {
      throw store_error("store " + what + ": schema version " + std::to_string(current) +
                        " is newer than this tollgate knows (" + std::to_string(sqlite_schema_latest()) +
                        "); run a newer tollgate");
    }
    for (const auto& m : migrations()) {
      if (m.version <= current) continue;
      m.apply(db, what);
      sqlite3_stmt* ins = nullptr;
      sqlite3_prepare_v2(db,
                         "INSERT INTO schema_migrations (version, description, applied_unix) "
                         "VALUES (?, ?, CAST(strftime('%s', 'now') AS INTEGER))",
                         -1, &ins, nullptr);
      sqlite3_bind_int(ins, 1, m.version);
      sqlite3_bind_text(ins, 2, m.what, -1, SQLITE_STATIC);
      const int rc = sqlite3_step(ins);
      sqlite3_finalize(ins);
      if (rc != SQLITE_DONE) throw store_error("store " + what + ": " + sqlite3_errmsg(db));
    }
    exec(db, "COMMIT", what);
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

}  // namespace tollgate::gateway
