// Picks each row's next token on the GPU: greedy (the first largest logit), or temperature with
// top-k and top-p cut-offs and a draw that is a function of (seed, draw index) only. One block a
// row; a drawn row keeps its first 48K values in shared memory for the cut-offs' passes, which find
// their thresholds two bits a pass.
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

/// tokens[r] for each of n rows of logits [n, vocab].
void sample_rows(const float* logits, int vocab, const sample_params* params, int n, int32_t* tokens, cudaStream_t s);

}  // namespace tollgate::engine::cuda
