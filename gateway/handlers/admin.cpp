// The admin API under /admin/, behind server.admin_key: /admin/backends, and the store's keys and
// usage. These touch the store's database on the worker's thread: they are for operators, not for
// traffic.
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>

#include "gateway/handlers/handlers.hpp"
#include "gateway/keys/key_admin.hpp"
#include "gateway/accounting/ledger.hpp"
#include "gateway/server/runtime.hpp"
#include "gateway/server/server.hpp"
#include "gateway/server/responder.hpp"
#include "gateway/keys/store.hpp"
#include "gateway/server/worker.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
namespace http = boost::beast::http;
using clock = std::chrono::steady_clock;

namespace {

std::int64_t unix_seconds_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct admin_answer {
  int status = 200;
  std::string body;
  std::optional<api_error> error;
};

std::map<std::string, std::string> query_params(std::string_view target) {
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
std::optional<std::int64_t> parse_time_param(const std::string& v) {
  if (!v.empty() && std::all_of(v.begin(), v.end(), [](unsigned char c) { return std::isdigit(c); }) && v.size() < 16) {
    return std::stoll(v);
  }
  auto t = config::parse_expiry(v);  // a bare date means its last second there
  if (!t) return std::nullopt;
  if (v.size() == 10) return (*t - 86399) * 1000;
  return *t * 1000;
}

std::string backends_body(const runtime& rt) {
  nlohmann::json list = nlohmann::json::array();
  const auto now = clock::now();
  for (std::size_t i = 0; i < rt.cfg.backends.size(); ++i) {
    const auto& b = rt.cfg.backends[i];
    const auto& h = *rt.backend_health[i];
    const bool ejected = h.ejected(now) && !h.probed_down();
    const config::remote_backend_config* remote = b.remote();
    list.push_back({{"name", b.name},
                    {"kind", std::string(b.kind())},
                    {"base_url", remote != nullptr ? remote->base_url : std::string()},
                    {"healthy", !h.ejected(now)},
                    {"active_check", remote != nullptr && remote->health_check.enabled ? (h.probed_down() ? "down" : "up") : "off"},
                    {"ejected", ejected},
                    {"ejections_in_a_row", h.ejections()},
                    {"consecutive_failures", h.consecutive_failures()},
                    {"in_flight", h.in_flight()}});
  }
  return nlohmann::json{{"object", "list"}, {"data", std::move(list)}}.dump();
}

/// /admin/keys (GET list, POST create), /admin/keys/NAME (GET, PATCH {"priority"}, DELETE revokes),
/// /admin/keys/NAME/revoke (POST), /admin/usage (GET ?key=&since=&until=).
admin_answer admin_store_answer(worker& w, const request& req, std::string_view path, const runtime& rt) {
  auto fail = [](api_error e) { return admin_answer{0, {}, std::move(e)}; };
  auto ok = [](int status, const nlohmann::json& body) { return admin_answer{status, body.dump(), std::nullopt}; };
  store* st = w.shared().keys_store.get();
  if (st == nullptr) {
    return fail(bad_request("the key and usage API needs a store: add `store: {sqlite: ./tollgate.db}` to the config"));
  }
  const auto method = req.method();
  const std::int64_t now = unix_seconds_now();
  if (w.shared().ledger) w.shared().ledger->flush();  // spend and usage read the ledger
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
    auto body = nlohmann::json::parse(req.body().view(), nullptr, false);
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
    w.shared().refresh_keys();
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
    w.shared().refresh_keys();
    return ok(200, {{"name", name}, {"status", "revoked"}});
  }
  if (!revoke_suffix && method == http::verb::patch) {
    auto body = nlohmann::json::parse(req.body().view(), nullptr, false);
    if (body.is_discarded()) return fail(bad_request("the body is not valid JSON"));
    auto change = read_key_update(body);
    if (!change.priority) return fail(bad_request(change.error, change.param));
    if (!st->set_key_priority(name, *change.priority)) {
      return fail(not_found("No active key named '" + name + "'.", "key_not_found"));
    }
    w.shared().refresh_keys();
    for (const auto& k : st->keys(false)) {
      if (k.limits.name == name) return ok(200, key_json(k, spent_now(k)));
    }
    return fail(not_found("No active key named '" + name + "'.", "key_not_found"));
  }
  if (!revoke_suffix && method == http::verb::get) {
    for (const auto& k : st->keys(false)) {
      if (k.limits.name == name) return ok(200, key_json(k, spent_now(k)));
    }
    return fail(not_found("No active key named '" + name + "'.", "key_not_found"));
  }
  return fail(method_not_allowed());
}

net::awaitable<bool> admin_store(request_context& ctx) {
  admin_answer answer;
  try {
    answer = admin_store_answer(ctx.w, ctx.req, ctx.path, ctx.rt);
  } catch (const std::exception& e) {
    answer.error = unavailable(std::string("the store failed: ") + e.what());
  }
  if (answer.error) co_return co_await ctx.out.send_error(*answer.error, true);
  co_return co_await ctx.out.send_json(answer.status, std::move(answer.body), true);
}

}  // namespace

net::awaitable<bool> handle_admin(request_context& ctx) {
  const runtime& rt = ctx.rt;
  if (rt.cfg.server.admin_key.empty()) {
    co_return co_await ctx.out.send_error(not_found("the admin API is off: set server.admin_key", "unknown_url"), true);
  }
  const std::string presented = sha256(bearer_key(ctx.req)), wanted = sha256(rt.cfg.server.admin_key);
  if (CRYPTO_memcmp(presented.data(), wanted.data(), wanted.size()) != 0) {
    co_return co_await ctx.out.send_error(unauthorized("the admin API needs server.admin_key"), true);
  }
  ctx.result.record.key_name = "admin";
  const std::string_view path = ctx.path;
  if (path == "/admin/backends") {
    const bool get = ctx.req.method() == http::verb::get || ctx.req.method() == http::verb::head;
    if (!get) co_return co_await ctx.out.send_error(method_not_allowed(), true);
    co_return co_await ctx.out.send_json(200, backends_body(rt), true);
  }
  if (path == "/admin/keys" || path.starts_with("/admin/keys/") || path == "/admin/usage") {
    co_return co_await admin_store(ctx);
  }
  co_return co_await ctx.out.send_error(not_found("Unknown admin URL: " + std::string(path), "unknown_url"), true);
}

}  // namespace tollgate::gateway
