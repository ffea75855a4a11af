#include "gateway/limits/limiter.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "gateway/accounting/money.hpp"
#include "gateway/keys/store.hpp"

namespace tollgate::gateway {

std::int64_t estimate_tokens(std::size_t body_bytes, std::optional<std::int64_t> max_tokens) {
  const auto body = static_cast<std::int64_t>(std::min<std::size_t>((body_bytes + 3) / 4, INT64_MAX));
  const std::int64_t out = std::max<std::int64_t>(max_tokens.value_or(512), 0);
  // A max_tokens near INT64_MAX must not wrap the sum negative, which would pass any limit.
  return out > INT64_MAX - body ? INT64_MAX : body + out;
}


namespace {

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// Moves the budget into the period that holds now; a new period starts with nothing spent.
void roll_period(const config::key_config& key, key_state& st, std::int64_t now_ms) {
  if (now_ms >= st.period_start_ms && now_ms < st.period_end_ms) return;
  const auto [start, end] = budget_period_bounds(key.budget_period, now_ms);
  st.spent = 0;
  st.period_start_ms = start;
  st.period_end_ms = end;
}

}  // namespace

std::optional<double> budget_left(const config::key_config& key, key_state& st, std::int64_t now_unix_ms) {
  if (key.budget <= 0) return std::nullopt;
  std::lock_guard lock(st.mutex);
  roll_period(key, st, now_unix_ms);
  return key.budget - st.spent;
}

admission memory_limiter::admit(const config::key_config& key, key_state& state, std::int64_t tokens, steady_time now) {
  if (key.budget > 0) {
    std::lock_guard lock(state.mutex);
    const std::int64_t now_ms = unix_ms_now();
    roll_period(key, state, now_ms);
    if (state.spent >= key.budget) {
      const auto wait = std::chrono::seconds((state.period_end_ms - now_ms + 999) / 1000);
      return {false, "insufficient_quota",
              "You exceeded this key's budget of " + format_amount(key.budget) + " per " + key.budget_period +
                  " (spent " + format_money(state.spent) + "). It renews at the start of the next " + key.budget_period + " (UTC).",
              std::max(wait, std::chrono::seconds(1))};
    }
  }
  if (key.rpm == 0 && key.tpm == 0 && key.max_concurrency == 0) return {};
  key_state* st = &state;
  if (key.max_concurrency != 0) {
    if (st->in_flight.fetch_add(1) >= static_cast<std::int64_t>(key.max_concurrency)) {
      st->in_flight.fetch_sub(1);
      return {false, "rate_limit_exceeded",
              "Too many concurrent requests for this key (max_concurrency " + std::to_string(key.max_concurrency) + ").",
              std::chrono::seconds(1)};
    }
  } else {
    st->in_flight.fetch_add(1);
  }
  std::lock_guard lock(st->mutex);
  // Refill both buckets for the time since the last visit; each holds at most one minute's worth.
  const double elapsed = !st->rpm_started && !st->tpm_started
                             ? 0
                             : std::max(0.0, std::chrono::duration<double>(now - st->refilled).count());
  st->refilled = now;
  // A bucket in debt refills from where it is, so overuse delays the requests after it.
  auto refill = [&](double& bucket, bool& started, unsigned per_minute) {
    if (!started) {
      bucket = per_minute;
      started = true;
    }
    bucket = std::min<double>(per_minute, bucket + elapsed * per_minute / 60.0);
  };
  if (key.rpm != 0) refill(st->rpm_tokens, st->rpm_started, key.rpm);
  if (key.tpm != 0) refill(st->tpm_tokens, st->tpm_started, key.tpm);
  // A request larger than a whole minute's budget still passes when the bucket is full.
  const double need_tokens = std::min<double>(static_cast<double>(tokens), key.tpm);
  auto refuse = [&](const std::string& what, double missing, unsigned per_minute) {
    st->in_flight.fetch_sub(1);
    const auto wait = std::chrono::seconds(static_cast<long long>(std::ceil(missing * 60.0 / per_minute)));
    return admission{false, "rate_limit_exceeded", what, std::max(wait, std::chrono::seconds(1))};
  };
  if (key.rpm != 0 && st->rpm_tokens < 1) {
    return refuse("Rate limit reached for requests per minute (rpm " + std::to_string(key.rpm) + ").",
                  1 - st->rpm_tokens, key.rpm);
  }
  if (key.tpm != 0 && st->tpm_tokens < need_tokens) {
    return refuse("Rate limit reached for tokens per minute (tpm " + std::to_string(key.tpm) + ").",
                  need_tokens - st->tpm_tokens, key.tpm);
  }
  if (key.rpm != 0) st->rpm_tokens -= 1;
  if (key.tpm != 0) st->tpm_tokens -= need_tokens;
  return {};
}

namespace {

/// A duration as OpenAI writes it (Go's format): "250ms", "1.5s", "6m0s", "1h0m0s".
std::string go_duration(double seconds) {
  const auto ms = static_cast<long long>(std::ceil(std::max(0.0, seconds) * 1000));
  char buf[48];
  if (ms < 1000) {
    std::snprintf(buf, sizeof buf, "%lldms", ms);
  } else if (ms < 60000) {
    std::snprintf(buf, sizeof buf, "%.3f", static_cast<double>(ms) / 1000);
    std::string s(buf);
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
    return s + "s";
  } else {
    const long long total = (ms + 999) / 1000;
    if (total < 3600) std::snprintf(buf, sizeof buf, "%lldm%llds", total / 60, total % 60);
    else std::snprintf(buf, sizeof buf, "%lldh%lldm%llds", total / 3600, total / 60 % 60, total % 60);
  }
  return buf;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> ratelimit_headers(const config::key_config& key, key_state& st,
                                                                    steady_time now) {
  std::vector<std::pair<std::string, std::string>> out;
  if (key.rpm == 0 && key.tpm == 0) return out;
  std::lock_guard lock(st.mutex);
  const double elapsed = std::max(0.0, std::chrono::duration<double>(now - st.refilled).count());
  auto add = [&](const char* what, unsigned limit, double bucket, bool started) {
    const double level = started ? std::min<double>(limit, bucket + elapsed * limit / 60.0) : limit;
    out.emplace_back(std::string("x-ratelimit-limit-") + what, std::to_string(limit));
    out.emplace_back(std::string("x-ratelimit-remaining-") + what,
                     std::to_string(static_cast<long long>(std::max(0.0, std::floor(level)))));
    out.emplace_back(std::string("x-ratelimit-reset-") + what, go_duration((limit - level) * 60.0 / limit));
  };
  if (key.rpm != 0) add("requests", key.rpm, st.rpm_tokens, st.rpm_started);
  if (key.tpm != 0) add("tokens", key.tpm, st.tpm_tokens, st.tpm_started);
  return out;
}

void memory_limiter::finish(const config::key_config& key, key_state& state, std::int64_t estimated,
                            std::int64_t actual, double cost) {
  if (key.budget > 0 && cost > 0) {
    std::lock_guard lock(state.mutex);
    roll_period(key, state, unix_ms_now());
    state.spent += cost;
  }
  if (key.rpm == 0 && key.tpm == 0 && key.max_concurrency == 0) return;
  key_state* st = &state;
  st->in_flight.fetch_sub(1);
  if (key.tpm == 0 || actual < 0) return;
  std::lock_guard lock(st->mutex);
  if (!st->tpm_started) return;  // tpm was added by a reload while this request ran
  const double charged = std::min<double>(static_cast<double>(estimated), key.tpm);
  // May go below zero: a request that used more than estimated delays the next ones.
  st->tpm_tokens = std::min<double>(key.tpm, st->tpm_tokens + charged - static_cast<double>(actual));
}

}  // namespace tollgate::gateway
