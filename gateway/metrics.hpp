// Prometheus metrics of the gateway, kept in one shard per worker (a mutex that only a scrape
// contends for) and rendered in the text exposition format. Label values are bounded: route and
// backend names from the config, status classes, outcomes. Never a key or a client's raw model.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tollgate::gateway {

struct runtime;
class key_table;

/// Latency buckets in seconds: sub-millisecond gateway work up to long generations.
inline constexpr std::array<double, 18> latency_buckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                           0.5,    1,     2.5,    5,     10,   30,    60,    120,  300};

class histogram {
 public:
  void observe(double value);
  void merge(const histogram& other);
  /// Appends the _bucket, _sum and _count lines; labels is "" or `a="x",b="y"`.
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::array<std::uint64_t, latency_buckets.size()> buckets_{};  // non-cumulative
  std::uint64_t count_ = 0;
  double sum_ = 0;
};

class gateway_metrics {
 public:
  explicit gateway_metrics(std::size_t shards);

  /// One finished request. route: the route's configured name ("" when none matched).
  void record_request(std::size_t shard, const std::string& route, const std::string& backend, int status,
                      double seconds);
  /// One upstream attempt. outcome: "ok", "error_status", "failed", "cancelled".
  void record_attempt(std::size_t shard, const std::string& backend, const char* outcome, double first_byte_seconds);

  /// Tokens and money of one request, by key name, route and the backend that served it.
  void record_usage(std::size_t shard, const std::string& key, const std::string& route, const std::string& backend,
                    std::int64_t prompt, std::int64_t cached, std::int64_t completion, std::int64_t reasoning,
                    double cost);

  /// A stream that answered: seconds to its first bytes at the client, and per output token after
  /// that (tpot < 0: too few tokens to say).
  void record_stream(std::size_t shard, const std::string& route, double ttft, double tpot);
  /// The answering upstream attempt's whole duration, and the time the request spent outside it
  /// when it was answered at the first attempt (overhead < 0: retried, not recorded).
  void record_upstream(std::size_t shard, const std::string& backend, double seconds, double overhead);

  /// The whole exposition: these counters plus gauges read now from rt (backend health), keys
  /// (budgets left; may be null) and the server (requests in flight).
  std::string render(const runtime& rt, const key_table* keys, std::int64_t in_flight) const;

 private:
  struct shard_data {
    mutable std::mutex mutex;
    std::map<std::array<std::string, 3>, std::uint64_t> requests;  // route, backend, class
    std::map<std::string, histogram> duration;                     // by route
    std::map<std::array<std::string, 2>, std::uint64_t> attempts;  // backend, outcome
    std::map<std::string, histogram> first_byte;                   // by backend
    std::map<std::array<std::string, 4>, std::uint64_t> tokens;    // key, route, backend, kind
    std::map<std::array<std::string, 3>, double> cost;             // key, route, backend
    std::map<std::string, histogram> ttft;                         // by route
    std::map<std::string, histogram> tpot;                         // by route
    std::map<std::string, histogram> upstream;                     // by backend
    histogram overhead;
  };
  std::vector<std::unique_ptr<shard_data>> shards_;
};

/// A label value with \, " and newline escaped as the exposition format requires.
std::string escape_label(const std::string& value);

}  // namespace tollgate::gateway
