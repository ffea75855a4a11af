// Creating, listing and revoking stored keys: the one code path behind both `tollgate keys` and
// the admin API, so both validate the same way and print the same JSON.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "gateway/keys/store.hpp"

namespace tollgate::gateway {

struct created_key {
  stored_key record;
  std::string secret;  ///< the key itself; shown once, never stored
};

/// Validates a create request: {"name", "models": [..] or "a,b", "rpm", "tpm", "max_concurrency",
/// "budget": "100/day", "expires": "2027-01-31"}. taken: names already in use (static keys).
/// Returns the new key, or a message saying what is wrong (and param, the field).
struct create_result {
  std::optional<created_key> key;
  std::string error;
  std::string param;
};
create_result make_key(const nlohmann::json& request, const std::vector<std::string>& taken, std::int64_t now_unix);

/// Validates a change to a stored key: {"priority": "high" | "low" | "normal" | 0..9}, the one
/// field a stored key may change (the others: revoke it and create it again). Returns the new
/// priority, or a message saying what is wrong (and param, the field).
struct update_result {
  std::optional<int> priority;
  std::string error;
  std::string param;
};
update_result read_key_update(const nlohmann::json& request);

/// The key as lists show it (no secret, no digest). spent: this period's spend when known.
nlohmann::json key_json(const stored_key& k, std::optional<double> spent);

/// "2027-01-31T23:59:59Z"
std::string iso_time(std::int64_t unix_seconds);

}  // namespace tollgate::gateway
