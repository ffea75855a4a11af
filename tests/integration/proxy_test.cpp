// The gateway over real sockets: a fake upstream on a loopback port, the gateway in front of it,
// and a real HTTP client.
#include <catch2/catch.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

#include <nlohmann/json.hpp>

#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "tests/integration/gateway_fixture.hpp"

using namespace tollgate::test;
using json = nlohmann::json;

namespace {

const std::string chat_body = R"({"model":"chat-public","messages":[{"role":"user","content":"hello there"}]})";

void require_openai_error(const http_result& r, long status, const std::string& code) {
  INFO(r.body);
  REQUIRE(r.status == status);
  const json body = json::parse(r.body);
  REQUIRE(body.contains("error"));
  CHECK(body["error"]["message"].is_string());
  CHECK(!body["error"]["message"].get<std::string>().empty());
  CHECK(body["error"]["type"].is_string());
  CHECK(body["error"]["code"] == code);
  CHECK(r.headers.count("x-request-id") == 1);
}

}  // namespace

TEST_CASE("health endpoints answer without a key", "[integration]") {
  gateway_fixture f;
  http_client c;
  auto h = c.get(f.base + "/healthz");
  CHECK(h.status == 200);
  CHECK(json::parse(h.body)["status"] == "ok");
  CHECK(h.headers.count("x-request-id") == 1);
  auto r = c.get(f.base + "/readyz");
  CHECK(r.status == 200);
}

TEST_CASE("a key is required: Bearer or x-api-key", "[integration][auth]") {
  gateway_fixture f;
  http_client c;
  const std::string url = f.base + "/v1/chat/completions";
  require_openai_error(c.post(url, chat_body), 401, "invalid_api_key");
  http_options wrong;
  wrong.headers = {"Authorization: Bearer tg-not-a-key"};
  require_openai_error(c.post(url, chat_body, wrong), 401, "invalid_api_key");
  http_options other;
  other.headers = {"x-api-key: tg-test-client-key"};
  CHECK(c.post(url, chat_body, other).status == 200);
  CHECK(c.post(url, chat_body, gateway_fixture::auth()).status == 200);
  require_openai_error(c.get(f.base + "/v1/models"), 401, "invalid_api_key");
  CHECK(f.a.request_count() == 2);  // rejected calls never reach an upstream
}

TEST_CASE("models lists exact names and aliases", "[integration]") {
  gateway_fixture f;
  http_client c;
  auto r = c.get(f.base + "/v1/models", gateway_fixture::auth());
  REQUIRE(r.status == 200);
  const json body = json::parse(r.body);
  CHECK(body["object"] == "list");
  std::vector<std::string> ids;
  for (const auto& m : body["data"]) ids.push_back(m["id"]);
  CHECK(ids == std::vector<std::string>{"chat-public", "chat-alias", "failover-public"});
}

TEST_CASE("chat is proxied with the model rewritten and the upstream's own key", "[integration]") {
  gateway_fixture f;
  http_client c;
  auto r = c.post(f.base + "/v1/chat/completions", chat_body,
                  gateway_fixture::auth({"X-Request-Id: my-trace-42"}));
  REQUIRE(r.status == 200);
  CHECK(r.headers["x-tollgate-backend"] == "alpha");
  CHECK(r.headers["x-request-id"] == "my-trace-42");
  const json answer = json::parse(r.body);
  CHECK(answer["object"] == "chat.completion");
  CHECK(answer["choices"][0]["message"]["content"] == "echo: hello there");
  // The answer names the model the client asked for; the upstream's name is in a header.
  CHECK(answer["model"] == "chat-public");
  CHECK(r.headers["x-tollgate-upstream-model"] == "upstream-model-a");

  const auto seen = f.a.requests();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].target == "/v1/chat/completions");
  CHECK(json::parse(seen[0].body)["model"] == "upstream-model-a");
  CHECK(seen[0].headers.at("authorization") == std::string("Bearer ") + upstream_key);
  CHECK(seen[0].headers.at("x-request-id") == "my-trace-42");
  for (const auto& [name, value] : seen[0].headers) CHECK(value.find(client_key) == std::string::npos);
}

TEST_CASE("the body passes byte for byte except the model", "[integration]") {
  gateway_fixture f;
  http_client c;
  const std::string before = "{ \"messages\" : [{\"role\":\"user\",\"content\":\"\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 \\u00e9\\n\"}],\n";
  const std::string after =
      "  \"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"model\":\"nested\"}}}],"
      "\"response_format\":{\"type\":\"json_object\"},\"reasoning_effort\":\"high\",\"x_unknown\":[1.50,2e3,null]}";
  const std::string body = before + "\"model\" :  \"chat-alias\"," + after;
  REQUIRE(c.post(f.base + "/v1/chat/completions", body, gateway_fixture::auth()).status == 200);
  const auto seen = f.a.requests();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].body == before + "\"model\" :  \"upstream-model-a\"," + after);
}

TEST_CASE("completions and embeddings are routed too", "[integration]") {
  gateway_fixture f;
  http_client c;
  auto comp = c.post(f.base + "/v1/completions", R"({"model":"chat-public","prompt":"say hi"})", gateway_fixture::auth());
  CHECK(comp.status == 200);
  auto emb = c.post(f.base + "/v1/embeddings", R"({"model":"fam-embed","input":"abc"})", gateway_fixture::auth());
  CHECK(emb.status == 200);
  CHECK(emb.headers["x-tollgate-backend"] == "beta");
  CHECK(json::parse(emb.body)["data"][0]["embedding"].size() == 3);
  REQUIRE(f.a.requests().size() == 1);
  CHECK(f.a.requests()[0].target == "/v1/completions");
  REQUIRE(f.b.requests().size() == 1);
  CHECK(f.b.requests()[0].target == "/v1/embeddings");
  // A wildcard target without a model keeps the name the client sent.
  CHECK(json::parse(f.b.requests()[0].body)["model"] == "fam-embed");
}

TEST_CASE("keep-alive reuses the client connection", "[integration]") {
  gateway_fixture f;
  http_client c;
  auto first = c.post(f.base + "/v1/chat/completions", chat_body, gateway_fixture::auth());
  auto second = c.post(f.base + "/v1/chat/completions", chat_body, gateway_fixture::auth());
  CHECK(first.new_connections == 1);
  CHECK(second.new_connections == 0);
  CHECK(second.status == 200);
}

TEST_CASE("an idle keep-alive connection is closed after server.idle_timeout, a busy one is not",
          "[integration]") {
  std::string y = gateway_fixture::default_yaml();
  const std::string server = "  access_log: off\n";
  y.replace(y.find(server), server.size(), server + "  idle_timeout: 300ms\n");
  gateway_fixture f(y);
  namespace net = boost::asio;
  net::io_context io;
  net::ip::tcp::socket s(io);
  s.connect({net::ip::make_address("127.0.0.1"), f.server->port()});
  // A stream that pauses longer than the idle timeout is a busy connection: it is not cut.
  response_script slow;
  slow.content_type = "text/event-stream";
  slow.chunks = {"data: {\"a\":1}\n\n", "data: [DONE]\n\n"};
  slow.chunk_delay = std::chrono::milliseconds(700);
  f.a.push(slow);
  const std::string body = R"({"model":"chat-public","stream":true,"messages":[]})";
  const std::string request = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                              std::string(client_key) + "\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body;
  net::write(s, net::buffer(request));
  std::string got;
  boost::system::error_code ec;
  const auto sent = std::chrono::steady_clock::now();
  while (got.find("0\r\n\r\n") == std::string::npos && !ec) {
    char buf[4096];
    const std::size_t n = s.read_some(net::buffer(buf), ec);
    got.append(buf, n);
  }
  CHECK(!ec);
  CHECK(got.find("[DONE]") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - sent >= std::chrono::milliseconds(650));
  // Then idle: closed by the gateway within the timeout plus the 250 ms sweep.
  const auto idle_from = std::chrono::steady_clock::now();
  char buf[16];
  s.read_some(net::buffer(buf), ec);
  const auto waited = std::chrono::steady_clock::now() - idle_from;
  CHECK(ec == net::error::eof);
  CHECK(waited >= std::chrono::milliseconds(250));
  CHECK(waited < std::chrono::milliseconds(1500));
}

TEST_CASE("bad requests get OpenAI-shaped errors", "[integration][errors]") {
  gateway_fixture f;
  http_client c;
  const std::string url = f.base + "/v1/chat/completions";
  require_openai_error(c.post(url, "{not json", gateway_fixture::auth()), 400, "invalid_request");
  require_openai_error(c.post(url, R"({"messages":[]})", gateway_fixture::auth()), 400, "invalid_request");
  require_openai_error(c.post(url, R"({"model":"no-such-model","messages":[]})", gateway_fixture::auth()), 404,
                       "model_not_found");
  require_openai_error(c.get(f.base + "/v1/nothing-here", gateway_fixture::auth()), 404, "unknown_url");
  require_openai_error(c.get(url, gateway_fixture::auth()), 405, "method_not_allowed");
  const std::string huge = R"({"model":"chat-public","pad":")" + std::string(70000, 'x') + "\"}";
  require_openai_error(c.post(url, huge, gateway_fixture::auth()), 413, "request_too_large");
  CHECK(f.a.request_count() == 0);
  // The gateway still serves after all of that.
  CHECK(c.post(url, chat_body, gateway_fixture::auth()).status == 200);
}

TEST_CASE("upstream error statuses pass through with their body", "[integration][errors]") {
  gateway_fixture f;
  http_client c;
  response_script limited;
  limited.status = 429;
  limited.headers = {{"Retry-After", "7"}};
  limited.body = R"({"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}})";
  f.a.push(limited);
  auto r = c.post(f.base + "/v1/chat/completions", chat_body, gateway_fixture::auth());
  CHECK(r.status == 429);
  CHECK(r.headers["retry-after"] == "7");
  CHECK(r.body == limited.body);
  CHECK(r.headers["x-tollgate-backend"] == "alpha");
}

TEST_CASE("upstream failures become 502 and 504", "[integration][errors]") {
  gateway_fixture f;
  http_client c;
  const std::string url = f.base + "/v1/chat/completions";

  response_script reset;
  reset.reset_before_headers = true;
  f.a.push(reset);
  require_openai_error(c.post(url, chat_body, gateway_fixture::auth()), 502, "bad_gateway");

  response_script hang;
  hang.hang = true;
  f.a.push(hang);
  require_openai_error(c.post(url, chat_body, gateway_fixture::auth()), 504, "gateway_timeout");
}

TEST_CASE("an unreachable upstream is a 502", "[integration][errors]") {
  // Port 1 on loopback refuses connections.
  gateway_fixture f(fill(gateway_fixture::default_yaml(), "A", "http://127.0.0.1:1/v1"));
  http_client c;
  require_openai_error(c.post(f.base + "/v1/chat/completions", chat_body, gateway_fixture::auth()), 502, "bad_gateway");
}

TEST_CASE("a failure before any byte moves on to the next target", "[integration][failover]") {
  gateway_fixture f;
  http_client c;
  response_script reset;
  reset.reset_before_headers = true;
  f.a.push(reset);
  auto r = c.post(f.base + "/v1/chat/completions", R"({"model":"failover-public","messages":[{"role":"user","content":"x"}]})",
                  gateway_fixture::auth());
  CHECK(r.status == 200);
  CHECK(r.headers["x-tollgate-backend"] == "beta");
  REQUIRE(f.b.requests().size() == 1);
  CHECK(json::parse(f.b.requests()[0].body)["model"] == "model-b");
}

TEST_CASE("streams are relayed as they arrive, not buffered", "[integration][stream]") {
  gateway_fixture f;
  std::mutex m;
  std::condition_variable cv;
  std::string received;
  bool release = false;

  response_script s;
  s.content_type = "text/event-stream";
  s.chunks = {"data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n", "data: [DONE]\n\n"};
  s.before_chunk = [&](std::size_t i) {
    if (i != 1) return;
    // Chunk 1 is not written until the client has seen chunk 0 through the gateway.
    std::unique_lock lock(m);
    cv.wait_for(lock, std::chrono::seconds(5), [&] { return release; });
  };
  f.a.push(s);

  http_options o = gateway_fixture::auth();
  o.on_data = [&](const std::string& piece) {
    std::lock_guard lock(m);
    received += piece;
    if (received.find("{\"n\":1}") != std::string::npos) release = true;
    cv.notify_all();
    return true;
  };
  auto fut = std::async(std::launch::async, [&] {
    http_client c;
    return c.post(f.base + "/v1/chat/completions",
                  R"({"model":"chat-public","stream":true,"messages":[{"role":"user","content":"hi"}]})", o);
  });
  {
    std::unique_lock lock(m);
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(5), [&] { return release; }));
  }
  auto r = fut.get();
  CHECK(r.status == 200);
  CHECK(r.headers["content-type"].find("text/event-stream") == 0);
  CHECK(r.body == "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n");
  CHECK(json::parse(f.a.requests()[0].body)["stream"] == true);
}

TEST_CASE("the default fake stream comes through whole", "[integration][stream]") {
  gateway_fixture f;
  http_client c;
  auto r = c.post(f.base + "/v1/chat/completions",
                  R"({"model":"chat-public","stream":true,"messages":[{"role":"user","content":"one two three"}]})",
                  gateway_fixture::auth());
  REQUIRE(r.status == 200);
  std::string text;
  std::size_t pos = 0;
  int events = 0;
  while ((pos = r.body.find("data: ", pos)) != std::string::npos) {
    const auto end = r.body.find("\n\n", pos);
    const std::string data = r.body.substr(pos + 6, end - pos - 6);
    pos = end;
    ++events;
    if (data == "[DONE]") break;
    const json chunk = json::parse(data);
    CHECK(chunk["model"] == "chat-public");  // every event names the model asked for
    if (!chunk["choices"].empty() && chunk["choices"][0]["delta"].contains("content")) {
      text += chunk["choices"][0]["delta"]["content"].get<std::string>();
    }
  }
  CHECK(text == "echo: one two three");
  CHECK(r.body.ends_with("data: [DONE]\n\n"));
}

TEST_CASE("a stream cut mid-way ends with an error event, never a clean end", "[integration][stream]") {
  gateway_fixture f;
  http_client c;
  response_script s;
  s.content_type = "text/event-stream";
  s.chunks = {"data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n", "data: {\"n\":3}\n\n"};
  s.reset_after_chunks = 2;
  f.a.push(s);
  auto r = c.post(f.base + "/v1/chat/completions",
                  R"({"model":"chat-public","stream":true,"messages":[]})", gateway_fixture::auth());
  CHECK(r.status == 200);
  INFO(r.body);
  CHECK(r.body.starts_with("data: {\"n\":1}\n\ndata: {\"n\":2}\n\n"));
  CHECK(r.body.find("[DONE]") == std::string::npos);
  const auto last = r.body.rfind("data: ");
  const json err = json::parse(r.body.substr(last + 6));
  CHECK(err["error"]["code"] == "bad_gateway");
}

TEST_CASE("a client that leaves cancels the upstream call", "[integration][cancel]") {
  gateway_fixture f;
  response_script s;
  s.content_type = "text/event-stream";
  for (int i = 0; i < 200; ++i) s.chunks.push_back("data: {\"n\":" + std::to_string(i) + "}\n\n");
  s.chunk_delay = std::chrono::milliseconds(20);
  f.a.push(s);
  http_options o = gateway_fixture::auth();
  o.on_data = [](const std::string&) { return false; };  // hang up at the first byte
  http_client c;
  auto r = c.post(f.base + "/v1/chat/completions", R"({"model":"chat-public","stream":true})", o);
  CHECK(!r.error.empty());
  // The upstream sees its connection close long before its 4 s stream would end.
  CHECK(eventually([&] { return f.a.client_aborts() == 1; }));
}

TEST_CASE("a client that leaves while waiting for the first byte cancels too", "[integration][cancel]") {
  gateway_fixture f;
  response_script s;
  s.header_delay = std::chrono::seconds(1);
  s.content_type = "text/event-stream";
  s.chunks = {"data: {}\n\n"};
  f.a.push(s);
  http_options o = gateway_fixture::auth();
  o.timeout_ms = 200;
  http_client c;
  auto r = c.post(f.base + "/v1/chat/completions", R"({"model":"chat-public","stream":true})", o);
  CHECK(!r.error.empty());
  CHECK(eventually([&] { return f.a.client_aborts() == 1; }));
}

TEST_CASE("shutdown lets in-flight requests finish and refuses new ones", "[integration][shutdown]") {
  gateway_fixture f;
  response_script slow;
  slow.header_delay = std::chrono::milliseconds(500);
  slow.body = R"({"ok":true})";
  f.a.push(slow);
  auto in_flight = std::async(std::launch::async, [&] {
    http_client c;
    return c.post(f.base + "/v1/chat/completions", chat_body, gateway_fixture::auth());
  });
  REQUIRE(eventually([&] { return f.a.request_count() == 1; }));
  const auto cut = f.server->shutdown(std::chrono::seconds(5));
  CHECK(cut == 0);
  auto r = in_flight.get();
  CHECK(r.status == 200);
  CHECK(r.body == R"({"ok":true})");
  http_client late;
  CHECK(late.get(f.base + "/healthz").status == 0);
}

TEST_CASE("shutdown answers a request whose body is still arriving when the drain begins", "[integration][shutdown]") {
  // Such a request is not counted in flight yet (its body is being read): the drain waits for
  // its connection too, instead of closing it once nothing is counted. Expect: 100-continue
  // shows when the gateway has read the head and waits for the body.
  gateway_fixture f;
  response_script ok;
  ok.body = R"({"ok":true})";
  f.a.push(ok);
  namespace net = boost::asio;
  net::io_context io;
  net::ip::tcp::socket s(io);
  s.connect({net::ip::make_address("127.0.0.1"), f.server->port()});
  const std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                           std::string(client_key) + "\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n" +
                           "Content-Length: " + std::to_string(chat_body.size()) + "\r\n\r\n";
  net::write(s, net::buffer(head));
  std::string got;
  boost::system::error_code ec;
  while (got.find("\r\n\r\n") == std::string::npos && !ec) {
    char buf[256];
    const std::size_t n = s.read_some(net::buffer(buf), ec);
    got.append(buf, n);
  }
  REQUIRE(got.starts_with("HTTP/1.1 100"));
  auto cut = std::async(std::launch::async, [&] { return f.server->shutdown(std::chrono::seconds(5)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  net::write(s, net::buffer(chat_body));
  got.clear();
  while (!ec) {
    char buf[4096];
    const std::size_t n = s.read_some(net::buffer(buf), ec);
    got.append(buf, n);
  }
  INFO(got);
  CHECK(got.starts_with("HTTP/1.1 200"));
  CHECK(got.find(R"({"ok":true})") != std::string::npos);
  CHECK(cut.get() == 0);
}
