#include "routing/route_table.hpp"

#include <algorithm>

namespace tollgate::routing {

bool glob_match(std::string_view pattern, std::string_view text) {
  // Iterative matcher with one backtrack point: linear for the patterns model names use.
  std::size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

namespace {
bool has_wildcard(std::string_view s) { return s.find_first_of("*?") != std::string_view::npos; }

std::size_t literal_count(std::string_view s) {
  return static_cast<std::size_t>(std::count_if(s.begin(), s.end(), [](char c) { return c != '*' && c != '?'; }));
}
}  // namespace

route_table::route_table(const config::config& cfg) {
  health_registry own;
  build(cfg, own, 1);
}

route_table::route_table(const config::config& cfg, health_registry& health, std::size_t workers) {
  build(cfg, health, workers);
}

void route_table::build(const config::config& cfg, health_registry& health, std::size_t workers) {
  std::unordered_map<std::string, std::size_t> backend_index;
  for (std::size_t i = 0; i < cfg.backends.size(); ++i) backend_index.emplace(cfg.backends[i].name, i);

  routes_.reserve(cfg.routes.size());  // fallbacks point into routes_: it must not reallocate
  for (const auto& rc : cfg.routes) {
    route r;
    r.model = rc.model;
    r.aliases = rc.aliases;
    r.wildcard = has_wildcard(rc.model);
    r.retry = rc.retry;
    r.hedge_after = rc.hedge_after;
    r.unavailable = rc.unavailable;
    for (const auto& tc : rc.targets) {
      auto it = backend_index.find(tc.backend);
      if (it == backend_index.end()) continue;  // unreachable after validation
      const auto& bc = cfg.backends[it->second];
      r.targets.push_back(target{it->second, tc.backend, tc.model, tc.weight, health.get(tc.backend), bc.ejection,
                                 bc.max_concurrency, bc.max_queue, bc.queue_timeout,
                                 config::queue_aging_of(bc), tc.price,
                                 bc.timeouts.first_token});
      r.deadline = std::max(r.deadline, bc.timeouts.total);
    }
    for (std::size_t w = 0; w < std::max<std::size_t>(workers, 1); ++w) {
      auto p = make_policy(rc.strategy);
      if (!p) {
        if (w == 0) unknown_strategies_.push_back({routes_.size(), rc.strategy_line, rc.strategy});
        p = make_policy("priority");
      }
      r.policies.push_back(std::move(p));
    }
    const std::size_t index = routes_.size();
    routes_.push_back(std::move(r));
    const route& added = routes_.back();
    if (added.wildcard) {
      wildcards_.push_back(index);
    } else if (exact_.emplace(added.model, index).second) {
      public_models_.push_back(added.model);
    }
    for (const auto& alias : added.aliases) {
      if (exact_.emplace(alias, index).second) public_models_.push_back(alias);
    }
  }
  std::stable_sort(wildcards_.begin(), wildcards_.end(), [this](std::size_t a, std::size_t b) {
    return literal_count(routes_[a].model) > literal_count(routes_[b].model);
  });
  for (std::size_t i = 0; i < cfg.routes.size(); ++i) {
    for (const auto& name : cfg.routes[i].fallbacks) {
      if (const route* f = resolve(name); f != nullptr && f != &routes_[i]) routes_[i].fallbacks.push_back(f);
    }
    for (const auto& name : cfg.routes[i].context_fallbacks) {
      if (const route* f = resolve(name); f != nullptr && f != &routes_[i]) routes_[i].context_fallbacks.push_back(f);
    }
  }
}

void route_table::plan(const route& r, std::size_t worker, const pick_context& ctx, steady_clock::time_point now,
                       std::vector<std::size_t>& out) const {
  r.policies[worker % r.policies.size()]->order(r, ctx, out);
  std::stable_partition(out.begin(), out.end(), [&](std::size_t i) { return !r.targets[i].health->ejected(now); });
}

const route* route_table::resolve(std::string_view model) const {
  if (auto it = exact_.find(std::string(model)); it != exact_.end()) return &routes_[it->second];
  for (std::size_t index : wildcards_) {
    if (glob_match(routes_[index].model, model)) return &routes_[index];
  }
  return nullptr;
}

}  // namespace tollgate::routing
