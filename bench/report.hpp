// What a run measured, summed up: the figures of the table, JSON, CSV and HTML reports.
#pragma once

#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "bench/options.hpp"
#include "bench/runner.hpp"

namespace tollgate::bench {

/// Percentiles of one measure, in milliseconds; count 0 when nothing was measured.
struct spread {
  std::size_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

/// The value below which a fraction q of the sorted values lies (linear interpolation between
/// closest ranks). Precondition: sorted is sorted and not empty.
double percentile(const std::vector<double>& sorted, double q);
spread spread_of(std::vector<double> values_ms);

struct price {
  double input = 0, output = 0;  ///< per million tokens
  std::string currency;
  std::string source;  ///< "--price-in/--price-out", "config FILE", "catalogue (as of DATE)"
};

struct summary {
  std::string model;
  bool open_loop = false;
  double level = 0;
  std::size_t requests = 0, succeeded = 0;
  std::map<std::string, std::size_t> errors;  ///< by kind
  double duration_s = 0;
  double client_cpu_s = 0;         ///< what the run cost tollgate bench itself
  double requests_per_s = 0;       ///< successful requests
  double output_tokens_per_s = 0;  ///< of successful requests
  std::int64_t prompt_tokens = 0, output_tokens = 0;  ///< of successful requests
  spread ttft, tpot, e2e;  ///< ms; ttft and tpot only for streams
  std::optional<price> unit_price;
  double cost = 0;  ///< of the successful requests, when unit_price is set
  double success_rate() const { return requests == 0 ? 0 : static_cast<double>(succeeded) / requests; }
};

summary summarize(const run_result& r, const std::optional<price>& p);

/// The table printed at the end.
void write_table(std::ostream& out, const std::vector<summary>& rows, bool stream);
/// One JSON document: the options and every run.
void write_json(std::ostream& out, const bench_options& o, const std::vector<summary>& rows);
/// One line per run, with a header line.
void write_csv(std::ostream& out, const std::vector<summary>& rows);
/// A self-contained page (inline SVG, no script, no network): the table, throughput and latency
/// against load for each model, and each run's TTFT and end-to-end latency distributions.
void write_html(std::ostream& out, const bench_options& o, const std::vector<summary>& rows,
                const std::vector<run_result>& runs);

}  // namespace tollgate::bench
