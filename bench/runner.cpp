#include "bench/runner.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include <chrono>
#include <random>
#include <stdexcept>

#include "adapters/curl_multi.hpp"
#include "adapters/openai_backend.hpp"
#include "adapters/upstream_pool.hpp"
#include "protocol/sse.hpp"
#include "protocol/usage.hpp"
#include "tokenizer/tokenizer.hpp"

namespace tollgate::bench {

namespace net = boost::asio;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr std::size_t max_kept_body = 1 << 20;  // of a whole (unstreamed) answer or an error

double seconds(clock_type::duration d) { return std::chrono::duration<double>(d).count(); }

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return s(u.ru_utime) + s(u.ru_stime);
}

/// Whether a JSON text holds "key": "<something non-empty>" somewhere (any nesting, any spacing).
/// Cheaper than parsing every chunk of every stream; keys are matched with their quotes, so
/// "content" also finds "reasoning_content".
bool has_text(std::string_view json, std::string_view key) {
  for (std::size_t at = json.find(key); at != std::string_view::npos; at = json.find(key, at + 1)) {
    std::size_t i = at + key.size();
    while (i < json.size() && (json[i] == ' ' || json[i] == '\t' || json[i] == '\n' || json[i] == '\r')) ++i;
    if (i >= json.size() || json[i] != ':') continue;
    ++i;
    while (i < json.size() && (json[i] == ' ' || json[i] == '\t' || json[i] == '\n' || json[i] == '\r')) ++i;
    if (i + 1 < json.size() && json[i] == '"' && json[i + 1] != '"') return true;
  }
  return false;
}

std::string failure_kind(adapters::failure f) {
  switch (f) {
    case adapters::failure::connect:
      return "connect";
    case adapters::failure::timeout:
      return "timeout";
    case adapters::failure::broken:
      return "reset";
    case adapters::failure::cancelled:
      return "cancelled";
    case adapters::failure::none:
      break;
  }
  return "failed";
}

std::int64_t json_int(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<std::int64_t>() : -1;
}

}  // namespace

struct runner::impl {
  const bench_options& o;
  std::vector<prompt> prompts;
  const tokenizer::tokenizer* tok;
  net::io_context io{1};
  adapters::curl_multi curl{io};
  adapters::upstream_pool pool{io, 65536};
  std::unique_ptr<adapters::openai_backend> backend;
  std::string path;
  std::vector<std::string> bodies;  // one per prompt, for the model of the current run

  impl(const bench_options& opts, std::vector<prompt> p, const tokenizer::tokenizer* t)
      : o(opts), prompts(std::move(p)), tok(t) {
    config::backend_config cfg;
    cfg.name = "bench";
    config::openai_backend_config& remote = cfg.settings.emplace<config::openai_backend_config>();
    remote.base_url = o.base_url;
    if (o.api == api_kind::anthropic) {
      path = "/messages";
      if (!o.api_key.empty()) remote.headers["x-api-key"] = o.api_key;
      remote.headers["anthropic-version"] = "2023-06-01";
    } else {
      path = "/chat/completions";
      remote.api_key = o.api_key;
    }
    remote.transport = o.base_url.starts_with("http://") ? "native" : "curl";
    const auto limit = std::chrono::duration_cast<config::duration>(std::chrono::duration<double>(o.timeout_s));
    cfg.timeouts.connect = std::min(limit, config::duration(std::chrono::seconds(10)));
    cfg.timeouts.first_token = limit;
    cfg.timeouts.idle = limit;
    cfg.timeouts.total = limit;
    try {
      backend = std::make_unique<adapters::openai_backend>(cfg);
    } catch (const std::exception& e) {
      throw std::runtime_error("--base-url " + o.base_url + ": " + e.what());
    }
  }

  struct run_state {
    clock_type::time_point start;
    clock_type::time_point deadline = clock_type::time_point::max();
    std::size_t limit = SIZE_MAX;  // requests to send
    std::size_t next = 0;
    std::size_t in_flight = 0;
    std::size_t senders = 0;  // closed-loop workers or the open-loop generator still going
    std::size_t errors = 0;
    std::int64_t output_tokens = 0;
    std::vector<sample> samples;
    std::optional<net::steady_timer> slot_freed;  // open loop with a cap: wakes the generator

    bool more() const { return next < limit && clock_type::now() < deadline; }
  };

  /// Sends request `index` and measures it.
  net::awaitable<void> one(std::size_t index, run_state& st) {
    sample s;
    const auto t0 = clock_type::now();
    s.start = seconds(t0 - st.start);
    const prompt& p = prompts[index % prompts.size()];
    auto c = backend->start({path, bodies[index % bodies.size()], o.stream, {}}, {io, curl, pool});
    protocol::sse_splitter sse;
    std::string whole;
    std::optional<protocol::usage> reported;
    std::int64_t anthropic_in = -1, anthropic_out = -1;
    bool done_marker = false, stream_error = false;
    for (;;) {
      adapters::call_event ev = co_await c->next();
      if (ev.type == adapters::call_event::kind::head) {
        s.status = ev.head.status;
        continue;
      }
      if (ev.type == adapters::call_event::kind::failed) {
        s.error = failure_kind(ev.error);
        break;
      }
      if (ev.type == adapters::call_event::kind::end) {
        if (s.status < 200 || s.status > 299) s.error = "http " + std::to_string(s.status);
        break;
      }
      // data
      if (!o.stream || s.status < 200 || s.status > 299) {
        if (whole.size() < max_kept_body) whole.append(ev.data, 0, max_kept_body - whole.size());
        continue;
      }
      const double now = seconds(clock_type::now() - t0);
      sse.feed(ev.data);
      while (auto event = sse.next_event()) {
        const auto data = protocol::sse_data(*event);
        if (!data) continue;
        const std::string_view d = *data;
        bool token = false;
        if (o.api == api_kind::openai) {
          if (d == "[DONE]") {
            done_marker = true;
            continue;
          }
          if (d.find("\"error\"") != std::string_view::npos && d.find("\"choices\"") == std::string_view::npos) {
            stream_error = true;
            continue;
          }
          token = has_text(d, "content\"");
          if (d.find("\"usage\"") != std::string_view::npos) {
            if (auto u = protocol::usage_from_json(d)) reported = u;
          }
        } else {
          if (d.find("\"content_block_delta\"") != std::string_view::npos) {
            token = has_text(d, "\"text\"") || has_text(d, "\"thinking\"");
          } else if (d.find("\"message_stop\"") != std::string_view::npos) {
            done_marker = true;
          } else if (d.find("\"message_start\"") != std::string_view::npos ||
                     d.find("\"message_delta\"") != std::string_view::npos) {
            const auto j = nlohmann::json::parse(d, nullptr, false);
            const nlohmann::json* u = nullptr;
            if (j.is_object() && j.contains("message") && j["message"].is_object() && j["message"].contains("usage"))
              u = &j["message"]["usage"];
            else if (j.is_object() && j.contains("usage"))
              u = &j["usage"];
            if (u != nullptr && u->is_object()) {
              if (const auto v = json_int(*u, "input_tokens"); v >= 0) anthropic_in = v;
              if (const auto v = json_int(*u, "output_tokens"); v >= 0) anthropic_out = v;
            }
          } else if (d.find("\"error\"") != std::string_view::npos) {
            stream_error = true;
          }
        }
        if (token) {
          ++s.token_events;
          if (s.ttft < 0) s.ttft = now;
          s.last_token = now;
        }
      }
    }
    s.e2e = seconds(clock_type::now() - t0);
    c.reset();
    s.prompt_tokens = p.tokens;
    if (s.error.empty()) {
      if (o.stream) {
        if (stream_error) s.error = "stream error";
        else if (!done_marker) s.error = "truncated";
        if (o.api == api_kind::openai && reported) {
          s.output_tokens = reported->completion;
          s.prompt_tokens = reported->prompt;
        } else if (o.api == api_kind::anthropic && anthropic_out >= 0) {
          s.output_tokens = anthropic_out;
          if (anthropic_in >= 0) s.prompt_tokens = anthropic_in;
        } else {
          s.output_tokens = s.token_events;
        }
      } else {
        read_whole(whole, s);
      }
    }
    s.ok = s.error.empty();
    finish(st, std::move(s));
  }

  /// A whole answer: its usage, else its text counted.
  void read_whole(const std::string& whole, sample& s) const {
    if (o.api == api_kind::openai) {
      bool refused = false;
      if (auto u = protocol::usage_from_json(whole, nullptr, &refused)) {
        s.output_tokens = u->completion;
        s.prompt_tokens = u->prompt;
        return;
      }
    }
    const auto j = nlohmann::json::parse(whole, nullptr, false);
    if (!j.is_object()) {
      s.error = "bad response";
      return;
    }
    std::string text;
    if (o.api == api_kind::anthropic) {
      if (const auto u = j.find("usage"); u != j.end() && u->is_object()) {
        if (const auto v = json_int(*u, "output_tokens"); v >= 0) {
          s.output_tokens = v;
          if (const auto in = json_int(*u, "input_tokens"); in >= 0) s.prompt_tokens = in;
          return;
        }
      }
      if (const auto c = j.find("content"); c != j.end() && c->is_array())
        for (const auto& block : *c)
          if (block.is_object() && block.contains("text") && block["text"].is_string()) text += block["text"].get<std::string>();
    } else if (const auto ch = j.find("choices"); ch != j.end() && ch->is_array() && !ch->empty()) {
      const auto& first = (*ch)[0];
      if (first.is_object() && first.contains("message") && first["message"].is_object() &&
          first["message"].contains("content") && first["message"]["content"].is_string())
        text = first["message"]["content"].get<std::string>();
    } else {
      s.error = "bad response";
      return;
    }
    s.output_tokens = tok != nullptr ? static_cast<std::int64_t>(tok->count(text)) : (text.empty() ? 0 : 1);
  }

  void finish(run_state& st, sample s) {
    --st.in_flight;
    if (!s.ok) ++st.errors;
    st.output_tokens += s.ok ? s.output_tokens : 0;
    st.samples.push_back(std::move(s));
    if (st.slot_freed) st.slot_freed->cancel();
  }

  net::awaitable<void> closed_worker(run_state& st) {
    while (st.more()) {
      const std::size_t i = st.next++;
      ++st.in_flight;
      co_await one(i, st);
    }
    --st.senders;
  }

  net::awaitable<void> open_generator(run_state& st, double rate) {
    std::mt19937_64 rng(o.seed);
    std::exponential_distribution<double> gap(rate);
    net::steady_timer timer(io);
    auto at = st.start;
    for (;;) {
      at += std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(gap(rng)));
      if (st.next >= st.limit || at >= st.deadline) break;
      timer.expires_at(at);
      co_await timer.async_wait(net::as_tuple(net::use_awaitable));
      while (o.max_in_flight != 0 && st.in_flight >= o.max_in_flight) {
        st.slot_freed->expires_at(clock_type::time_point::max());
        co_await st.slot_freed->async_wait(net::as_tuple(net::use_awaitable));
      }
      const std::size_t i = st.next++;
      ++st.in_flight;
      net::co_spawn(io, one(i, st), net::detached);
    }
    --st.senders;
  }

  run_result run(const std::string& model, double level, const std::function<void(const progress&)>& on_progress) {
    bodies.clear();
    bodies.reserve(prompts.size());
    for (const auto& p : prompts) bodies.push_back(request_body(o, model, p));

    io.restart();  // the last run's final poll() may have left the context stopped
    const double cpu_at_start = cpu_seconds();
    run_state st;
    st.start = clock_type::now();
    const bool open_loop = !o.rates.empty();
    if (o.requests) st.limit = *o.requests;
    if (o.duration_s)
      st.deadline = st.start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(*o.duration_s));
    st.samples.reserve(o.requests ? *o.requests : 1024);
    if (open_loop) {
      st.slot_freed.emplace(io);
      st.senders = 1;
      net::co_spawn(io, open_generator(st, level), net::detached);
    } else {
      const auto workers = static_cast<std::size_t>(level);
      st.senders = workers;
      for (std::size_t w = 0; w < workers; ++w) net::co_spawn(io, closed_worker(st), net::detached);
    }
    bool running = true;
    net::steady_timer tick(io);
    std::function<void(boost::system::error_code)> on_tick = [&](boost::system::error_code ec) {
      if (ec || !running) return;
      pool.watch_idle();
      if (on_progress)
        on_progress({model, level, open_loop, st.samples.size(), st.errors, st.in_flight, st.output_tokens,
                     seconds(clock_type::now() - st.start)});
      tick.expires_after(std::chrono::milliseconds(250));
      tick.async_wait(on_tick);
    };
    tick.expires_after(std::chrono::milliseconds(250));
    tick.async_wait(on_tick);
    while (st.senders > 0 || st.in_flight > 0) io.run_one();
    running = false;
    tick.cancel();
    if (st.slot_freed) st.slot_freed->cancel();
    io.poll();
    run_result r;
    r.model = model;
    r.open_loop = open_loop;
    r.level = level;
    r.wall_s = seconds(clock_type::now() - st.start);
    r.cpu_s = cpu_seconds() - cpu_at_start;
    if (!st.samples.empty()) {
      double first = st.samples.front().start, last = 0;
      for (const auto& s : st.samples) {
        first = std::min(first, s.start);
        last = std::max(last, s.start + s.e2e);
      }
      r.wall_s = last - first;
    }
    r.samples = std::move(st.samples);
    return r;
  }
};

runner::runner(const bench_options& o, std::vector<prompt> prompts, const tokenizer::tokenizer* tok)
    : impl_(std::make_unique<impl>(o, std::move(prompts), tok)) {}
runner::~runner() = default;

run_result runner::run(const std::string& model, double level, const std::function<void(const progress&)>& on_progress) {
  return impl_->run(model, level, on_progress);
}

}  // namespace tollgate::bench
