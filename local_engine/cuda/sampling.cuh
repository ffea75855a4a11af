// Picks each row's next token on the GPU: greedy (the first largest logit), or temperature with
// top-k and top-p cut-offs and a draw that is a function of (seed, draw index) only. One block a
// drawn row, which keeps its first 48K values in shared memory for the cut-offs' passes (they find
// their thresholds two bits a pass); a greedy row of a small batch is split over several blocks,
// whose first largest values the last of them to finish compares.
#pragma once

#include <cstdint>

#include "local_engine/cuda/common.cuh"

namespace tollgate::engine::cuda {

struct sample_params {
  float temperature = 0;  ///< <= 0: greedy
  float top_p = 1;
  int32_t top_k = 0;  ///< 0: all; 1: greedy
  int32_t pad = 0;
  uint64_t seed = 0;
  uint64_t draw = 0;
};

/// Device scratch that lets sample_rows split a greedy row over several blocks: each part's first
/// largest logit and an arrival count a row (left at 0 after each launch). One launch at a time.
struct sample_scratch {
  static constexpr int rows = 64;   ///< launches of more rows take one block a row
  static constexpr int parts = 32;  ///< the most blocks a row
  struct view {
    unsigned* counters = nullptr;
    float* best = nullptr;
    int32_t* at = nullptr;
  };
  sample_scratch();
  ~sample_scratch();
  sample_scratch(const sample_scratch&) = delete;
  sample_scratch& operator=(const sample_scratch&) = delete;
  view v;
};

/// The blocks a greedy row of `vocab` logits takes when n rows are sampled on a GPU of `sms`
/// multiprocessors with a scratch: about one multiprocessor's share each, 2,048 values at least.
int sample_parts(int n, int vocab, int sms);

/// tokens[r] for each of n rows of logits [n, vocab]. With `split`, greedy rows of launches of up
/// to sample_scratch::rows rows are split over sample_parts blocks (the same token).
void sample_rows(const float* logits, int vocab, const sample_params* params, int n, int32_t* tokens, cudaStream_t s,
                 const sample_scratch* split = nullptr);

}  // namespace tollgate::engine::cuda
