// The path table and its handlers. Each handler gets the request context (the request, a way to
// answer, where its result goes) and returns whether the connection stays open; none of them
// sees the socket.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <optional>
#include <string>
#include <string_view>

#include "protocol/errors.hpp"
#include "gateway/server/request.hpp"

namespace tollgate::gateway {

// Handlers answer with the protocol's OpenAI-shaped errors.
using protocol::api_error;
using protocol::bad_gateway;
using protocol::bad_request;
using protocol::gateway_timeout;
using protocol::internal_error;
using protocol::method_not_allowed;
using protocol::not_found;
using protocol::payload_too_large;
using protocol::unauthorized;
using protocol::unavailable;

/// Finds the request's handler in the path table and runs it; unknown paths get a 404.
boost::asio::awaitable<bool> handle_request(request_context& ctx);

/// The key a request presents: `Authorization: Bearer KEY`, else `x-api-key`.
std::string_view bearer_key(const request& req);
/// Sets ctx.who from the request's key (remembering a connection's last key). false: refused.
bool authenticate(request_context& ctx);
/// The 401 for a request authenticate() refused.
api_error unauthorized_error(const request_context& ctx);

// The handlers the table names.
boost::asio::awaitable<bool> handle_admin(request_context& ctx);  // handlers/admin.cpp
/// POST only, with a key (authenticated here), then the exchange.
boost::asio::awaitable<bool> handle_proxy(request_context& ctx);  // proxy/exchange.cpp
// Other APIs' endpoints (handlers/api_surface.cpp): POST /v1/messages and /v1/responses are
// translated to chat completions, then handle_proxy; the client's dialect goes on ctx.dialect.
boost::asio::awaitable<bool> handle_messages(request_context& ctx);
boost::asio::awaitable<bool> handle_responses(request_context& ctx);
boost::asio::awaitable<bool> handle_count_tokens(request_context& ctx);  // POST /v1/messages/count_tokens
boost::asio::awaitable<bool> handle_model_by_id(request_context& ctx);   // GET /v1/models/{id}
/// GET and DELETE /v1/responses/{id}, GET .../input_items, POST .../cancel (handlers/stored_responses.cpp).
boost::asio::awaitable<bool> handle_stored_response(request_context& ctx);

/// A path segment's %XX escapes decoded (ids such as `org%2Fmodel` come from SDKs that encode
/// them); nullopt for a '%' not followed by two hex digits.
std::optional<std::string> percent_decode(std::string_view in);

}  // namespace tollgate::gateway
