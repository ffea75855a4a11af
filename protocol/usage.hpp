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
/// A usage without prompt_tokens but with input_tokens is an Anthropic message's (input_tokens
/// leaves out cache_read_input_tokens and cache_creation_input_tokens: the prompt is their sum)
/// or a Responses API response's (input_tokens_details.cached_tokens,
/// output_tokens_details.reasoning_tokens).
/// no_choices, when given, is set to whether the object has an empty "choices" array (the
/// usage-only chunk that ends a stream asked for with include_usage).
/// A count that is present but not an integer in [0, max_reported_tokens] (negative, 1e308,
/// INT64_MAX, "7", 12.5) makes the whole usage untrustworthy: nullopt, and *refused (when given)
/// is set, so that the answer is counted with the tokenizer instead.
/// look_first: search for the "usage" key before scanning, which spares the scan of a text that
/// lacks it (most stream events); a whole answer, which carries it as a rule, is scanned at once.
std::optional<usage> usage_from_json(std::string_view json_text, bool* no_choices = nullptr, bool* refused = nullptr,
                                     bool look_first = true);

/// The usage an Anthropic Messages stream reports: message_start's message.usage, then
/// message_delta's usage, whose counts replace those it names (output_tokens, and in newer API
/// versions the input and cache counts too). Feed each event's data in order.
class messages_stream_usage {
 public:
  /// Notes the counts in one event's data (other events are ignored).
  void take(std::string_view data);
  /// The usage so far: nullopt before any, or once a count was not to be trusted.
  std::optional<usage> get() const;

 private:
  std::int64_t input_ = 0, cache_read_ = 0, cache_write_ = 0, output_ = 0;
  bool seen_ = false, refused_ = false;
};

/// The usage of a Responses API stream event: response.completed, response.incomplete and
/// response.failed carry the whole response and its usage. *refused as for usage_from_json.
std::optional<usage> responses_event_usage(std::string_view data, bool* refused = nullptr);

/// The most tokens one count of one answer may report. Far above any context window, and low
/// enough that sums over many requests never overflow.
inline constexpr std::int64_t max_reported_tokens = 1'000'000'000;

/// Money for u at price (per million tokens): prompt read from the cache at cached_input, prompt
/// written to it at cache_write, the rest of the prompt at input, completion at output.
double cost_of(const usage& u, const config::price_config& price);

}  // namespace tollgate::protocol
