// OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with the fitting status.
#pragma once

#include <string>
#include <string_view>

namespace tollgate::protocol {

struct api_error {
  int status = 500;
  std::string type;     ///< "invalid_request_error", "authentication_error", ...
  std::string code;     ///< machine-readable, e.g. "model_not_found"
  std::string message;  ///< for people
  std::string param;    ///< the offending request field, may be empty

  /// The JSON body.
  std::string body() const;
  /// The same error as one SSE event, for a stream that already started.
  std::string sse_event() const;
};

api_error bad_request(std::string message, std::string param = {}, std::string code = "invalid_request");
api_error unauthorized(std::string message);
api_error not_found(std::string message, std::string code = "not_found");
api_error method_not_allowed();
api_error payload_too_large(std::size_t limit);
api_error bad_gateway(std::string message);
api_error gateway_timeout(std::string message);
api_error unavailable(std::string message);
api_error internal_error(std::string message);

}  // namespace tollgate::protocol
