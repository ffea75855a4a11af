#include "gateway/accounting/result_consumers.hpp"

#include <array>
#include <chrono>

#include <boost/asio/post.hpp>

#include "gateway/accounting/token_counter.hpp"
#include "gateway/accounting/ledger.hpp"
#include "gateway/accounting/metering.hpp"
#include "gateway/observability/metrics.hpp"
#include "gateway/accounting/money.hpp"
#include "gateway/server/runtime.hpp"
#include "gateway/server/server.hpp"
#include "gateway/server/worker.hpp"

namespace tollgate::gateway {

namespace {

namespace net = boost::asio;
using steady = std::chrono::steady_clock;

/// A finished request as every consumer sees it.
struct finished {
  request_result& r;
  worker& w;
  steady::time_point now;
  double seconds;  ///< from arrival to now
  steady::duration elapsed;
};

const std::string& route_of(const proxy_result& p) {
  static const std::string none;
  return p.route != nullptr ? *p.route : none;
}

/// Whether the tokenizer must count this request: an answer that reached the client with no
/// usage from the upstream.
bool needs_count(const request_result& r) {
  if (!r.proxy) return false;
  const proxy_result& p = *r.proxy;
  const access_record& rec = r.record;
  return !p.used && !rec.backend.empty() && rec.status >= 200 && rec.status < 300 && p.rt != nullptr &&
         p.rt->tokenizer;
}

/// The usage the upstream did not report, counted: at most max_bytes of each text tokenized.
void count_usage(proxy_result& p, std::string_view body, std::size_t max_bytes) {
  protocol::usage u;
  bool estimated = false;
  u.prompt = count_prompt_tokens(*p.rt->tokenizer, p.endpoint, body, max_bytes, &estimated);
  if (p.endpoint != "/embeddings") {
    u.completion = count_completion_tokens(*p.rt->tokenizer, p.delivered.pieces(), p.delivered_sse, p.delivered_text,
                                           max_bytes, &estimated);
  }
  p.used = u;
  p.counted = true;
  p.estimated = estimated;
}

/// count_usage that never throws: what it cannot count (a body the metering code chokes on) is
/// estimated from its bytes, 4 a token.
void count_or_estimate(proxy_result& p, std::string_view body, std::size_t max_bytes) {
  try {
    count_usage(p, body, max_bytes);
  } catch (const std::exception&) {
    protocol::usage u;
    u.prompt = static_cast<std::int64_t>(body.size() / 4);
    u.completion = static_cast<std::int64_t>((p.delivered.size() + p.delivered_text.size()) / 4);
    p.used = u;
    p.counted = true;
    p.estimated = true;
  }
}

/// Metering: the usage goes into the record with its cost.
void price(finished& f) {
  access_record& rec = f.r.record;
  rec.latency_ms = std::chrono::duration<double, std::milli>(f.elapsed).count();
  if (!f.r.proxy || !f.r.proxy->used) return;
  const proxy_result& p = *f.r.proxy;
  rec.has_usage = true;
  rec.prompt_tokens = p.used->prompt;
  rec.cached_tokens = p.used->cached;
  rec.cache_write_tokens = p.used->cache_write;
  rec.completion_tokens = p.used->completion;
  rec.reasoning_tokens = p.used->reasoning;
  rec.cost = p.price != nullptr ? protocol::cost_of(*p.used, *p.price) : 0;
  rec.usage_source = p.estimated ? "estimated" : p.counted ? "counted" : "upstream";
}

/// The limiter: the admission's concurrency slot is freed and TPM and the budget settled on the
/// real tokens and cost.
void settle_limits(finished& f) {
  if (!f.r.proxy) return;
  proxy_result& p = *f.r.proxy;
  p.hold.settle(p.used ? p.used->prompt + p.used->completion : -1, f.r.record.cost);
}

void write_access_log(finished& f) { f.w.shared().log->write(f.w.index(), f.r.record); }

void append_ledger(finished& f) {
  if (!f.r.proxy || !f.w.shared().ledger) return;
  const proxy_result& p = *f.r.proxy;
  const access_record& rec = f.r.record;
  ledger_record l;
  l.request_id = rec.request_id;
  l.unix_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  l.key = rec.key_name;
  l.model = rec.model;
  l.route = route_of(p);
  l.backend = rec.backend;
  l.upstream_model = p.upstream_model;
  if (p.used) {
    l.has_usage = true;
    l.prompt_tokens = p.used->prompt;
    l.cached_tokens = p.used->cached;
    l.completion_tokens = p.used->completion;
    l.reasoning_tokens = p.used->reasoning;
    l.cache_write_tokens = p.used->cache_write;
    l.cost = rec.cost;
  }
  l.status = rec.status;
  l.latency_ms = rec.latency_ms;
  l.first_byte_ms = p.first_byte >= 0 ? p.first_byte * 1000 : -1;
  l.stream = rec.stream;
  l.counted = p.counted;
  l.estimated = p.estimated;
  l.priority = rec.priority;
  l.first_token_ms =
      p.first_token_at ? std::chrono::duration<double, std::milli>(*p.first_token_at - f.r.started).count() : -1;
  f.w.shared().ledger->append(f.w.index(), std::move(l));
}

void record_metrics(finished& f) {
  if (!f.r.proxy) return;
  const proxy_result& p = *f.r.proxy;
  const access_record& rec = f.r.record;
  gateway_metrics::finished_request m{route_of(p), rec.backend, rec.key_name};
  m.status = rec.status;
  m.seconds = f.seconds;
  if (p.used) {
    m.has_usage = true;
    m.prompt = p.used->prompt;
    m.cached = p.used->cached;
    m.cache_write = p.used->cache_write;
    m.completion = p.used->completion;
    m.reasoning = p.used->reasoning;
    m.cost = rec.cost;
  }
  if (p.first_token_at && rec.status >= 200 && rec.status < 300) {
    m.ttft = std::chrono::duration<double>(*p.first_token_at - f.r.started).count();
    m.tpot = p.used && p.used->completion > 1 ? std::chrono::duration<double>(f.now - *p.first_token_at).count() /
                                                    static_cast<double>(p.used->completion - 1)
                                              : -1;
  }
  if (p.upstream_seconds >= 0) {
    m.upstream_seconds = p.upstream_seconds;
    m.overhead = p.single_attempt ? f.seconds - p.upstream_seconds : -1;
  }
  // One lock for the request's samples, not one for each kind.
  f.w.shared().metrics->record_finished(f.w.index(), m);
}

/// The consumers, in order. Each pre-step that took something (an admission) has its settlement
/// here; adding one is a line in this list.
constexpr std::array<void (*)(finished&), 4> consumers{settle_limits, write_access_log, append_ledger, record_metrics};


void consume(finished& f) {
  price(f);
  for (auto consume : consumers) consume(f);
  // Last: shutdown waits for this count, and by then the request's records are handed over.
  --f.w.shared().in_flight;
}

/// A result whose tokens are being counted: what the consumers will read, moved out of the
/// connection (whose record serves its next request) and kept with the snapshot it points into.
struct deferred {
  deferred(request_result& from, worker& owner, std::string_view request_body, std::shared_ptr<const runtime> snapshot,
           steady::time_point ended)
      : record(from.record),
        endpoint(from.proxy->endpoint),
        body(request_body),
        result{record, from.started, std::move(from.proxy)},
        rt(std::move(snapshot)),
        w(owner),
        now(ended) {
    result.proxy->endpoint = endpoint;
    from.proxy.reset();
  }

  access_record record;
  std::string endpoint;
  std::string body;
  request_result result;
  std::shared_ptr<const runtime> rt;
  worker& w;
  steady::time_point now;
};

}  // namespace

void publish(request_result& result, worker& w, std::string_view body, std::shared_ptr<const runtime> rt) {
  const auto now = steady::now();
  token_counter* counter = w.shared().counter.get();
  if (needs_count(result) && rt != nullptr && counter != nullptr) {
    auto d = std::make_shared<deferred>(result, w, body, std::move(rt), now);
    const std::size_t max_bytes = d->rt->cfg.max_count_bytes;
    token_counter::job j = [d, max_bytes](bool stopping) {
      // At shutdown what is left is estimated, so that stopping is not held up by counting.
      count_or_estimate(*d->result.proxy, d->body, stopping ? 0 : max_bytes);
      d->body = std::string();
      net::post(d->w.io(), [d] {
        finished f{d->result, d->w, d->now, std::chrono::duration<double>(d->now - d->result.started).count(),
                   d->now - d->result.started};
        consume(f);
      });
    };
    if (counter->post(j)) return;
    // Every counting thread is busy and the queue is full: estimate now, tokenizing nothing.
    count_or_estimate(*d->result.proxy, d->body, 0);
    finished f{d->result, w, now, std::chrono::duration<double>(now - d->result.started).count(),
               now - d->result.started};
    consume(f);
    return;
  }
  if (needs_count(result)) count_or_estimate(*result.proxy, body, result.proxy->rt->cfg.max_count_bytes);
  finished f{result, w, now, std::chrono::duration<double>(now - result.started).count(), now - result.started};
  consume(f);
}

}  // namespace tollgate::gateway
