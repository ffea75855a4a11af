// `tollgate-engine bench`: prefill and batched decode speed of any backend (cpu or cuda:N), timed
// at the forward seam; medians of several runs, printed as JSON lines.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "local_engine/engine.hpp"

namespace tollgate::engine {

struct bench_options {
  std::string checkpoint;      ///< when set: prefill and decode tokens/s of this model
  bool v2_lite_layer = false;  ///< one MoE layer at DeepSeek-V2-Lite's shapes with random weights (CPU)
  backend_options backend;     ///< device, dtype, kv_cache_memory
  int prompt_len = 64;         ///< tokens of the timed prefill (the layer bench uses context)
  int decode_tokens = 32;      ///< timed decode steps per batch size
  int context = 256;           ///< positions each sequence holds before the timed decode steps
  std::vector<int> batches = {1};  ///< decode batch sizes: one JSON line each
  int prefill_chunk = 2048;    ///< chunk size that fills the decode contexts
  int runs = 5;                ///< prefill runs (the median is reported)
  /// With checkpoint, > 0: instead of the forward timings, the time to first token through the
  /// scheduler of prompts made of one shared prefix of this many tokens and prompt_len fresh ones,
  /// with prefix caching off and on (the prefix cached by a first request); a JSON line each.
  int shared_prefix = 0;
};

void run_bench(const bench_options& o, std::ostream& out);

/// Teacher-forced logits of `tokens` through the backend's own paths: positions [0, prefill) in one
/// prefill chunk, then every later position as a decode step of one token (the cached-attention
/// path). Returns [tokens.size() * vocab_size] floats. Used to compare a dtype or device with a
/// reference over many positions (`tollgate-engine logits`).
std::vector<float> teacher_forced_logits(const std::string& checkpoint, const backend_options& backend,
                                         const std::vector<int32_t>& tokens, size_t prefill);

}  // namespace tollgate::engine
