// priority: the targets in the order the config lists them (ordered failover).
#include "routing/policies/policies.hpp"
#include "routing/route_table.hpp"

namespace tollgate::routing {

namespace {
class priority_policy final : public policy {
 public:
  void order(const route& r, const pick_context&, std::vector<std::size_t>& out) override {
    out.clear();
    for (std::size_t i = 0; i < r.targets.size(); ++i) out.push_back(i);
  }
};
}  // namespace

std::unique_ptr<policy> make_priority_policy() { return std::make_unique<priority_policy>(); }

}  // namespace tollgate::routing
