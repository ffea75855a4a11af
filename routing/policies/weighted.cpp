// weighted: smooth weighted round robin. Each pick adds every target's weight to its score, takes
// the highest score and subtracts the total from it, so weights 5,1,1 give a a b a c a a rather
// than a a a a a b c. The rest of the order (for failover) is by score.
#include <algorithm>

#include "routing/policies/policies.hpp"
#include "routing/route_table.hpp"

namespace tollgate::routing {

namespace {
class weighted_policy final : public policy {
 public:
  void order(const route& r, const pick_context&, std::vector<std::size_t>& out) override {
    if (score_.size() != r.targets.size()) score_.assign(r.targets.size(), 0);
    std::int64_t total = 0;
    for (std::size_t i = 0; i < r.targets.size(); ++i) {
      score_[i] += r.targets[i].weight;
      total += r.targets[i].weight;
    }
    out.clear();
    for (std::size_t i = 0; i < r.targets.size(); ++i) out.push_back(i);
    std::stable_sort(out.begin(), out.end(), [this](std::size_t a, std::size_t b) { return score_[a] > score_[b]; });
    score_[out.front()] -= total;
  }

 private:
  std::vector<std::int64_t> score_;
};
}  // namespace

std::unique_ptr<policy> make_weighted_policy() { return std::make_unique<weighted_policy>(); }

}  // namespace tollgate::routing
