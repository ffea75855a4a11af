// The bundled inference engine as a backend (`kind: local_engine`): requests queue for an engine
// thread of the backend's own, which decodes up to max_batch sequences in turn, one token each
// per round, and hands OpenAI-shaped events (SSE chunks or one JSON answer, with usage) back to
// the worker that asked. A call that is destroyed or cancelled drops its sequence at the next
// round. The HTTP layer relays these events exactly as it relays an upstream's.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
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

/// What serving needs from a loaded model. Thread-safe; a sequence is used by one thread.
class engine_port {
 public:
  class sequence {
   public:
    virtual ~sequence() = default;
    /// The first call reads the prompt; each call returns the next sampled token id.
    virtual std::int32_t step() = 0;
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
  virtual std::unique_ptr<sequence> start(std::vector<std::int32_t> prompt, const engine_sampling& s) const = 0;
};

/// Loads the checkpoint of a backend config (checkpoint, device) into an engine_port. Throws
/// std::runtime_error with the reason when it cannot.
std::shared_ptr<const engine_port> load_engine(const config::backend_config& cfg);

class local_engine_backend final : public backend {
 public:
  /// engine: null when loading failed; every request then gets 503 with load_error.
  local_engine_backend(config::backend_config cfg, std::shared_ptr<const engine_port> engine, std::string load_error = {});
  ~local_engine_backend() override;  ///< ends the engine thread; queued requests fail
  local_engine_backend(const local_engine_backend&) = delete;
  local_engine_backend& operator=(const local_engine_backend&) = delete;
  const std::string& name() const override { return cfg_.name; }
  std::unique_ptr<call> start(upstream_request request, io_refs refs) const override;
  bool serving() const override { return engine_ != nullptr; }
  std::optional<engine_stats> stats() const override;

  struct scheduler;

 private:
  config::backend_config cfg_;
  std::shared_ptr<const engine_port> engine_;
  std::string load_error_;
  std::unique_ptr<scheduler> scheduler_;
};

}  // namespace tollgate::adapters
