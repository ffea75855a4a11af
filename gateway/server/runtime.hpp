// Everything a request needs from the configuration, built once per config and then only read.
// Workers hold it through a shared_ptr, so a request keeps the snapshot it started with.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "routing/health.hpp"

#include "adapters/backend.hpp"
#include "adapters/backend_kinds.hpp"
#include "config/config.hpp"
#include "gateway/keys/key_table.hpp"
#include "gateway/limits/limiter.hpp"
#include "gateway/proxy/response_owners.hpp"
#include "routing/route_table.hpp"

namespace tollgate::tokenizer {
class tokenizer;
}

namespace tollgate::gateway {

class redis_link;

/// State that outlives any one config: backend health and key counters, by name, and the
/// metering tokenizer (loaded again only when its path changes).
struct lasting_state {
  routing::health_registry health;
  key_state_registry keys;
  std::mutex tokenizer_mutex;
  std::string tokenizer_path;
  bool warned_no_tokenizer = false;
  std::shared_ptr<const tollgate::tokenizer::tokenizer> tokenizer;
  /// Loaded local-engine models by checkpoint, device and engine settings: a reload keeps the weights.
  adapters::engine_cache engines;
  /// The connection to Redis for shared limits (limits.redis), kept while its URL stays; declared
  /// after keys, whose counters it points into, so it goes first.
  std::mutex redis_mutex;
  std::string redis_url;
  std::shared_ptr<redis_link> redis;
  /// Which backend and key each stored response relayed through here belongs to
  /// (server.remembered_responses of the running config bounds it).
  response_owners responses;
};

struct runtime {
  /// lasting: shared with the runtimes before and after this one, so health and limits survive
  /// a reload. workers: the server's worker threads (each gets its own strategy instances).
  runtime(config::config c, lasting_state& lasting, std::size_t workers);

  config::config cfg;
  routing::route_table routes;
  lasting_state* lasting;  ///< key counters for the server's key table
  /// Counts tokens when an upstream reports no usage; null when no tokenizer file is there.
  std::shared_ptr<const tollgate::tokenizer::tokenizer> tokenizer;
  std::vector<std::unique_ptr<adapters::backend>> backends;  ///< same order as cfg.backends
  std::vector<std::shared_ptr<routing::target_health>> backend_health;  ///< same order
  std::unique_ptr<limiter> limits;
};

/// The tokenizer file metering uses: metering.tokenizer, else the one deploy/setup.sh fetches
/// (data/deepseek_v3/tokenizer.json under the working directory, else beside the binary or one
/// folder up from it) when it is there; "" if none.
std::string tokenizer_path_for(const config::config& c);

/// Problems only the assembled runtime can see (a strategy no policy is registered under).
std::vector<config::problem> runtime_problems(const config::config& c);

/// Worker threads for a server config: server.threads, or one per core when 0.
std::size_t worker_count(const config::server_config& s);

}  // namespace tollgate::gateway
