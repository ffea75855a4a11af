// Backends that speak Anthropic's Messages API (kind anthropic): the chat completions request a
// backend is given becomes a Messages request, and the upstream's message, events and errors
// become a chat completion, chat chunks and OpenAI-shaped errors.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/wire.hpp"

namespace tollgate::protocol {

/// Messages requires max_tokens; a chat request without one gets this.
inline constexpr std::int64_t default_anthropic_max_tokens = 4096;

/// Extended thinking and chat's reasoning_effort, one for the other: a Messages client's
/// thinking budget names an effort by range (under 4,096 tokens low, under 16,384 medium, else
/// high), and an Anthropic backend is given the effort's budget (2,048, 8,192, 16,384, kept under
/// max_tokens). Anthropic takes budgets of 1,024 tokens and more.
inline constexpr std::int64_t min_thinking_budget = 1024;
std::string effort_for_thinking_budget(std::int64_t budget_tokens);
std::int64_t thinking_budget_for_effort(const std::string& effort);  ///< 0 for "minimal"/"none"; -1 unknown

/// A chat completions body as a Messages body. System and developer messages become `system`,
/// tool messages tool_result blocks, tool calls tool_use blocks; tools, tool_choice,
/// parallel_tool_calls, stop, max_tokens (or max_completion_tokens), temperature, top_p, top_k,
/// user and stream are carried over, reasoning_effort as thinking (above). Fields without an
/// equivalent (n > 1, logprobs, penalties,
/// response_format other than text, seed...) are refused. include_usage is set to whether a
/// stream asked for the usage chunk.
translated chat_request_to_messages(std::string_view chat_body, bool* include_usage);

/// An Anthropic message as a chat.completion. usage.prompt_tokens counts every input token
/// (cache reads and writes included); prompt_tokens_details.cached_tokens the cache reads; the
/// cache writes are kept as usage.cache_creation_input_tokens.
translated message_to_chat_answer(std::string_view body);

/// An Anthropic error answer in OpenAI's shape. 529 (overloaded) becomes 503 with code
/// "overloaded", which the gateway retries and fails over like any 503; "prompt is too long"
/// gets code context_length_exceeded, so context_fallbacks apply.
answer messages_error_to_chat(int status, std::string_view body);

/// Anthropic's stream events as chat completion chunks, a usage chunk when asked for, then
/// "data: [DONE]". Feed whole events in order; not thread-safe.
class messages_stream_to_chat {
 public:
  explicit messages_stream_to_chat(bool include_usage) : include_usage_(include_usage) {}
  std::string event(std::string_view sse_event);
  /// True once message_stop (or an error event) was seen.
  bool done() const { return done_; }

 private:
  std::string chunk(std::string_view delta_json, std::string_view finish_reason = {});
  std::string usage_json() const;

  bool include_usage_;
  bool done_ = false;
  std::string id_ = "chatcmpl-anthropic";
  std::string model_;
  std::int64_t created_ = 0;
  std::vector<int> tool_of_block_;  // block index -> tool call index, -1 for other blocks
  int tools_ = 0;
  std::int64_t input_ = 0, cache_read_ = 0, cache_write_ = 0, output_ = 0;
};

}  // namespace tollgate::protocol
