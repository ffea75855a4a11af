// Token usage as upstreams report it, and what it costs at a target's prices.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "config/config.hpp"

namespace tollgate::protocol {

struct usage {
  std::int64_t prompt = 0;      ///< all prompt tokens, cached ones included
  std::int64_t cached = 0;      ///< prompt tokens served from the provider's cache
  std::int64_t completion = 0;  ///< all output tokens, reasoning ones included
  std::int64_t reasoning = 0;   ///< output tokens spent on reasoning
  std::int64_t cache_write = 0; ///< prompt tokens written to the provider's cache (Anthropic's cache_creation_input_tokens)
};

/// Reads a "usage" object out of a response or chunk JSON text. nullopt when there is none (or it
/// is null). Understands OpenAI's prompt_tokens_details.cached_tokens and
/// completion_tokens_details.reasoning_tokens, DeepSeek's prompt_cache_hit_tokens, and
/// cache_creation_input_tokens (which the Anthropic adapter keeps in the chat usage it builds).
/// no_choices, when given, is set to whether the object has an empty "choices" array (the
/// usage-only chunk that ends a stream asked for with include_usage).
/// A count that is present but not an integer in [0, max_reported_tokens] (negative, 1e308,
/// INT64_MAX, "7", 12.5) makes the whole usage untrustworthy: nullopt, and *refused (when given)
/// is set, so that the answer is counted with the tokenizer instead.
std::optional<usage> usage_from_json(std::string_view json_text, bool* no_choices = nullptr, bool* refused = nullptr);

/// The most tokens one count of one answer may report. Far above any context window, and low
/// enough that sums over many requests never overflow.
inline constexpr std::int64_t max_reported_tokens = 1'000'000'000;

/// Money for u at price (per million tokens): prompt read from the cache at cached_input, prompt
/// written to it at cache_write, the rest of the prompt at input, completion at output.
double cost_of(const usage& u, const config::price_config& price);

}  // namespace tollgate::protocol
