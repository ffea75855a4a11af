// Factories of the built-in strategies, one per file in this folder.
#pragma once

#include <memory>

#include "routing/policy.hpp"

namespace tollgate::routing {

std::unique_ptr<policy> make_priority_policy();
std::unique_ptr<policy> make_weighted_policy();
std::unique_ptr<policy> make_least_busy_policy();
std::unique_ptr<policy> make_latency_policy();
std::unique_ptr<policy> make_cost_policy();

}  // namespace tollgate::routing
