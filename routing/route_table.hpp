// Public model names to routes: exact names and aliases first, then wildcard patterns.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "routing/health.hpp"
#include "routing/policy.hpp"

namespace tollgate::routing {

struct target {
  std::size_t backend_index = 0;  ///< index into config::config::backends
  std::string backend;
  std::string model;  ///< upstream name; empty: the name the client sent
  unsigned weight = 1;
  std::shared_ptr<target_health> health;  ///< shared by all targets on the same backend
  config::ejection_config ejection;
  unsigned max_concurrency = 0;
  unsigned max_queue = 0;
  config::duration queue_timeout{0};
  config::duration queue_aging{0};  ///< see backend_config::queue_aging (0 resolved)
  config::price_config price;
  config::duration first_token{0};  ///< its backend's first-token timeout (bounds a hedged wait)
};

struct route {
  std::string model;  ///< the public name or pattern from the config
  std::vector<std::string> aliases;
  bool wildcard = false;
  std::vector<target> targets;  ///< in config order
  config::retry_config retry;
  config::duration hedge_after{0};
  std::vector<const route*> fallbacks;
  std::vector<const route*> context_fallbacks;
  config::duration deadline{0};  ///< the longest total timeout of its backends: the retry budget
  std::string unavailable;  ///< why it has no targets (all its backends are disabled); else empty
  std::vector<std::unique_ptr<policy>> policies;  ///< one per worker thread
};

/// A strategy name no policy is registered under, with where the config set it.
struct unknown_strategy {
  std::size_t route_index;
  int line;
  std::string name;
};

/// Immutable after construction; safe to share between threads.
class route_table {
 public:
  /// Precondition: cfg passed validation (every target names a known backend).
  /// health keeps backend health across tables; workers is the number of worker threads.
  route_table(const config::config& cfg, health_registry& health, std::size_t workers = 1);
  /// With a private health registry, for tests and check-config.
  explicit route_table(const config::config& cfg);

  /// Routes whose strategy is not registered (they fall back to priority).
  const std::vector<unknown_strategy>& unknown_strategies() const { return unknown_strategies_; }

  /// The order to try r's targets in for one request on this worker: the strategy's order, with
  /// backends that are ejected and still cooling down moved to the end.
  void plan(const route& r, std::size_t worker, const pick_context& ctx, steady_clock::time_point now,
            std::vector<std::size_t>& out) const;

  /// Resolution order: an exact name or alias; else the wildcard pattern with the most literal
  /// characters, ties going to the one listed first. nullptr when nothing matches.
  const route* resolve(std::string_view model) const;

  /// Public names a client can send as they are: exact names and aliases, in config order.
  const std::vector<std::string>& public_models() const { return public_models_; }

 private:
  void build(const config::config& cfg, health_registry& health, std::size_t workers);

  std::vector<route> routes_;
  std::vector<unknown_strategy> unknown_strategies_;
  std::unordered_map<std::string, std::size_t> exact_;  // name or alias -> route index
  std::vector<std::size_t> wildcards_;  // route indices, most specific first
  std::vector<std::string> public_models_;
};

/// Glob match: '*' matches any run of characters (also none), '?' exactly one.
bool glob_match(std::string_view pattern, std::string_view text);

}  // namespace tollgate::routing
