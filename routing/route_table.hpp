// Public model names to routes: exact names and aliases first, then wildcard patterns.
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"

namespace tollgate::routing {

struct target {
  std::size_t backend_index = 0;  ///< index into config::config::backends
  std::string backend;
  std::string model;  ///< upstream name; empty: the name the client sent
};

struct route {
  std::string model;  ///< the public name or pattern from the config
  std::vector<std::string> aliases;
  bool wildcard = false;
  std::vector<target> targets;  ///< in config order
};

/// Immutable after construction; safe to share between threads.
class route_table {
 public:
  /// Precondition: cfg passed validation (every target names a known backend).
  explicit route_table(const config::config& cfg);

  /// Resolution order: an exact name or alias; else the wildcard pattern with the most literal
  /// characters, ties going to the one listed first. nullptr when nothing matches.
  const route* resolve(std::string_view model) const;

  /// Public names a client can send as they are: exact names and aliases, in config order.
  const std::vector<std::string>& public_models() const { return public_models_; }

 private:
  std::vector<route> routes_;
  std::unordered_map<std::string, std::size_t> exact_;  // name or alias -> route index
  std::vector<std::size_t> wildcards_;  // route indices, most specific first
  std::vector<std::string> public_models_;
};

/// Glob match: '*' matches any run of characters (also none), '?' exactly one.
bool glob_match(std::string_view pattern, std::string_view text);

}  // namespace tollgate::routing
