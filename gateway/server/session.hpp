// One client connection: read requests (keep-alive, deadlines, body limits), hand each to the path
// table (handlers/), and publish its result (accounting/). The session knows HTTP/1.1 framing and
// nothing about the API behind it.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace tollgate::gateway {

class worker;

/// Serves the connection until the client closes it, an error, or drain.
boost::asio::awaitable<void> run_session(worker& w, boost::asio::ip::tcp::socket socket);

}  // namespace tollgate::gateway
