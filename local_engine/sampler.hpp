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

class sampler {
 public:
  explicit sampler(const sampling& s);
  /// The chosen id. Greedy (temperature <= 0 or top_k == 1) takes the first largest logit.
  int32_t pick(std::span<const float> logits);

 private:
  sampling s_;
  rng rng_;
  std::vector<int32_t> order_;
  std::vector<double> probs_;
};

}  // namespace tollgate::engine
