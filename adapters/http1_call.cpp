#include "adapters/http1_call.hpp"

#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/container/small_vector.hpp>


#include <algorithm>
#include <array>
#include <cassert>
#include <cctype>
#include <charconv>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "adapters/edge_read.hpp"
#include "adapters/event_mailbox.hpp"
#include "adapters/kept_blocks.hpp"
#include "adapters/op_memory.hpp"
#include "adapters/send_now.hpp"
#include "protocol/unfilled_string.hpp"
#include "adapters/upstream_pool.hpp"
#include "protocol/chunked_body.hpp"
#include "protocol/http1_head.hpp"

namespace tollgate::adapters {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

constexpr std::size_t pause_above_bytes = 1 << 20;  // stop reading the upstream past this
// A read asks for read_size bytes at first (stream_read_size for a stream), and for twice as many
// (up to max_read_size) after a read that filled what it asked for: a large answer is read in few
// system calls, while a stream of small events keeps its connection's buffer small (a held stream
// is mostly idle, and its buffer lasts as long as it does).
constexpr std::size_t read_size = 16 * 1024;
constexpr std::size_t stream_read_size = 1024;
constexpr std::size_t max_read_size = 256 * 1024;
// A whole answer with a Content-Length up to this size (the gateway's bound on whole answers) is
// read straight into one string of that size, not through the connection's buffer and the call's
// events; a larger one goes the usual way, and the gateway refuses it.
constexpr std::uint64_t max_direct_body = 64 * 1024 * 1024;
// A request up to this size is taken whole by a socket's send buffer: an early error answer to a
// larger one may leave unread bytes behind, so its connection is not reused.
constexpr std::size_t one_write_bytes = 64 * 1024;

// How soon after sending a reused connection must fail for the request to go again on a new one.
constexpr auto stale_window = std::chrono::seconds(1);
constexpr std::uint32_t max_header_bytes = 64 * 1024;

std::string millis(config::duration d) { return std::to_string(d.count()) + " ms"; }

class transfer;

/// Turns response bytes into call events as they are parsed; keeps no copy of the body.
class response_reader final : public http::basic_parser<false> {
 public:
  explicit response_reader(transfer& t) : t_(t) {
    header_limit(max_header_bytes);
    body_limit(boost::none);  // whole answers are bounded by the gateway, streams are not
    eager(true);
  }
  int status() const { return status_; }

 private:
  void on_request_impl(http::verb, beast::string_view, beast::string_view, int, beast::error_code& ec) override {
    ec = http::error::bad_version;  // a response parser never sees a request line
  }
  void on_response_impl(int code, beast::string_view, int, beast::error_code&) override {
    status_ = code;
    head_ = response_head{};
    head_.status = code;
    head_.headers.reserve(512);
  }
  void on_field_impl(http::field, beast::string_view name, beast::string_view value, beast::error_code& ec) override {
    // Beast checks names and line endings; this holds both transports to the same rule.
    if (!valid_field_name(name) || !valid_field_value(value)) {
      ec = http::error::bad_value;
      return;
    }
    head_.headers.emplace_back_lower(name, value);
  }
  void on_header_impl(beast::error_code&) override;
  void on_body_init_impl(const boost::optional<std::uint64_t>& length, beast::error_code&) override;
  std::size_t on_body_impl(beast::string_view body, beast::error_code&) override;
  void on_chunk_header_impl(std::uint64_t, beast::string_view, beast::error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, beast::error_code&) override {
    return on_body_impl(body, ignored_);
  }
  void on_finish_impl(beast::error_code&) override {}

  transfer& t_;
  int status_ = 0;
  response_head head_;
  beast::error_code ignored_;
};

/// The state of one request, shared by the call (its owner) and the I/O handlers in flight, so
/// that a handler that completes after the call is gone finds it marked finished.
class transfer : public std::enable_shared_from_this<transfer>, mailbox_producer {
 public:
  // The request by reference: a request's move copies each of its parts' strings.
  transfer(const http1_origin& origin, io_refs refs, upstream_request&& request)
      : origin_(origin),
        refs_(refs),
        body_(std::move(request.body)),
        parts_(std::move(request.parts)),
        deadlines_(deadlines_of(refs.mailboxes != nullptr ? *refs.mailboxes : mailbox_list(refs.io))),
        mailbox_(refs.io, origin.timeouts, refs.mailboxes),
        stream_(request.stream),
        read_size_(request.stream ? stream_read_size : read_size) {
    using namespace std::string_view_literals;
    const std::string& fixed = request.stream ? origin.stream_headers : origin.plain_headers;
    std::size_t length = body_.size();
    for (const body_part& p : parts_) {
      length += p.bytes().size();
      borrows_ = borrows_ || p.text.empty();
    }
    // A GET or DELETE without a body says nothing of one (RFC 9110 8.6).
    const bool says_length = length > 0 || request.method == upstream_request::verb::post;
    char digits[24];
    const auto length_text = std::string_view(digits, std::to_chars(digits, digits + sizeof digits, length).ptr);
    const std::string_view verb = verb_name(request.method);
    // Sized whole first (one allocation), then the pieces copied in place.
    std::size_t size = verb.size() + 1 + origin.base_path.size() + request.path.size() +
                       (request.query.empty() ? 0 : 1 + request.query.size()) + " HTTP/1.1\r\n"sv.size() +
                       fixed.size() + 2;
    for (const auto& [name, value] : request.headers) size += name.size() + 2 + value.size() + 2;
    if (!request.request_id.empty()) size += "X-Request-Id: "sv.size() + request.request_id.size() + 2;
    if (says_length) size += "Content-Length: "sv.size() + length_text.size() + 2;
    head_.resize(size);
    char* out = head_.data();
    const auto put = [&out](std::string_view s) {
      if (!s.empty()) std::memcpy(out, s.data(), s.size());
      out += s.size();
    };
    put(verb), put(" "sv), put(origin.base_path), put(request.path);
    if (!request.query.empty()) put("?"sv), put(request.query);
    put(" HTTP/1.1\r\n"sv), put(fixed);
    for (const auto& [name, value] : request.headers) put(name), put(": "sv), put(value), put("\r\n"sv);
    if (!request.request_id.empty()) put("X-Request-Id: "sv), put(request.request_id), put("\r\n"sv);
    if (says_length) put("Content-Length: "sv), put(length_text), put("\r\n"sv);
    put("\r\n"sv);
    assert(out == head_.data() + head_.size());
    // The head and the body go out in one gathered write: the body's parts are not joined.
    buffers_.push_back(net::buffer(head_));
    if (!body_.empty()) buffers_.push_back(net::buffer(body_));
    for (const body_part& p : parts_) buffers_.push_back(net::buffer(p.bytes()));
  }

  void begin() {
    deadlines_.set(total_deadline_, origin_.timeouts.total);
    connection_ = refs_.pool.take(origin_.pool_key);
    if (connection_) {
      // A stream keeps its connection's buffer while it lasts: one that an earlier answer grew
      // starts again small (it is empty between answers).
      if (read_size_ == stream_read_size && connection_->buffer.capacity() > stream_read_size) {
        connection_->buffer.shrink_to_fit();
      }
      send();
    } else {
      open();
    }
  }

  // The consumer side (the call's next(), on the same thread).

  bool ready() const { return mailbox_.ready(); }
  std::size_t queued_bytes() const { return mailbox_.queued_bytes(); }
  void on_ready(std::function<void()> hook) { mailbox_.on_ready(std::move(hook)); }
  void recycle(std::string&& s) { mailbox_.recycle(std::move(s)); }
  void set_sink(data_sink* sink) { mailbox_.set_sink(sink); }

  void cancel() {
    if (mailbox_.ended()) return;
    fail(failure::cancelled, "the client went away");
  }

  /// The call is gone: stop everything. A connection in the middle of a response is closed.
  void abandon() {
    mailbox_.on_ready(nullptr);
    mailbox_.set_sink(nullptr);
    if (!mailbox_.ended()) {
      finish_with(failure::cancelled, "the call was dropped");
    } else if (pool_after_write_ && borrows_) {
      // The write still in flight reads bytes the caller may now free: the connection goes.
      pool_after_write_ = false;
      stop_timers();
      close_connection();
    }
  }

  net::awaitable<call_event> next() { return mailbox_.next(*this); }
  bool try_next(call_event& ev) { return mailbox_.try_next(*this, ev); }

  void on_taken() override {
    if (paused_ && mailbox_.queued_bytes() < pause_above_bytes / 2) {
      paused_ = false;
      read();
    }
  }

  void on_silence(bool seen_head) override {
    fail(failure::timeout, seen_head ? "upstream sent nothing within the idle timeout of " + millis(origin_.timeouts.idle)
                                     : "upstream did not answer within the first-token timeout of " +
                                           millis(origin_.timeouts.first_token));
  }

  // The parser's side.

  void on_head(response_head&& head) {
    if (head.status < 200) return;  // 1xx: the real answer follows
    if (!writing_) {
      // The request is sent and answered, never to be sent again (a retry on a fresh connection
      // is only for a connection that answered nothing): a long stream does not keep it.
      std::string().swap(head_);
      std::string().swap(body_);
      body_parts().swap(parts_);
      decltype(buffers_)().swap(buffers_);
      std::vector<net::const_buffer>().swap(rest_);
    }
    call_event ev;
    ev.type = call_event::kind::head;
    ev.head = std::move(head);
    mailbox_.push(std::move(ev));
  }

  /// The head is read and a body follows. A whole answer of a known length is read straight into
  /// answer_ (what the head's read left in the buffer, through on_body(), then the rest from the
  /// socket into it) and handed over in one data event when complete: one copy of its bytes, not
  /// two (the buffer into an event, the event into the answer).
  void on_body_init(int status, std::uint64_t length) {
    if (stream_ || status < 200 || length == 0 || length > max_direct_body) return;
    direct_ = true;
    answer_length_ = static_cast<std::size_t>(length);
    answer_.clear();
    answer_.reserve(answer_length_);  // no reallocation below: reads go to answer_.data() + filled_
    filled_ = 0;
  }

  /// coming: at most how many more bytes this read may hand over (what is left of it).
  void on_body(std::string_view bytes, std::size_t coming = 0) {
    if (direct_) {
      answer_.resize(filled_);
      answer_.append(bytes);
      filled_ = answer_.size();
    } else if (!bytes.empty()) {
      mailbox_.add_data(bytes, coming);
    }
  }

 private:
  /// A new connection: resolve (unless the host is an address), connect, then send.
  void open() {
    parser_.reset();
    connection_ = std::make_shared<upstream_connection>(refs_.io);
    connect_deadline_ = std::chrono::steady_clock::now() + origin_.timeouts.connect;
    boost::system::error_code ec;
    const auto address = net::ip::make_address(origin_.host, ec);
    if (!ec) {
      const std::array<tcp::endpoint, 1> endpoints{tcp::endpoint(address, origin_.port)};
      connect(endpoints);
      return;
    }
    resolver_.emplace(refs_.io);
    arm_connect_timer();
    resolver_->async_resolve(origin_.host, std::to_string(origin_.port),
                             [self = shared_from_this()](boost::system::error_code rec, tcp::resolver::results_type results) {
                               if (self->mailbox_.ended()) return;
                               if (rec) {
                                 self->fail(failure::connect, "could not resolve " + self->origin_.host + ": " + rec.message());
                                 return;
                               }
                               self->connect(results);
                             });
  }

  template <class Endpoints>
  void connect(const Endpoints& endpoints) {
    arm_connect_timer();
    net::async_connect(connection_->socket, endpoints,
                       [self = shared_from_this(), c = connection_](boost::system::error_code ec, const tcp::endpoint&) {
                         if (self->mailbox_.ended() || c != self->connection_) return;
                         self->connecting_ = false;
                         self->connect_timer_->cancel();
                         if (ec) {
                           self->fail(failure::connect,
                                      "could not connect to " + self->origin_.pool_key + ": " + ec.message());
                           return;
                         }
                         boost::system::error_code ignored;
                         c->socket.set_option(tcp::no_delay(true), ignored);
                         c->socket.set_option(net::socket_base::keep_alive(true), ignored);
                         enable_edge_reads(c->socket);  // else its reads try at once, as Asio's do
                         self->send();
                       });
  }

  void arm_connect_timer() {
    if (!connect_timer_) connect_timer_.emplace(refs_.io);
    connect_timer_->expires_at(connect_deadline_);
    connecting_ = true;
    connect_timer_->async_wait([self = shared_from_this()](boost::system::error_code ec) {
      // connecting_: the connect may have completed in the same turn as the timer expired.
      if (ec || self->mailbox_.ended() || !self->connecting_) return;
      self->fail(failure::timeout, "connecting to " + self->origin_.pool_key + " timed out after " +
                                       millis(self->origin_.timeouts.connect));
    });
  }

  /// Writes the request. A request the socket takes whole (the usual case) goes in one
  /// non-blocking sendmsg here, and the answer's first read is asked for at once: on a connection
  /// whose last read drained it (an edge read, see edge_read.hpp) it waits for epoll's next edge
  /// without trying the socket, so it costs no system call that finds nothing and no trip through
  /// the loop's queue. The rest of a large request is written while the answer is read: an
  /// upstream may answer (413, say) before it has read the whole body.
  void send() {
    parser_.emplace(*this);
    fast_ = false;
    got_bytes_ = false;
    writing_ = false;
    write_failed_ = false;
    large_request_ = false;
    sent_at_ = loop_clock::now();
    send_now();
    std::size_t request_bytes = 0;
    for (const net::const_buffer& b : buffers_) request_bytes += b.size();
    large_request_ = !rest_.empty() || request_bytes > one_write_bytes;
    if (write_failed_) {
      read();  // the read gives the verdict: an answer before the failure, or the error or close
      return;
    }
    if (rest_.empty()) {
      read();
      return;
    }
    writing_ = true;
    // Borrowed parts of the body are only read while the call is alive: when it ends with the
    // write unfinished, the connection is closed (complete(), finish_with()) and the write stops.
    net::async_write(connection_->socket, std::span<const net::const_buffer>(rest_),
                     [self = shared_from_this(), c = connection_](boost::system::error_code ec, std::size_t) {
                       if (c != self->connection_) return;
                       self->writing_ = false;
                       // A failed write leaves the verdict to the read, which is pending: the upstream
                       // may have answered before it stopped reading (413 for a large body, say), and
                       // otherwise the read ends with the connection's error or its close.
                       if (ec) self->write_failed_ = true;
                       if (self->pool_after_write_) {  // answered already: the connection is free now
                         self->pool_after_write_ = false;
                         self->deadlines_.cancel(self->total_deadline_);
                         if (ec) {
                           self->close_connection();
                         } else {
                           self->pool_connection();
                         }
                       }
                     });
    read();
  }

  /// One non-blocking sendmsg of as much of the request as the socket takes. What is left goes in
  /// rest_ (empty when all went); a hard error sets write_failed_.
  void send_now() {
    rest_.clear();
    const send_result r = adapters::send_now(connection_->socket.native_handle(), buffers_);
    if (r.error) {
      write_failed_ = true;
      return;
    }
    buffers_after(buffers_, r.sent, rest_);
  }

  void read() {
    if (reading_ || mailbox_.ended() || !connection_) return;
    reading_ = true;
    auto& c = *connection_;
    net::mutable_buffer into;
    if (direct_) {
      // Sized a read at a time, so that only what arrives is touched (the length is the upstream's
      // word); answer_ holds its whole length already, so its bytes stay where they are. Sized
      // without filling (resize_unfilled: the read writes the bytes, zeros first would cost a
      // memset as long as the answer), and up only: a read that brings less than it asked for
      // leaves the rest sized for the next one.
      const std::size_t want = std::min(answer_length_ - filled_, max_read_size);
      if (answer_.size() < filled_ + want) protocol::resize_unfilled(answer_, filled_ + want);
      into = net::buffer(answer_.data() + filled_, want);
    } else {
      into = c.buffer.prepare(read_size_);
    }
    auto done = [self = shared_from_this(), c = connection_](boost::system::error_code ec, std::size_t n) {
      if (c != self->connection_) return;
      self->reading_ = false;
      if (self->mailbox_.ended()) return;
      // The reader is resumed here, once the next read is asked for, not through the loop's
      // queue; self keeps this transfer (and its mailbox) alive however the reader ends the call.
      held_wakes wakes(self->mailbox_);
      if (self->direct_) {
        self->on_direct_read(ec, n);
      } else {
        self->on_read(ec, n);
      }
      wakes.done();
    };
    // The read's state is made in read_memory_: one read is in flight at a time.
    // A read that drains the socket leaves the next one to the socket's next edge: no recv that
    // finds nothing after each of a stream's events.
    async_read_edge(refs_.pool.reactor(), c.socket, into, net::bind_allocator(op_allocator<void>(read_memory_), std::move(done)));
  }

  /// A read into answer_ (see on_body_init()).
  void on_direct_read(boost::system::error_code ec, std::size_t n) {
    filled_ += n;
    if (ec && ec != net::error::eof) {
      fail(failure::broken, "reading from " + origin_.pool_key + " failed: " + ec.message());
      return;
    }
    if (filled_ == answer_length_) {
      finish_answer();
      // Nothing can follow the body in the buffer: reads asked for no more than its rest.
      complete(keep_alive_after(connection_->buffer.size()));
      return;
    }
    if (ec == net::error::eof) {
      fail(failure::broken, "upstream " + origin_.pool_key + " closed the connection mid-response");
      return;
    }
    mailbox_.wake();  // bytes came: the reader's idle wait starts again
    read();
  }

  /// Hands the answer read into answer_ to the reader, whole.
  void finish_answer() {
    direct_ = false;
    call_event ev;
    ev.type = call_event::kind::data;
    answer_.resize(filled_);
    ev.data = std::move(answer_);
    mailbox_.push(std::move(ev));
  }

  /// Whether the connection may serve another request once this answer has ended: the answer
  /// ended exactly and the request is written whole. A success may come before all of a large
  /// body is written (an upstream that answers without reading it, then reads it to find the
  /// next request): the write still going decides when the connection is free. An error to a
  /// large request is never reused: it may have come before the upstream read the rest (413,
  /// say), which the kernel may still hold or the upstream never read; whether our write has
  /// ended when the answer is read is a race.
  bool keep_alive_after(std::size_t left_in_buffer) const {
    const bool success = status() >= 200 && status() < 300;
    return answer_keep_alive() && left_in_buffer == 0 && !write_failed_ && (success || !large_request_);
  }

  void on_read(boost::system::error_code ec, std::size_t n) {
    auto& buffer = connection_->buffer;
    buffer.commit(n);
    if (n > 0) got_bytes_ = true;
    if (n == read_size_) read_size_ = std::min(2 * read_size_, max_read_size);
    if (ec && ec != net::error::eof) {
      if (!got_bytes_ && retry_fresh()) return;
      fail(failure::broken, "reading from " + origin_.pool_key + " failed: " + ec.message());
      return;
    }
    if (!parse()) return;
    if (ec == net::error::eof) {
      on_eof();
      return;
    }
    if (!paused_) read();
  }

  /// Feeds what arrived to the parser. false when the transfer ended (done or failed).
  bool parse() {
    auto& buffer = connection_->buffer;
    while (buffer.size() > 0) {
      if (!fast_ && !parser_->got_some()) start_fast();
      if (fast_ && fast_chunked_) {
        // A chunked body after a head read in one pass: its data taken as views of the buffer.
        std::string_view in(static_cast<const char*>(buffer.data().data()), buffer.size());
        const std::size_t had = in.size();
        while (const auto piece = chunks_.next(in)) on_body(*piece, in.size());
        buffer.consume(had - in.size());
        if (mailbox_.ended()) return false;  // on_body failed the transfer
        if (chunks_.failed()) {
          fail(failure::broken, "malformed response from " + origin_.pool_key + ": " + chunks_.error());
          return false;
        }
        if (chunks_.done()) {
          complete(keep_alive_after(buffer.size()));
          return false;
        }
        break;  // all of it read: more is needed
      }
      if (fast_) {
        // A body of a known length after a head read in one pass: taken as it comes.
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(fast_left_, buffer.size()));
        on_body(std::string_view(static_cast<const char*>(buffer.data().data()), n));
        buffer.consume(n);
        fast_left_ -= n;
        if (fast_left_ == 0) {
          if (direct_) finish_answer();  // all of it came with the head
          complete(keep_alive_after(buffer.size()));
          return false;
        }
        continue;
      }
      beast::error_code ec;
      const std::size_t used = parser_->put(buffer.data(), ec);
      buffer.consume(used);
      if (mailbox_.ended()) return false;  // a callback failed the transfer
      if (ec == http::error::need_more) break;
      if (ec) {
        fail(failure::broken, "malformed response from " + origin_.pool_key + ": " + ec.message());
        return false;
      }
      if (parser_->is_done()) {
        if (parser_->status() < 200) {
          parser_.emplace(*this);  // after 1xx, the real answer
          continue;
        }
        if (direct_) finish_answer();  // all of it came with the head
        complete(keep_alive_after(buffer.size()));
        return false;
      }
    }
    if (mailbox_.queued_bytes() >= pause_above_bytes) paused_ = true;
    return true;
  }

  /// Reads the answer's head in one pass when it is whole in the buffer and of the usual shape
  /// (protocol/http1_head.hpp), and starts its body; otherwise Beast's parser reads it.
  void start_fast() {
    auto& buffer = connection_->buffer;
    response_head head;
    const auto fast = read_response_head(std::string_view(static_cast<const char*>(buffer.data().data()), buffer.size()), head);
    if (!fast) return;
    buffer.consume(fast->head_length);
    fast_ = true;
    fast_status_ = head.status;
    fast_keep_alive_ = fast->keep_alive;
    fast_left_ = fast->content_length;
    fast_chunked_ = fast->chunked;
    chunks_ = protocol::chunked_reader{};
    on_head(std::move(head));
    if (fast_left_ > 0) on_body_init(fast_status_, fast_left_);
  }

  int status() const { return fast_ ? fast_status_ : parser_->status(); }
  bool answer_keep_alive() const { return fast_ ? fast_keep_alive_ : parser_->keep_alive(); }

  void on_eof() {
    if (!got_bytes_ && retry_fresh()) return;
    if (!fast_ && parser_->is_header_done() && parser_->need_eof()) {
      beast::error_code ec;
      parser_->put_eof(ec);
      if (!ec) {
        complete(false);
        return;
      }
    }
    fail(failure::broken, got_bytes_ ? "upstream " + origin_.pool_key + " closed the connection mid-response"
                                     : "upstream " + origin_.pool_key + " closed the connection without answering");
  }

  /// A kept-alive connection the server closed just as we sent on it: the request was not
  /// answered, so it goes once more on a new connection. Only when the connection failed soon
  /// after the send: a server that held the request for longer was working on it, and sending it
  /// again would do that work twice (the route's retry policy decides then).
  bool retry_fresh() {
    if (!connection_ || !connection_->reused || retried_) return false;
    if (std::chrono::steady_clock::now() - sent_at_ > stale_window) return false;
    retried_ = true;
    close_connection();
    open();
    return true;
  }

  void complete(bool keep_alive) {
    call_event ev;
    ev.type = call_event::kind::end;
    mailbox_.stop(std::move(ev));
    if (keep_alive && writing_) {
      // The total timeout still bounds the write (see begin()).
      if (connect_timer_) connect_timer_->cancel();
      pool_after_write_ = true;
    } else {
      stop_timers();
      if (keep_alive) {
        pool_connection();
      } else {
        close_connection();
      }
    }
    mailbox_.wake();
  }

  void pool_connection() {
    // A large answer grew the buffer: an idle connection (or a stream it serves next) keeps no
    // more than about the first read's size.
    if (connection_->buffer.capacity() > 2 * read_size) connection_->buffer.shrink_to_fit();
    refs_.pool.put(origin_.pool_key, std::move(connection_));
  }

  void fail(failure why, std::string message) {
    finish_with(why, std::move(message));
    mailbox_.wake();
  }

  void finish_with(failure why, std::string message) {
    if (direct_) {
      // The part of a direct answer that came goes before the failure, as the parsed one's would.
      direct_ = false;
      if (filled_ > 0 && why != failure::cancelled) {
        call_event part;
        part.type = call_event::kind::data;
        part.data.assign(answer_, 0, filled_);  // a copy: a read in flight still owns answer_
        mailbox_.push(std::move(part));
      }
    }
    call_event ev;
    ev.type = call_event::kind::failed;
    ev.error = why;
    ev.message = std::move(message);
    mailbox_.stop(std::move(ev));
    stop_timers();
    close_connection();
  }

  /// The total timeout passed (the deadline set in begin()).
  void on_total_deadline() {
    const auto self = shared_from_this();  // whatever the reader does when woken
    if (mailbox_.ended()) {
      // Answered, but the request is still being written past the total timeout: give up on
      // the connection.
      if (pool_after_write_) close_connection();
      return;
    }
    fail(failure::timeout, "upstream call exceeded the total timeout of " + millis(origin_.timeouts.total));
  }

  void stop_timers() {
    deadlines_.cancel(total_deadline_);
    if (connect_timer_) connect_timer_->cancel();
    if (resolver_) resolver_->cancel();
  }

  void close_connection() {
    if (!connection_) return;
    boost::system::error_code ignored;
    connection_->socket.close(ignored);
    connection_.reset();
  }


  const http1_origin& origin_;
  io_refs refs_;
  std::string head_;
  std::string body_;
  body_parts parts_;
  // head_, then the body: the usual request (the head, the client's bytes and the edited model
  // between them) without an allocation.
  boost::container::small_vector<net::const_buffer, 8> buffers_;
  std::vector<net::const_buffer> rest_;     // what the first sendmsg did not take
  std::shared_ptr<upstream_connection> connection_;
  std::optional<response_reader> parser_;
  bool fast_ = false;               // the answer's head was read in one pass (start_fast())
  int fast_status_ = 0;             // its status
  bool fast_keep_alive_ = false;    // whether it leaves the connection open
  std::uint64_t fast_left_ = 0;     // body bytes still to come
  bool fast_chunked_ = false;       // its body is chunked, read by chunks_
  protocol::chunked_reader chunks_;
  std::optional<tcp::resolver> resolver_;
  std::optional<net::steady_timer> connect_timer_;
  std::chrono::steady_clock::time_point connect_deadline_;
  loop_deadlines& deadlines_;
  loop_deadlines::member_entry<transfer, &transfer::on_total_deadline> total_deadline_{*this};  // set in begin()
  event_mailbox mailbox_;
  op_memory read_memory_;  // the upstream read's operation (read())
  bool got_bytes_ = false;  // the current connection sent part of an answer
  bool reading_ = false;
  bool writing_ = false;
  bool write_failed_ = false;
  bool large_request_ = false;  // over one_write_bytes, or not taken by the first write
  bool connecting_ = false;
  std::chrono::steady_clock::time_point sent_at_;
  bool paused_ = false;
  bool retried_ = false;
  bool borrows_ = false;           // the body has borrowed parts (see abandon())
  bool stream_;                    // the request asked for a stream
  bool direct_ = false;            // the answer's body is read straight into answer_
  std::string answer_;
  std::size_t answer_length_ = 0;  // its Content-Length
  std::size_t filled_ = 0;         // bytes of answer_ read so far (past them: sized, not yet read)
  bool pool_after_write_ = false;  // answered while the request was still being written
  std::size_t read_size_;
};

void response_reader::on_header_impl(beast::error_code&) { t_.on_head(std::move(head_)); }

void response_reader::on_body_init_impl(const boost::optional<std::uint64_t>& length, beast::error_code&) {
  if (length && !chunked()) t_.on_body_init(status_, *length);
}

std::size_t response_reader::on_body_impl(beast::string_view body, beast::error_code&) {
  t_.on_body(body);
  return body.size();
}

class http1_call final : public call {
 public:
  explicit http1_call(std::shared_ptr<transfer> t) : t_(std::move(t)) {}
  ~http1_call() override { t_->abandon(); }
  net::awaitable<call_event> next() override { return t_->next(); }
  bool try_next(call_event& ev) override { return t_->try_next(ev); }
  void cancel() override { t_->cancel(); }
  bool ready() const override { return t_->ready(); }
  std::size_t queued_bytes() const override { return t_->queued_bytes(); }
  void on_ready(std::function<void()> hook) override { t_->on_ready(std::move(hook)); }
  void recycle(std::string&& s) override { t_->recycle(std::move(s)); }
  void set_sink(data_sink* sink) override { t_->set_sink(sink); }

 private:
  std::shared_ptr<transfer> t_;
};

}  // namespace

std::optional<fast_response> read_response_head(std::string_view buffered, response_head& out) {
  const std::size_t length = protocol::complete_head_length(buffered);
  if (length == 0) return std::nullopt;
  protocol::http1_head head;
  out.headers.clear();
  // A field's lengths take 8 bytes where its ": " and CRLF took 4; the status line is not kept.
  out.headers.reserve(length + 32);
  // The reader takes names that are tokens and values without control bytes but HTAB only: what
  // valid_field_name() and valid_field_value() ask of the parser's fields.
  const bool taken = protocol::read_head(buffered.substr(0, length), false, head, [&](const protocol::head_field& f) {
    out.headers.emplace_back_lower(f.name, f.value);
  });
  // Framed by its length, or chunked in HTTP/1.1 (both: left to Beast, which knows what to make
  // of them).
  if (!taken || head.content_length.has_value() == head.chunked || (head.chunked && head.version < 11))
    return std::nullopt;
  out.status = head.status;
  return fast_response{length, head.content_length.value_or(0), head.persistent(), head.chunked};
}

std::unique_ptr<call> start_http1_call(const http1_origin& origin, upstream_request&& request, io_refs refs) {
  // A transfer is larger than malloc's per-thread cache takes: its memory is kept by the thread.
  auto t = std::allocate_shared<transfer>(kept_blocks<transfer>{}, origin, refs, std::move(request));
  t->begin();
  return std::make_unique<http1_call>(std::move(t));
}

}  // namespace tollgate::adapters
