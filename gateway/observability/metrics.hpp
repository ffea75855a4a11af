// Prometheus metrics of the gateway, kept in one shard per worker (a mutex that only a scrape
// contends for) and rendered in the text exposition format. Label values are bounded: route and
// backend names from the config, status classes, outcomes. Never a key or a client's raw model.
#pragma once

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
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
  std::uint64_t count() const { return count_; }

 private:
  std::array<std::uint64_t, latency_buckets.size()> buckets_{};  // non-cumulative
  std::uint64_t count_ = 0;
  double sum_ = 0;
};

class gateway_metrics {
 public:
  explicit gateway_metrics(std::size_t shards);

  /// What one finished request adds to the metrics, recorded at once under one lock.
  struct finished_request {
    const std::string& route;    ///< the route's configured name ("" when none matched)
    const std::string& backend;  ///< the backend that served it
    const std::string& key;      ///< the key's name
    int status = 0;
    double seconds = 0;
    /// Tokens and money, when the usage is known.
    bool has_usage = false;
    std::int64_t prompt = 0, cached = 0, cache_write = 0, completion = 0, reasoning = 0;
    double cost = 0;
    /// A stream that answered: seconds to its first bytes at the client (ttft < 0: not such a
    /// stream), and per output token after that (tpot < 0: too few tokens to say).
    double ttft = -1, tpot = -1;
    /// The answering upstream attempt's whole duration (upstream_seconds < 0: none), and the time
    /// the request spent outside it when it was answered at the first attempt (overhead < 0:
    /// retried, not recorded).
    double upstream_seconds = -1, overhead = -1;
  };
  void record_finished(std::size_t shard, const finished_request& r);

  /// One upstream attempt. outcome: "ok", "error_status", "failed", "cancelled".
  void record_attempt(std::size_t shard, const std::string& backend, const char* outcome, double first_byte_seconds);

  /// Why a request waiting for a backend slot got none (the shed counter's reason label).
  enum class shed_reason { full, displaced, timeout };
  /// A request that waited for a slot of a backend at its max_concurrency, by priority (0 to
  /// 9): seconds waited, and whether it got the slot (shed: why not).
  void record_queue_wait(std::size_t shard, int priority, double seconds, bool served, shed_reason why);

  /// The whole exposition: these counters plus gauges read now from rt (backend health), keys
  /// (budgets left; may be null) and the server (requests in flight).
  std::string render(const runtime& rt, const key_table* keys, std::int64_t in_flight) const;

 private:
  /// Orders label tuples held as strings and looks them up by string views, so recording a sample
  /// builds no strings unless its label set is new.
  struct labels_less {
    using is_transparent = void;
    /// Label by label, one three-way compare each (lexicographical_compare would make two).
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      static_assert(std::tuple_size_v<A> == std::tuple_size_v<B>);
      for (std::size_t i = 0; i < a.size(); ++i) {
        if (const int c = std::string_view(a[i]).compare(std::string_view(b[i])); c != 0) return c < 0;
      }
      return false;
    }
  };
  template <std::size_t N, class V>
  using labelled = std::map<std::array<std::string, N>, V, labels_less>;
  struct usage_cell {
    std::array<std::uint64_t, 5> tokens{};  // prompt (uncached), cached_prompt, completion, reasoning, cache_write_prompt
    double cost = 0;
  };
  /// The cells of the last finished request's labels: the next request of a connection, a key
  /// or a route usually has the same ones, and finds its cells by comparing three strings instead
  /// of looking up six maps. Cells are never removed from their maps, so the pointers stay valid;
  /// a pointer is null until a request with these labels needed it.
  struct finished_cells {
    std::string route, backend, key;
    const char* status_class = nullptr;  // one of status_class()'s literals
    usage_cell* usage = nullptr;
    std::uint64_t* requests = nullptr;   // for status_class
    histogram* duration = nullptr;
    histogram* ttft = nullptr;
    histogram* tpot = nullptr;
    histogram* upstream = nullptr;
  };
  /// The same for the last upstream attempt's labels.
  struct attempt_cells {
    std::string backend, outcome;
    std::uint64_t* attempts = nullptr;
    histogram* first_byte = nullptr;
  };
  struct shard_data {
    mutable std::mutex mutex;
    finished_cells last_finished;
    attempt_cells last_attempt;
    labelled<3, std::uint64_t> requests;  // route, backend, class
    std::map<std::string, histogram, std::less<>> duration;  // by route
    labelled<2, std::uint64_t> attempts;  // backend, outcome
    std::map<std::string, histogram, std::less<>> first_byte;  // by backend
    labelled<3, usage_cell> usage;        // key, route, backend
    std::map<std::string, histogram, std::less<>> ttft;      // by route
    std::map<std::string, histogram, std::less<>> tpot;      // by route
    std::map<std::string, histogram, std::less<>> upstream;  // by backend
    histogram overhead;
    std::array<histogram, 10> queue_wait;                 // by priority
    std::array<std::array<std::uint64_t, 3>, 10> shed{};  // by priority, shed_reason
  };
  std::vector<std::unique_ptr<shard_data>> shards_;
};

/// A label value with \, " and newline escaped as the exposition format requires.
std::string escape_label(const std::string& value);

}  // namespace tollgate::gateway
