#include "gateway/observability/metrics.hpp"

#include <chrono>
#include <cstdio>

#include "gateway/keys/key_table.hpp"
#include "gateway/server/runtime.hpp"

namespace tollgate::gateway {

namespace {

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

const char* status_class(int status) {
  static constexpr const char* classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
  if (status < 100 || status > 599) return "none";  // the client left before any answer
  return classes[status / 100 - 1];
}

/// The cell for a label set, created on first use.
template <class Map, std::size_t N>
auto& cell(Map& map, const std::array<std::string_view, N>& labels) {
  auto it = map.find(labels);
  if (it == map.end()) {
    typename Map::key_type key;
    for (std::size_t i = 0; i < N; ++i) key[i] = std::string(labels[i]);
    it = map.emplace(std::move(key), typename Map::mapped_type{}).first;
  }
  return it->second;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

/// The families of backends that run a model in this process; nothing when there are none.
void render_engines(std::string& out, const runtime& rt) {
  std::vector<std::pair<std::string, adapters::engine_stats>> engines;
  for (std::size_t i = 0; i < rt.backends.size(); ++i) {
    if (auto st = rt.backends[i]->stats()) engines.emplace_back("backend=\"" + escape_label(rt.cfg.backends[i].name) + "\"", *st);
  }
  if (engines.empty()) return;
  const auto family = [&](const char* name, const char* type, const char* help, auto value) {
    header(out, name, type, help);
    for (const auto& [labels, st] : engines) {
      out += name;
      out += "{" + labels + "} " + std::to_string(value(st)) + "\n";
    }
  };
  using st = adapters::engine_stats;
  family("tollgate_engine_sequences_running", "gauge", "Sequences admitted to a local engine's batch (holding KV blocks).",
         [](const st& s) { return s.running; });
  family("tollgate_engine_requests_queued", "gauge", "Requests waiting for a place in a local engine's batch.",
         [](const st& s) { return s.queued; });
  family("tollgate_engine_batch_sequences", "gauge", "Sequences in a local engine's last forward.",
         [](const st& s) { return s.batch_sequences; });
  family("tollgate_engine_batch_tokens", "gauge", "Tokens in a local engine's last forward (decode tokens and prefill chunks).",
         [](const st& s) { return s.batch_tokens; });
  family("tollgate_engine_tokens_per_second", "gauge", "Tokens a local engine forwarded per second over the last few seconds.",
         [](const st& s) { return s.tokens_per_s; });
  header(out, "tollgate_engine_kv_blocks", "gauge",
         "Blocks of a local engine's paged KV cache, by state: used, free, cached (free blocks holding a cached prefix).");
  for (const auto& [labels, s] : engines) {
    out += "tollgate_engine_kv_blocks{" + labels + ",state=\"used\"} " + std::to_string(s.kv_blocks_used) + "\n";
    out += "tollgate_engine_kv_blocks{" + labels + ",state=\"free\"} " + std::to_string(s.kv_blocks_free) + "\n";
    out += "tollgate_engine_kv_blocks{" + labels + ",state=\"cached\"} " + std::to_string(s.kv_blocks_cached) + "\n";
  }
  family("tollgate_engine_prefix_cache_lookup_tokens_total", "counter",
         "Prompt tokens a local engine looked up in its prefix cache when admitting a sequence.",
         [](const st& s) { return s.prefix_cache_lookup_tokens; });
  family("tollgate_engine_prefix_cache_hit_tokens_total", "counter",
         "Prompt tokens a local engine found in its prefix cache (their KV reused, not computed).",
         [](const st& s) { return s.prefix_cache_hit_tokens; });
  family("tollgate_engine_preemptions_total", "counter",
         "Sequences a local engine sent back to its queue (to be recomputed) to free KV blocks.",
         [](const st& s) { return s.preemptions; });
  family("tollgate_engine_steps_total", "counter", "Forwards a local engine has run.", [](const st& s) { return s.steps; });
  family("tollgate_engine_prompt_tokens_total", "counter", "Prompt tokens a local engine has prefilled.",
         [](const st& s) { return s.prompt_tokens; });
  family("tollgate_engine_generated_tokens_total", "counter", "Tokens a local engine has sampled.",
         [](const st& s) { return s.generated_tokens; });
  header(out, "tollgate_engine_sequences_total", "counter",
         "Sequences a local engine has ended, by outcome: finished, cancelled (the client left), failed, "
         "overloaded (refused with 503: its queue was full, or past queue_timeout).");
  for (const auto& [labels, s] : engines) {
    out += "tollgate_engine_sequences_total{" + labels + ",outcome=\"finished\"} " + std::to_string(s.finished) + "\n";
    out += "tollgate_engine_sequences_total{" + labels + ",outcome=\"cancelled\"} " + std::to_string(s.cancelled) + "\n";
    out += "tollgate_engine_sequences_total{" + labels + ",outcome=\"failed\"} " + std::to_string(s.failed) + "\n";
    out += "tollgate_engine_sequences_total{" + labels + ",outcome=\"overloaded\"} " + std::to_string(s.overloaded) + "\n";
  }
  // Priorities low, normal and high always show; others once they were seen.
  header(out, "tollgate_engine_queue_waiting", "gauge",
         "Requests waiting for a place in a local engine's batch, by priority (0 low, 1 normal, 2 high).");
  for (const auto& [labels, s] : engines) {
    for (std::size_t p = 0; p < s.queued_by_priority.size(); ++p) {
      if (p > 2 && s.queued_by_priority[p] == 0) continue;
      out += "tollgate_engine_queue_waiting{" + labels + ",priority=\"" + std::to_string(p) + "\"} " +
             std::to_string(s.queued_by_priority[p]) + "\n";
    }
  }
  header(out, "tollgate_engine_shed_total", "counter",
         "Requests a local engine refused with 503 overloaded, by priority and reason: full (its queue held only "
         "waiters of their priority or higher), displaced (a newer request of higher priority took their place), "
         "timeout (queue_timeout passed).");
  static constexpr const char* reasons[] = {"full", "displaced", "timeout"};
  for (const auto& [labels, s] : engines) {
    for (std::size_t p = 0; p < s.shed_by_priority.size(); ++p) {
      for (std::size_t r = 0; r < 3; ++r) {
        if (p > 2 && s.shed_by_priority[p][r] == 0) continue;
        out += "tollgate_engine_shed_total{" + labels + ",priority=\"" + std::to_string(p) + "\",reason=\"" + reasons[r] +
               "\"} " + std::to_string(s.shed_by_priority[p][r]) + "\n";
      }
    }
  }
}

}  // namespace

std::string escape_label(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

void histogram::observe(double value) {
  std::size_t i = 0;
  while (i < latency_buckets.size() && value > latency_buckets[i]) ++i;
  if (i < latency_buckets.size()) ++buckets_[i];
  ++count_;
  sum_ += value;
}

void histogram::merge(const histogram& other) {
  for (std::size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += other.buckets_[i];
  count_ += other.count_;
  sum_ += other.sum_;
}

void histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  const std::string sep = labels.empty() ? "" : ",";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < latency_buckets.size(); ++i) {
    cumulative += buckets_[i];
    out += name + "_bucket{" + labels + sep + "le=\"" + number(latency_buckets[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  out += name + "_bucket{" + labels + sep + "le=\"+Inf\"} " + std::to_string(count_) + "\n";
  const std::string braces = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + braces + " " + number(sum_) + "\n";
  out += name + "_count" + braces + " " + std::to_string(count_) + "\n";
}

gateway_metrics::gateway_metrics(std::size_t shards) {
  for (std::size_t i = 0; i < std::max<std::size_t>(shards, 1); ++i) shards_.push_back(std::make_unique<shard_data>());
}

void gateway_metrics::record_finished(std::size_t shard, const finished_request& r) {
  auto& s = *shards_[shard % shards_.size()];
  std::lock_guard lock(s.mutex);
  auto& m = s.last_finished;
  if (m.route != r.route || m.backend != r.backend || m.key != r.key) {
    m.route.assign(r.route);
    m.backend.assign(r.backend);
    m.key.assign(r.key);
    m.status_class = nullptr;
    m.usage = nullptr;
    m.requests = nullptr;
    m.duration = m.ttft = m.tpot = m.upstream = nullptr;
  }
  if (r.has_usage) {
    if (m.usage == nullptr) m.usage = &cell(s.usage, std::array<std::string_view, 3>{r.key, r.route, r.backend});
    auto& c = *m.usage;
    c.tokens[0] += static_cast<std::uint64_t>(r.prompt - r.cached - r.cache_write);
    c.tokens[1] += static_cast<std::uint64_t>(r.cached);
    c.tokens[2] += static_cast<std::uint64_t>(r.completion);
    c.tokens[3] += static_cast<std::uint64_t>(r.reasoning);
    c.tokens[4] += static_cast<std::uint64_t>(r.cache_write);
    c.cost += r.cost;
  }
  const char* klass = status_class(r.status);
  if (m.status_class != klass) {
    m.status_class = klass;
    m.requests = &cell(s.requests, std::array<std::string_view, 3>{r.route, r.backend, klass});
  }
  ++*m.requests;
  if (m.duration == nullptr) m.duration = &s.duration[r.route];
  m.duration->observe(r.seconds);
  if (r.ttft >= 0) {
    if (m.ttft == nullptr) m.ttft = &s.ttft[r.route];
    m.ttft->observe(r.ttft);
    if (r.tpot >= 0) {
      if (m.tpot == nullptr) m.tpot = &s.tpot[r.route];
      m.tpot->observe(r.tpot);
    }
  }
  if (r.upstream_seconds >= 0) {
    if (m.upstream == nullptr) m.upstream = &s.upstream[r.backend];
    m.upstream->observe(r.upstream_seconds);
    if (r.overhead >= 0) s.overhead.observe(r.overhead);
  }
}

void gateway_metrics::record_attempt(std::size_t shard, const std::string& backend, const char* outcome,
                                     double first_byte_seconds) {
  auto& s = *shards_[shard % shards_.size()];
  std::lock_guard lock(s.mutex);
  auto& m = s.last_attempt;
  if (m.backend != backend) {
    m.backend.assign(backend);
    m.outcome.clear();
    m.attempts = nullptr;
    m.first_byte = nullptr;
  }
  if (m.attempts == nullptr || m.outcome != outcome) {
    m.outcome.assign(outcome);
    m.attempts = &cell(s.attempts, std::array<std::string_view, 2>{backend, outcome});
  }
  ++*m.attempts;
  if (first_byte_seconds >= 0) {
    if (m.first_byte == nullptr) m.first_byte = &s.first_byte[backend];
    m.first_byte->observe(first_byte_seconds);
  }
}

void gateway_metrics::record_queue_wait(std::size_t shard, int priority, double seconds, bool served,
                                        shed_reason why) {
  auto& s = *shards_[shard % shards_.size()];
  const auto p = static_cast<std::size_t>(std::clamp(priority, 0, 9));
  std::lock_guard lock(s.mutex);
  if (served || why != shed_reason::full) s.queue_wait[p].observe(seconds);
  if (!served) ++s.shed[p][static_cast<std::size_t>(why)];
}

std::string gateway_metrics::render(const runtime& rt, const key_table* keys, std::int64_t in_flight) const {
  // Merge the shards first, holding each lock only while copying it.
  std::map<std::array<std::string, 3>, std::uint64_t> requests;
  std::map<std::string, histogram> duration;
  std::map<std::array<std::string, 2>, std::uint64_t> attempts;
  std::map<std::string, histogram> first_byte;
  std::map<std::array<std::string, 4>, std::uint64_t> tokens;
  std::map<std::array<std::string, 3>, double> cost;
  std::map<std::string, histogram> ttft, tpot, upstream;
  histogram overhead;
  std::array<histogram, 10> queue_wait;
  std::array<std::array<std::uint64_t, 3>, 10> shed{};
  for (const auto& shard : shards_) {
    std::lock_guard lock(shard->mutex);
    for (std::size_t p = 0; p < queue_wait.size(); ++p) {
      queue_wait[p].merge(shard->queue_wait[p]);
      for (std::size_t r = 0; r < 3; ++r) shed[p][r] += shard->shed[p][r];
    }
    for (const auto& [k, v] : shard->requests) requests[k] += v;
    for (const auto& [k, v] : shard->duration) duration[k].merge(v);
    for (const auto& [k, v] : shard->attempts) attempts[k] += v;
    for (const auto& [k, v] : shard->first_byte) first_byte[k].merge(v);
    static constexpr const char* kinds[] = {"prompt", "cached_prompt", "completion", "reasoning", "cache_write_prompt"};
    for (const auto& [k, v] : shard->usage) {
      for (std::size_t i = 0; i < v.tokens.size(); ++i) {
        if (i == 4 && v.tokens[i] == 0) continue;  // only where a provider wrote its cache
        tokens[{k[0], k[1], k[2], kinds[i]}] += v.tokens[i];
      }
      cost[k] += v.cost;
    }
    for (const auto& [k, v] : shard->ttft) ttft[k].merge(v);
    for (const auto& [k, v] : shard->tpot) tpot[k].merge(v);
    for (const auto& [k, v] : shard->upstream) upstream[k].merge(v);
    overhead.merge(shard->overhead);
  }

  std::string out;
  out.reserve(8192);
  header(out, "tollgate_build_info", "gauge", "Tollgate version; always 1.");
  out += "tollgate_build_info{version=\"" TOLLGATE_VERSION "\"} 1\n";

  header(out, "tollgate_requests_in_flight", "gauge", "Requests being handled now.");
  out += "tollgate_requests_in_flight " + std::to_string(in_flight) + "\n";

  header(out, "tollgate_requests_total", "counter", "Finished requests by route, backend and status class.");
  for (const auto& [k, v] : requests) {
    out += "tollgate_requests_total{model=\"" + escape_label(k[0]) + "\",backend=\"" + escape_label(k[1]) +
           "\",status_class=\"" + k[2] + "\"} " + std::to_string(v) + "\n";
  }

  header(out, "tollgate_request_duration_seconds", "histogram", "Time from request read to response end, by route.");
  for (const auto& [k, h] : duration) h.render(out, "tollgate_request_duration_seconds", "model=\"" + escape_label(k) + "\"");

  header(out, "tollgate_upstream_attempts_total", "counter",
         "Upstream attempts by backend and outcome (ok, error_status, failed, cancelled); retries show here.");
  for (const auto& [k, v] : attempts) {
    out += "tollgate_upstream_attempts_total{backend=\"" + escape_label(k[0]) + "\",outcome=\"" + k[1] + "\"} " +
           std::to_string(v) + "\n";
  }

  header(out, "tollgate_upstream_first_byte_seconds", "histogram",
         "Time from sending an attempt to the upstream's response headers, by backend.");
  for (const auto& [k, h] : first_byte) {
    h.render(out, "tollgate_upstream_first_byte_seconds", "backend=\"" + escape_label(k) + "\"");
  }

  header(out, "tollgate_time_to_first_token_seconds", "histogram",
         "Streams: time from request read to the first bytes of the answer at the client, by route.");
  for (const auto& [k, h] : ttft) h.render(out, "tollgate_time_to_first_token_seconds", "model=\"" + escape_label(k) + "\"");
  header(out, "tollgate_time_per_output_token_seconds", "histogram",
         "Streams: time after the first token divided by the output tokens after it, by route.");
  for (const auto& [k, h] : tpot) {
    h.render(out, "tollgate_time_per_output_token_seconds", "model=\"" + escape_label(k) + "\"");
  }
  header(out, "tollgate_upstream_duration_seconds", "histogram",
         "The answering upstream attempt, from sending it to its last byte, by backend.");
  for (const auto& [k, h] : upstream) {
    h.render(out, "tollgate_upstream_duration_seconds", "backend=\"" + escape_label(k) + "\"");
  }
  header(out, "tollgate_gateway_overhead_seconds", "histogram",
         "Requests answered at their first attempt: their whole time minus the upstream attempt's.");
  overhead.render(out, "tollgate_gateway_overhead_seconds", "");

  header(out, "tollgate_tokens_total", "counter",
         "Tokens by key name, route, backend and kind: prompt (neither read from nor written to the "
         "provider's cache), cached_prompt, cache_write_prompt, completion (reasoning included), reasoning.");
  for (const auto& [k, v] : tokens) {
    out += "tollgate_tokens_total{key=\"" + escape_label(k[0]) + "\",model=\"" + escape_label(k[1]) + "\",backend=\"" +
           escape_label(k[2]) + "\",kind=\"" + k[3] + "\"} " + std::to_string(v) + "\n";
  }
  header(out, "tollgate_cost_total", "counter", "Money spent at the serving target's prices, by key name, route and backend.");
  for (const auto& [k, v] : cost) {
    out += "tollgate_cost_total{key=\"" + escape_label(k[0]) + "\",model=\"" + escape_label(k[1]) + "\",backend=\"" +
           escape_label(k[2]) + "\",currency=\"" + escape_label(rt.cfg.currency) + "\"} " + number(v) + "\n";
  }

  const auto now = std::chrono::steady_clock::now();
  header(out, "tollgate_backend_healthy", "gauge",
         "1 when the backend takes traffic; 0 while ejected or marked down by active checks.");
  for (std::size_t i = 0; i < rt.cfg.backends.size(); ++i) {
    out += "tollgate_backend_healthy{backend=\"" + escape_label(rt.cfg.backends[i].name) + "\"} " +
           (rt.backend_health[i]->ejected(now) ? "0" : "1") + "\n";
  }
  header(out, "tollgate_backend_requests_in_flight", "gauge", "Upstream requests in flight per backend, all workers.");
  for (std::size_t i = 0; i < rt.cfg.backends.size(); ++i) {
    out += "tollgate_backend_requests_in_flight{backend=\"" + escape_label(rt.cfg.backends[i].name) + "\"} " +
           std::to_string(rt.backend_health[i]->in_flight()) + "\n";
  }
  // Priorities low, normal and high always show; others once they were seen.
  header(out, "tollgate_backend_queue_waiting", "gauge",
         "Requests waiting for a slot of a backend at its max_concurrency, by priority (0 low, 1 normal, 2 high).");
  for (std::size_t i = 0; i < rt.cfg.backends.size(); ++i) {
    if (rt.cfg.backends[i].max_concurrency == 0) continue;
    const auto waiting = rt.backend_health[i]->waiting_by_priority();
    for (std::size_t p = 0; p < waiting.size(); ++p) {
      if (p > 2 && waiting[p] == 0) continue;
      out += "tollgate_backend_queue_waiting{backend=\"" + escape_label(rt.cfg.backends[i].name) + "\",priority=\"" +
             std::to_string(p) + "\"} " + std::to_string(waiting[p]) + "\n";
    }
  }
  header(out, "tollgate_queue_wait_seconds", "histogram",
         "Time requests waited for a backend slot (those that waited), by priority.");
  for (std::size_t p = 0; p < queue_wait.size(); ++p) {
    if (p > 2 && queue_wait[p].count() == 0) continue;
    queue_wait[p].render(out, "tollgate_queue_wait_seconds", "priority=\"" + std::to_string(p) + "\"");
  }
  header(out, "tollgate_queue_shed_total", "counter",
         "Requests refused a backend slot (503 with Retry-After), by priority and reason: full (the queue held only "
         "waiters of their priority or higher), displaced (a newer request of higher priority took their place), "
         "timeout (queue_timeout passed).");
  static constexpr const char* reasons[] = {"full", "displaced", "timeout"};
  for (std::size_t p = 0; p < shed.size(); ++p) {
    for (std::size_t r = 0; r < 3; ++r) {
      if (p > 2 && shed[p][r] == 0) continue;
      out += "tollgate_queue_shed_total{priority=\"" + std::to_string(p) + "\",reason=\"" + reasons[r] + "\"} " +
             std::to_string(shed[p][r]) + "\n";
    }
  }
  render_engines(out, rt);
  if (keys != nullptr) {
    const std::int64_t now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    header(out, "tollgate_key_budget", "gauge", "A key's spend budget for its current period (day or month, UTC).");
    std::string left;
    for (const auto& p : keys->all()) {
      auto remaining = budget_left(*p.key, *p.state, now_ms);
      if (!remaining) continue;
      const std::string labels = "{key=\"" + escape_label(p.key_name) + "\",period=\"" + p.key->budget_period +
                                 "\",currency=\"" + escape_label(rt.cfg.currency) + "\"} ";
      out += "tollgate_key_budget" + labels + number(p.key->budget) + "\n";
      left += "tollgate_key_budget_remaining" + labels + number(*remaining) + "\n";
    }
    header(out, "tollgate_key_budget_remaining", "gauge", "What a key may still spend this period; <= 0 refuses it.");
    out += left;
  }
  rt.limits->append_metrics(out);
  return out;
}

}  // namespace tollgate::gateway
