// The one-pass head reader against Beast's parser, on the same bytes: every head it takes, Beast
// takes and reads the same way (start line, fields in order, framing, keep-alive); every head
// Beast refuses, it declines. Usual heads must be taken (else the fast path is never used), and
// the rest is checked over hand-written malformed heads and over every one-byte edit of the usual
// ones.
#include <catch2/catch.hpp>

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <string>
#include <vector>

#include "adapters/http1_call.hpp"
#include "gateway/server/http_head.hpp"
#include "protocol/http1_head.hpp"

namespace http = boost::beast::http;
using tollgate::gateway::read_request_head;
using tollgate::adapters::read_response_head;

namespace {

constexpr std::uint64_t body_limit = 1 << 20;

/// What Beast's parser makes of a head (and what follows it), as the gateway configures it.
template <bool Request>
struct beast_verdict {
  bool taken = false;  // the head is read whole without an error
  std::size_t head_length = 0;
  http::parser<Request, http::string_body> parser;
};

template <bool Request>
void parse_with_beast(const std::string& bytes, beast_verdict<Request>& v) {
  v.parser.header_limit(64 * 1024);
  if constexpr (Request) {
    v.parser.body_limit(body_limit);
  } else {
    v.parser.body_limit(boost::none);
  }
  boost::beast::error_code ec;
  std::size_t used = 0;
  // Beast reads the head in steps when it arrives in pieces: fed whole, it reads it in one.
  while (!v.parser.is_header_done()) {
    const std::size_t n = v.parser.put(boost::asio::buffer(bytes.data() + used, bytes.size() - used), ec);
    used += n;
    if (ec || n == 0) break;
  }
  v.taken = v.parser.is_header_done() && !ec;
  v.head_length = used;
}

struct field_seen {
  http::field f;
  std::string name, value;
  bool operator==(const field_seen&) const = default;
};

bool same_name(const std::string& a, const std::string& b) { return boost::beast::iequals(a, b); }

std::vector<field_seen> fields_of(const http::fields& h) {
  std::vector<field_seen> out;
  for (const auto& f : h) out.push_back({f.name(), std::string(f.name_string()), std::string(f.value())});
  return out;
}

/// A request's fields in Beast's order: Beast keeps the fields of one name together (a repeat goes
/// after the last field of its name), the request keeps them in the order they came.
std::vector<field_seen> fields_of(const tollgate::gateway::client_request& req) {
  std::vector<field_seen> out;
  for (const auto& f : req) {
    auto at = out.end();
    for (auto it = out.begin(); it != out.end(); ++it) {
      if (same_name(it->name, std::string(f.name_string()))) at = it + 1;
    }
    out.insert(at, {f.name(), std::string(f.name_string()), std::string(f.value())});
  }
  return out;
}

/// What the handlers read of a request: the first field of a name, and all of them in order.
void check_lookups(const tollgate::gateway::client_request& req, const http::fields& b) {
  for (const auto& field : b) {
    const std::string name(field.name_string());
    const auto mine = req.find(name);
    REQUIRE(mine != req.end());
    CHECK(mine->value() == std::string_view(b.find(field.name_string())->value()));
    std::vector<std::string> values, expected;
    const auto [first, last] = req.equal_range(name);
    for (auto it = first; it != last; ++it) values.emplace_back(it->value());
    const auto [bfirst, blast] = b.equal_range(field.name_string());
    for (auto it = bfirst; it != blast; ++it) expected.emplace_back(it->value());
    CHECK(values == expected);
  }
  CHECK(req.find("x-not-sent") == req.end());
}

/// Checks one request's bytes; returns whether the fast reader took them.
bool check_request(const std::string& bytes) {
  INFO("request bytes: " << bytes);
  tollgate::gateway::client_request req;
  const auto fast = read_request_head(bytes, body_limit, req);
  beast_verdict<true> beast;
  parse_with_beast(bytes, beast);
  if (!fast) return false;
  REQUIRE(beast.taken);
  const auto& b = beast.parser.get();
  CHECK(fast->head_length == beast.head_length);
  CHECK(req.method() == b.method());
  CHECK(req.method_string() == b.method_string());
  CHECK(req.target() == b.target());
  CHECK(req.version() == b.version());
  CHECK(fields_of(req) == fields_of(b));
  check_lookups(req, b);
  CHECK(req.keep_alive() == b.keep_alive());
  CHECK(req.keep_alive() == beast.parser.keep_alive());
  CHECK_FALSE(beast.parser.chunked());
  CHECK_FALSE(beast.parser.upgrade());
  CHECK(fast->content_length == beast.parser.content_length().value_or(0));
  return true;
}

/// Checks one response's bytes; returns whether the fast reader took them.
bool check_response(const std::string& bytes) {
  INFO("response bytes: " << bytes);
  tollgate::adapters::response_head head;
  const auto fast = read_response_head(bytes, head);
  beast_verdict<false> beast;
  parse_with_beast(bytes, beast);
  if (!fast) return false;
  REQUIRE(beast.taken);
  const auto& b = beast.parser.get();
  CHECK(fast->head_length == beast.head_length);
  CHECK(static_cast<unsigned>(head.status) == b.result_int());
  std::vector<std::pair<std::string, std::string>> expected;
  for (const auto& f : b) {
    std::string name(f.name_string());
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    expected.emplace_back(name, std::string(f.value()));
  }
  CHECK(head.headers == expected);
  CHECK(fast->keep_alive == beast.parser.keep_alive());
  CHECK(fast->chunked == beast.parser.chunked());
  if (!fast->chunked) CHECK(beast.parser.content_length().has_value());
  CHECK(fast->content_length == beast.parser.content_length().value_or(0));
  return true;
}

const std::vector<std::string> usual_requests = {
    // wrk
    "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 97\r\n"
    "Content-Type: application/json\r\nAuthorization: Bearer tg-bench\r\n\r\n",
    // Python's http.client
    "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept-Encoding: identity\r\n"
    "Content-Length: 120\r\nContent-Type: application/json\r\nAuthorization: Bearer tg-bench\r\n\r\n{\"model\":",
    // the openai SDK through httpx
    "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:8080\r\nAccept-Encoding: gzip, deflate\r\n"
    "Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
    "User-Agent: OpenAI/Python 1.54.3\r\nX-Stainless-Lang: python\r\nX-Stainless-Retry-Count: 0\r\n"
    "Authorization: Bearer sk-abcdefghijklmnopqrstuvwxyz0123456789\r\nContent-Length: 64\r\n\r\n",
    // curl, with Expect and an Anthropic client's headers
    "POST /v1/messages?beta=true HTTP/1.1\r\nHost: gw\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
    "x-api-key: tg-key\r\nanthropic-version: 2023-06-01\r\nanthropic-beta: a,b\r\n"
    "Expect: 100-continue\r\nContent-Length: 200000\r\n\r\n",
    "GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization:Bearer k\r\n\r\n",
    "GET /healthz HTTP/1.0\r\n\r\n",
    "GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    "DELETE /v1/responses/resp_1 HTTP/1.1\r\nhost: gw\r\nCONNECTION: close\r\nX-Request-Id: abc\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
    "M-SEARCH /x%20y?q=\xc3\xa9 HTTP/1.1\r\nX-Empty:\r\nX-Spaces: \t a  b \t\r\nX-Obs: caf\xc3\xa9\r\n"
    "Content-Length: 0\r\n\r\n",
    "HEAD / HTTP/1.1\r\nConnection: other\r\n\r\n",
};

const std::vector<std::string> usual_responses = {
    // nginx
    "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 10:00:00 GMT\r\n"
    "Content-Type: application/json\r\nContent-Length: 250\r\nConnection: keep-alive\r\n\r\n{\"id\":",
    // a Python server
    "HTTP/1.1 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11.2\r\nDate: Wed, 02 Dec 2026 10:00:00 GMT\r\n"
    "content-type: application/json\r\ncontent-length: 5\r\n\r\n",
    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 10\r\n\r\n",
    "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
    "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n",
    "HTTP/1.1 503 \r\nContent-Length: 0\r\nConnection: close\r\nX-Weird-Reason:\t\r\n\r\n",
    "HTTP/1.1 200 Fine\tthanks \xe2\x9c\x93\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 12\r\n\r\n",
    // streams: uvicorn (vLLM, SGLang), and a chunked answer with its first chunk after the head
    "HTTP/1.1 200 OK\r\ndate: Wed, 02 Dec 2026 10:00:00 GMT\r\nserver: uvicorn\r\n"
    "content-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n",
};

}  // namespace

TEST_CASE("the one-pass head reader takes the usual requests as Beast reads them", "[http_head]") {
  for (const std::string& r : usual_requests) CHECK(check_request(r));
}

TEST_CASE("the one-pass head reader takes the usual responses as Beast reads them", "[http_head]") {
  for (const std::string& r : usual_responses) CHECK(check_response(r));
}

TEST_CASE("the one-pass head reader leaves unusual and malformed heads to Beast", "[http_head]") {
  const std::vector<std::string> requests = {
      "POST / HTTP/1.1\r\nHost: a\r\n",                                  // not complete
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",          // chunked
      "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",  // repeated
      "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n",  // past the body limit: the parser's 413
      "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
      "POST / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
      "POST / HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
      "POST / HTTP/1.1\r\nConnection: ,\r\n\r\n",
      "POST / HTTP/1.1\r\nProxy-Connection: close\r\n\r\n",
      "POST / HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n",  // obs-fold
      "POST / HTTP/1.1\r\nX-Bad: a\rb\r\n\r\n",
      "POST / HTTP/1.1\r\nX-Bad: a\nb\r\n\r\n",
      "POST / HTTP/1.1\r\nX-Bad: a\x7f\r\n\r\n",
      "POST / HTTP/1.1\r\nX-Bad: a\x01\r\n\r\n",
      "POST / HTTP/1.1\r\nX Bad: a\r\n\r\n",
      "POST / HTTP/1.1\r\nX-Bad : a\r\n\r\n",
      "POST / HTTP/1.1\r\n: a\r\n\r\n",
      "POST / HTTP/1.1\r\n X-Bad: a\r\n\r\n",
      "POST / HTTP/1.1\r\nX-Bad\r\n\r\n",
      "POST / HTTP/1.1\n\r\n",
      "POST / HTTP/1.1\r\n\n\r\n\r\n",
      "POST  / HTTP/1.1\r\n\r\n",
      "POST / HTTP/1.2\r\n\r\n",
      "POST / HTTP/2.0\r\n\r\n",
      "POST / http/1.1\r\n\r\n",
      "POST / HTTP/1.1 \r\n\r\n",
      "POST /a\x7f HTTP/1.1\r\n\r\n",
      "PO(ST / HTTP/1.1\r\n\r\n",
      " POST / HTTP/1.1\r\n\r\n",
      "\r\nPOST / HTTP/1.1\r\n\r\n",
      "POST /\r\n\r\n",
      "POST / HTTP/1.1\r\nX: " + std::string(9000, 'a') + "\r\n\r\n",  // past max_fast_head
  };
  for (const std::string& r : requests) CHECK_FALSE(check_request(r));
  const std::vector<std::string> responses = {
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
      "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
      "HTTP/1.1 200 OK\r\n\r\n",  // to the connection's end
      "HTTP/1.1 100 Continue\r\n\r\n",
      "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
      "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: a\r\n\tb\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: a\x00\r\n\r\n",
      "HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 0\r\n\r\n",
  };
  for (const std::string& r : responses) CHECK_FALSE(check_response(std::string(r.data(), r.size())));
  CHECK_FALSE(check_response(std::string("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: a\0b\r\n\r\n", 46)));
}

TEST_CASE("every one-byte edit of a usual head is read as Beast reads it, or left to Beast", "[http_head]") {
  const std::string interesting("\x00\t\n\r :,;\"(@\x7f\x80\xff" "Aa0-", 19);
  std::size_t taken = 0, cases = 0;
  const auto edits = [&](const std::string& head, auto&& check) {
    for (std::size_t i = 0; i <= head.size(); ++i) {
      for (char c : interesting) {
        std::string inserted = head;
        inserted.insert(inserted.begin() + static_cast<std::ptrdiff_t>(i), c);
        taken += check(inserted);
        ++cases;
        if (i == head.size()) continue;
        std::string replaced = head;
        replaced[i] = c;
        taken += check(replaced);
        ++cases;
      }
      if (i < head.size()) {
        std::string removed = head;
        removed.erase(i, 1);
        taken += check(removed);
        ++cases;
      }
    }
  };
  for (const std::string& r : usual_requests) edits(r, check_request);
  for (const std::string& r : usual_responses) edits(r, check_response);
  // Most edits of a value or a name's case are still usual heads: the comparison covered both sides.
  CHECK(taken > cases / 4);
  CHECK(taken < cases);
}
