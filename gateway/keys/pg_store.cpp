#include "gateway/keys/pg_store.hpp"

#include <libpq-fe.h>

#include <cstdio>
#include <utility>
#include <iostream>
#include <mutex>
#include <vector>

#include "gateway/accounting/ledger.hpp"
#include "gateway/keys/store.hpp"

namespace tollgate::gateway {

namespace {

struct pg_migration {
  int version;
  const char* what;
  const char* sql;
};

const std::vector<pg_migration>& pg_migrations() {
  static const std::vector<pg_migration> list = {
      {1, "usage ledger", R"sql(
CREATE TABLE IF NOT EXISTS usage_ledger (
  record_id TEXT PRIMARY KEY,
  request_id TEXT NOT NULL,
  unix_ms BIGINT NOT NULL,
  key TEXT NOT NULL,
  model TEXT NOT NULL,
  route TEXT NOT NULL,
  backend TEXT NOT NULL,
  upstream_model TEXT NOT NULL,
  prompt_tokens BIGINT,
  cached_tokens BIGINT,
  completion_tokens BIGINT,
  reasoning_tokens BIGINT,
  cost DOUBLE PRECISION,
  status INTEGER NOT NULL,
  latency_ms DOUBLE PRECISION NOT NULL,
  first_byte_ms DOUBLE PRECISION,
  stream BOOLEAN NOT NULL,
  usage_source TEXT,
  first_token_ms DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS usage_ledger_time ON usage_ledger (unix_ms);
CREATE INDEX IF NOT EXISTS usage_ledger_key_time ON usage_ledger (key, unix_ms);
)sql"},
      {2, "api keys", R"sql(
CREATE TABLE IF NOT EXISTS api_keys (
  id BIGSERIAL PRIMARY KEY,
  name TEXT NOT NULL,
  digest TEXT NOT NULL UNIQUE,
  prefix TEXT NOT NULL,
  models TEXT NOT NULL,
  rpm BIGINT NOT NULL,
  tpm BIGINT NOT NULL,
  max_concurrency BIGINT NOT NULL,
  budget DOUBLE PRECISION NOT NULL,
  budget_period TEXT NOT NULL,
  expires_unix BIGINT NOT NULL,
  created_unix BIGINT NOT NULL,
  revoked_unix BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (name) WHERE revoked_unix = 0;
CREATE TABLE IF NOT EXISTS store_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO store_meta (name, value) VALUES ('keys_version', 0) ON CONFLICT DO NOTHING;
)sql"},
      {3, "usage ledger: priority", R"sql(
ALTER TABLE usage_ledger ADD COLUMN IF NOT EXISTS priority INTEGER;
)sql"},
      {4, "api keys: priority", R"sql(
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS priority INTEGER NOT NULL DEFAULT 1;
)sql"},
      {5, "usage ledger: cache_write_tokens", R"sql(
ALTER TABLE usage_ledger ADD COLUMN IF NOT EXISTS cache_write_tokens BIGINT;
)sql"},
  };
  return list;
}

/// A result, cleared on scope exit.
class pg_result {
 public:
  explicit pg_result(PGresult* r) : r_(r) {}
  ~pg_result() { PQclear(r_); }
  pg_result(const pg_result&) = delete;
  pg_result& operator=(const pg_result&) = delete;
  pg_result(pg_result&& o) noexcept : r_(std::exchange(o.r_, nullptr)) {}
  PGresult* get() const { return r_; }
  bool ok() const {
    const auto s = PQresultStatus(r_);
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
  }
  int rows() const { return PQntuples(r_); }
  std::string text(int row, int col) const { return PQgetvalue(r_, row, col); }
  std::int64_t integer(int row, int col) const { return std::stoll(PQgetvalue(r_, row, col)); }
  double real(int row, int col) const { return std::stod(PQgetvalue(r_, row, col)); }
  bool null(int row, int col) const { return PQgetisnull(r_, row, col) != 0; }
  std::string sqlstate() const {
    const char* s = PQresultErrorField(r_, PG_DIAG_SQLSTATE);
    return s != nullptr ? s : "";
  }

 private:
  PGresult* r_;
};

/// One connection, opened on demand and again after it broke. Not thread-safe.
class pg_connection {
 public:
  explicit pg_connection(std::string url) : url_(std::move(url)) {}
  ~pg_connection() { PQfinish(conn_); }
  pg_connection(const pg_connection&) = delete;
  pg_connection& operator=(const pg_connection&) = delete;

  /// Connected, or the reason it is not.
  bool ensure(std::string& why) {
    if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK) return true;
    PQfinish(conn_);
    // The URL's own connect_timeout, if it has one, comes later and wins.
    const char* keys[] = {"connect_timeout", "dbname", nullptr};
    const char* values[] = {"3", url_.c_str(), nullptr};
    conn_ = PQconnectdbParams(keys, values, 1);
    if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK) {
      pg_result quiet(PQexec(conn_, "SET client_min_messages = warning"));
      return true;
    }
    why = conn_ != nullptr ? trim(PQerrorMessage(conn_)) : "out of memory";
    return false;
  }

  pg_result exec(const char* sql, const std::vector<std::string>& params = {}) {
    std::vector<const char*> p;
    p.reserve(params.size());
    for (const auto& s : params) p.push_back(s.c_str());
    return pg_result(PQexecParams(conn_, sql, static_cast<int>(p.size()), nullptr, p.data(), nullptr, nullptr, 0));
  }
  /// exec, throwing store_error unless the statement succeeded.
  pg_result must(const char* sql, const std::vector<std::string>& params = {}) {
    auto r = exec(sql, params);
    if (!r.ok()) throw store_error("postgres: " + error());
    return r;
  }
  std::string error() const { return trim(PQerrorMessage(conn_)); }
  PGconn* raw() const { return conn_; }

 private:
  static std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
  }
  std::string url_;
  PGconn* conn_ = nullptr;
};

/// The URL with its password hidden, for messages.
std::string redacted(const std::string& url) {
  const auto scheme = url.find("://");
  const auto at = url.find('@');
  if (scheme == std::string::npos || at == std::string::npos || at < scheme) return url;
  const auto colon = url.find(':', scheme + 3);
  if (colon == std::string::npos || colon > at) return url;
  return url.substr(0, colon + 1) + "***" + url.substr(at);
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out;
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (!text.empty() && start <= text.size()) {
    auto comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    if (comma > start) out.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

std::string real_text(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void migrate(pg_connection& c) {
  c.must("BEGIN");
  try {
    // Replicas starting together wait here for each other; the lock ends with the transaction.
    c.must("SELECT pg_advisory_xact_lock(7418336512)");
    c.must("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
           "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())");
    auto v = c.must("SELECT COALESCE(MAX(version), 0) FROM schema_migrations");
    const int current = static_cast<int>(v.integer(0, 0));
    if (current > postgres_schema_latest()) {
      throw store_error("postgres: schema version " + std::to_string(current) + " is newer than this tollgate knows (" +
                        std::to_string(postgres_schema_latest()) + "); run a newer tollgate");
    }
    for (const auto& m : pg_migrations()) {
      if (m.version <= current) continue;
      // A multi-statement text runs through the simple protocol (no parameters).
      pg_result r(PQexec(c.raw(), m.sql));
      if (!r.ok()) throw store_error("postgres: migration " + std::to_string(m.version) + " (" + m.what + "): " + c.error());
      c.must("INSERT INTO schema_migrations (version, description) VALUES ($1, $2)", {std::to_string(m.version), m.what});
      std::cerr << "tollgate: postgres: schema migrated to version " << m.version << " (" << m.what << ")" << std::endl;
    }
    c.must("COMMIT");
  } catch (...) {
    c.exec("ROLLBACK");
    throw;
  }
}

class postgres_store final : public store {
 public:
  explicit postgres_store(const std::string& url) : url_(url), conn_(url) {
    std::string why;
    if (!conn_.ensure(why)) throw store_error("cannot connect to PostgreSQL at " + redacted(url) + ": " + why);
    migrate(conn_);
  }

  void create_key(const stored_key& k) override {
    std::lock_guard lock(mutex_);
    connect();
    conn_.must("BEGIN");
    try {
      auto exists = conn_.must("SELECT 1 FROM api_keys WHERE name = $1 AND revoked_unix = 0", {k.limits.name});
      if (exists.rows() > 0) throw store_error("a key named '" + k.limits.name + "' exists; revoke it first");
      auto ins = conn_.exec(
          "INSERT INTO api_keys (name, digest, prefix, models, rpm, tpm, max_concurrency, budget, budget_period, "
          "expires_unix, created_unix, priority) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
          {k.limits.name, to_hex(k.limits.digest), k.prefix, join(k.limits.models), std::to_string(k.limits.rpm),
           std::to_string(k.limits.tpm), std::to_string(k.limits.max_concurrency), real_text(k.limits.budget),
           k.limits.budget_period, std::to_string(k.limits.expires_unix), std::to_string(k.created_unix),
           std::to_string(k.limits.priority)});
      if (!ins.ok()) {
        // Another replica created the same name between the check and the insert.
        if (ins.sqlstate() == "23505") throw store_error("a key named '" + k.limits.name + "' exists; revoke it first");
        throw store_error("postgres: " + conn_.error());
      }
      conn_.must("UPDATE store_meta SET value = value + 1 WHERE name = 'keys_version'");
      conn_.must("COMMIT");
    } catch (...) {
      conn_.exec("ROLLBACK");
      throw;
    }
  }

  std::vector<stored_key> keys(bool include_revoked) override {
    std::lock_guard lock(mutex_);
    connect();
    auto q = conn_.must(include_revoked
                            ? "SELECT name, digest, prefix, models, rpm, tpm, max_concurrency, budget, budget_period, "
                              "expires_unix, created_unix, revoked_unix, priority FROM api_keys ORDER BY created_unix, id"
                            : "SELECT name, digest, prefix, models, rpm, tpm, max_concurrency, budget, budget_period, "
                              "expires_unix, created_unix, revoked_unix, priority FROM api_keys WHERE revoked_unix = 0 "
                              "ORDER BY created_unix, id");
    std::vector<stored_key> out;
    for (int i = 0; i < q.rows(); ++i) {
      stored_key k;
      k.limits.name = q.text(i, 0);
      auto digest = from_hex(q.text(i, 1));
      if (!digest) continue;  // a damaged row can never match a key
      k.limits.digest = *digest;
      k.prefix = q.text(i, 2);
      k.limits.models = split(q.text(i, 3));
      k.limits.rpm = static_cast<unsigned>(q.integer(i, 4));
      k.limits.tpm = static_cast<unsigned>(q.integer(i, 5));
      k.limits.max_concurrency = static_cast<unsigned>(q.integer(i, 6));
      k.limits.budget = q.real(i, 7);
      k.limits.budget_period = q.text(i, 8);
      k.limits.expires_unix = q.integer(i, 9);
      k.created_unix = q.integer(i, 10);
      k.revoked_unix = q.integer(i, 11);
      k.limits.priority = clamp_priority(q.integer(i, 12));
      out.push_back(std::move(k));
    }
    return out;
  }

  bool revoke_key(const std::string& name, std::int64_t now_unix) override {
    return update_live_key("UPDATE api_keys SET revoked_unix = $1 WHERE name = $2 AND revoked_unix = 0", name,
                           std::max<std::int64_t>(now_unix, 1));
  }

  bool set_key_priority(const std::string& name, int priority) override {
    return update_live_key("UPDATE api_keys SET priority = $1 WHERE name = $2 AND revoked_unix = 0", name, priority);
  }

  /// One UPDATE of a live key ($1 the value, $2 the name) in a transaction; a change bumps the
  /// keys' version so that other replicas reload. false when no live key has that name.
  bool update_live_key(const char* sql, const std::string& name, std::int64_t value) {
    std::lock_guard lock(mutex_);
    connect();
    conn_.must("BEGIN");
    try {
      auto up = conn_.must(sql, {std::to_string(value), name});
      const bool changed = std::string(PQcmdTuples(up.get())) != "0";
      if (changed) conn_.must("UPDATE store_meta SET value = value + 1 WHERE name = 'keys_version'");
      conn_.must("COMMIT");
      return changed;
    } catch (...) {
      conn_.exec("ROLLBACK");
      throw;
    }
  }


  std::int64_t keys_version() override {
    std::lock_guard lock(mutex_);
    connect();
    auto q = conn_.must("SELECT value FROM store_meta WHERE name = 'keys_version'");
    return q.rows() > 0 ? q.integer(0, 0) : 0;
  }

  double spent_since(const std::string& key, std::int64_t since_unix_ms) override {
    std::lock_guard lock(mutex_);
    connect();
    auto q = conn_.must("SELECT COALESCE(SUM(cost), 0) FROM usage_ledger WHERE key = $1 AND unix_ms >= $2",
                        {key, std::to_string(since_unix_ms)});
    return q.real(0, 0);
  }

  std::vector<usage_row> usage(const std::string& key, std::int64_t since, std::int64_t until) override {
    std::lock_guard lock(mutex_);
    connect();
    auto q = conn_.must(
        "SELECT key, model, backend, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(cached_tokens), 0), "
        "COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(reasoning_tokens), 0), COALESCE(SUM(cost), 0) "
        "FROM usage_ledger WHERE ($1 = '' OR key = $1) AND unix_ms >= $2 AND unix_ms < $3 "
        "GROUP BY key, model, backend ORDER BY key, model, backend",
        {key, std::to_string(since), std::to_string(until)});
    std::vector<usage_row> out;
    for (int i = 0; i < q.rows(); ++i) {
      out.push_back(usage_row{q.text(i, 0), q.text(i, 1), q.text(i, 2), q.integer(i, 3), q.integer(i, 4),
                              q.integer(i, 5), q.integer(i, 6), q.integer(i, 7), q.real(i, 8)});
    }
    return out;
  }

 private:
  void connect() {
    std::string why;
    if (!conn_.ensure(why)) throw store_error("PostgreSQL at " + redacted(url_) + " is unreachable: " + why);
  }

  std::string url_;
  pg_connection conn_;
  std::mutex mutex_;  // one statement sequence (a transaction) at a time
};

class postgres_ledger_sink final : public ledger_sink {
 public:
  explicit postgres_ledger_sink(const std::string& url) : url_(url), conn_(url) {}

  bool write(const std::vector<ledger_record>& batch) override {
    std::string why;
    if (!conn_.ensure(why)) {
      complain("unreachable: " + why);
      return false;
    }
    if (!conn_.exec("BEGIN").ok()) return fail();
    constexpr std::size_t columns = 21, rows_per_statement = 500;
    for (std::size_t start = 0; start < batch.size(); start += rows_per_statement) {
      const std::size_t end = std::min(batch.size(), start + rows_per_statement);
      std::string sql =
          "INSERT INTO usage_ledger (record_id, request_id, unix_ms, key, model, route, backend, upstream_model, "
          "prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost, status, latency_ms, "
          "first_byte_ms, stream, usage_source, first_token_ms, priority, cache_write_tokens) VALUES ";
      std::vector<std::string> values;
      std::vector<const char*> params;  // nullptr: SQL NULL
      values.reserve((end - start) * columns);
      std::vector<int> null_at;
      for (std::size_t i = start; i < end; ++i) {
        const auto& r = batch[i];
        sql += i == start ? "(" : ", (";
        for (std::size_t c = 0; c < columns; ++c) {
          sql += (c == 0 ? "$" : ", $") + std::to_string((i - start) * columns + c + 1);
        }
        sql += ")";
        auto add = [&](std::string v) { values.push_back(std::move(v)); };
        auto add_null = [&] {
          null_at.push_back(static_cast<int>(values.size()));
          values.emplace_back();
        };
        add(r.record_id);
        add(r.request_id);
        add(std::to_string(r.unix_ms));
        add(r.key);
        add(r.model);
        add(r.route);
        add(r.backend);
        add(r.upstream_model);
        for (std::int64_t v : {r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.reasoning_tokens}) {
          if (r.has_usage) add(std::to_string(v));
          else add_null();
        }
        if (r.has_usage) add(real_text(r.cost));
        else add_null();
        add(std::to_string(r.status));
        add(real_text(r.latency_ms));
        if (r.first_byte_ms >= 0) add(real_text(r.first_byte_ms));
        else add_null();
        add(r.stream ? "true" : "false");
        if (r.has_usage) add(r.estimated ? "estimated" : r.counted ? "counted" : "upstream");
        else add_null();
        if (r.first_token_ms >= 0) add(real_text(r.first_token_ms));
        else add_null();
        if (r.priority >= 0) add(std::to_string(r.priority));
        else add_null();
        if (r.has_usage) add(std::to_string(r.cache_write_tokens));
        else add_null();
      }
      // A batch replayed from the spool after a commit whose answer was lost is kept once.
      sql += " ON CONFLICT (record_id) DO NOTHING";
      for (const auto& v : values) params.push_back(v.c_str());
      for (int n : null_at) params[static_cast<std::size_t>(n)] = nullptr;
      pg_result r(PQexecParams(conn_.raw(), sql.c_str(), static_cast<int>(params.size()), nullptr, params.data(),
                               nullptr, nullptr, 0));
      if (!r.ok()) return fail();
    }
    if (!conn_.exec("COMMIT").ok()) return fail();
    if (complained_) {
      std::cerr << "tollgate: ledger: PostgreSQL answers again" << std::endl;
      complained_ = false;
    }
    return true;
  }

 private:
  bool fail() {
    complain(conn_.error());
    conn_.exec("ROLLBACK");
    return false;
  }
  void complain(const std::string& why) {
    if (complained_) return;  // once per outage, not once per flush
    std::cerr << "tollgate: ledger: PostgreSQL at " << redacted(url_) << ": " << why << std::endl;
    complained_ = true;
  }

  std::string url_;
  pg_connection conn_;
  bool complained_ = false;
};

}  // namespace

int postgres_schema_latest() { return pg_migrations().back().version; }

std::unique_ptr<store> open_postgres_store(const std::string& url) { return std::make_unique<postgres_store>(url); }

std::unique_ptr<ledger_sink> open_postgres_ledger_sink(const std::string& url) {
  return std::make_unique<postgres_ledger_sink>(url);
}

}  // namespace tollgate::gateway
