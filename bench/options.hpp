// The command line of `tollgate bench`, parsed into plain values and checked once.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bench/dist.hpp"

namespace tollgate::bench {

enum class api_kind { openai, anthropic };

struct bench_options {
  std::string base_url;  ///< e.g. http://127.0.0.1:8080/v1 (requests go to base_url + /chat/completions)
  std::string api_key;
  api_kind api = api_kind::openai;
  std::vector<std::string> models;
  /// Closed loop: requests in flight at once, one run per level. Empty when rates is set.
  std::vector<unsigned> concurrency;
  /// Open loop: Poisson arrivals per second, one run per rate. Empty for a closed loop.
  std::vector<double> rates;
  /// With rates: the most requests in flight at once (0: no cap); arrivals past it wait.
  unsigned max_in_flight = 0;
  std::optional<unsigned long> requests;  ///< per run; set when duration is not
  std::optional<double> duration_s;       ///< per run
  dist prompt_tokens = *dist::parse("256");
  std::optional<dist> max_tokens;  ///< unset: 128, or a dataset's own answer lengths
  bool stream = false;
  bool ignore_eos = false;  ///< adds "ignore_eos": true (vLLM, SGLang) so answers run to max_tokens
  std::string dataset;      ///< a ShareGPT-style JSON file; empty: synthetic prompts
  std::string tokenizer;    ///< tokenizer.json; empty: the one the gateway meters with, if found
  unsigned long seed = 1;
  double timeout_s = 600;   ///< per request
  std::optional<double> price_in;   ///< per million tokens
  std::optional<double> price_out;
  std::string currency;             ///< of prices; empty: the config's, else CNY
  std::string config;               ///< a gateway config whose routes give prices
  std::string json_path, csv_path, html_path;
  bool quiet = false;  ///< no progress line
};

struct parse_result {
  std::optional<bench_options> options;  ///< set when the command line is valid and not --help
  bool help = false;
  std::string error;  ///< what is wrong, when options and help are both unset
};

parse_result parse_options(const std::vector<std::string_view>& args);

extern const std::string_view bench_help;

}  // namespace tollgate::bench
