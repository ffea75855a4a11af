// API keys checked on every request. Keys are kept only as SHA-256 digests; a lookup hashes the
// presented key and finds the digest, so the comparison never depends on how much of a key matched.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"

namespace tollgate::gateway {

struct principal {
  std::string key_name;
};

class key_table {
 public:
  explicit key_table(const std::vector<config::key_config>& keys);
  std::optional<principal> authenticate(std::string_view presented) const;
  bool empty() const { return by_digest_.empty(); }

 private:
  std::unordered_map<std::string, principal> by_digest_;
};

/// Raw 32-byte SHA-256 of data.
std::string sha256(std::string_view data);

}  // namespace tollgate::gateway
