// One client connection: read requests (keep-alive), answer local endpoints, proxy the rest.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace tollgate::gateway {

class worker;

/// Serves the connection until the client closes it, an error, or drain.
boost::asio::awaitable<void> run_session(worker& w, boost::asio::ip::tcp::socket socket);

}  // namespace tollgate::gateway
