#include "gateway/keys/key_table.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <set>

#include "gateway/keys/store.hpp"
#include "routing/route_table.hpp"

namespace tollgate::gateway {

std::string sha256(std::string_view data) {
  // Fetched once: EVP_sha256() makes EVP_Digest look the implementation up again on every call,
  // which costs more than hashing a key.
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA2-256", nullptr);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, md != nullptr ? md : EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(digest), len);
}

key_table::key_table(const std::vector<config::key_config>& static_keys, const std::vector<stored_key>& stored,
                     key_state_registry& states) {
  std::set<std::string> names;
  auto add = [&](config::key_config k) {
    if (!names.insert(k.name).second) return;
    if (k.digest.empty()) k.digest = sha256(k.key);
    k.key.clear();  // only the digest is kept in memory
    if (by_digest_.count(k.digest)) return;
    const std::string digest = k.digest;
    auto shared = std::make_shared<const config::key_config>(std::move(k));
    by_digest_.emplace(digest, all_.size());
    all_.push_back(principal{shared->name, shared, states.get(shared->name)});
  };
  for (const auto& k : static_keys) add(k);
  for (const auto& s : stored) {
    if (s.revoked_unix == 0) add(s.limits);
  }
}

bool principal::may_use(std::string_view model) const {
  if (key == nullptr || key->models.empty()) return true;
  for (const auto& pattern : key->models) {
    if (routing::glob_match(pattern, model)) return true;
  }
  return false;
}

auth_result key_table::authenticate(std::string_view presented, std::int64_t now_unix,
                                    std::optional<principal>& who) const {
  who.reset();
  if (presented.empty()) return auth_result::missing;
  const std::string digest = sha256(presented);
  auto it = by_digest_.find(digest);
  if (it == by_digest_.end()) return auth_result::unknown;
  const principal& p = all_[it->second];
  // The map found it by hash; the digests are still compared in constant time.
  if (CRYPTO_memcmp(p.key->digest.data(), digest.data(), digest.size()) != 0) return auth_result::unknown;
  if (recheck(p, now_unix) != auth_result::ok) return auth_result::expired;
  who = p;
  return auth_result::ok;
}

auth_result key_table::recheck(const principal& who, std::int64_t now_unix) {
  if (who.key->expires_unix != 0 && now_unix > who.key->expires_unix) return auth_result::expired;
  return auth_result::ok;
}

}  // namespace tollgate::gateway
