#include "routing/policy.hpp"

#include "routing/policies/policies.hpp"

namespace tollgate::routing {

namespace {

struct entry {
  const char* name;
  std::unique_ptr<policy> (*make)();
};

// One line per strategy.
constexpr entry registry[] = {
    {"priority", &make_priority_policy},
    {"weighted", &make_weighted_policy},
    {"least_busy", &make_least_busy_policy},
    {"latency", &make_latency_policy},
    {"cost", &make_cost_policy},
};

}  // namespace

std::unique_ptr<policy> make_policy(const std::string& name) {
  for (const auto& e : registry) {
    if (name == e.name) return e.make();
  }
  return nullptr;
}

std::vector<std::string> policy_names() {
  std::vector<std::string> names;
  for (const auto& e : registry) names.emplace_back(e.name);
  return names;
}

}  // namespace tollgate::routing
