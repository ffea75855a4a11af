// libcurl's multi interface driven by an Asio io_context: curl tells us which sockets it wants
// watched and when its timer fires; Asio waits on them. No thread per request, and one connection
// cache per worker thread, so upstream connections are reused across requests.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <curl/curl.h>

#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

namespace tollgate::adapters {

/// Not thread-safe: every method is called on the thread that runs the io_context.
class curl_multi {
 public:
  explicit curl_multi(boost::asio::io_context& io);
  ~curl_multi();
  curl_multi(const curl_multi&) = delete;
  curl_multi& operator=(const curl_multi&) = delete;

  /// An easy handle from the pool. It keeps the options of its last use: set every option the
  /// transfer depends on.
  CURL* acquire();
  /// Returns a handle that is no longer attached (see remove()).
  void release(CURL* easy);

  /// Starts the transfer. on_done runs once, from the io_context, when it ends by itself; it is
  /// not called when the transfer is removed first.
  void add(CURL* easy, std::function<void(CURLcode)> on_done);
  /// Stops a running transfer at once. Safe to call for a handle that already finished.
  void remove(CURL* easy);

  std::size_t active() const { return done_.size(); }

 private:
  struct socket_state;
  static int on_socket(CURL* easy, curl_socket_t fd, int what, void* self, void* socket_ptr);
  static int on_timer(CURLM* multi, long timeout_ms, void* self);
  static int on_close_socket(void* self, curl_socket_t fd);
  void arm(const std::shared_ptr<socket_state>& state);
  void action(curl_socket_t fd, int mask);
  void drain_messages();
  void schedule_tick();

  boost::asio::io_context& io_;
  CURLM* multi_;
  // curl moves its timeout on nearly every call. An Asio timer that becomes the earliest costs a
  // timerfd_settime per move, so only short timeouts use timer_; "now" is posted, and long ones
  // (connect, total) are checked by a coarse tick.
  boost::asio::steady_timer timer_;
  boost::asio::steady_timer tick_;
  std::chrono::steady_clock::time_point deadline_ = std::chrono::steady_clock::time_point::max();
  bool tick_armed_ = false;
  bool posted_ = false;
  std::unordered_map<curl_socket_t, std::shared_ptr<socket_state>> sockets_;
  std::unordered_map<CURL*, std::function<void(CURLcode)>> done_;
  std::vector<CURL*> pool_;
};

}  // namespace tollgate::adapters
