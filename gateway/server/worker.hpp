// One thread's share of the server: an io_context, an acceptor, a libcurl multi handle and a pool
// of idle upstream connections.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <thread>

#include "adapters/backend.hpp"
#include "adapters/curl_multi.hpp"
#include "adapters/upstream_pool.hpp"

namespace tollgate::gateway {

struct server_shared;

class worker {
 public:
  /// Opens an acceptor on endpoint with SO_REUSEPORT, so that every worker listens on one port.
  worker(server_shared& shared, std::size_t index, const boost::asio::ip::tcp::endpoint& endpoint);
  ~worker();

  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  void start();
  /// Thread-safe: stop accepting and close connections that wait for a request.
  void begin_drain();
  /// Thread-safe: close every connection, give the sessions a moment to unwind (cancelling their
  /// upstream calls), then stop the loop and join the thread.
  void stop();

  // Used by sessions, on this worker's thread only.
  boost::asio::io_context& io() { return *io_; }
  adapters::curl_multi& curl() { return curl_; }
  adapters::upstream_pool& pool() { return pool_; }
  /// What a backend call runs on: this loop, its handles and its list of mailboxes.
  adapters::io_refs io_refs() { return {*io_, curl_, pool_, mailboxes_}; }
  server_shared& shared() { return shared_; }
  std::size_t index() const { return index_; }
  /// Writes a fresh request id ("req_" and 24 hex digits) into id.
  void new_request_id(std::string& id);
  std::uint64_t random() { return rng_(); }

  /// A connection that drain may need to close. Registered for the session's lifetime.
  struct session_entry {
    boost::asio::ip::tcp::socket* socket = nullptr;
    bool idle = false;  ///< waiting for the next request
    /// When the session's current read or write gives up: the heartbeat cancels the socket's I/O
    /// after it. max: no deadline (waiting on an upstream, which has its own timeouts).
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
    /// Run once by the next heartbeat, then cleared (work a session defers to it).
    std::function<void()> on_beat;
  };
  std::list<session_entry>::iterator add_session(boost::asio::ip::tcp::socket* socket);
  void remove_session(std::list<session_entry>::iterator it);

 private:
  void accept_next();
  void beat();

  server_shared& shared_;
  std::size_t index_;
  std::list<session_entry> sessions_;
  std::atomic<std::size_t> session_count_{0};
  // Owned by pointer so that, if sessions fail to unwind at stop, their frames are leaked rather
  // than destroyed after the members they point to.
  std::unique_ptr<boost::asio::io_context> io_;
  adapters::curl_multi curl_;
  adapters::upstream_pool pool_;
  adapters::mailbox_waiters* mailboxes_;  // io_'s, looked up once
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::steady_timer heartbeat_;
  boost::asio::steady_timer accept_pause_;  // accepting again after running out of descriptors
  bool accept_starved_ = false;             // said so once; cleared by the next accepted connection
  /// splitmix64: request ids and routing's random picks need spread, not secrecy, and a draw is
  /// a few instructions (std::mt19937_64's was about 150 a request, with its state refills).
  struct splitmix64 {
    std::uint64_t state;
    std::uint64_t operator()() {
      std::uint64_t z = (state += 0x9e3779b97f4a7c15u);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
      return z ^ (z >> 31);
    }
  };
  splitmix64 rng_;
  std::thread thread_;
};

}  // namespace tollgate::gateway
