// Sends a run's requests and times each one: closed loop (a fixed number in flight) or open loop
// (Poisson arrivals), on one thread over the gateway's own upstream client.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench/options.hpp"
#include "bench/workload.hpp"

namespace tollgate::bench {

/// What one request did. Times are seconds from the request's start.
struct sample {
  double start = 0;        ///< seconds from the run's start
  bool ok = false;
  std::string error;       ///< the kind, when not ok: "http 429", "http 500", "reset", "timeout", ...
  int status = 0;          ///< 0 when no response head came
  double ttft = -1;        ///< first output token (streams only); -1 when none came
  double last_token = -1;  ///< last output token (streams only)
  double e2e = 0;          ///< until the response ended or failed
  std::int64_t prompt_tokens = 0;  ///< as the server reported, else the prompt's own count
  std::int64_t output_tokens = 0;  ///< as the server reported, else the token events counted
  std::int64_t token_events = 0;   ///< stream events that carried output text
};

struct run_result {
  std::string model;
  bool open_loop = false;
  double level = 0;  ///< concurrency, or arrivals per second
  double wall_s = 0; ///< from the first request's start to the last one's end
  double cpu_s = 0;  ///< CPU time (user and system) this process spent on the run: its own cost
  std::vector<sample> samples;
};

/// One progress report, a few times a second while a run goes on.
struct progress {
  const std::string& model;
  double level;
  bool open_loop;
  std::size_t done, errors, in_flight;
  std::int64_t output_tokens;
  double elapsed_s;
};

class runner {
 public:
  /// prompts must not be empty; they are cycled. Throws std::runtime_error for an unusable
  /// base URL.
  /// tok (may be null, then outlives the runner) counts the text of answers that report no usage.
  runner(const bench_options& o, std::vector<prompt> prompts, const tokenizer::tokenizer* tok);
  ~runner();
  runner(const runner&) = delete;
  runner& operator=(const runner&) = delete;

  run_result run(const std::string& model, double level, const std::function<void(const progress&)>& on_progress);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace tollgate::bench
