#include "gateway/keys/store.hpp"

#include <openssl/rand.h>
#include <sqlite3.h>

#include <chrono>
#include <mutex>

#include "gateway/accounting/ledger.hpp"
#include "gateway/keys/migrations.hpp"

namespace tollgate::gateway {

namespace {


std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out;
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size() && !text.empty()) {
    auto comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    if (comma > start) out.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

/// A prepared statement, finalized on scope exit.
class statement {
 public:
  statement(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
      throw store_error(std::string("store: ") + sqlite3_errmsg(db));
    }
  }
  ~statement() { sqlite3_finalize(stmt_); }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;

  statement& bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  statement& bind(int i, std::int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  statement& bind(int i, double v) {
    sqlite3_bind_double(stmt_, i, v);
    return *this;
  }
  /// true while there is a row; throws on errors.
  bool step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw store_error(std::string("store: ") + sqlite3_errmsg(db_));
  }
  std::string text(int col) const {
    auto p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(stmt_, col)) : std::string();
  }
  std::int64_t integer(int col) const { return sqlite3_column_int64(stmt_, col); }
  double real(int col) const { return sqlite3_column_double(stmt_, col); }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

class sqlite_store final : public store {
 public:
  explicit sqlite_store(const std::string& path) {
    // Serialized mode: workers (admin API) and the main thread share this connection.
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        nullptr) != SQLITE_OK) {
      const std::string why = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw store_error("cannot open " + path + ": " + why);
    }
    sqlite3_busy_timeout(db_, 5000);
    try {
      migrate_sqlite(db_, path);
    } catch (...) {
      sqlite3_close(db_);
      throw;
    }
  }
  ~sqlite_store() override { sqlite3_close(db_); }

  void create_key(const stored_key& k) override {
    std::lock_guard lock(mutex_);
    exec("BEGIN IMMEDIATE", "");
    try {
      statement exists(db_, "SELECT 1 FROM api_keys WHERE name = ? AND revoked_unix = 0");
      exists.bind(1, k.limits.name);
      if (exists.step()) throw store_error("a key named '" + k.limits.name + "' exists; revoke it first");
      statement ins(db_,
                    "INSERT INTO api_keys (name, digest, prefix, models, rpm, tpm, max_concurrency, budget, "
                    "budget_period, expires_unix, created_unix, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
      ins.bind(1, k.limits.name)
          .bind(2, to_hex(k.limits.digest))
          .bind(3, k.prefix)
          .bind(4, join(k.limits.models))
          .bind(5, std::int64_t(k.limits.rpm))
          .bind(6, std::int64_t(k.limits.tpm))
          .bind(7, std::int64_t(k.limits.max_concurrency))
          .bind(8, k.limits.budget)
          .bind(9, k.limits.budget_period)
          .bind(10, k.limits.expires_unix)
          .bind(11, k.created_unix)
          .bind(12, std::int64_t(k.limits.priority));
      ins.step();
      bump_version();
      exec("COMMIT", "");
    } catch (...) {
      exec("ROLLBACK", "");
      throw;
    }
  }

  std::vector<stored_key> keys(bool include_revoked) override {
    std::lock_guard lock(mutex_);
    statement q(db_, include_revoked
                         ? "SELECT name, digest, prefix, models, rpm, tpm, max_concurrency, budget, budget_period, "
                           "expires_unix, created_unix, revoked_unix, priority FROM api_keys ORDER BY created_unix, rowid"
                         : "SELECT name, digest, prefix, models, rpm, tpm, max_concurrency, budget, budget_period, "
                           "expires_unix, created_unix, revoked_unix, priority FROM api_keys WHERE revoked_unix = 0 "
                           "ORDER BY created_unix, rowid");
    std::vector<stored_key> out;
    while (q.step()) {
      stored_key k;
      k.limits.name = q.text(0);
      auto digest = from_hex(q.text(1));
      if (!digest) continue;  // a damaged row can never match a key
      k.limits.digest = *digest;
      k.prefix = q.text(2);
      k.limits.models = split(q.text(3));
      k.limits.rpm = static_cast<unsigned>(q.integer(4));
      k.limits.tpm = static_cast<unsigned>(q.integer(5));
      k.limits.max_concurrency = static_cast<unsigned>(q.integer(6));
      k.limits.budget = q.real(7);
      k.limits.budget_period = q.text(8);
      k.limits.expires_unix = q.integer(9);
      k.created_unix = q.integer(10);
      k.revoked_unix = q.integer(11);
      k.limits.priority = clamp_priority(q.integer(12));
      out.push_back(std::move(k));
    }
    return out;
  }

  bool revoke_key(const std::string& name, std::int64_t now_unix) override {
    return update_live_key("UPDATE api_keys SET revoked_unix = ? WHERE name = ? AND revoked_unix = 0", name,
                           std::max<std::int64_t>(now_unix, 1));
  }

  bool set_key_priority(const std::string& name, int priority) override {
    return update_live_key("UPDATE api_keys SET priority = ? WHERE name = ? AND revoked_unix = 0", name, priority);
  }

  /// One UPDATE of a live key (sql binds value, then the name) in a transaction; a change bumps
  /// the keys' version so that other replicas reload. false when no live key has that name.
  bool update_live_key(const char* sql, const std::string& name, std::int64_t value) {
    std::lock_guard lock(mutex_);
    exec("BEGIN IMMEDIATE", "");
    try {
      statement up(db_, sql);
      up.bind(1, value).bind(2, name);
      up.step();
      const bool changed = sqlite3_changes(db_) > 0;
      if (changed) bump_version();
      exec("COMMIT", "");
      return changed;
    } catch (...) {
      exec("ROLLBACK", "");
      throw;
    }
  }


  std::int64_t keys_version() override {
    std::lock_guard lock(mutex_);
    statement q(db_, "SELECT value FROM store_meta WHERE name = 'keys_version'");
    return q.step() ? q.integer(0) : 0;
  }

  double spent_since(const std::string& key, std::int64_t since_unix_ms) override {
    std::lock_guard lock(mutex_);
    statement q(db_, "SELECT COALESCE(SUM(cost), 0) FROM usage_ledger WHERE key = ? AND unix_ms >= ?");
    q.bind(1, key).bind(2, since_unix_ms);
    return q.step() ? q.real(0) : 0;
  }

  std::vector<usage_row> usage(const std::string& key, std::int64_t since, std::int64_t until) override {
    std::lock_guard lock(mutex_);
    statement q(db_,
                "SELECT key, model, backend, COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
                "COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
                "COALESCE(SUM(reasoning_tokens), 0), COALESCE(SUM(cost), 0) FROM usage_ledger "
                "WHERE (? = '' OR key = ?) AND unix_ms >= ? AND unix_ms < ? "
                "GROUP BY key, model, backend ORDER BY key, model, backend");
    q.bind(1, key).bind(2, key).bind(3, since).bind(4, until);
    std::vector<usage_row> out;
    while (q.step()) {
      out.push_back(usage_row{q.text(0), q.text(1), q.text(2), q.integer(3), q.integer(4), q.integer(5),
                              q.integer(6), q.integer(7), q.real(8)});
    }
    return out;
  }

 private:
  void exec(const char* sql, const std::string& path) {
    char* error = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &error) != SQLITE_OK) {
      const std::string why = error != nullptr ? error : "unknown error";
      sqlite3_free(error);
      throw store_error("store" + (path.empty() ? std::string() : " " + path) + ": " + why);
    }
  }
  void bump_version() { exec("UPDATE store_meta SET value = value + 1 WHERE name = 'keys_version'", ""); }

  sqlite3* db_ = nullptr;
  std::mutex mutex_;  // one statement sequence (a transaction) at a time
};

}  // namespace

std::unique_ptr<store> open_sqlite_store(const std::string& path) { return std::make_unique<sqlite_store>(path); }

std::string new_api_key() {
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string key = "tg-";
  // 43 characters of 62 carry 256 bits; rejection sampling keeps every character uniform.
  while (key.size() < 3 + 43) {
    unsigned char buf[64];
    if (RAND_bytes(buf, sizeof buf) != 1) throw store_error("the system's random source failed");
    for (unsigned char b : buf) {
      if (b < 248 && key.size() < 3 + 43) key += alphabet[b % 62];
    }
  }
  return key;
}

std::string to_hex(const std::string& raw) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::optional<std::string> from_hex(const std::string& hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += char(hi * 16 + lo);
  }
  return out;
}

std::pair<std::int64_t, std::int64_t> budget_period_bounds(const std::string& period, std::int64_t now_unix_ms) {
  using namespace std::chrono;
  const sys_days today = floor<days>(sys_time<milliseconds>(milliseconds(now_unix_ms)));
  if (period == "month") {
    const year_month_day ymd(today);
    const sys_days first = sys_days(ymd.year() / ymd.month() / 1);
    const sys_days next = sys_days((ymd.year() / ymd.month() + months(1)) / 1);
    return {duration_cast<milliseconds>(first.time_since_epoch()).count(),
            duration_cast<milliseconds>(next.time_since_epoch()).count()};
  }
  return {duration_cast<milliseconds>(today.time_since_epoch()).count(),
          duration_cast<milliseconds>((today + days(1)).time_since_epoch()).count()};
}

}  // namespace tollgate::gateway
