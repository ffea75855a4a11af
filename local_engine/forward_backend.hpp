// The seam between a sequence and the arithmetic: a forward backend runs tokens through the model
// and keeps each sequence's KV cache. The CPU reference path is one backend; a CUDA forward with a
// paged cache is meant to be another behind the same interface.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "local_engine/model_config.hpp"
#include "local_engine/tokenizer.hpp"

namespace tollgate::engine {

/// One sequence's cached keys and values. Owned by the sequence; used by one thread at a time.
class kv_cache {
 public:
  virtual ~kv_cache() = default;
  /// Positions held so far.
  virtual size_t length() const = 0;
};

class forward_backend {
 public:
  virtual ~forward_backend() = default;
  virtual std::unique_ptr<kv_cache> new_cache() const = 0;
  /// Appends `tokens` at positions cache.length()... and writes logits: for every new position when
  /// all_positions ([tokens.size() * vocab]), else for the last one only ([vocab]). Safe to call from
  /// several threads at once with different caches.
  virtual void forward(kv_cache& cache, std::span<const int32_t> tokens, bool all_positions,
                       std::vector<float>& logits) const = 0;
  virtual std::string device() const = 0;
};

/// Builds the CPU backend from a checkpoint folder (weights converted to fp32, fp32 views kept mapped).
std::unique_ptr<forward_backend> make_cpu_backend(const model_config& config, const std::string& checkpoint_dir);

}  // namespace tollgate::engine

namespace tollgate::engine {

/// The loaded checkpoint behind the public `model` handle.
class model {
 public:
  model_config config;
  std::shared_ptr<const tokenizer> tok;
  std::string name;
  std::string dir;
  std::unique_ptr<forward_backend> backend;
};

}  // namespace tollgate::engine
