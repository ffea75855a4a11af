// Picks the next token from logits: greedy, or temperature / top-k / top-p sampling with a
// seeded generator whose output is the same on every platform.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "local_engine/engine.hpp"

namespace tollgate::engine {

/// xoshiro256** seeded through splitmix64: fully specified, so a seed means the same draws everywhere.
class rng {
 public:
  explicit rng(uint64_t seed);
  uint64_t next();
  double uniform();  ///< in [0, 1), 53 random bits
  double normal();   ///< standard normal (Box-Muller)

 private:
  uint64_t s_[4];
};

/// Throws std::invalid_argument for temperature < 0 or NaN, top_p outside (0, 1], top_k < 0.
void check_sampling(const sampling& s);

/// The seed of one draw's generator: a function of (seed, draw) only, so a sequence's tokens do
/// not depend on which other sequences share its batch or on how its prompt was chunked.
uint64_t draw_seed(uint64_t seed, uint64_t draw);

/// Picks tokens for one sequence. Not thread-safe; cheap to build.
class sampler {
 public:
  explicit sampler(const sampling& s);
  /// The chosen id for the sequence's `draw`-th generated token. Greedy (temperature <= 0 or
  /// top_k == 1) takes the first largest logit; otherwise the random number comes from a generator
  /// seeded with draw_seed(seed, draw).
  int32_t pick(std::span<const float> logits, uint64_t draw);
  /// The next draw: pick(logits, n) with n counting the calls so far.
  int32_t pick(std::span<const float> logits) { return pick(logits, next_draw_++); }

 private:
  sampling s_;
  uint64_t next_draw_ = 0;
  std::vector<int32_t> order_;
  std::vector<double> probs_;
};

}  // namespace tollgate::engine
