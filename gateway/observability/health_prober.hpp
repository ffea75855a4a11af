// Active health checks: a GET to each backend that configures health_check, on a thread of its
// own (its own io_context and libcurl multi handle), so probes never share a loop with requests.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>
#include <string>
#include <thread>
#include <unordered_map>

#include "adapters/curl_multi.hpp"
#include "routing/health.hpp"

namespace tollgate::gateway {

struct server_shared;

class health_prober {
 public:
  /// Probes the backends of whatever config is current in shared, re-read on every tick, so a
  /// reload adds, changes and drops probes by itself.
  health_prober(server_shared& shared, routing::health_registry& health);
  ~health_prober();  ///< stops and joins
  health_prober(const health_prober&) = delete;
  health_prober& operator=(const health_prober&) = delete;

  void start();

 private:
  struct probe_state;
  void tick();
  void launch(probe_state& st, const std::string& url, const config::backend_config& b,
              const config::health_check_config& hc, const config::timeouts_config& timeouts);

  server_shared& shared_;
  routing::health_registry& health_;
  boost::asio::io_context io_{1};
  adapters::curl_multi curl_;
  boost::asio::steady_timer timer_;
  std::unordered_map<std::string, std::unique_ptr<probe_state>> states_;  // by backend name
  std::thread thread_;
};

}  // namespace tollgate::gateway
