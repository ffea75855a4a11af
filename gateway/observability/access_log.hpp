// One JSON line per request. Workers append to their own shard (a mutex nobody else takes except
// the flusher); a background thread writes the shards out, so no request waits on disk or a pipe.
#pragma once

#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace tollgate::gateway {

struct access_record {
  std::string request_id;
  std::string method;
  std::string path;
  std::string key_name;
  std::string model;
  std::string backend;
  int status = 0;
  double latency_ms = 0;
  std::size_t bytes_in = 0;
  std::size_t bytes_out = 0;
  bool stream = false;
  int priority = -1;  ///< the request's priority (the key's, or lower by x-tollgate-priority); -1: none
  std::string error;  ///< short reason when the gateway answered with an error
  bool has_usage = false;  ///< the upstream reported usage; the fields below are set
  std::int64_t prompt_tokens = 0;
  std::int64_t cached_tokens = 0;
  std::int64_t cache_write_tokens = 0;  ///< prompt tokens written to the provider's cache (logged when > 0)
  std::int64_t completion_tokens = 0;
  std::int64_t reasoning_tokens = 0;
  double cost = 0;
  /// Where the usage came from: "upstream", "counted" (the tokenizer), "estimated" (counted in
  /// part, past metering.max_count_bytes); "" without usage.
  const char* usage_source = "";

  /// Back to a fresh record, keeping the strings' storage for the connection's next request.
  void clear() {
    for (std::string* s : {&request_id, &method, &path, &key_name, &model, &backend, &error}) s->clear();
    status = 0;
    latency_ms = 0;
    bytes_in = bytes_out = 0;
    stream = has_usage = false;
    priority = -1;
    prompt_tokens = cached_tokens = cache_write_tokens = completion_tokens = reasoning_tokens = 0;
    cost = 0;
    usage_source = "";
  }
};

class access_log {
 public:
  /// destination: "stdout", "stderr", "off", or a file path (appended to). skip: paths (query
  /// ignored) whose successful (2xx) requests are not logged, e.g. /metrics for Prometheus scrapes.
  access_log(const std::string& destination, std::size_t shards, std::vector<std::string> skip = {});
  ~access_log();  ///< flushes everything written before it
  access_log(const access_log&) = delete;
  access_log& operator=(const access_log&) = delete;

  bool enabled() const { return out_ != nullptr; }
  /// Thread-safe; shard is the caller's worker index.
  void write(std::size_t shard, const access_record& record);
  void flush();

 private:
  struct shard_buffer {
    std::mutex mutex;
    std::string text;
  };
  void run();

  std::FILE* out_ = nullptr;
  bool owns_file_ = false;
  std::vector<std::string> skip_;
  std::vector<std::unique_ptr<shard_buffer>> shards_;
  std::mutex flush_mutex_;
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tollgate::gateway
