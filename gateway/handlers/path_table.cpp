#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>

#include <array>
#include <chrono>

#include "gateway/server/cors.hpp"
#include "gateway/handlers/handlers.hpp"
#include "gateway/observability/metrics.hpp"
#include "gateway/server/runtime.hpp"
#include "gateway/server/server.hpp"
#include "gateway/server/responder.hpp"
#include "gateway/server/worker.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
namespace http = boost::beast::http;

namespace {

std::int64_t unix_seconds_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// HEAD is answered as GET is, without the body (the responder leaves it out).
bool is_get(const request& req) { return req.method() == http::verb::get || req.method() == http::verb::head; }

net::awaitable<bool> not_found_url(request_context& ctx) {
  co_return co_await ctx.out.send_error(not_found("Unknown request URL: " + std::string(ctx.req.method_string()) + " " +
                                                      std::string(ctx.path) + ".",
                                                  "unknown_url"),
                                        true);
}

net::awaitable<bool> metrics(request_context& ctx) {
  if (!is_get(ctx.req)) co_return co_await not_found_url(ctx);
  auto& shared = ctx.w.shared();
  http::response<http::string_body> res{http::status::ok, 11};
  res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
  res.body() = shared.metrics->render(ctx.rt, shared.keys.load().get(), shared.in_flight.load());
  co_return co_await ctx.out.send(std::move(res), true);
}

net::awaitable<bool> healthz(request_context& ctx) {
  if (!is_get(ctx.req)) co_return co_await ctx.out.send_error(method_not_allowed(), true);
  co_return co_await ctx.out.send_json(200, R"({"status":"ok"})", true);
}

/// Ready while at least one backend can take traffic; the body says which can.
std::pair<bool, std::string> readiness(const runtime& rt) {
  nlohmann::json backends = nlohmann::json::object();
  bool any = false;
  const auto now = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < rt.cfg.backends.size(); ++i) {
    const bool up = rt.backends[i]->serving() && !rt.backend_health[i]->ejected(now);
    any = any || up;
    backends[rt.cfg.backends[i].name] = up ? "up" : "down";
  }
  for (const auto& d : rt.cfg.disabled_backends) backends[d.name] = "disabled";
  nlohmann::json body = {{"status", any ? "ready" : "no healthy backend"}, {"backends", std::move(backends)}};
  if (auto shared = rt.limits->shared()) {
    body["limits"] = {{"redis", shared->up ? "up" : "down"}, {"on_redis_down", shared->on_down},
                      {"replicas", shared->replicas}};
  }
  return {any, body.dump()};
}

net::awaitable<bool> readyz(request_context& ctx) {
  if (!is_get(ctx.req)) co_return co_await ctx.out.send_error(method_not_allowed(), true);
  if (ctx.w.shared().draining) co_return co_await ctx.out.send_json(503, R"({"status":"draining"})", false);
  auto [ready, body] = readiness(ctx.rt);
  co_return co_await ctx.out.send_json(ready ? 200 : 503, std::move(body), true);
}

std::string models_body(const runtime& rt, const principal& who) {
  nlohmann::json data = nlohmann::json::array();
  for (const auto& name : rt.routes.public_models()) {
    if (!who.may_use(name)) continue;
    data.push_back({{"id", name}, {"object", "model"}, {"created", 0}, {"owned_by", "tollgate"}});
  }
  return nlohmann::json{{"object", "list"}, {"data", std::move(data)}}.dump();
}

net::awaitable<bool> models(request_context& ctx) {
  if (!is_get(ctx.req)) co_return co_await ctx.out.send_error(method_not_allowed(), true);
  if (!authenticate(ctx)) co_return co_await ctx.out.send_error(unauthorized_error(ctx), true);
  co_return co_await ctx.out.send_json(200, models_body(ctx.rt, *ctx.who), true);
}

/// A CORS preflight: what the browser may send next (the answer carries the origin, added by the
/// responder). An origin not allowed gets a 204 without them, which the browser refuses.
net::awaitable<bool> preflight(request_context& ctx) {
  http::response<http::string_body> res{http::status::no_content, 11};
  if (!ctx.out.cors_origin().empty()) {
    const auto asked = ctx.req.find(http::field::access_control_request_headers);
    res.set(http::field::access_control_allow_methods, "GET, POST, DELETE, OPTIONS");
    res.set(http::field::access_control_allow_headers,
            asked != ctx.req.end() ? std::string(asked->value()) : std::string(cors_default_request_headers));
    res.set(http::field::access_control_max_age, "600");
  }
  co_return co_await ctx.out.send(std::move(res), true);
}

using handler = net::awaitable<bool> (*)(request_context&);

struct path_entry {
  enum class match { path, path_prefix, target_prefix } how;
  std::string_view text;
  handler run;
};

/// First match wins. The admin API is matched on the raw target (no /v1 form of it).
constexpr std::array<path_entry, 13> path_table{{
    {path_entry::match::path, "/metrics", metrics},
    {path_entry::match::path, "/healthz", healthz},
    {path_entry::match::path, "/readyz", readyz},
    {path_entry::match::target_prefix, "/admin/", handle_admin},
    {path_entry::match::path, "/models", models},
    {path_entry::match::path_prefix, "/models/", handle_model_by_id},
    {path_entry::match::path, "/chat/completions", handle_proxy},
    {path_entry::match::path, "/completions", handle_proxy},
    {path_entry::match::path, "/embeddings", handle_proxy},
    {path_entry::match::path, "/messages", handle_messages},
    {path_entry::match::path, "/messages/count_tokens", handle_count_tokens},
    {path_entry::match::path, "/responses", handle_responses},
    {path_entry::match::path_prefix, "/responses/", handle_stored_response},
}};

}  // namespace

std::string_view bearer_key(const request& req) {
  if (auto it = req.find(http::field::authorization); it != req.end()) {
    std::string_view v = it->value();
    if (v.size() > 7 && boost::beast::iequals(v.substr(0, 7), "bearer ")) {
      v.remove_prefix(7);
      while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
      return v;
    }
    return {};
  }
  if (auto it = req.find("x-api-key"); it != req.end()) return it->value();
  return {};
}

bool authenticate(request_context& ctx) {
  connection_state& c = ctx.conn;
  auto table = ctx.w.shared().keys.load();
  const std::string_view presented = bearer_key(ctx.req);
  const std::int64_t now = unix_seconds_now();
  // A keep-alive connection sends the same key each time: while the key table is the same, the
  // key this connection proved last is compared (in constant time) instead of hashed again.
  if (table == c.known_table && !presented.empty() && presented.size() == c.known_key.size() &&
      CRYPTO_memcmp(presented.data(), c.known_key.data(), presented.size()) == 0) {
    ctx.auth = key_table::recheck(*c.known_principal, now);
    if (ctx.auth == auth_result::ok) ctx.who = c.known_principal;
    else ctx.who.reset();
  } else {
    ctx.auth = table->authenticate(presented, now, ctx.who);
    if (ctx.who) {
      c.known_table = std::move(table);
      c.known_key.assign(presented);
      c.known_principal = ctx.who;
    }
  }
  if (!ctx.who) return false;
  ctx.result.record.key_name = ctx.who->key_name;
  return true;
}

api_error unauthorized_error(const request_context& ctx) {
  if (bearer_key(ctx.req).empty()) {
    return unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'.");
  }
  if (ctx.auth == auth_result::expired) return unauthorized("This API key has expired.");
  return unauthorized("Incorrect API key provided.");
}

// Not a coroutine itself: it hands back the handler's, so the lookup costs no frame.
net::awaitable<bool> handle_request(request_context& ctx) {
  const std::string_view target = ctx.req.target();
  if (ctx.req.method() == http::verb::options && !ctx.rt.cfg.server.cors_origins.empty()) return preflight(ctx);
  for (const auto& e : path_table) {
    const bool hit = e.how == path_entry::match::path          ? ctx.path == e.text
                     : e.how == path_entry::match::path_prefix ? ctx.path.starts_with(e.text)
                                                               : target.starts_with(e.text);
    if (hit) return e.run(ctx);
  }
  return not_found_url(ctx);
}

}  // namespace tollgate::gateway
