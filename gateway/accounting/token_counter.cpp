#include "gateway/accounting/token_counter.hpp"

namespace tollgate::gateway {

token_counter::token_counter(std::size_t threads, std::size_t max_queue) : max_queue_(max_queue) {
  if (threads == 0) threads = 1;
  threads_.reserve(threads);
  for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
}

token_counter::~token_counter() { stop(); }

bool token_counter::post(job& j) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || queue_.size() >= max_queue_) return false;
    queue_.push_back(std::move(j));
  }
  wake_.notify_one();
  return true;
}

std::size_t token_counter::pending() const {
  std::lock_guard lock(mutex_);
  return queue_.size() + running_;
}

void token_counter::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

void token_counter::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left
    job j = std::move(queue_.front());
    queue_.pop_front();
    ++running_;
    const bool stopping = stopping_;
    lock.unlock();
    j(stopping);
    j = nullptr;  // what it holds goes before the count says it is done
    lock.lock();
    --running_;
  }
}

}  // namespace tollgate::gateway
