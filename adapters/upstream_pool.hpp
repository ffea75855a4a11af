// Idle keep-alive connections to plain-HTTP upstreams, one pool per worker thread, so that a
// request reuses a warm connection instead of paying a TCP handshake.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace boost::asio::detail {
class epoll_reactor;
}  // namespace boost::asio::detail

namespace tollgate::adapters {

/// One TCP connection to an upstream and the buffer its responses are read into (kept with the
/// connection, so a reused one allocates nothing).
struct upstream_connection {
  explicit upstream_connection(boost::asio::io_context& io) : socket(io) {}
  boost::asio::ip::tcp::socket socket;
  boost::beast::flat_buffer buffer;
  std::chrono::steady_clock::time_point idle_since;
  std::uint64_t parking = 0;  ///< nonzero while idle in the pool: which stay it is
  bool reused = false;        ///< it has carried a whole response before
  bool watched = false;       ///< a peek is armed on it while parked
  char peek[1];               ///< where that peek reads
};

/// Not thread-safe: used only on the thread that runs its io_context.
class upstream_pool {
 public:
  /// max_idle: idle connections kept per origin (the oldest is closed past it); max_age: an idle
  /// connection older than this is closed instead of reused.
  explicit upstream_pool(boost::asio::io_context& io, std::size_t max_idle = 256,
                         std::chrono::seconds max_age = std::chrono::seconds(60));
  ~upstream_pool();
  upstream_pool(const upstream_pool&) = delete;
  upstream_pool& operator=(const upstream_pool&) = delete;

  boost::asio::io_context& io() { return io_; }
  /// io's reactor, for async_read_edge (adapters/edge_read.hpp).
  boost::asio::detail::epoll_reactor& reactor() { return *reactor_; }

  /// The idle connection to origin ("host:port") parked last, or null when there is none. One idle
  /// for a heartbeat or more is first checked (a non-blocking peek) and skipped when the server
  /// has closed it or sent bytes unasked.
  std::shared_ptr<upstream_connection> take(const std::string& origin);

  /// Parks a connection whose last response ended cleanly and may be kept alive.
  void put(const std::string& origin, std::shared_ptr<upstream_connection> connection);

  /// Called a few times a second. Closes connections idle past max_age, and arms a peek on every
  /// connection parked since the last call: a connection the server then closes, or one that
  /// receives bytes nobody asked for, is closed and leaves the pool at once. Connections reused
  /// within that time are never watched, which spares a busy worker a system call per request;
  /// one that died unwatched fails on reuse before any answer, and the request is sent again on
  /// a new connection.
  void watch_idle();

  std::size_t idle() const;

 private:
  using idle_list = std::vector<std::shared_ptr<upstream_connection>>;
  void watch(const std::string& origin, const std::shared_ptr<upstream_connection>& connection);
  void drop(const std::string& origin, const upstream_connection* connection);
  /// origin's list, made empty the first time. The last one asked for is kept aside: a worker
  /// sends most of its requests to one or a few origins, and comparing the origin costs less than
  /// hashing it twice a request. The map's elements never move and are never erased.
  idle_list& list_of(const std::string& origin);

  boost::asio::io_context& io_;
  boost::asio::detail::epoll_reactor* reactor_;
  std::size_t max_idle_;
  std::chrono::seconds max_age_;
  std::uint64_t parkings_ = 0;
  std::unordered_map<std::string, idle_list> idle_;
  const std::string* last_origin_ = nullptr;  // list_of's last answer, and its key
  idle_list* last_list_ = nullptr;
};

}  // namespace tollgate::adapters
