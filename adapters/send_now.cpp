#include "adapters/send_now.hpp"

#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>

namespace tollgate::adapters {

send_result send_now(int fd, std::span<const boost::asio::const_buffer> buffers, std::size_t max_pieces) {
  std::array<iovec, 16> iov;  // only the first `count` are filled and passed
  const std::size_t limit = std::min(max_pieces, iov.size());
  std::size_t count = 0;
  for (const boost::asio::const_buffer& b : buffers) {
    if (b.size() == 0) continue;
    if (count == limit) break;
    iov[count].iov_base = const_cast<void*>(b.data());
    iov[count].iov_len = b.size();
    ++count;
  }
  if (count == 0) return {};
  msghdr msg{};
  msg.msg_iov = iov.data();
  msg.msg_iovlen = count;
  ssize_t n = 0;
  do {
    // The system call itself: glibc's sendmsg is a cancellation point, with two calls around it,
    // and nothing here is ever cancelled.
    n = ::syscall(SYS_sendmsg, fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n >= 0) return {{}, static_cast<std::size_t>(n)};
  if (errno == EAGAIN || errno == EWOULDBLOCK) return {};
  return {boost::system::error_code(errno, boost::system::system_category()), 0};
}

void buffers_after(std::span<const boost::asio::const_buffer> buffers, std::size_t sent,
                   std::vector<boost::asio::const_buffer>& rest) {
  for (const boost::asio::const_buffer& b : buffers) {
    if (sent >= b.size()) {
      sent -= b.size();
      continue;
    }
    rest.push_back(b + sent);
    sent = 0;
  }
}

}  // namespace tollgate::adapters
