// One non-blocking sendmsg of a list of buffers, for the writers that try the socket once before
// they go asynchronous (the upstream request, the answer to the client).
#pragma once

#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>

#include <cstddef>
#include <span>
#include <vector>

namespace tollgate::adapters {

struct send_result {
  boost::system::error_code error;  ///< a hard failure (not "would block")
  std::size_t sent = 0;             ///< bytes the socket took (0 when it would block)
};

/// Sends as much of the first `max_pieces` (at most 16) non-empty buffers as socket fd takes,
/// without blocking and without SIGPIPE, retrying on EINTR.
send_result send_now(int fd, std::span<const boost::asio::const_buffer> buffers, std::size_t max_pieces = 16);

/// The buffers past the first `sent` bytes, appended to rest.
void buffers_after(std::span<const boost::asio::const_buffer> buffers, std::size_t sent,
                   std::vector<boost::asio::const_buffer>& rest);

}  // namespace tollgate::adapters
