// What hostile clients and broken upstreams tried (issue 16), over real sockets: each case failed
// before its fix.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/gateway_fixture.hpp"
#include "tests/support/raw_server.hpp"

using namespace tollgate::test;
using json = nlohmann::json;

namespace {

constexpr const char* tokenizer_file = TOLLGATE_SOURCE_DIR "/data/deepseek_v3/tokenizer.json";

/// A client connection made of raw bytes, for requests no library would send.
class raw_client {
 public:
  /// rcvbuf: a receive buffer that small (0: the system's), set before connecting.
  explicit raw_client(std::uint16_t port, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    timeval tv{0, 200 * 1000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~raw_client() { ::close(fd_); }
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;

  /// false when the peer refused the bytes (it closed already).
  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      const auto n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  /// Reads until until(text so far) holds, the peer closes, or wait passes. closed() says which.
  template <class Pred>
  std::string read(Pred until, std::chrono::milliseconds wait = std::chrono::milliseconds(3000)) {
    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (!until(got_) && std::chrono::steady_clock::now() < deadline) {
      char buf[8192];
      const auto n = ::recv(fd_, buf, sizeof buf, 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        closed_ = true;
        break;
      }
      if (n > 0) got_.append(buf, static_cast<std::size_t>(n));
    }
    return got_;
  }
  /// Reads until the peer closes (or wait passes).
  std::string read_all(std::chrono::milliseconds wait = std::chrono::milliseconds(3000)) {
    return read([](const std::string&) { return false; }, wait);
  }
  bool closed() const { return closed_; }
  void clear() { got_.clear(); }
  /// Sends the end of the stream (a FIN) while the connection stays open for reading.
  void end_sending() { ::shutdown(fd_, SHUT_WR); }

 private:
  int fd_ = -1;
  std::string got_;
  bool closed_ = false;
};

/// The next whole answer on the connection (its head, and its body by its Content-Length), taken
/// off what was read so that the one after starts clean.
std::string next_answer(raw_client& c) {
  const std::string got = c.read([](const std::string& s) {
    const auto end = s.find("\r\n\r\n");
    if (end == std::string::npos) return false;
    const auto at = s.find("Content-Length: ");
    if (at == std::string::npos || at > end) return true;
    return s.size() >= end + 4 + std::stoul(s.substr(at + 16));
  });
  c.clear();
  return got;
}

std::string post_head(const std::string& extra_headers, std::size_t content_length) {
  return "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + std::string(client_key) +
         "\r\nContent-Type: application/json\r\n" + extra_headers + "Content-Length: " +
         std::to_string(content_length) + "\r\n\r\n";
}

/// The default config with a larger body limit and the tokenizer that counts answers without usage.
std::string counting_yaml(std::size_t max_body = 4 * 1024 * 1024) {
  std::string y = gateway_fixture::default_yaml();
  y.replace(y.find("max_body_bytes: 65536"), 21, "max_body_bytes: " + std::to_string(max_body));
  return "metering: {tokenizer: " + std::string(tokenizer_file) + "}\n" + y;
}

json error_of(const std::string& body) {
  const json j = json::parse(body, nullptr, false);
  return j.is_object() && j.contains("error") ? j["error"] : json();
}

}  // namespace

TEST_CASE("tools nested 60,000 deep get 400, and the gateway lives on", "[hardening]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  gateway_fixture f(counting_yaml());
  http_client c;
  // The upstream answers without usage, so the prompt would be counted by walking the tools.
  response_script s;
  s.body = R"({"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]})";
  f.a.set_default([s](const recorded_request&) { return s; });
  const std::size_t depth = 60'000;
  const std::string body = R"({"model":"chat-public","messages":[{"role":"user","content":"x"}],"tools":)" +
                           std::string(depth, '[') + std::string(depth, ']') + "}";
  const auto r = c.post(f.base + "/v1/chat/completions", body, gateway_fixture::auth());
  INFO(r.body);
  CHECK(r.status == 400);
  CHECK(error_of(r.body)["type"] == "invalid_request_error");
  // The same nesting inside a message's tool_calls, and a sane request afterwards.
  const std::string calls = R"({"model":"chat-public","messages":[{"role":"assistant","content":"x","tool_calls":)" +
                            std::string(depth, '[') + std::string(depth, ']') + "}]}";
  CHECK(c.post(f.base + "/v1/chat/completions", calls, gateway_fixture::auth()).status == 400);
  CHECK(c.post(f.base + "/v1/chat/completions", R"({"model":"chat-public","messages":[]})", gateway_fixture::auth())
            .status == 200);
  CHECK(f.a.request_count() == 1);
}

TEST_CASE("an upstream header with a bare CR gets 502 on both transports, never a second header",
          "[hardening]") {
  raw_server up([](const std::string&) {
    return std::string(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Ratelimit-Limit: 5\rSet-Cookie: x=1\r\n"
        "Content-Length: 2\r\n\r\n{}");
  });
  for (const std::string transport : {"native", "curl"}) {
    INFO(transport);
    gateway_fixture f(R"(
server: {listen: "127.0.0.1:0", threads: 1, access_log: "off"}
keys: [{name: t, key: tg-test-client-key}]
backends:
  - {name: raw, kind: openai, base_url: ")" + up.base_url() + R"(", transport: )" + transport + R"(}
routes:
  - {model: m, targets: [{backend: raw}]}
)");
    http_client c;
    const auto r = c.post(f.base + "/v1/chat/completions", R"({"model":"m","messages":[]})", gateway_fixture::auth());
    INFO(r.body);
    CHECK(r.status == 502);
    CHECK(r.headers.count("set-cookie") == 0);
    CHECK(error_of(r.body)["message"].get<std::string>().find("malformed response") != std::string::npos);
  }
}

TEST_CASE("Transfer-Encoding other than one final chunked gets 400 and a closed connection", "[hardening]") {
  gateway_fixture f;
  const std::string body = R"({"model":"chat-public","messages":[]})";
  // What follows the head would be read as the next request if the framing were guessed.
  const std::string smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  for (const std::string te : {"xchunked", "chunked, identity", "gzip", "identity", "chunked, chunked",
                               "gzip, chunked", "chunked\r\nTransfer-Encoding: gzip", "", " , "}) {
    for (const bool with_length : {true, false}) {
      INFO(te << (with_length ? " with Content-Length" : ""));
      raw_client c(f.server->port());
      std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                         std::string(client_key) + "\r\nTransfer-Encoding: " + te + "\r\n";
      if (with_length) head += "Content-Length: " + std::to_string(body.size()) + "\r\n";
      c.send(head + "\r\n" + body + smuggled);
      const std::string got = c.read_all();
      CHECK(got.starts_with("HTTP/1.1 400 "));
      // Beast refuses chunked with Content-Length itself, as malformed; the rest is ours.
      CHECK((got.find("Transfer-Encoding") != std::string::npos || got.find("malformed HTTP") != std::string::npos));
      CHECK(got.find("HTTP/1.1", 1) == std::string::npos);  // one answer, then the close
      CHECK(c.closed());
    }
  }
  CHECK(f.a.request_count() == 0);
  // One chunked coding, in any case, is fine.
  raw_client ok(f.server->port());
  char size[16];
  std::snprintf(size, sizeof size, "%zx", body.size());
  ok.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + std::string(client_key) +
          "\r\nTransfer-Encoding: Chunked\r\n\r\n" + size + "\r\n" + body + "\r\n0\r\n\r\n");
  CHECK(ok.read([](const std::string& s) { return s.find("\r\n\r\n") != std::string::npos; }).starts_with("HTTP/1.1 200 "));
}

TEST_CASE("an answer to HEAD has no body, so the next answer on the connection stays intact", "[hardening]") {
  gateway_fixture f;
  for (const std::string path : {"/healthz", "/v1/nothing-here", "/v1/chat/completions"}) {
    INFO(path);
    raw_client c(f.server->port());
    c.send("HEAD " + path + " HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    const std::string got = c.read([](const std::string& s) { return s.find("{\"status\":\"ok\"}") != std::string::npos; });
    const auto first_end = got.find("\r\n\r\n");
    REQUIRE(first_end != std::string::npos);
    CHECK(got.substr(first_end + 4).starts_with("HTTP/1.1 200 "));  // the second answer, right after the head
    CHECK(got.ends_with("{\"status\":\"ok\"}"));
  }
  // HEAD on a GET endpoint answers as GET would.
  raw_client c(f.server->port());
  c.send("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  const std::string got = c.read([](const std::string& s) { return s.find("\r\n\r\n") != std::string::npos; });
  CHECK(got.starts_with("HTTP/1.1 200 "));
  CHECK(got.find("Content-Length: 15\r\n") != std::string::npos);
}

TEST_CASE("each request on a connection sees only its own head and body, whichever reader read it", "[hardening]") {
  // A connection reuses its request's storage: what one request sent must not show in the next,
  // read in one pass or by Beast's parser (chunked), and field names match in any case.
  gateway_fixture f;
  raw_client c(f.server->port());
  const auto answer = [&c] { return next_answer(c); };
  const auto request_id = [](const std::string& got) {
    const auto at = got.find("x-request-id: ");
    if (at == std::string::npos) return std::string();
    return got.substr(at + 14, got.find("\r\n", at) - at - 14);
  };
  const std::string first = R"({"model":"chat-public","messages":[{"role":"user","content":"first"}]})";
  c.send(post_head("X-Request-Id: first-id\r\n", first.size()) + first);
  std::string got = answer();
  CHECK(got.starts_with("HTTP/1.1 200 "));
  CHECK(request_id(got) == "first-id");

  // Chunked: read by Beast's parser.
  const std::string second = R"({"model":"chat-public","messages":[{"role":"user","content":"second"}]})";
  char size[16];
  std::snprintf(size, sizeof size, "%zx", second.size());
  c.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAUTHORIZATION: Bearer " + std::string(client_key) +
         "\r\nTransfer-Encoding: chunked\r\nX-Request-Id: second-id\r\n\r\n" + size + "\r\n" + second + "\r\n0\r\n\r\n");
  got = answer();
  CHECK(got.starts_with("HTTP/1.1 200 "));
  CHECK(request_id(got) == "second-id");

  // No request id and no key: neither is the earlier request's.
  const std::string third = R"({"model":"chat-public","messages":[]})";
  c.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(third.size()) + "\r\n\r\n" +
         third);
  got = answer();
  CHECK(got.starts_with("HTTP/1.1 401 "));
  const std::string id = request_id(got);
  CHECK(id.starts_with("req_"));

  // Names in another case, after a request read by the parser.
  c.send("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: bearer " + std::string(client_key) +
         "\r\nx-request-id: fourth-id\r\ncontent-length: " + std::to_string(first.size()) + "\r\n\r\n" + first);
  got = answer();
  CHECK(got.starts_with("HTTP/1.1 200 "));
  CHECK(request_id(got) == "fourth-id");

  // A body larger than the storage a connection keeps, then an empty one: empty, not the last.
  const std::string large = R"({"model":"chat-public","messages":[{"role":"user","content":")" +
                            std::string(20000, 'x') + R"("}]})";
  c.send(post_head("", large.size()) + large);
  got = answer();
  CHECK(got.starts_with("HTTP/1.1 200 "));
  c.send(post_head("", 0));
  got = answer();
  CHECK(got.starts_with("HTTP/1.1 400 "));
  CHECK_FALSE(c.closed());

  // A body under the storage a connection keeps, its head and first part sent before the rest
  // (read from the socket into the same storage, after what came with the head), then a shorter
  // one in that storage: it must carry none of the longer one's bytes.
  const std::string kept = R"({"model":"chat-public","messages":[{"role":"user","content":")" +
                           std::string(3000, 'y') + R"("}]})";
  c.send(post_head("", kept.size()) + kept.substr(0, 1000));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  c.send(kept.substr(1000));
  CHECK(answer().starts_with("HTTP/1.1 200 "));
  const std::string shorter = R"({"model":"chat-public","messages":[{"role":"user","content":")" +
                              std::string(100, 'z') + R"("}]})";
  c.send(post_head("", shorter.size()) + shorter);
  CHECK(answer().starts_with("HTTP/1.1 200 "));

  const auto seen = f.a.requests();
  REQUIRE(seen.size() == 6);
  CHECK(seen[4].body.find(std::string(3000, 'y') + "\"}]") != std::string::npos);
  CHECK(seen[5].body.find(std::string(100, 'z') + "\"}]}") != std::string::npos);
  CHECK(seen[5].body.find('y') == std::string::npos);
  CHECK(seen[5].body.size() < 200);
  CHECK(seen[3].body.find(std::string(20000, 'x')) != std::string::npos);
  CHECK(seen[0].body.find("\"first\"") != std::string::npos);
  CHECK(seen[1].body.find("\"second\"") != std::string::npos);
  CHECK(seen[2].body.find("\"first\"") != std::string::npos);
  CHECK(seen[0].headers.count("x-request-id") == 1);
  CHECK(seen[0].headers.at("x-request-id") == "first-id");
  CHECK(seen[1].headers.at("x-request-id") == "second-id");
  CHECK(seen[2].headers.at("x-request-id") == "fourth-id");
}

TEST_CASE("a large body read in pieces is checked whole, on its own bytes", "[hardening]") {
  // A body read in several reads into storage kept from the body before: a bare quote in a late
  // piece still makes it invalid, and a second body in the same storage, with a quote where the
  // first had plain text, is judged on its own bytes.
  gateway_fixture f(counting_yaml());  // bodies up to 4 MB
  raw_client c(f.server->port());
  const auto answer = [&c] { return next_answer(c); };
  const auto body_of = [](const std::string& content) {
    return R"({"model":"chat-public","messages":[{"role":"user","content":")" + content + R"("}]})";
  };
  const auto send_in_pieces = [&c](const std::string& head, const std::string& body) {
    c.send(head + body.substr(0, 1000));
    for (std::size_t at = 1000; at < body.size(); at += 70000) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      c.send(body.substr(at, 70000));
    }
  };
  std::string plain(300000, 'p');
  plain.replace(150000, 2, "\\n");
  const std::string valid = body_of(plain);
  send_in_pieces(post_head("", valid.size()), valid);
  CHECK(answer().starts_with("HTTP/1.1 200 "));

  // A quote that ends the string early (what follows is not JSON), just past where a piece
  // ends: in a block the first piece left half written, over the first body's plain bytes.
  std::string broken = plain;
  const std::size_t content_at = valid.find("pppp");
  broken[1000 + 3 * 70000 + 3 - content_at] = '"';
  const std::string invalid = body_of(broken);
  send_in_pieces(post_head("", invalid.size()), invalid);
  CHECK(answer().starts_with("HTTP/1.1 400 "));

  // A shorter body in the first one's storage, its quote where the first had plain text.
  std::string shorter(200000, 'q');
  shorter[120000] = '"';
  const std::string second = body_of(shorter);
  send_in_pieces(post_head("", second.size()), second);
  CHECK(answer().starts_with("HTTP/1.1 400 "));

  const auto seen = f.a.requests();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].body.find(plain) != std::string::npos);
}

TEST_CASE("a body cut off, or stalled past the idle timeout, between its pieces closes the connection unsent",
          "[hardening]") {
  // The rest of a body is read by edge reads: after a piece drains the socket, the next read
  // waits for epoll's next edge, which a FIN, and the idle deadline's cancel, must still end.
  gateway_fixture f(counting_yaml());  // the default idle timeout: only the FIN ends the first
  std::string y = counting_yaml();
  const std::string server = "  access_log: off\n";
  y.replace(y.find(server), server.size(), server + "  idle_timeout: 300ms\n");
  gateway_fixture quick(y);
  const std::string body = R"({"model":"chat-public","messages":[{"role":"user","content":")" +
                           std::string(300000, 'p') + R"("}]})";
  const std::string head = post_head("", body.size());

  raw_client cut(f.server->port());
  REQUIRE(cut.send(head + body.substr(0, 1000)));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE(cut.send(body.substr(1000, 100000)));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  cut.end_sending();
  CHECK(cut.read_all(std::chrono::milliseconds(5000)).find("HTTP/1.1 200") == std::string::npos);
  CHECK(cut.closed());

  raw_client stalled(quick.server->port());
  REQUIRE(stalled.send(head + body.substr(0, 1000)));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE(stalled.send(body.substr(1000, 100000)));
  const auto stalled_from = std::chrono::steady_clock::now();
  const std::string stalled_got = stalled.read_all(std::chrono::milliseconds(5000));
  const auto waited = std::chrono::steady_clock::now() - stalled_from;
  CHECK(stalled.closed());
  CHECK(stalled_got.empty());
  CHECK(waited >= std::chrono::milliseconds(250));
  CHECK(waited < std::chrono::milliseconds(4000));

  CHECK(f.a.request_count() == 0);
  CHECK(quick.a.request_count() == 0);
  // The same body sent whole on a new connection is answered.
  raw_client whole(f.server->port());
  REQUIRE(whole.send(head + body));
  CHECK(next_answer(whole).starts_with("HTTP/1.1 200 "));
}

TEST_CASE("Expect: 100-continue gets 100 Continue before the body, or the final status at once", "[hardening]") {
  gateway_fixture f;
  const std::string body = R"({"model":"chat-public","messages":[]})";
  raw_client c(f.server->port());
  c.send(post_head("Expect: 100-continue\r\n", body.size()));
  const auto has_head = [](const std::string& s) { return s.find("\r\n\r\n") != std::string::npos; };
  const std::string interim = c.read(has_head, std::chrono::milliseconds(900));
  CHECK(interim == "HTTP/1.1 100 Continue\r\n\r\n");
  c.clear();
  c.send(body);
  CHECK(c.read(has_head).starts_with("HTTP/1.1 200 "));

  // Too large to take: 413 without a 100 first.
  raw_client big(f.server->port());
  big.send(post_head("Expect: 100-continue\r\n", 1'000'000));
  const std::string refused = big.read(has_head, std::chrono::milliseconds(900));
  CHECK(refused.starts_with("HTTP/1.1 413 "));
}

TEST_CASE("a client still sending a too large body reads the 413, not a reset", "[hardening]") {
  gateway_fixture f;  // max_body_bytes: 65536
  const std::string body(4 * 1024 * 1024, 'x');
  raw_client c(f.server->port());
  CHECK(c.send(post_head("", body.size()) + body));  // every byte, as SDKs send before reading
  const std::string got = c.read_all();
  CHECK(got.starts_with("HTTP/1.1 413 "));
  CHECK(got.find("request_too_large") != std::string::npos);
  CHECK(c.closed());
}

TEST_CASE("an SSE event past server.max_event_bytes ends the stream with an error event", "[hardening]") {
  std::string y = gateway_fixture::default_yaml();
  y.replace(y.find("max_body_bytes: 65536"), 21, "max_body_bytes: 65536\n  max_event_bytes: 65536");
  gateway_fixture f(y);
  response_script s;
  s.content_type = "text/event-stream";
  s.chunks.push_back("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n");
  s.chunks.push_back("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"");
  for (int i = 0; i < 400; ++i) s.chunks.push_back(std::string(16 * 1024, 'a'));  // never terminated
  f.a.push(s);
  http_client c;
  const auto r = c.post(f.base + "/v1/chat/completions", R"({"model":"chat-public","stream":true,"messages":[]})",
                        gateway_fixture::auth());
  CHECK(r.status == 200);
  CHECK(r.body.starts_with("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n"));
  CHECK(r.body.find("max_event_bytes") != std::string::npos);
  CHECK(r.body.find("aaaa") == std::string::npos);  // the partial event is not relayed
  CHECK(r.body.size() < 4096);
  // The upstream is let go before it has sent all of its 6.5 MB.
  CHECK(eventually([&] { return f.a.client_aborts() == 1; }));
}

TEST_CASE("a stream backed up behind a slow client is relayed whole, in order, renamed, in few writes",
          "[hardening][stream]") {
  // 3,000 events (about 400 KB) cut into the upstream's chunks at arbitrary places, written as
  // fast as the upstream can; the client's small receive buffer reads nothing for 300 ms, so the
  // gateway's writes stall and the events pile up in its queue (in events of at most 16 KB,
  // whose cuts fall inside SSE events). Every event arrives once, in order, with the model the
  // client asked for, and a write takes what was waiting: far fewer chunks than events.
  gateway_fixture f;
  std::string stream;
  constexpr int events = 3000;
  for (int i = 0; i < events; ++i)
    stream += R"(data: {"id":"c","object":"chat.completion.chunk","model":"upstream-model-a","choices":[{"index":0,"delta":{"content":"w)" +
              std::to_string(i) + R"( "},"finish_reason":null}]})" + "\n\n";
  stream += "data: [DONE]\n\n";
  response_script s;
  s.content_type = "text/event-stream";
  for (std::size_t at = 0; at < stream.size(); at += 997) s.chunks.push_back(stream.substr(at, 997));
  f.a.push(s);
  raw_client c(f.server->port(), 4096);
  const std::string body = R"({"model":"chat-public","stream":true,"messages":[{"role":"user","content":"hi"}]})";
  REQUIRE(c.send(post_head("", body.size()) + body));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string got =
      c.read([](const std::string& t) { return t.ends_with("\r\n0\r\n\r\n"); }, std::chrono::milliseconds(10000));
  REQUIRE(got.starts_with("HTTP/1.1 200"));
  REQUIRE(got.ends_with("\r\n0\r\n\r\n"));
  // The chunked body, chunk by chunk.
  std::size_t at = got.find("\r\n\r\n") + 4, chunks = 0;
  std::string relayed;
  for (;;) {
    const std::size_t line_end = got.find("\r\n", at);
    REQUIRE(line_end != std::string::npos);
    const std::size_t size = std::stoul(got.substr(at, line_end - at), nullptr, 16);
    if (size == 0) break;
    relayed += got.substr(line_end + 2, size);
    at = line_end + 2 + size + 2;
    ++chunks;
  }
  std::string expected = stream;
  for (std::size_t p = 0; (p = expected.find("\"upstream-model-a\"", p)) != std::string::npos;)
    expected.replace(p, 18, "\"chat-public\"");
  CHECK(relayed.size() == expected.size());
  CHECK(relayed == expected);
  std::printf("a backed-up stream of %d events reached the client in %zu chunks\n", events, chunks);
  CHECK(chunks < events / 4);
}

TEST_CASE("usage out of range from the upstream is counted with the tokenizer instead", "[hardening]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  gateway_fixture f(counting_yaml());
  http_client c;
  auto metric = [&](const std::string& kind) {
    const std::string m = c.get(f.base + "/metrics").body;
    const std::string name = R"(tollgate_tokens_total{key="tester",model="chat-public",backend="alpha",kind=")" + kind + "\"} ";
    const auto at = m.find(name);
    return at == std::string::npos ? -1.0 : std::stod(m.substr(at + name.size()));
  };
  response_script s;
  s.body = R"({"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello there"}}],
    "usage":{"prompt_tokens":9223372036854775807,"completion_tokens":-3}})";
  f.a.push(s);
  REQUIRE(c.post(f.base + "/v1/chat/completions", R"({"model":"chat-public","messages":[{"role":"user","content":"hi"}]})",
                 gateway_fixture::auth())
              .status == 200);
  // Counted on the counting threads: the metrics get it just after the answer.
  CHECK(eventually([&] { return metric("prompt") > 0; }));
  const double prompt = metric("prompt"), completion = metric("completion");
  CHECK(prompt > 0);
  CHECK(prompt < 100);  // the tokenizer's count of a short chat, not INT64_MAX
  CHECK(completion >= 2);
  CHECK(completion < 10);
}

TEST_CASE("a second server on an address in use fails to start instead of sharing it", "[hardening]") {
  gateway_fixture first;
  const std::string port = std::to_string(first.server->port());
  auto second_config = [&] {
    auto loaded = tollgate::config::load_string(R"(
server: {listen: "127.0.0.1:)" + port + R"(", threads: 2, access_log: "off"}
backends: [{name: a, kind: openai, base_url: "http://127.0.0.1:9/v1"}]
routes: [{model: m, targets: [{backend: a}]}]
)",
                                                "second.yaml", [](const std::string&) { return std::nullopt; });
    REQUIRE(loaded.value);
    return std::make_shared<const tollgate::gateway::runtime>(std::move(*loaded.value), first.lasting, 2);
  };
  try {
    tollgate::gateway::server second(second_config());
    FAIL("a second server started on port " << port);
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()).find("already in use") != std::string::npos);
  }
  // The first one still serves, and once it is gone the address is free again.
  http_client c;
  CHECK(c.get(first.base + "/healthz").status == 200);
  first.prober.reset();
  first.server.reset();
  tollgate::gateway::server again(second_config());
  CHECK(again.port() == std::stoi(port));
  // While it holds the address, a third one fails too.
  CHECK_THROWS_WITH(tollgate::gateway::server(second_config()), Catch::Contains("already in use"));
}

TEST_CASE("identity is asked of upstreams, and an encoded answer gets 502, never relayed or billed", "[hardening]") {
  for (const std::string transport : {"native", "curl"}) {
    INFO(transport);
    fake_upstream up;
    gateway_fixture f(R"(
server: {listen: "127.0.0.1:0", threads: 1, access_log: "off"}
keys: [{name: t, key: tg-test-client-key}]
backends:
  - {name: up, kind: openai, base_url: ")" + up.base_url() + R"(", transport: )" + transport + R"(}
routes:
  - {model: m, targets: [{backend: up}]}
)");
    response_script s;
    s.headers = {{"Content-Encoding", "gzip"}};
    s.body = std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", 10);
    up.push(s);
    http_client c;
    const auto r = c.post(f.base + "/v1/chat/completions", R"({"model":"m","messages":[]})", gateway_fixture::auth());
    INFO(r.body);
    CHECK(r.status == 502);
    CHECK(error_of(r.body)["message"].get<std::string>().find("Content-Encoding gzip") != std::string::npos);
    REQUIRE(up.request_count() == 1);
    CHECK(up.requests()[0].headers["accept-encoding"] == "identity");
  }
}

// [fd_limit]: sanitizers check memory through a pipe, which cannot be made without descriptors
// (UBSan then reports a false "invalid vptr"); tests/sanitize.sh leaves this case out.
TEST_CASE("out of descriptors, the accept loop pauses instead of spinning, then serves again",
          "[hardening][fd_limit]") {
  std::string y = gateway_fixture::default_yaml();
  y.replace(y.find("threads: 2"), 10, "threads: 1");
  gateway_fixture f(y);
  // Allow only a few more descriptors than are open, then take those too.
  int highest = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    highest = std::max(highest, std::stoi(e.path().filename().string()));
  }
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(highest + 8);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  std::vector<int> taken;
  for (int fd; (fd = ::open("/dev/null", O_RDONLY)) >= 0;) taken.push_back(fd);
  REQUIRE(!taken.empty());
  // One descriptor is handed back for the client's socket; then the gateway has none to accept
  // the connection with, which waits in the backlog for as long as this lasts.
  ::close(taken.back());
  taken.pop_back();
  raw_client waiting(f.server->port());
  rusage before{}, after{};
  ::getrusage(RUSAGE_SELF, &before);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  ::getrusage(RUSAGE_SELF, &after);
  for (int fd : taken) ::close(fd);
  ::setrlimit(RLIMIT_NOFILE, &saved);
  auto cpu_ms = [](const rusage& u) {
    return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1000.0 + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1000.0;
  };
  const double used = cpu_ms(after) - cpu_ms(before);
  INFO("CPU while out of descriptors: " << used << " ms in 1 s");
  CHECK(used < 250);  // a spinning accept loop burns most of a core
  // Descriptors are back: the waiting connection is accepted and served.
  waiting.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(waiting.read([](const std::string& s) { return s.find("{\"status\":\"ok\"}") != std::string::npos; })
            .starts_with("HTTP/1.1 200 "));
}
