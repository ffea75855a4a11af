#include "gateway/http_session.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include "adapters/backend.hpp"
#include "gateway/errors.hpp"
#include "gateway/json_body.hpp"
#include "gateway/server.hpp"
#include "gateway/sse.hpp"
#include "gateway/worker.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using clock = std::chrono::steady_clock;
using request = http::request<http::string_body>;

namespace {

constexpr auto use_tuple = net::as_tuple(net::use_awaitable);
constexpr auto write_timeout = std::chrono::seconds(30);
constexpr std::size_t max_upstream_body = 64 * 1024 * 1024;  // a non-stream answer we buffer

/// A request id from the client is kept when it is short and plain; otherwise we make one.
bool usable_request_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':')) return false;
  }
  return true;
}

std::string_view bearer_key(const request& req) {
  if (auto it = req.find(http::field::authorization); it != req.end()) {
    std::string_view v = it->value();
    if (v.size() > 7 && beast::iequals(v.substr(0, 7), "bearer ")) {
      v.remove_prefix(7);
      while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
      return v;
    }
    return {};
  }
  if (auto it = req.find("x-api-key"); it != req.end()) return it->value();
  return {};
}

/// Upstream response headers worth passing on; hop-by-hop and framing headers are ours to set.
bool relayed_header(std::string_view name) {
  return name == "retry-after" || name.starts_with("x-ratelimit-") || name == "openai-processing-ms";
}

/// Lets a waiting request notice that its client closed the connection: a readable socket with
/// nothing to read is a closed one. Pipelined bytes also make it readable; then it just stops.
struct client_watch {
  adapters::call* active = nullptr;
  bool done = false;
  bool gone = false;
};

class session {
 public:
  session(worker& w, tcp::socket socket) : w_(w), stream_(std::move(socket)) {
    entry_ = w_.add_session(&stream_.socket());
    ++w_.shared().open_sessions;
  }
  ~session() {
    w_.remove_session(entry_);
    --w_.shared().open_sessions;
  }

  net::awaitable<void> run() {
    for (;;) {
      if (w_.shared().draining) break;
      const auto rt = w_.shared().current.load();
      http::request_parser<http::string_body> parser;
      parser.header_limit(64 * 1024);
      parser.body_limit(rt->cfg.server.max_body_bytes);
      stream_.expires_after(rt->cfg.server.idle_timeout);
      entry_->idle = true;
      auto [ec, n] = co_await http::async_read(stream_, buffer_, parser, use_tuple);
      entry_->idle = false;
      if (ec == http::error::body_limit) {
        begin(parser.get(), *rt);
        ++w_.shared().in_flight;
        co_await send_error(payload_too_large(rt->cfg.server.max_body_bytes), false);
        finish();
        break;
      }
      if (ec && ec.category() == http::make_error_code(http::error::bad_target).category() &&
          ec != http::error::end_of_stream && ec != http::error::partial_message) {
        begin(parser.get(), *rt);
        ++w_.shared().in_flight;
        co_await send_error(bad_request("malformed HTTP request: " + ec.message()), false);
        finish();
        break;
      }
      if (ec) break;  // closed, timed out, cut off, or cancelled by drain
      request req = parser.release();
      begin(req, *rt);
      ++w_.shared().in_flight;
      bool keep = co_await handle(req, rt);
      finish();
      if (!keep || !req.keep_alive()) break;
    }
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

 private:
  template <class Req>
  void begin(const Req& req, const runtime&) {
    started_ = clock::now();
    record_ = access_record{};
    record_.method = std::string(req.method_string());
    record_.path = std::string(req.target());
    if (auto it = req.find("x-request-id"); it != req.end() && usable_request_id(it->value())) {
      record_.request_id = std::string(it->value());
    } else {
      record_.request_id = w_.new_request_id();
    }
    backend_name_.clear();
  }

  void finish() {
    --w_.shared().in_flight;
    record_.latency_ms = std::chrono::duration<double, std::milli>(clock::now() - started_).count();
    w_.shared().log->write(w_.index(), record_);
  }

  net::awaitable<bool> handle(request& req, const std::shared_ptr<const runtime>& rt) {
    record_.bytes_in = req.body().size();
    std::string_view path = req.target();
    if (auto q = path.find('?'); q != std::string_view::npos) path = path.substr(0, q);
    // Clients configured with or without the /v1 suffix in base_url both land here.
    if (path.starts_with("/v1/")) path.remove_prefix(3);
    const bool get = req.method() == http::verb::get;
    const bool post = req.method() == http::verb::post;

    if (path == "/healthz") {
      if (!get) co_return co_await send_error(method_not_allowed(), true);
      co_return co_await send_json(200, R"({"status":"ok"})", true);
    }
    if (path == "/readyz") {
      if (!get) co_return co_await send_error(method_not_allowed(), true);
      if (w_.shared().draining) co_return co_await send_json(503, R"({"status":"draining"})", false);
      co_return co_await send_json(200, R"({"status":"ready"})", true);
    }
    if (path == "/models") {
      if (!get) co_return co_await send_error(method_not_allowed(), true);
      if (!authenticate(req, *rt)) co_return co_await send_error(unauthorized_error(req), true);
      co_return co_await send_json(200, models_body(*rt), true);
    }
    if (path == "/chat/completions" || path == "/completions" || path == "/embeddings") {
      if (!post) co_return co_await send_error(method_not_allowed(), true);
      if (!authenticate(req, *rt)) co_return co_await send_error(unauthorized_error(req), true);
      co_return co_await proxy(req, std::string(path), *rt);
    }
    co_return co_await send_error(not_found("Unknown request URL: " + std::string(req.method_string()) + " " +
                                            std::string(path) + ".", "unknown_url"),
                                  true);
  }

  bool authenticate(const request& req, const runtime& rt) {
    auto who = rt.keys.authenticate(bearer_key(req));
    if (!who) return false;
    record_.key_name = who->key_name;
    return true;
  }

  static api_error unauthorized_error(const request& req) {
    if (bearer_key(req).empty()) {
      return unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'.");
    }
    return unauthorized("Incorrect API key provided.");
  }

  static std::string models_body(const runtime& rt) {
    nlohmann::json data = nlohmann::json::array();
    for (const auto& name : rt.routes.public_models()) {
      data.push_back({{"id", name}, {"object", "model"}, {"created", 0}, {"owned_by", "tollgate"}});
    }
    return nlohmann::json{{"object", "list"}, {"data", std::move(data)}}.dump();
  }

  net::awaitable<bool> proxy(request& req, std::string path, const runtime& rt) {
    auto parsed = parse_request_body(req.body());
    if (!parsed.fields) co_return co_await send_error(bad_request(parsed.error, parsed.error_param), true);
    const request_fields& fields = *parsed.fields;
    record_.model = fields.model;
    record_.stream = fields.stream;

    const routing::route* route = rt.routes.resolve(fields.model);
    if (route == nullptr) {
      co_return co_await send_error(
          not_found("The model `" + fields.model + "` does not exist or you do not have access to it.", "model_not_found"),
          true);
    }

    std::optional<adapters::call_event> last_failure;
    for (std::size_t i = 0; i < route->targets.size(); ++i) {
      const routing::target& target = route->targets[i];
      const bool last = i + 1 == route->targets.size();
      adapters::upstream_request up;
      up.path = path;
      up.stream = fields.stream;
      up.request_id = record_.request_id;
      if (target.model.empty() || target.model == fields.model) {
        up.body = last ? std::move(req.body()) : req.body();
      } else {
        up.body = set_top_level(req.body(), "model", json_quote(target.model));
      }
      backend_name_ = target.backend;
      record_.backend = target.backend;
      auto call = rt.backends[target.backend_index]->start(std::move(up), {w_.io(), w_.curl()});

      auto watch = watch_client(*call);
      auto outcome = co_await relay(*call, fields.stream);
      unwatch_client(watch);
      if (outcome.done) co_return outcome.keep_alive;
      last_failure = std::move(outcome.failure);
      if (watch->gone) co_return false;
    }
    const auto& f = *last_failure;
    record_.error = f.message;
    if (f.error == adapters::failure::timeout) {
      co_return co_await send_error(gateway_timeout("upstream " + backend_name_ + " timed out: " + f.message), true);
    }
    co_return co_await send_error(bad_gateway("upstream " + backend_name_ + " failed: " + f.message), true);
  }

  struct relay_outcome {
    bool done = false;        ///< the client got an answer (or is gone); no further attempts
    bool keep_alive = false;  ///< with done
    adapters::call_event failure;  ///< without done: why this attempt failed before any byte was sent
  };

  /// Relays one attempt. Fails over (done=false) only while nothing has reached the client.
  net::awaitable<relay_outcome> relay(adapters::call& call, bool want_stream) {
    stream_.expires_never();
    adapters::call_event ev = co_await call.next();
    if (ev.type == adapters::call_event::kind::failed) co_return relay_outcome{false, false, std::move(ev)};
    adapters::response_head head = std::move(ev.head);
    const std::string* type = head.find("content-type");
    const bool sse = type != nullptr && type->find("text/event-stream") != std::string::npos;
    if (want_stream && sse && head.status >= 200 && head.status < 300) {
      co_return co_await relay_stream(call, head);
    }

    // Whole answers (and errors) are read completely first: a break mid-body can still fail over.
    std::string body;
    for (;;) {
      ev = co_await call.next();
      if (ev.type == adapters::call_event::kind::data) {
        body += ev.data;
        if (body.size() > max_upstream_body) {
          ev.type = adapters::call_event::kind::failed;
          ev.error = adapters::failure::broken;
          ev.message = "upstream response exceeds " + std::to_string(max_upstream_body) + " bytes";
          co_return relay_outcome{false, false, std::move(ev)};
        }
        continue;
      }
      if (ev.type == adapters::call_event::kind::failed) co_return relay_outcome{false, false, std::move(ev)};
      break;
    }
    http::response<http::string_body> res{static_cast<http::status>(head.status), 11};
    res.set(http::field::content_type, type != nullptr ? *type : "application/json");
    copy_relayed(head, res);
    res.body() = std::move(body);
    const bool keep = co_await send(std::move(res), true);
    co_return relay_outcome{true, keep, {}};
  }

  net::awaitable<relay_outcome> relay_stream(adapters::call& call, const adapters::response_head& head) {
    http::response<http::empty_body> res{static_cast<http::status>(head.status), 11};
    res.set(http::field::content_type, "text/event-stream");
    res.set(http::field::cache_control, "no-cache");
    res.chunked(true);
    copy_relayed(head, res);
    decorate(res);
    record_.status = head.status;
    http::response_serializer<http::empty_body> sr{res};
    stream_.expires_after(write_timeout);
    auto [ec, n] = co_await http::async_write_header(stream_, sr, use_tuple);
    if (ec) co_return relay_outcome{true, false, {}};
    record_.bytes_out += n;

    sse_splitter events;
    std::string out;
    for (;;) {
      adapters::call_event ev = co_await call.next();
      out.clear();
      bool finished = false;
      if (ev.type == adapters::call_event::kind::data) {
        events.feed(ev.data);
        while (auto e = events.next_event()) out += *e;
      } else if (ev.type == adapters::call_event::kind::end) {
        out = events.take_rest();
        finished = true;
      } else if (ev.type == adapters::call_event::kind::head) {
        continue;
      } else {
        // The client already has part of the answer: say the stream broke, never end it quietly.
        record_.error = ev.message;
        if (ev.error == adapters::failure::cancelled) co_return relay_outcome{true, false, {}};
        const api_error err = ev.error == adapters::failure::timeout
                                  ? gateway_timeout("upstream " + backend_name_ + " timed out mid-stream: " + ev.message)
                                  : bad_gateway("upstream " + backend_name_ + " broke the stream: " + ev.message);
        out = events.take_rest();
        if (!out.empty() && !out.ends_with("\n\n")) out += "\n\n";
        out += err.sse_event();
        finished = true;
      }
      if (!out.empty()) {
        stream_.expires_after(write_timeout);
        auto [wec, wn] = co_await net::async_write(stream_, http::make_chunk(net::buffer(out)), use_tuple);
        if (wec) co_return relay_outcome{true, false, {}};
        record_.bytes_out += wn;
      }
      if (finished) break;
    }
    stream_.expires_after(write_timeout);
    auto [lec, ln] = co_await net::async_write(stream_, http::make_chunk_last(), use_tuple);
    record_.bytes_out += ln;
    co_return relay_outcome{true, !lec, {}};
  }

  std::shared_ptr<client_watch> watch_client(adapters::call& call) {
    auto watch = std::make_shared<client_watch>();
    watch->active = &call;
    stream_.socket().async_wait(tcp::socket::wait_read, [watch, this](boost::system::error_code ec) {
      if (watch->done) return;
      // Closed by drain or stop (aborted), or readable with nothing in it (the peer closed).
      boost::system::error_code aec;
      if (ec || stream_.socket().available(aec) == 0) {
        watch->gone = true;
        watch->active->cancel();
      }
    });
    return watch;
  }

  void unwatch_client(const std::shared_ptr<client_watch>& watch) {
    watch->done = true;
    // Pipelined bytes from the client may already sit in buffer_; the socket wait is independent.
    boost::system::error_code ignored;
    stream_.socket().cancel(ignored);
  }

  template <class Res>
  void copy_relayed(const adapters::response_head& head, Res& res) {
    for (const auto& [name, value] : head.headers) {
      if (relayed_header(name)) res.set(name, value);
    }
  }

  template <class Res>
  void decorate(Res& res) {
    res.set("x-request-id", record_.request_id);
    if (!backend_name_.empty()) res.set("x-tollgate-backend", backend_name_);
    res.set(http::field::server, "tollgate");
  }

  net::awaitable<bool> send(http::response<http::string_body> res, bool keep_alive) {
    decorate(res);
    res.keep_alive(keep_alive && !w_.shared().draining);
    res.prepare_payload();
    record_.status = res.result_int();
    stream_.expires_after(write_timeout);
    auto [ec, n] = co_await http::async_write(stream_, res, use_tuple);
    record_.bytes_out += n;
    co_return !ec && res.keep_alive();
  }

  net::awaitable<bool> send_json(int status, std::string body, bool keep_alive) {
    http::response<http::string_body> res{static_cast<http::status>(status), 11};
    res.set(http::field::content_type, "application/json");
    res.body() = std::move(body);
    co_return co_await send(std::move(res), keep_alive);
  }

  net::awaitable<bool> send_error(const api_error& err, bool keep_alive) {
    if (record_.error.empty()) record_.error = err.code;
    co_return co_await send_json(err.status, err.body(), keep_alive);
  }

  worker& w_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::list<worker::session_entry>::iterator entry_;
  clock::time_point started_;
  access_record record_;
  std::string backend_name_;
};

}  // namespace

net::awaitable<void> run_session(worker& w, tcp::socket socket) {
  session s(w, std::move(socket));
  co_await s.run();
}

}  // namespace tollgate::gateway
