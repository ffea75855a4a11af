// Token counts for a request whose upstream reported no usage (it sends none, the stream broke,
// or the client left mid-stream): the prompt as the model saw it and the completion as far as
// it reached the client, counted with the metering tokenizer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>

namespace tollgate::tokenizer {
class tokenizer;
}

namespace tollgate::gateway {

inline constexpr std::size_t unbounded = std::numeric_limits<std::size_t>::max();

/// Counts texts with a tokenizer, tokenizing at most a bound of bytes over all of them: past it,
/// the rest of a text is estimated at the rate of what was counted (4 bytes a token when too
/// little was), and estimated() says so. Tokenizing costs about a second per few megabytes, so
/// the bound caps what one answer may cost.
class bounded_count {
 public:
  bounded_count(const tokenizer::tokenizer& tok, std::size_t max_bytes) : tok_(tok), left_(max_bytes) {}
  std::int64_t operator()(std::string_view text);
  bool estimated() const { return estimated_; }

 private:
  const tokenizer::tokenizer& tok_;
  std::size_t left_;
  std::size_t counted_bytes_ = 0;
  std::int64_t counted_tokens_ = 0;
  bool estimated_ = false;
};

/// Prompt tokens of a request body for an endpoint path ("/chat/completions", "/completions",
/// "/embeddings", and "/messages" and "/responses" for relayed requests): chat messages in the
/// DeepSeek chat template (tools included as JSON; Messages and Responses requests as the chat
/// request they translate to), a completion prompt, or embedding inputs. A body that is not JSON
/// (or that chat cannot express) counts as its bytes' tokens.
/// At most max_bytes of text are tokenized (see bounded_count); *estimated is set when some of
/// the count is an estimate.
std::int64_t count_prompt_tokens(const tokenizer::tokenizer& tok, std::string_view path, std::string_view body,
                                 std::size_t max_bytes = unbounded, bool* estimated = nullptr);

/// Appends the generated text of what reached the client to text: SSE events (sse = true) or a
/// whole JSON answer. Message and reasoning content, legacy completion text, and tool call names
/// and arguments, over every choice; for relayed answers, an Anthropic message's blocks or a
/// response's output items (streams: their deltas).
void append_completion_text(std::string_view delivered, bool sse, std::string& text);
/// The same for what reached the client kept in pieces, one after another.
void append_completion_text(std::span<const std::string> delivered, bool sse, std::string& text);

/// Completion tokens of what reached the client (see append_completion_text). earlier: text
/// already taken out of earlier parts of the same answer, which comes first. max_bytes and
/// estimated: as for count_prompt_tokens.
std::int64_t count_completion_tokens(const tokenizer::tokenizer& tok, std::string_view delivered, bool sse,
                                     std::string_view earlier = {}, std::size_t max_bytes = unbounded,
                                     bool* estimated = nullptr);
std::int64_t count_completion_tokens(const tokenizer::tokenizer& tok, std::span<const std::string> delivered, bool sse,
                                     std::string_view earlier = {}, std::size_t max_bytes = unbounded,
                                     bool* estimated = nullptr);

}  // namespace tollgate::gateway
