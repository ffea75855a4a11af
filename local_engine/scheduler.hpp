// The continuous-batching scheduler: one engine thread per loaded model that runs ONE backend
// forward per step over every running sequence's next token plus chunks of waiting prompts.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "local_engine/engine.hpp"
#include "local_engine/forward_backend.hpp"
#include "local_engine/kv_blocks.hpp"

namespace tollgate::engine {

/// What a sequence asks the scheduler for.
struct sched_request {
  std::vector<int32_t> prompt;  ///< checked by the caller: non-empty, in the vocabulary, within the context
  sampling sample;              ///< checked by the caller
  std::size_t max_tokens = 0;   ///< tokens to generate at most
  /// Generate only as many tokens as grant() has allowed so far (sequence::step()); the prompt waits
  /// for the first grant too.
  bool paced = false;
  /// Hand the logits of every prompt position to on_logits, chunk by chunk (forward_logits()).
  bool all_logits = false;
  /// Larger is admitted first, and may preempt running sequences of lower priority when KV
  /// blocks run out (see scheduler). Equal priorities are first come, first served.
  int priority = 1;
  /// Admission control, as queue_options says: sequences that may wait beyond max_batch (the
  /// rest are displaced by priority or refused with queue_full), and the longest wait for a
  /// first admission (0: none).
  std::size_t max_queue = std::numeric_limits<std::size_t>::max();
  std::chrono::milliseconds queue_timeout{0};
  stream_callbacks callbacks;
};

/// A sequence's state, shared by its handle (cancel, grant) and the engine thread (the rest).
struct sched_sequence {
  std::uint64_t id = 0;
  sched_request req;
  std::atomic<bool> cancel_requested{false};
  std::atomic<std::size_t> credit{0};  ///< paced: tokens the caller has asked for and not received
  /// Displaced from a full queue by a newer sequence of higher priority (set under the
  /// scheduler's lock, by submit()): it ends overloaded at the engine's next step.
  std::atomic<bool> shed{false};
  // Engine thread only.
  std::vector<int32_t> tokens;  ///< prompt, then every generated token
  std::size_t computed = 0;     ///< positions in the KV cache
  std::size_t generated = 0;
  std::uint64_t admitted_at = 0;
  std::chrono::steady_clock::time_point submitted;  ///< for aging
  std::size_t logits_sent = 0;  ///< all_logits: positions whose logits went out
  bool ended = false;
};

/// The scheduler of one model. Its thread is the only caller of the backend's forward().
///
/// Each step: (1) sequences whose cancel() came end and free their KV blocks; (2) running
/// sequences, oldest admitted first, each get their next tokens (one decode token, or the next
/// chunk of a prompt being prefilled) while the token budget (max_batch_tokens) lasts; a sequence
/// that needs a KV block when none is free preempts the running sequence of the lowest priority,
/// the most recently admitted among equals (its blocks are freed and it goes back to the queue,
/// first of its priority, with prompt + generated tokens, to be recomputed; its output is
/// unchanged); (3) waiting sequences are admitted in order (higher priority first, first come
/// first served within one) while fewer than max_batch run, the budget lasts, and the free blocks
/// cover their whole prompt; one whose blocks are short preempts running sequences of lower
/// priority (lowest first, newest first) until they are covered, else waits; (4) one forward runs
/// over all of it and every sequence whose last known position was forwarded gets a token sampled
/// with draw = tokens generated so far. With scheduler_options::priority_aging, "priority" above
/// is a sequence's rank: its priority plus one per priority_aging since it was submitted.
///
/// Admission control (sched_request::max_queue, queue_timeout): submit() counts the sequences in
/// flight (submitted, not ended); when max_batch + max_queue already are, the newcomer displaces
/// the oldest never-admitted sequence of the lowest priority below its own (which ends overloaded
/// at the next step), or throws queue_full when there is none. After each step's admissions, a
/// never-admitted sequence that has waited its queue_timeout ends overloaded; the thread wakes for
/// the earliest such deadline even when nothing else happens.
///
/// With prefix caching (scheduler_options::prefix_caching), every full block a forward completes is
/// registered in the allocator's prefix cache, and an admitted sequence starts with the cached
/// blocks its tokens begin with (all but the block of its last position): its prefill starts at
/// the first position not cached. A preempted sequence comes back the same way, so it recomputes
/// only what was evicted meanwhile.
class scheduler {
 public:
  /// Starts the engine thread. The backend must outlive the scheduler.
  scheduler(forward_backend& backend, const model_config& config, const scheduler_options& options);
  /// Stops the thread; sequences still queued or running end as failed ("the engine stopped").
  ~scheduler();
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  /// Queues a sequence. Thread-safe; callable from a callback. Throws queue_full (see above).
  std::shared_ptr<sched_sequence> submit(sched_request r);
  /// Ends s at the next step. Thread-safe.
  void cancel(sched_sequence& s);
  /// Paced sequences: allows n more tokens. Thread-safe.
  void grant(sched_sequence& s, std::size_t n);
  engine_stats stats() const;
  const scheduler_options& options() const { return opts_; }

 private:
  struct planned {
    std::shared_ptr<sched_sequence> seq;
    std::size_t n = 0;  // tokens forwarded this step
  };

  void run();
  bool step();       // true when anything happened
  bool step_once();  // step() before the deferred on_end calls
  void flush_ends();
  bool eligible(const sched_sequence& s) const;
  void end(sched_sequence& s, stream_end reason, const std::string& message = {});
  /// Its priority plus one per scheduler_options::priority_aging since it was submitted.
  std::int64_t rank(const sched_sequence& s) const;
  /// The running sequence to preempt first: lowest rank, most recently admitted among those.
  std::shared_ptr<sched_sequence> lowest_running() const;
  void preempt(const std::shared_ptr<sched_sequence>& victim);
  /// Into waiting_ after every sequence of higher priority, and of equal priority unless first.
  void enqueue(std::shared_ptr<sched_sequence> s, bool first_of_priority);
  void sweep();  // drops ended sequences from the lists
  void signal();
  /// Ends the never-admitted sequences past their queue_timeout (true when one was); sets
  /// queue_deadline_ to the earliest deadline left.
  bool expire_waiting();

  forward_backend& backend_;
  const model_config& config_;
  scheduler_options opts_;
  kv_block_allocator blocks_;

  // Engine thread only.
  std::vector<std::shared_ptr<sched_sequence>> running_;  // in admission order
  std::deque<std::shared_ptr<sched_sequence>> waiting_;
  std::uint64_t admissions_ = 0;
  std::chrono::steady_clock::time_point step_now_;  // when this step began: ranks are taken at it
  batch_result result_;
  std::vector<std::function<void()>> ends_;  // on_end calls of this step, made after its bookkeeping
  std::optional<std::chrono::steady_clock::time_point> queue_deadline_;  // the earliest queue_timeout to come

  // Shared, under m_.
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<sched_sequence>> incoming_;
  std::uint64_t signals_ = 0;
  std::uint64_t next_id_ = 0;
  bool stop_ = false;
  std::size_t in_flight_ = 0;  // submitted, not ended, not displaced
  std::deque<std::shared_ptr<sched_sequence>> unadmitted_;  // never admitted yet, in submission order


  // Statistics, under stats_m_.
  mutable std::mutex stats_m_;
  engine_stats stats_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, std::size_t>> recent_;  // (step end, tokens)

  std::thread thread_;  // last: starts after everything above exists
};

}  // namespace tollgate::engine
