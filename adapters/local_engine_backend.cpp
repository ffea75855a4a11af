#include "adapters/local_engine_backend.hpp"

#include <boost/asio/post.hpp>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <mutex>

#include "adapters/event_mailbox.hpp"
#include "adapters/local_engine_request.hpp"
#include "protocol/errors.hpp"

namespace tollgate::adapters {

namespace net = boost::asio;
using json = nlohmann::json;

namespace {

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

/// An engine failure, as OpenAI's error body names it.
protocol::api_error engine_error(std::string message, std::string code = "engine_error", int status = 500) {
  return {status, "server_error", std::move(code), std::move(message), {}};
}

/// Length of the longest prefix of s that ends on a whole UTF-8 character.
std::size_t utf8_complete(std::string_view s) {
  std::size_t i = s.size();
  // Look back at most 3 bytes for the start of a character that is cut off.
  for (std::size_t back = 1; back <= 4 && back <= s.size(); ++back) {
    const auto c = static_cast<unsigned char>(s[s.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: keep looking for the lead
    std::size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    if (need > back) i = s.size() - back;
    break;
  }
  return i;
}

}  // namespace

/// Counts of one configured backend, shared with the callbacks of its jobs.
struct local_engine_backend::counters {
  std::atomic<std::uint64_t> prompt_tokens{0}, generated_tokens{0}, finished{0}, cancelled{0}, failed{0}, overloaded{0};
};

/// One request's state, shared by the worker's call and the engine's callbacks.
struct job {
  job_spec spec;
  std::string id;
  std::int64_t created = 0;
  std::shared_ptr<local_engine_backend::counters> counts;

  // Engine thread only (the callbacks).
  std::vector<std::int32_t> generated;
  std::string pending;  ///< bytes decoded but not yet sent (a stop string may start in them)
  std::string text;     ///< everything sent, for the non-stream answer
  bool head_sent = false;
  bool done = false;    ///< the answer's end is sent
  /// A token ended the answer (EOS or a stop string): the end goes out from on_end, once
  /// the engine has released the sequence, so that a client that reads the end and then the
  /// engine's stats finds its KV blocks free.
  bool stopped = false;

  // Shared, under mutex.
  std::mutex mutex;
  bool alive = true;  ///< false once the call is gone: nothing more is posted
  net::io_context* io = nullptr;
  /// The call's mailbox on the worker: the engine thread reaches it only by posting to the
  /// worker's io_context and locking this weak pointer there.
  std::weak_ptr<event_mailbox> mailbox;
  std::shared_ptr<engine_port::stream> stream;
  std::atomic<bool> cancelled{false};

  void push(call_event ev) {
    std::lock_guard lock(mutex);
    if (!alive) return;
    net::post(*io, [m = mailbox, ev = std::move(ev)]() mutable {
      auto p = m.lock();
      if (!p || p->ended()) return;  // the call is gone, or cancelled or timed out: nobody reads it
      const bool last = ev.type == call_event::kind::end || ev.type == call_event::kind::failed;
      if (last) {
        p->end(std::move(ev));
      } else {
        p->push(std::move(ev));
      }
    });
  }
};

namespace {

/// Turns one job's tokens into OpenAI-shaped events: the engine's callbacks end up here.
struct answer {
  /// A new token. false when the sequence should end (EOS or a stop string).
  static bool on_token(job& j, const engine_port& engine, std::int32_t token) {
    if (j.done || j.cancelled || j.stopped) return false;
    if (!j.head_sent) {
      send_head(j);
      j.counts->prompt_tokens.fetch_add(j.spec.prompt.size(), std::memory_order_relaxed);
    }
    j.counts->generated_tokens.fetch_add(1, std::memory_order_relaxed);
    j.generated.push_back(token);
    const auto eos = engine.eos();
    if (eos && token == *eos && !j.spec.ignore_eos) {
      j.stopped = true;
      return false;
    }
    j.pending += engine.token_bytes(token);
    if (auto cut = stop_at(j)) {
      j.pending.resize(*cut);
      j.stopped = true;
      return false;
    }
    send_text(j, safe_length(j));
    return true;
  }

  /// The engine ended the sequence.
  static void on_end(job& j, engine_port::end_reason why, const std::string& message) {
    if (j.done) return;
    if (j.cancelled) {
      j.counts->cancelled.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (j.stopped) {  // the answer was whole at its last token, whatever ended the sequence since
      finish(j, "stop");
      return;
    }
    if (why == engine_port::end_reason::overloaded && !j.head_sent) {
      j.counts->overloaded.fetch_add(1, std::memory_order_relaxed);
      refuse(j, message);
      return;
    }
    if (why != engine_port::end_reason::done) {
      j.counts->failed.fetch_add(1, std::memory_order_relaxed);
      fail(j, "the local engine failed: " + message);
      return;
    }
    if (!j.head_sent) send_head(j);
    finish(j, "length");
  }

  /// Where the first stop string starts in the unsent text, if one is there.
  static std::optional<std::size_t> stop_at(const job& j) {
    std::optional<std::size_t> first;
    for (const auto& s : j.spec.stop) {
      auto pos = j.pending.find(s);
      if (pos != std::string::npos && (!first || pos < *first)) first = pos;
    }
    return first;
  }

  /// How much of the unsent text can go now: not a tail that may begin a stop string, and not
  /// half a UTF-8 character.
  static std::size_t safe_length(const job& j) {
    std::size_t keep = 0;
    for (const auto& s : j.spec.stop) {
      for (std::size_t n = std::min(s.size() - 1, j.pending.size()); n > keep; --n) {
        if (j.pending.compare(j.pending.size() - n, n, s, 0, n) == 0) {
          keep = n;
          break;
        }
      }
    }
    return utf8_complete(std::string_view(j.pending).substr(0, j.pending.size() - keep));
  }

  static void send_head(job& j) {
    call_event head;
    head.type = call_event::kind::head;
    head.head.status = 200;
    head.head.headers.emplace_back("content-type", j.spec.stream ? "text/event-stream" : "application/json");
    j.push(std::move(head));
    j.head_sent = true;
    if (j.spec.stream && j.spec.chat) {
      send_chunk(j, json::array({{{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"finish_reason", nullptr}}}));
    }
  }

  static void send_chunk(job& j, json choices, const json* usage = nullptr) {
    json chunk = {{"id", j.id}, {"object", j.spec.chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", j.created}, {"model", j.spec.model}, {"choices", std::move(choices)}};
    if (usage != nullptr) chunk["usage"] = *usage;
    call_event ev;
    ev.type = call_event::kind::data;
    ev.data = "data: " + dump(chunk) + "\n\n";
    j.push(std::move(ev));
  }

  static void send_text(job& j, std::size_t n) {
    if (n == 0) return;
    const std::string piece = j.pending.substr(0, n);
    j.pending.erase(0, n);
    j.text += piece;
    if (!j.spec.stream) return;
    json choice = j.spec.chat ? json{{"index", 0}, {"delta", {{"content", piece}}}, {"finish_reason", nullptr}}
                              : json{{"index", 0}, {"text", piece}, {"finish_reason", nullptr}};
    send_chunk(j, json::array({std::move(choice)}));
  }

  static void finish(job& j, const char* reason) {
    j.done = true;
    j.counts->finished.fetch_add(1, std::memory_order_relaxed);
    send_text(j, j.pending.size());  // a dangling half character is sent as U+FFFD by dump()
    const json usage = {{"prompt_tokens", j.spec.prompt.size()},
                        {"completion_tokens", j.generated.size()},
                        {"total_tokens", j.spec.prompt.size() + j.generated.size()}};
    call_event ev;
    ev.type = call_event::kind::data;
    if (j.spec.stream) {
      json last = j.spec.chat ? json{{"index", 0}, {"delta", json::object()}, {"finish_reason", reason}}
                              : json{{"index", 0}, {"text", ""}, {"finish_reason", reason}};
      send_chunk(j, json::array({std::move(last)}));
      if (j.spec.include_usage) send_chunk(j, json::array(), &usage);
      ev.data = "data: [DONE]\n\n";
    } else {
      json choice = j.spec.chat
                        ? json{{"index", 0}, {"message", {{"role", "assistant"}, {"content", j.text}}}, {"finish_reason", reason}}
                        : json{{"index", 0}, {"text", j.text}, {"finish_reason", reason}};
      ev.data = dump(json{{"id", j.id}, {"object", j.spec.chat ? "chat.completion" : "text_completion"},
                          {"created", j.created}, {"model", j.spec.model}, {"choices", json::array({std::move(choice)})},
                          {"usage", usage}});
    }
    j.push(std::move(ev));
    call_event end;
    end.type = call_event::kind::end;
    j.push(std::move(end));
  }

  /// 503 overloaded with Retry-After: the request never started (see engine_admission).
  static void refuse(job& j, const std::string& message) {
    j.done = true;
    call_event head;
    head.type = call_event::kind::head;
    head.head.status = 503;
    head.head.headers.emplace_back("content-type", "application/json");
    head.head.headers.emplace_back("retry-after", "1");
    j.push(std::move(head));
    call_event body;
    body.type = call_event::kind::data;
    body.data = engine_error("the local engine is overloaded: " + message + "; try again shortly", "overloaded", 503).body();
    j.push(std::move(body));
    call_event end;
    end.type = call_event::kind::end;
    j.push(std::move(end));
  }

  static void fail(job& j, const std::string& message) {
    j.done = true;
    if (!j.head_sent) {
      call_event head;
      head.type = call_event::kind::head;
      head.head.status = 500;
      head.head.headers.emplace_back("content-type", "application/json");
      j.push(std::move(head));
      call_event body;
      body.type = call_event::kind::data;
      body.data = engine_error(message).body();
      j.push(std::move(body));
      call_event end;
      end.type = call_event::kind::end;
      j.push(std::move(end));
      return;
    }
    call_event ev;
    ev.type = call_event::kind::failed;
    ev.error = failure::broken;
    ev.message = message;
    j.push(std::move(ev));
  }
};

class engine_call final : public call, mailbox_producer {
 public:
  engine_call(std::shared_ptr<job> j, io_refs refs, const config::timeouts_config& timeouts)
      : job_(std::move(j)), mailbox_(std::make_shared<event_mailbox>(refs.io, timeouts, refs.mailboxes)) {
    std::lock_guard lock(job_->mutex);
    job_->io = &refs.io;
    job_->mailbox = mailbox_;
  }
  /// An answer made on the spot (a bad request, a full queue), with no engine work.
  engine_call(const protocol::api_error& error, io_refs refs, const config::timeouts_config& timeouts,
              const char* retry_after = nullptr)
      : mailbox_(std::make_shared<event_mailbox>(refs.io, timeouts, refs.mailboxes)) {
    call_event head;
    head.type = call_event::kind::head;
    head.head.status = error.status;
    head.head.headers.emplace_back("content-type", "application/json");
    if (retry_after != nullptr) head.head.headers.emplace_back("retry-after", retry_after);
    mailbox_->push(std::move(head));
    call_event data;
    data.type = call_event::kind::data;
    data.data = error.body();
    mailbox_->push(std::move(data));
    call_event end;
    end.type = call_event::kind::end;
    mailbox_->stop(std::move(end));
  }
  ~engine_call() override { detach(); }

  bool ready() const override { return mailbox_->ready(); }
  void on_ready(std::function<void()> hook) override { mailbox_->on_ready(std::move(hook)); }

  void cancel() override {
    if (mailbox_->ended()) return;
    detach();
    mailbox_->clear();  // nobody will read them
    call_event ev;
    ev.type = call_event::kind::failed;
    ev.error = failure::cancelled;
    ev.message = "the client went away";
    mailbox_->end(std::move(ev));
  }

  net::awaitable<call_event> next() override { return mailbox_->next(*this); }
  bool try_next(call_event& ev) override { return mailbox_->try_next(*this, ev); }

 private:
  void on_silence(bool seen_head) override {
    detach();
    call_event ev;
    ev.type = call_event::kind::failed;
    ev.error = failure::timeout;
    ev.message = seen_head ? "the local engine sent nothing within the idle timeout"
                           : "the local engine did not start within the first-token timeout";
    mailbox_->stop(std::move(ev));
  }

  /// Tells the engine to drop the sequence (a finished one is left alone) and to post nothing
  /// more here.
  void detach() {
    if (!job_) return;
    std::shared_ptr<engine_port::stream> stream;
    {
      std::lock_guard lock(job_->mutex);
      if (!job_->alive) return;
      job_->alive = false;
      stream = job_->stream;
    }
    job_->cancelled = true;
    if (stream) stream->cancel();
  }

  std::shared_ptr<job> job_;
  std::shared_ptr<event_mailbox> mailbox_;  // shared: the engine's posts hold it weakly
};

}  // namespace

local_engine_backend::local_engine_backend(config::backend_config cfg, std::shared_ptr<const engine_port> engine,
                                           std::string load_error)
    : cfg_(std::move(cfg)), engine_(std::move(engine)), load_error_(std::move(load_error)),
      counters_(std::make_shared<counters>()) {}

local_engine_backend::~local_engine_backend() = default;

std::optional<engine_stats> local_engine_backend::stats() const {
  engine_stats st;
  if (!engine_) return st;
  st = engine_->stats();
  const auto& c = *counters_;
  st.prompt_tokens = c.prompt_tokens.load(std::memory_order_relaxed);
  st.generated_tokens = c.generated_tokens.load(std::memory_order_relaxed);
  st.finished = c.finished.load(std::memory_order_relaxed);
  st.cancelled = c.cancelled.load(std::memory_order_relaxed);
  st.failed = c.failed.load(std::memory_order_relaxed);
  st.overloaded = c.overloaded.load(std::memory_order_relaxed);
  return st;
}

std::unique_ptr<call> local_engine_backend::start(upstream_request request, io_refs refs) const {
  if (!engine_) {
    return std::make_unique<engine_call>(
        engine_error("the local engine could not load its checkpoint: " + load_error_, "engine_unavailable", 503), refs, cfg_.timeouts);
  }
  parse_result parsed;
  request.join_body();
  try {
    parsed = parse_job(request, *engine_);
  } catch (const std::invalid_argument& e) {  // the template or tokenizer refused the input
    return std::make_unique<engine_call>(protocol::bad_request(e.what()), refs, cfg_.timeouts);
  } catch (const std::exception& e) {
    return std::make_unique<engine_call>(engine_error(std::string("the local engine failed: ") + e.what()), refs, cfg_.timeouts);
  }
  if (!parsed.spec) return std::make_unique<engine_call>(parsed.error, refs, cfg_.timeouts);
  auto j = std::make_shared<job>();
  j->spec = std::move(*parsed.spec);
  j->counts = counters_;
  j->id = std::string(j->spec.chat ? "chatcmpl-" : "cmpl-") + std::string(request.request_id.empty() ? "local" : request.request_id);
  j->created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  auto c = std::make_unique<engine_call>(j, refs, cfg_.timeouts);
  engine_port::callbacks cb;
  // The callbacks hold the job, never the engine: the engine's thread must not end up owning it.
  const engine_port* engine = engine_.get();
  cb.on_token = [j, engine](std::int32_t token) { return answer::on_token(*j, *engine, token); };
  cb.on_end = [j](engine_port::end_reason why, const std::string& message) { answer::on_end(*j, why, message); };
  // The queue's limits: max_batch sequences run, max_queue more may wait (shed by priority), each
  // at most queue_timeout when the backend sets one.
  engine_admission admission;
  admission.priority = request.priority;
  admission.max_queue = cfg_.max_queue;
  if (cfg_.queue_timeout_set) {
    admission.queue_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(cfg_.queue_timeout);
  }
  try {
    auto stream = engine_->submit(j->spec.prompt, j->spec.sampling, j->spec.max_tokens, std::move(cb), admission);
    std::lock_guard lock(j->mutex);
    j->stream = std::move(stream);
  } catch (const engine_queue_full& e) {
    counters_->overloaded.fetch_add(1, std::memory_order_relaxed);
    return std::make_unique<engine_call>(
        engine_error(std::string("the local engine is overloaded: ") + e.what() + "; try again shortly", "overloaded", 503),
        refs, cfg_.timeouts, "1");
  } catch (const std::invalid_argument& e) {
    return std::make_unique<engine_call>(protocol::bad_request(e.what()), refs, cfg_.timeouts);
  } catch (const std::exception& e) {
    return std::make_unique<engine_call>(engine_error(std::string("the local engine failed: ") + e.what()), refs, cfg_.timeouts);
  }
  return c;
}

}  // namespace tollgate::adapters
