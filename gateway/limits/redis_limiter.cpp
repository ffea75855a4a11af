#include "gateway/limits/redis_limiter.hpp"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>

#include "gateway/accounting/money.hpp"
#include "gateway/keys/store.hpp"
#include "gateway/limits/redis_link.hpp"

namespace tollgate::gateway {

using redis::bucket_key;
using redis::num;
using redis::replicas_key;
using redis::reply_ptr;
using redis::reply_text;
using redis::slots_key;
using redis::spend_key;
using redis::spend_lua;
using redis::take_lua;
using redis::unix_ms;

redis_limiter::redis_limiter(std::shared_ptr<redis_link> link, config::limits_config cfg)
    : link_(std::move(link)), cfg_(std::move(cfg)) {}

config::key_config redis_limiter::local_share(const config::key_config& key) const {
  const auto n = static_cast<unsigned>(cfg_.replicas != 0 ? cfg_.replicas : std::max<std::int64_t>(link_->replicas(), 1));
  auto share = [&](unsigned v) { return v == 0 ? 0u : std::max(1u, (v + n - 1) / n); };
  config::key_config k = key;
  k.rpm = share(key.rpm);
  k.tpm = share(key.tpm);
  k.max_concurrency = share(key.max_concurrency);
  // The budget is a total, counted as spend; each replica keeps counting its own part of it.
  return k;
}

admission redis_limiter::admit(const config::key_config& key, key_state& st, std::int64_t tokens, steady_time now) {
  const bool limited = key.rpm != 0 || key.tpm != 0 || key.max_concurrency != 0 || key.budget > 0;
  if (!limited) return {};
  if (!link_->up()) {
    if (cfg_.on_redis_down == "reject") {
      link_->rejected_.fetch_add(1, std::memory_order_relaxed);
      return {false, "limits_unavailable",
              "This key's limits are shared through Redis, which does not answer; try again shortly.",
              std::chrono::seconds(1), 503};
    }
    const auto share = local_share(key);
    admission a = fallback_.admit(share, st, tokens, now);
    if (a.admitted) {
      link_->fallback_admits_.fetch_add(1, std::memory_order_relaxed);
      std::lock_guard lock(st.mutex);
      ++st.fallback_in_flight;
    }
    return a;
  }
  bool first = false;
  {
    std::lock_guard lock(st.mutex);
    first = !st.redis_tracked;
    st.redis_tracked = true;
  }
  if (first) link_->track(key, st);  // the background thread's list: lease give-back, spend
  if (auto left = budget_left(key, st, unix_ms()); left && *left <= 0) {
    std::int64_t end = 0;
    double spent = 0;
    {
      std::lock_guard lock(st.mutex);
      end = st.period_end_ms;
      spent = st.spent;
    }
    const auto wait = std::chrono::seconds((end - unix_ms() + 999) / 1000);
    return {false, "insufficient_quota",
            "You exceeded this key's budget of " + format_amount(key.budget) + " per " + key.budget_period +
                " (spent " + format_money(spent) + "). It renews at the start of the next " + key.budget_period +
                " (UTC).",
            std::max(wait, std::chrono::seconds(1))};
  }
  if (key.rpm == 0 && key.tpm == 0 && key.max_concurrency == 0) {  // a budget alone: checked above
    st.in_flight.fetch_add(1);
    link_->local_admits_.fetch_add(1, std::memory_order_relaxed);
    return {};
  }
  const double need_tokens = std::min<double>(static_cast<double>(tokens), key.tpm);
  {
    // The lease covers it (and, with max_concurrency, a slot an earlier request left): admitted
    // here, no round trip.
    std::lock_guard lock(st.mutex);
    const bool rpm_ok = key.rpm == 0 || st.lease_requests >= 1;
    const bool tpm_ok = key.tpm == 0 || st.lease_tokens >= need_tokens;
    const bool slot_ok = key.max_concurrency == 0 || st.held_slots > 0;
    if (rpm_ok && tpm_ok && slot_ok && (key.rpm != 0 || key.tpm != 0 || key.max_concurrency != 0)) {
      if (key.rpm != 0) st.lease_requests -= 1;
      if (key.tpm != 0) st.lease_tokens -= need_tokens;
      if (key.max_concurrency != 0) {
        --st.held_slots;
        ++st.redis_slots;
      }
      st.lease_used = now;
      st.in_flight.fetch_add(1);
      link_->local_admits_.fetch_add(1, std::memory_order_relaxed);
      return {};
    }
  }
  double need_r = 0, need_t = 0;
  {
    std::lock_guard lock(st.mutex);
    need_r = key.rpm != 0 ? std::max(0.0, 1 - st.lease_requests) : 0;
    need_t = key.tpm != 0 ? std::max(0.0, need_tokens - st.lease_tokens) : 0;
  }
  need_r = std::ceil(need_r);
  // A lease of about a second's refill: at most that much is ever stranded on one replica.
  const double want_r = std::max(need_r, std::floor(key.rpm / 60.0));
  const double want_t = std::max(need_t, key.tpm / 60.0);
  link_->track(key, st);  // its limits as this config has them
  reply_ptr r = link_->call({"EVAL", take_lua, "3", bucket_key(key.name), slots_key(key.name), replicas_key,
                             std::to_string(key.rpm), std::to_string(key.tpm), num(need_r), num(need_t), num(want_r),
                             num(want_t), std::to_string(key.max_concurrency), link_->replica(),
                             std::to_string(redis::live_window_ms)});
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 5) {
    if (r && r->type == REDIS_REPLY_ERROR) {
      std::cerr << "tollgate: limits: Redis refused the script: " << std::string(r->str, r->len) << std::endl;
    }
    return admit(key, st, tokens, now);  // Redis is marked down now: on_redis_down decides
  }
  const bool ok = r->element[0]->integer == 1;
  if (!ok) {
    const std::string which = reply_text(r->element[1]);
    const auto wait_ms = std::atoll(reply_text(r->element[2]).c_str());
    const auto wait = std::max(std::chrono::seconds((wait_ms + 999) / 1000), std::chrono::seconds(1));
    if (which == "conc") {
      return {false, "rate_limit_exceeded",
              "Too many concurrent requests for this key (max_concurrency " + std::to_string(key.max_concurrency) + ").",
              wait};
    }
    if (which == "rpm") {
      return {false, "rate_limit_exceeded",
              "Rate limit reached for requests per minute (rpm " + std::to_string(key.rpm) + ").", wait};
    }
    return {false, "rate_limit_exceeded",
            "Rate limit reached for tokens per minute (tpm " + std::to_string(key.tpm) + ").", wait};
  }
  std::lock_guard lock(st.mutex);
  st.lease_requests += std::atof(reply_text(r->element[3]).c_str());
  st.lease_tokens += std::atof(reply_text(r->element[4]).c_str());
  if (key.rpm != 0) st.lease_requests -= 1;
  if (key.tpm != 0) st.lease_tokens -= need_tokens;
  st.lease_used = now;
  if (key.max_concurrency != 0) ++st.redis_slots;
  st.in_flight.fetch_add(1);
  return {};
}

void redis_limiter::finish(const config::key_config& key, key_state& st, std::int64_t estimated, std::int64_t actual,
                           double cost) {
  const bool limited = key.rpm != 0 || key.tpm != 0 || key.max_concurrency != 0 || key.budget > 0;
  if (!limited) return;
  bool fallback = false;
  bool release = false;
  std::int64_t period = 0;
  double seed = 0;
  {
    std::lock_guard lock(st.mutex);
    if (st.fallback_in_flight > 0) {
      --st.fallback_in_flight;
      fallback = true;
    } else {
      if (key.tpm != 0 && actual >= 0) {
        // The difference from the estimate comes out of (or back into) the lease; a lease in
        // debt is paid from the next one, or by the give-back.
        st.lease_tokens -= static_cast<double>(actual) - std::min<double>(static_cast<double>(estimated), key.tpm);
      }
      if (key.max_concurrency != 0 && st.redis_slots > 0) {
        --st.redis_slots;
        // Kept for the next request, up to this replica's fair share of the key's slots (so that
        // a busy replica never keeps the others out); past it, given back now.
        const std::int64_t share =
            static_cast<std::int64_t>(key.max_concurrency) / std::max<std::int64_t>(link_->replicas(), 1);
        if (st.held_slots < share) {
          ++st.held_slots;
          st.held_used = std::chrono::steady_clock::now();
        } else {
          release = true;
        }
      }
    }
    period = st.period_start_ms;
    seed = st.spent;
  }
  if (fallback) {
    fallback_.finish(local_share(key), st, estimated, actual, cost);
  } else {
    st.in_flight.fetch_sub(1);
    if (key.budget > 0 && cost > 0) {
      std::lock_guard lock(st.mutex);
      st.spent += cost;
    }
  }
  if (release) link_->post({"HINCRBY", slots_key(key.name), link_->replica(), "-1"});
  if (key.budget > 0 && cost > 0 && period != 0) {
    // The period's total, seeded with what the ledger held when this replica started it.
    const auto [start, end] = budget_period_bounds(key.budget_period, period);
    key_state* state = &st;
    link_->post({"EVAL", spend_lua, "1", spend_key(key.name, period), num(seed), num(cost),
                 std::to_string(end - unix_ms() + 86'400'000)},
                [state, period](const redisReply* r) {
                  if (r == nullptr || r->type != REDIS_REPLY_STRING) return;
                  const double total = std::atof(std::string(r->str, r->len).c_str());
                  std::lock_guard lock(state->mutex);
                  if (state->period_start_ms == period) state->spent = std::max(state->spent, total);
                });
    (void)start;
  }
}

std::optional<limiter::shared_status> redis_limiter::shared() const {
  return shared_status{link_->up(), cfg_.on_redis_down, link_->replicas()};
}

void redis_limiter::append_metrics(std::string& out) const {
  out += "# HELP tollgate_limits_redis_up Whether Redis, where per-key limits are shared, answers (1) or not (0).\n";
  out += "# TYPE tollgate_limits_redis_up gauge\n";
  out += "tollgate_limits_redis_up " + std::string(link_->up() ? "1" : "0") + "\n";
  out += "# HELP tollgate_limits_replicas Replicas seen sharing the limits in Redis.\n";
  out += "# TYPE tollgate_limits_replicas gauge\n";
  out += "tollgate_limits_replicas " + std::to_string(link_->replicas()) + "\n";
  out += "# HELP tollgate_limits_admissions_total Admissions of limited keys, by how they were decided.\n";
  out += "# TYPE tollgate_limits_admissions_total counter\n";
  out += "tollgate_limits_admissions_total{via=\"lease\"} " + std::to_string(link_->local_admits_.load()) + "\n";
  out += "tollgate_limits_admissions_total{via=\"local_share\"} " + std::to_string(link_->fallback_admits_.load()) + "\n";
  out += "# HELP tollgate_limits_redis_round_trips_total Requests that asked Redis while being admitted.\n";
  out += "# TYPE tollgate_limits_redis_round_trips_total counter\n";
  out += "tollgate_limits_redis_round_trips_total " + std::to_string(link_->round_trips_.load()) + "\n";
  out += "# HELP tollgate_limits_redis_rejected_total Requests answered 503 because Redis did not answer.\n";
  out += "# TYPE tollgate_limits_redis_rejected_total counter\n";
  out += "tollgate_limits_redis_rejected_total " + std::to_string(link_->rejected_.load()) + "\n";
  out += "# HELP tollgate_shared_ejections_heard_total Backend ejections heard from other replicas.\n";
  out += "# TYPE tollgate_shared_ejections_heard_total counter\n";
  out += "tollgate_shared_ejections_heard_total " + std::to_string(link_->heard_ejections_.load()) + "\n";
}

}  // namespace tollgate::gateway
