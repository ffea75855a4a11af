// The bundled inference engine as a backend (`kind: local_engine`): each request becomes a sequence
// submitted to the model's continuous-batching scheduler (one engine thread per model, one forward
// per step over every running sequence). Its tokens come back through callbacks on the engine
// thread, which turn them into OpenAI-shaped events (SSE chunks or one JSON answer, with usage)
// for the worker that asked. A call that is destroyed or cancelled cancels its sequence, whose KV
// blocks are freed at the engine's next step. The HTTP layer relays these events exactly as it
// relays an upstream's.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "adapters/backend.hpp"
#include "config/config.hpp"

namespace tollgate::adapters {

struct engine_sampling {
  float temperature = 1;
  float top_p = 1;
  int top_k = 0;
  std::uint64_t seed = 0;
};

/// Admission control of one request in the engine's queue (engine::queue_options).
struct engine_admission {
  int priority = 1;  ///< 0 low .. 9; 1 normal
  std::size_t max_queue = std::numeric_limits<std::size_t>::max();  ///< requests that may wait beyond max_batch
  std::chrono::milliseconds queue_timeout{0};  ///< the longest wait for a place in the batch; 0: none
};

/// engine_port::submit() refused a request at once: its queue is full.
struct engine_queue_full : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// What serving needs from a loaded model. Thread-safe.
class engine_port {
 public:
  /// A submitted sequence.
  class stream {
   public:
    virtual ~stream() = default;
    /// Ends the sequence at the engine's next step (on_end follows). Thread-safe; harmless after
    /// the end.
    virtual void cancel() = 0;
  };
  enum class end_reason {
    done,        ///< max_tokens, the context's end, a false from on_token, cancel()
    failed,      ///< the engine failed it
    overloaded,  ///< never started: displaced from a full queue by a higher priority, or past queue_timeout
  };
  /// Called on the engine thread; keep them short.
  struct callbacks {
    /// Each token as it is sampled; false ends the sequence (EOS, a stop string).
    std::function<bool(std::int32_t token)> on_token;
    /// Exactly once, last: with why it ended and, unless done, a message.
    std::function<void(end_reason why, const std::string& message)> on_end;
  };

  virtual ~engine_port() = default;
  virtual std::string model_name() const = 0;
  virtual bool has_tokenizer() const = 0;
  virtual std::vector<std::int32_t> encode(std::string_view text) const = 0;
  /// The chat template with the assistant's cue at the end. messages: (role, content).
  virtual std::vector<std::int32_t> chat_prompt(const std::vector<std::pair<std::string, std::string>>& messages) const = 0;
  /// Bytes of one token; special tokens give nothing.
  virtual std::string token_bytes(std::int32_t id) const = 0;
  virtual std::optional<std::int32_t> eos() const = 0;
  virtual std::size_t max_positions() const = 0;
  virtual std::size_t vocab_size() const = 0;
  /// Queues a sequence of at most max_tokens tokens, with admission control as
  /// engine::queue_options says. Throws std::invalid_argument for a prompt or sampling the engine
  /// refuses, and engine_queue_full when the queue is full of requests of the same priority or
  /// higher (nothing is called back then).
  virtual std::shared_ptr<stream> submit(std::vector<std::int32_t> prompt, const engine_sampling& s, std::size_t max_tokens,
                                         callbacks cb, const engine_admission& admission) const = 0;
  /// The scheduler's state: running, queued, batch, tokens/s, KV blocks, preemptions.
  virtual engine_stats stats() const = 0;
};

/// Loads the checkpoint of a local_engine backend config (checkpoint, device, dtype, kv_cache_memory, max_batch,
/// max_batch_tokens) into an engine_port and logs the backend's description. Throws
/// std::runtime_error with the reason when it cannot.
std::shared_ptr<const engine_port> load_engine(const config::backend_config& cfg);

class local_engine_backend final : public backend {
 public:
  /// Precondition: cfg is of kind local_engine. engine: null when loading failed; every request
  /// then gets 503 with load_error.
  local_engine_backend(config::backend_config cfg, std::shared_ptr<const engine_port> engine, std::string load_error = {});
  ~local_engine_backend() override;  ///< sequences in flight run on (the model outlives it while they do)
  local_engine_backend(const local_engine_backend&) = delete;
  local_engine_backend& operator=(const local_engine_backend&) = delete;
  const std::string& name() const override { return cfg_.name; }
  std::unique_ptr<call> start(upstream_request request, io_refs refs) const override;
  bool serving() const override { return engine_ != nullptr; }
  std::optional<engine_stats> stats() const override;

  struct counters;

 private:
  config::backend_config cfg_;
  std::shared_ptr<const engine_port> engine_;
  std::string load_error_;
  std::shared_ptr<counters> counters_;  ///< shared with the jobs' callbacks
};

}  // namespace tollgate::adapters
