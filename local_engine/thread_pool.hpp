// A small fixed pool for data-parallel loops of the CPU forward. One loop runs at a time; callers
// from several threads take turns. The calling thread works too.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tollgate::engine {

class thread_pool {
 public:
  /// threads: total workers including the caller; 0 picks TOLLGATE_ENGINE_THREADS or the core count.
  explicit thread_pool(size_t threads = 0);
  ~thread_pool();
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  size_t size() const { return workers_.size() + 1; }
  /// Calls fn(begin, end) over [0, n) split into about size() contiguous chunks; returns when all
  /// are done. An exception from fn is rethrown here (the first one).
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn);

  /// The process-wide pool the CPU forward uses.
  static thread_pool& shared();

 private:
  void worker_loop();
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one loop at a time
  std::mutex m_;
  std::condition_variable cv_work_, cv_done_;
  const std::function<void(size_t, size_t)>* fn_ = nullptr;
  size_t n_ = 0, chunks_ = 0, next_chunk_ = 0, done_chunks_ = 0;
  unsigned long generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace tollgate::engine
