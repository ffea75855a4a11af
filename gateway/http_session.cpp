#include "gateway/http_session.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <boost/asio/steady_timer.hpp>

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>

#include <iostream>
#include <map>
#include <optional>

#include "adapters/backend.hpp"
#include "gateway/errors.hpp"
#include "gateway/http_head.hpp"
#include "gateway/json_body.hpp"
#include "gateway/key_admin.hpp"
#include "gateway/metering.hpp"
#include "gateway/store.hpp"
#include "gateway/server.hpp"
#include "gateway/sse.hpp"
#include "gateway/usage.hpp"
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
// After a 413: how long and how much of the rest of the body is read and dropped before closing.
constexpr auto drain_timeout = std::chrono::seconds(5);
constexpr std::size_t max_drain_bytes = 16 * 1024 * 1024;
constexpr std::size_t max_upstream_body = 64 * 1024 * 1024;  // a non-stream answer we buffer
constexpr std::size_t max_metered_stream = 4 * 1024 * 1024;  // stream bytes kept before their text is taken out

std::int64_t unix_seconds_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

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

/// An upstream answer read whole, kept until we know whether the client gets it.
struct buffered_response {
  int status = 0;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;  ///< the ones relayed to clients
  std::string body;
  std::optional<std::chrono::milliseconds> retry_after;
};

/// Retry-After in seconds (the form API providers send); an HTTP date is not honoured.
std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view v) {
  double seconds = 0;
  try {
    std::size_t used = 0;
    seconds = std::stod(std::string(v), &used);
    if (used != v.size() || seconds < 0 || seconds > 86400) return std::nullopt;
  } catch (...) {
    return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
}

/// Lets a waiting request notice that its client closed the connection: a peek that finds the
/// end of the stream. Pipelined bytes also end the peek; then the watch just stops.
struct client_watch : std::enable_shared_from_this<client_watch> {
  adapters::call* active = nullptr;
  bool armed = false;  ///< a peek is pending on the client's socket
  bool done = false;
  bool gone = false;
};

class session {
 public:
  session(worker& w, tcp::socket socket) : w_(w), socket_(std::move(socket)) {
    entry_ = w_.add_session(&socket_);
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
      set_deadline(rt->cfg.server.idle_timeout);
      entry_->idle = true;
      // The head first: its framing is checked, and a client waiting on Expect: 100-continue is
      // told to send the body, before the body is read.
      auto [ec, n] = co_await http::async_read_header(socket_, buffer_, parser, use_tuple);
      entry_->idle = false;
      if (!ec && !single_final_chunked(parser.get())) {
        // RFC 9112 6.3: a body framed by anything but one final chunked cannot be delimited
        // safely (request smuggling); refused and the connection closed.
        clear_deadline();
        begin(parser.get(), *rt);
        ++w_.shared().in_flight;
        co_await send_error(bad_request("unsupported Transfer-Encoding: only a single chunked is accepted"), false);
        finish();
        co_await drain_and_close();
        co_return;
      }
      if (!ec && !parser.is_done()) {
        if (auto e = parser.get().find(http::field::expect);
            e != parser.get().end() && beast::iequals(e->value(), "100-continue") && parser.get().version() >= 11) {
          auto [cec, cn] = co_await net::async_write(socket_, net::buffer("HTTP/1.1 100 Continue\r\n\r\n", 25), use_tuple);
          ec = cec;
        }
        if (!ec) std::tie(ec, n) = co_await http::async_read(socket_, buffer_, parser, use_tuple);
      }
      clear_deadline();
      if (ec == http::error::body_limit) {
        begin(parser.get(), *rt);
        ++w_.shared().in_flight;
        co_await send_error(payload_too_large(rt->cfg.server.max_body_bytes), false);
        finish();
        co_await drain_and_close();
        co_return;
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
      bool keep = false;
      std::optional<std::string> failure;
      try {
        keep = co_await handle(req, rt);
      } catch (const std::exception& e) {
        failure = e.what();
      }
      if (failure) {
        // A bug or exhaustion must not leave the client waiting or the request counted forever:
        // answer 500 when nothing was sent yet, then close the connection.
        std::cerr << "tollgate: request " << record_.request_id << " failed: " << *failure << std::endl;
        if (record_.status == 0) co_await send_error(internal_error("The gateway failed to handle this request."), false);
        keep = false;
      }
      finish(req.body());
      if (!keep || !req.keep_alive()) break;
    }
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
  }

 private:
  /// Reads what a refused client still sends (up to a bound) after our answer and a shutdown of
  /// our side, then closes: closing with unread bytes would reset the connection, and a client
  /// still writing its body would see the reset instead of the answer.
  net::awaitable<void> drain_and_close() {
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) co_return;
    buffer_.clear();
    set_deadline(drain_timeout);
    std::size_t drained = 0;
    while (drained < max_drain_bytes) {
      auto [rec, rn] = co_await socket_.async_read_some(buffer_.prepare(64 * 1024), use_tuple);
      if (rec) break;  // the client closed (or the deadline passed)
      drained += rn;
    }
    clear_deadline();
  }

  static bool single_final_chunked(const http::request_header<>& h) {
    transfer_codings codings;
    const auto [first, last] = h.equal_range(http::field::transfer_encoding);
    for (auto it = first; it != last; ++it) codings.add(it->value());
    return codings.acceptable();
  }

  template <class Req>
  void begin(const Req& req, const runtime&) {
    started_ = clock::now();
    head_request_ = req.method() == http::verb::head;
    record_.clear();
    record_.method.assign(req.method_string());
    record_.path.assign(req.target());
    if (auto it = req.find("x-request-id"); it != req.end() && usable_request_id(it->value())) {
      record_.request_id.assign(it->value());
    } else {
      w_.new_request_id(record_.request_id);
    }
    backend_name_.clear();
    route_name_.clear();
    upstream_model_.clear();
    last_first_byte_ = -1;
    proxied_ = false;
    usage_.reset();
    principal_.reset();
    price_ = nullptr;
    strip_usage_ = false;
    stream_options_.clear();
    rt_ = nullptr;
    path_.clear();
    delivered_.clear();
    delivered_text_.clear();
    delivered_sse_ = false;
    first_token_at_.reset();
    upstream_seconds_ = -1;
    counted_ = false;
  }

  /// body: the request's body, when there was one (to count its prompt).
  void finish(std::string_view body = {}) {
    const auto now = clock::now();
    const auto elapsed = now - started_;
    // No usage from the upstream for an answer that reached the client: count it ourselves.
    if (!usage_ && proxied_ && !backend_name_.empty() && record_.status >= 200 && record_.status < 300 && rt_ &&
        rt_->tokenizer) {
      usage u;
      u.prompt = count_prompt_tokens(*rt_->tokenizer, path_, body);
      if (path_ != "/embeddings") {
        u.completion = count_completion_tokens(*rt_->tokenizer, delivered_, delivered_sse_, delivered_text_);
      }
      usage_ = u;
      counted_ = true;
    }
    if (usage_) {
      record_.has_usage = true;
      record_.prompt_tokens = usage_->prompt;
      record_.cached_tokens = usage_->cached;
      record_.completion_tokens = usage_->completion;
      record_.reasoning_tokens = usage_->reasoning;
      record_.cost = price_ != nullptr ? cost_of(*usage_, *price_) : 0;
      w_.shared().metrics->record_usage(w_.index(), record_.key_name, route_name_, backend_name_, usage_->prompt,
                                        usage_->cached, usage_->completion, usage_->reasoning, record_.cost);
    }
    if (limited_.limits != nullptr) {
      limited_.limits->finish(*limited_.key, *limited_.state, limited_.estimate,
                              usage_ ? usage_->prompt + usage_->completion : -1, record_.cost);
      limited_ = {};
    }
    record_.latency_ms = std::chrono::duration<double, std::milli>(elapsed).count();
    w_.shared().log->write(w_.index(), record_);
    if (proxied_ && w_.shared().ledger) {
      ledger_record l;
      l.request_id = record_.request_id;
      l.unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
      l.key = record_.key_name;
      l.model = record_.model;
      l.route = route_name_;
      l.backend = backend_name_;
      l.upstream_model = upstream_model_;
      if (usage_) {
        l.has_usage = true;
        l.prompt_tokens = usage_->prompt;
        l.cached_tokens = usage_->cached;
        l.completion_tokens = usage_->completion;
        l.reasoning_tokens = usage_->reasoning;
        l.cost = record_.cost;
      }
      l.status = record_.status;
      l.latency_ms = record_.latency_ms;
      l.first_byte_ms = last_first_byte_ >= 0 ? last_first_byte_ * 1000 : -1;
      l.stream = record_.stream;
      l.counted = counted_;
      l.first_token_ms = first_token_at_ ? std::chrono::duration<double, std::milli>(*first_token_at_ - started_).count() : -1;
      w_.shared().ledger->append(w_.index(), std::move(l));
    }
    if (proxied_) {
      const double total = std::chrono::duration<double>(elapsed).count();
      w_.shared().metrics->record_request(w_.index(), route_name_, backend_name_, record_.status, total);
      if (first_token_at_ && record_.status >= 200 && record_.status < 300) {
        const double ttft = std::chrono::duration<double>(*first_token_at_ - started_).count();
        const double tpot = usage_ && usage_->completion > 1
                                ? std::chrono::duration<double>(now - *first_token_at_).count() /
                                      static_cast<double>(usage_->completion - 1)
                                : -1;
        w_.shared().metrics->record_stream(w_.index(), route_name_, ttft, tpot);
      }
      if (upstream_seconds_ >= 0) {
        w_.shared().metrics->record_upstream(w_.index(), backend_name_, upstream_seconds_,
                                             single_attempt_ ? total - upstream_seconds_ : -1);
      }
    }

    // Last: shutdown waits for this count, and by then the request's records are handed over.
    --w_.shared().in_flight;
  }

  net::awaitable<bool> handle(request& req, const std::shared_ptr<const runtime>& rt) {
    record_.bytes_in = req.body().size();
    std::string_view path = req.target();
    if (auto q = path.find('?'); q != std::string_view::npos) path = path.substr(0, q);
    // Clients configured with or without the /v1 suffix in base_url both land here.
    if (path.starts_with("/v1/")) path.remove_prefix(3);
    // HEAD is answered as GET is, without the body (write_whole leaves it out).
    const bool get = req.method() == http::verb::get || req.method() == http::verb::head;
    const bool post = req.method() == http::verb::post;

    if (path == "/metrics" && get) {
      http::response<http::string_body> res{http::status::ok, 11};
      res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      res.body() = w_.shared().metrics->render(*rt, w_.shared().keys.load().get(), w_.shared().in_flight.load());
      co_return co_await send(std::move(res), true);
    }
    if (path == "/healthz") {
      if (!get) co_return co_await send_error(method_not_allowed(), true);
      co_return co_await send_json(200, R"({"status":"ok"})", true);
    }
    if (path == "/readyz") {
      if (!get) co_return co_await send_error(method_not_allowed(), true);
      if (w_.shared().draining) co_return co_await send_json(503, R"({"status":"draining"})", false);
      // Ready while at least one backend can take traffic; the body says which can.
      nlohmann::json backends = nlohmann::json::object();
      bool any = false;
      const auto now = clock::now();
      for (std::size_t i = 0; i < rt->cfg.backends.size(); ++i) {
        const bool up = rt->backends[i]->serving() && !rt->backend_health[i]->ejected(now);
        any = any || up;
        backends[rt->cfg.backends[i].name] = up ? "up" : "down";
      }
      for (const auto& d : rt->cfg.disabled_backends) backends[d.name] = "disabled";
      nlohmann::json body = {{"status", any ? "ready" : "no healthy backend"}, {"backends", std::move(backends)}};
      if (auto shared = rt->limits->shared()) {
        body["limits"] = {{"redis", shared->up ? "up" : "down"}, {"on_redis_down", shared->on_down},
                          {"replicas", shared->replicas}};
      }
      co_return co_await send_json(any ? 200 : 503, body.dump(), true);
    }
    if (req.target().starts_with("/admin/")) {
      if (rt->cfg.server.admin_key.empty()) {
        co_return co_await send_error(not_found("the admin API is off: set server.admin_key", "unknown_url"), true);
      }
      const std::string presented = sha256(bearer_key(req)), wanted = sha256(rt->cfg.server.admin_key);
      if (CRYPTO_memcmp(presented.data(), wanted.data(), wanted.size()) != 0) {
        co_return co_await send_error(unauthorized("the admin API needs server.admin_key"), true);
      }
      record_.key_name = "admin";
      if (path == "/admin/backends") {
        if (!get) co_return co_await send_error(method_not_allowed(), true);
        co_return co_await send_json(200, backends_body(*rt), true);
      }
      if (path == "/admin/keys" || path.starts_with("/admin/keys/") || path == "/admin/usage") {
        co_return co_await admin_store(req, path, *rt);
      }
      co_return co_await send_error(not_found("Unknown admin URL: " + std::string(path), "unknown_url"), true);
    }
    if (path == "/models") {
      if (!get) co_return co_await send_error(method_not_allowed(), true);
      if (!authenticate(req, *rt)) co_return co_await send_error(unauthorized_error(req), true);
      co_return co_await send_json(200, models_body(*rt, *principal_), true);
    }
    if (path == "/chat/completions" || path == "/completions" || path == "/embeddings") {
      if (!post) co_return co_await send_error(method_not_allowed(), true);
      if (!authenticate(req, *rt)) co_return co_await send_error(unauthorized_error(req), true);
      co_return co_await proxy(req, path, *rt);
    }
    co_return co_await send_error(not_found("Unknown request URL: " + std::string(req.method_string()) + " " +
                                            std::string(path) + ".", "unknown_url"),
                                  true);
  }

  bool authenticate(const request& req, const runtime&) {
    auto table = w_.shared().keys.load();
    const std::string_view presented = bearer_key(req);
    const std::int64_t now = unix_seconds_now();
    // A keep-alive connection sends the same key each time: while the key table is the same, the
    // key this connection proved last is compared (in constant time) instead of hashed again.
    if (table == known_table_ && !presented.empty() && presented.size() == known_key_.size() &&
        CRYPTO_memcmp(presented.data(), known_key_.data(), presented.size()) == 0) {
      auth_ = key_table::recheck(*known_principal_, now);
      if (auth_ == auth_result::ok) principal_ = known_principal_;
      else principal_.reset();
    } else {
      auth_ = table->authenticate(presented, now, principal_);
      if (principal_) {
        known_table_ = std::move(table);
        known_key_.assign(presented);
        known_principal_ = principal_;
      }
    }
    if (!principal_) return false;
    record_.key_name = principal_->key_name;
    return true;
  }

  api_error unauthorized_error(const request& req) const {
    if (bearer_key(req).empty()) {
      return unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'.");
    }
    if (auth_ == auth_result::expired) return unauthorized("This API key has expired.");
    return unauthorized("Incorrect API key provided.");
  }

  /// /admin/keys (GET list, POST create), /admin/keys/NAME (GET, DELETE revokes),
  /// /admin/keys/NAME/revoke (POST), /admin/usage (GET ?key=&since=&until=). These touch the
  /// store's database on this worker's thread: they are for operators, not for traffic.
  net::awaitable<bool> admin_store(const request& req, std::string_view path, const runtime& rt) {
    admin_answer answer;
    try {
      answer = admin_store_answer(req, path, rt);
    } catch (const std::exception& e) {
      answer.error = unavailable(std::string("the store failed: ") + e.what());
    }
    if (answer.error) co_return co_await send_error(*answer.error, true);
    co_return co_await send_json(answer.status, std::move(answer.body), true);
  }

  struct admin_answer {
    int status = 200;
    std::string body;
    std::optional<api_error> error;
  };

  admin_answer admin_store_answer(const request& req, std::string_view path, const runtime& rt) {
    auto fail = [](api_error e) { return admin_answer{0, {}, std::move(e)}; };
    auto ok = [](int status, const nlohmann::json& body) { return admin_answer{status, body.dump(), std::nullopt}; };
    store* st = w_.shared().keys_store.get();
    if (st == nullptr) {
      return fail(bad_request("the key and usage API needs a store: add `store: {sqlite: ./tollgate.db}` to the config"));
    }
    const auto method = req.method();
    const std::int64_t now = unix_seconds_now();
    if (w_.shared().ledger) w_.shared().ledger->flush();  // spend and usage read the ledger
    auto spent_now = [&](const stored_key& k) -> std::optional<double> {
      if (k.limits.budget <= 0 || k.revoked_unix != 0) return std::nullopt;
      return st->spent_since(k.limits.name, budget_period_bounds(k.limits.budget_period, now * 1000).first);
    };
    if (path == "/admin/usage") {
      if (method != http::verb::get) return fail(method_not_allowed());
      const auto query = query_params(req.target());
      std::int64_t since = 0, until = (now + 1) * 1000;
      for (auto [name, out] : {std::pair{"since", &since}, std::pair{"until", &until}}) {
        if (auto it = query.find(name); it != query.end()) {
          auto t = parse_time_param(it->second);
          if (!t) {
            return fail(bad_request(std::string("'") + name + "' must be YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or unix milliseconds", name));
          }
          *out = *t;
        }
      }
      const std::string key = query.count("key") ? query.at("key") : std::string();
      nlohmann::json rows = nlohmann::json::array();
      usage_row total;
      for (const auto& r : st->usage(key, since, until)) {
        rows.push_back({{"key", r.key}, {"model", r.model}, {"backend", r.backend}, {"requests", r.requests},
                        {"prompt_tokens", r.prompt_tokens}, {"cached_tokens", r.cached_tokens},
                        {"completion_tokens", r.completion_tokens}, {"reasoning_tokens", r.reasoning_tokens},
                        {"cost", r.cost}});
        total.requests += r.requests;
        total.prompt_tokens += r.prompt_tokens;
        total.cached_tokens += r.cached_tokens;
        total.completion_tokens += r.completion_tokens;
        total.reasoning_tokens += r.reasoning_tokens;
        total.cost += r.cost;
      }
      nlohmann::json body = {{"object", "usage"}, {"currency", rt.cfg.currency}, {"since_ms", since},
                             {"until_ms", until}, {"data", std::move(rows)},
                             {"total", {{"requests", total.requests}, {"prompt_tokens", total.prompt_tokens},
                                        {"cached_tokens", total.cached_tokens},
                                        {"completion_tokens", total.completion_tokens},
                                        {"reasoning_tokens", total.reasoning_tokens}, {"cost", total.cost}}}};
      if (!key.empty()) body["key"] = key;
      return ok(200, body);
    }
    if (path == "/admin/keys") {
      if (method == http::verb::get) {
        nlohmann::json list = nlohmann::json::array();
        const bool all = query_params(req.target()).count("all") != 0;
        for (const auto& k : st->keys(all)) list.push_back(key_json(k, spent_now(k)));
        return ok(200, {{"object", "list"}, {"data", std::move(list)}});
      }
      if (method != http::verb::post) return fail(method_not_allowed());
      auto body = nlohmann::json::parse(req.body(), nullptr, false);
      if (body.is_discarded()) return fail(bad_request("the body is not valid JSON"));
      std::vector<std::string> taken;
      for (const auto& k : rt.cfg.keys) taken.push_back(k.name);
      auto made = make_key(body, taken, now);
      if (!made.key) return fail(bad_request(made.error, made.param));
      try {
        st->create_key(made.key->record);
      } catch (const store_error& e) {
        return fail(api_error{409, "invalid_request_error", "key_exists", e.what(), "name"});
      }
      w_.shared().refresh_keys();
      auto j = key_json(made.key->record, std::nullopt);
      j["key"] = made.key->secret;  // the only time anyone sees it
      return ok(201, j);
    }
    // /admin/keys/NAME[/revoke]
    std::string_view rest = path.substr(std::string_view("/admin/keys/").size());
    const bool revoke_suffix = rest.ends_with("/revoke");
    if (revoke_suffix) rest.remove_suffix(7);
    const std::string name(rest);
    if (name.empty() || name.find('/') != std::string::npos) {
      return fail(not_found("Unknown admin URL: " + std::string(path), "unknown_url"));
    }
    if ((revoke_suffix && method == http::verb::post) || (!revoke_suffix && method == http::verb::delete_)) {
      if (!st->revoke_key(name, now)) return fail(not_found("No active key named '" + name + "'.", "key_not_found"));
      w_.shared().refresh_keys();
      return ok(200, {{"name", name}, {"status", "revoked"}});
    }
    if (!revoke_suffix && method == http::verb::get) {
      for (const auto& k : st->keys(false)) {
        if (k.limits.name == name) return ok(200, key_json(k, spent_now(k)));
      }
      return fail(not_found("No active key named '" + name + "'.", "key_not_found"));
    }
    return fail(method_not_allowed());
  }

  static std::map<std::string, std::string> query_params(std::string_view target) {
    std::map<std::string, std::string> out;
    auto q = target.find('?');
    if (q == std::string_view::npos) return out;
    std::string_view rest = target.substr(q + 1);
    while (!rest.empty()) {
      auto amp = rest.find('&');
      std::string_view pair = rest.substr(0, amp);
      auto eq = pair.find('=');
      out[std::string(pair.substr(0, eq))] = eq == std::string_view::npos ? "" : std::string(pair.substr(eq + 1));
      if (amp == std::string_view::npos) break;
      rest.remove_prefix(amp + 1);
    }
    return out;
  }

  /// "2026-11-22" (its start), "2026-11-22T10:00:00Z", or unix milliseconds.
  static std::optional<std::int64_t> parse_time_param(const std::string& v) {
    if (!v.empty() && std::all_of(v.begin(), v.end(), [](unsigned char c) { return std::isdigit(c); }) && v.size() < 16) {
      return std::stoll(v);
    }
    auto t = config::parse_expiry(v);  // a bare date means its last second there
    if (!t) return std::nullopt;
    if (v.size() == 10) return (*t - 86399) * 1000;
    return *t * 1000;
  }

  static std::string backends_body(const runtime& rt) {
    nlohmann::json list = nlohmann::json::array();
    const auto now = clock::now();
    for (std::size_t i = 0; i < rt.cfg.backends.size(); ++i) {
      const auto& b = rt.cfg.backends[i];
      const auto& h = *rt.backend_health[i];
      const bool ejected = h.ejected(now) && !h.probed_down();
      list.push_back({{"name", b.name},
                      {"kind", b.kind},
                      {"base_url", b.base_url},
                      {"healthy", !h.ejected(now)},
                      {"active_check", b.health_check.enabled ? (h.probed_down() ? "down" : "up") : "off"},
                      {"ejected", ejected},
                      {"ejections_in_a_row", h.ejections()},
                      {"consecutive_failures", h.consecutive_failures()},
                      {"in_flight", h.in_flight()}});
    }
    return nlohmann::json{{"object", "list"}, {"data", std::move(list)}}.dump();
  }

  static std::string models_body(const runtime& rt, const principal& who) {
    nlohmann::json data = nlohmann::json::array();
    for (const auto& name : rt.routes.public_models()) {
      if (!who.may_use(name)) continue;
      data.push_back({{"id", name}, {"object", "model"}, {"created", 0}, {"owned_by", "tollgate"}});
    }
    return nlohmann::json{{"object", "list"}, {"data", std::move(data)}}.dump();
  }

  /// What the attempts of one request have learnt so far.
  struct attempt_state {
    unsigned attempts = 0;  ///< started, over every route tried
    clock::time_point deadline;
    std::optional<adapters::call_event> last_failure;  ///< the last attempt broke or timed out
    std::optional<buffered_response> last_response;    ///< the last attempt answered with an error
    bool client_gone = false;
    bool shed = false;  ///< the last try found every target at max_concurrency with a full queue
  };

  enum class route_result { answered, exhausted, context_exceeded };

  /// path points into req's target, which outlives the call.
  net::awaitable<bool> proxy(request& req, std::string_view path, const runtime& rt) {
    proxied_ = true;
    auto parsed = parse_request_body(req.body());
    if (!parsed.fields) co_return co_await send_error(bad_request(parsed.error, parsed.error_param), true);
    const request_fields& fields = *parsed.fields;
    record_.model = fields.model;
    record_.stream = fields.stream;

    if (!principal_->may_use(fields.model)) {
      // A named error: GCC 12 destroys a braced temporary inside co_await twice.
      const api_error forbidden{403, "permission_error", "model_not_allowed",
                                "This API key may not use the model `" + fields.model + "`.", "model"};
      co_return co_await send_error(forbidden, true);
    }
    const routing::route* route = rt.routes.resolve(fields.model);
    if (route == nullptr) {
      co_return co_await send_error(
          not_found("The model `" + fields.model + "` does not exist or you do not have access to it.", "model_not_found"),
          true);
    }

    route_name_ = route->model;
    if (route->targets.empty()) {
      api_error err = unavailable("The model `" + fields.model + "` is not available: " + route->unavailable + ".");
      err.code = "backend_disabled";
      record_.error = err.code;
      co_return co_await send_error(err, true);
    }

    const std::int64_t estimate = estimate_tokens(req.body().size(), fields.max_tokens);
    const admission adm = rt.limits->admit(*principal_->key, *principal_->state, estimate, clock::now());
    if (!adm.admitted) {
      const api_error err{adm.status,
                          adm.status == 503                    ? "service_unavailable"
                          : adm.code == "insufficient_quota" ? "insufficient_quota"
                                                               : "rate_limit_error",
                          adm.code, adm.message, {}};
      record_.error = err.code;
      http::response<http::string_body> res{static_cast<http::status>(adm.status), 11};
      res.set(http::field::content_type, "application/json");
      res.set(http::field::retry_after, std::to_string(adm.retry_after.count()));
      res.body() = err.body();
      co_return co_await send(std::move(res), true);
    }
    limited_ = {rt.limits.get(), principal_->key, principal_->state, estimate};
    rt_ = &rt;  // held by run() until finish()
    path_.assign(path);


    // Metering needs the stream's usage: ask for it, and keep the chunk from a client that did
    // not ask for it.
    if (fields.stream && !fields.include_usage && path != "/embeddings") {
      auto so = fields.stream_options.empty() ? nlohmann::json::object() : nlohmann::json::parse(fields.stream_options);
      if (so.is_object()) {
        so["include_usage"] = true;
        stream_options_ = so.dump();  // written into the body of every attempt
        strip_usage_ = true;
      }
    }
    attempt_state st;
    st.deadline = started_ + route->deadline;
    // The route, then its fallbacks; a context_length_exceeded answer switches to the context
    // fallbacks of the route that gave it.
    std::vector<const routing::route*> chain{route};
    chain.insert(chain.end(), route->fallbacks.begin(), route->fallbacks.end());
    for (std::size_t i = 0; i < chain.size(); ++i) {
      const auto result = co_await try_route(*chain[i], req, path, fields, rt, st);
      if (result == route_result::answered) co_return keep_alive_;
      if (st.client_gone) co_return false;
      if (result == route_result::context_exceeded && !chain[i]->context_fallbacks.empty()) {
        chain.resize(i + 1);
        chain.insert(chain.end(), chain[i]->context_fallbacks.begin(), chain[i]->context_fallbacks.end());
      }
    }
    if (st.shed) {
      api_error err = unavailable("every backend for `" + fields.model + "` is at its max_concurrency; try again shortly");
      err.code = "overloaded";
      record_.error = err.code;
      http::response<http::string_body> res{http::status::service_unavailable, 11};
      res.set(http::field::content_type, "application/json");
      res.set(http::field::retry_after, "1");
      res.body() = err.body();
      co_return co_await send(std::move(res), true);
    }
    if (st.last_response) {
      // Every attempt failed and the last one answered: the client sees that answer as it was.
      co_return co_await send_buffered(std::move(*st.last_response));
    }
    const auto& f = *st.last_failure;
    record_.error = f.message;
    if (f.error == adapters::failure::timeout) {
      co_return co_await send_error(gateway_timeout("upstream " + backend_name_ + " timed out: " + f.message), true);
    }
    co_return co_await send_error(bad_gateway("upstream " + backend_name_ + " failed: " + f.message), true);
  }

  /// Tries one route's targets in its plan's order, up to its retry.attempts.
  net::awaitable<route_result> try_route(const routing::route& r, request& req, std::string_view path,
                                         const request_fields& fields, const runtime& rt, attempt_state& st) {
    rt.routes.plan(r, w_.index(), routing::pick_context{w_.random()}, clock::now(), order_);
    const std::size_t n = order_.size();
    if (n == 0) co_return route_result::exhausted;  // a fallback whose backends are all disabled
    const unsigned attempts = r.retry.attempts != 0 ? r.retry.attempts : static_cast<unsigned>(n);
    std::size_t pos = 0;
    std::size_t refused = 0;
    for (unsigned used = 0; used < attempts;) {
      const routing::target* picked = nullptr;
      // Skip an ejected or full backend while another target may take the request.
      while (picked == nullptr) {
        const routing::target& t = r.targets[order_[pos++ % n]];
        if (take_slot(t)) {
          picked = &t;
        } else if (++refused >= n) {
          // Every target refused: ejection is ignored, and a full backend is waited for.
          if (!t.health->try_begin_request(t.max_concurrency) && !co_await wait_for_slot(t)) {
            st.shed = true;
            co_return route_result::exhausted;
          }
          picked = &t;
        }
      }
      refused = 0;
      st.shed = false;
      ++used;
      if (st.attempts > 0 && !co_await back_off(r.retry, st)) {
        picked->health->end_request();
        co_return route_result::exhausted;
      }
      ++st.attempts;
      auto call = start_attempt(*picked, req, path, fields, rt);
      auto watch = watch_client(*call, fields.stream);
      const watch_guard guard{*this, watch};

      // Hedging: no first byte by hedge_after, so a second attempt goes to the next target that
      // has room; whichever answers first is relayed and the other is cancelled.
      if (r.hedge_after.count() > 0 && used < attempts && n > 1 && !co_await wait_ready(*call, nullptr, r.hedge_after)) {
        const routing::target* second = nullptr;
        for (std::size_t k = 0; k + 1 < n && second == nullptr; ++k) {
          const routing::target& t = r.targets[order_[pos++ % n]];
          if (&t != picked && take_slot(t)) second = &t;
        }
        if (second != nullptr) {
          ++used;
          ++st.attempts;
          auto other = start_attempt(*second, req, path, fields, rt);
          // Nobody reads either call while waiting, so their first-token timeouts bound the wait.
          const auto limit = std::max(rt.cfg.backends[picked->backend_index].timeouts.first_token,
                                      rt.cfg.backends[second->backend_index].timeouts.first_token);
          co_await wait_ready(*call, other.get(), limit);
          if (!call->ready() && other->ready()) {
            unwatch_client(watch);
            std::swap(call, other);
            std::swap(picked, second);
            watch = watch_client(*call, fields.stream);
          }
          other.reset();  // the slower one: cancelled now
          second->health->end_request();
          second->health->record_abandoned();
        }
      }
      const routing::target& target = *picked;
      backend_name_ = target.backend;
      record_.backend = target.backend;
      attempt_health_ = target.health.get();
      price_ = &target.price;
      upstream_model_ = target.model.empty() ? fields.model : target.model;
      last_first_byte_ = -1;
      const auto attempt_started = clock::now();
      auto outcome = co_await relay(*call, fields.stream);
      upstream_seconds_ = std::chrono::duration<double>(clock::now() - attempt_started).count();
      single_attempt_ = st.attempts == 1;
      unwatch_client(watch);
      call.reset();
      target.health->end_request();
      w_.shared().metrics->record_attempt(w_.index(), target.backend, attempt_outcome(outcome, watch->gone),
                                          last_first_byte_);

      switch (outcome.kind) {
        case relay_kind::answered:
          if (outcome.broke) {
            target.health->record_failure(clock::now(), target.ejection);
          } else {
            target.health->record_success();
          }
          keep_alive_ = outcome.keep_alive;
          co_return route_result::answered;
        case relay_kind::gone:
          target.health->record_abandoned();
          st.client_gone = true;
          co_return route_result::exhausted;
        case relay_kind::context_exceeded:
          target.health->record_success();  // the backend is fine; the prompt is too long for it
          st.last_failure.reset();
          st.last_response = std::move(outcome.response);
          co_return route_result::context_exceeded;
        case relay_kind::retryable_status:
          target.health->record_failure(clock::now(), target.ejection);
          st.last_failure.reset();
          st.last_response = std::move(outcome.response);
          break;
        case relay_kind::failed:
          if (watch->gone) {
            target.health->record_abandoned();
            st.client_gone = true;
            co_return route_result::exhausted;
          }
          target.health->record_failure(clock::now(), target.ejection);
          st.last_response.reset();
          st.last_failure = std::move(outcome.failure);
          break;
      }
    }
    co_return route_result::exhausted;
  }

  /// Admission without waiting: not ejected (or its half-open trial) and below max_concurrency.
  static bool take_slot(const routing::target& t) {
    if (!t.health->admit(clock::now())) return false;
    if (t.health->try_begin_request(t.max_concurrency)) return true;
    t.health->record_abandoned();
    return false;
  }

  std::unique_ptr<adapters::call> start_attempt(const routing::target& t, const request& req, std::string_view path,
                                                const request_fields& fields, const runtime& rt) {
    adapters::upstream_request up;
    up.path = path;
    up.stream = fields.stream;
    up.request_id = record_.request_id;
    const bool rename = !t.model.empty() && t.model != fields.model;
    if (!rename && stream_options_.empty()) {
      up.body = req.body();
    } else {
      up.body = edit_body(req.body(), fields, rename ? std::optional<std::string>(json_quote(t.model)) : std::nullopt,
                          stream_options_.empty() ? std::nullopt : std::optional<std::string_view>(stream_options_));
    }
    try {
      return rt.backends[t.backend_index]->start(std::move(up), {w_.io(), w_.curl(), w_.pool()});
    } catch (const std::exception& e) {  // counted as a failed attempt: retries and failover apply
      std::cerr << "tollgate: backend " << rt.cfg.backends[t.backend_index].name << " failed to start a call: " << e.what()
                << std::endl;
      return std::make_unique<failed_call>(std::string("the backend failed to start the call: ") + e.what());
    }
  }

  /// The call of an attempt whose backend threw in start(): it fails at once.
  class failed_call final : public adapters::call {
   public:
    explicit failed_call(std::string message) {
      event_.type = adapters::call_event::kind::failed;
      event_.error = adapters::failure::broken;
      event_.message = std::move(message);
    }
    net::awaitable<adapters::call_event> next() override { co_return event_; }
    void cancel() override {}
    bool ready() const override { return true; }
    void on_ready(std::function<void()>) override {}

   private:
    adapters::call_event event_;
  };

  /// Waits until a (or b, when given) has an event, for at most timeout. true: one is ready.
  net::awaitable<bool> wait_ready(adapters::call& a, adapters::call* b, config::duration timeout) {
    auto ready = [&] { return a.ready() || (b != nullptr && b->ready()); };
    if (ready()) co_return true;
    net::steady_timer timer(w_.io());
    a.on_ready([&timer] { timer.cancel(); });
    if (b != nullptr) b->on_ready([&timer] { timer.cancel(); });
    const auto deadline = clock::now() + timeout;
    while (!ready() && clock::now() < deadline) {
      timer.expires_at(deadline);
      co_await timer.async_wait(use_tuple);
    }
    a.on_ready({});
    if (b != nullptr) b->on_ready({});
    co_return ready();
  }

  /// Waits in the backend's bounded queue until a slot frees, up to its queue_timeout. true: the
  /// slot is taken.
  net::awaitable<bool> wait_for_slot(const routing::target& t) {
    auto timer = std::make_shared<net::steady_timer>(w_.io());
    auto waiter = std::make_shared<routing::target_health::waiter>();
    waiter->wake = [timer, ex = w_.io().get_executor()] { net::post(ex, [timer] { timer->cancel(); }); };
    const auto deadline = clock::now() + t.queue_timeout;
    while (clock::now() < deadline) {
      if (!t.health->wait_for_slot(waiter, t.max_queue)) co_return false;
      // A slot freed between the failed try and queueing would wake nobody: look once more.
      if (t.health->try_begin_request(t.max_concurrency)) {
        t.health->cancel_wait(waiter);
        co_return true;
      }
      timer->expires_at(deadline);
      co_await timer->async_wait(use_tuple);
      t.health->cancel_wait(waiter);
      if (t.health->try_begin_request(t.max_concurrency)) co_return true;
    }
    co_return false;
  }

  /// Waits before the next attempt: full jitter over an exponential base, at least the last
  /// answer's Retry-After. false when that wait would pass the request's deadline.
  net::awaitable<bool> back_off(const config::retry_config& retry, const attempt_state& st) {
    const unsigned exponent = std::min(st.attempts - 1, 20u);
    auto cap = retry.backoff * (1ll << exponent);
    if (cap > retry.max_backoff) cap = retry.max_backoff;
    auto wait = std::chrono::milliseconds(cap.count() > 0 ? static_cast<long long>(w_.random() % (cap.count() + 1)) : 0);
    if (st.last_response && st.last_response->retry_after) wait = std::max(wait, *st.last_response->retry_after);
    if (clock::now() + wait >= st.deadline) co_return false;
    if (wait.count() == 0) co_return true;
    net::steady_timer timer(w_.io());
    timer.expires_after(wait);
    co_await timer.async_wait(use_tuple);
    co_return true;
  }

  enum class relay_kind { answered, failed, retryable_status, context_exceeded, gone };

  struct relay_outcome {
    relay_kind kind = relay_kind::failed;
    bool keep_alive = false;        ///< with answered
    adapters::call_event failure;   ///< with failed
    buffered_response response;     ///< with retryable_status and context_exceeded
    bool broke = false;             ///< with answered: the upstream broke the stream mid-way
  };

  /// Notes the usage an SSE event carries (the last one seen wins: usage is cumulative). true
  /// when the event is the usage-only chunk we asked for on the client's behalf: it is dropped.
  bool take_usage(const std::string& event) {
    if (event.find("\"usage\"") == std::string::npos) return false;
    const auto data = sse_data(event);
    if (!data) return false;
    bool no_choices = false, refused = false;
    auto u = usage_from_json(*data, &no_choices, &refused);
    if (u) usage_ = *u;
    else if (refused) usage_.reset();  // untrustworthy: the tokenizer counts this answer
    else return false;
    return strip_usage_ && no_choices;
  }

  static const char* attempt_outcome(const relay_outcome& o, bool client_gone) {
    switch (o.kind) {
      case relay_kind::answered: return o.broke ? "failed" : "ok";
      case relay_kind::retryable_status:
      case relay_kind::context_exceeded: return "error_status";
      case relay_kind::gone: return "cancelled";
      case relay_kind::failed: return client_gone ? "cancelled" : "failed";
    }
    return "failed";
  }

  static bool retryable_status(int status) {
    return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
  }

  /// Relays one attempt. Only answers that reached the client are final; the rest let the caller
  /// try again, which is possible because nothing has been sent.
  net::awaitable<relay_outcome> relay(adapters::call& call, bool want_stream) {
    clear_deadline();
    const auto attempt_started = clock::now();
    adapters::call_event ev = co_await call.next();
    if (ev.type == adapters::call_event::kind::failed) co_return relay_outcome{relay_kind::failed, false, std::move(ev), {}};
    const auto first_byte = clock::now() - attempt_started;
    attempt_health_->record_first_byte(std::chrono::duration_cast<std::chrono::microseconds>(first_byte));
    last_first_byte_ = std::chrono::duration<double>(first_byte).count();
    adapters::response_head head = std::move(ev.head);
    if (const std::string* enc = head.find("content-encoding"); enc != nullptr && !beast::iequals(*enc, "identity")) {
      // We ask for identity: an encoded body could be neither metered nor relayed as it is.
      ev.type = adapters::call_event::kind::failed;
      ev.error = adapters::failure::broken;
      ev.message = "upstream answered with Content-Encoding " + *enc + " (identity was asked for)";
      co_return relay_outcome{relay_kind::failed, false, std::move(ev), {}};
    }
    const std::string* type = head.find("content-type");
    const bool sse = type != nullptr && type->find("text/event-stream") != std::string::npos;
    if (want_stream && sse && head.status >= 200 && head.status < 300) {
      co_return co_await relay_stream(call, head);
    }

    // Whole answers (and errors) are read completely first: a break mid-body can still fail over.
    buffered_response res;
    res.status = head.status;
    res.content_type = type != nullptr ? *type : "application/json";
    for (const auto& [name, value] : head.headers) {
      if (relayed_header(name)) res.headers.emplace_back(name, value);
      if (name == "retry-after") res.retry_after = parse_retry_after(value);
    }
    for (;;) {
      ev = co_await call.next();
      if (ev.type == adapters::call_event::kind::data) {
        res.body += ev.data;
        if (res.body.size() > max_upstream_body) {
          ev.type = adapters::call_event::kind::failed;
          ev.error = adapters::failure::broken;
          ev.message = "upstream response exceeds " + std::to_string(max_upstream_body) + " bytes";
          co_return relay_outcome{relay_kind::failed, false, std::move(ev), {}};
        }
        continue;
      }
      if (ev.type == adapters::call_event::kind::failed) co_return relay_outcome{relay_kind::failed, false, std::move(ev), {}};
      break;
    }
    if (retryable_status(res.status)) co_return relay_outcome{relay_kind::retryable_status, false, {}, std::move(res)};
    if (res.status >= 200 && res.status < 300) {
      usage_ = usage_from_json(res.body);
      if (!usage_) delivered_ = res.body;  // counted at the end, if it reaches the client
    }
    if (res.status == 400 && res.body.find("context_length_exceeded") != std::string::npos) {
      co_return relay_outcome{relay_kind::context_exceeded, false, {}, std::move(res)};
    }
    const bool keep = co_await send_buffered(std::move(res));
    co_return relay_outcome{relay_kind::answered, keep, {}, {}};
  }

  net::awaitable<bool> send_buffered(buffered_response b) {
    response_head_text head(b.status);
    head.field("Content-Type", b.content_type);
    for (const auto& [name, value] : b.headers) head.field(name, value);
    decorate(head);
    co_return co_await write_whole(head, b.status, b.body, true);
  }

  net::awaitable<relay_outcome> relay_stream(adapters::call& call, const adapters::response_head& head) {
    response_head_text res(head.status);
    res.field("Content-Type", "text/event-stream").field("Cache-Control", "no-cache");
    for (const auto& [name, value] : head.headers) {
      if (relayed_header(name)) res.field(name, value);
    }
    decorate(res);
    record_.status = head.status;
    set_deadline(write_timeout);
    auto [ec, n] = co_await net::async_write(socket_, net::buffer(res.finish(std::nullopt, !w_.shared().draining)), use_tuple);
    // Cleared after each write: the wait for the upstream's next event has timeouts of its own,
    // and a passing deadline would cancel the client watch too.
    clear_deadline();
    if (ec) co_return relay_outcome{relay_kind::gone, false, {}, {}};
    record_.bytes_out += n;

    sse_splitter events;
    std::string out;
    bool broke = false;
    delivered_.clear();
    delivered_text_.clear();
    delivered_sse_ = true;
    for (;;) {
      adapters::call_event ev = co_await call.next();
      out.clear();
      bool finished = false;
      if (ev.type == adapters::call_event::kind::data) {
        events.feed(ev.data);
        while (auto e = events.next_event()) {
          if (take_usage(*e)) continue;
          out += *e;
        }
        if (events.buffered() > rt_->cfg.server.max_event_bytes) {
          // An event that never ends would be buffered without bound: the stream is broken.
          const api_error err = bad_gateway("upstream " + backend_name_ + " sent an SSE event over server.max_event_bytes (" +
                                            std::to_string(rt_->cfg.server.max_event_bytes) + " bytes)");
          record_.error = err.message;
          call.cancel();
          out += err.sse_event();
          finished = true;
          broke = true;
        }
      } else if (ev.type == adapters::call_event::kind::end) {
        out = events.take_rest();
        finished = true;
      } else if (ev.type == adapters::call_event::kind::head) {
        continue;
      } else {
        // The client already has part of the answer: say the stream broke, never end it quietly.
        record_.error = ev.message;
        if (ev.error == adapters::failure::cancelled) co_return relay_outcome{relay_kind::gone, false, {}, {}};
        const api_error err = ev.error == adapters::failure::timeout
                                  ? gateway_timeout("upstream " + backend_name_ + " timed out mid-stream: " + ev.message)
                                  : bad_gateway("upstream " + backend_name_ + " broke the stream: " + ev.message);
        out = events.take_rest();
        if (!out.empty() && !out.ends_with("\n\n")) out += "\n\n";
        out += err.sse_event();
        finished = true;
        broke = true;
      }
      if (!out.empty()) {
        set_deadline(write_timeout);
        auto [wec, wn] = co_await write_chunk(out);
        clear_deadline();
        if (wec) co_return relay_outcome{relay_kind::gone, false, {}, {}};
        record_.bytes_out += wn;
        if (!first_token_at_) first_token_at_ = clock::now();
        // What the client has, for counting if the usage chunk never comes.
        // Whole events: past a bound, the text is taken out of those kept so far, so that a long
        // stream is counted whole without keeping all its bytes.
        if (delivered_.size() + out.size() > max_metered_stream) {
          append_completion_text(delivered_, true, delivered_text_);
          delivered_.clear();
        }
        delivered_ += out;
      }
      if (finished) break;
    }
    set_deadline(write_timeout);
    auto [lec, ln] = co_await net::async_write(socket_, net::buffer("0\r\n\r\n", 5), use_tuple);
    clear_deadline();
    record_.bytes_out += ln;
    relay_outcome done{relay_kind::answered, !lec, {}, {}};
    done.broke = broke;
    co_return done;
  }

  /// Watches the client while the call runs, so that a client that leaves cancels it: at once
  /// for a stream (long, and its upstream may stay silent for a while), and for a whole answer
  /// only from the worker's next heartbeat on (within 250 ms), so that a quick answer spends no
  /// system call on it.
  std::shared_ptr<client_watch> watch_client(adapters::call& call, bool at_once) {
    auto watch = std::make_shared<client_watch>();
    watch->active = &call;
    if (at_once) {
      arm_watch(watch);
    } else {
      entry_->on_beat = [this, w = watch.get()] { arm_watch(w->shared_from_this()); };
    }
    return watch;
  }

  /// A peek on the client's socket completes when the client closes (0 bytes) or sends more
  /// (pipelined bytes, which stay in the socket for the next read). A peek, unlike a readiness
  /// wait, does not make Asio re-register the descriptor with epoll.
  void arm_watch(const std::shared_ptr<client_watch>& watch) {
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

  /// Ends a watch however its scope is left, an exception included, and before the call it points
  /// at is destroyed (declare it after the call).
  struct watch_guard {
    session& s;
    std::shared_ptr<client_watch>& watch;
    ~watch_guard() {
      if (watch && !watch->done) s.unwatch_client(watch);
    }
  };

  void unwatch_client(const std::shared_ptr<client_watch>& watch) {
    watch->done = true;
    entry_->on_beat = nullptr;
    if (!watch->armed) return;
    boost::system::error_code ignored;
    socket_.cancel(ignored);
  }

  void decorate(response_head_text& head) {
    head.field("x-request-id", record_.request_id);
    if (!backend_name_.empty()) head.field("x-tollgate-backend", backend_name_);
    head.field("Server", "tollgate");
  }

  /// A session's socket deadline: the worker's heartbeat cancels its I/O once it has passed.
  void set_deadline(config::duration d) { entry_->deadline = clock::now() + d; }
  void clear_deadline() { entry_->deadline = clock::time_point::max(); }

  net::awaitable<std::tuple<boost::system::error_code, std::size_t>> write_chunk(std::string_view data) {
    char size[20];
    const int n = std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    const std::array<net::const_buffer, 3> buffers{net::buffer(size, static_cast<std::size_t>(n)), net::buffer(data),
                                                   net::buffer("\r\n", 2)};
    co_return co_await net::async_write(socket_, buffers, use_tuple);
  }

  /// Writes a head and its whole body. keep_alive: the client may send another request after it.
  net::awaitable<bool> write_whole(response_head_text& head, int status, std::string_view body, bool keep_alive) {
    keep_alive = keep_alive && !w_.shared().draining;
    record_.status = status;
    const std::size_t content_length = body.size();
    // An answer to HEAD has the head of the answer to GET and no body (RFC 9110 9.3.2).
    if (head_request_) body = {};
    const std::array<net::const_buffer, 2> buffers{net::buffer(head.finish(content_length, keep_alive)), net::buffer(body)};
    set_deadline(write_timeout);
    auto [ec, n] = co_await net::async_write(socket_, buffers, use_tuple);
    clear_deadline();
    record_.bytes_out += n;
    co_return !ec && keep_alive;
  }

  net::awaitable<bool> send(http::response<http::string_body> res, bool keep_alive) {
    response_head_text head(res.result_int());
    for (const auto& f : res.base()) head.field(f.name_string(), f.value());
    decorate(head);
    co_return co_await write_whole(head, res.result_int(), res.body(), keep_alive);
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
  std::vector<std::size_t> order_;  // reused per attempt plan
  routing::target_health* attempt_health_ = nullptr;  // the backend of the attempt being relayed
  double last_first_byte_ = -1;  // seconds to the last attempt's response headers; -1: none
  std::string route_name_;       // the matched route as configured: a bounded metric label
  std::string upstream_model_;   // the model name sent to the backend that answered last
  bool proxied_ = false;         // the request went to the proxy path (counted in metrics)
  std::optional<usage> usage_;   // the last usage the upstream reported for this request
  std::optional<principal> principal_;  // the key of the request being handled
  auth_result auth_ = auth_result::missing;
  std::shared_ptr<const key_table> known_table_;  // the table that proved known_key_
  std::string known_key_;                         // the last key this connection proved
  std::optional<principal> known_principal_;
  const runtime* rt_ = nullptr;         // the snapshot a proxied request runs on
  std::string path_;                    // its endpoint, without /v1
  std::string delivered_;               // what reached the client, for counting the completion
  std::string delivered_text_;          // the text taken out of delivered_ when it grew too long
  bool delivered_sse_ = false;
  bool counted_ = false;                // usage_ was counted here, not reported upstream
  std::optional<clock::time_point> first_token_at_;  // first stream bytes written to the client
  double upstream_seconds_ = -1;        // the answering attempt, from its start to its end
  bool single_attempt_ = false;
  struct admitted {
    limiter* limits = nullptr;  // set while a request holds a limiter admission
    std::shared_ptr<const config::key_config> key;
    std::shared_ptr<key_state> state;
    std::int64_t estimate = 0;
  } limited_;
  const config::price_config* price_ = nullptr;  // prices of the target that served it
  bool strip_usage_ = false;     // we asked for stream usage; the client did not
  std::string stream_options_;   // the stream_options every attempt sends instead of the client's; empty: as sent
  bool keep_alive_ = false;
  bool head_request_ = false;  // the request being answered is a HEAD: no body goes out
  tcp::socket socket_;
  beast::flat_buffer buffer_;
  char peek_byte_[1];
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
