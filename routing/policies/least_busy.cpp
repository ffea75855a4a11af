// least_busy: power of two choices. Two targets drawn at random, the one with fewer requests in
// flight (across all workers) goes first; the rest follow by in-flight count. Cheaper than a full
// scan on large routes and without the herd that "always the least busy" causes.
#include <algorithm>

#include "routing/policies/policies.hpp"
#include "routing/route_table.hpp"

namespace tollgate::routing {

namespace {
class least_busy_policy final : public policy {
 public:
  void order(const route& r, const pick_context& ctx, std::vector<std::size_t>& out) override {
    const std::size_t n = r.targets.size();
    out.clear();
    for (std::size_t i = 0; i < n; ++i) out.push_back(i);
    if (n < 2) return;
    auto busy = [&](std::size_t i) { return r.targets[i].health->in_flight(); };
    const std::size_t a = ctx.random % n;
    std::size_t b = (ctx.random >> 32) % (n - 1);
    if (b >= a) ++b;
    const std::size_t first = busy(b) < busy(a) ? b : a;
    std::swap(out[0], out[first]);
    std::stable_sort(out.begin() + 1, out.end(), [&](std::size_t x, std::size_t y) { return busy(x) < busy(y); });
  }
};
}  // namespace

std::unique_ptr<policy> make_least_busy_policy() { return std::make_unique<least_busy_policy>(); }

}  // namespace tollgate::routing
