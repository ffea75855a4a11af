// API keys checked on every request: the config's static keys and the store's keys. Keys are
// kept only as SHA-256 digests; a lookup hashes the presented key, finds the digest, and compares
// the digests in constant time. A table is immutable; the server swaps in a new one when the
// config or the store changes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "gateway/limits/limiter.hpp"

namespace tollgate::gateway {

struct stored_key;

struct principal {
  std::string key_name;
  std::shared_ptr<const config::key_config> key;  ///< its limits, models and budget
  std::shared_ptr<key_state> state;               ///< its live counters, kept across reloads

  /// Whether this key may use the public model name (its `models` patterns; none: all).
  bool may_use(std::string_view model) const;
};

enum class auth_result { ok, missing, unknown, expired };

class key_table {
 public:
  /// Static keys from the config, then the store's active keys (a store key whose name is also
  /// a static key's is left out). states gives each key name its counters.
  key_table(const std::vector<config::key_config>& static_keys, const std::vector<stored_key>& stored,
            key_state_registry& states);
  /// Finds the key; `who` is set only when the result is ok. now_unix: for expiry.
  auth_result authenticate(std::string_view presented, std::int64_t now_unix, std::optional<principal>& who) const;
  /// For a principal this table authenticated earlier (a connection remembers its last key):
  /// ok, or expired once its expiry has passed.
  static auth_result recheck(const principal& who, std::int64_t now_unix);
  bool empty() const { return by_digest_.empty(); }
  /// Every key, in config order then store order.
  const std::vector<principal>& all() const { return all_; }

 private:
  std::vector<principal> all_;
  std::unordered_map<std::string, std::size_t> by_digest_;
};

/// Raw 32-byte SHA-256 of data.
std::string sha256(std::string_view data);

}  // namespace tollgate::gateway
