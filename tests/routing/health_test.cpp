// Passive outlier ejection on an injected clock.
#include <catch2/catch.hpp>

#include "routing/health.hpp"

using namespace tollgate;
using namespace std::chrono_literals;

TEST_CASE("the cooldown doubles only after a failed trial, not per failure in flight", "[routing][hardening]") {
  config::ejection_config cfg;
  cfg.after_failures = 3;
  cfg.cooldown = 10s;
  cfg.max_cooldown = 5min;
  routing::target_health h;
  const auto t0 = routing::steady_clock::time_point{} + 1000s;
  for (int i = 0; i < 3; ++i) h.record_failure(t0, cfg);
  CHECK(h.ejected(t0));
  CHECK(h.ejections() == 1);
  // One outage: the 30 other requests in flight fail too, just after the ejection.
  for (int i = 0; i < 30; ++i) h.record_failure(t0 + 1s, cfg);
  CHECK(h.ejections() == 1);
  CHECK_FALSE(h.admit(t0 + 9s));
  // The first cooldown passes: one trial, which fails; the next cooldown is twice as long.
  REQUIRE(h.admit(t0 + 11s));
  CHECK_FALSE(h.admit(t0 + 11s));  // one trial at a time
  h.record_failure(t0 + 11s, cfg);
  CHECK(h.ejections() == 2);
  CHECK(h.ejected(t0 + 30s));
  CHECK_FALSE(h.admit(t0 + 30s));
  CHECK_FALSE(h.ejected(t0 + 32s));
  // Its trial succeeds: back in service, and the next ejection starts from the first cooldown.
  REQUIRE(h.admit(t0 + 32s));
  h.record_success();
  CHECK_FALSE(h.ejected(t0 + 32s));
  CHECK(h.ejections() == 0);
  for (int i = 0; i < 3; ++i) h.record_failure(t0 + 40s, cfg);
  CHECK(h.ejected(t0 + 49s));
  CHECK_FALSE(h.ejected(t0 + 51s));
}
