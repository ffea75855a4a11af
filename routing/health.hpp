// Health of each backend as real traffic sees it (passive outlier ejection), shared by every
// worker and kept across config reloads for backends whose name stays.
#pragma once

#include <array>
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
  /// Frees the slot, or hands it straight to the first waiter (see wait_for_slot).
  void end_request();

  /// A request waiting for a slot of a backend at its max_concurrency. Its fields are set by its
  /// owner before it is queued; state changes under the queue's lock only.
  struct waiter {
    /// Called once, from any thread (under no lock), when state leaves waiting.
    std::function<void()> wake;
    int priority = 1;                ///< larger first (config::key_config::priority)
    steady_clock::time_point since;  ///< when it began to wait: first come, first served within a rank
    enum class outcome { waiting, granted, shed };
    outcome state = outcome::waiting;
  };
  /// Where a waiter stands after wait_for_slot or finish_wait.
  enum class wait_result {
    granted,  ///< it holds a slot (end_request frees it)
    queued,   ///< waiting; wake() says when that changes
    shed,     ///< refused: the queue is full of waiters of its priority or higher, or a newer
              ///< request of higher priority took its place
  };
  /// Queues w for a slot, or grants one at once when one is free. The queue serves the highest
  /// rank first, first come first served within a rank; a waiter's rank is its priority plus one
  /// for each aging it has waited (aging 0: no aging), so that low priority is never starved.
  /// When max_queue already wait, the oldest waiter of the lowest priority below w's is shed
  /// (woken with state shed) to make room; with none below w's, w itself is shed.
  /// limit: the backend's max_concurrency. The caller keeps w alive while queued and calls
  /// finish_wait when it stops waiting.
  wait_result wait_for_slot(const std::shared_ptr<waiter>& w, unsigned max_queue, unsigned limit,
                            steady_clock::duration aging);
  /// Takes w out of the queue if it still waits (it gave up: shed); returns where it ended:
  /// granted (it holds a slot, which end_request frees) or shed.
  wait_result finish_wait(const std::shared_ptr<waiter>& w);
  std::size_t waiting() const;
  /// Waiters by priority, 0 to config::max_priority.
  std::array<std::size_t, 10> waiting_by_priority() const;
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
  /// The waiter to serve next (under queue_mutex_); waiters_ must not be empty.
  std::deque<std::shared_ptr<waiter>>::iterator best_waiter(steady_clock::time_point now);

  mutable std::mutex queue_mutex_;  // this backend's waiters only; taken when it is full
  std::deque<std::shared_ptr<waiter>> waiters_;  // in arrival order
  std::atomic<std::size_t> waiter_count_{0};
  std::atomic<unsigned> limit_{0};       // the max_concurrency waiters last gave
  std::atomic<std::int64_t> aging_ticks_{0};  // the aging waiters last gave
};

/// One target_health per backend name.
using health_registry = named_registry<target_health>;

}  // namespace tollgate::routing
