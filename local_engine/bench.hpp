// `tollgate-engine bench`: CPU speed baselines, medians of several runs, printed as JSON lines.
#pragma once

#include <ostream>
#include <string>

namespace tollgate::engine {

struct bench_options {
  std::string checkpoint;      ///< when set: prefill and decode tokens/s of this model
  bool v2_lite_layer = false;  ///< one MoE layer at DeepSeek-V2-Lite's shapes with random weights
  int prompt_len = 64;         ///< tokens prefilled per run
  int decode_tokens = 32;      ///< tokens decoded per run
  int context = 256;           ///< layer bench: cached positions before the timed decode step
  int runs = 5;
};

void run_bench(const bench_options& o, std::ostream& out);

}  // namespace tollgate::engine
