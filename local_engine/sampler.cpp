#include "local_engine/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace tollgate::engine {

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

rng::rng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

double rng::normal() {
  double u1 = uniform();
  if (u1 < 1e-300) u1 = 1e-300;
  const double u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * 3.14159265358979323846 * u2);
}

void check_sampling(const sampling& s) {
  if (!(s.temperature >= 0) || !std::isfinite(s.temperature))
    throw std::invalid_argument("temperature must be a finite number >= 0, got " + std::to_string(s.temperature));
  if (!(s.top_p > 0 && s.top_p <= 1)) throw std::invalid_argument("top_p must be in (0, 1], got " + std::to_string(s.top_p));
  if (s.top_k < 0) throw std::invalid_argument("top_k must be >= 0, got " + std::to_string(s.top_k));
}

uint64_t draw_seed(uint64_t seed, uint64_t draw) {
  uint64_t x = seed;
  const uint64_t a = splitmix64(x);
  x = a ^ (draw * 0xd1b54a32d192ed03ull);
  return splitmix64(x);
}

sampler::sampler(const sampling& s) : s_(s) { check_sampling(s); }

int32_t sampler::pick(std::span<const float> logits, uint64_t draw) {
  const size_t V = logits.size();
  if (V == 0) throw std::invalid_argument("sampler: no logits");
  if (s_.temperature <= 0 || s_.top_k == 1) {
    size_t best = 0;
    for (size_t i = 1; i < V; ++i)
      if (logits[i] > logits[best]) best = i;
    return static_cast<int32_t>(best);
  }
  // Candidates in descending logit order (ties by id), cut to top_k.
  order_.resize(V);
  std::iota(order_.begin(), order_.end(), 0);
  const size_t k = s_.top_k > 0 ? std::min(V, static_cast<size_t>(s_.top_k)) : V;
  auto greater = [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] || (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  };
  if (k < V) {
    std::partial_sort(order_.begin(), order_.begin() + static_cast<ptrdiff_t>(k), order_.end(), greater);
    order_.resize(k);
  } else {
    std::sort(order_.begin(), order_.end(), greater);
  }
  const double inv_t = 1.0 / static_cast<double>(s_.temperature);
  const double mx = static_cast<double>(logits[static_cast<size_t>(order_[0])]) * inv_t;
  probs_.resize(order_.size());
  double sum = 0;
  for (size_t i = 0; i < order_.size(); ++i) {
    probs_[i] = std::exp(static_cast<double>(logits[static_cast<size_t>(order_[i])]) * inv_t - mx);
    sum += probs_[i];
  }
  // Nucleus: the shortest prefix whose mass reaches top_p (always at least one token).
  size_t n = order_.size();
  if (s_.top_p < 1) {
    double acc = 0;
    const double target = static_cast<double>(s_.top_p) * sum;
    for (size_t i = 0; i < order_.size(); ++i) {
      acc += probs_[i];
      if (acc >= target) {
        n = i + 1;
        break;
      }
    }
    sum = 0;
    for (size_t i = 0; i < n; ++i) sum += probs_[i];
  }
  rng g(draw_seed(s_.seed, draw));
  const double r = g.uniform() * sum;
  double acc = 0;
  for (size_t i = 0; i < n; ++i) {
    acc += probs_[i];
    if (r < acc) return order_[i];
  }
  return order_[n - 1];
}

}  // namespace tollgate::engine
