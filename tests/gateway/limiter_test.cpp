// The in-process limiter with an injected clock: token buckets, debts, estimates.
#include <catch2/catch.hpp>

#include <cstdint>

#include "gateway/limits/limiter.hpp"

using namespace tollgate;
using namespace std::chrono_literals;

TEST_CASE("overuse leaves a TPM debt that delays later requests until it is refilled", "[limits][hardening]") {
  config::key_config key;
  key.name = "k";
  key.tpm = 600;  // 10 tokens a second
  gateway::key_state st;
  gateway::memory_limiter lim;
  const auto t0 = gateway::steady_time{} + 1000s;
  REQUIRE(lim.admit(key, st, 100, t0).admitted);
  // It used 1600 tokens, not 100: the bucket owes 1000.
  lim.finish(key, st, 100, 1600, 0);
  const auto later = lim.admit(key, st, 100, t0 + 1s);
  CHECK_FALSE(later.admitted);
  // -990 now; 100 more are needed: 1090 tokens at 10 a second.
  CHECK(later.retry_after == 109s);
  CHECK_FALSE(lim.admit(key, st, 100, t0 + 100s).admitted);
  CHECK(lim.admit(key, st, 100, t0 + 111s).admitted);
}

TEST_CASE("a max_tokens near INT64_MAX saturates the estimate instead of wrapping it", "[limits][hardening]") {
  CHECK(gateway::estimate_tokens(100, INT64_MAX) == INT64_MAX);
  CHECK(gateway::estimate_tokens(100, INT64_MAX - 10) == INT64_MAX);
  CHECK(gateway::estimate_tokens(100, 1000) == 1025);
  CHECK(gateway::estimate_tokens(100, std::nullopt) == 25 + 512);
  config::key_config key;
  key.name = "k";
  key.tpm = 600;
  gateway::key_state st;
  gateway::memory_limiter lim;
  const auto t0 = gateway::steady_time{} + 1000s;
  const auto huge = gateway::estimate_tokens(100, INT64_MAX - 5);
  // Larger than a minute's budget: it passes on a full bucket and empties it.
  CHECK(lim.admit(key, st, huge, t0).admitted);
  CHECK_FALSE(lim.admit(key, st, huge, t0).admitted);
  CHECK_FALSE(lim.admit(key, st, 10, t0).admitted);
}
