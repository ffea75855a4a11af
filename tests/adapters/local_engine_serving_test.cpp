// The local engine's serving layer over a scripted model: the events a request gets (stream and
// not, chat and completion), usage, stop strings, max_tokens, bad requests, cancellation, and
// sequences taking turns. The real model behind it is tested in tests/engine/ and end to end.
#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <nlohmann/json.hpp>

#include <atomic>
#include <mutex>
#include <thread>

#include "adapters/curl_multi.hpp"
#include "adapters/upstream_pool.hpp"
#include "adapters/local_engine_backend.hpp"
#include "local_engine/engine.hpp"
#include "local_engine/forward_backend.hpp"

using namespace tollgate::adapters;
namespace eng = tollgate::engine;
using nlohmann::json;
namespace net = boost::asio;

namespace {

/// A forward backend whose sequences write tokens from a script, then EOS: the token drawn n-th is
/// n + 1 while words last, then 0. It logs which sequences (by prompt length) each forward held.
class scripted_backend final : public eng::forward_backend {
 public:
  scripted_backend(std::size_t words, std::chrono::microseconds step_time, std::mutex& log_mutex,
                   std::vector<std::vector<int>>& forwards, const std::atomic<int>& fail_prompt, const std::atomic<int>& fail_draw)
      : words_(words), step_time_(step_time), log_mutex_(log_mutex), forwards_(forwards), fail_prompt_(fail_prompt),
        fail_draw_(fail_draw) {}
  eng::kv_pool_shape kv_pool() const override { return {16, 1024, 16 * 4}; }
  void forward(std::span<const eng::batch_item> batch, eng::batch_result& out) override {
    std::this_thread::sleep_for(step_time_);  // a model takes time per step
    out.tokens.assign(batch.size(), -1);
    std::vector<int> ids;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const auto& it = batch[i];
      if (!it.sample) continue;
      // Positions known after this item: the prompt and the `draw` tokens drawn before.
      ids.push_back(static_cast<int>(it.start + it.tokens.size() - it.draw));
      if (ids.back() == fail_prompt_.load() && static_cast<int>(it.draw) == fail_draw_.load())
        throw std::runtime_error("scripted failure at draw " + std::to_string(it.draw));
      out.tokens[i] = it.draw < words_ ? static_cast<std::int32_t>(it.draw + 1) : 0;
    }
    std::lock_guard lock(log_mutex_);
    forwards_.push_back(std::move(ids));
  }
  std::string device() const override { return "script"; }
  std::string describe() const override { return "scripted"; }

 private:
  std::size_t words_;
  std::chrono::microseconds step_time_;
  std::mutex& log_mutex_;
  std::vector<std::vector<int>>& forwards_;
  const std::atomic<int>& fail_prompt_;
  const std::atomic<int>& fail_draw_;
};

/// A model whose token i is the text "w<i> " and which writes tokens from a script, then EOS.
/// Token ids: 0 = EOS, 1..n = the words; the prompt's ids are its bytes. Its sequences run on the
/// engine's real scheduler over a scripted backend.
class scripted_engine final : public engine_port {
 public:
  explicit scripted_engine(std::vector<std::string> words, std::size_t max_batch = 8,
                           std::chrono::microseconds step_time = std::chrono::microseconds(0))
      : words_(std::move(words)) {
    eng::model_config c;
    c.vocab_size = 256;
    c.max_position_embeddings = 64;
    c.eos_token_ids = {0};
    model_ = eng::make_model(c, std::make_unique<scripted_backend>(words_.size(), step_time, log_mutex, forwards, fail_prompt,
                                                                   fail_draw),
                             nullptr,
                             eng::scheduler_options{max_batch, 2048}, "scripted");
  }
  std::string model_name() const override { return "scripted"; }
  bool has_tokenizer() const override { return true; }
  std::vector<std::int32_t> encode(std::string_view text) const override {
    return std::vector<std::int32_t>(text.begin(), text.end());
  }
  std::vector<std::int32_t> chat_prompt(const std::vector<std::pair<std::string, std::string>>& m) const override {
    std::string all;
    for (const auto& [role, content] : m) all += "<" + role + ">" + content;
    return encode(all);
  }
  std::string token_bytes(std::int32_t id) const override {
    return id >= 1 && id <= static_cast<std::int32_t>(words_.size()) ? words_[id - 1] : std::string();
  }
  std::optional<std::int32_t> eos() const override { return 0; }
  std::size_t max_positions() const override { return 64; }
  std::size_t vocab_size() const override { return 256; }

  struct handle final : stream {
    explicit handle(std::shared_ptr<eng::stream> s) : s_(std::move(s)) {}
    void cancel() override { s_->cancel(); }
    std::shared_ptr<eng::stream> s_;
  };
  std::shared_ptr<stream> submit(std::vector<std::int32_t> prompt, const engine_sampling&, std::size_t max_tokens,
                                 callbacks cb, const engine_admission& admission) const override {
    eng::stream_callbacks ec;
    ec.on_token = std::move(cb.on_token);
    ec.on_end = [end = std::move(cb.on_end)](eng::stream_end why, const std::string& msg) {
      end(why == eng::stream_end::failed       ? end_reason::failed
          : why == eng::stream_end::overloaded ? end_reason::overloaded
                                               : end_reason::done,
          msg);
    };
    eng::queue_options q;
    q.priority = admission.priority;
    q.max_queue = admission.max_queue;
    q.queue_timeout = admission.queue_timeout;
    try {
      return std::make_shared<handle>(eng::submit(model_, std::move(prompt), eng::sampling{}, max_tokens, std::move(ec), q));
    } catch (const eng::queue_full& e) {
      throw engine_queue_full(e.what());
    }
  }
  engine_stats stats() const override {
    const auto e = eng::stats(*model_);
    engine_stats st;
    st.running = e.running;
    st.queued = e.waiting;
    st.kv_blocks_used = e.kv_blocks_used;
    st.kv_blocks_free = e.kv_blocks_free;
    st.batch_sequences = e.last_batch_sequences;
    return st;
  }

  mutable std::mutex log_mutex;
  std::vector<std::vector<int>> forwards;  ///< per forward: the sequences (by prompt length) that drew a token
  std::atomic<int> fail_prompt{-1}, fail_draw{-1};  ///< the forward that draws this token of this sequence throws

 private:
  std::vector<std::string> words_;
  std::shared_ptr<const eng::model> model_;
};

tollgate::config::backend_config engine_config(unsigned max_batch = 8) {
  tollgate::config::backend_config c;
  c.name = "local";
  auto& engine = c.settings.emplace<tollgate::config::local_engine_config>();
  engine.checkpoint = "scripted";
  engine.max_batch = max_batch;
  c.timeouts.first_token = std::chrono::seconds(5);
  c.timeouts.idle = std::chrono::seconds(5);
  return c;
}

struct collected {
  int status = 0;
  std::string content_type;
  std::string retry_after;
  std::string body;
  std::vector<std::string> pieces;
  call_event::kind last = call_event::kind::head;
  failure error = failure::none;
};

/// Runs requests on one io_context until every one has ended.
std::vector<collected> run(const local_engine_backend& backend, const std::vector<upstream_request>& requests,
                           std::function<bool(std::size_t, const call_event&)> keep_going = {}) {
  net::io_context io;
  curl_multi curl(io);
  upstream_pool pool(io);
  std::vector<collected> out(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    net::co_spawn(
        io,
        [&, i]() -> net::awaitable<void> {
          auto c = backend.start(requests[i], {io, curl, pool});
          for (;;) {
            call_event ev = co_await c->next();
            out[i].last = ev.type;
            if (ev.type == call_event::kind::head) {
              out[i].status = ev.head.status;
              if (auto t = ev.head.find("content-type")) out[i].content_type = *t;
              if (auto t = ev.head.find("retry-after")) out[i].retry_after = *t;
            } else if (ev.type == call_event::kind::data) {
              out[i].body += ev.data;
              out[i].pieces.push_back(ev.data);
            } else {
              out[i].error = ev.error;
              break;
            }
            if (keep_going && !keep_going(i, ev)) {
              c->cancel();
              call_event after = co_await c->next();
              out[i].last = after.type;
              out[i].error = after.error;
              break;
            }
          }
        },
        net::detached);
  }
  io.run();
  return out;
}

upstream_request chat(const std::string& extra, const std::string& content = "hi") {
  return {"/chat/completions",
          R"({"model":"m","messages":[{"role":"user","content":")" + content + R"("}])" + extra + "}", false, "r1"};
}

/// The text and finish reason of an SSE answer.
std::pair<std::string, std::string> read_stream(const std::string& body, json* usage = nullptr) {
  std::string text, reason;
  std::size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    auto end = body.find("\n\n", pos);
    const std::string data = body.substr(pos + 6, end - pos - 6);
    pos = end;
    if (data == "[DONE]") break;
    auto chunk = json::parse(data);
    if (chunk.contains("usage") && usage != nullptr) *usage = chunk["usage"];
    for (const auto& ch : chunk["choices"]) {
      if (ch.contains("delta")) text += ch["delta"].value("content", "");
      if (ch.contains("text")) text += ch["text"].get<std::string>();
      if (!ch["finish_reason"].is_null()) reason = ch["finish_reason"];
    }
  }
  return {text, reason};
}

}  // namespace

TEST_CASE("local engine serving: a whole chat answer with usage", "[local_engine]") {
  auto engine = std::make_shared<scripted_engine>(std::vector<std::string>{"Hello", ",", " world", "!"});
  local_engine_backend backend(engine_config(), engine);
  auto r = run(backend, {chat("")});
  REQUIRE(r[0].status == 200);
  CHECK(r[0].content_type == "application/json");
  CHECK(r[0].last == call_event::kind::end);
  auto j = json::parse(r[0].body);
  CHECK(j["object"] == "chat.completion");
  CHECK(j["choices"][0]["message"]["content"] == "Hello, world!");
  CHECK(j["choices"][0]["finish_reason"] == "stop");
  CHECK(j["usage"]["prompt_tokens"] == std::string("<user>hi").size());
  CHECK(j["usage"]["completion_tokens"] == 5);  // four words and the end-of-sequence token
  CHECK(j["id"] == "chatcmpl-r1");
}

TEST_CASE("local engine serving: streams, stop strings, max_tokens and completions", "[local_engine]") {
  auto engine = std::make_shared<scripted_engine>(std::vector<std::string>{"one", " two", " th", "ree", " four"});
  local_engine_backend backend(engine_config(), engine);
  auto r = run(backend, {chat(R"(,"stream":true,"stream_options":{"include_usage":true})"),
                         chat(R"(,"stop":["ree f"])"),
                         chat(R"(,"stream":true,"stop":"thr")"),
                         chat(R"(,"max_tokens":2)"),
                         {"/completions", R"({"model":"m","prompt":[1,2,3],"stream":true})", true, "r2"}});
  json usage;
  auto [text, reason] = read_stream(r[0].body, &usage);
  CHECK(r[0].content_type == "text/event-stream");
  CHECK(text == "one two three four");
  CHECK(reason == "stop");
  CHECK(usage["completion_tokens"] == 6);
  CHECK(r[0].body.ends_with("data: [DONE]\n\n"));
  CHECK(r[0].pieces.size() >= 7);  // role, five words, finish, usage, done: one event per token

  auto stopped = json::parse(r[1].body);
  CHECK(stopped["choices"][0]["message"]["content"] == "one two th");  // the stop string spans two tokens
  CHECK(stopped["choices"][0]["finish_reason"] == "stop");

  auto [held, why] = read_stream(r[2].body);
  CHECK(held == "one two ");  // " th" was held back until "ree" showed it was the stop string
  CHECK(why == "stop");

  auto cut = json::parse(r[3].body);
  CHECK(cut["choices"][0]["message"]["content"] == "one two");
  CHECK(cut["choices"][0]["finish_reason"] == "length");
  CHECK(cut["usage"]["completion_tokens"] == 2);

  auto [completion, creason] = read_stream(r[4].body);
  CHECK(completion == "one two three four");
  CHECK(r[4].body.find("\"object\":\"text_completion\"") != std::string::npos);
}

TEST_CASE("local engine serving: bad requests are OpenAI-shaped errors", "[local_engine]") {
  auto engine = std::make_shared<scripted_engine>(std::vector<std::string>{"x"});
  local_engine_backend backend(engine_config(), engine);
  auto r = run(backend, {chat(R"(,"temperature":5)"), chat(R"(,"n":2)"), {"/chat/completions", "{nope", false, ""},
                         {"/embeddings", R"({"input":"x"})", false, ""},
                         {"/completions", R"({"prompt":[1,999]})", false, ""},
                         chat("", std::string(80, 'a'))});
  for (std::size_t i = 0; i < r.size(); ++i) {
    INFO("request " << i);
    CHECK((r[i].status == 400 || r[i].status == 404));
    CHECK(json::parse(r[i].body)["error"]["message"].get<std::string>().size() > 5);
  }
  CHECK(json::parse(r[0].body)["error"]["param"] == "temperature");
  CHECK(r[3].status == 404);
  CHECK(json::parse(r[5].body)["error"]["code"] == "context_length_exceeded");

  // What the engine cannot honour is refused by name, never ignored: tools, JSON modes, tool turns.
  r = run(backend, {chat(R"(,"tools":[{"type":"function","function":{"name":"f"}}])"),
                    chat(R"(,"response_format":{"type":"json_object"})"),
                    {"/chat/completions", R"({"messages":[{"role":"tool","content":"42"}]})", false, ""},
                    chat(R"(,"response_format":{"type":"text"},"tools":[])")});
  CHECK(r[0].status == 400);
  CHECK(json::parse(r[0].body)["error"]["param"] == "tools");
  CHECK(r[1].status == 400);
  CHECK(json::parse(r[1].body)["error"]["param"] == "response_format");
  CHECK(r[2].status == 400);
  CHECK(json::parse(r[2].body)["error"]["message"].get<std::string>().find("'tool'") != std::string::npos);
  CHECK(r[3].status == 200);

  local_engine_backend broken(engine_config(), nullptr, "no config.json in /nowhere");
  auto b = run(broken, {chat("")});
  CHECK(b[0].status == 503);
  CHECK(b[0].body.find("no config.json") != std::string::npos);
}

TEST_CASE("local engine serving: sequences share one forward, and a cancelled one stops at once", "[local_engine]") {
  std::vector<std::string> words(30, " w");
  auto engine = std::make_shared<scripted_engine>(words, 2, std::chrono::milliseconds(2));
  local_engine_backend backend(engine_config(2), engine);
  // Prompts of different lengths tell the sequences apart in the forward log.
  auto r = run(backend, {chat(R"(,"stream":true)", "a"), chat(R"(,"stream":true)", "bb"), chat(R"(,"stream":true)", "ccc")},
               [](std::size_t i, const call_event& ev) {
                 // The second client leaves after its third event.
                 static std::atomic<int> seen{0};
                 return !(i == 1 && ev.type == call_event::kind::data && ++seen >= 3);
               });
  CHECK(read_stream(r[0].body).first.size() == 60);
  CHECK(r[1].last == call_event::kind::failed);
  CHECK(r[1].error == failure::cancelled);
  CHECK(read_stream(r[2].body).first.size() == 60);
  // The engine thread retires the cancelled sequence at its next step, which may come after the
  // answers are over: wait for that (bounded) before reading what it holds.
  auto st = backend.stats();
  for (int i = 0; i < 500 && st && (st->running != 0 || st->cancelled + st->finished < 3); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    st = backend.stats();
  }
  std::lock_guard lock(engine->log_mutex);
  const auto& fw = engine->forwards;
  const int a = 7, b = 8, c = 9;  // "<user>" plus 1, 2, 3 bytes
  auto holds = [&](std::size_t i, int id) { return std::find(fw[i].begin(), fw[i].end(), id) != fw[i].end(); };
  auto count = [&](int id) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < fw.size(); ++i) n += holds(i, id);
    return n;
  };
  auto first = [&](int id) {
    for (std::size_t i = 0; i < fw.size(); ++i)
      if (holds(i, id)) return i;
    return fw.size();
  };
  auto last = [&](int id) {
    for (std::size_t i = fw.size(); i-- > 0;)
      if (holds(i, id)) return i;
    return fw.size();
  };
  REQUIRE(count(a) == 31);  // 30 words and the end
  REQUIRE(count(c) == 31);
  CHECK(count(b) >= 2);  // its client read the role chunk and two tokens
  CHECK(count(b) < 31);  // cancelled well before its 31 tokens
  // max_batch 2: a and b draw their tokens in the same forwards while both run...
  std::size_t shared = 0;
  for (std::size_t i = 0; i < fw.size(); ++i) shared += holds(i, a) && holds(i, b);
  CHECK(shared + 1 >= std::min(count(b), count(a)));
  for (const auto& f : fw) CHECK(f.size() <= 2);
  // ...and c starts only when one of them has left.
  CHECK(first(c) > std::min(last(a), last(b)));
  // Nothing is held once every answer is over.
  REQUIRE(st);
  CHECK(st->kv_blocks_used == 0);
  CHECK(st->running == 0);
  CHECK(st->cancelled == 1);
  CHECK(st->finished == 2);
}

TEST_CASE("local engine serving: a full queue answers 503, a failed forward 500 or a broken stream", "[local_engine]") {
  std::vector<std::string> words(20, " w");
  auto engine = std::make_shared<scripted_engine>(words, 1, std::chrono::milliseconds(2));
  auto cfg = engine_config(1);
  cfg.max_queue = 1;
  local_engine_backend backend(cfg, engine);
  // One runs, one waits, the third finds the queue full.
  auto r = run(backend, {chat("", "a"), chat("", "bb"), chat("", "ccc")});
  CHECK(r[0].status == 200);
  CHECK(r[1].status == 200);
  CHECK(r[2].status == 503);
  CHECK(r[2].retry_after == "1");
  CHECK(json::parse(r[2].body)["error"]["code"] == "overloaded");
  // Once they are done the queue takes requests again.
  r = run(backend, {chat("", "dddd")});
  CHECK(r[0].status == 200);

  // The forward fails at the prefill: a 500 in the OpenAI shape.
  engine->fail_prompt = 7;  // "<user>a"
  engine->fail_draw = 0;
  r = run(backend, {chat("", "a")});
  CHECK(r[0].status == 500);
  CHECK(json::parse(r[0].body)["error"]["code"] == "engine_error");
  CHECK(json::parse(r[0].body)["error"]["message"].get<std::string>().find("scripted failure at draw 0") != std::string::npos);
  // After the head, a stream breaks instead.
  engine->fail_draw = 5;
  r = run(backend, {chat(R"(,"stream":true)", "a")});
  CHECK(r[0].status == 200);
  CHECK(r[0].last == call_event::kind::failed);
  CHECK(r[0].error == failure::broken);
  const auto st = backend.stats();
  REQUIRE(st);
  CHECK(st->failed == 2);
  CHECK(st->kv_blocks_used == 0);
}

TEST_CASE("local engine serving: a higher priority displaces a waiting low one, and queue_timeout refuses, both 503 "
          "with Retry-After",
          "[local_engine][priority]") {
  std::vector<std::string> words(20, " w");
  // Steps of 20 ms: a 21-token answer holds the one place for about 400 ms.
  auto engine = std::make_shared<scripted_engine>(words, 1, std::chrono::milliseconds(20));
  auto with = [](upstream_request r, int priority) {
    r.priority = priority;
    return r;
  };
  {
    auto cfg = engine_config(1);
    cfg.max_queue = 1;
    local_engine_backend backend(cfg, engine);
    // One runs (or waits a moment for the engine to take it), one low one waits; the high one
    // finds the queue full and displaces a low one that has not started.
    auto r = run(backend, {with(chat("", "a"), 0), with(chat("", "bb"), 0), with(chat("", "ccc"), 2)});
    CHECK(r[2].status == 200);
    const bool first_displaced = r[0].status == 503;
    const auto& lost = r[first_displaced ? 0 : 1];
    CHECK(r[first_displaced ? 1 : 0].status == 200);
    REQUIRE(lost.status == 503);
    CHECK(lost.retry_after == "1");
    CHECK(json::parse(lost.body)["error"]["code"] == "overloaded");
    CHECK_THAT(json::parse(lost.body)["error"]["message"].get<std::string>(), Catch::Matchers::Contains("higher priority"));
    // Equal priorities never displace: the newcomer is refused.
    r = run(backend, {with(chat("", "a"), 1), with(chat("", "bb"), 1), with(chat("", "ccc"), 1)});
    CHECK(r[0].status == 200);
    CHECK(r[1].status == 200);
    CHECK(r[2].status == 503);
    CHECK(r[2].retry_after == "1");
    CHECK_THAT(json::parse(r[2].body)["error"]["message"].get<std::string>(), Catch::Matchers::Contains("queue is full"));
    const auto st = backend.stats();
    REQUIRE(st);
    CHECK(st->overloaded == 2);
    CHECK(st->kv_blocks_used == 0);
  }
  {
    auto cfg = engine_config(1);
    cfg.queue_timeout = std::chrono::milliseconds(100);
    cfg.queue_timeout_set = true;
    local_engine_backend backend(cfg, engine);
    auto r = run(backend, {chat("", "a"), chat("", "bb")});
    CHECK(r[0].status == 200);
    CHECK(r[1].status == 503);
    CHECK(r[1].retry_after == "1");
    CHECK(json::parse(r[1].body)["error"]["code"] == "overloaded");
    CHECK_THAT(json::parse(r[1].body)["error"]["message"].get<std::string>(), Catch::Matchers::Contains("queue_timeout (100 ms)"));
    // Not set in the config: the engine's queue has no time limit of its own.
    cfg.queue_timeout_set = false;
    local_engine_backend unlimited(cfg, engine);
    r = run(unlimited, {chat("", "a"), chat("", "bb")});
    CHECK(r[0].status == 200);
    CHECK(r[1].status == 200);
  }
}

TEST_CASE("local engine serving: the first-token and idle deadlines end a call the engine keeps waiting",
          "[local_engine]") {
  std::vector<std::string> words(20, " w");
  // Each engine step takes 300 ms: longer than the deadline under test, far shorter than the other.
  auto engine = std::make_shared<scripted_engine>(words, 8, std::chrono::milliseconds(300));
  {
    auto cfg = engine_config();
    cfg.timeouts.first_token = std::chrono::milliseconds(50);
    local_engine_backend backend(cfg, engine);
    const auto r = run(backend, {chat(R"(,"stream":true)")});
    CHECK(r[0].status == 0);  // no head came
    CHECK(r[0].last == call_event::kind::failed);
    CHECK(r[0].error == failure::timeout);
  }
  {
    auto cfg = engine_config();
    cfg.timeouts.first_token = std::chrono::seconds(5);
    cfg.timeouts.idle = std::chrono::milliseconds(50);
    local_engine_backend backend(cfg, engine);
    const auto r = run(backend, {chat(R"(,"stream":true)")});
    CHECK(r[0].status == 200);  // the first token came, the second not within the idle deadline
    CHECK_FALSE(r[0].body.empty());
    CHECK(r[0].last == call_event::kind::failed);
    CHECK(r[0].error == failure::timeout);
    const auto st = backend.stats();
    REQUIRE(st);
    CHECK(st->finished == 0);
  }
}
