// Health of each backend as real traffic sees it (passive outlier ejection), shared by every
// worker and kept across config reloads for backends whose name stays.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "config/config.hpp"
#include "routing/named_registry.hpp"

namespace tollgate::routing {

using steady_clock = std::chrono::steady_clock;

/// Lock-free; every method is thread-safe.
class target_health {
 public:
  /// May a request go here now? An ejected backend whose cooldown has passed admits one trial
  /// request at a time (half-open); its outcome closes or re-opens the ejection.
  bool admit(steady_clock::time_point now);
  /// Whether it is ejected at all (for display and for ordering).
  bool ejected(steady_clock::time_point now) const;
  void record_success();
  /// The request ended with no verdict (the client left): frees a half-open trial slot.
  void record_abandoned() { trial_.store(false, std::memory_order_release); }
  void record_failure(steady_clock::time_point now, const config::ejection_config& cfg);

  std::int64_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  /// Takes a slot when fewer than limit requests are in flight (limit 0: always).
  bool try_begin_request(unsigned limit);
  /// Frees the slot and hands it to the longest waiter, if any.
  void end_request();

  /// A request waiting for a slot. wake() is called once, from any thread, when a slot may be
  /// free (the waiter then calls try_begin_request again).
  struct waiter {
    std::function<void()> wake;
  };
  /// Queues w unless max_queue are already waiting. The caller keeps w alive while queued and
  /// calls cancel_wait when it stops waiting.
  bool wait_for_slot(const std::shared_ptr<waiter>& w, unsigned max_queue);
  void cancel_wait(const std::shared_ptr<waiter>& w);
  std::size_t waiting() const;
  int consecutive_failures() const { return failures_.load(std::memory_order_relaxed); }

  /// Time to first byte of an answer, smoothed (EWMA, weight 0.3 on the newest); 0 until the
  /// first answer.
  void record_first_byte(std::chrono::microseconds latency);
  double first_byte_ewma_us() const { return ttfb_ewma_us_.load(std::memory_order_relaxed); }

  /// Active checks: the prober's verdict. A backend marked down is not admitted (like ejection).
  void set_probed_down(bool down) { probed_down_.store(down, std::memory_order_release); }
  bool probed_down() const { return probed_down_.load(std::memory_order_acquire); }
  int ejections() const { return ejections_.load(std::memory_order_relaxed); }

  /// Told of each ejection this process decides, with its cooldown (so a replica can tell the
  /// others); not of ejections heard through eject_for. May be set again at any time.
  void set_on_eject(std::function<void(std::chrono::milliseconds)> on_eject);
  /// An ejection another replica decided: ejected for cooldown from now, unless it already is
  /// for longer. Leaves this process's own ejection count (its next cooldown) alone.
  void eject_for(steady_clock::time_point now, std::chrono::milliseconds cooldown);

 private:
  std::atomic<std::shared_ptr<const std::function<void(std::chrono::milliseconds)>>> on_eject_;
  std::atomic<std::int64_t> in_flight_{0};
  std::atomic<int> failures_{0};
  std::atomic<int> ejections_{0};  ///< consecutive ejections; sets the next cooldown
  std::atomic<std::int64_t> ejected_until_{0};  ///< steady_clock ticks; 0 = not ejected
  std::atomic<bool> trial_{false};  ///< a half-open trial is in flight
  std::atomic<bool> probed_down_{false};
  std::atomic<double> ttfb_ewma_us_{0};
  mutable std::mutex queue_mutex_;  // this backend's waiters only; taken when it is full
  std::deque<std::shared_ptr<waiter>> waiters_;
};

/// One target_health per backend name.
using health_registry = named_registry<target_health>;

}  // namespace tollgate::routing
