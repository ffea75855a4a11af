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
  std::unordered_map<std::string, std::size_t> backend_index;
  for (std::size_t i = 0; i < cfg.backends.size(); ++i) backend_index.emplace(cfg.backends[i].name, i);

  for (const auto& rc : cfg.routes) {
    route r;
    r.model = rc.model;
    r.aliases = rc.aliases;
    r.wildcard = has_wildcard(rc.model);
    for (const auto& tc : rc.targets) {
      auto it = backend_index.find(tc.backend);
      if (it == backend_index.end()) continue;  // unreachable after validation
      r.targets.push_back(target{it->second, tc.backend, tc.model});
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
}

const route* route_table::resolve(std::string_view model) const {
  if (auto it = exact_.find(std::string(model)); it != exact_.end()) return &routes_[it->second];
  for (std::size_t index : wildcards_) {
    if (glob_match(routes_[index].model, model)) return &routes_[index];
  }
  return nullptr;
}

}  // namespace tollgate::routing
