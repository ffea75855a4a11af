#include "gateway/access_log.hpp"

#include <chrono>
#include <ctime>

#include <nlohmann/json.hpp>

namespace tollgate::gateway {

access_log::access_log(const std::string& destination, std::size_t shards) {
  if (destination == "off") return;
  if (destination == "stdout" || destination.empty()) {
    out_ = stdout;
  } else if (destination == "stderr") {
    out_ = stderr;
  } else {
    out_ = std::fopen(destination.c_str(), "a");
    owns_file_ = out_ != nullptr;
    if (out_ == nullptr) std::fprintf(stderr, "tollgate: cannot open access log %s; logging to stderr\n", destination.c_str());
    if (out_ == nullptr) out_ = stderr;
  }
  for (std::size_t i = 0; i < std::max<std::size_t>(shards, 1); ++i) shards_.push_back(std::make_unique<shard_buffer>());
  thread_ = std::thread([this] { run(); });
}

access_log::~access_log() {
  if (out_ == nullptr) return;
  {
    std::lock_guard lock(wake_mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  thread_.join();
  flush();
  if (owns_file_) std::fclose(out_);
}

void access_log::write(std::size_t shard, const access_record& r) {
  if (out_ == nullptr) return;
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char when[40];
  const std::size_t n = std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(when + n, sizeof when - n, ".%03dZ", static_cast<int>(ms % 1000));

  nlohmann::json line = {
      {"time", when},          {"id", r.request_id},   {"method", r.method},   {"path", r.path},
      {"key", r.key_name},     {"model", r.model},     {"backend", r.backend}, {"status", r.status},
      {"latency_ms", static_cast<double>(static_cast<long long>(r.latency_ms * 1000)) / 1000},
      {"bytes_in", r.bytes_in}, {"bytes_out", r.bytes_out}, {"stream", r.stream}};
  if (!r.error.empty()) line["error"] = r.error;
  if (r.has_usage) {
    line["prompt_tokens"] = r.prompt_tokens;
    line["cached_tokens"] = r.cached_tokens;
    line["completion_tokens"] = r.completion_tokens;
    line["reasoning_tokens"] = r.reasoning_tokens;
    line["cost"] = r.cost;
  }
  std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text.push_back('\n');
  auto& buffer = *shards_[shard % shards_.size()];
  std::lock_guard lock(buffer.mutex);
  buffer.text += text;
}

void access_log::flush() {
  if (out_ == nullptr) return;
  std::lock_guard flushing(flush_mutex_);
  std::string taken;
  for (auto& shard : shards_) {
    {
      std::lock_guard lock(shard->mutex);
      taken.swap(shard->text);
    }
    if (!taken.empty()) std::fwrite(taken.data(), 1, taken.size(), out_);
    taken.clear();
  }
  std::fflush(out_);
}

void access_log::run() {
  std::unique_lock lock(wake_mutex_);
  while (!stop_) {
    wake_.wait_for(lock, std::chrono::milliseconds(100));
    lock.unlock();
    flush();
    lock.lock();
  }
}

}  // namespace tollgate::gateway
