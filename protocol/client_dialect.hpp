// The edge of the request path for clients that do not speak OpenAI chat completions: their
// request is translated to chat before routing (see anthropic_messages.hpp, responses_api.hpp),
// and this object turns what comes back, whole answers, stream events and errors, into their
// dialect. The session holds one per translated request and knows nothing of either format.
// A request routed only to upstreams that speak the client's API is relayed instead: its dialect
// passes the upstream's answers on as they are, reads their usage and sees where a stream ends.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "protocol/usage.hpp"
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

  // Relayed requests (relays() is true): the upstream speaks the client's API. whole() and
  // event() pass its answers on unchanged (the exchange renames their model, as it does for
  // OpenAI clients), error() reshapes the gateway's own errors.
  virtual bool relays() const { return false; }
  /// The usage a relayed stream has reported so far, from the events given to event(): nullopt
  /// when none has come, or when a count was not to be trusted (the tokenizer counts then).
  virtual std::optional<usage> stream_usage() const { return std::nullopt; }
  /// A relayed stream gave its last event (Anthropic's message_stop, the Responses API's
  /// response.completed...): nothing after it is relayed. Without it, end() is an error event.
  virtual bool complete() const { return false; }
  /// A relayed Responses API request: the id of the response the upstream stored (from the whole
  /// answer given to whole(), or a stream's response.created); empty when none came, or the
  /// response says "store": false.
  virtual const std::string& stored_response_id() const {
    static const std::string none;
    return none;
  }
};

/// POST /v1/messages. request_body: the client's body (kept for the translation).
std::unique_ptr<client_dialect> anthropic_client(std::string request_body);
/// POST /v1/responses.
std::unique_ptr<client_dialect> responses_client(std::string request_body);
/// POST /v1/messages relayed as it is to Anthropic Messages upstreams (kind anthropic).
std::unique_ptr<client_dialect> anthropic_relay();
/// POST /v1/responses relayed as it is to upstreams that serve the Responses API. on_stored, when
/// set, is called with the id of the response the upstream stored (stored_response_id()) as soon as
/// it is read: before the answer, or the stream's event, that carries it is handed on to the client,
/// so that a client that asks for the response at once finds it known.
std::unique_ptr<client_dialect> responses_relay(std::function<void(const std::string&)> on_stored = {});

}  // namespace tollgate::protocol
