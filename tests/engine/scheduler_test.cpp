// The continuous-batching scheduler on the CPU backend: a sequence gives the same tokens alone and
// inside a batch of many mixed sequences with chunked prefill and preemptions (greedy and seeded
// sampling); batched logits equal forward_logits; cancellation, failures and the end of the
// context free every KV block.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "local_engine/engine.hpp"
#include "local_engine/forward_backend.hpp"
#include "local_engine/sampler.hpp"
#include "tests/engine/test_support.hpp"

namespace eng = tollgate::engine;
namespace t = tollgate::engine::test;
using Catch::Matchers::Contains;

namespace {

const std::filesystem::path& v2_dir() {
  static t::temp_dir dir;
  static bool made = (t::make_recipe_checkpoint("v2_greedy", dir.path()), true);
  (void)made;
  return dir.path();
}

// v2_greedy: 2 layers of (32 + 8) floats a position.
constexpr size_t bytes_per_position = 2 * 40 * 4;

std::shared_ptr<const eng::model> load(int block_size, size_t blocks, size_t max_batch = 64, size_t max_batch_tokens = 2048) {
  eng::backend_options bo = t::test_backend_options();
  bo.kv_block_size = block_size;
  bo.kv_cache_memory = static_cast<double>(blocks * static_cast<size_t>(block_size) * bytes_per_position);
  return eng::load_model(v2_dir().string(), bo, eng::scheduler_options{max_batch, max_batch_tokens});
}

/// What one submitted sequence produced, filled by the engine thread.
struct collector {
  std::mutex m;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
  bool done = false;
  eng::stream_end reason = eng::stream_end::failed;
  std::string message;
  size_t stop_after = 0;  // on_token returns false after this many tokens (0: never)

  eng::stream_callbacks callbacks(bool want_logits = false) {
    eng::stream_callbacks cb;
    cb.on_token = [this](int32_t id) {
      std::lock_guard lock(m);
      tokens.push_back(id);
      cv.notify_all();
      return stop_after == 0 || tokens.size() < stop_after;
    };
    cb.on_end = [this](eng::stream_end why, const std::string& msg) {
      std::lock_guard lock(m);
      done = true;
      reason = why;
      message = msg;
      cv.notify_all();
    };
    if (want_logits) cb.on_logits = [this](std::span<const float> l) { logits.emplace_back(l.begin(), l.end()); };
    return cb;
  }
  void wait() {
    std::unique_lock lock(m);
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return done; }));
  }
  /// wait() for other threads than the test's (Catch's assertions are for the test's thread).
  bool wait_quietly() {
    std::unique_lock lock(m);
    return cv.wait_for(lock, std::chrono::seconds(120), [&] { return done; });
  }
  bool wait_tokens_quietly(size_t n) {
    std::unique_lock lock(m);
    return cv.wait_for(lock, std::chrono::seconds(60), [&] { return tokens.size() >= n || done; });
  }
  void wait_tokens(size_t n) {
    std::unique_lock lock(m);
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return tokens.size() >= n || done; }));
  }
};

struct job {
  std::vector<int32_t> prompt;
  eng::sampling s;
  size_t max_tokens;
};

// n mixed sequences: prompts of 3 to 45 tokens, greedy and seeded sampling, 6 to 28 tokens.
std::vector<job> mixed_jobs(int n = 12) {
  std::vector<job> jobs;
  eng::rng g(77);
  for (int i = 0; i < n; ++i) {
    job j;
    const size_t len = 3 + static_cast<size_t>(g.next() % 43);
    for (size_t k = 0; k < len; ++k) j.prompt.push_back(static_cast<int32_t>(2 + g.next() % 1000));
    if (i % 2 == 1) j.s = eng::sampling{0.9f, 0.95f, i % 4 == 1 ? 0 : 40, 1000 + static_cast<uint64_t>(i)};
    j.max_tokens = 6 + static_cast<size_t>(g.next() % 23);
    jobs.push_back(std::move(j));
  }
  return jobs;
}

std::vector<int32_t> alone(const std::shared_ptr<const eng::model>& m, const job& j) {
  collector c;
  auto h = eng::submit(m, j.prompt, j.s, j.max_tokens, c.callbacks());
  c.wait();
  CHECK(c.reason == eng::stream_end::length);
  return c.tokens;
}

double relative_error(std::span<const float> a, std::span<const float> b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST_CASE("scheduler: a sequence's tokens are the same alone and in a batch with chunked prefill and preemption",
          "[engine][scheduler]") {
  const auto jobs = mixed_jobs(64);
  // Alone: a roomy pool, one sequence at a time.
  const auto roomy = load(64, 64);
  std::vector<std::vector<int32_t>> expect;
  for (const auto& j : jobs) expect.push_back(alone(roomy, j));

  // Together: blocks of 4 positions, a pool of 40 blocks (160 positions: a few long sequences),
  // 24 tokens a step (prompts go in chunks), 16 sequences running at most.
  const auto tight = load(4, 40, 16, 24);
  std::vector<std::unique_ptr<collector>> got;
  std::vector<std::shared_ptr<eng::stream>> handles;
  for (const auto& j : jobs) {
    got.push_back(std::make_unique<collector>());
    handles.push_back(eng::submit(tight, j.prompt, j.s, j.max_tokens, got.back()->callbacks()));
  }
  size_t generated = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    got[i]->wait();
    INFO("sequence " << i << " (prompt " << jobs[i].prompt.size() << ", temperature " << jobs[i].s.temperature << ")");
    CHECK(got[i]->reason == eng::stream_end::length);
    CHECK(got[i]->tokens == expect[i]);
    generated += got[i]->tokens.size();
  }
  const auto st = eng::stats(*tight);
  CHECK(st.preemptions >= 1);        // the pool forced some sequence out and back in
  CHECK(st.steps < generated);       // sequences shared forwards
  CHECK(st.last_batch_tokens <= 24);
  CHECK(st.finished == jobs.size());
  CHECK(st.failed == 0);
  CHECK(st.running == 0);
  CHECK(st.waiting == 0);
  CHECK(st.kv_blocks_used == 0);     // every block came back
  CHECK(st.kv_blocks_free == 40);
  CHECK(st.generated_tokens == generated);

  // Sampled sequences really sample: another seed gives other tokens.
  auto other = jobs[1];
  other.s.seed += 1;
  CHECK(alone(roomy, other) != expect[1]);
}

TEST_CASE("scheduler: logits of the batched path equal forward_logits", "[engine][scheduler]") {
  const auto m = load(4, 256, 8, 8);  // 8 tokens a step: prompts are chunked
  const auto jobs = mixed_jobs();
  std::vector<std::unique_ptr<collector>> got;
  std::vector<std::shared_ptr<eng::stream>> handles;
  for (size_t i = 0; i < 5; ++i) {
    got.push_back(std::make_unique<collector>());
    handles.push_back(eng::submit(m, jobs[i].prompt, jobs[i].s, 8, got.back()->callbacks(true)));
  }
  const size_t V = eng::vocab_size(*m);
  for (size_t i = 0; i < got.size(); ++i) {
    got[i]->wait();
    REQUIRE(got[i]->logits.size() == got[i]->tokens.size());
    // The whole sequence at once: position p's logits picked token p + 1.
    std::vector<int32_t> all = jobs[i].prompt;
    all.insert(all.end(), got[i]->tokens.begin(), got[i]->tokens.end() - 1);
    const auto full = eng::forward_logits(*m, all);
    for (size_t k = 0; k < got[i]->tokens.size(); ++k) {
      const size_t pos = jobs[i].prompt.size() - 1 + k;
      INFO("sequence " << i << ", token " << k);
      REQUIRE(got[i]->logits[k].size() == V);
      CHECK(relative_error(got[i]->logits[k], std::span<const float>(full.data() + pos * V, V)) < 1e-5);
    }
  }
  // forward_logits itself in a tiny pool of 4-position blocks that it must share.
  const auto tight = load(4, 12, 4, 8);
  const auto ref = eng::forward_logits(*m, jobs[0].prompt);
  const auto again = eng::forward_logits(*tight, jobs[0].prompt);
  REQUIRE(again.size() == ref.size());
  CHECK(relative_error(again, ref) < 1e-6);
  CHECK(eng::stats(*tight).kv_blocks_used == 0);
}

TEST_CASE("scheduler: cancellation frees the blocks at the next step", "[engine][scheduler]") {
  const auto m = load(4, 64);
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11};
  collector running;
  auto h = eng::submit(m, prompt, eng::sampling{}, 200, running.callbacks());
  running.wait_tokens(3);
  CHECK(eng::stats(*m).kv_blocks_used >= 3);
  h->cancel();
  running.wait();
  CHECK(running.reason == eng::stream_end::cancelled);
  CHECK(running.tokens.size() < 200);
  auto st = eng::stats(*m);
  CHECK(st.kv_blocks_used == 0);
  CHECK(st.cancelled == 1);
  CHECK(st.running == 0);
  h->cancel();  // after the end: nothing happens

  // A sequence cancelled while it waits for blocks never runs. The one holding the blocks is
  // stepped, so it keeps them until the test lets it go on, however busy the machine is.
  const auto small = load(4, 4, 8, 64);
  collector queued;
  auto big = eng::start(small, std::vector<int32_t>(10, 3), eng::sampling{});
  big->step();  // admitted: 3 of the 4 blocks
  auto hq = eng::submit(small, std::vector<int32_t>(12, 4), eng::sampling{}, 4, queued.callbacks());
  hq->cancel();
  queued.wait();
  CHECK(queued.reason == eng::stream_end::cancelled);
  CHECK(queued.tokens.empty());
  for (int i = 0; i < 5; ++i) big->step();  // positions up to 14: all 4 blocks (the pool holds 16)
  big.reset();  // dropped: cancelled at the next step
  for (int i = 0; i < 200 && eng::stats(*small).kv_blocks_used != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(eng::stats(*small).kv_blocks_used == 0);
  CHECK(eng::stats(*small).failed == 0);
}

TEST_CASE("scheduler: stops, the end of the context, and sequences the pool cannot hold", "[engine][scheduler]") {
  const auto m = load(4, 5);  // 20 positions
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10};

  collector stopped;
  stopped.stop_after = 3;
  auto h1 = eng::submit(m, prompt, eng::sampling{}, 50, stopped.callbacks());
  stopped.wait();
  CHECK(stopped.reason == eng::stream_end::stopped);
  CHECK(stopped.tokens.size() == 3);

  // Alone, it outgrows the pool: it fails with a message naming the pool. Positions 0..19 hold the
  // prompt and 14 generated tokens; the forward at position 19 samples a 15th.
  collector grows;
  auto h2 = eng::submit(m, prompt, eng::sampling{}, 50, grows.callbacks());
  grows.wait();
  CHECK(grows.reason == eng::stream_end::failed);
  CHECK_THAT(grows.message, Contains("the pool holds 5"));
  CHECK(grows.tokens.size() == 15);

  // A prompt the whole pool cannot hold is refused at once rather than queued for ever.
  CHECK_THROWS_WITH(eng::submit(m, std::vector<int32_t>(21, 3), eng::sampling{}, 5, {}),
                    Contains("needs 6 KV blocks; the pool holds 5"));
  CHECK_THROWS_AS(eng::start(m, std::vector<int32_t>(21, 3), eng::sampling{}), std::invalid_argument);

  collector zero;
  auto h4 = eng::submit(m, prompt, eng::sampling{}, 0, zero.callbacks());
  zero.wait();
  CHECK(zero.reason == eng::stream_end::length);
  CHECK(zero.tokens.empty());
  CHECK_THROWS_AS(eng::submit(m, {}, eng::sampling{}, 3, {}), std::invalid_argument);
  CHECK_THROWS_WITH(eng::submit(m, {1, 99999}, eng::sampling{}, 3, {}), Contains("outside the vocabulary"));
  CHECK_THROWS_AS(eng::submit(m, prompt, eng::sampling{-1, 1, 0, 0}, 3, {}), std::invalid_argument);

  // The context (256 positions in this recipe) ends a sequence.
  const auto roomy = load(64, 8);
  collector ctx;
  auto h5 = eng::submit(roomy, std::vector<int32_t>(250, 7), eng::sampling{}, 100, ctx.callbacks());
  ctx.wait();
  CHECK(ctx.reason == eng::stream_end::context_full);
  CHECK(ctx.tokens.size() == 7);  // positions 250..255 feed six of them; the seventh has no room
  const auto st = eng::stats(*m);
  CHECK(st.kv_blocks_used == 0);
  CHECK(st.failed == 1);
  CHECK(eng::stats(*roomy).kv_blocks_used == 0);
}

TEST_CASE("scheduler: stepped sequences on many threads batch and match their solo tokens", "[engine][scheduler]") {
  const auto m = load(4, 64, 16, 12);
  const auto jobs = mixed_jobs();
  std::vector<std::vector<int32_t>> solo;
  for (size_t i = 0; i < 6; ++i) {
    auto s = eng::start(m, jobs[i].prompt, jobs[i].s);
    std::vector<int32_t> out;
    for (size_t k = 0; k < 10; ++k) out.push_back(s->step());
    solo.push_back(out);
  }
  const auto before = eng::stats(*m).steps;
  std::vector<std::vector<int32_t>> together(6);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < 6; ++i)
    threads.emplace_back([&, i] {
      auto s = eng::start(m, jobs[i].prompt, jobs[i].s);
      for (size_t k = 0; k < 10; ++k) together[i].push_back(s->step());
    });
  for (auto& th : threads) th.join();
  for (size_t i = 0; i < 6; ++i) {
    INFO("sequence " << i);
    CHECK(together[i] == solo[i]);
  }
  CHECK(eng::stats(*m).steps - before < 60);  // some steps carried several sequences
  // A stepped sequence that is dropped frees its blocks.
  {
    auto s = eng::start(m, jobs[0].prompt, jobs[0].s);
    s->step();
  }
  for (int i = 0; i < 100 && eng::stats(*m).kv_blocks_used != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(eng::stats(*m).kv_blocks_used == 0);
}

namespace {

/// A backend that records every forward (per item: start, token count, whether it samples) and
/// samples token 1 each time.
class recording_backend final : public eng::forward_backend {
 public:
  struct item {
    size_t start, n;
    bool sample;
    int32_t first;  ///< the first token fed: prompts here are all 3, generated tokens 1
  };
  /// gate: when valid, every forward waits for it first (a test submits everything before the first step ends).
  recording_backend(size_t blocks, std::mutex& m, std::vector<std::vector<item>>& log, std::shared_future<void> gate = {})
      : blocks_(blocks), m_(m), log_(log), gate_(std::move(gate)) {}
  eng::kv_pool_shape kv_pool() const override { return {4, blocks_, 64}; }
  void forward(std::span<const eng::batch_item> batch, eng::batch_result& out) override {
    if (gate_.valid()) gate_.wait();
    std::vector<item> step;
    out.tokens.clear();
    for (const auto& it : batch) {
      if (it.blocks.size() * 4 < it.start + it.tokens.size()) throw std::logic_error("a block table too short");
      step.push_back({it.start, it.tokens.size(), it.sample != nullptr, it.tokens[0]});
      out.tokens.push_back(it.sample ? 1 : -1);
    }
    std::lock_guard lock(m_);
    log_.push_back(std::move(step));
  }
  std::string device() const override { return "recording"; }
  std::string describe() const override { return "recording"; }

 private:
  size_t blocks_;
  std::mutex& m_;
  std::vector<std::vector<item>>& log_;
  std::shared_future<void> gate_;
};

}  // namespace

TEST_CASE("scheduler: a step holds decode tokens and prefill chunks within the token budget", "[engine][scheduler]") {
  std::mutex m;
  std::vector<std::vector<recording_backend::item>> log;
  eng::model_config c;
  c.vocab_size = 16;
  c.max_position_embeddings = 1000;
  // Prefix caching off: the prompts repeat one token, so later ones would find earlier ones' blocks.
  // The first forward waits until every prompt is submitted, so that a busy machine cannot let the
  // short one finish before the long ones arrive.
  std::promise<void> all_submitted;
  const auto model = eng::make_model(c, std::make_unique<recording_backend>(1000, m, log, all_submitted.get_future().share()),
                                     nullptr, eng::scheduler_options{3, 10, false});
  // A short prompt first, then long ones that must be prefilled in chunks while it decodes.
  std::vector<std::unique_ptr<collector>> got;
  std::vector<std::shared_ptr<eng::stream>> handles;
  const std::vector<size_t> lengths = {2, 30, 25, 7};
  for (size_t len : lengths) {
    got.push_back(std::make_unique<collector>());
    handles.push_back(eng::submit(model, std::vector<int32_t>(len, 3), eng::sampling{}, 5, got.back()->callbacks()));
  }
  all_submitted.set_value();
  for (auto& g : got) {
    g->wait();
    CHECK(g->tokens == std::vector<int32_t>(5, 1));
  }
  std::lock_guard lock(m);
  bool mixed = false;
  for (const auto& step : log) {
    size_t tokens = 0, decodes = 0, chunks = 0;
    for (const auto& it : step) {
      tokens += it.n;
      if (it.first == 1) ++decodes;
      else ++chunks;
    }
    CHECK(tokens <= 10);      // max_batch_tokens
    CHECK(step.size() <= 3);  // max_batch
    mixed = mixed || (decodes > 0 && chunks > 0);
    // Decode tokens come first in a step: a prefill chunk never holds one up.
    bool seen_chunk = false;
    for (const auto& it : step) {
      if (it.first != 1) seen_chunk = true;
      else CHECK_FALSE(seen_chunk);
    }
  }
  CHECK(mixed);
  // The long prompts went in several chunks, and only a prompt's last chunk samples.
  size_t quiet_chunks = 0;
  for (const auto& step : log)
    for (const auto& it : step) quiet_chunks += it.first == 3 && !it.sample;
  CHECK(quiet_chunks >= 4);
  CHECK(eng::stats(*model).kv_blocks_used == 0);
  CHECK(eng::stats(*model).finished == lengths.size());
}

TEST_CASE("scheduler: many threads submit, step and cancel at once, and everything ends and every block comes back",
          "[engine][scheduler]") {
  const auto m = load(4, 30, 6, 20);  // a small pool: admissions wait and preemptions happen
  const auto jobs = mixed_jobs(48);
  std::atomic<size_t> ended{0}, submitted{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < 6; ++th)
    threads.emplace_back([&, th] {
      eng::rng g(500 + static_cast<uint64_t>(th));
      for (size_t i = static_cast<size_t>(th); i < jobs.size(); i += 6) {
        const auto& j = jobs[i];
        if (g.next() % 4 == 0) {
          // A stepped sequence, dropped after a few tokens.
          auto s = eng::start(m, j.prompt, j.s);
          const size_t n = g.next() % 4;
          for (size_t k = 0; k < n; ++k) s->step();
          continue;
        }
        collector c;
        auto h = eng::submit(m, j.prompt, j.s, j.max_tokens, c.callbacks());
        ++submitted;
        switch (g.next() % 3) {
          case 0: h->cancel(); break;  // at once, often before admission
          case 1:
            if (!c.wait_tokens_quietly(1 + g.next() % 5)) ++wrong;
            h->cancel();
            break;
          default: break;
        }
        if (!c.wait_quietly() || (c.reason != eng::stream_end::length && c.reason != eng::stream_end::cancelled)) ++wrong;
        ++ended;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(wrong == 0);
  CHECK(ended == submitted);
  eng::engine_stats st;
  for (int i = 0; i < 200; ++i) {  // dropped stepped sequences are cancelled at the next step
    st = eng::stats(*m);
    if (st.kv_blocks_used == 0 && st.running == 0 && st.waiting == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(st.kv_blocks_used == 0);
  CHECK(st.running == 0);
  CHECK(st.waiting == 0);
  CHECK(st.failed == 0);
}

TEST_CASE("scheduler: a high priority sequence preempts a running low one when KV blocks run out, and the low one's "
          "tokens are unchanged",
          "[engine][scheduler][priority]") {
  job low{{}, eng::sampling{0.9f, 0.95f, 40, 4242}, 24};
  for (int k = 0; k < 20; ++k) low.prompt.push_back(5 + 37 * k % 900);
  job high{{}, eng::sampling{}, 6};
  for (int k = 0; k < 28; ++k) high.prompt.push_back(11 + 53 * k % 900);
  const auto roomy = load(64, 64);
  const auto low_alone = alone(roomy, low);
  const auto high_alone = alone(roomy, high);

  for (const bool prioritised : {true, false}) {
    INFO((prioritised ? "high priority" : "equal priorities"));
    // 12 blocks of 4 positions: the low sequence (20 + 24 positions) fits alone; once it holds 6
    // or more, the high one (28 + 6 positions, 8 blocks to start) cannot start beside it.
    const auto tight = load(4, 12, 8, 64);
    std::mutex m;
    std::vector<std::string> ends;  // which sequence ended, in order
    collector lc, hc;
    auto lcb = lc.callbacks();
    lcb.on_token = [&lc, inner = lcb.on_token](int32_t id) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a slow consumer: the low one runs long
      return inner(id);
    };
    auto lend = lcb.on_end;
    lcb.on_end = [&, lend](eng::stream_end why, const std::string& msg) {
      {
        std::lock_guard lock(m);
        ends.push_back("low");
      }
      lend(why, msg);
    };
    auto hcb = hc.callbacks();
    auto hend = hcb.on_end;
    hcb.on_end = [&, hend](eng::stream_end why, const std::string& msg) {
      {
        std::lock_guard lock(m);
        ends.push_back("high");
      }
      hend(why, msg);
    };
    auto lh = eng::submit(tight, low.prompt, low.s, low.max_tokens, std::move(lcb), 0);
    lc.wait_tokens(4);  // running, and holding most of the pool
    auto hh = eng::submit(tight, high.prompt, high.s, high.max_tokens, std::move(hcb), prioritised ? 2 : 0);
    hc.wait();
    lc.wait();
    CHECK(lc.reason == eng::stream_end::length);
    CHECK(hc.reason == eng::stream_end::length);
    CHECK(hc.tokens == high_alone);
    CHECK(lc.tokens == low_alone);  // recomputed after its preemption, the same tokens
    const auto st = eng::stats(*tight);
    if (prioritised) {
      CHECK(st.preemptions >= 1);
      CHECK(ends == std::vector<std::string>{"high", "low"});
    } else {
      CHECK(st.preemptions == 0);  // first come, first served: the later one waits for blocks
      CHECK(ends == std::vector<std::string>{"low", "high"});
    }
    CHECK(st.kv_blocks_used == 0);
  }
}

TEST_CASE("scheduler: with aging, a low priority sequence that waited long goes before later high ones",
          "[engine][scheduler][priority]") {
  job j{{}, eng::sampling{}, 5};
  for (int k = 0; k < 8; ++k) j.prompt.push_back(7 + 31 * k % 900);
  for (const int aging_ms : {20, 0}) {
    INFO("priority_aging " << aging_ms << " ms");
    // One sequence runs at a time; the first runs long (a slow consumer), the rest queue behind it.
    eng::backend_options bo = t::test_backend_options();
    bo.kv_block_size = 16;
    bo.kv_cache_memory = static_cast<double>(64 * 16 * bytes_per_position);
    eng::scheduler_options so{1, 2048};
    so.priority_aging = std::chrono::milliseconds(aging_ms);
    const auto m = eng::load_model(v2_dir().string(), bo, so);
    std::mutex mu;
    std::vector<std::string> order;  // which sequence started generating, in order
    std::vector<std::unique_ptr<collector>> got;
    std::vector<std::shared_ptr<eng::stream>> handles;
    auto submit = [&](const std::string& name, int priority, int slow_ms) {
      got.push_back(std::make_unique<collector>());
      auto cb = got.back()->callbacks();
      cb.on_token = [&, name, slow_ms, first = true, inner = cb.on_token](int32_t id) mutable {
        if (first) {
          std::lock_guard lock(mu);
          order.push_back(name);
          first = false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms));
        return inner(id);
      };
      handles.push_back(eng::submit(m, j.prompt, j.s, j.max_tokens, std::move(cb), priority));
    };
    submit("first", 2, 60);  // 5 tokens, 300 ms
    got.back()->wait_tokens(1);
    submit("low", 0, 0);
    // High ones come 150 ms later: with 20 ms aging the low one ranks 7 by then, they rank 2.
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    submit("high1", 2, 0);
    submit("high2", 2, 0);
    for (auto& c : got) c->wait();
    if (aging_ms > 0) CHECK(order == std::vector<std::string>{"first", "low", "high1", "high2"});
    else CHECK(order == std::vector<std::string>{"first", "high1", "high2", "low"});
  }
}

TEST_CASE("scheduler: a full queue sheds from the bottom: a newer higher priority displaces the oldest lowest waiter, "
          "never the reverse",
          "[engine][scheduler][priority]") {
  job j{{}, eng::sampling{}, 3};
  for (int k = 0; k < 6; ++k) j.prompt.push_back(9 + 41 * k % 900);
  const auto m = load(16, 64, 1);  // one sequence runs at a time
  // A stepped sequence of low priority holds the batch's one place while it is not stepped.
  auto holder = eng::start(m, j.prompt, j.s);
  holder->step();
  std::map<std::string, std::unique_ptr<collector>> got;
  std::vector<std::shared_ptr<eng::stream>> handles;
  std::mutex mu;
  std::vector<std::string> started;  // which sequence generated first, in order
  auto submit = [&](const std::string& name, int priority) {  // false: refused at once
    auto c = std::make_unique<collector>();
    auto cb = c->callbacks();
    cb.on_token = [&, name, first = true, inner = cb.on_token](int32_t id) mutable {
      if (first) {
        std::lock_guard lock(mu);
        started.push_back(name);
        first = false;
      }
      return inner(id);
    };
    eng::queue_options q;
    q.priority = priority;
    q.max_queue = 2;  // two may wait beside the one running
    try {
      handles.push_back(eng::submit(m, j.prompt, j.s, j.max_tokens, std::move(cb), q));
    } catch (const eng::queue_full& e) {
      CHECK_THAT(e.what(), Contains("queue is full"));
      return false;
    }
    got[name] = std::move(c);
    return true;
  };
  auto displaced = [&](const std::string& name) {
    INFO(name);
    got.at(name)->wait();
    CHECK(got[name]->reason == eng::stream_end::overloaded);
    CHECK_THAT(got[name]->message, Contains("higher priority"));
    CHECK(got[name]->tokens.empty());
  };
  CHECK(submit("low1", 0));
  CHECK(submit("low2", 0));
  CHECK_FALSE(submit("low3", 0));  // full, and nothing waits below it
  CHECK(submit("normal1", 1));     // displaces low1, the oldest of the lowest (not the running one)
  displaced("low1");
  CHECK(submit("high1", 2));  // displaces low2
  displaced("low2");
  CHECK_FALSE(submit("normal2", 1));  // normal1 and high1 wait: none below normal
  CHECK(submit("high2", 2));          // displaces normal1, never high1
  displaced("normal1");
  holder.reset();  // the place frees: the two high ones run, first come first served
  got.at("high1")->wait();
  got.at("high2")->wait();
  CHECK(got["high1"]->reason == eng::stream_end::length);
  CHECK(got["high2"]->reason == eng::stream_end::length);
  CHECK(got["high1"]->tokens.size() == 3);
  CHECK(started == std::vector<std::string>{"high1", "high2"});
  const auto st = eng::stats(*m);
  CHECK(st.overloaded == 3);
  CHECK(st.refused == 2);
  CHECK(st.kv_blocks_used == 0);
  CHECK(st.running == 0);
  CHECK(st.waiting == 0);
}

TEST_CASE("scheduler: a sequence still waiting at its queue_timeout ends overloaded, and with aging a low one goes first "
          "and is served",
          "[engine][scheduler][priority]") {
  using namespace std::chrono_literals;
  job j{{}, eng::sampling{}, 3};
  for (int k = 0; k < 6; ++k) j.prompt.push_back(13 + 29 * k % 900);
  SECTION("the engine wakes for the deadline when nothing else happens") {
    const auto m = load(16, 64, 1);
    auto holder = eng::start(m, j.prompt, j.s);
    holder->step();  // holds the one place; the engine has nothing to do
    collector late;
    eng::queue_options q;
    q.queue_timeout = 150ms;
    const auto t0 = std::chrono::steady_clock::now();
    auto h1 = eng::submit(m, j.prompt, j.s, j.max_tokens, late.callbacks(), q);
    late.wait();
    const auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(late.reason == eng::stream_end::overloaded);
    CHECK_THAT(late.message, Contains("queue_timeout (150 ms)"));
    CHECK(late.tokens.empty());
    CHECK(waited >= 150ms);
    CHECK(waited < 5s);
    // One admitted within its queue_timeout runs to its end, however long that takes.
    collector served;
    q.queue_timeout = 30s;
    auto h2 = eng::submit(m, j.prompt, j.s, j.max_tokens, served.callbacks(), q);
    holder.reset();
    served.wait();
    CHECK(served.reason == eng::stream_end::length);
    CHECK(served.tokens.size() == 3);
    const auto st = eng::stats(*m);
    CHECK(st.overloaded == 1);
    CHECK(st.kv_blocks_used == 0);
  }
  SECTION("aging serves a waiting low one before later high ones, within its queue_timeout") {
    for (const int aging_ms : {20, 0}) {
      INFO("priority_aging " << aging_ms << " ms");
      eng::backend_options bo = t::test_backend_options();
      bo.kv_block_size = 16;
      bo.kv_cache_memory = static_cast<double>(64 * 16 * bytes_per_position);
      eng::scheduler_options so{1, 2048};
      so.priority_aging = std::chrono::milliseconds(aging_ms);
      const auto m = eng::load_model(v2_dir().string(), bo, so);
      auto holder = eng::start(m, j.prompt, j.s);
      holder->step();
      collector low;
      eng::queue_options lq;
      lq.priority = 0;
      lq.queue_timeout = 400ms;
      auto lh = eng::submit(m, j.prompt, j.s, j.max_tokens, low.callbacks(), lq);
      // Three high ones come 100 ms later (the low one ranks 5 by then with 20 ms aging), each
      // 150 ms long (a slow consumer); the place frees 150 ms after the low one came.
      std::this_thread::sleep_for(100ms);
      std::vector<std::unique_ptr<collector>> highs;
      std::vector<std::shared_ptr<eng::stream>> hh;
      for (int i = 0; i < 3; ++i) {
        highs.push_back(std::make_unique<collector>());
        auto cb = highs.back()->callbacks();
        cb.on_token = [inner = cb.on_token](int32_t id) {
          std::this_thread::sleep_for(50ms);
          return inner(id);
        };
        hh.push_back(eng::submit(m, j.prompt, j.s, j.max_tokens, std::move(cb), 2));
      }
      std::this_thread::sleep_for(50ms);
      holder.reset();
      low.wait();
      for (auto& h : highs) h->wait();
      for (auto& h : highs) CHECK(h->reason == eng::stream_end::length);
      if (aging_ms > 0) {
        CHECK(low.reason == eng::stream_end::length);  // aged past the high ones: served in time
        CHECK(low.tokens.size() == 3);
      } else {
        CHECK(low.reason == eng::stream_end::overloaded);  // behind 450 ms of high ones: refused at 400 ms
        CHECK(low.tokens.empty());
      }
    }
  }
}
