// The Responses API's calls on a stored response: GET and DELETE /v1/responses/{id}, GET
// /v1/responses/{id}/input_items and POST /v1/responses/{id}/cancel. A response is stored by the
// upstream that made it, so these go to that backend, found in the ids remembered when its
// creation was relayed (response_owners), and only for the key that made it. Whatever the
// gateway does not know (translated responses are never stored) is a 404 that says why.
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "adapters/backend.hpp"
#include "gateway/handlers/handlers.hpp"
#include "gateway/proxy/attempt_runner.hpp"
#include "gateway/server/http_head.hpp"
#include "gateway/server/responder.hpp"
#include "gateway/server/runtime.hpp"
#include "gateway/server/worker.hpp"
#include "protocol/client_dialect.hpp"
#include "protocol/json_body.hpp"
#include "protocol/sse.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
namespace http = boost::beast::http;
using adapters::call_event;
using adapters::upstream_request;

namespace {

constexpr std::size_t max_answer_bytes = 64 * 1024 * 1024;  // as any whole upstream answer

api_error unknown_response(std::string_view id) {
  return not_found("No response with id '" + std::string(id) +
                       "' is known to this gateway: it keeps track of responses it relayed to a backend with "
                       "`responses: native` (the last server.remembered_responses of them, on this replica) for the key "
                       "that created them; responses translated to chat completions are not stored anywhere.",
                   "response_not_found");
}

/// What the path asks for: the method the upstream gets, or an error.
struct stored_call {
  std::string_view id;      ///< the id as it came, percent-encoded
  std::string_view suffix;  ///< "", "/input_items" or "/cancel"
  upstream_request::verb method = upstream_request::verb::get;
};

std::optional<stored_call> read_path(std::string_view path, http::verb method, bool& bad_method) {
  bad_method = false;
  stored_call c;
  std::string_view rest = path.substr(std::string_view("/responses/").size());
  const auto slash = rest.find('/');
  c.id = rest.substr(0, slash);
  c.suffix = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (c.id.empty()) return std::nullopt;
  if (c.suffix.empty() && (method == http::verb::get || method == http::verb::delete_)) {
    c.method = method == http::verb::get ? upstream_request::verb::get : upstream_request::verb::del;
    return c;
  }
  if (c.suffix == "/input_items" && method == http::verb::get) return c;
  if (c.suffix == "/cancel" && method == http::verb::post) {
    c.method = upstream_request::verb::post;
    return c;
  }
  bad_method = c.suffix.empty() || c.suffix == "/input_items" || c.suffix == "/cancel";
  return std::nullopt;
}

/// The backend named, if the running config has it and it still serves the Responses API.
std::optional<std::size_t> native_backend(const runtime& rt, const std::string& name) {
  for (std::size_t i = 0; i < rt.cfg.backends.size(); ++i) {
    if (rt.cfg.backends[i].name != name) continue;
    const auto* openai = std::get_if<config::openai_backend_config>(&rt.cfg.backends[i].settings);
    if (openai == nullptr || !openai->native_responses) return std::nullopt;
    return i;
  }
  return std::nullopt;
}

/// The answer names the model the client asked for when it created the response, as its
/// creation did (the upstream's name stays in x-tollgate-upstream-model).
struct model_names {
  std::string from, to;  // JSON literals; empty: no renaming
  explicit model_names(const response_owners::owner& o) {
    if (o.upstream_model.empty() || o.model.empty() || o.upstream_model == o.model) return;
    from = protocol::json_quote(o.upstream_model);
    to = protocol::json_quote(o.model);
  }
  void apply(std::string& text) const {
    if (!from.empty()) protocol::rename_model(text, from, to);
  }
};

/// Relays a stream as it comes (GET with stream=true, for a response made in the background),
/// as a relayed creation's stream is: events pass as they are (the model renamed), nothing after
/// the last one (response.completed, ...); a stream that ends or breaks before it gets the
/// Responses API's error event.
net::awaitable<bool> relay_stream(request_context& ctx, adapters::call& call, const adapters::response_head& head,
                                  const model_names& names) {
  responder& out = ctx.out;
  if (!co_await out.start_upstream_stream(head)) co_return false;
  const auto dialect = protocol::responses_relay();
  protocol::sse_splitter events;
  for (;;) {
    call_event ev = co_await call.next();
    if (ev.type == call_event::kind::head) continue;
    std::string chunk;
    bool finished = false;
    if (ev.type == call_event::kind::data) {
      events.feed(ev.data);
      while (auto e = events.next_event()) {
        names.apply(*e);
        chunk += dialect->event(*e);
        if (dialect->complete()) break;
      }
      finished = dialect->complete();
      if (finished) call.cancel();
    } else if (ev.type == call_event::kind::end) {
      if (std::string rest = events.take_rest(); !rest.empty()) {
        if (!rest.ends_with("\n\n")) rest += rest.ends_with('\n') ? "\n" : "\n\n";
        names.apply(rest);
        chunk += dialect->event(rest);
      }
      chunk += dialect->end();  // an error event unless the last event came
      finished = true;
    } else {
      if (ev.error == adapters::failure::cancelled) co_return false;
      ctx.result.record.error = ev.message;
      chunk = dialect->stream_error(502, "upstream " + ctx.result.record.backend + " broke the stream: " + ev.message);
      finished = true;
    }
    if (!chunk.empty()) {
      auto [ec, n] = co_await out.write_chunk(chunk);
      if (ec) co_return false;
    }
    if (finished) break;
  }
  auto [ec, n] = co_await out.write_last_chunk();
  co_return !ec;
}

}  // namespace

net::awaitable<bool> handle_stored_response(request_context& ctx) {
  bool bad_method = false;
  const auto asked = read_path(ctx.path, ctx.req.method(), bad_method);
  if (!asked) {
    if (bad_method) co_return co_await ctx.out.send_error(method_not_allowed(), true);
    co_return co_await ctx.out.send_error(
        not_found("Unknown request URL: " + std::string(ctx.req.method_string()) + " " + std::string(ctx.path) + ".", "unknown_url"),
        true);
  }
  if (!authenticate(ctx)) co_return co_await ctx.out.send_error(unauthorized_error(ctx), true);
  const auto id = percent_decode(asked->id);
  if (!id) co_return co_await ctx.out.send_error(bad_request("the response id in the path is not valid percent-encoding"), true);

  response_owners& owners = ctx.rt.lasting->responses;
  const auto owner = owners.find(*id);
  // Another key's response is as unknown as one never seen: its existence is not told.
  if (!owner || owner->key_name != ctx.who->key_name) co_return co_await ctx.out.send_error(unknown_response(*id), true);
  const auto index = native_backend(ctx.rt, owner->backend);
  if (!index) {
    co_return co_await ctx.out.send_error(
        not_found("The response '" + *id + "' is stored by backend `" + owner->backend +
                      "`, which the running config no longer has as a backend with `responses: native`.",
                  "response_not_found"),
        true);
  }

  access_record& record = ctx.result.record;
  record.backend = owner->backend;  // also the answer's x-tollgate-backend
  record.model = owner->model;
  ctx.out.name_upstream_model(&owner->upstream_model);  // owner outlives every answer below
  const std::string path = "/responses/" + std::string(asked->id) + std::string(asked->suffix);
  const std::string_view target = ctx.req.target();
  const auto question = target.find('?');
  upstream_request up;
  up.method = asked->method;
  up.path = path;
  if (question != std::string_view::npos) up.query = target.substr(question + 1);
  up.request_id = record.request_id;
  std::unique_ptr<adapters::call> call;
  std::string start_failure;
  try {
    call = ctx.rt.backends[*index]->start(std::move(up), ctx.w.io_refs());
  } catch (const std::exception& e) {  // answered below: no co_await in a handler
    start_failure = std::string("the backend failed to start the call: ") + e.what();
  }
  if (!call) co_return co_await ctx.out.send_error(bad_gateway(start_failure), true);
  const model_names names(*owner);
  const auto watch = ctx.out.watch(*call, false);
  call_event ev = co_await call->next();
  if (ev.type == call_event::kind::head) {
    const auto type = ev.head.find("content-type");
    if (type && type->find("text/event-stream") != std::string_view::npos) {
      ctx.out.unwatch(watch);
      const auto stream_watch = ctx.out.watch(*call, true);
      const bool keep = co_await relay_stream(ctx, *call, ev.head, names);
      ctx.out.unwatch(stream_watch);
      co_return keep;
    }
    buffered_response res;
    res.status = ev.head.status;
    res.content_type = type ? *type : "application/json";
    for (const auto& [name, value] : ev.head.headers) {
      if (relayed_header(name)) res.headers.emplace_back(name, value);
    }
    for (;;) {
      ev = co_await call->next();
      if (ev.type == call_event::kind::data) {
        res.body += ev.data;
        if (res.body.size() <= max_answer_bytes) continue;
        call->cancel();
        ev.type = call_event::kind::failed;
        ev.error = adapters::failure::broken;
        ev.message = "upstream response exceeds " + std::to_string(max_answer_bytes) + " bytes";
      }
      break;
    }
    if (ev.type != call_event::kind::failed) {
      ctx.out.unwatch(watch);
      // Deleted, or gone upstream: nothing more to find there.
      if ((asked->method == upstream_request::verb::del && res.status >= 200 && res.status < 300) ||
          (asked->suffix.empty() && res.status == 404)) {
        owners.forget(*id);
      }
      if (res.status >= 200 && res.status < 300) names.apply(res.body);
      co_return co_await ctx.out.send_buffered(std::move(res));
    }
  }
  ctx.out.unwatch(watch);
  if (ev.type != call_event::kind::failed) ev.message = "the call ended without an answer";
  if (ev.error == adapters::failure::cancelled) co_return false;
  record.error = ev.message;
  if (ev.error == adapters::failure::timeout) {
    co_return co_await ctx.out.send_error(gateway_timeout("upstream " + owner->backend + " timed out: " + ev.message), true);
  }
  co_return co_await ctx.out.send_error(bad_gateway("upstream " + owner->backend + " failed: " + ev.message), true);
}

}  // namespace tollgate::gateway
