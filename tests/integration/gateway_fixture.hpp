// A running gateway on a loopback port in front of fake upstreams, for integration tests.
#pragma once

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "config/config.hpp"
#include "gateway/observability/health_prober.hpp"
#include "gateway/server/runtime.hpp"
#include "gateway/server/server.hpp"
#include "tests/support/eventually.hpp"
#include "tests/support/fake_upstream.hpp"
#include "tests/support/http_client.hpp"

namespace tollgate::test {

inline constexpr const char* client_key = "tg-test-client-key";
/// A literal rather than "Authorization: Bearer " + client_key: GCC 12 at -O2 reports a false
/// -Warray-bounds on that concatenation.
inline constexpr const char* client_auth_header = "Authorization: Bearer tg-test-client-key";
static_assert(std::string_view(client_auth_header).ends_with(client_key));
inline constexpr const char* upstream_key = "sk-upstream-secret";


/// Replaces every "{NAME}" in text.
inline std::string fill(std::string text, const std::string& name, const std::string& value) {
  const std::string token = "{" + name + "}";
  for (auto pos = text.find(token); pos != std::string::npos; pos = text.find(token, pos + value.size())) {
    text.replace(pos, token.size(), value);
  }
  return text;
}

/// Two fake upstreams (a and b) and a gateway routing to them. yaml may use {A} and {B} for the
/// fakes' base URLs; without yaml a default config is used.
struct gateway_fixture {
  fake_upstream a;
  fake_upstream b;
  gateway::lasting_state lasting;
  std::unique_ptr<gateway::server> server;
  std::unique_ptr<gateway::health_prober> prober;  // declared after server: stops first
  std::string base;  ///< "http://127.0.0.1:PORT"

  explicit gateway_fixture(std::string yaml = {}) {
    if (yaml.empty()) yaml = default_yaml();
    yaml = fill(fill(std::move(yaml), "A", a.base_url()), "B", b.base_url());
    auto loaded = config::load_string(yaml, "test.yaml", [](const std::string&) { return std::nullopt; });
    if (!loaded.value) {
      for (const auto& p : loaded.problems) UNSCOPED_INFO(p.to_string());
      FAIL("test config does not load");
    }
    // The same tests run once more over libcurl (see tests/CMakeLists.txt): plain-http fakes
    // would otherwise always get the built-in client.
    if (const char* transport = std::getenv("TOLLGATE_TEST_TRANSPORT")) {
      for (auto& b : loaded.value->backends) {
        if (auto* remote = b.remote()) remote->transport = transport;
      }
    }
    const auto workers = gateway::worker_count(loaded.value->server);
    auto rt = std::make_shared<const gateway::runtime>(std::move(*loaded.value), lasting, workers);
    server = std::make_unique<gateway::server>(rt);
 server->start();
    prober = std::make_unique<gateway::health_prober>(server->shared(), lasting.health);
    prober->start();
    base = "http://127.0.0.1:" + std::to_string(server->port());
  }

  static std::string default_yaml() {
    return R"(
server:
  listen: 127.0.0.1:0
  threads: 2
  max_body_bytes: 65536
  access_log: off
keys:
  - name: tester
    key: tg-test-client-key
backends:
  - name: alpha
    kind: openai
    base_url: {A}
    api_key: sk-upstream-secret
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
  - name: beta
    kind: openai
    base_url: {B}
    api_key: sk-beta-secret
    timeouts: {connect: 1s, first_token: 2s, idle: 2s, total: 20s}
routes:
  - model: chat-public
    aliases: [chat-alias]
    targets:
      - backend: alpha
        model: upstream-model-a
  - model: failover-public
    targets:
      - backend: alpha
        model: model-a
      - backend: beta
        model: model-b
  - model: fam-*
    targets:
      - backend: beta
)";
  }

  static http_options auth(std::vector<std::string> extra = {}) {
    http_options o;
    o.headers = std::move(extra);
    o.headers.emplace_back(client_auth_header);
    return o;
  }
};

}  // namespace tollgate::test
