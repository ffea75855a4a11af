// Per-key limits: requests per minute and tokens per minute as token buckets, and requests in
// flight. State is per key name, shared by all workers and kept across config reloads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "config/config.hpp"
#include "routing/named_registry.hpp"

namespace tollgate::gateway {

using steady_time = std::chrono::steady_clock::time_point;

/// One key's live counters. Thread-safe; its mutex is this key's alone.
class key_state {
 public:
  std::mutex mutex;
  // A bucket starts full on its first use. tpm_tokens may be negative: a debt left by requests
  // that used more than their estimate, which later requests wait out.
  double rpm_tokens = 0;
  double tpm_tokens = 0;
  bool rpm_started = false;
  bool tpm_started = false;
  steady_time refilled{};
  std::atomic<std::int64_t> in_flight{0};
  // Budget: spend in the current period (UTC day or month), under mutex. period_end 0: not
  // seeded yet (the server seeds it from the ledger; a fresh period starts at zero).
  double spent = 0;
  std::int64_t period_start_ms = 0, period_end_ms = 0;
  // Shared limits (limits.redis), under mutex: what this replica holds of the key's buckets in
  // Redis, taken ahead so most requests are admitted without a round trip; given back when idle.
  double lease_requests = 0, lease_tokens = 0;
  steady_time lease_used{};
  std::int64_t redis_slots = 0;        ///< concurrency slots this replica holds in Redis, in use
  /// Concurrency slots a finished request left: still counted as this replica's in Redis, and
  /// taken by the next request without a round trip; given back once idle (held_used) or past
  /// the replica's fair share.
  std::int64_t held_slots = 0;
  steady_time held_used{};
  std::int64_t fallback_in_flight = 0; ///< admitted by the local share while Redis was down
  bool redis_tracked = false;          ///< known to the Redis link's background thread
};

struct admission {
  bool admitted = true;
  std::string code;     ///< "rate_limit_exceeded" or "insufficient_quota" when refused
  std::string message;  ///< which limit, for the client
  std::chrono::seconds retry_after{0};
  int status = 429;  ///< of a refusal: 429, or 503 when shared limits cannot be checked
};

/// One key_state per key name.
using key_state_registry = routing::named_registry<key_state>;

/// The interface the request path uses: in this process (memory_limiter), or shared by several
/// replicas through Redis (redis_limiter.hpp).
class limiter {
 public:
  virtual ~limiter() = default;
  /// Admits one request estimated at `tokens` tokens, or says which limit refuses it. On
  /// admission the caller must call finish() once, with the real token count when known.
  virtual admission admit(const config::key_config& key, key_state& st, std::int64_t tokens, steady_time now) = 0;
  /// Ends an admitted request: frees its concurrency slot and settles TPM on actual tokens
  /// (refunding or charging the difference from the estimate); actual < 0 keeps the estimate.
  /// cost: what the request cost, charged to the key's budget.
  virtual void finish(const config::key_config& key, key_state& st, std::int64_t estimated, std::int64_t actual,
                      double cost) = 0;
  /// Where limits are shared across replicas, and whether that store answers; nullopt when the
  /// limits are this process's alone.
  struct shared_status {
    bool up = false;
    std::string on_down;  ///< "local" or "reject"
    std::int64_t replicas = 0;  ///< replicas seen sharing the limits
  };
  virtual std::optional<shared_status> shared() const { return std::nullopt; }
  /// Appends this limiter's metrics (Prometheus text) to out.
  virtual void append_metrics(std::string& /*out*/) const {}
};

class memory_limiter final : public limiter {
 public:
  admission admit(const config::key_config& key, key_state& st, std::int64_t tokens, steady_time now) override;
  void finish(const config::key_config& key, key_state& st, std::int64_t estimated, std::int64_t actual,
              double cost) override;
};

/// Budget left for a key now (its budget when the period rolled over); nullopt without a budget.
std::optional<double> budget_left(const config::key_config& key, key_state& st, std::int64_t now_unix_ms);

/// OpenAI's rate limit headers for a key with an RPM or TPM limit, as its buckets stand at now:
/// x-ratelimit-limit/remaining/reset-requests and -tokens (reset: until the bucket is full again,
/// as "1s", "250ms", "6m0s"). Empty for a key without either limit.
std::vector<std::pair<std::string, std::string>> ratelimit_headers(const config::key_config& key, key_state& st,
                                                                    steady_time now);

/// Tokens a request may use, before it runs: its body at about four bytes a token, plus what it
/// may generate (max_tokens, or 512 when it does not say). Saturates at INT64_MAX.
std::int64_t estimate_tokens(std::size_t body_bytes, std::optional<std::int64_t> max_tokens);

}  // namespace tollgate::gateway
