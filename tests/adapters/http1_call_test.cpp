// The built-in HTTP/1.1 client, driven directly through the backend interface against the fake
// upstream and against raw sockets that answer with hand-written bytes.
#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <functional>
#include <thread>

#include "adapters/curl_multi.hpp"
#include "adapters/openai_backend.hpp"
#include "adapters/upstream_pool.hpp"
#include "tests/support/eventually.hpp"
#include "tests/support/fake_upstream.hpp"
#include "tests/support/raw_server.hpp"

using namespace tollgate::adapters;
using tollgate::test::fake_upstream;
using tollgate::test::response_script;
using tollgate::test::raw_server;
using tollgate::test::read_request;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

using tollgate::config::backend_config;


backend_config native_backend(const std::string& base_url) {
  backend_config c;
  c.name = "native";
  auto& remote = c.settings.emplace<tollgate::config::openai_backend_config>();
  remote.base_url = base_url;
  remote.api_key = "sk-native";
  remote.headers["X-Team"] = "search";
  remote.transport = "native";
  c.timeouts.connect = std::chrono::seconds(1);
  c.timeouts.first_token = std::chrono::seconds(2);
  c.timeouts.idle = std::chrono::seconds(2);
  c.timeouts.total = std::chrono::seconds(10);
  return c;
}

struct outcome {
  int status = 0;
  std::string content_type;
  std::string body;
  std::vector<std::string> pieces;
  call_event::kind last = call_event::kind::head;
  failure error = failure::none;
  std::string message;
};

upstream_request chat(bool stream = false, std::string body = R"({"model":"m","messages":[]})") {
  upstream_request r;
  r.path = "/chat/completions";
  r.body = std::move(body);
  r.stream = stream;
  r.request_id = "req_test";
  return r;
}

/// One loop with its own connection pool: requests run one after another on it, so a kept-alive
/// connection can carry the next one.
struct client {
  explicit client(std::chrono::seconds max_age = std::chrono::seconds(60)) : pool(io, 256, max_age) {}
  net::io_context io;
  curl_multi curl{io};
  upstream_pool pool;

  /// before_read: awaited before the first next(), to let the transfer run ahead of its reader.
  outcome run(const backend& b, upstream_request r, std::chrono::milliseconds before_read = {},
              std::function<bool(const call_event&)> keep_going = {}) {
    outcome out;
    net::co_spawn(
        io,
        [&]() -> net::awaitable<void> {
          auto c = b.start(std::move(r), {io, curl, pool});
          if (before_read.count() > 0) {
            net::steady_timer t(io);
            t.expires_after(before_read);
            co_await t.async_wait(net::use_awaitable);
          }
          for (;;) {
            call_event ev = co_await c->next();
            out.last = ev.type;
            if (ev.type == call_event::kind::head) {
              out.status = ev.head.status;
              if (auto t = ev.head.find("content-type")) out.content_type = *t;
            } else if (ev.type == call_event::kind::data) {
              out.body += ev.data;
              out.pieces.push_back(ev.data);
            } else {
              out.error = ev.error;
              out.message = ev.message;
              break;
            }
            if (keep_going && !keep_going(ev)) {
              c->cancel();
              call_event after = co_await c->next();
              out.last = after.type;
              out.error = after.error;
              break;
            }
          }
        },
        net::detached);
    io.restart();
    // Run until this request ended; parked connections keep their waits, so run() would not return.
    while (out.last != call_event::kind::end && out.last != call_event::kind::failed) io.run_one();
    io.poll();
    return out;
  }
};

}  // namespace

TEST_CASE("native client: the request carries the backend's headers, and keep-alive reuses one connection",
          "[adapters][native]") {
  fake_upstream up;
  openai_backend b(native_backend(up.base_url()));
  client c;
  for (int i = 0; i < 5; ++i) {
    const auto out = c.run(b, chat());
    REQUIRE(out.last == call_event::kind::end);
    CHECK(out.status == 200);
    CHECK(out.content_type == "application/json");
    CHECK(out.body.find("\"chat.completion\"") != std::string::npos);
  }
  CHECK(up.connection_count() == 1);
  CHECK(c.pool.idle() == 1);
  const auto seen = up.requests();
  REQUIRE(seen.size() == 5);
  CHECK(seen[0].method == "POST");
  CHECK(seen[0].target == "/v1/chat/completions");
  CHECK(seen[0].body == R"({"model":"m","messages":[]})");
  CHECK(seen[0].headers.at("authorization") == "Bearer sk-native");
  CHECK(seen[0].headers.at("x-team") == "search");
  CHECK(seen[0].headers.at("x-request-id") == "req_test");
  CHECK(seen[0].headers.at("content-type") == "application/json");
  CHECK(seen[0].headers.at("accept") == "application/json");
  CHECK(seen[0].headers.at("host") == "127.0.0.1:" + std::to_string(up.port()));
}

TEST_CASE("native client: a chunked stream arrives in order, as it is sent", "[adapters][native]") {
  fake_upstream up;
  response_script s;
  s.content_type = "text/event-stream";
  s.chunks = {"data: {\"a\":1}\n\n", "data: {\"b\":2}\n\n", "data: [DONE]\n\n"};
  s.chunk_delay = std::chrono::milliseconds(30);
  up.push(s);
  openai_backend b(native_backend(up.base_url()));
  client c;
  const auto out = c.run(b, chat(true));
  REQUIRE(out.last == call_event::kind::end);
  CHECK(out.status == 200);
  CHECK(out.content_type == "text/event-stream");
  CHECK(out.body == s.chunks[0] + s.chunks[1] + s.chunks[2]);
  // With 30 ms between chunks, each one is its own event: nothing waits for the end.
  CHECK(out.pieces.size() == 3);
  CHECK(up.requests().at(0).headers.at("accept") == "text/event-stream");
}

TEST_CASE("native client: a connection the server closed while idle is not used again", "[adapters][native]") {
  fake_upstream up;
  response_script s;
  s.body = R"({"first":true})";
  s.close_after_answer = true;
  openai_backend b(native_backend(up.base_url()));

  SECTION("watched: it leaves the pool as soon as the server closes it") {
    up.push(s);
    client c;
    CHECK(c.run(b, chat()).body == R"({"first":true})");
    REQUIRE(c.pool.idle() == 1);
    c.pool.watch_idle();  // what the worker's heartbeat does
    for (int i = 0; i < 200 && c.pool.idle() > 0; ++i) {
      c.io.restart();
      c.io.run_for(std::chrono::milliseconds(10));
    }
    CHECK(c.pool.idle() == 0);
    CHECK(c.run(b, chat()).status == 200);
  }
  SECTION("not watched yet: the request meets the closed connection and goes again on a new one") {
    up.push(s);
    client c;
    CHECK(c.run(b, chat()).body == R"({"first":true})");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the close has arrived
    const auto second = c.run(b, chat());
    CHECK(second.status == 200);
    CHECK(second.last == call_event::kind::end);
  }
  // Either way nothing was answered on the dead connection, and nothing went twice.
  CHECK(up.request_count() == 2);
  CHECK(up.connection_count() == 2);
}

TEST_CASE("native client: idle connections past their age are closed", "[adapters][native]") {
  fake_upstream up;
  openai_backend b(native_backend(up.base_url()));
  client c(std::chrono::seconds(0));
  REQUIRE(c.run(b, chat()).status == 200);
  REQUIRE(c.pool.idle() == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  c.pool.watch_idle();
  CHECK(c.pool.idle() == 0);
  CHECK(c.run(b, chat()).status == 200);
  CHECK(up.connection_count() == 2);
}

TEST_CASE("native client: a kept-alive connection that drops the request gets one more try on a new one",
          "[adapters][native]") {
  fake_upstream up;
  openai_backend b(native_backend(up.base_url()));
  client c;
  REQUIRE(c.run(b, chat()).status == 200);
  response_script drop;
  drop.reset_before_headers = true;
  up.push(drop);
  const auto out = c.run(b, chat());
  CHECK(out.last == call_event::kind::end);
  CHECK(out.status == 200);
  CHECK(up.request_count() == 3);
  CHECK(up.connection_count() == 2);

  // On a new connection the same failure is the backend's: no second try.
  fake_upstream fresh;
  fresh.push(drop);
  openai_backend fb(native_backend(fresh.base_url()));
  client c2;
  const auto failed = c2.run(fb, chat());
  CHECK(failed.last == call_event::kind::failed);
  CHECK(failed.error == failure::broken);
  CHECK(fresh.request_count() == 1);
}

TEST_CASE("native client: a body that ends with the connection, and a 100 Continue before the answer",
          "[adapters][native]") {
  raw_server close_delimited([](const std::string&) {
    return std::string("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"until\":\"eof\"}");
  });
  client c;
  openai_backend b1(native_backend(close_delimited.base_url()));
  const auto out = c.run(b1, chat());
  CHECK(out.last == call_event::kind::end);
  CHECK(out.body == R"({"until":"eof"})");
  CHECK(c.pool.idle() == 0);  // Connection: close is never parked

  raw_server continued([](const std::string&) {
    return std::string(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\n{}");
  });
  openai_backend b2(native_backend(continued.base_url()));
  const auto limited = c.run(b2, chat());
  CHECK(limited.last == call_event::kind::end);
  CHECK(limited.status == 429);
  CHECK(limited.body == "{}");
}

TEST_CASE("native client: malformed answers, a cut body and a refused connection fail the call",
          "[adapters][native]") {
  client c;
  raw_server garbage([](const std::string&) { return std::string("HTTP/1.1 abc\r\n\r\n"); });
  openai_backend b1(native_backend(garbage.base_url()));
  const auto bad = c.run(b1, chat());
  CHECK(bad.last == call_event::kind::failed);
  CHECK(bad.error == failure::broken);
  CHECK_THAT(bad.message, Catch::Contains("malformed response"));

  raw_server cut([](const std::string&) { return std::string("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\""); });
  openai_backend b2(native_backend(cut.base_url()));
  const auto short_body = c.run(b2, chat());
  CHECK(short_body.status == 200);
  CHECK(short_body.body == "{\"partial\"");
  CHECK(short_body.last == call_event::kind::failed);
  CHECK(short_body.error == failure::broken);

  std::uint16_t closed_port = 0;
  {
    net::io_context io;
    tcp::acceptor a(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    closed_port = a.local_endpoint().port();
  }
  openai_backend b3(native_backend("http://127.0.0.1:" + std::to_string(closed_port) + "/v1"));
  const auto refused = c.run(b3, chat());
  CHECK(refused.last == call_event::kind::failed);
  CHECK(refused.error == failure::connect);
}

TEST_CASE("native client: a host name is resolved, and the base path and request body go as given",
          "[adapters][native]") {
  raw_server echo([](const std::string& request) {
    const std::string body = request.substr(request.find("\r\n\r\n") + 4);
    return "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  });
  auto cfg = native_backend("http://localhost:" + std::to_string(echo.port()) + "/api/openai/v1/");
  openai_backend b(cfg);
  client c;
  const std::string body = "{\"model\":\"m\",\"text\":\"\xe4\xbd\xa0\xe5\xa5\xbd \\u00e9\"}";
  const auto out = c.run(b, chat(false, body));
  REQUIRE(out.last == call_event::kind::end);
  CHECK(out.body == body);
  REQUIRE(echo.requests().size() == 1);
  CHECK(echo.requests()[0].starts_with("POST /api/openai/v1/chat/completions HTTP/1.1\r\n"));
  CHECK(echo.requests()[0].find("Host: localhost:") != std::string::npos);
}

TEST_CASE("native client: a reader that falls behind pauses the upstream and loses nothing", "[adapters][native]") {
  fake_upstream up;
  response_script s;
  s.body = std::string(5 * 1024 * 1024, 'x');
  for (std::size_t i = 0; i < s.body.size(); i += 4093) s.body[i] = static_cast<char>('a' + i % 26);
  up.push(s);
  openai_backend b(native_backend(up.base_url()));
  client c;
  // The reader starts 300 ms late: the transfer must stop at its limit, then resume.
  const auto out = c.run(b, chat(), std::chrono::milliseconds(300));
  REQUIRE(out.last == call_event::kind::end);
  CHECK(out.body.size() == s.body.size());
  CHECK(out.body == s.body);
  CHECK(c.pool.idle() == 1);

  // The same bytes chunked (no length known ahead: they go through the parser and the events).
  response_script chunked;
  for (std::size_t i = 0; i < s.body.size(); i += 64 * 1024) chunked.chunks.push_back(s.body.substr(i, 64 * 1024));
  up.push(chunked);
  const auto late = c.run(b, chat(), std::chrono::milliseconds(300));
  REQUIRE(late.last == call_event::kind::end);
  CHECK(late.body == s.body);
  CHECK(c.pool.idle() == 1);
}

TEST_CASE("native client: a whole answer of a known length comes in one event, and its connection is reused",
          "[adapters][native]") {
  fake_upstream up;
  openai_backend b(native_backend(up.base_url()));
  client c;
  for (const std::size_t size : {std::size_t{2}, std::size_t{100 * 1024}, std::size_t{3 * 1024 * 1024 + 17}}) {
    response_script s;
    s.body = std::string(size, 'y');
    for (std::size_t i = 0; i < s.body.size(); i += 1021) s.body[i] = static_cast<char>('a' + i % 26);
    up.push(s);
    const auto out = c.run(b, chat());
    REQUIRE(out.last == call_event::kind::end);
    CHECK(out.status == 200);
    CHECK(out.body == s.body);
    CHECK(out.pieces.size() == 1);  // read straight into one string, handed over whole
  }
  CHECK(up.connection_count() == 1);
  CHECK(c.pool.idle() == 1);
}

TEST_CASE("native client: a known-length answer that comes slowly restarts the idle wait with each read, and one "
          "that stalls times out with what came",
          "[adapters][native]") {
  net::io_context server_io;
  tcp::acceptor acceptor(server_io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  const std::uint16_t port = acceptor.local_endpoint().port();
  // Two connections: 40 bytes in four writes 100 ms apart, then 40 bytes of which 10 come.
  std::thread server([&] {
    for (int round = 0; round < 2; ++round) {
      tcp::socket s(server_io);
      boost::system::error_code ec;
      acceptor.accept(s, ec);
      if (ec) return;
      read_request(s, ec);
      net::write(s, net::buffer(std::string("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n"
                                            "\r\n0123456789")), ec);
      for (int piece = 1; piece < (round == 0 ? 4 : 1); ++piece) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        net::write(s, net::buffer(std::string(10, static_cast<char>('a' + piece))), ec);
      }
      if (round == 1) std::this_thread::sleep_for(std::chrono::milliseconds(600));
      s.close(ec);
    }
  });
  auto cfg = native_backend("http://127.0.0.1:" + std::to_string(port) + "/v1");
  cfg.timeouts.idle = std::chrono::milliseconds(250);
  openai_backend b(cfg);
  client c;
  const auto slow = c.run(b, chat());
  CHECK(slow.last == call_event::kind::end);
  CHECK(slow.body == "0123456789" + std::string(10, 'b') + std::string(10, 'c') + std::string(10, 'd'));
  // The second goes on the pooled connection, which the server has closed: sent again on a new one.
  const auto stalled = c.run(b, chat());
  CHECK(stalled.last == call_event::kind::failed);
  CHECK(stalled.error == failure::timeout);
  CHECK_THAT(stalled.message, Catch::Contains("idle"));
  CHECK(stalled.body == "0123456789");
  server.join();
}

TEST_CASE("native client: first-token, idle and total timeouts, and cancelling mid-stream", "[adapters][native]") {
  fake_upstream up;
  auto cfg = native_backend(up.base_url());
  cfg.timeouts.first_token = std::chrono::milliseconds(150);
  cfg.timeouts.idle = std::chrono::milliseconds(150);
  openai_backend b(cfg);
  client c;

  response_script slow_head;
  slow_head.header_delay = std::chrono::milliseconds(600);
  up.push(slow_head);
  const auto no_head = c.run(b, chat());
  CHECK(no_head.last == call_event::kind::failed);
  CHECK(no_head.error == failure::timeout);
  CHECK_THAT(no_head.message, Catch::Contains("first-token"));

  response_script stall;
  stall.content_type = "text/event-stream";
  stall.chunks = {"data: 1\n\n", "data: 2\n\n"};
  stall.chunk_delay = std::chrono::milliseconds(600);
  up.push(stall);
  const auto idle = c.run(b, chat(true));
  CHECK(idle.status == 200);
  CHECK(idle.body == "data: 1\n\n");
  CHECK(idle.error == failure::timeout);
  CHECK_THAT(idle.message, Catch::Contains("idle"));

  auto total_cfg = native_backend(up.base_url());
  total_cfg.timeouts.total = std::chrono::milliseconds(300);
  openai_backend tb(total_cfg);
  response_script trickle;
  trickle.content_type = "text/event-stream";
  trickle.chunks = std::vector<std::string>(20, "data: x\n\n");
  trickle.chunk_delay = std::chrono::milliseconds(50);
  up.push(trickle);
  const auto total = c.run(tb, chat(true));
  CHECK(total.error == failure::timeout);
  CHECK_THAT(total.message, Catch::Contains("total"));

  response_script endless;
  endless.content_type = "text/event-stream";
  endless.chunks = std::vector<std::string>(50, "data: y\n\n");
  endless.chunk_delay = std::chrono::milliseconds(20);
  up.push(endless);
  const std::size_t aborts_before = up.client_aborts();
  int seen = 0;
  const auto cancelled = c.run(b, chat(true), {}, [&](const call_event& ev) { return ev.type != call_event::kind::data || ++seen < 2; });
  CHECK(cancelled.last == call_event::kind::failed);
  CHECK(cancelled.error == failure::cancelled);
  // The upstream sees its connection go: the rest of the stream is not read.
  CHECK(tollgate::test::eventually([&] { return up.client_aborts() > aborts_before; }));
}

TEST_CASE("native client: a stream whose chunks come closer together than the idle timeout outlasts it many times",
          "[adapters][native]") {
  fake_upstream up;
  auto cfg = native_backend(up.base_url());
  cfg.timeouts.idle = std::chrono::milliseconds(300);  // six gaps' worth: a loaded machine's delays fit
  openai_backend b(cfg);
  client c;
  response_script steady_stream;
  steady_stream.content_type = "text/event-stream";
  steady_stream.chunks = std::vector<std::string>(24, "data: z\n\n");
  steady_stream.chunk_delay = std::chrono::milliseconds(50);
  up.push(steady_stream);
  const auto start = std::chrono::steady_clock::now();
  const auto out = c.run(b, chat(true));
  CHECK(out.last == call_event::kind::end);
  CHECK(out.error == failure::none);
  std::string all;
  for (int i = 0; i < 24; ++i) all += "data: z\n\n";
  CHECK(out.body == all);
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(1150));
}

TEST_CASE("upstream headers: a backend's own header replaces the default of that name, on both transports",
          "[adapters][native]") {
  fake_upstream up;
  for (const std::string transport : {"native", "curl"}) {
    INFO(transport);
    auto cfg = native_backend(up.base_url());
    cfg.remote()->transport = transport;
    cfg.remote()->headers.clear();
    cfg.remote()->headers["authorization"] = "Token abc";
    cfg.remote()->headers["User-Agent"] = "team-app/2";
    cfg.remote()->headers["Host"] = "api.internal";
    openai_backend b(cfg);
    client c;
    REQUIRE(c.run(b, chat()).status == 200);
    const auto seen = up.requests().back();
    CHECK(seen.headers.at("authorization") == "Token abc");
    CHECK(seen.headers.at("user-agent") == "team-app/2");
    CHECK(seen.headers.at("host") == "api.internal");
    CHECK(seen.headers.at("content-type") == "application/json");
  }
  // Only one of each went: the fake keeps the last value, so count them in the raw request.
  raw_server raw([](const std::string&) { return std::string("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"); });
  auto cfg = native_backend(raw.base_url());
  cfg.remote()->headers["Authorization"] = "Token abc";
  openai_backend b(cfg);
  client c;
  REQUIRE(c.run(b, chat()).status == 200);
  const std::string& request = raw.requests().at(0);
  CHECK(request.find("Authorization: Token abc\r\n") != std::string::npos);
  CHECK(request.find("Bearer sk-native") == std::string::npos);
}

TEST_CASE("native client: an IPv6 address in brackets", "[adapters][native]") {
  std::unique_ptr<fake_upstream> up;
  try {
    up = std::make_unique<fake_upstream>("::1");
  } catch (const std::exception& e) {
    WARN("no IPv6 loopback here: " << e.what());
    return;
  }
  openai_backend b(native_backend(up->base_url()));
  client c;
  CHECK(c.run(b, chat()).status == 200);
  CHECK(c.run(b, chat()).status == 200);
  CHECK(up->connection_count() == 1);
  CHECK(up->requests().at(0).headers.at("host") == "[::1]:" + std::to_string(up->port()));
}


TEST_CASE("native client: a reused connection that fails long after the send is not tried again",
          "[adapters][native]") {
  fake_upstream up;
  openai_backend b(native_backend(up.base_url()));
  client c;
  REQUIRE(c.run(b, chat()).status == 200);
  // The upstream works on the request for over a second, then drops it: it may have done the work,
  // so the call fails (the route's retry policy decides) instead of sending it again.
  response_script died;
  died.header_delay = std::chrono::milliseconds(1200);
  died.reset_before_headers = true;
  up.push(died);
  const auto out = c.run(b, chat());
  CHECK(out.last == call_event::kind::failed);
  CHECK(out.error == failure::broken);
  CHECK(up.request_count() == 2);
}

TEST_CASE("native client: an answer that comes before the body is sent is relayed, and not pooled",
          "[adapters][native]") {
  // raw_server reads the whole body before answering; this one answers after the head only.
  net::io_context sio;
  tcp::acceptor acceptor(sio, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  std::thread server([&] {
    tcp::socket s(sio);
    acceptor.accept(s);
    std::string in;
    boost::system::error_code ec;
    net::read_until(s, net::dynamic_buffer(in), "\r\n\r\n", ec);
    net::write(s, net::buffer(std::string("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\n{}")), ec);
    s.shutdown(tcp::socket::shutdown_send, ec);
    char sink[65536];  // drain the rest, so that closing sends no reset
    while (!ec) s.read_some(net::buffer(sink), ec);
  });
  auto cfg = native_backend("http://127.0.0.1:" + std::to_string(acceptor.local_endpoint().port()) + "/v1");
  openai_backend b(cfg);
  client c;
  const auto out = c.run(b, chat(false, "{\"model\":\"m\",\"x\":\"" + std::string(8 << 20, 'a') + "\"}"));
  CHECK(out.status == 413);
  CHECK(out.body == "{}");
  CHECK(out.last == call_event::kind::end);
  CHECK(c.pool.idle() == 0);  // still writing when the answer ended: never reused
  c.pool.watch_idle();
  c.io.restart();
  c.io.poll();
  server.join();
}

TEST_CASE("native client: a success that comes before the body is sent is relayed, and the connection reused after",
          "[adapters][native]") {
  // Some upstreams answer from the head and read the body after (to find the next request): the
  // connection is pooled once the body is written, while the call (whose caller owns the parts
  // borrowed) lives. A call dropped before that closes it: the write must not outlive the parts.
  for (const bool keep_call : {true, false}) {
    INFO("call kept until the write ends: " << keep_call);
    net::io_context sio;
    tcp::acceptor acceptor(sio, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    std::atomic<int> connections{0};
    std::atomic<bool> first_answered{false};
    std::thread server([&] {
      std::string in;
      boost::system::error_code ec;
      int answered = 0;
      while (answered < 2) {
        tcp::socket s(sio);
        acceptor.accept(s);
        ++connections;
        in.clear();
        ec = {};
        while (answered < 2 && !ec) {
          const std::size_t head = net::read_until(s, net::dynamic_buffer(in), "\r\n\r\n", ec);
          if (ec) break;
          const std::size_t length = std::stoul(in.substr(in.find("Content-Length: ") + 16));
          const bool early = answered == 0;
          if (early) {  // answer at once, then read the body slowly
            net::write(s, net::buffer(std::string("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")), ec);
            answered = 1;
            first_answered = true;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          }
          in.erase(0, head);
          while (in.size() < length && !ec) {
            char chunk[65536];
            const std::size_t n = s.read_some(net::buffer(chunk), ec);
            in.append(chunk, n);
          }
          if (ec) break;
          in.erase(0, length);
          if (!early) {
            net::write(s, net::buffer(std::string("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{\"a\"}")), ec);
            answered = 2;
          }
        }
      }
    });
    auto cfg = native_backend("http://127.0.0.1:" + std::to_string(acceptor.local_endpoint().port()) + "/v1");
    openai_backend b(cfg);
    client c;
    const std::string prompt = "{\"model\":\"m\",\"x\":\"" + std::string(8 << 20, 'a') + "\"}";
    upstream_request first = chat(false, "");
    first.parts.push_back({std::string_view(prompt).substr(0, 100), {}});
    first.parts.push_back({{}, "\"edited\""});
    first.parts.push_back({std::string_view(prompt).substr(100), {}});
    int status = 0;
    bool ended = false, done = false;
    net::co_spawn(
        c.io,
        [&]() -> net::awaitable<void> {
          auto call = b.start(std::move(first), {c.io, c.curl, c.pool});
          for (;;) {
            call_event ev = co_await call->next();
            if (ev.type == call_event::kind::head) status = ev.head.status;
            if (ev.type == call_event::kind::end || ev.type == call_event::kind::failed) {
              ended = ev.type == call_event::kind::end;
              break;
            }
          }
          if (keep_call) {  // the caller keeps the call (and the parts) until the body is written
            net::steady_timer t(c.io);
            for (int k = 0; k < 1000 && c.pool.idle() == 0; ++k) {
              t.expires_after(std::chrono::milliseconds(10));
              co_await t.async_wait(net::use_awaitable);
            }
          }
          done = true;
        },
        net::detached);
    while (!done) c.io.run_one();
    c.io.poll();
    CHECK(status == 200);
    CHECK(ended);
    CHECK(first_answered);
    CHECK(c.pool.idle() == (keep_call ? 1u : 0u));
    const auto second = c.run(b, chat());
    CHECK(second.status == 200);
    CHECK(second.body == "{\"a\"}");
    CHECK(connections == (keep_call ? 1 : 2));
    server.join();
  }
}

TEST_CASE("native client: a connection idle past a heartbeat that got bytes unasked is not reused",
          "[adapters][native]") {
  net::io_context sio;
  tcp::acceptor acceptor(sio, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  std::atomic<int> connections{0};
  std::thread server([&] {
    for (int k = 0; k < 2; ++k) {
      tcp::socket s(sio);
      acceptor.accept(s);
      ++connections;
      boost::system::error_code ec;
      read_request(s, ec);
      net::write(s, net::buffer(std::string(k == 0 ? "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
                                                  : "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")),
                ec);
      if (k == 0) {
        // Kept alive, then, idle for a while, the server gives up on it the way some do.
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        net::write(s, net::buffer(std::string("HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")), ec);
      }
      s.shutdown(tcp::socket::shutdown_send, ec);
      char sink[256];
      while (!ec) s.read_some(net::buffer(sink), ec);
    }
  });
  openai_backend b(native_backend("http://127.0.0.1:" + std::to_string(acceptor.local_endpoint().port()) + "/v1"));
  client c;
  REQUIRE(c.run(b, chat()).status == 200);
  REQUIRE(c.pool.idle() == 1);
  c.pool.watch_idle();  // a heartbeat arms its peek...
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // ...whose wake-up has not run when the next request takes it
  const auto second = c.run(b, chat());
  CHECK(second.status == 200);  // not the stale 408
  CHECK(second.body == "{}");
  CHECK(connections == 2);
  server.join();
}

TEST_CASE("both transports refuse an upstream head with a bare CR, a NUL, a bad name or a folded line",
          "[adapters][hardening]") {
  const std::vector<std::string> bad_fields = {
      "X-A: 5\rSet-Cookie: x=1",  // a second header hidden behind a bare CR
      std::string("X-A: 5\0Set-Cookie: x=1", 22),
      "X-A: one\x01two",
      "Bad Name: v",
      "X\rSet-Cookie: x=1: v",
  };
  for (const std::string transport : {"native", "curl"}) {
    for (const auto& field : bad_fields) {
      INFO(transport << ": " << field);
      raw_server s([&](const std::string&) {
        return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + field + "\r\nContent-Length: 2\r\n\r\n{}";
      });
      client c;
      auto cfg = native_backend(s.base_url());
      cfg.remote()->transport = transport;
      openai_backend b(cfg);
      const auto out = c.run(b, chat());
      CHECK(out.last == call_event::kind::failed);
      CHECK(out.error == failure::broken);
      CHECK(out.status == 0);  // no head was handed on
    }
    // A folded line (obs-fold): Beast joins it into one value, as RFC 9112 5.2 lets a proxy do;
    // libcurl hands it over as a line of its own, which is refused. Never a header of its own.
    raw_server folded([](const std::string&) {
      return std::string("HTTP/1.1 200 OK\r\nX-A: v\r\n Set-Cookie: x=1\r\nContent-Length: 2\r\n\r\n{}");
    });
    {
      client c;
      auto cfg = native_backend(folded.base_url());
      cfg.remote()->transport = transport;
      openai_backend b(cfg);
      const auto out = c.run(b, chat());
      if (transport == "curl") CHECK(out.error == failure::broken);
      else CHECK(out.status == 200);
    }
    // Tabs and bytes past 127 are fine in a value.
    raw_server ok([](const std::string&) {
      return std::string("HTTP/1.1 200 OK\r\nX-A: a\tb \xC3\xA9\r\nContent-Length: 2\r\n\r\n{}");
    });
    client c;
    auto cfg = native_backend(ok.base_url());
    cfg.remote()->transport = transport;
    openai_backend b(cfg);
    CHECK(c.run(b, chat()).status == 200);
  }
}
