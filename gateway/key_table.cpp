#include "gateway/key_table.hpp"

#include <openssl/evp.h>

#include "routing/route_table.hpp"

namespace tollgate::gateway {

std::string sha256(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(digest), len);
}

key_table::key_table(const std::vector<config::key_config>& keys, key_state_registry& states) {
  for (const auto& k : keys) by_digest_.emplace(sha256(k.key), principal{k.name, &k, states.get(k.name)});
}

bool principal::may_use(std::string_view model) const {
  if (key == nullptr || key->models.empty()) return true;
  for (const auto& pattern : key->models) {
    if (routing::glob_match(pattern, model)) return true;
  }
  return false;
}

std::optional<principal> key_table::authenticate(std::string_view presented) const {
  if (presented.empty()) return std::nullopt;
  auto it = by_digest_.find(sha256(presented));
  if (it == by_digest_.end()) return std::nullopt;
  return it->second;
}

}  // namespace tollgate::gateway
