// Per-key limits and budgets shared by every replica through Redis (or Valkey).
//
// Each key has one token bucket per limit in Redis, refilled and drawn atomically by a Lua script
// on Redis's own clock. A replica does not ask Redis per request: it takes a lease (one second's
// refill of RPM and TPM, at least what the request needs) and admits from it locally; a request
// goes to Redis only when the lease is spent, and an idle lease is given back after a second.
// Leases come out of the one bucket, so the replicas together never admit more than the limit;
// what a lease strands is at most one second's refill per replica, and only until it is used or
// given back. Concurrency (max_concurrency) is a per-replica count in Redis, taken per request.
// Budgets: each replica adds its spend to the period's total in Redis and reads the others'
// every 100 ms.
//
// Backend ejections travel the same Redis: a replica that ejects a backend publishes it, and the
// others eject it too for the same cooldown (each still probes and decides on its own after).
//
// When Redis does not answer, on_redis_down says what happens: "local" enforces each replica's
// share (the limits divided by the replicas last seen) in memory; "reject" refuses requests of
// limited keys with 503. A background thread reconnects, and limits are shared again once Redis
// answers.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "config/config.hpp"
#include "gateway/limits/limiter.hpp"

namespace tollgate::gateway {

class redis_link;

/// Heard when another replica ejects a backend: its name and cooldown.
using ejection_handler = std::function<void(const std::string& backend, std::chrono::milliseconds cooldown)>;

/// The connection state that outlives config reloads: one per Redis URL. on_ejection is called
/// from the link's listening thread for each ejection another replica publishes.
std::shared_ptr<redis_link> make_redis_link(const std::string& url, ejection_handler on_ejection);

/// Tells the other replicas (Redis pub/sub, channel tollgate:ejections) that this one ejected
/// backend for cooldown; sent by the link's thread within about 50 ms. Thread-safe.
void announce_ejection(redis_link& link, const std::string& backend, std::chrono::milliseconds cooldown);

class redis_limiter final : public limiter {
 public:
  /// link: from make_redis_link for cfg.redis_url.
  redis_limiter(std::shared_ptr<redis_link> link, config::limits_config cfg);
  admission admit(const config::key_config& key, key_state& st, std::int64_t tokens, steady_time now) override;
  void finish(const config::key_config& key, key_state& st, std::int64_t estimated, std::int64_t actual,
              double cost) override;
  std::optional<shared_status> shared() const override;
  void append_metrics(std::string& out) const override;

 private:
  /// The key's limits divided among the replicas (rounded up), for on_redis_down: local.
  config::key_config local_share(const config::key_config& key) const;

  std::shared_ptr<redis_link> link_;
  config::limits_config cfg_;
  memory_limiter fallback_;
};

}  // namespace tollgate::gateway
