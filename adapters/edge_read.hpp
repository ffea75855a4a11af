// A socket read that, once it has found the socket drained, leaves the next read to epoll's next
// edge. Asio's async_read_some first tries recv at once (a speculative read) unless its last read
// found the peer closed, so on a connection whose bytes come one message at a time (a stream's
// events) every read is two system calls, the first of which finds nothing.
//
// Drained is the kernel's word, not a guess: with TCP_INQ on the socket (enable_edge_reads), each
// recvmsg also returns how many bytes are left in the receive queue, and a non-zero count once the
// peer's FIN has come (so that a reader goes on to read the end). A read that leaves none tells
// the reactor so (done_and_exhausted), and the next read is queued without trying. Without
// TCP_INQ (the option refused, or never asked for) every read is Asio's.
//
// A reset or a socket error is not in that count (an RST leaves neither bytes nor a FIN), so the
// read also looks at the events of the socket's last edge, as the reactor took them from
// epoll_wait: after an edge with EPOLLHUP or EPOLLERR the next read tries at once (and gets the
// error). Nothing is missed: Asio's epoll registration is edge-triggered, so bytes, a FIN, a reset
// or an error that come after the last edge was taken raise an edge of their own, which the
// reactor notes (try again) whether or not a read is queued; and what came before it is in the
// count or in that edge's events. A descriptor entry reused from a closed socket may still hold
// the old socket's events: an EPOLLHUP there costs one read that tries at once, nothing more.
//
// Built on Asio's reactor (its detail namespace, Boost 1.81's epoll_reactor, checked below): the
// operation is a reactor_op of our own, started as Asio starts a socket's read, and the last
// edge's events are the ones the reactor keeps in the socket's descriptor entry. Its completion,
// cancellation (cancel(), close()) and destruction at shutdown are the reactor's and the
// scheduler's, as for Asio's own reads. Include only where a read is started: the header pulls in
// Asio's reactor.
#pragma once

#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/detail/recycling_allocator.hpp>
#include <boost/asio/detail/scheduler_operation.hpp>
#include <boost/asio/detail/socket_ops.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/version.hpp>

#include "adapters/loop_clock.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

namespace tollgate::adapters {

/// The reactor of an io_context: looked up once by its user (the lookup takes the service
/// registry's lock).
inline boost::asio::detail::reactor& edge_reactor(boost::asio::io_context& io) {
  return boost::asio::use_service<boost::asio::detail::reactor>(io);
}

/// Asks the kernel to say, at each read, what is left to read (TCP_INQ). false when it refuses
/// (reads then stay Asio's: each tries at once).
inline bool enable_edge_reads(boost::asio::ip::tcp::socket& s) {
  const int on = 1;
  return ::setsockopt(s.native_handle(), IPPROTO_TCP, TCP_INQ, &on, sizeof on) == 0;
}

/// Tries by async_read_edge's reads that found the socket empty (each a system call spent): the
/// first read of a socket, a read after one that left bytes or a FIN behind, and any read on a
/// socket without TCP_INQ.
inline std::atomic<std::uint64_t> edge_reads_found_nothing{0};

namespace edge_detail {

namespace net = boost::asio;

static_assert(BOOST_ASIO_VERSION == 102600,
              "edge_read.hpp reads the epoll reactor's descriptor entry as Asio 1.26 (Boost 1.81) lays it out: check "
              "epoll_reactor::descriptor_state and scheduler_operation::task_result_ before changing this");

/// The events of a socket's last edge: epoll_reactor::run stores them in the descriptor entry's
/// operation base (task_result_, protected, reached through a pointer to member formed in a derived
/// class; the base itself is private, which an explicit cast may convert to). Read with the entry's
/// lock held (the reactor holds it while an operation is performed) on the loop's own thread.
struct edge_events_access : net::detail::scheduler_operation {
  static std::uint32_t of(net::detail::epoll_reactor::descriptor_state* entry) {
    auto* base = (net::detail::scheduler_operation*)entry;  // NOLINT: the only cast that reaches a private base
    return base->*(&edge_events_access::task_result_);
  }
};

/// The socket's implementation (its descriptor, state and reactor entry): a protected member of
/// basic_socket, reached through a pointer to member formed in a derived class.
struct socket_access : net::ip::tcp::socket {
  static auto& of(net::ip::tcp::socket& s) { return (s.*(&socket_access::impl_)).get_implementation(); }
};

template <typename Handler>
class read_op final : public net::detail::reactor_op {
 public:
  /// The handler's associated allocator; the default one is the thread's recycling cache, as
  /// for Asio's own operations.
  using recycling = net::detail::get_recycling_allocator<net::associated_allocator_t<Handler>,
                                                        net::detail::thread_info_base::default_tag>;
  using allocator_type = typename std::allocator_traits<typename recycling::type>::template rebind_alloc<read_op>;
  static allocator_type allocator(const Handler& h) { return allocator_type(recycling::get(net::get_associated_allocator(h))); }

  read_op(int fd, net::detail::epoll_reactor::descriptor_state* entry, net::mutable_buffer into, Handler&& handler)
      : reactor_op(boost::system::error_code(), &read_op::do_perform, &read_op::do_complete),
        fd_(fd),
        entry_(entry),
        into_(into),
        handler_(std::move(handler)) {}

 private:
  static status do_perform(reactor_op* base) {
    auto* o = static_cast<read_op*>(base);
    if (o->into_.size() == 0) return done;
    iovec iov{o->into_.data(), o->into_.size()};
    alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int))];
    for (;;) {
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      // The system call itself: glibc's recvmsg is a cancellation point, with two calls around it.
      const long n = ::syscall(SYS_recvmsg, o->fd_, &msg, 0);
      if (n > 0) {
        o->bytes_transferred_ = static_cast<std::size_t>(n);
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
          if (c->cmsg_level != IPPROTO_TCP || c->cmsg_type != TCP_CM_INQ) continue;
          int left = 0;
          std::memcpy(&left, CMSG_DATA(c), sizeof left);
          // Nothing left, no FIN, and the last edge brought no reset or error: wait for the next edge.
          if (left == 0 && (edge_events_access::of(o->entry_) & (EPOLLHUP | EPOLLERR)) == 0) return done_and_exhausted;
        }
        return done;
      }
      if (n == 0) {
        o->ec_ = net::error::eof;
        return done_and_exhausted;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        edge_reads_found_nothing.fetch_add(1, std::memory_order_relaxed);
        return not_done;
      }
      o->ec_ = boost::system::error_code(errno, net::error::get_system_category());
      return done;
    }
  }

  /// owner null: destroyed unrun (the loop shut down). The state is given back before the
  /// handler runs, so that the handler may start the next read in the same memory.
  static void do_complete(void* owner, net::detail::operation* base, const boost::system::error_code&, std::size_t) {
    auto* o = static_cast<read_op*>(base);
    allocator_type alloc = allocator(o->handler_);
    Handler handler(std::move(o->handler_));
    const boost::system::error_code ec = o->ec_;
    const std::size_t n = o->bytes_transferred_;
    std::allocator_traits<allocator_type>::destroy(alloc, o);
    std::allocator_traits<allocator_type>::deallocate(alloc, o, 1);
    if (owner == nullptr) return;
    const loop_clock::scope one_reading;  // what the handler does asks for the time once (loop_clock.hpp)
    std::move(handler)(ec, n);
  }

  int fd_;
  net::detail::epoll_reactor::descriptor_state* entry_;
  net::mutable_buffer into_;
  Handler handler_;
};

}  // namespace edge_detail

/// Reads some bytes of s into `into`, as s.async_read_some would (the handler gets the error and
/// the count; end of stream is net::error::eof; cancel() and close() abort it), but a read that
/// leaves the socket drained (enable_edge_reads) makes the next one wait for the socket's next
/// edge. The operation's state is made with the handler's associated allocator. reactor:
/// edge_reactor() of s's loop.
template <typename Handler>
void async_read_edge(boost::asio::detail::reactor& reactor, boost::asio::ip::tcp::socket& s,
                     boost::asio::mutable_buffer into, Handler&& handler) {
  namespace net = boost::asio;
  using op = edge_detail::read_op<std::decay_t<Handler>>;
  auto& impl = edge_detail::socket_access::of(s);
  typename op::allocator_type alloc = op::allocator(handler);
  op* p = std::allocator_traits<typename op::allocator_type>::allocate(alloc, 1);
  try {
    std::allocator_traits<typename op::allocator_type>::construct(alloc, p, impl.socket_, impl.reactor_data_, into, std::forward<Handler>(handler));
  } catch (...) {
    std::allocator_traits<typename op::allocator_type>::deallocate(alloc, p, 1);
    throw;
  }
  if ((impl.state_ & net::detail::socket_ops::non_blocking) == 0 &&
      !net::detail::socket_ops::set_internal_non_blocking(impl.socket_, impl.state_, true, p->ec_)) {
    reactor.post_immediate_completion(p, false);
    return;
  }
  reactor.start_op(net::detail::reactor::read_op, impl.socket_, impl.reactor_data_, p, false, true);
}

}  // namespace tollgate::adapters
