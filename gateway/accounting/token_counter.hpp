// Threads that count tokens apart from the workers. Counting a long prompt or answer with the
// tokenizer takes seconds; on a worker it would stall every connection of that worker. A
// request whose upstream reported no usage posts its count here, and the count's result goes
// back to the worker's loop for the consumers (accounting/result_consumers).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tollgate::gateway {

class token_counter {
 public:
  /// One job: stopping is true when it runs after stop() began (it should estimate rather than
  /// count, so that shutdown is not held up).
  using job = std::function<void(bool stopping)>;

  /// threads: at least one; max_queue: jobs that may wait for a thread.
  token_counter(std::size_t threads, std::size_t max_queue);
  ~token_counter();  ///< stop()
  token_counter(const token_counter&) = delete;
  token_counter& operator=(const token_counter&) = delete;

  /// Thread-safe. Queues j; false, with j not taken, when max_queue jobs wait already or the
  /// counter stopped (the caller then does a cheaper thing itself).
  bool post(job& j);
  /// Thread-safe. Jobs queued or running now.
  std::size_t pending() const;
  /// Runs what is queued with stopping = true, then joins the threads. Idempotent.
  void stop();

 private:
  void run();

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<job> queue_;
  std::size_t running_ = 0;
  std::size_t max_queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace tollgate::gateway
