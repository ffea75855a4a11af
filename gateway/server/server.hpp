// The listening process: one worker per thread, each with its own io_context, its own acceptor on
// the shared port (SO_REUSEPORT) and its own libcurl multi handle. A connection lives on one
// worker from accept to close, so the request path never synchronises with other threads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "gateway/observability/access_log.hpp"
#include "gateway/accounting/token_counter.hpp"
#include "gateway/accounting/ledger.hpp"
#include "gateway/observability/metrics.hpp"
#include "gateway/server/runtime.hpp"

namespace tollgate::gateway {

class worker;
class store;
class token_counter;

/// State every worker reads. The runtime pointer is swapped whole, never edited.
struct server_shared {
  std::atomic<std::shared_ptr<const runtime>> current;
  std::atomic<bool> draining{false};
  std::atomic<std::int64_t> open_sessions{0};
  std::atomic<std::int64_t> in_flight{0};  ///< requests being handled
  std::unique_ptr<access_log> log;
  std::unique_ptr<gateway_metrics> metrics;
  std::unique_ptr<usage_ledger> ledger;  ///< null without store.sqlite
  std::unique_ptr<store> keys_store;     ///< null without store.sqlite
  /// Counts tokens the upstreams did not report, off the workers (metering.count_threads).
  std::unique_ptr<token_counter> counter;
  std::atomic<std::shared_ptr<const key_table>> keys;
  std::atomic<std::int64_t> keys_version{-1};  ///< the store's, when keys was built

  /// Builds the key table again from the current config's keys and the store's, and seeds each
  /// budget's spend for its period from the ledger. Thread-safe. Throws store_error.
  void refresh_keys();
  /// refresh_keys() when the store's keys changed (another process may have changed them).
  void refresh_keys_if_changed();

 private:
  std::mutex refresh_mutex_;
};

class server {
 public:
  /// Binds the listen address from the config and opens the ledger's database. Throws
  /// std::system_error or std::runtime_error when it cannot.
  explicit server(std::shared_ptr<const runtime> rt);
  ~server();  ///< stops at once if still running
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  std::uint16_t port() const { return port_; }
  /// Starts the worker threads.
  void start();
  /// Stops accepting, closes idle connections, lets in-flight requests finish for up to timeout,
  /// then stops every worker. Blocks until done. Returns the number of requests cut off.
  std::int64_t shutdown(std::chrono::milliseconds timeout);

  server_shared& shared() { return shared_; }

 private:
  server_shared shared_;
  std::vector<std::unique_ptr<worker>> workers_;
  std::uint16_t port_ = 0;
  bool stopped_ = false;
  int listen_lock_ = -1;  // holds the listen address against a second process (see the constructor)
};

}  // namespace tollgate::gateway
