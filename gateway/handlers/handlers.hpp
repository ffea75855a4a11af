// The path table and its handlers. Each handler gets the request context (the request, a way to
// answer, where its result goes) and returns whether the connection stays open; none of them
// sees the socket.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <string_view>

#include "gateway/errors.hpp"
#include "gateway/server/request.hpp"

namespace tollgate::gateway {

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

}  // namespace tollgate::gateway
