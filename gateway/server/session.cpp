#include "gateway/server/session.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <iostream>
#include <optional>
#include <tuple>

#include "adapters/edge_read.hpp"
#include "gateway/accounting/result_consumers.hpp"
#include "gateway/server/cors.hpp"
#include "gateway/handlers/handlers.hpp"
#include "gateway/server/http_head.hpp"
#include "gateway/server/runtime.hpp"
#include "gateway/server/server.hpp"
#include "gateway/server/request.hpp"
#include "gateway/server/responder.hpp"
#include "gateway/server/worker.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using clock = std::chrono::steady_clock;

namespace {

constexpr auto use_tuple = net::as_tuple(net::use_awaitable);
// After a 413: how long and how much of the rest of the body is read and dropped before closing.
constexpr auto drain_timeout = std::chrono::seconds(5);
constexpr std::size_t max_drain_bytes = 16 * 1024 * 1024;

/// A request id from the client is kept when it is short and plain; otherwise we make one.
bool usable_request_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':')) return false;
  }
  return true;
}

/// The endpoint a target names: without the query, and without /v1 (clients configured with or
/// without the /v1 suffix in base_url both land on the same handler).
std::string_view endpoint_of(std::string_view target) {
  if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
  if (target.starts_with("/v1/")) target.remove_prefix(3);
  return target;
}

bool single_final_chunked(const http::request_header<>& h) {
  transfer_codings codings;
  const auto [first, last] = h.equal_range(http::field::transfer_encoding);
  for (auto it = first; it != last; ++it) codings.add(it->value());
  return codings.acceptable();
}

class session {
 public:
  session(worker& w, tcp::socket socket)
      : w_(w), socket_(std::move(socket)), entry_(w_.add_session(&socket_)), out_(w_, socket_, entry_, record_) {
    ++w_.shared().open_sessions;
    adapters::enable_edge_reads(socket_);
  }
  ~session() {
    w_.remove_session(entry_);
    --w_.shared().open_sessions;
  }

  net::awaitable<void> run() {
    for (;;) {
      if (w_.shared().draining) break;
      const auto rt = w_.shared().current.load();
      out_.set_deadline(rt->cfg.server.idle_timeout);
      entry_->idle = true;
      request& req = req_;  // the connection's: its storage serves every request
      req.clear();
      beast::error_code ec;
      if (buffer_.size() == 0) {
        // The client cannot have sent its next request before it read our answer: an edge read
        // (edge_read.hpp) after the last one drained the socket waits for epoll's next edge, with
        // no system call that finds nothing.
        auto [rec, rn] = co_await read_edge(buffer_.prepare(beast::read_size(buffer_, 64 * 1024)));
        buffer_.commit(rn);
        ec = rec;
      }
      // A complete head of the usual shape is read in one pass; anything else (a head still
      // coming, chunked, a Connection list, a body past the limit, a malformed head) goes to
      // Beast's parser, which reads, accepts and refuses it as it always did.
      std::optional<fast_request> fast;
      if (!ec) fast = read_request_head(buffered(), rt->cfg.server.max_body_bytes, req);
      std::optional<http::request_parser<http::string_body>> parser;
      if (fast) {
        entry_->idle = false;
        buffer_.consume(fast->head_length);
        if (fast->content_length > 0) {
          // Not awaited when there is nothing to wait for (a coroutine frame each otherwise).
          if (expects_continue(req)) ec = co_await send_continue();
          const auto length = static_cast<std::size_t>(fast->content_length);
          if (!ec) {
            char* const into = req.body().overwrite(length);
            const std::size_t got = body_from_buffer(into, length);
            if (got < length) ec = co_await read_body_rest(into + got, length - got);
          }
        }
      } else if (!ec) {
        parser.emplace();
        parser->header_limit(64 * 1024);
        parser->body_limit(rt->cfg.server.max_body_bytes);
        // The head first: its framing is checked, and a client waiting on Expect: 100-continue
        // is told to send the body, before the body is read.
        std::size_t n = 0;
        std::tie(ec, n) = co_await http::async_read_header(socket_, buffer_, *parser, use_tuple);
        entry_->idle = false;
        if (!ec && !single_final_chunked(parser->get())) {
          // RFC 9112 6.3: a body framed by anything but one final chunked cannot be delimited
          // safely (request smuggling); refused and the connection closed.
          out_.clear_deadline();
          co_await refuse(parser->get(), *rt, bad_request("unsupported Transfer-Encoding: only a single chunked is accepted"));
          co_await drain_and_close();
          co_return;
        }
        if (!ec && !parser->is_done()) {
          if (expects_continue(parser->get())) ec = co_await send_continue();
          if (!ec) {
            if (!parser->chunked() && parser->content_length()) {
              ec = co_await read_body(parser->get().body(), static_cast<std::size_t>(*parser->content_length()));
            } else {
              std::tie(ec, n) = co_await http::async_read(socket_, buffer_, *parser, use_tuple);
            }
          }
        }
      }
      out_.clear_deadline();
      if (ec == http::error::body_limit && parser) {
        co_await refuse(parser->get(), *rt, payload_too_large(rt->cfg.server.max_body_bytes));
        co_await drain_and_close();
        co_return;
      }
      if (ec && parser && ec.category() == http::make_error_code(http::error::bad_target).category() &&
          ec != http::error::end_of_stream && ec != http::error::partial_message) {
        co_await refuse(parser->get(), *rt, bad_request("malformed HTTP request: " + ec.message()));
        break;
      }
      if (ec) break;  // closed, timed out, cut off, or cancelled by drain
      if (parser) req.assign(parser->release());
      request_result result = begin(req, *rt);
      record_.bytes_in = req.body().size();
      request_context ctx{w_, req, endpoint_of(req.target()), *rt, out_, conn_, result};
      bool keep = false;
      std::optional<std::string> failure;
      try {
        keep = co_await handle_request(ctx);
      } catch (const std::exception& e) {
        failure = e.what();
      }
      if (failure) {
        // A bug or exhaustion must not leave the client waiting or the request counted forever:
        // answer 500 when nothing was sent yet, then close the connection.
        std::cerr << "tollgate: request " << record_.request_id << " failed: " << *failure << std::endl;
        if (record_.status == 0) co_await out_.send_error(internal_error("The gateway failed to handle this request."), false);
        keep = false;
      }
      finish(result, req.body(), rt);
      if (!keep || !req.keep_alive()) break;
    }
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
  }

 private:
  /// Answers a request that is not read (or not whole) with err, and closes the connection.
  template <class Req>
  net::awaitable<void> refuse(const Req& head, const runtime& rt, api_error err) {
    request_result result = begin(head, rt);
    co_await out_.send_error(err, false);
    finish(result);
  }

  std::string_view buffered() const {
    const auto b = buffer_.data();
    return {static_cast<const char*>(b.data()), b.size()};
  }

  /// A client that waits on Expect: 100-continue (HTTP/1.1) before it sends its body.
  template <class Head>
  static bool expects_continue(const Head& head) {
    const auto e = head.find(http::field::expect);
    return e != head.end() && beast::iequals(e->value(), "100-continue") && head.version() >= 11;
  }

  /// Tells such a client to send its body.
  net::awaitable<beast::error_code> send_continue() {
    auto [ec, n] = co_await net::async_write(socket_, net::buffer("HTTP/1.1 100 Continue\r\n\r\n", 25), use_tuple);
    co_return ec;
  }

  /// Reads a body of a known length (the head is read, and its limit checked) straight into body:
  /// what the head's read left in the buffer, then the rest from the socket in as few reads as
  /// the kernel allows. Beast's parser would read it through the connection's buffer a few KB at
  /// a time and copy each piece into the body. Whatever follows the body in the buffer (a
  /// pipelined request) stays there. Used for the heads Beast's parser read (the unusual shapes):
  /// the body is the parser's string, zeroed as it is sized; a head of the usual shape has its
  /// body read into the request's own storage, unfilled (body_from_buffer, read_body_rest).
  net::awaitable<beast::error_code> read_body(std::string& body, std::size_t length) {
    body.resize(length);
    const std::size_t got = body_from_buffer(body.data(), length);
    if (got == length) co_return beast::error_code{};
    co_return co_await read_body_rest(body.data() + got, length - got);
  }

  /// read_body's first part: copies what the buffer holds of a body of length bytes into the
  /// storage at into, and returns how many bytes that was (all of them, the usual case for a
  /// small body, which came with its head).
  std::size_t body_from_buffer(char* into, std::size_t length) {
    const std::size_t buffered = std::min(buffer_.size(), length);
    net::buffer_copy(net::buffer(into, buffered), buffer_.data());
    buffer_.consume(buffered);
    return buffered;
  }

  /// Some bytes of the client's socket into `into`, by an edge read (adapters/edge_read.hpp):
  /// after a read that drained the socket, the next waits for epoll's next edge.
  net::awaitable<std::tuple<boost::system::error_code, std::size_t>> read_edge(net::mutable_buffer into) {
    return net::async_initiate<decltype(use_tuple), void(boost::system::error_code, std::size_t)>(
        [this](auto handler, net::mutable_buffer b) {
          adapters::async_read_edge(w_.pool().reactor(), socket_, b, std::move(handler));
        },
        use_tuple, into);
  }

  /// read_body's second part: the missing bytes of the body from the socket, into the storage at
  /// into. Until it completes they are unwritten: a read cut short fails the request.
  net::awaitable<beast::error_code> read_body_rest(char* into, std::size_t missing) {
    // Edge reads, each asking for all that is missing: a body that comes in pieces drains the
    // socket between them, and Asio's reads would each time try once more and find nothing.
    while (missing > 0) {
      auto [ec, n] = co_await read_edge(net::buffer(into, missing));
      if (ec == net::error::eof) co_return http::error::partial_message;  // cut off mid-body
      if (ec) co_return ec;
      into += n;
      missing -= n;
    }
    co_return beast::error_code{};
  }

  /// Reads what a refused client still sends (up to a bound) after our answer and a shutdown of
  /// our side, then closes: closing with unread bytes would reset the connection, and a client
  /// still writing its body would see the reset instead of the answer.
  net::awaitable<void> drain_and_close() {
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) co_return;
    buffer_.clear();
    out_.set_deadline(drain_timeout);
    std::size_t drained = 0;
    while (drained < max_drain_bytes) {
      auto [rec, rn] = co_await socket_.async_read_some(buffer_.prepare(64 * 1024), use_tuple);
      if (rec) break;  // the client closed (or the deadline passed)
      drained += rn;
    }
    out_.clear_deadline();
  }

  /// A new request: a fresh result over the connection's record (cleared, its strings' storage
  /// kept), counted in flight until finish().
  template <class Req>
  request_result begin(const Req& req, const runtime& rt) {
    const auto started = adapters::loop_clock::now();
    const auto origin = req.find(http::field::origin);
    out_.begin(req.method() == http::verb::head,
               origin == req.end() ? std::string() : cors_allowed_origin(rt.cfg.server.cors_origins, origin->value()));
    record_.clear();
    record_.method.assign(req.method_string());
    record_.path.assign(req.target());
    if (auto it = req.find("x-request-id"); it != req.end() && usable_request_id(it->value())) {
      record_.request_id.assign(it->value());
    } else {
      w_.new_request_id(record_.request_id);
    }
    ++w_.shared().in_flight;
    return request_result{record_, started, std::nullopt};
  }

  /// body: the request's body, when there was one (to count its prompt); rt: the snapshot it
  /// ran on. publish() ends the request's count in flight, at once or after counting its tokens.
  void finish(request_result& result, std::string_view body = {}, std::shared_ptr<const runtime> rt = nullptr) {
    publish(result, w_, body, std::move(rt));
  }

  worker& w_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
  std::list<worker::session_entry>::iterator entry_;
  access_record record_;  // the current request's; its strings' storage serves the next one
  request req_;           // the same
  responder out_;
  connection_state conn_;
};

}  // namespace

net::awaitable<void> run_session(worker& w, tcp::socket socket) {
  session s(w, std::move(socket));
  co_await s.run();
}

}  // namespace tollgate::gateway
