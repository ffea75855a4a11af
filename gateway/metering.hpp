// Token counts for a request whose upstream reported no usage (it sends none, the stream broke,
// or the client left mid-stream): the prompt as the model saw it and the completion as far as
// it reached the client, counted with the metering tokenizer.
#pragma once

#include <cstdint>
#include <string_view>

namespace tollgate::engine {
class tokenizer;
}

namespace tollgate::gateway {

/// Prompt tokens of a request body for an endpoint path ("/chat/completions", "/completions",
/// "/embeddings"): chat messages in the DeepSeek chat template (tools included as JSON), a
/// completion prompt, or embedding inputs. A body that is not JSON counts as its bytes' tokens.
std::int64_t count_prompt_tokens(const engine::tokenizer& tok, std::string_view path, std::string_view body);

/// Completion tokens of what reached the client: SSE events (sse = true) or a whole JSON answer.
/// Counts message and reasoning content, legacy completion text, and tool call names and
/// arguments, over every choice.
std::int64_t count_completion_tokens(const engine::tokenizer& tok, std::string_view delivered, bool sse);

}  // namespace tollgate::gateway
