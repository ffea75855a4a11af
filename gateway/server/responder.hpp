// The way a handler answers: whole responses, or a head and then chunks (a stream), written to the
// connection with a deadline each, and the watch on the client while an upstream call runs. Owned
// by the session; one per connection, used by one request at a time.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <array>
#include <cstddef>
#include <list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "adapters/loop_clock.hpp"
#include "config/config.hpp"
#include "gateway/observability/access_log.hpp"
#include "protocol/errors.hpp"
#include "gateway/server/http_head.hpp"
#include "gateway/proxy/attempt_runner.hpp"
#include "gateway/server/worker.hpp"

namespace tollgate::protocol {
class client_dialect;
}

namespace tollgate::gateway {

class responder {
 public:
  /// record: the access record of the request being answered (status, bytes, id, backend).
  responder(worker& w, boost::asio::ip::tcp::socket& socket, std::list<worker::session_entry>::iterator entry,
            access_record& record)
      : w_(w), socket_(socket), entry_(entry), record_(record) {}

  /// A new request: HEAD answers leave their bodies out.
  /// cors_origin: the Access-Control-Allow-Origin its answers carry (empty: none).
  void begin(bool head_request, std::string cors_origin) {
    head_request_ = head_request;
    dialect_ = nullptr;
    upstream_model_ = nullptr;
    cors_origin_ = std::move(cors_origin);
    ratelimit_.clear();
  }
  const std::string& cors_origin() const { return cors_origin_; }

  /// The x-ratelimit-* headers of the request's key (empty: a key without limits); they replace
  /// the provider's own.
  void set_ratelimit(std::vector<std::pair<std::string, std::string>> headers) { ratelimit_ = std::move(headers); }
  /// An upstream header that goes on to the client: relayed_header, less the provider's
  /// x-ratelimit-* when the key has limits of its own.
  bool pass_header(std::string_view name) const {
    return relayed_header(name) && (ratelimit_.empty() || !name.starts_with("x-ratelimit-"));
  }

  /// The request's client speaks dialect (owned by the request's context): whole answers and the
  /// gateway's own errors are turned into it. Streams are turned by the exchange.
  void speak(protocol::client_dialect* dialect) { dialect_ = dialect; }
  /// The model name sent upstream (x-tollgate-upstream-model), kept by the request's proxy result.
  void name_upstream_model(const std::string* model) { upstream_model_ = model; }

  /// Writes a whole response. keep_alive: the client may send another request after it. Returns
  /// whether the connection stays open (the write succeeded, keep_alive, and not draining).
  boost::asio::awaitable<bool> send(boost::beast::http::response<boost::beast::http::string_body> res, bool keep_alive);
  boost::asio::awaitable<bool> send_json(int status, std::string body, bool keep_alive);
  /// An OpenAI-shaped error; its code becomes the access record's error unless one is set.
  boost::asio::awaitable<bool> send_error(const protocol::api_error& err, bool keep_alive);
  /// An upstream answer as it came (status, type, relayed headers, body).
  boost::asio::awaitable<bool> send_buffered(buffered_response b);
  /// send_buffered without a coroutine when the client's socket takes the whole answer at once
  /// (the usual case): true then, or on an error, with keep as send_buffered returns it. false:
  /// write_pending() writes the rest, and b outlives it. b may be changed (the client's dialect).
  bool send_buffered_now(buffered_response& b, bool& keep);
  /// The rest of a whole answer that send_buffered_now() or write_whole began; returns keep-alive.
  boost::asio::awaitable<bool> write_pending();
  /// more and last: further pieces of the body, written after it.
  boost::asio::awaitable<bool> write_whole(response_head_text& head, int status, std::string_view body, bool keep_alive,
                                           std::string_view more = {}, std::string_view last = {});

  /// A stream: the head (chunked), then chunks, then the last chunk. Each returns the error and
  /// the bytes written (added to the access record).
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> write_stream_head(response_head_text& head,
                                                                                               int status);
  /// An upstream's event stream, relayed: its status and the headers that pass, as
  /// text/event-stream, decorated, its head written. False when the client is gone.
  boost::asio::awaitable<bool> start_upstream_stream(const adapters::response_head& head);
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> write_chunk(std::string_view data);
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> write_last_chunk();
  /// write_chunk without a coroutine when the socket takes the whole chunk at once (the usual
  /// case for a stream's events): true then, or on an error (in ec), with the bytes counted as
  /// write_chunk counts them. false when only `sent` bytes went: write_chunk_rest(data, sent)
  /// writes the rest, before anything else is written.
  bool write_chunk_now(std::string_view data, std::size_t& sent, boost::system::error_code& ec);
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> write_chunk_rest(std::string_view data,
                                                                                              std::size_t sent);

  /// x-request-id, x-tollgate-backend and x-tollgate-upstream-model (once a backend is chosen),
  /// the key's x-ratelimit-*, the CORS headers for an allowed origin, Server.
  void decorate(response_head_text& head);

  /// Watches the client while call runs, so that a client that leaves cancels it: at once for a
  /// stream (long, and its upstream may stay silent for a while), and for a whole answer only
  /// from the worker's next heartbeat on (within 250 ms), so that a quick answer spends no system
  /// call on it.
  std::shared_ptr<client_watch> watch(adapters::call& call, bool at_once);
  void unwatch(const std::shared_ptr<client_watch>& watch);

  /// The connection's deadline: the worker's heartbeat cancels its I/O once it has passed.
  void set_deadline(config::duration d) { entry_->deadline = adapters::loop_clock::now() + d; }
  void clear_deadline() { entry_->deadline = std::chrono::steady_clock::time_point::max(); }

  access_record& record() { return record_; }

 private:
  void arm(const std::shared_ptr<client_watch>& watch);
  /// write_whole's work up to the first write: true when that write took everything (or
  /// failed), with keep; false: pending_ holds the buffers, past pending_sent_, for write_pending().
  bool whole_now(response_head_text& head, int status, std::string_view body, bool keep_alive, std::string_view more,
                 std::string_view last, bool& keep);
  /// What the socket takes of buffers at once, in one non-blocking sendmsg (up to 4 pieces):
  /// true when that is all of them or it failed (ec); false leaves `sent` bytes written.
  bool write_now(std::span<const boost::asio::const_buffer> buffers, std::size_t& sent, boost::system::error_code& ec);
  /// Writes buffers under the write deadline: what the socket takes at once in one non-blocking
  /// sendmsg (usually all of it), the rest asynchronously. The buffers outlive the write.
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> write(
      std::span<const boost::asio::const_buffer> buffers);
  /// The buffers past the first `sent` bytes, asynchronously under the write deadline; returns
  /// sent plus what it wrote.
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> write_after(
      std::span<const boost::asio::const_buffer> buffers, std::size_t sent);

  worker& w_;
  boost::asio::ip::tcp::socket& socket_;
  std::list<worker::session_entry>::iterator entry_;
  access_record& record_;
  bool head_request_ = false;  // the request being answered is a HEAD: no body goes out
  protocol::client_dialect* dialect_ = nullptr;  // null: the client speaks OpenAI's API
  const std::string* upstream_model_ = nullptr;
  std::string cors_origin_;  // the request's Origin when server.cors allows it
  std::vector<std::pair<std::string, std::string>> ratelimit_;  // x-ratelimit-* of a key with limits
  std::string head_text_;  // the answers' heads are written here, one at a time (kept: no allocation a request)
  // A whole answer's write that the socket did not take at once: its buffers (the head in
  // head_text_, the body the caller's), the bytes already sent, and whether the connection stays.
  std::array<boost::asio::const_buffer, 4> pending_{};
  std::size_t pending_sent_ = 0;
  bool pending_keep_ = false;
  std::shared_ptr<client_watch> last_watch_;  // reused by the next watch when nothing else holds it
  char peek_byte_[1];
};

}  // namespace tollgate::gateway
