// cost: cheapest first, by the target's price per million input plus output tokens; ties keep
// config order. Health still applies: an ejected cheap target goes to the end of the plan.
#include <algorithm>

#include "routing/policies/policies.hpp"
#include "routing/route_table.hpp"

namespace tollgate::routing {

namespace {
class cost_policy final : public policy {
 public:
  void order(const route& r, const pick_context&, std::vector<std::size_t>& out) override {
    out.clear();
    for (std::size_t i = 0; i < r.targets.size(); ++i) out.push_back(i);
    auto blended = [&](std::size_t i) { return r.targets[i].price.input + r.targets[i].price.output; };
    std::stable_sort(out.begin(), out.end(), [&](std::size_t a, std::size_t b) { return blended(a) < blended(b); });
  }
};
}  // namespace

std::unique_ptr<policy> make_cost_policy() { return std::make_unique<cost_policy>(); }

}  // namespace tollgate::routing
