#include "gateway/server.hpp"

#include <boost/asio/ip/address.hpp>

#include <thread>

#include "gateway/worker.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
using tcp = net::ip::tcp;

server::server(std::shared_ptr<const runtime> rt) {
  const auto& sc = rt->cfg.server;
  const std::size_t threads = worker_count(sc);
  shared_.log = std::make_unique<access_log>(sc.access_log, threads);
  shared_.metrics = std::make_unique<gateway_metrics>(threads);
  if (!rt->cfg.sqlite_path.empty()) shared_.ledger = std::make_unique<usage_ledger>(rt->cfg.sqlite_path, threads);
  shared_.current.store(rt);

  tcp::endpoint endpoint(net::ip::make_address(sc.listen_host), sc.listen_port);
  workers_.push_back(std::make_unique<worker>(shared_, 0, endpoint));
  // Port 0 picks a free port once; the other workers join that same port.
  port_ = workers_.front()->port();
  endpoint.port(port_);
  for (std::size_t i = 1; i < threads; ++i) workers_.push_back(std::make_unique<worker>(shared_, i, endpoint));
}

server::~server() {
  if (!stopped_) shutdown(std::chrono::milliseconds(0));
}

void server::start() {
  for (auto& w : workers_) w->start();
}

std::int64_t server::shutdown(std::chrono::milliseconds timeout) {
  if (stopped_) return 0;
  stopped_ = true;
  shared_.draining = true;
  for (auto& w : workers_) w->begin_drain();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (shared_.in_flight.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const std::int64_t cut = shared_.in_flight.load();
  for (auto& w : workers_) w->stop();
  if (shared_.log) shared_.log->flush();
  if (shared_.ledger) shared_.ledger->flush();
  return cut;
}

}  // namespace tollgate::gateway
