// The requests of a run: prompts from a ShareGPT-style dataset or synthetic ones of a token-length
// distribution, each with its max_tokens, built once before any request is sent.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench/options.hpp"

namespace tollgate::tokenizer {
class tokenizer;
}

namespace tollgate::bench {

struct prompt {
  std::string text;
  std::int64_t tokens = 0;      ///< counted with the tokenizer (words when there is none)
  std::int64_t max_tokens = 1;
};

/// Prompts for up to `count` requests (cycled when a run sends more). tok may be null: synthetic
/// prompts are then made of one-token words and their counts are estimates.
/// Throws std::runtime_error naming the file and the problem when a dataset cannot be used.
std::vector<prompt> make_prompts(const bench_options& o, const tokenizer::tokenizer* tok, std::size_t count);

/// A synthetic prompt of about `tokens` tokens (exactly, by tok's count, when tok is given).
std::string synthetic_text(std::int64_t tokens, std::uint64_t salt, const tokenizer::tokenizer* tok);

/// The JSON body of one request for `model` (stream_options.include_usage asked when streaming).
std::string request_body(const bench_options& o, const std::string& model, const prompt& p);

}  // namespace tollgate::bench
