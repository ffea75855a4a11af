#include "gateway/server/server.hpp"

#include <boost/asio/ip/address.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <system_error>
#include <thread>

#include "gateway/server/worker.hpp"

#include "gateway/keys/key_table.hpp"
#include "gateway/keys/pg_store.hpp"
#include "gateway/keys/store.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
using tcp = net::ip::tcp;

server::server(std::shared_ptr<const runtime> rt) {
  const auto& sc = rt->cfg.server;
  const std::size_t threads = worker_count(sc);
  shared_.log = std::make_unique<access_log>(sc.access_log, threads, sc.access_log_skip);
  shared_.metrics = std::make_unique<gateway_metrics>(threads);
  shared_.counter = std::make_unique<token_counter>(rt->cfg.count_threads, rt->cfg.count_queue);
  if (!rt->cfg.sqlite_path.empty()) {
    shared_.keys_store = open_sqlite_store(rt->cfg.sqlite_path);
    shared_.ledger = std::make_unique<usage_ledger>(rt->cfg.sqlite_path, threads, std::chrono::seconds(5),
                                                    rt->cfg.ledger_flush_interval);
  } else if (!rt->cfg.postgres_url.empty()) {
    // Keys must be readable to start; the ledger rides out outages on its local spool.
    shared_.keys_store = open_postgres_store(rt->cfg.postgres_url);
    shared_.ledger = std::make_unique<usage_ledger>(open_postgres_ledger_sink(rt->cfg.postgres_url), threads,
                                                    rt->cfg.ledger_flush_interval, rt->cfg.spool_dir);
  }
  shared_.current.store(rt);
  shared_.refresh_keys();

  tcp::endpoint endpoint(net::ip::make_address(sc.listen_host), sc.listen_port);
  // Workers share the port through SO_REUSEPORT, which would as gladly let a second tollgate (same
  // user) join it and take half the traffic. So the address is claimed first, in two ways: a bind
  // without SO_REUSEPORT fails while anything listens there, and a lock named after the address
  // (an abstract Unix socket, freed by the kernel when the process ends) stops two processes that
  // start at the same moment. Port 0 picks a fresh port, which nobody else can be using.
  if (sc.listen_port != 0) {
    net::io_context probe_io;
    tcp::acceptor probe(probe_io);
    probe.open(endpoint.protocol());
    probe.set_option(tcp::acceptor::reuse_address(true));
    probe.bind(endpoint);  // throws "Address already in use"
    probe.close();
    listen_lock_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_lock_ < 0) throw std::system_error(errno, std::generic_category(), "listen lock");
    const std::string name = "tollgate-listen " + endpoint.address().to_string() + " " + std::to_string(sc.listen_port);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const std::size_t n = std::min(name.size(), sizeof a.sun_path - 1);
    std::memcpy(a.sun_path + 1, name.data(), n);  // sun_path[0] stays NUL: the abstract namespace
    if (::bind(listen_lock_, reinterpret_cast<sockaddr*>(&a), static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n)) != 0) {
      const int err = errno;
      ::close(listen_lock_);
      listen_lock_ = -1;
      throw std::system_error(err, std::generic_category(), "another process is starting on this address");
    }
  }
  try {
    workers_.push_back(std::make_unique<worker>(shared_, 0, endpoint));
    // Port 0 picks a free port once; the other workers join that same port.
    port_ = workers_.front()->port();
    endpoint.port(port_);
    for (std::size_t i = 1; i < threads; ++i) workers_.push_back(std::make_unique<worker>(shared_, i, endpoint));
  } catch (...) {
    if (listen_lock_ >= 0) ::close(listen_lock_);  // no destructor runs for a constructor that throws
    throw;
  }
}

void server_shared::refresh_keys() {
  std::lock_guard lock(refresh_mutex_);
  const auto rt = current.load();
  std::vector<stored_key> stored;
  std::int64_t version = 0;
  if (keys_store) {
    version = keys_store->keys_version();
    stored = keys_store->keys(false);
  }
  auto table = std::make_shared<const key_table>(rt->cfg.keys, stored, rt->lasting->keys);
  // A budget's period starts from what the ledger holds for it (the spend before a restart).
  const std::int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  for (const auto& p : table->all()) {
    if (p.key->budget <= 0) continue;
    const auto [start, end] = budget_period_bounds(p.key->budget_period, now_ms);
    std::lock_guard state_lock(p.state->mutex);
    if (p.state->period_start_ms == start && p.state->period_end_ms == end) continue;
    if (ledger) ledger->flush();
    p.state->spent = keys_store ? keys_store->spent_since(p.key_name, start) : 0;
    p.state->period_start_ms = start;
    p.state->period_end_ms = end;
  }
  keys.store(std::move(table));
  keys_version = version;
}

void server_shared::refresh_keys_if_changed() {
  if (!keys_store) return;
  if (keys_store->keys_version() != keys_version.load()) refresh_keys();
}

server::~server() {
  if (!stopped_) shutdown(std::chrono::milliseconds(0));
  if (listen_lock_ >= 0) ::close(listen_lock_);
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
  // Every connection is waited for, not only the requests counted in flight: the drain reaches a
  // worker's loop after this wait begins, and a request read before that (in flight a moment
  // later) or a body still being read is not counted yet. Idle connections end at the drain.
  while ((shared_.in_flight.load() > 0 || shared_.open_sessions.load() > 0) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const std::int64_t cut = shared_.in_flight.load();
  // Counts still waiting are estimated and handed to their workers' loops, which still run.
  shared_.counter->stop();
  for (auto& w : workers_) w->stop();
  if (shared_.log) shared_.log->flush();
  if (shared_.ledger) shared_.ledger->flush();
  return cut;
}

}  // namespace tollgate::gateway
