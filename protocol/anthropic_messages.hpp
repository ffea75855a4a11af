// Clients that speak Anthropic's Messages API (POST /v1/messages): their requests become OpenAI
// chat completions requests, the call type every backend takes, and the chat answers (whole or
// streamed) become Anthropic messages and Anthropic's event sequence.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/wire.hpp"

namespace tollgate::protocol {

/// An Anthropic Messages request body as an OpenAI chat completions body. system, messages with
/// text, image, tool_use, tool_result (and thinking) blocks, tools, tool_choice, stop_sequences,
/// max_tokens, temperature, top_p, top_k, metadata.user_id and stream are carried over;
/// cache_control marks are accepted and have no equivalent; anything else is refused (a 400
/// naming the field). A stream asks for usage (stream_options.include_usage).
translated messages_request_to_chat(std::string_view body);

/// An OpenAI chat.completion as an Anthropic message naming `model`. Not ok when the body is not
/// a chat completion (the caller answers 502).
translated chat_answer_to_message(std::string_view chat_body, std::string_view model);

/// Anthropic's error type for an HTTP status: invalid_request_error, authentication_error,
/// permission_error, not_found_error, request_too_large, rate_limit_error, api_error,
/// overloaded_error (503 and 529).
std::string_view anthropic_error_type(int status);

/// An error body in Anthropic's shape: {"type":"error","error":{"type","message"}}.
std::string anthropic_error_body(int status, std::string_view message);

/// An OpenAI-shaped error answer (as upstreams and the gateway write them) in Anthropic's shape.
/// A 503 whose code is "overloaded" becomes Anthropic's 529 overloaded_error.
answer chat_error_to_anthropic(int status, std::string_view openai_body);

/// Turns the SSE events of an OpenAI chat completions stream into Anthropic's sequence:
/// message_start, then per block content_block_start, content_block_delta (text_delta,
/// thinking_delta, input_json_delta), content_block_stop, then message_delta (stop_reason and
/// usage) and message_stop. Feed whole events in order; not thread-safe.
class chat_stream_to_messages {
 public:
  explicit chat_stream_to_messages(std::string model);
  /// The Anthropic events one upstream event gives (often none, or several).
  std::string event(std::string_view sse_event);
  /// What closes the stream: open block, message_delta, message_stop. Empty when done already.
  std::string end();
  /// An error event for a stream that broke after it started.
  std::string error(int status, std::string_view message);

 private:
  enum class block { none, text, thinking, tool_use };
  std::string start_block(block kind, std::string_view start_json);
  std::string close_block();
  std::string message_start();

  std::string model_;
  std::string id_;
  bool started_ = false;
  bool ended_ = false;
  block open_ = block::none;
  int index_ = -1;  // index of the open (or last) block
  std::vector<std::int64_t> tool_blocks_;  // OpenAI tool call index -> block index
  std::int64_t open_tool_ = -1;            // OpenAI index of the open tool_use block
  std::string stop_reason_ = "end_turn";
  std::string stop_sequence_;
  // Anthropic's usage: input_tokens leaves out the cached (read) and cache-written tokens.
  std::int64_t prompt_ = 0, cached_ = 0, created_ = 0, completion_ = 0;
};

}  // namespace tollgate::protocol
