#include "gateway/server/responder.hpp"

#include "adapters/send_now.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http.hpp>


#include <array>
#include <charconv>
#include <vector>

#include "gateway/server/cors.hpp"
#include "protocol/client_dialect.hpp"
#include "gateway/server/server.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;

namespace {
constexpr auto use_tuple = net::as_tuple(net::use_awaitable);
constexpr auto write_timeout = std::chrono::seconds(30);
}  // namespace

// A write the client's socket takes whole (it has room: the usual case) costs one system call and
// no trip through the loop: async_write would send as much at once too, then post its completion
// and resume the writer from the queue. What the socket does not take goes asynchronously.
net::awaitable<std::tuple<boost::system::error_code, std::size_t>> responder::write(
    std::span<const net::const_buffer> buffers) {
  std::size_t sent = 0;
  boost::system::error_code ec;
  if (write_now(buffers, sent, ec)) co_return std::tuple{ec, sent};
  co_return co_await write_after(buffers, sent);
}

bool responder::write_now(std::span<const net::const_buffer> buffers, std::size_t& sent, boost::system::error_code& ec) {
  // Up to 4 pieces go in the one sendmsg; more (rare) all go asynchronously.
  std::size_t total = 0, pieces = 0;
  for (const net::const_buffer& b : buffers) total += b.size(), pieces += b.size() > 0;
  sent = 0;
  if (pieces > 4 || total == 0) return false;
  const adapters::send_result r = adapters::send_now(socket_.native_handle(), buffers, 4);
  if (r.error) {
    ec = r.error;  // nothing counted as written
    return true;
  }
  sent = r.sent;
  return sent == total;
}

net::awaitable<std::tuple<boost::system::error_code, std::size_t>> responder::write_after(
    std::span<const net::const_buffer> buffers, std::size_t sent) {
  std::vector<net::const_buffer> rest;
  rest.reserve(buffers.size());
  adapters::buffers_after(buffers, sent, rest);
  set_deadline(write_timeout);
  auto [ec, n] = co_await net::async_write(socket_, rest, use_tuple);
  clear_deadline();
  co_return std::tuple{ec, sent + n};
}

void responder::decorate(response_head_text& head) {
  head.field("x-request-id", record_.request_id);
  if (!record_.backend.empty()) head.field("x-tollgate-backend", record_.backend);
  if (upstream_model_ != nullptr && !upstream_model_->empty()) head.field("x-tollgate-upstream-model", *upstream_model_);
  for (const auto& [name, value] : ratelimit_) head.field(name, value);
  if (!cors_origin_.empty()) {
    head.field("Access-Control-Allow-Origin", cors_origin_);
    head.field("Access-Control-Expose-Headers", cors_exposed_headers);
    head.field("Vary", "Origin");
  }
  head.field("Server", "tollgate");
}

net::awaitable<bool> responder::write_whole(response_head_text& head, int status, std::string_view body, bool keep_alive,
                                            std::string_view more, std::string_view last) {
  bool keep = false;
  if (whole_now(head, status, body, keep_alive, more, last, keep)) co_return keep;
  co_return co_await write_pending();
}

bool responder::whole_now(response_head_text& head, int status, std::string_view body, bool keep_alive,
                          std::string_view more, std::string_view last, bool& keep) {
  keep_alive = keep_alive && !w_.shared().draining;
  record_.status = status;
  const std::size_t content_length = body.size() + more.size() + last.size();
  // An answer to HEAD has the head of the answer to GET and no body (RFC 9110 9.3.2).
  if (head_request_) body = more = last = {};
  pending_ = {net::buffer(head.finish(content_length, keep_alive)), net::buffer(body), net::buffer(more),
              net::buffer(last)};
  pending_keep_ = keep_alive;
  boost::system::error_code ec;
  if (!write_now(pending_, pending_sent_, ec)) return false;
  record_.bytes_out += pending_sent_;
  keep = !ec && keep_alive;
  return true;
}

net::awaitable<bool> responder::write_pending() {
  auto [ec, n] = co_await write_after(pending_, pending_sent_);
  record_.bytes_out += n;
  co_return !ec && pending_keep_;
}

net::awaitable<bool> responder::send(http::response<http::string_body> res, bool keep_alive) {
  if (dialect_ != nullptr && res.result_int() >= 400) {  // the gateway's own errors, in the client's dialect
    auto a = dialect_->error(res.result_int(), res.body());
    res.result(a.status);
    res.body() = std::move(a.body);
  }
  response_head_text head(res.result_int(), head_text_);
  for (const auto& f : res.base()) head.field(f.name_string(), f.value());
  decorate(head);
  co_return co_await write_whole(head, res.result_int(), res.body(), keep_alive);
}

net::awaitable<bool> responder::send_json(int status, std::string body, bool keep_alive) {
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::content_type, "application/json");
  res.body() = std::move(body);
  co_return co_await send(std::move(res), keep_alive);
}

net::awaitable<bool> responder::send_error(const protocol::api_error& err, bool keep_alive) {
  if (record_.error.empty()) record_.error = err.code;
  co_return co_await send_json(err.status, err.body(), keep_alive);
}

net::awaitable<bool> responder::send_buffered(buffered_response b) {
  bool keep = false;
  if (send_buffered_now(b, keep)) co_return keep;
  co_return co_await write_pending();
}

bool responder::send_buffered_now(buffered_response& b, bool& keep) {
  if (b.splice_at && dialect_ != nullptr) {  // the dialect reads the body as it goes out
    b.body.replace(*b.splice_at, b.splice_size, b.splice);
    b.splice_at.reset();
  }
  if (dialect_ != nullptr) {
    auto a = dialect_->whole(b.status, b.body);
    b.status = a.status;
    b.body = std::move(a.body);
    b.content_type = "application/json";
  }
  response_head_text head(b.status, head_text_);
  head.field("Content-Type", b.content_type);
  for (const auto& [name, value] : b.headers) {
    if (pass_header(name)) head.field(name, value);
  }
  decorate(head);
  if (b.splice_at) {
    const std::string_view body = b.body;
    const std::size_t at = *b.splice_at;
    return whole_now(head, b.status, body.substr(0, at), true, b.splice, body.substr(at + b.splice_size), keep);
  }
  return whole_now(head, b.status, b.body, true, {}, {}, keep);
}

net::awaitable<bool> responder::start_upstream_stream(const adapters::response_head& head) {
  response_head_text res(head.status, head_text_);
  res.field("Content-Type", "text/event-stream").field("Cache-Control", "no-cache");
  for (const auto& [name, value] : head.headers) {
    if (pass_header(name)) res.field(name, value);
  }
  decorate(res);
  auto [ec, n] = co_await write_stream_head(res, head.status);
  co_return !ec;
}

net::awaitable<std::tuple<boost::system::error_code, std::size_t>> responder::write_stream_head(response_head_text& head,
                                                                                                int status) {
  record_.status = status;
  // The deadline is cleared after each write (write() does): the wait for the upstream's next
  // event has timeouts of its own, and a passing deadline would cancel the client watch too.
  const std::array<net::const_buffer, 1> buffers{net::buffer(head.finish(std::nullopt, !w_.shared().draining))};
  auto [ec, n] = co_await write(buffers);
  if (!ec) record_.bytes_out += n;
  co_return std::tuple{ec, n};
}

namespace {

/// A chunk's framing around data: its size line, data, CRLF. `size` holds the size line's text.
std::array<net::const_buffer, 3> chunk_buffers(std::string_view data, char (&size)[20]) {
  const auto end = std::to_chars(size, size + sizeof size - 2, data.size(), 16).ptr;  // no printf an event
  end[0] = '\r';
  end[1] = '\n';
  return {net::buffer(size, static_cast<std::size_t>(end + 2 - size)), net::buffer(data), net::buffer("\r\n", 2)};
}

}  // namespace

net::awaitable<std::tuple<boost::system::error_code, std::size_t>> responder::write_chunk(std::string_view data) {
  std::size_t sent = 0;
  boost::system::error_code ec;
  if (write_chunk_now(data, sent, ec)) co_return std::tuple{ec, ec ? std::size_t{0} : sent};
  co_return co_await write_chunk_rest(data, sent);
}

bool responder::write_chunk_now(std::string_view data, std::size_t& sent, boost::system::error_code& ec) {
  char size[20];
  const auto buffers = chunk_buffers(data, size);
  const std::size_t total = buffers[0].size() + buffers[1].size() + buffers[2].size();
  const adapters::send_result r = adapters::send_now(socket_.native_handle(), buffers, 4);
  sent = r.sent;
  ec = r.error;
  if (r.error) return true;
  if (r.sent != total) return false;
  record_.bytes_out += total;
  return true;
}

net::awaitable<std::tuple<boost::system::error_code, std::size_t>> responder::write_chunk_rest(std::string_view data,
                                                                                               std::size_t sent) {
  char size[20];
  const auto buffers = chunk_buffers(data, size);
  auto [ec, n] = co_await write_after(buffers, sent);
  if (!ec) record_.bytes_out += n;
  co_return std::tuple{ec, n};
}

net::awaitable<std::tuple<boost::system::error_code, std::size_t>> responder::write_last_chunk() {
  const std::array<net::const_buffer, 1> buffers{net::buffer("0\r\n\r\n", 5)};
  auto [ec, n] = co_await write(buffers);
  record_.bytes_out += n;
  co_return std::tuple{ec, n};
}

std::shared_ptr<client_watch> responder::watch(adapters::call& call, bool at_once) {
  // The last request's watch, when no one holds it any more (its caller let it go and no peek's
  // handler is pending: all on this thread), serves again: no allocation a request.
  if (last_watch_ == nullptr || last_watch_.use_count() != 1) last_watch_ = std::make_shared<client_watch>();
  auto watch = last_watch_;
  watch->armed = watch->done = watch->gone = false;
  watch->active = &call;
  if (at_once) {
    arm(watch);
  } else {
    entry_->on_beat = [this, w = watch.get()] { arm(w->shared_from_this()); };
  }
  return watch;
}

/// A peek on the client's socket completes when the client closes (0 bytes) or sends more
/// (pipelined bytes, which stay in the socket for the next read). A peek, unlike a readiness
/// wait, does not make Asio re-register the descriptor with epoll. Pipelined bytes end the peek;
/// then the watch just stops.
void responder::arm(const std::shared_ptr<client_watch>& watch) {
  watch->armed = true;
  socket_.async_receive(net::buffer(peek_byte_), tcp::socket::message_peek,
                        [watch](boost::system::error_code ec, std::size_t) {
                          if (watch->done) return;
                          // Closed by drain or stop (aborted), or the peer closed (eof).
                          if (ec) {
                            watch->gone = true;
                            watch->active->cancel();
                          }
                        });
}

void responder::unwatch(const std::shared_ptr<client_watch>& watch) {
  watch->done = true;
  entry_->on_beat = nullptr;
  if (!watch->armed) return;
  boost::system::error_code ignored;
  socket_.cancel(ignored);
}

}  // namespace tollgate::gateway
