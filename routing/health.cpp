#include "routing/health.hpp"

#include <algorithm>

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

// A freed slot goes straight to the best waiter, so that a waiter never loses its turn to a later
// request. The waiter count is raised before a newcomer's last try for a slot and read after a
// slot is freed (both sequentially consistent): either the newcomer sees the free slot, or the
// freeing side sees the newcomer and hands the slot over.
void target_health::end_request() {
  in_flight_.fetch_sub(1, std::memory_order_seq_cst);
  if (waiter_count_.load(std::memory_order_seq_cst) == 0) return;
  std::shared_ptr<waiter> next;
  {
    std::lock_guard lock(queue_mutex_);
    if (waiters_.empty()) return;
    if (!try_begin_request(limit_.load(std::memory_order_relaxed))) return;  // taken by a request that never queued
    auto it = best_waiter(steady_clock::now());
    next = std::move(*it);
    waiters_.erase(it);
    waiter_count_.store(waiters_.size(), std::memory_order_seq_cst);
    next->state = waiter::outcome::granted;
  }
  next->wake();
}

std::deque<std::shared_ptr<target_health::waiter>>::iterator target_health::best_waiter(steady_clock::time_point now) {
  const std::int64_t aging = aging_ticks_.load(std::memory_order_relaxed);
  auto rank = [&](const waiter& w) {
    std::int64_t r = w.priority;
    if (aging > 0 && now > w.since) r += (now - w.since).count() / aging;
    return r;
  };
  // Arrival order: the first of the highest rank is the one that came first.
  auto best = waiters_.begin();
  std::int64_t best_rank = rank(**best);
  for (auto it = std::next(best); it != waiters_.end(); ++it) {
    if (const auto r = rank(**it); r > best_rank) {
      best = it;
      best_rank = r;
    }
  }
  return best;
}

target_health::wait_result target_health::wait_for_slot(const std::shared_ptr<waiter>& w, unsigned max_queue,
                                                         unsigned limit, steady_clock::duration aging) {
  std::shared_ptr<waiter> displaced;
  {
    std::lock_guard lock(queue_mutex_);
    limit_.store(limit, std::memory_order_relaxed);
    aging_ticks_.store(aging.count(), std::memory_order_relaxed);
    waiter_count_.store(waiters_.size() + 1, std::memory_order_seq_cst);
    if (try_begin_request(limit)) {
      waiter_count_.store(waiters_.size(), std::memory_order_seq_cst);
      w->state = waiter::outcome::granted;
      return wait_result::granted;
    }
    if (waiters_.size() >= max_queue) {
      // Shed from the bottom: the oldest waiter of the lowest priority, if below w's.
      auto lowest = waiters_.end();
      for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
        if ((*it)->priority < w->priority && (lowest == waiters_.end() || (*it)->priority < (*lowest)->priority)) {
          lowest = it;
        }
      }
      if (lowest == waiters_.end()) {
        waiter_count_.store(waiters_.size(), std::memory_order_seq_cst);
        w->state = waiter::outcome::shed;
        return wait_result::shed;
      }
      displaced = std::move(*lowest);
      waiters_.erase(lowest);
      displaced->state = waiter::outcome::shed;
    }
    w->state = waiter::outcome::waiting;
    waiters_.push_back(w);
    waiter_count_.store(waiters_.size(), std::memory_order_seq_cst);
  }
  if (displaced) displaced->wake();
  return wait_result::queued;
}

target_health::wait_result target_health::finish_wait(const std::shared_ptr<waiter>& w) {
  std::lock_guard lock(queue_mutex_);
  if (w->state == waiter::outcome::waiting) {
    for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
      if (*it == w) {
        waiters_.erase(it);
        break;
      }
    }
    waiter_count_.store(waiters_.size(), std::memory_order_seq_cst);
    w->state = waiter::outcome::shed;
  }
  return w->state == waiter::outcome::granted ? wait_result::granted : wait_result::shed;
}

std::size_t target_health::waiting() const {
  std::lock_guard lock(queue_mutex_);
  return waiters_.size();
}

std::array<std::size_t, 10> target_health::waiting_by_priority() const {
  std::array<std::size_t, 10> out{};
  std::lock_guard lock(queue_mutex_);
  for (const auto& w : waiters_) ++out[static_cast<std::size_t>(std::clamp(w->priority, 0, 9))];
  return out;
}

}  // namespace tollgate::routing
