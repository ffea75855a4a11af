#include "protocol/errors.hpp"

#include <nlohmann/json.hpp>

namespace tollgate::protocol {

std::string api_error::body() const {
  nlohmann::json err = {{"message", message}, {"type", type}, {"code", code}};
  err["param"] = param.empty() ? nlohmann::json(nullptr) : nlohmann::json(param);
  return nlohmann::json{{"error", std::move(err)}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string api_error::sse_event() const { return "data: " + body() + "\n\n"; }

api_error bad_request(std::string message, std::string param, std::string code) {
  return {400, "invalid_request_error", std::move(code), std::move(message), std::move(param)};
}
api_error unauthorized(std::string message) {
  return {401, "authentication_error", "invalid_api_key", std::move(message), {}};
}
api_error not_found(std::string message, std::string code) {
  return {404, "invalid_request_error", std::move(code), std::move(message), {}};
}
api_error method_not_allowed() {
  return {405, "invalid_request_error", "method_not_allowed", "this endpoint does not accept that method", {}};
}
api_error payload_too_large(std::size_t limit) {
  return {413, "invalid_request_error", "request_too_large",
          "request body exceeds the limit of " + std::to_string(limit) + " bytes", {}};
}
api_error bad_gateway(std::string message) { return {502, "upstream_error", "bad_gateway", std::move(message), {}}; }
api_error gateway_timeout(std::string message) {
  return {504, "upstream_error", "gateway_timeout", std::move(message), {}};
}
api_error unavailable(std::string message) {
  return {503, "server_error", "service_unavailable", std::move(message), {}};
}
api_error internal_error(std::string message) { return {500, "server_error", "internal_error", std::move(message), {}}; }

}  // namespace tollgate::protocol
