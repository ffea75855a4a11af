// Config reload: a new runtime snapshot swapped in while requests are in flight.
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>

#include "tests/integration/gateway_fixture.hpp"

using namespace tollgate::test;

namespace {

std::shared_ptr<const tollgate::gateway::runtime> build(gateway_fixture& f, const std::string& yaml) {
  auto loaded = tollgate::config::load_string(fill(fill(yaml, "A", f.a.base_url()), "B", f.b.base_url()), "r.yaml",
                                              [](const std::string&) { return std::nullopt; });
  REQUIRE(loaded.value);
  return std::make_shared<const tollgate::gateway::runtime>(std::move(*loaded.value), f.lasting, 2);
}

}  // namespace

TEST_CASE("reloading under load loses no request", "[reload]") {
  gateway_fixture f;
  const std::string base = gateway_fixture::default_yaml();
  // The second config moves chat-public to beta and adds a model.
  std::string moved = base;
  moved.replace(moved.find("      - backend: alpha\n        model: upstream-model-a"),
                std::string("      - backend: alpha\n        model: upstream-model-a").size(),
                "      - backend: beta\n        model: upstream-model-b");
  moved += "  - model: added-later\n    targets:\n      - backend: beta\n";
  auto first = build(f, base);
  auto second = build(f, moved);

  std::atomic<int> ok{0}, failed{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int t = 0; t < 3; ++t) {
    clients.emplace_back([&, t] {
      http_client c;
      const std::string body = std::string(R"({"model":"chat-public","stream":)") + (t == 0 ? "true" : "false") +
                               R"(,"messages":[{"role":"user","content":"x"}]})";
      while (!stop) {
        auto r = c.post(f.base + "/v1/chat/completions", body, gateway_fixture::auth());
        (r.status == 200 && r.body.find("\"error\"") == std::string::npos ? ok : failed)++;
      }
    });
  }
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    f.server->shared().current.store(i % 2 == 0 ? second : first);
  }
  stop = true;
  for (auto& t : clients) t.join();
  INFO("ok " << ok << " failed " << failed);
  CHECK(failed == 0);
  CHECK(ok > 50);
  CHECK(f.a.request_count() > 0);
  CHECK(f.b.request_count() > 0);  // both configs served traffic

  http_client c;
  f.server->shared().current.store(second);
  auto r = c.post(f.base + "/v1/chat/completions", R"({"model":"added-later","messages":[]})", gateway_fixture::auth());
  CHECK(r.status == 200);
  CHECK(r.headers["x-tollgate-backend"] == "beta");
}
