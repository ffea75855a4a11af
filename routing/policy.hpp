// Target selection strategies. Each is one small class in routing/policies/, registered under the
// name the YAML uses (`strategy:` on a route) in routing/policy_registry.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tollgate::routing {

struct route;

/// What a policy may use to choose, besides the route itself.
struct pick_context {
  std::uint64_t random = 0;  ///< a fresh random number for this request
};

/// One instance per route and worker thread: instances keep their own state without locks.
class policy {
 public:
  virtual ~policy() = default;
  /// Fills out with indices into r.targets, best first; every target appears once.
  virtual void order(const route& r, const pick_context& ctx, std::vector<std::size_t>& out) = 0;
};

/// nullptr when no policy has that name.
std::unique_ptr<policy> make_policy(const std::string& name);
/// Registered names, for error messages.
std::vector<std::string> policy_names();

}  // namespace tollgate::routing
