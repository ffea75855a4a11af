// Everything a request needs from the configuration, built once per config and then only read.
// Workers hold it through a shared_ptr, so a request keeps the snapshot it started with.
#pragma once

#include <memory>
#include <vector>

#include "routing/health.hpp"

#include "adapters/backend.hpp"
#include "config/config.hpp"
#include "gateway/key_table.hpp"
#include "gateway/limiter.hpp"
#include "routing/route_table.hpp"

namespace tollgate::gateway {

/// State that outlives any one config: backend health and key counters, by name.
struct lasting_state {
  routing::health_registry health;
  key_state_registry keys;
};

struct runtime {
  /// lasting: shared with the runtimes before and after this one, so health and limits survive
  /// a reload. workers: the server's worker threads (each gets its own strategy instances).
  runtime(config::config c, lasting_state& lasting, std::size_t workers);

  config::config cfg;
  routing::route_table routes;
  key_table keys;
  std::vector<std::unique_ptr<adapters::backend>> backends;  ///< same order as cfg.backends
  std::vector<std::shared_ptr<routing::target_health>> backend_health;  ///< same order
  std::unique_ptr<limiter> limits;
};

/// Problems only the assembled runtime can see (a strategy no policy is registered under).
std::vector<config::problem> runtime_problems(const config::config& c);

/// Worker threads for a server config: server.threads, or one per core when 0.
std::size_t worker_count(const config::server_config& s);

}  // namespace tollgate::gateway
