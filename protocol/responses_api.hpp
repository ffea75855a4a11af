// Clients that speak OpenAI's Responses API (POST /v1/responses), as the openai SDK's
// responses.create and the Vercel AI SDK's default OpenAI provider call it: requests become chat
// completions requests; chat answers and streams become response objects and Responses events
// (text, function calls, reasoning summaries, structured output through text.format).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "protocol/wire.hpp"

namespace tollgate::protocol {

/// A Responses request body as a chat completions body. input (a string, or message,
/// function_call and function_call_output items), instructions, tools (function), tool_choice,
/// parallel_tool_calls, text.format (text, json_object, json_schema), max_output_tokens,
/// temperature, top_p, reasoning.effort, user, stream are carried over; metadata is echoed in the
/// answer. previous_response_id, built-in tools and other fields without an equivalent are refused.
translated responses_request_to_chat(std::string_view body);

/// A chat.completion as a response object that names `model` and echoes the request's settings.
translated chat_answer_to_response(std::string_view chat_body, std::string_view request_body, std::string_view model);

/// Turns the SSE events of a chat completions stream into Responses events: response.created,
/// response.in_progress, per output item output_item.added/done with its content events
/// (output_text, function_call_arguments, reasoning_summary_text), and response.completed (or
/// response.incomplete) with the whole response and usage. Not thread-safe.
class chat_stream_to_responses {
 public:
  chat_stream_to_responses(std::string_view request_body, std::string model);
  ~chat_stream_to_responses();
  chat_stream_to_responses(const chat_stream_to_responses&) = delete;
  chat_stream_to_responses& operator=(const chat_stream_to_responses&) = delete;
  std::string event(std::string_view sse_event);
  std::string end();
  /// An error event (then response.failed) for a stream that broke after it started.
  std::string error(int status, std::string_view message);

 private:
  struct state;
  std::unique_ptr<state> s_;
};

}  // namespace tollgate::protocol
