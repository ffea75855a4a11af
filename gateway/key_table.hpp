// API keys checked on every request. Keys are kept only as SHA-256 digests; a lookup hashes the
// presented key and finds the digest, so the comparison never depends on how much of a key matched.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "gateway/limiter.hpp"

namespace tollgate::gateway {

struct principal {
  std::string key_name;
  const config::key_config* key = nullptr;  ///< its limits and models; owned by the runtime's config
  std::shared_ptr<key_state> state;        ///< its live counters, kept across reloads

  /// Whether this key may use the public model name (its `models` patterns; none: all).
  bool may_use(std::string_view model) const;
};

class key_table {
 public:
  /// keys must outlive the table (the runtime's config); states gives each key its counters.
  key_table(const std::vector<config::key_config>& keys, key_state_registry& states);
  std::optional<principal> authenticate(std::string_view presented) const;
  bool empty() const { return by_digest_.empty(); }

 private:
  std::unordered_map<std::string, principal> by_digest_;
};

/// Raw 32-byte SHA-256 of data.
std::string sha256(std::string_view data);

}  // namespace tollgate::gateway
