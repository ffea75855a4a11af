#include "gateway/proxy/attempt_runner.hpp"

#include <boost/beast/core/string.hpp>
#include <boost/container/small_vector.hpp>

#include <algorithm>
#include <charconv>
#include <string>

namespace tollgate::gateway {

namespace net = boost::asio;
using adapters::call_event;

bool relayed_header(std::string_view name) {
  return name == "retry-after" || name.starts_with("x-ratelimit-") || name == "openai-processing-ms";
}

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

bool retryable_status(int status) {
  // 529: Anthropic's overloaded, which relayed Messages requests get as it is.
  return status == 429 || status == 500 || status == 502 || status == 503 || status == 504 || status == 529;
}

namespace {

/// Ends a client watch however its scope is left, an exception included, and before the call it
/// points at is destroyed (declare it after the call).
struct watch_guard {
  attempt_env& env;
  std::shared_ptr<client_watch>& watch;
  ~watch_guard() {
    if (watch && !watch->done) env.unwatch(watch);
  }
};

call_event failed_event(std::string message) {
  call_event ev;
  ev.type = call_event::kind::failed;
  ev.error = adapters::failure::broken;
  ev.message = std::move(message);
  return ev;
}

}  // namespace

net::awaitable<void> attempt_runner::run(const routing::route& route, steady_clock::time_point started, bool stream,
                                         attempts_result& st) {
  deadline_ = started + route.deadline;
  // The route, then its fallbacks; a context_length_exceeded answer switches to the context
  // fallbacks of the route that gave it.
  boost::container::small_vector<const routing::route*, 4> chain{&route};
  chain.insert(chain.end(), route.fallbacks.begin(), route.fallbacks.end());
  for (std::size_t i = 0; i < chain.size(); ++i) {
    const auto result = co_await try_route(*chain[i], stream, st);
    if (result == route_end::answered) {
      st.how = attempts_result::end::answered;
      co_return;
    }
    if (st.how == attempts_result::end::client_gone) co_return;
    if (result == route_end::context_exceeded && !chain[i]->context_fallbacks.empty()) {
      chain.resize(i + 1);
      chain.insert(chain.end(), chain[i]->context_fallbacks.begin(), chain[i]->context_fallbacks.end());
    }
  }
  st.how = attempts_result::end::exhausted;
}

bool attempt_runner::take_slot(const routing::target& t, steady_clock::time_point now) {
  if (!t.health->admit(now)) return false;
  if (t.health->try_begin_request(t.max_concurrency)) return true;
  t.health->record_abandoned();
  return false;
}

net::awaitable<attempt_runner::route_end> attempt_runner::try_route(const routing::route& r, bool stream,
                                                                    attempts_result& st) {
  // One clock reading for the plan and the first pick; a later pick reads the end of the attempt
  // before it.
  auto now = env_.now();
  env_.plan(r, now, order_);
  const std::size_t n = order_.size();
  if (n == 0) co_return route_end::exhausted;  // a fallback whose backends are all disabled
  const unsigned attempts = r.retry.attempts != 0 ? r.retry.attempts : static_cast<unsigned>(n);
  std::size_t pos = 0;
  std::size_t refused = 0;
  for (unsigned used = 0; used < attempts;) {
    const routing::target* picked = nullptr;
    // Skip an ejected or full backend while another target may take the request.
    while (picked == nullptr) {
      const routing::target& t = r.targets[order_[pos++ % n]];
      if (take_slot(t, now)) {
        picked = &t;
      } else if (++refused >= n) {
        // Every target refused: ejection is ignored, and a full backend is waited for.
        if (!t.health->try_begin_request(t.max_concurrency) && !co_await env_.wait_for_slot(t)) {
          st.shed = true;
          co_return route_end::exhausted;
        }
        picked = &t;
      }
    }
    slot_guard slot(picked->health.get());  // declared before the call: freed after it ends
    refused = 0;
    st.shed = false;
    ++used;
    if (st.attempts > 0 && !co_await back_off(r.retry, st)) co_return route_end::exhausted;
    ++st.attempts;
    auto call = env_.start(*picked);
    auto watch = env_.watch(*call, stream);
    const watch_guard guard{env_, watch};

    // Hedging: no first byte by hedge_after, so a second attempt goes to the next target that
    // has room; whichever answers first is relayed and the other is cancelled.
    if (r.hedge_after.count() > 0 && used < attempts && n > 1 && !co_await env_.wait_ready(*call, nullptr, r.hedge_after)) {
      const routing::target* second = nullptr;
      for (std::size_t k = 0; k + 1 < n && second == nullptr; ++k) {
        const routing::target& t = r.targets[order_[pos++ % n]];
        if (&t != picked && take_slot(t, env_.now())) second = &t;
      }
      if (second != nullptr) {
        slot_guard second_slot(second->health.get());
        ++used;
        ++st.attempts;
        auto other = env_.start(*second);
        // Nobody reads either call while waiting, so their first-token timeouts bound the wait.
        co_await env_.wait_ready(*call, other.get(), std::max(picked->first_token, second->first_token));
        if (!call->ready() && other->ready()) {
          env_.unwatch(watch);
          std::swap(call, other);
          std::swap(picked, second);
          std::swap(slot, second_slot);
          watch = env_.watch(*call, stream);
        }
        other.reset();  // the slower one: cancelled now
        second_slot.release();
        second->health->record_abandoned();
      }
    }
    const routing::target& target = *picked;
    st.target = &target;
    st.first_byte = -1;
    sink_.on_attempt(target);
    const auto attempt_started = env_.now();
    auto outcome = co_await relay(*call, target, stream, st, attempt_started);
    now = env_.now();
    st.upstream_seconds = std::chrono::duration<double>(now - attempt_started).count();
    env_.unwatch(watch);
    call.reset();
    slot.release();
    sink_.on_attempt_end(target, outcome_label(outcome, watch->gone), st.first_byte);

    switch (outcome.kind) {
      case relay_kind::answered:
        if (outcome.broke) {
          target.health->record_failure(env_.now(), target.ejection);
        } else {
          target.health->record_success();
        }
        st.keep_alive = outcome.keep_alive;
        co_return route_end::answered;
      case relay_kind::gone:
        target.health->record_abandoned();
        st.how = attempts_result::end::client_gone;
        co_return route_end::exhausted;
      case relay_kind::context_exceeded:
        target.health->record_success();  // the backend is fine; the prompt is too long for it
        st.failures.push_back({target.backend, adapters::failure::none, st.last_response->status, "context_length_exceeded"});
        co_return route_end::context_exceeded;
      case relay_kind::retryable_status:
        target.health->record_failure(env_.now(), target.ejection);
        st.failures.push_back({target.backend, adapters::failure::none, st.last_response->status,
                               "answered " + std::to_string(st.last_response->status)});
        break;
      case relay_kind::failed:
        if (watch->gone) {
          target.health->record_abandoned();
          st.how = attempts_result::end::client_gone;
          co_return route_end::exhausted;
        }
        target.health->record_failure(env_.now(), target.ejection);
        st.failures.push_back({target.backend, st.last_failure->error, 0, st.last_failure->message});
        break;
    }
  }
  co_return route_end::exhausted;
}

/// Waits before the next attempt: full jitter over an exponential base, at least the last
/// answer's Retry-After. false when that wait would pass the request's deadline.
net::awaitable<bool> attempt_runner::back_off(const config::retry_config& retry, const attempts_result& st) {
  const unsigned exponent = std::min(st.attempts - 1, 20u);
  auto cap = retry.backoff * (1ll << exponent);
  if (cap > retry.max_backoff) cap = retry.max_backoff;
  auto wait = std::chrono::milliseconds(cap.count() > 0 ? static_cast<long long>(env_.random() % (cap.count() + 1)) : 0);
  if (st.last_response && st.last_response->retry_after) wait = std::max(wait, *st.last_response->retry_after);
  if (env_.now() + wait >= deadline_) co_return false;
  if (wait.count() == 0) co_return true;
  co_await env_.sleep(wait);
  co_return true;
}

const char* attempt_runner::outcome_label(const relay_outcome& o, bool client_gone) {
  switch (o.kind) {
    case relay_kind::answered: return o.broke ? "failed" : "ok";
    case relay_kind::retryable_status:
    case relay_kind::context_exceeded: return "error_status";
    case relay_kind::gone: return "cancelled";
    case relay_kind::failed: return client_gone ? "cancelled" : "failed";
  }
  return "failed";
}

namespace {

/// The answer's fields that a whole answer keeps, and its length when the upstream sent one
/// (within max_body + 1). head is read no more after this: its content type takes the fields'
/// storage, not a copy (a 16-byte "application/json" is an allocation).
std::size_t start_buffered(adapters::response_head& head, buffered_response& res, std::size_t max_body) {
  res.status = head.status;
  for (const auto& [name, value] : head.headers) {
    if (relayed_header(name)) res.headers.emplace_back(name, value);
    if (name == "retry-after") res.retry_after = parse_retry_after(value);
  }
  std::size_t expected = 0;
  if (const auto length = head.find("content-length")) {
    std::size_t n = 0;
    const auto [end, ec] = std::from_chars(length->data(), length->data() + length->size(), n);
    if (ec == std::errc() && end == length->data() + length->size()) expected = std::min(n, max_body + 1);
  }
  if (head.find("content-type")) {
    res.content_type = head.headers.release_value("content-type");
  } else {
    res.content_type = "application/json";
  }
  return expected;
}

/// Whether an answer is relayed as an event stream: a success of that type, to a client that
/// asked for a stream.
bool streams(const adapters::response_head& head, bool stream) {
  if (!stream || head.status < 200 || head.status >= 300) return false;
  const auto type = head.find("content-type");
  return type && type->find("text/event-stream") != std::string_view::npos;
}

}  // namespace

/// Reads one attempt's answer. Only answers that reached the client are final; the rest let the
/// caller try again, which is possible because nothing has been sent. A failure goes to
/// st.last_failure and an answer not relayed to st.last_response (the other is reset).
///
/// A coroutine frame holds every local of its function whether or not it lives across a
/// suspension: the work between the waits is in plain functions, so that the frame stays within
/// Asio's recycling bound and is not allocated anew each request.
net::awaitable<attempt_runner::relay_outcome> attempt_runner::relay(adapters::call& call, const routing::target& t,
                                                                    bool stream, attempts_result& st,
                                                                    steady_clock::time_point attempt_started) {
  call_event ev = co_await call.next();
  if (ev.type == call_event::kind::failed) co_return fail(st, std::move(ev));
  const auto first_byte = env_.now() - attempt_started;
  t.health->record_first_byte(std::chrono::duration_cast<std::chrono::microseconds>(first_byte));
  st.first_byte = std::chrono::duration<double>(first_byte).count();
  if (const auto enc = ev.head.find("content-encoding"); enc && !boost::beast::iequals(*enc, "identity")) {
    // We ask for identity: an encoded body could be neither metered nor relayed as it is.
    co_return fail(st, failed_event("upstream answered with Content-Encoding " + std::string(*enc) +
                                    " (identity was asked for)"));
  }
  if (streams(ev.head, stream)) {
    const delivery d = co_await sink_.deliver_stream(call, ev.head);
    if (!d.reached) co_return relay_outcome{relay_kind::gone, false, false};
    co_return relay_outcome{relay_kind::answered, d.keep_alive, d.broke};
  }

  // Whole answers (and errors) are read completely first: a break mid-body can still fail over.
  // The body is read into one string sized from Content-Length (when the upstream sent one, and
  // within the bound below), so that a large answer is not copied again each time it grows. The
  // first event's string is taken as it is when it holds that much (the built-in client reads such
  // an answer whole into one), or when no length is known.
  buffered_response res;
  const std::size_t expected = start_buffered(ev.head, res, max_upstream_body);
  for (;;) {
    if (!call.try_next(ev)) ev = co_await call.next();
    if (ev.type == call_event::kind::data) {
      if (res.body.empty() && ev.data.capacity() >= std::max(expected, res.body.capacity())) {
        res.body = std::move(ev.data);  // the whole answer, or its first part, with no copy
      } else {
        if (res.body.empty()) res.body.reserve(std::max(expected, ev.data.size()));
        res.body += ev.data;
      }
      if (res.body.size() > max_upstream_body) {
        co_return fail(st, failed_event("upstream response exceeds " + std::to_string(max_upstream_body) + " bytes"));
      }
      continue;
    }
    if (ev.type == call_event::kind::failed) co_return fail(st, std::move(ev));
    break;
  }
  if (retryable_status(res.status)) co_return not_relayed(st, relay_kind::retryable_status, std::move(res));
  // Anthropic words it "prompt is too long" (a relayed Messages request gets its error as it is).
  if (res.status == 400 && (res.body.find("context_length_exceeded") != std::string::npos ||
                            res.body.find("prompt is too long") != std::string::npos)) {
    co_return not_relayed(st, relay_kind::context_exceeded, std::move(res));
  }
  bool keep = false;
  if (!sink_.deliver_whole(res, keep)) keep = co_await sink_.deliver_whole_rest();
  co_return relay_outcome{relay_kind::answered, keep, false};
}

attempt_runner::relay_outcome attempt_runner::fail(attempts_result& st, call_event&& failure) {
  st.last_response.reset();
  st.last_failure = std::make_unique<call_event>(std::move(failure));
  return relay_outcome{relay_kind::failed, false, false};
}

attempt_runner::relay_outcome attempt_runner::not_relayed(attempts_result& st, relay_kind kind, buffered_response&& res) {
  st.last_failure.reset();
  st.last_response = std::make_unique<buffered_response>(std::move(res));
  return relay_outcome{kind, false, false};
}

}  // namespace tollgate::gateway
