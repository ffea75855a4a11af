#include "gateway/observability/access_log.hpp"

#include <charconv>
#include <chrono>
#include <ctime>
#include <string_view>

#include "protocol/json_body.hpp"

namespace tollgate::gateway {

access_log::access_log(const std::string& destination, std::size_t shards, std::vector<std::string> skip)
    : skip_(std::move(skip)) {
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
  if (r.status >= 200 && r.status < 300 && !skip_.empty()) {
    const std::string_view path = std::string_view(r.path).substr(0, r.path.find('?'));
    for (const auto& s : skip_) {
      if (path == s) return;
    }
  }
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char when[40];
  const std::size_t n = std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(when + n, sizeof when - n, ".%03dZ", static_cast<int>(ms % 1000));

  // Written by hand: a JSON tree per request would cost more than the rest of the request.
  std::string text;
  text.reserve(320 + r.path.size() + r.error.size());
  const auto key = [&](const char* name) { text.append(",\"").append(name).append("\":"); };
  const auto str = [&](const char* name, std::string_view v) {
    key(name);
    protocol::append_json_string(text, v);
  };
  const auto num = [&](const char* name, auto v) {
    key(name);
    char digits[32];
    text.append(digits, std::to_chars(digits, digits + sizeof digits, v).ptr);
  };
  text.append("{\"time\":\"").append(when).push_back('"');
  str("id", r.request_id);
  str("method", r.method);
  str("path", r.path);
  str("key", r.key_name);
  str("model", r.model);
  str("backend", r.backend);
  num("status", r.status);
  num("latency_ms", static_cast<double>(static_cast<long long>(r.latency_ms * 1000)) / 1000);
  num("bytes_in", r.bytes_in);
  num("bytes_out", r.bytes_out);
  key("stream");
  text.append(r.stream ? "true" : "false");
  if (r.priority >= 0) num("priority", r.priority);
  if (!r.error.empty()) str("error", r.error);
  if (r.has_usage) {
    num("prompt_tokens", r.prompt_tokens);
    num("cached_tokens", r.cached_tokens);
    if (r.cache_write_tokens > 0) num("cache_write_tokens", r.cache_write_tokens);
    num("completion_tokens", r.completion_tokens);
    num("reasoning_tokens", r.reasoning_tokens);
    num("cost", r.cost);
    if (*r.usage_source != '\0') str("usage_source", r.usage_source);
  }
  text.append("}\n");
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
