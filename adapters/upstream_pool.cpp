#include "adapters/upstream_pool.hpp"

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <type_traits>

#include <sys/socket.h>

#include "adapters/edge_read.hpp"

namespace tollgate::adapters {

namespace net = boost::asio;
using clock = std::chrono::steady_clock;

namespace {
/// steady_clock's time (both are CLOCK_MONOTONIC) at the kernel tick's resolution: idle ages are
/// seconds, and this reading costs a quarter of a fine one, which each request's put would pay.
clock::time_point coarse_now() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return clock::time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
}
}  // namespace

upstream_pool::upstream_pool(net::io_context& io, std::size_t max_idle, std::chrono::seconds max_age)
    : io_(io), reactor_(&edge_reactor(io)), max_idle_(max_idle), max_age_(max_age) {
  static_assert(std::is_same_v<net::detail::reactor, net::detail::epoll_reactor>, "Asio's reactor is epoll's here");
}

upstream_pool::~upstream_pool() {
  for (auto& [origin, list] : idle_) {
    for (auto& c : list) {
      c->parking = 0;
      boost::system::error_code ignored;
      c->socket.close(ignored);
    }
  }
}

upstream_pool::idle_list& upstream_pool::list_of(const std::string& origin) {
  if (last_list_ != nullptr && *last_origin_ == origin) return *last_list_;
  const auto it = idle_.try_emplace(origin).first;
  last_origin_ = &it->first;
  last_list_ = &it->second;
  return it->second;
}

std::shared_ptr<upstream_connection> upstream_pool::take(const std::string& origin) {
  idle_list& list = list_of(origin);
  while (!list.empty()) {
    std::shared_ptr<upstream_connection> c = std::move(list.back());
    list.pop_back();
    c->parking = 0;
    if (!c->watched) return c;  // parked since the last heartbeat: just used, and taken at once
    // Idle for a heartbeat or more. Its peek stops (the handler runs later with
    // operation_aborted and does nothing), and since that peek may have completed without its
    // handler having run yet, one non-blocking look tells whether the server closed the
    // connection or sent something unasked (a 408 after its idle timeout): then it is not used.
    c->watched = false;
    boost::system::error_code ignored;
    c->socket.cancel(ignored);
    char probe;
    const auto n = ::recv(c->socket.native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return c;
    c->socket.close(ignored);
  }
  return nullptr;
}

void upstream_pool::put(const std::string& origin, std::shared_ptr<upstream_connection> connection) {
  idle_list& list = list_of(origin);
  if (list.size() >= max_idle_) {
    list.front()->parking = 0;
    boost::system::error_code ignored;
    list.front()->socket.close(ignored);
    list.erase(list.begin());
  }
  connection->reused = true;
  connection->idle_since = coarse_now();
  connection->parking = ++parkings_;
  list.push_back(std::move(connection));
}

void upstream_pool::watch_idle() {
  const auto now = coarse_now();
  for (auto& [origin, list] : idle_) {
    // Oldest first: those past max_age are closed.
    std::size_t old = 0;
    while (old < list.size() && now - list[old]->idle_since > max_age_) ++old;
    for (std::size_t i = 0; i < old; ++i) {
      list[i]->parking = 0;
      boost::system::error_code ignored;
      list[i]->socket.close(ignored);
    }
    list.erase(list.begin(), list.begin() + static_cast<std::ptrdiff_t>(old));
    for (const auto& c : list) {
      if (!c->watched) watch(origin, c);
    }
  }
}

void upstream_pool::watch(const std::string& origin, const std::shared_ptr<upstream_connection>& connection) {
  upstream_connection& c = *connection;
  c.watched = true;
  const std::uint64_t parking = c.parking;
  std::weak_ptr<upstream_connection> weak = connection;
  c.socket.async_receive(net::buffer(c.peek), net::ip::tcp::socket::message_peek,
                         [this, weak, parking, origin](boost::system::error_code ec, std::size_t) {
                           if (ec == net::error::operation_aborted) return;
                           auto c = weak.lock();
                           // Taken (and maybe parked again) since: the wake-up is not about this stay.
                           if (!c || c->parking != parking) return;
                           // Readable while idle: the server closed it, or sent bytes nobody asked for.
                           drop(origin, c.get());
                         });
}

void upstream_pool::drop(const std::string& origin, const upstream_connection* connection) {
  auto it = idle_.find(origin);
  if (it == idle_.end()) return;
  idle_list& list = it->second;
  auto pos = std::find_if(list.begin(), list.end(), [&](const auto& c) { return c.get() == connection; });
  if (pos == list.end()) return;
  (*pos)->parking = 0;
  boost::system::error_code ignored;
  (*pos)->socket.close(ignored);
  list.erase(pos);
}

std::size_t upstream_pool::idle() const {
  std::size_t n = 0;
  for (const auto& [origin, list] : idle_) n += list.size();
  return n;
}

}  // namespace tollgate::adapters
