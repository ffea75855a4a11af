#include "routing/health.hpp"

namespace tollgate::routing {

namespace {
std::int64_t ticks(steady_clock::time_point t) { return t.time_since_epoch().count(); }
}  // namespace

bool target_health::ejected(steady_clock::time_point now) const {
  if (probed_down()) return true;
  const auto until = ejected_until_.load(std::memory_order_acquire);
  return until != 0 && (ticks(now) < until || trial_.load(std::memory_order_acquire));
}

bool target_health::admit(steady_clock::time_point now) {
  if (probed_down()) return false;
  const auto until = ejected_until_.load(std::memory_order_acquire);
  if (until == 0) return true;
  if (ticks(now) < until) return false;
  bool expected = false;
  return trial_.compare_exchange_strong(expected, true, std::memory_order_acq_rel);
}

void target_health::record_success() {
  failures_.store(0, std::memory_order_relaxed);
  if (ejected_until_.load(std::memory_order_acquire) != 0) {
    ejections_.store(0, std::memory_order_relaxed);
    ejected_until_.store(0, std::memory_order_release);
    trial_.store(false, std::memory_order_release);
  }
}

void target_health::record_failure(steady_clock::time_point now, const config::ejection_config& cfg) {
  const int failures = failures_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (cfg.after_failures == 0) return;
  auto until = ejected_until_.load(std::memory_order_acquire);
  if (until == 0) {
    if (failures < static_cast<int>(cfg.after_failures)) return;
  } else if (ticks(now) < until || !trial_.load(std::memory_order_acquire)) {
    // Already ejected: requests that were in flight when it happened fail too, and say nothing
    // new. Only a failed half-open trial ejects again.
    return;
  }
  // Eject (again): the cooldown doubles with each ejection in a row, up to the maximum. Of the
  // failures racing here for one ejection, one wins the exchange; the others change nothing.
  const int n = ejections_.load(std::memory_order_relaxed);
  auto cooldown = cfg.cooldown;
  for (int i = 0; i < n && cooldown < cfg.max_cooldown; ++i) cooldown *= 2;
  if (cooldown > cfg.max_cooldown) cooldown = cfg.max_cooldown;
  if (!ejected_until_.compare_exchange_strong(until, ticks(now + cooldown), std::memory_order_acq_rel)) return;
  ejections_.fetch_add(1, std::memory_order_relaxed);
  trial_.store(false, std::memory_order_release);
  if (auto tell = on_eject_.load(std::memory_order_acquire)) {
    (*tell)(std::chrono::duration_cast<std::chrono::milliseconds>(cooldown));
  }
}

void target_health::set_on_eject(std::function<void(std::chrono::milliseconds)> on_eject) {
  on_eject_.store(on_eject ? std::make_shared<const std::function<void(std::chrono::milliseconds)>>(std::move(on_eject))
                           : nullptr,
                  std::memory_order_release);
}

void target_health::eject_for(steady_clock::time_point now, std::chrono::milliseconds cooldown) {
  const auto wanted = ticks(now + cooldown);
  auto until = ejected_until_.load(std::memory_order_acquire);
  while (until < wanted && !ejected_until_.compare_exchange_weak(until, wanted, std::memory_order_acq_rel)) {
  }
  trial_.store(false, std::memory_order_release);
}

void target_health::record_first_byte(std::chrono::microseconds latency) {
  const double sample = static_cast<double>(latency.count());
  double old = ttfb_ewma_us_.load(std::memory_order_relaxed);
  // Racing updates from other workers may drop a sample; the average stays meaningful.
  ttfb_ewma_us_.store(old == 0 ? sample : 0.7 * old + 0.3 * sample, std::memory_order_relaxed);
}

bool target_health::try_begin_request(unsigned limit) {
  if (limit == 0) {
    in_flight_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  auto cur = in_flight_.load(std::memory_order_relaxed);
  while (cur < static_cast<std::int64_t>(limit)) {
    if (in_flight_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) return true;
  }
  return false;
}

void target_health::end_request() {
  in_flight_.fetch_sub(1, std::memory_order_acq_rel);
  std::shared_ptr<waiter> next;
  {
    std::lock_guard lock(queue_mutex_);
    if (waiters_.empty()) return;
    next = std::move(waiters_.front());
    waiters_.pop_front();
  }
  next->wake();
}

bool target_health::wait_for_slot(const std::shared_ptr<waiter>& w, unsigned max_queue) {
  std::lock_guard lock(queue_mutex_);
  if (waiters_.size() >= max_queue) return false;
  waiters_.push_back(w);
  return true;
}

void target_health::cancel_wait(const std::shared_ptr<waiter>& w) {
  std::lock_guard lock(queue_mutex_);
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    if (*it == w) {
      waiters_.erase(it);
      return;
    }
  }
}

std::size_t target_health::waiting() const {
  std::lock_guard lock(queue_mutex_);
  return waiters_.size();
}

}  // namespace tollgate::routing
