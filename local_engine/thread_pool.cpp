#include "local_engine/thread_pool.hpp"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <string>

namespace tollgate::engine {

namespace {
size_t default_threads() {
  if (const char* e = std::getenv("TOLLGATE_ENGINE_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    if (end != e && *end == '\0' && v > 0 && v <= 1024) return static_cast<size_t>(v);
  }
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : hc;
}
}  // namespace

thread_pool::thread_pool(size_t threads) {
  if (threads == 0) threads = default_threads();
  for (size_t i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

thread_pool::~thread_pool() {
  {
    std::lock_guard lk(m_);
    stop_ = true;
  }
  cv_work_.notify_all();
  for (auto& t : workers_) t.join();
}

thread_pool& thread_pool::shared() {
  static thread_pool pool;
  return pool;
}

void thread_pool::run_chunks() {
  // Called with m_ unlocked; takes chunks until none are left.
  for (;;) {
    size_t c;
    const std::function<void(size_t, size_t)>* fn;
    size_t n, chunks;
    {
      std::lock_guard lk(m_);
      if (fn_ == nullptr || next_chunk_ >= chunks_) return;
      c = next_chunk_++;
      fn = fn_;
      n = n_;
      chunks = chunks_;
    }
    const size_t begin = n * c / chunks, end = n * (c + 1) / chunks;
    try {
      if (begin < end) (*fn)(begin, end);
    } catch (...) {
      std::lock_guard lk(m_);
      if (!error_) error_ = std::current_exception();
    }
    {
      std::lock_guard lk(m_);
      if (++done_chunks_ == chunks_) cv_done_.notify_all();
    }
  }
}

void thread_pool::worker_loop() {
  unsigned long seen = 0;
  for (;;) {
    {
      std::unique_lock lk(m_);
      cv_work_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    run_chunks();
  }
}

void thread_pool::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  if (workers_.empty() || n == 1) {
    fn(0, n);
    return;
  }
  std::lock_guard call(call_mutex_);
  {
    std::lock_guard lk(m_);
    fn_ = &fn;
    n_ = n;
    chunks_ = std::min(n, size());
    next_chunk_ = 0;
    done_chunks_ = 0;
    error_ = nullptr;
    ++generation_;
  }
  cv_work_.notify_all();
  run_chunks();
  std::exception_ptr err;
  {
    std::unique_lock lk(m_);
    cv_done_.wait(lk, [&] { return done_chunks_ == chunks_; });
    fn_ = nullptr;
    err = error_;
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace tollgate::engine
