// Token counts for a request whose upstream reported no usage (it sends none, the stream broke,
// or the client left mid-stream): the prompt as the model saw it and the completion as far as
// it reached the client, counted with the metering tokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace tollgate::engine {
class tokenizer;
}

namespace tollgate::gateway {

/// Prompt tokens of a request body for an endpoint path ("/chat/completions", "/completions",
/// "/embeddings"): chat messages in the DeepSeek chat template (tools included as JSON), a
/// completion prompt, or embedding inputs. A body that is not JSON counts as its bytes' tokens.
std::int64_t count_prompt_tokens(const engine::tokenizer& tok, std::string_view path, std::string_view body);

/// Appends the generated text of what reached the client to text: SSE events (sse = true) or a
/// whole JSON answer. Message and reasoning content, legacy completion text, and tool call names
/// and arguments, over every choice.
void append_completion_text(std::string_view delivered, bool sse, std::string& text);

/// Completion tokens of what reached the client (see append_completion_text). earlier: text
/// already taken out of earlier parts of the same answer, which comes first.
std::int64_t count_completion_tokens(const engine::tokenizer& tok, std::string_view delivered, bool sse,
                                     std::string_view earlier = {});

}  // namespace tollgate::gateway
