#include "gateway/server/runtime.hpp"

#include <thread>

#include "adapters/backend_kinds.hpp"

#include <filesystem>
#include <fstream>
#include <iostream>

#include "gateway/limits/redis_limiter.hpp"
#include "tokenizer/tokenizer.hpp"

namespace tollgate::gateway {

runtime::runtime(config::config c, lasting_state& lasting, std::size_t workers)
    : cfg(std::move(c)),
      routes(cfg, lasting.health, workers),
      lasting(&lasting),
      limits(std::make_unique<memory_limiter>()) {
  lasting.responses.set_capacity(cfg.server.remembered_responses);
  if (!cfg.limits.redis_url.empty()) {
    std::lock_guard lock(lasting.redis_mutex);
    if (!lasting.redis || lasting.redis_url != cfg.limits.redis_url) {
      lasting.redis = make_redis_link(cfg.limits.redis_url, [&health = lasting.health](
                                                                  const std::string& backend,
                                                                  std::chrono::milliseconds cooldown) {
        health.get(backend)->eject_for(std::chrono::steady_clock::now(), cooldown);
      });
      lasting.redis_url = cfg.limits.redis_url;
    }
    limits = std::make_unique<redis_limiter>(lasting.redis, cfg.limits);
  }
  if (const std::string path = tokenizer_path_for(cfg); !path.empty()) {
    std::lock_guard lock(lasting.tokenizer_mutex);
    if (lasting.tokenizer_path != path || !lasting.tokenizer) {
      try {
        lasting.tokenizer = tollgate::tokenizer::tokenizer::load(path);
        lasting.tokenizer_path = path;
      } catch (const std::exception& e) {
        std::cerr << "tollgate: metering without a tokenizer: " << e.what() << std::endl;
      }
    }
    tokenizer = lasting.tokenizer;
  } else {
    std::lock_guard lock(lasting.tokenizer_mutex);
    if (!lasting.warned_no_tokenizer) {
      std::cerr << "tollgate: no tokenizer (run deploy/setup.sh or set metering.tokenizer): answers without "
                   "usage from their backend will record no tokens"
                << std::endl;
      lasting.warned_no_tokenizer = true;
    }
  }
  routing::health_registry& health = lasting.health;
  for (const auto& b : cfg.backends) {
    backends.push_back(adapters::make_backend(b, lasting.engines));
    backend_health.push_back(health.get(b.name));
  }
  // With Redis, an ejection decided here is published, and the others' heard (redis_limiter.hpp).
  std::shared_ptr<redis_link> link;
  {
    std::lock_guard lock(lasting.redis_mutex);
    if (!cfg.limits.redis_url.empty()) link = lasting.redis;
  }
  for (std::size_t i = 0; i < cfg.backends.size(); ++i) {
    if (!link) {
      backend_health[i]->set_on_eject(nullptr);
      continue;
    }
    std::weak_ptr<redis_link> weak = link;
    backend_health[i]->set_on_eject([weak, name = cfg.backends[i].name](std::chrono::milliseconds cooldown) {
      if (auto l = weak.lock()) announce_ejection(*l, name, cooldown);
    });
  }
}

std::string tokenizer_path_for(const config::config& c) {
  if (!c.tokenizer_path.empty()) return c.tokenizer_path;
  namespace fs = std::filesystem;
  const fs::path fetched = fs::path("data") / "deepseek_v3" / "tokenizer.json";
  std::error_code ec;
  if (fs::exists(fetched, ec)) return fetched.string();
  // Started from elsewhere: the repository the binary was built in (build/tollgate).
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  for (const fs::path& root : {exe.parent_path(), exe.parent_path().parent_path()}) {
    if (fs::exists(root / fetched, ec)) return (root / fetched).string();
  }
  return "";
}

std::vector<config::problem> runtime_problems(const config::config& c) {
  std::vector<config::problem> problems;
  if (!c.tokenizer_path.empty()) {
    std::ifstream probe(c.tokenizer_path);
    if (!probe) problems.push_back({c.source, 0, 0, "metering.tokenizer", "cannot read " + c.tokenizer_path});
  }
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
