// The edge of the request path for clients that do not speak OpenAI chat completions: their
// request is translated to chat before routing (see anthropic_messages.hpp, responses_api.hpp),
// and this object turns what comes back, whole answers, stream events and errors, into their
// dialect. The session holds one per translated request and knows nothing of either format.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "protocol/wire.hpp"

namespace tollgate::protocol {

class client_dialect {
 public:
  virtual ~client_dialect() = default;
  /// The client's request body in chat completions form, or a 400 naming what is refused.
  virtual translated chat_request() const = 0;
  /// A whole upstream answer (chat.completion, or an OpenAI-shaped error) in the dialect. A 2xx
  /// that is not a chat completion becomes a 502.
  virtual answer whole(int status, std::string_view body) = 0;
  /// An error the gateway answers itself (OpenAI-shaped body) in the dialect's shape.
  virtual answer error(int status, std::string_view openai_body) = 0;
  /// The dialect's events for one chat stream event (possibly none).
  virtual std::string event(std::string_view sse_event) = 0;
  /// What ends a stream that ended well.
  virtual std::string end() = 0;
  /// An error event for a stream that broke after it started.
  virtual std::string stream_error(int status, std::string_view message) = 0;
};

/// POST /v1/messages. request_body: the client's body (kept for the translation).
std::unique_ptr<client_dialect> anthropic_client(std::string request_body);
/// POST /v1/responses.
std::unique_ptr<client_dialect> responses_client(std::string request_body);

}  // namespace tollgate::protocol
