#include "adapters/upstream_pool.hpp"

#include <algorithm>

namespace tollgate::adapters {

namespace net = boost::asio;
using clock = std::chrono::steady_clock;

upstream_pool::upstream_pool(net::io_context& io, std::size_t max_idle, std::chrono::seconds max_age)
    : io_(io), max_idle_(max_idle), max_age_(max_age) {}

upstream_pool::~upstream_pool() {
  for (auto& [origin, list] : idle_) {
    for (auto& c : list) {
      c->parking = 0;
      boost::system::error_code ignored;
      c->socket.close(ignored);
    }
  }
}

std::shared_ptr<upstream_connection> upstream_pool::take(const std::string& origin) {
  auto it = idle_.find(origin);
  if (it == idle_.end()) return nullptr;
  idle_list& list = it->second;
  const auto now = clock::now();
  while (!list.empty()) {
    std::shared_ptr<upstream_connection> c = std::move(list.back());
    list.pop_back();
    c->parking = 0;
    boost::system::error_code ignored;
    if (now - c->idle_since > max_age_) {
      // The newest is too old, so all of them are.
      c->socket.close(ignored);
      for (auto& older : list) {
        older->parking = 0;
        older->socket.close(ignored);
      }
      list.clear();
      return nullptr;
    }
    // Stops the parked wait; its handler runs later with operation_aborted and does nothing.
    c->socket.cancel(ignored);
    return c;
  }
  return nullptr;
}

void upstream_pool::put(const std::string& origin, std::shared_ptr<upstream_connection> connection) {
  idle_list& list = idle_[origin];
  boost::system::error_code ignored;
  if (list.size() >= max_idle_) {
    list.front()->parking = 0;
    list.front()->socket.close(ignored);
    list.erase(list.begin());
  }
  upstream_connection& c = *connection;
  c.reused = true;
  c.idle_since = clock::now();
  c.parking = ++parkings_;
  const std::uint64_t parking = c.parking;
  std::weak_ptr<upstream_connection> weak = connection;
  list.push_back(std::move(connection));
  c.socket.async_wait(net::ip::tcp::socket::wait_read, [this, weak, parking, origin](boost::system::error_code ec) {
    if (ec == net::error::operation_aborted) return;
    auto c = weak.lock();
    // Taken (and maybe parked again) since this wait began: the wake-up is not about this stay.
    if (!c || c->parking != parking) return;
    // Readable while idle: the server closed the connection, or sent bytes nobody asked for.
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
