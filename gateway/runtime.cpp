#include "gateway/runtime.hpp"

#include <thread>

#include "adapters/openai_backend.hpp"

namespace tollgate::gateway {

runtime::runtime(config::config c, lasting_state& lasting, std::size_t workers)
    : cfg(std::move(c)),
      routes(cfg, lasting.health, workers),
      keys(cfg.keys, lasting.keys),
      limits(std::make_unique<memory_limiter>()) {
  routing::health_registry& health = lasting.health;
  for (const auto& b : cfg.backends) {
    // Validation admits only known kinds; "openai" is the one there is today.
    backends.push_back(std::make_unique<adapters::openai_backend>(b));
    backend_health.push_back(health.get(b.name));
  }
}

std::vector<config::problem> runtime_problems(const config::config& c) {
  std::vector<config::problem> problems;
  routing::route_table table(c);
  std::string known;
  for (const auto& name : routing::policy_names()) known += (known.empty() ? "" : ", ") + name;
  for (const auto& u : table.unknown_strategies()) {
    problems.push_back({c.source, u.line, 0, "routes[" + std::to_string(u.route_index) + "].strategy",
                        "unknown strategy '" + u.name + "' (known: " + known + ")"});
  }
  return problems;
}

std::size_t worker_count(const config::server_config& s) {
  if (s.threads != 0) return s.threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace tollgate::gateway
