// The seam between the scheduler and the arithmetic: a forward backend owns the weights and a paged
// latent KV pool, and runs ONE forward over a batch of sequences (decode tokens and prefill chunks
// together). The CPU reference path and the CUDA path implement the same interface, so the
// continuous-batching scheduler above it is one piece of code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "local_engine/engine.hpp"
#include "local_engine/model_config.hpp"

namespace tollgate::engine {

// backend_options (how a backend is built) is declared in engine.hpp, next to load_model().

/// The paged latent KV pool a backend owns: `blocks` blocks, each holding `block_size` positions of
/// (kv_lora_rank + qk_rope_head_dim) values in every layer.
struct kv_pool_shape {
  int block_size = 0;
  std::size_t blocks = 0;
  std::size_t bytes_per_block = 0;  ///< all layers together
};

/// One sequence's part of a batched forward.
struct batch_item {
  std::span<const int32_t> tokens;  ///< new tokens, at positions [start, start + tokens.size())
  std::size_t start = 0;            ///< positions of this sequence already in the cache
  /// Block table: blocks[i] holds positions [i * block_size, (i + 1) * block_size). Covers at
  /// least start + tokens.size() positions. No two items of one batch share a block they write.
  std::span<const int32_t> blocks;
  /// Pick a token after the last new position with these settings; null picks none (a prefill
  /// chunk that is not the prompt's last).
  const sampling* sample = nullptr;
  /// Which draw of the sequence this is (0 for the first generated token). The random stream is a
  /// function of (seed, draw) only, so the same seed gives the same tokens in any batch.
  uint64_t draw = 0;
  bool logits = false;         ///< copy logits out: the last new position's, or every new one's with all_positions
  bool all_positions = false;  ///< with logits: every new position (tests and forward_logits())
};

struct batch_result {
  std::vector<int32_t> tokens;  ///< one per item; -1 where the item had no sample
  std::vector<float> logits;    ///< the items that asked, in item order, vocab_size values a position
};

/// How the scheduler (local_engine/scheduler.hpp) drives a backend: it reads kv_pool() once, owns
/// the block allocator over it, and calls forward() from its one engine thread, once per step, with
/// one item per scheduled sequence: a decode item (one token, `sample` set, `draw` = tokens the
/// sequence generated so far), a prefill chunk (up to max_batch_tokens tokens; `sample` set only on
/// the chunk that ends the prompt), or forward_logits()'s items (`logits` with `all_positions`).
/// Block tables may cover more positions than the item needs. The backend keeps no state per
/// sequence beyond what it writes into the pool: a block that one sequence gave back (it ended,
/// was cancelled or preempted) may belong to another in the next step.
class forward_backend {
 public:
  virtual ~forward_backend() = default;
  virtual kv_pool_shape kv_pool() const = 0;
  /// Runs one forward over every item and writes `out`. Items are distinct sequences. Throws
  /// std::invalid_argument for an item that breaks the rules above (token outside the vocabulary,
  /// a block table too short, a block id outside the pool). Called by one thread at a time.
  virtual void forward(std::span<const batch_item> batch, batch_result& out) = 0;
  virtual std::string device() const = 0;
  /// One line for the log at start: device, dtype, load time, weight and KV pool memory.
  virtual std::string describe() const = 0;
};

/// Builds the backend that options.device names from a checkpoint folder. Throws
/// std::runtime_error naming what is missing: an unknown device, a build without CUDA, no such GPU.
std::unique_ptr<forward_backend> make_backend(const model_config& config, const std::string& checkpoint_dir,
                                              const backend_options& options);

/// The CPU reference backend (weights converted to fp32; fp32 views kept mapped).
std::unique_ptr<forward_backend> make_cpu_backend(const model_config& config, const std::string& checkpoint_dir,
                                                  const backend_options& options);

/// The CUDA backend; defined only in builds with TOLLGATE_CUDA (make_backend refuses cuda:N otherwise).
std::unique_ptr<forward_backend> make_cuda_backend(const model_config& config, const std::string& checkpoint_dir,
                                                   const backend_options& options);

/// Whether this build has the CUDA backend.
bool built_with_cuda();

}  // namespace tollgate::engine

namespace tollgate::engine {

class scheduler;

/// The loaded checkpoint behind the public `model` handle.
class model {
 public:
  model();
  ~model();  ///< stops the engine thread (its sequences end as failed) before the backend goes
  model_config config;
  std::shared_ptr<const tokenizer::tokenizer> tok;
  std::string name;
  std::string dir;
  std::unique_ptr<forward_backend> backend;
  std::unique_ptr<scheduler> sched;  ///< declared after backend: it stops first
};

/// A model over a backend built elsewhere (a fake backend in tests, a bench): starts its scheduler.
std::shared_ptr<const model> make_model(model_config config, std::unique_ptr<forward_backend> backend,
                                        std::shared_ptr<const tokenizer::tokenizer> tok = nullptr, const scheduler_options& sched = {},
                                        std::string name = "model");

}  // namespace tollgate::engine
