#include "gateway/server/worker.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>

#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <random>

#include "adapters/event_mailbox.hpp"
#include "gateway/server/session.hpp"
#include "gateway/server/server.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
using tcp = net::ip::tcp;

worker::worker(server_shared& shared, std::size_t index, const tcp::endpoint& endpoint)
    : shared_(shared),
      index_(index),
      // One thread runs this loop and only it touches its sockets and timers; other threads only
      // post to it. So descriptors need no locks (the scheduler keeps its own for those posts).
      io_(std::make_unique<net::io_context>(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO)),
      curl_(*io_),
      pool_(*io_),
      mailboxes_(&adapters::mailbox_list(*io_)),
      acceptor_(*io_),
      heartbeat_(*io_),
      accept_pause_(*io_),
      rng_{(std::uint64_t{std::random_device{}()} << 32) | std::random_device{}()} {
  acceptor_.open(endpoint.protocol());
  acceptor_.set_option(tcp::acceptor::reuse_address(true));
  int one = 1;
  if (::setsockopt(acceptor_.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    throw std::system_error(errno, std::generic_category(), "SO_REUSEPORT");
  }
  acceptor_.bind(endpoint);
  acceptor_.listen(net::socket_base::max_listen_connections);
}

worker::~worker() {
  stop();
  if (session_count_.load() > 0) {
    static_cast<void>(io_.release());  // see the member's comment
  }
}

void worker::start() {
  accept_next();
  beat();
  thread_ = std::thread([this] { io_->run(); });
}

// Client connections have no timer each: a session writes its deadline into its entry, and this
// beat, four times a second, cancels the I/O of every session whose deadline has passed. So a
// request arms no timer of its own for its reads and writes, and, this timer being the earliest,
// the longer timers other code arms never reprogram the timerfd. The beat also runs what sessions
// and the connection pool put off until a request has lasted a while (watching a socket costs a
// system call, which a quick request need not spend).
void worker::beat() {
  heartbeat_.expires_after(std::chrono::milliseconds(250));
  heartbeat_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    const auto now = std::chrono::steady_clock::now();
    for (auto& entry : sessions_) {
      if (entry.deadline <= now) {
        entry.deadline = std::chrono::steady_clock::time_point::max();
        boost::system::error_code ignored;
        entry.socket->cancel(ignored);
      }
      if (entry.on_beat) std::exchange(entry.on_beat, nullptr)();
    }
    pool_.watch_idle();
    beat();
  });
}

void worker::accept_next() {
  acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) {
      accept_starved_ = false;
      socket.set_option(tcp::no_delay(true), ec);
      net::co_spawn(*io_, run_session(*this, std::move(socket)), net::detached);
    } else if (ec == net::error::no_descriptors || ec.value() == ENFILE || ec == net::error::no_buffer_space ||
               ec == net::error::no_memory) {
      // The pending connection stays in the backlog, so accepting again at once fails again, and
      // the loop would spin. Pause, and say so once until a connection gets through.
      if (!accept_starved_) {
        accept_starved_ = true;
        std::cerr << "tollgate: worker " << index_ << " cannot accept connections: " << ec.message()
                  << "; retrying every 100 ms" << std::endl;
      }
      accept_pause_.expires_after(std::chrono::milliseconds(100));
      accept_pause_.async_wait([this](boost::system::error_code wec) {
        if (!wec && acceptor_.is_open()) accept_next();
      });
      return;
    }
    // Any other failed accept (a reset in the backlog) must not end the loop.
    accept_next();
  });
}

void worker::begin_drain() {
  net::post(*io_, [this] {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    accept_pause_.cancel();
    for (auto& entry : sessions_) {
      if (entry.idle) entry.socket->cancel(ignored);
    }
  });
}

void worker::stop() {
  if (!thread_.joinable()) return;
  net::post(*io_, [this] {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    for (auto& entry : sessions_) entry.socket->close(ignored);
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (session_count_.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  io_->stop();
  thread_.join();
}

namespace {
/// Each byte's two hex digits, so that an id is written a byte, not a digit, at a time.
constexpr std::array<char, 512> hex_pairs = [] {
  constexpr char hex[] = "0123456789abcdef";
  std::array<char, 512> t{};
  for (std::size_t b = 0; b < 256; ++b) {
    t[2 * b] = hex[b >> 4];
    t[2 * b + 1] = hex[b & 0xf];
  }
  return t;
}();
}  // namespace

void worker::new_request_id(std::string& id) {
  char text[28] = {'r', 'e', 'q', '_'};  // written whole, then assigned once
  char* out = text + 4;
  for (int part = 0; part < 2; ++part) {
    std::uint64_t bits = rng_();
    for (int i = 0; i < 6; ++i, bits >>= 8, out += 2) std::memcpy(out, &hex_pairs[2 * (bits & 0xff)], 2);
  }
  id.assign(text, sizeof text);
}

std::list<worker::session_entry>::iterator worker::add_session(tcp::socket* socket) {
  sessions_.push_back(session_entry{socket, false});
  ++session_count_;
  return std::prev(sessions_.end());
}

void worker::remove_session(std::list<session_entry>::iterator it) {
  sessions_.erase(it);
  --session_count_;
}

}  // namespace tollgate::gateway
