// The endpoints of APIs other than OpenAI chat: POST /v1/messages and /v1/responses (translated to
// chat completions and proxied as one, answered in the client's dialect; relayed as they are when
// every upstream of the route speaks the client's API), and the answers about
// models that need no upstream: POST /v1/messages/count_tokens (the prompt counted with the
// metering tokenizer, as the chat template renders it) and GET /v1/models/{id} (OpenAI's shape,
// or Anthropic's for requests with anthropic-version).
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include <array>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "gateway/accounting/token_counter.hpp"
#include "gateway/handlers/handlers.hpp"
#include "gateway/accounting/metering.hpp"
#include "protocol/anthropic_messages.hpp"
#include "protocol/client_dialect.hpp"
#include "protocol/json_body.hpp"
#include "gateway/server/runtime.hpp"
#include "gateway/server/server.hpp"
#include "gateway/server/responder.hpp"
#include "gateway/server/worker.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
namespace http = boost::beast::http;
using json = nlohmann::json;

namespace {

struct endpoint_answer {
  int status = 200;
  std::string body;  // JSON; an error in OpenAI's shape when status >= 400
};

endpoint_answer fail(const api_error& e) { return {e.status, e.body()}; }

api_error no_model(std::string_view id) {
  return not_found("The model `" + std::string(id) + "` does not exist or you do not have access to it.", "model_not_found");
}


/// The model id if this key may use it and a route serves it, else 404 model_not_found.
endpoint_answer model_by_id(const runtime& rt, const principal& who, std::string_view id, bool anthropic_shape) {
  if (id.empty() || !who.may_use(id) || rt.routes.resolve(id) == nullptr) return fail(no_model(id));
  if (anthropic_shape) {
    return {200, json{{"type", "model"}, {"id", id}, {"display_name", id}, {"created_at", "1970-01-01T00:00:00Z"}}.dump()};
  }
  return {200, json{{"id", id}, {"object", "model"}, {"created", 0}, {"owned_by", "tollgate"}}.dump()};
}

/// {"input_tokens": N} for an Anthropic Messages request body (max_tokens may be left out).
/// 400 naming a refused field, 404 for a model the key may not use or no route serves, 503 when
/// there is no tokenizer to count with.
endpoint_answer count_message_tokens(const runtime& rt, const principal& who, std::string_view body) {
  json request = json::parse(body, nullptr, false);
  if (!request.is_object()) return fail(bad_request("the body is not a JSON object"));
  // count_tokens takes a Messages request without max_tokens.
  if (!request.contains("max_tokens")) request["max_tokens"] = 1;
  const auto model = request.find("model");
  if (model == request.end() || !model->is_string()) return fail(bad_request("model: Field required", "model"));
  const std::string name = model->get<std::string>();
  if (!who.may_use(name) || rt.routes.resolve(name) == nullptr) return fail(no_model(name));
  const auto chat = protocol::messages_request_to_chat(request.dump());
  if (!chat.ok()) return fail(bad_request(chat.error, chat.param));
  if (!rt.tokenizer) return fail(unavailable("no tokenizer to count with: set metering.tokenizer"));
  return {200, json{{"input_tokens", count_prompt_tokens(*rt.tokenizer, "/chat/completions", chat.body)}}.dump()};
}

/// count() run on the counting threads (token_counter), the worker serving other connections
/// meanwhile; run here when they are all busy. count may use what ctx refers to: this waits for
/// it to finish whatever happens.
net::awaitable<endpoint_answer> off_worker(request_context& ctx, std::function<endpoint_answer()> count) {
  token_counter* counter = ctx.w.shared().counter.get();
  if (counter == nullptr) co_return count();
  auto timer = std::make_shared<net::steady_timer>(ctx.w.io(), net::steady_timer::time_point::max());
  auto answer = std::make_shared<endpoint_answer>();
  auto done = std::make_shared<bool>(false);
  token_counter::job j = [timer, answer, done, count, ex = ctx.w.io().get_executor()](bool) {
    try {
      *answer = count();
    } catch (const std::exception& e) {  // on this thread, nobody else would catch it
      *answer = fail(internal_error(std::string("counting failed: ") + e.what()));
    }
    net::post(ex, [timer, done] {
      *done = true;
      timer->cancel();
    });
  };
  if (!counter->post(j)) co_return count();
  while (!*done) co_await timer->async_wait(net::as_tuple(net::use_awaitable));
  co_return std::move(*answer);
}

void speak(request_context& ctx, std::unique_ptr<protocol::client_dialect> dialect) {
  ctx.dialect = std::move(dialect);
  ctx.out.speak(ctx.dialect.get());
}

/// Whether a backend serves the client's API itself: kind anthropic for Messages, a kind openai
/// backend with `responses: native` for the Responses API.
bool speaks_natively(const config::backend_config& b, bool anthropic) {
  if (anthropic) return std::holds_alternative<config::anthropic_backend_config>(b.settings);
  const auto* openai = std::get_if<config::openai_backend_config>(&b.settings);
  return openai != nullptr && openai->native_responses;
}

/// Whether every target a request for this route may be sent to (the route's, its fallbacks',
/// and the context fallbacks of either) serves the client's API itself.
bool all_native(const runtime& rt, const routing::route& route, bool anthropic) {
  std::vector<const routing::route*> routes{&route};
  routes.insert(routes.end(), route.fallbacks.begin(), route.fallbacks.end());
  for (std::size_t i = 0, n = routes.size(); i < n; ++i) {
    routes.insert(routes.end(), routes[i]->context_fallbacks.begin(), routes[i]->context_fallbacks.end());
  }
  bool any = false;
  for (const routing::route* r : routes) {
    for (const routing::target& t : r->targets) {
      if (!speaks_natively(rt.cfg.backends[t.backend_index], anthropic)) return false;
      any = true;
    }
  }
  return any;
}

/// The request may be relayed untranslated: its model's route goes only to upstreams that speak
/// the client's API. A body the relay cannot route is left to the translation, which names
/// what is wrong with it in the client's dialect.
bool relayable(const request_context& ctx, bool anthropic) {
  const auto parsed = protocol::parse_request_body(ctx.req.body());
  if (!parsed.fields) return false;
  const routing::route* route = ctx.rt.routes.resolve(parsed.fields->model);
  return route != nullptr && all_native(ctx.rt, *route, anthropic);
}

/// A Responses API request that continues a stored response (previous_response_id) goes first to
/// the backend that stored it, when the key's own response is remembered: another backend of the
/// route would not find it.
void prefer_previous_backend(request_context& ctx) {
  static constexpr std::array<std::string_view, 1> keys{"previous_response_id"};
  std::array<std::string_view, 1> value{};
  if (!protocol::top_level_values(ctx.req.body(), keys, value) || value[0].size() < 2 || value[0].front() != '"') return;
  const auto id = json::parse(value[0], nullptr, false);
  if (!id.is_string()) return;
  // Authenticated here only to know whose it is; handle_proxy authenticates again (from the
  // connection's remembered key) and answers a refusal.
  if (!authenticate(ctx)) return;
  const auto owner = ctx.rt.lasting->responses.find(id.get<std::string>());
  if (owner && owner->key_name == ctx.who->key_name) ctx.preferred_backend = owner->backend;
}

/// Clients of another API: the request is translated to chat completions and proxied as one;
/// answers and errors go back in the client's dialect (the responder and the exchange apply it).
/// A request whose every upstream speaks the client's API is relayed to them as it is instead
/// (the model renamed, as for any request), so that nothing chat completions cannot carry is
/// lost: Anthropic's cache_control, documents, thinking signatures; the Responses API's stored
/// conversations and built-in tools.
net::awaitable<bool> translated(request_context& ctx, bool anthropic) {
  if (ctx.req.method() != http::verb::post) co_return co_await ctx.out.send_error(method_not_allowed(), true);
  if (relayable(ctx, anthropic)) {
    // A response the upstream stored: the calls that read it back go to the backend that has it.
    // Noted as its id is read, before the answer that carries it reaches the client: a client
    // that retrieves it at once, on another connection, finds it.
    const auto remember = [&ctx](const std::string& id) {
      if (!ctx.who || ctx.result.record.backend.empty()) return;
      const std::string upstream_model = ctx.result.proxy ? ctx.result.proxy->upstream_model : std::string();
      ctx.rt.lasting->responses.remember(id, {ctx.result.record.backend, ctx.who->key_name, ctx.result.record.model, upstream_model});
    };
    speak(ctx, anthropic ? protocol::anthropic_relay() : protocol::responses_relay(remember));
    ctx.path = anthropic ? "/messages" : "/responses";
    if (!anthropic) prefer_previous_backend(ctx);
    co_return co_await handle_proxy(ctx);  // which authenticates
  }
  speak(ctx, anthropic ? protocol::anthropic_client(std::string(ctx.req.body().view()))
                       : protocol::responses_client(std::string(ctx.req.body().view())));
  if (!authenticate(ctx)) co_return co_await ctx.out.send_error(unauthorized_error(ctx), true);
  auto chat = ctx.dialect->chat_request();
  if (!chat.ok()) co_return co_await ctx.out.send_error(bad_request(chat.error, chat.param), true);
  ctx.req.body() = std::move(chat.body);  // a chat completions request from here on
  ctx.path = "/chat/completions";
  co_return co_await handle_proxy(ctx);
}

}  // namespace

std::optional<std::string> percent_decode(std::string_view in) {
  const auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size() || hex(in[i + 1]) < 0 || hex(in[i + 2]) < 0) return std::nullopt;
    out.push_back(static_cast<char>(hex(in[i + 1]) * 16 + hex(in[i + 2])));
    i += 2;
  }
  return out;
}

net::awaitable<bool> handle_messages(request_context& ctx) { return translated(ctx, true); }

net::awaitable<bool> handle_responses(request_context& ctx) { return translated(ctx, false); }

net::awaitable<bool> handle_count_tokens(request_context& ctx) {
  speak(ctx, protocol::anthropic_client({}));  // errors in Anthropic's shape
  if (ctx.req.method() != http::verb::post) co_return co_await ctx.out.send_error(method_not_allowed(), true);
  if (!authenticate(ctx)) co_return co_await ctx.out.send_error(unauthorized_error(ctx), true);
  // Tokenizing takes long for a long prompt: not on the worker.
  auto a = co_await off_worker(ctx, [&ctx] { return count_message_tokens(ctx.rt, *ctx.who, ctx.req.body()); });
  co_return co_await ctx.out.send_json(a.status, std::move(a.body), true);
}

net::awaitable<bool> handle_model_by_id(request_context& ctx) {
  const bool anthropic_shape = ctx.req.find("anthropic-version") != ctx.req.end();
  if (anthropic_shape) speak(ctx, protocol::anthropic_client({}));
  if (ctx.req.method() != http::verb::get && ctx.req.method() != http::verb::head) {
    co_return co_await ctx.out.send_error(method_not_allowed(), true);
  }
  if (!authenticate(ctx)) co_return co_await ctx.out.send_error(unauthorized_error(ctx), true);
  const auto id = percent_decode(ctx.path.substr(std::string_view("/models/").size()));
  if (!id) co_return co_await ctx.out.send_error(bad_request("the model id in the path is not valid percent-encoding"), true);
  auto a = model_by_id(ctx.rt, *ctx.who, *id, anthropic_shape);
  co_return co_await ctx.out.send_json(a.status, std::move(a.body), true);
}

}  // namespace tollgate::gateway
