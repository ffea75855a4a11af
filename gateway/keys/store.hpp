// Where API keys live, and what the ledger says they spent. The embedded SQLite store (WAL) is
// the default; a shared one (PostgreSQL) is for several replicas. Keys are kept only as SHA-256
// digests: the key itself is shown once, when it is created, and never stored or logged.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace tollgate::gateway {

struct store_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct stored_key {
  config::key_config limits;  ///< name, digest, models, rpm, tpm, max_concurrency, budget, expires
  std::string prefix;         ///< the first characters of the key, to tell keys apart in lists
  std::int64_t created_unix = 0;
  std::int64_t revoked_unix = 0;  ///< 0: active
};

/// Tokens and money of one (key, model, backend), from the ledger.
struct usage_row {
  std::string key, model, backend;
  std::int64_t requests = 0, prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0, reasoning_tokens = 0;
  double cost = 0;
};

class store {
 public:
  virtual ~store() = default;
  /// Adds a key (limits.digest set, limits.key empty). Throws store_error when the name is taken.
  virtual void create_key(const stored_key& key) = 0;
  virtual std::vector<stored_key> keys(bool include_revoked) = 0;
  /// Marks the active key of that name revoked; false when there is none.
  virtual bool revoke_key(const std::string& name, std::int64_t now_unix) = 0;
  /// Sets the priority (0..max_priority) of the active key of that name; false when there is none.
  virtual bool set_key_priority(const std::string& name, int priority) = 0;
  /// Changes whenever a key is created, changed or revoked, by this process or another one.
  virtual std::int64_t keys_version() = 0;
  /// The key's spend in the ledger since a time (for budgets after a restart).
  virtual double spent_since(const std::string& key, std::int64_t since_unix_ms) = 0;
  /// Ledger totals grouped by key, model and backend, from since (inclusive) to until
  /// (exclusive); key empty: every key.
  virtual std::vector<usage_row> usage(const std::string& key, std::int64_t since_unix_ms, std::int64_t until_unix_ms) = 0;
};

/// A stored key's priority column as requests use it: within 0..max_priority (a row edited by
/// hand may hold anything).
inline int clamp_priority(std::int64_t v) {
  return static_cast<int>(v < 0 ? 0 : v > config::max_priority ? config::max_priority : v);
}

/// Opens (creating) the SQLite store; the ledger's table lives in the same file. Throws
/// store_error when it cannot.
std::unique_ptr<store> open_sqlite_store(const std::string& path);

/// A new random key: "tg-" and 43 base62 characters (256 bits), from the system's CSPRNG.
std::string new_api_key();

/// The hex form of a raw digest, and its inverse (nullopt when malformed).
std::string to_hex(const std::string& raw);
std::optional<std::string> from_hex(const std::string& hex);

/// Start of the current budget period ("day" or "month", UTC) at now, and its end, in unix ms.
std::pair<std::int64_t, std::int64_t> budget_period_bounds(const std::string& period, std::int64_t now_unix_ms);

}  // namespace tollgate::gateway
