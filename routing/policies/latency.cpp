// latency: fastest first, by the smoothed time to first byte of each backend's recent answers.
// A backend with no answer yet goes first, so that every target gets measured.
#include <algorithm>

#include "routing/policies/policies.hpp"
#include "routing/route_table.hpp"

namespace tollgate::routing {

namespace {
class latency_policy final : public policy {
 public:
  void order(const route& r, const pick_context&, std::vector<std::size_t>& out) override {
    out.clear();
    for (std::size_t i = 0; i < r.targets.size(); ++i) out.push_back(i);
    std::stable_sort(out.begin(), out.end(), [&](std::size_t a, std::size_t b) {
      return r.targets[a].health->first_byte_ewma_us() < r.targets[b].health->first_byte_ewma_us();
    });
  }
};
}  // namespace

std::unique_ptr<policy> make_latency_policy() { return std::make_unique<latency_policy>(); }

}  // namespace tollgate::routing
