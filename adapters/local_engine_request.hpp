// A request for the local engine, read and checked on the worker's thread: what an OpenAI chat
// completions or completions body asks the engine for, or the OpenAI-shaped error refusing it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "adapters/local_engine_backend.hpp"
#include "protocol/errors.hpp"

namespace tollgate::adapters {

/// What a request asks the engine for, read and checked on the worker's thread.
struct job_spec {
  bool chat = true;
  bool stream = false;
  bool include_usage = false;
  std::vector<std::int32_t> prompt;
  std::size_t max_tokens = 0;
  std::vector<std::string> stop;
  bool ignore_eos = false;  ///< vLLM's extension: run to max_tokens (benchmarks, tests)
  engine_sampling sampling;
  std::string model;  ///< as the request named it (echoed in answers)
};

/// A request read: its spec, or why it is refused.
struct parse_result {
  std::optional<job_spec> spec;
  protocol::api_error error;  ///< when spec is empty
};

/// Reads req (path /chat/completions or /completions, body joined) for engine: the prompt through
/// its chat template and tokenizer, sampling, stops and limits. What the engine cannot honour is
/// refused, never ignored. Throws std::invalid_argument when the template or the tokenizer
/// refuses the input.
parse_result parse_job(const upstream_request& req, const engine_port& engine);

}  // namespace tollgate::adapters
