#include "gateway/proxy/exchange.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <exception>
#include <iostream>
#include <tuple>

#include "gateway/handlers/handlers.hpp"
#include "gateway/accounting/metering.hpp"
#include "gateway/observability/metrics.hpp"
#include "gateway/server/runtime.hpp"
#include "gateway/server/server.hpp"
#include "gateway/server/responder.hpp"
#include "protocol/event_run.hpp"
#include "protocol/sse.hpp"
#include "protocol/usage.hpp"
#include "gateway/server/worker.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
namespace http = boost::beast::http;
using adapters::call_event;

namespace {

std::string_view trim_ows(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

constexpr auto use_tuple = net::as_tuple(net::use_awaitable);
constexpr std::size_t max_metered_stream = 4 * 1024 * 1024;  // stream bytes kept before their text is taken out
constexpr std::size_t coalesce_chunk_bytes = 64 * 1024;      // a stream's write takes ready events up to this
constexpr std::size_t max_idle_chunk = 16 * 1024;            // a stream's write storage kept between writes
constexpr std::string_view usage_key = "\"usage\"";            // what take_usage looks for in an event

/// The call of an attempt whose backend threw in start(): it fails at once.
class failed_call final : public adapters::call {
 public:
  explicit failed_call(std::string message) {
    event_.type = call_event::kind::failed;
    event_.error = adapters::failure::broken;
    event_.message = std::move(message);
  }
  net::awaitable<call_event> next() override { co_return event_; }
  void cancel() override {}
  bool ready() const override { return true; }
  void on_ready(std::function<void()>) override {}

 private:
  call_event event_;
};

}  // namespace

std::uint64_t exchange::random() { return ctx_.w.random(); }

void exchange::plan(const routing::route& r, steady_clock::time_point now, std::vector<std::size_t>& out) {
  ctx_.rt.routes.plan(r, ctx_.w.index(), routing::pick_context{ctx_.w.random()}, now, out);
  if (!ctx_.preferred_backend.empty()) {
    std::stable_partition(out.begin(), out.end(), [&](std::size_t i) { return r.targets[i].backend == ctx_.preferred_backend; });
  }
}

std::unique_ptr<adapters::call> exchange::start(const routing::target& t) {
  adapters::upstream_request up;
  up.path = res_.endpoint;
  up.stream = fields_.stream;
  up.request_id = ctx_.result.record.request_id;
  up.priority = std::max(ctx_.result.record.priority, 0);
  const bool rename = !t.model.empty() && t.model != fields_.model;
  // The body goes as parts: the client's bytes (kept by the session until the answer is written,
  // after every call of this exchange has ended) and the edited values between them.
  const std::string_view body = ctx_.req.body();
  if (!rename && stream_options_.empty()) {
    if (!body.empty()) up.parts.emplace_back().borrowed = body;
  } else {
    // The target's name as a literal is also what its answers are renamed from: quoted once.
    if (rename) quote_names(t.model);
    std::string added;
    const auto pieces =
        protocol::edit_body_pieces(body, fields_, rename ? std::optional<std::string_view>(rename_from_) : std::nullopt,
                         stream_options_.empty() ? std::nullopt : std::optional<std::string_view>(stream_options_), added);
    up.parts.reserve(pieces.size());
    // Made in place: a part's move copies its string.
    for (const protocol::body_piece& p : pieces) {
      if (p.original) {
        up.parts.emplace_back().borrowed = p.text;
      } else {
        up.parts.emplace_back().text = p.text;
      }
    }
  }
  if (std::holds_alternative<config::anthropic_backend_config>(ctx_.rt.cfg.backends[t.backend_index].settings)) {
    // The client's Anthropic headers, which the backend merges with its own.
    if (auto v = ctx_.req.find("anthropic-version"); v != ctx_.req.end()) up.anthropic_version = v->value();
    const auto [first, last] = ctx_.req.equal_range("anthropic-beta");
    if (first != last && std::next(first) == last) {
      up.anthropic_beta = first->value();
    } else if (first != last) {  // several fields: one list
      anthropic_beta_.clear();
      for (auto it = first; it != last; ++it) anthropic_beta_.append(anthropic_beta_.empty() ? "" : ",").append(it->value());
      up.anthropic_beta = anthropic_beta_;
    }
  }
  try {
    return ctx_.rt.backends[t.backend_index]->start(std::move(up), ctx_.w.io_refs());
  } catch (const std::exception& e) {  // counted as a failed attempt: retries and failover apply
    std::cerr << "tollgate: backend " << ctx_.rt.cfg.backends[t.backend_index].name
              << " failed to start a call: " << e.what() << std::endl;
    return std::make_unique<failed_call>(std::string("the backend failed to start the call: ") + e.what());
  }
}

net::awaitable<void> exchange::sleep(steady_clock::duration d) {
  net::steady_timer timer(ctx_.w.io());
  timer.expires_after(d);
  co_await timer.async_wait(use_tuple);
}

net::awaitable<bool> exchange::wait_ready(adapters::call& a, adapters::call* b, steady_clock::duration timeout) {
  auto ready = [&] { return a.ready() || (b != nullptr && b->ready()); };
  if (ready()) co_return true;
  net::steady_timer timer(ctx_.w.io());
  a.on_ready([&timer] { timer.cancel(); });
  if (b != nullptr) b->on_ready([&timer] { timer.cancel(); });
  const auto deadline = steady_clock::now() + timeout;
  while (!ready() && steady_clock::now() < deadline) {
    timer.expires_at(deadline);
    co_await timer.async_wait(use_tuple);
  }
  a.on_ready({});
  if (b != nullptr) b->on_ready({});
  co_return ready();
}

net::awaitable<bool> exchange::wait_for_slot(const routing::target& t) {
  using wait_result = routing::target_health::wait_result;
  auto timer = std::make_shared<net::steady_timer>(ctx_.w.io());
  auto waiter = std::make_shared<routing::target_health::waiter>();
  waiter->wake = [timer, ex = ctx_.w.io().get_executor()] { net::post(ex, [timer] { timer->cancel(); }); };
  waiter->priority = std::max(ctx_.result.record.priority, 0);
  waiter->since = steady_clock::now();
  gateway_metrics& metrics = *ctx_.w.shared().metrics;
  wait_result got = t.health->wait_for_slot(waiter, t.max_queue, t.max_concurrency, t.queue_aging);
  if (got == wait_result::granted) co_return true;
  if (got == wait_result::shed) {
    metrics.record_queue_wait(ctx_.w.index(), waiter->priority, 0, false, gateway_metrics::shed_reason::full);
    co_return false;
  }
  // Woken when the queue hands this request a slot or sheds it for a newer one of higher
  // priority; the timer's end is its longest wait.
  timer->expires_at(waiter->since + t.queue_timeout);
  auto [ec] = co_await timer->async_wait(use_tuple);
  got = t.health->finish_wait(waiter);
  const double waited = std::chrono::duration<double>(steady_clock::now() - waiter->since).count();
  const bool served = got == wait_result::granted;
  metrics.record_queue_wait(ctx_.w.index(), waiter->priority, waited, served,
                            ec ? gateway_metrics::shed_reason::displaced : gateway_metrics::shed_reason::timeout);
  co_return served;
}

std::shared_ptr<client_watch> exchange::watch(adapters::call& call, bool stream) { return ctx_.out.watch(call, stream); }

void exchange::unwatch(const std::shared_ptr<client_watch>& w) { ctx_.out.unwatch(w); }

void exchange::on_attempt(const routing::target& t) {
  ctx_.result.record.backend = t.backend;  // also the x-tollgate-backend of the answer
  res_.price = &t.price;
  res_.upstream_model = t.model.empty() ? fields_.model : t.model;
}

void exchange::on_attempt_end(const routing::target& t, const char* outcome, double first_byte_seconds) {
  res_.first_byte = first_byte_seconds;
  ctx_.w.shared().metrics->record_attempt(ctx_.w.index(), t.backend, outcome, first_byte_seconds);
}

bool exchange::take_usage(std::string_view event) {
  const std::size_t at = protocol::find_quoted(event, usage_key);
  if (at == std::string_view::npos) return false;
  // A chunk whose usage is null (OpenAI's, each but the last, when usage is asked for) has none:
  // not parsed. The stream writer's runs of events pass such chunks the same way.
  if (protocol::only_null_members(event, usage_key, at)) return false;
  const auto data = protocol::sse_data(event);
  if (!data) return false;
  bool no_choices = false, refused = false;
  auto u = protocol::usage_from_json(*data, &no_choices, &refused);
  if (u) res_.used = *u;
  else if (refused) res_.used.reset();  // untrustworthy: the tokenizer counts this answer
  else return false;
  return strip_usage_ && no_choices;
}

/// An OpenAI client, or a relayed request, whose model name the route changed: the answer names
/// the model it asked for (the upstream's name stays in x-tollgate-upstream-model). Translating
/// dialects name it themselves.
bool exchange::renames_model() {
  if ((ctx_.dialect != nullptr && !ctx_.dialect->relays()) || res_.upstream_model == fields_.model) return false;
  quote_names(res_.upstream_model);
  return true;
}

void exchange::quote_names(const std::string& upstream_model) {
  auto& q = ctx_.conn.quoted;
  if (q.upstream != upstream_model || q.client != fields_.model) {
    q.upstream = upstream_model;
    q.client = fields_.model;
    q.upstream_json = protocol::json_quote(upstream_model);
    q.client_json = protocol::json_quote(fields_.model);
  }
  rename_from_ = q.upstream_json;
  rename_to_ = q.client_json;
}

// Not a coroutine: the answer stays in the relay's frame, and a write the socket takes at once needs none.
bool exchange::deliver_whole(buffered_response& res, bool& keep) {
  if (res.status >= 200 && res.status < 300) {
    res_.used = protocol::usage_from_json(res.body, nullptr, nullptr, /*look_first=*/false);
    if (!res_.used) res_.delivered.append(res.body);  // counted at the end, if it reaches the client
    if (renames_model()) {
      // Written around the old name: a large answer is not copied to make room for a longer one.
      if (const std::size_t at = protocol::find_model_value(res.body, rename_from_); at != std::string::npos) {
        res.splice_at = at;
        res.splice_size = rename_from_.size();
        res.splice = rename_to_;
      }
    }
  }
  return ctx_.out.send_buffered_now(res, keep);
}

net::awaitable<bool> exchange::deliver_whole_rest() { return ctx_.out.write_pending(); }

/// A stream's events and its write, shared by deliver_stream's loop and, for a client of the chat
/// API, the call's data sink: the usual event is split, renamed and written inside the upstream
/// read's handler, and the loop is resumed only to finish a partial write or to end the stream.
class exchange::stream_writer final : public adapters::data_sink {
 public:
  stream_writer(exchange& x, adapters::call& call, bool rename) : x_(x), call_(call), rename_(rename) {
    events.watch(usage_pair);
  }

  /// The bytes that came, split; the chat API's own events (no dialect) added to chunk: the
  /// usage noted, the model renamed.
  void feed(std::string&& data) { call_.recycle(events.feed_moved(std::move(data))); }
  void add_events() {
    // Room for every complete event buffered, renamed (a longer name takes up to an eighth more),
    // so that a read of many events does not regrow the chunk as it is made. A new chunk makes
    // room for the data the call holds ready too, up to what a write gathers: the chunk that
    // gathers them is not regrown (its bytes copied again) either, and becomes the bytes kept
    // for counting as it is. When it still grows, at least doubled, as appends grow it.
    const std::size_t ready = events.buffered();
    if (ready > chunk.capacity() - chunk.size()) {
      const std::size_t coming = chunk.empty() ? std::min(call_.queued_bytes(), coalesce_chunk_bytes) : 0;
      chunk.reserve(std::max(chunk.size() + ready + coming + (ready + coming) / 8 + 64, chunk.empty() ? 0 : 2 * chunk.capacity()));
    }
    for (;;) {
      // The events like the last one renamed (or any, not renaming) that need no usage search
      // are copied as a run; the first that is not is split and handled on its own.
      if (const std::string_view unread = events.unread(); !unread.empty()) events.skip(append_run(unread));
      const auto e = events.next_event_view();
      if (!e) break;
      if (events.may_hold_watched() && x_.take_usage(*e)) continue;
      if (!rename_ || !model_at.append_renamed(chunk, *e, x_.rename_from_, x_.rename_to_)) chunk += *e;
    }
  }

  /// The upstream read's bytes, as views of its buffer: runs of alike events are copied from
  /// there to chunk, and only the rest goes through the splitter (protocol::relay_event_bytes).
  void add(std::string_view bytes, std::size_t coming) override {
    if (thrown) return;
    try {
      // Room for this read's bytes at once, renamed (see add_events).
      if (const std::size_t need = bytes.size() + coming; need > chunk.capacity() - chunk.size())
        chunk.reserve(std::max(chunk.size() + need + need / 8 + 64, chunk.empty() ? 0 : 2 * chunk.capacity()));
      protocol::relay_event_bytes(events, bytes, [this](std::string_view b) { return append_run(b); },
                                  [this] { add_events(); });
    } catch (...) {
      // Not out of the upstream read's handler: the loop throws it, as it would have.
      thrown = std::current_exception();
    }
  }

  bool flush() override {
    if (thrown) return false;
    try {
      if (events.buffered() > x_.ctx_.rt.cfg.server.max_event_bytes) return false;  // the loop breaks the stream
      if (chunk.empty()) return true;
      begun = !x_.ctx_.out.write_chunk_now(chunk, sent, error);
      if (begun || error) return false;  // the loop awaits the rest, or ends
      x_.note_delivered(std::move(chunk));  // leaves it empty
      return true;
    } catch (...) {
      // Not out of the upstream read's handler: the loop throws it, as it would have.
      thrown = std::current_exception();
      return false;
    }
  }

  /// take_usage looks for "usage" with its quotes: an event without its first two bytes is passed by.
  static constexpr std::string_view usage_pair = usage_key.substr(0, 2);

  protocol::sse_splitter events;
  protocol::model_value_finder model_at;  // where each event's model is (their first bytes repeat)
  std::string chunk;                      // what the next write sends
  bool begun = false;                     // chunk's write is under way: sent bytes of it went
  std::size_t sent = 0;
  boost::system::error_code error;        // chunk's write failed
  std::exception_ptr thrown;              // by add() or flush(), for the loop

 private:
  /// The run of plain events at the start of bytes, appended to chunk (protocol/event_run):
  /// renamed like the last event renamed; the bytes taken.
  std::size_t append_run(std::string_view bytes) {
    if (!rename_) return runs_.append(chunk, bytes);
    const std::string_view prefix = model_at.prefix();
    if (prefix.empty()) return 0;
    return runs_.append(chunk, bytes, prefix, x_.rename_from_.size(), x_.rename_to_);
  }

  protocol::event_runs runs_{usage_key};
  exchange& x_;
  adapters::call& call_;
  const bool rename_;
};

namespace {

/// A call's sink for as long as a relay runs, however it ends.
class sink_scope {
 public:
  sink_scope(adapters::call& call, adapters::data_sink* sink) : call_(call) { call.set_sink(sink); }
  ~sink_scope() { call_.set_sink(nullptr); }
  sink_scope(const sink_scope&) = delete;
  sink_scope& operator=(const sink_scope&) = delete;

 private:
  adapters::call& call_;
};

}  // namespace

void exchange::note_delivered(std::string&& counted) {
  if (!res_.first_token_at) res_.first_token_at = adapters::loop_clock::now();
  // What the client has, for counting if the usage chunk never comes. Whole events: past a bound,
  // the text is taken out of those kept so far, so that a long stream is counted whole without
  // keeping all its bytes.
  if (res_.delivered.size() + counted.size() > max_metered_stream) {
    append_completion_text(res_.delivered.pieces(), true, res_.delivered_text);
    res_.delivered.clear();
  }
  res_.delivered.append(std::move(counted));
  // Storage a burst grew and the kept bytes did not take: a stream that then idles keeps none.
  if (counted.capacity() > max_idle_chunk) std::string().swap(counted);
}

net::awaitable<delivery> exchange::deliver_stream(adapters::call& call, const adapters::response_head& head) {
  access_record& record = ctx_.result.record;
  responder& out = ctx_.out;
  // A held stream does not keep its head's text (start_upstream_stream's own).
  if (!co_await out.start_upstream_stream(head)) co_return delivery{false, false, false};

  const std::size_t max_event_bytes = ctx_.rt.cfg.server.max_event_bytes;
  // A client of another API gets its dialect's events; the chat events behind them are what is
  // counted. A relayed request's events pass as they are, until its dialect's last one.
  protocol::client_dialect* const dialect = ctx_.dialect.get();
  const bool relayed = dialect != nullptr && dialect->relays();
  const bool rename = head.status >= 200 && head.status < 300 && renames_model();
  stream_writer w(*this, call, rename);
  std::string& chunk = w.chunk;
  std::string raw;
  bool broke = false;
  res_.delivered.clear();
  res_.delivered_text.clear();
  res_.delivered_sse = true;
  // The chat API's events are written from the upstream read's handler while this loop waits.
  const sink_scope inline_writes(call, dialect == nullptr ? &w : nullptr);
  for (;;) {
    call_event ev;
    if (!call.try_next(ev)) ev = co_await call.next();
    bool finished = false;
    if (ev.type == call_event::kind::data) {
      // The event's bytes become the splitter's (no copy when it holds nothing), and events are
      // read as views of them; the storage the splitter lets go goes back to the call, which
      // fills it with the next event's bytes (no allocation an event). No bytes: the sink handed
      // over what it took (chunk, perhaps part written).
      if (w.thrown) std::rethrow_exception(std::exchange(w.thrown, nullptr));
      if (!ev.data.empty()) w.feed(std::move(ev.data));
      if (dialect == nullptr) {
        w.add_events();
      } else {
        while (auto e = w.events.next_event_view()) {
          if (relayed) {
            if (rename) {
              std::string renamed(*e);
              protocol::rename_model(renamed, rename_from_, rename_to_);
              chunk += dialect->event(renamed);
            } else {
              chunk += dialect->event(*e);
            }
            res_.used = dialect->stream_usage();
            if (dialect->complete()) {
              finished = true;  // nothing after the stream's last event is relayed
              break;
            }
            continue;
          }
          if (w.events.may_hold_watched() && take_usage(*e)) continue;
          raw += *e;
          chunk += dialect->event(*e);
        }
      }
      if (!finished && !w.begun && !w.error && w.events.buffered() > max_event_bytes) {
        // An event that never ends would be buffered without bound: the stream is broken.
        const api_error err = bad_gateway("upstream " + record.backend + " sent an SSE event over server.max_event_bytes (" +
                                          std::to_string(max_event_bytes) + " bytes)");
        record.error = err.message;
        call.cancel();
        chunk += dialect != nullptr ? dialect->stream_error(err.status, err.message) : err.sse_event();
        finished = true;
        broke = true;
      }
    } else if (ev.type == call_event::kind::end) {
      if (relayed) {
        // An event cut short by the end is relayed as it is; a stream that ended before its
        // last event gets an error event, as a break would.
        if (std::string rest = w.events.take_rest(); !rest.empty()) {
          if (!rest.ends_with("\n\n")) rest += rest.ends_with('\n') ? "\n" : "\n\n";
          if (rename) protocol::rename_model(rest, rename_from_, rename_to_);
          chunk += dialect->event(rest);
          res_.used = dialect->stream_usage();
        }
        if (!dialect->complete()) {
          record.error = "upstream " + record.backend + " ended the stream before its last event";
          broke = true;
        }
      }
      chunk += dialect != nullptr ? dialect->end() : w.events.take_rest();
      finished = true;
    } else if (ev.type == call_event::kind::head) {
      continue;
    } else {
      // The client already has part of the answer: say the stream broke, never end it quietly.
      record.error = ev.message;
      if (ev.error == adapters::failure::cancelled) co_return delivery{false, false, false};
      const api_error err = ev.error == adapters::failure::timeout
                                ? gateway_timeout("upstream " + record.backend + " timed out mid-stream: " + ev.message)
                                : bad_gateway("upstream " + record.backend + " broke the stream: " + ev.message);
      if (dialect != nullptr) {
        chunk += dialect->stream_error(err.status, err.message);
      } else {
        std::string rest = w.events.take_rest();
        if (!rest.empty() && !rest.ends_with("\n\n")) rest += "\n\n";
        chunk += rest;
        chunk += err.sse_event();
      }
      finished = true;
      broke = true;
    }
    // Data already waiting joins this write (a backlog is written in few large writes, as it came
    // in few large reads), up to coalesce_chunk_bytes.
    if (!finished && ev.type == call_event::kind::data && !w.begun && !w.error && chunk.size() < coalesce_chunk_bytes &&
        call.ready())
      continue;
    if (!chunk.empty()) {
      // At once when the socket takes it all (no coroutine an event), else the rest awaited; the
      // sink may have begun the write, or failed it, already.
      if (!w.begun && !w.error) w.begun = !out.write_chunk_now(chunk, w.sent, w.error);
      if (w.begun) std::tie(w.error, std::ignore) = co_await out.write_chunk_rest(chunk, w.sent);
      if (w.error) co_return delivery{false, false, false};
      w.begun = false;
      note_delivered(std::move(dialect != nullptr && !relayed ? raw : chunk));
    }
    chunk.clear();
    raw.clear();
    if (finished) break;
  }
  auto [lec, ln] = co_await out.write_last_chunk();
  co_return delivery{true, !lec, broke};
}

namespace {

// The steps around the attempts are plain functions, and the answers that end a request early
// are coroutines of their own: a coroutine's frame holds every local of its body, and every
// temporary that spans a wait, whether or not that path runs. handle_proxy's frame stays within
// the 1,020 bytes that Asio's recycling allocator keeps for the next request.

/// An error answer, kept by its own frame while it is written.
net::awaitable<bool> refuse(responder& out, api_error err) { co_return co_await out.send_error(err, true); }

/// An error answer with Retry-After.
net::awaitable<bool> refuse_for_now(responder& out, const api_error& err, std::string retry_after) {
  http::response<http::string_body> r{static_cast<http::status>(err.status), 11};
  r.set(http::field::content_type, "application/json");
  r.set(http::field::retry_after, std::move(retry_after));
  r.body() = err.body();
  return out.send(std::move(r), true);
}

/// The method and the key; the proxy's result is begun when both pass. The answer that refuses
/// the request, if they do not.
std::optional<net::awaitable<bool>> check_caller(request_context& ctx) {
  if (ctx.req.method() != http::verb::post) return refuse(ctx.out, method_not_allowed());
  if (!authenticate(ctx)) return refuse(ctx.out, unauthorized_error(ctx));
  proxy_result& res = ctx.result.proxy.emplace();
  ctx.out.name_upstream_model(&res.upstream_model);
  return std::nullopt;
}

/// The body, the model's permission and route, the priority and the limits. The answer that
/// refuses the request, if one does; else route is the one to run and the limiter's hold is taken.
std::optional<net::awaitable<bool>> admit(request_context& ctx, const protocol::body_parse_result& parsed,
                                          const routing::route*& route) {
  responder& out = ctx.out;
  access_record& record = ctx.result.record;
  proxy_result& res = *ctx.result.proxy;
  if (!parsed.fields) return refuse(out, bad_request(parsed.error, parsed.error_param));
  const protocol::request_fields& fields = *parsed.fields;
  record.model = fields.model;
  record.stream = fields.stream;

  if (!ctx.who->may_use(fields.model)) {
    api_error forbidden{403, "permission_error", "model_not_allowed",
                        "This API key may not use the model `" + fields.model + "`.", "model"};
    return refuse(out, std::move(forbidden));
  }
  const runtime& rt = ctx.rt;
  // Header values relayed to Anthropic upstreams: nothing a client sends may add a line there.
  for (const char* name : {"anthropic-version", "anthropic-beta"}) {
    const auto [first, last] = ctx.req.equal_range(name);
    for (auto it = first; it != last; ++it) {
      if (!adapters::valid_field_value(it->value())) {
        return refuse(out, bad_request(std::string(name) + " holds a control character", name));
      }
    }
  }
  route = rt.routes.resolve(fields.model);
  if (route == nullptr) {
    return refuse(out, not_found("The model `" + fields.model + "` does not exist or you do not have access to it.",
                                 "model_not_found"));
  }
  res.route = &route->model;
  if (route->targets.empty()) {
    api_error err = unavailable("The model `" + fields.model + "` is not available: " + route->unavailable + ".");
    err.code = "backend_disabled";
    record.error = err.code;
    return refuse(out, std::move(err));
  }

  // The key's priority, or lower when the request asks (never higher).
  record.priority = ctx.who->key->priority;
  if (auto h = ctx.req.find("x-tollgate-priority"); h != ctx.req.end()) {
    const auto asked = config::parse_priority(trim_ows(h->value()));
    if (!asked) {
      return refuse(out, bad_request("x-tollgate-priority must be high, normal, low or a number from 0 to 9",
                                     "x-tollgate-priority"));
    }
    record.priority = std::min(record.priority, *asked);
  }

  const std::int64_t estimate = estimate_tokens(ctx.req.body().size(), fields.max_tokens);
  const auto now = adapters::loop_clock::now();  // the admission and the limits it reports, at one instant
  const admission adm = rt.limits->admit(*ctx.who->key, *ctx.who->state, estimate, now);
  out.set_ratelimit(ratelimit_headers(*ctx.who->key, *ctx.who->state, now));
  if (!adm.admitted) {
    const api_error err{adm.status,
                        adm.status == 503                    ? "service_unavailable"
                        : adm.code == "insufficient_quota" ? "insufficient_quota"
                                                             : "rate_limit_error",
                        adm.code, adm.message, {}};
    record.error = err.code;
    return refuse_for_now(out, err, std::to_string(adm.retry_after.count()));
  }
  res.hold.hold(rt.limits.get(), ctx.who->key, ctx.who->state, estimate);
  res.rt = &rt;
  res.endpoint = ctx.path;
  return std::nullopt;
}

/// Metering needs the stream's usage: the stream_options every attempt sends to ask for it (empty:
/// the client's as they are); strip_usage: the chunk is kept from a client that did not ask.
std::string usage_options(const request_context& ctx, const protocol::request_fields& fields, bool& strip_usage) {
  strip_usage = false;
  if (!fields.stream || fields.include_usage || (ctx.path != "/chat/completions" && ctx.path != "/completions")) return {};
  auto so = fields.stream_options.empty() ? nlohmann::json::object() : nlohmann::json::parse(fields.stream_options);
  if (!so.is_object()) return {};
  so["include_usage"] = true;
  strip_usage = true;
  return so.dump();
}

/// The answer when no attempt's answer reached the client.
net::awaitable<bool> answer_failure(request_context& ctx, attempts_result& st, const std::string& model) {
  responder& out = ctx.out;
  access_record& record = ctx.result.record;
  if (st.shed) {
    api_error err = unavailable("every backend for `" + model + "` is at its max_concurrency; try again shortly");
    err.code = "overloaded";
    record.error = err.code;
    return refuse_for_now(out, err, "1");
  }
  if (st.last_response) {
    // Every attempt failed and the last one answered: the client sees that answer as it was.
    return out.send_buffered(std::move(*st.last_response));
  }
  if (!st.last_failure) return refuse(out, bad_gateway("no attempt could be made"));
  const auto& f = *st.last_failure;
  record.error = f.message;
  if (f.error == adapters::failure::timeout) {
    return refuse(out, gateway_timeout("upstream " + record.backend + " timed out: " + f.message));
  }
  return refuse(out, bad_gateway("upstream " + record.backend + " failed: " + f.message));
}

}  // namespace

/// The proxy handler: the exchange's steps before and after its attempts.
net::awaitable<bool> handle_proxy(request_context& ctx) {
  if (auto refusal = check_caller(ctx)) co_return co_await std::move(*refusal);
  const protocol::body_parse_result parsed = protocol::parse_request_body(ctx.req.body());
  const routing::route* route = nullptr;
  if (auto refusal = admit(ctx, parsed, route)) co_return co_await std::move(*refusal);

  const protocol::request_fields& fields = *parsed.fields;
  proxy_result& res = *ctx.result.proxy;
  bool strip_usage = false;
  std::string stream_options = usage_options(ctx, fields, strip_usage);
  exchange ex(ctx, res, fields, std::move(stream_options), strip_usage);
  attempt_runner runner(ex, ex, ctx.conn.order);
  attempts_result st;
  co_await runner.run(*route, ctx.result.started, fields.stream, st);
  res.upstream_seconds = st.upstream_seconds;
  res.single_attempt = st.attempts == 1;
  if (st.how == attempts_result::end::answered) co_return st.keep_alive;
  if (st.how == attempts_result::end::client_gone) co_return false;
  co_return co_await answer_failure(ctx, st, fields.model);
}

}  // namespace tollgate::gateway
