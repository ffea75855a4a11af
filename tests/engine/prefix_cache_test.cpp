// Prefix caching: the allocator's chain-hashed, reference-counted, LRU-evicted blocks, and the
// scheduler on the CPU backend in float32, where a request that finds its prefix cached gives
// exactly the tokens and logits it gives with prefix caching off: shared system prompts,
// multi-turn conversations, eviction under pool pressure and preemption. On a GPU
// (TOLLGATE_TEST_DEVICE=cuda:0) the tokens are the same and the logits agree to float32 rounding.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <map>
#include <set>

#include "local_engine/engine.hpp"
#include "local_engine/forward_backend.hpp"
#include "local_engine/kv_blocks.hpp"
#include "local_engine/sampler.hpp"
#include "tests/engine/test_support.hpp"

namespace eng = tollgate::engine;
namespace t = tollgate::engine::test;

namespace {

std::vector<int32_t> seq_tokens(int32_t from, size_t n) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = from + static_cast<int32_t>(i);
  return v;
}

}  // namespace

TEST_CASE("prefix cache: blocks are shared by reference, cached when released, evicted least recently used", "[engine][kv]") {
  eng::kv_block_allocator a(8, 4, true);
  const auto p = seq_tokens(10, 10);  // two full blocks and two positions

  // Nothing cached yet.
  CHECK(a.find_prefix(p, 9).blocks.empty());
  REQUIRE(a.reserve(1, 10));
  // Only full blocks of computed positions are registered.
  a.commit(1, p, 7);
  auto m = a.find_prefix(p, 9);
  REQUIRE(m.blocks.size() == 1);
  CHECK(m.blocks[0] == a.table(1)[0]);
  CHECK(m.unreferenced == 0);
  a.commit(1, p, 10);
  m = a.find_prefix(p, 9);
  REQUIRE(m.blocks.size() == 2);
  CHECK(a.find_prefix(p, 1).blocks.size() == 1);  // max_blocks bounds it

  // A second sequence with the same first block and another second block shares one block.
  auto q = p;
  q[5] = 999;
  auto mq = a.find_prefix(q, 9);
  REQUIRE(mq.blocks.size() == 1);
  CHECK(a.attach_prefix(2, mq) == 4);
  REQUIRE(a.reserve(2, 10));
  CHECK(a.table(2)[0] == a.table(1)[0]);
  CHECK(a.table(2)[1] != a.table(1)[1]);
  CHECK(a.used() == 5);  // 3 + 2 new
  a.commit(2, q, 8);
  CHECK(a.find_prefix(q, 9).blocks.size() == 2);

  // Released, cached blocks stay findable and count as free; the shared one stays held by 2.
  a.release(1);
  CHECK(a.used() == 3);
  CHECK(a.cached() == 1);  // p's second block; its first is still held by 2
  CHECK(a.free() == 5);
  m = a.find_prefix(p, 9);
  REQUIRE(m.blocks.size() == 2);
  CHECK(m.unreferenced == 1);
  a.release(2);
  CHECK(a.used() == 0);
  CHECK(a.free() == 8);
  CHECK(a.cached() == 3);  // p's two blocks and q's second

  // Pressure: a sequence that needs every block evicts the cached ones, never-used blocks first.
  REQUIRE(a.reserve(3, 4 * 5));  // the 5 never-used blocks
  CHECK(a.cached() == 3);
  CHECK(a.find_prefix(p, 9).blocks.size() == 2);
  REQUIRE(a.reserve(3, 4 * 6));  // evicts the block released longest ago: p's second block
  CHECK(a.cached() == 2);
  CHECK(a.find_prefix(p, 9).blocks.size() == 1);
  CHECK(a.find_prefix(q, 9).blocks.size() == 2);
  REQUIRE(a.reserve(3, 4 * 8));
  CHECK(a.cached() == 0);
  CHECK(a.find_prefix(p, 9).blocks.empty());
  CHECK_FALSE(a.reserve(4, 1));
  a.release(3);
  CHECK(a.free() == 8);
  CHECK(a.used() == 0);

  // Tokens are compared, not only hashes; and without prefix caching nothing is found.
  eng::kv_block_allocator off(8, 4, false);
  REQUIRE(off.reserve(1, 8));
  off.commit(1, p, 8);
  CHECK(off.find_prefix(p, 9).blocks.empty());
  CHECK(eng::kv_block_allocator::chain_hash(0, seq_tokens(1, 4)) != eng::kv_block_allocator::chain_hash(1, seq_tokens(1, 4)));
  CHECK(eng::kv_block_allocator::chain_hash(0, seq_tokens(1, 4)) != eng::kv_block_allocator::chain_hash(0, seq_tokens(2, 4)));
}

TEST_CASE("prefix cache: a held block is attached twice and given back once per holder", "[engine][kv]") {
  eng::kv_block_allocator a(6, 2, true);
  const auto p = seq_tokens(1, 6);
  REQUIRE(a.reserve(1, 6));
  a.commit(1, p, 6);
  // Three sequences share p's first two blocks (at most (len - 1) / 2 = 2 for a 5-token prompt).
  for (uint64_t s = 2; s <= 4; ++s) {
    const auto m = a.find_prefix(std::span<const int32_t>(p).first(5), 2);
    REQUIRE(m.blocks.size() == 2);
    CHECK(a.attach_prefix(s, m) == 4);
  }
  CHECK(a.used() == 3);
  for (uint64_t s = 1; s <= 3; ++s) a.release(s);
  CHECK(a.used() == 2);  // still held by 4
  CHECK(a.cached() == 1);
  a.release(4);
  CHECK(a.used() == 0);
  CHECK(a.cached() == 3);
  CHECK(a.free() == 6);
  CHECK(a.sequences() == 0);
}

namespace {

const std::filesystem::path& recipe_dir(const std::string& name) {
  static std::map<std::string, std::unique_ptr<t::temp_dir>> dirs;
  static std::mutex m;
  std::lock_guard lock(m);
  auto& d = dirs[name];
  if (!d) {
    d = std::make_unique<t::temp_dir>();
    t::make_recipe_checkpoint(name, d->path());
  }
  return d->path();
}

// v2_greedy: 2 layers of (32 + 8) floats a position.
constexpr size_t v2_bytes_per_position = 2 * 40 * 4;

std::shared_ptr<const eng::model> load(const std::string& recipe, bool caching, int block_size, size_t blocks = 0,
                                       size_t max_batch = 64, size_t max_batch_tokens = 2048) {
  eng::backend_options bo = t::test_backend_options();
  bo.kv_block_size = block_size;
  if (blocks > 0) bo.kv_cache_memory = static_cast<double>(blocks * static_cast<size_t>(block_size) * v2_bytes_per_position);
  eng::scheduler_options so;
  so.max_batch = max_batch;
  so.max_batch_tokens = max_batch_tokens;
  so.prefix_caching = caching;
  return eng::load_model(recipe_dir(recipe).string(), bo, so);
}

struct outcome {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
  eng::stream_end reason = eng::stream_end::failed;
  bool operator==(const outcome&) const = default;
};

/// The largest |a - b| / max(1, |b|) over two runs' logits; infinity when their shapes differ.
double logits_error(const outcome& got, const outcome& want) {
  if (got.logits.size() != want.logits.size()) return std::numeric_limits<double>::infinity();
  double worst = 0;
  for (size_t i = 0; i < got.logits.size(); ++i) {
    if (got.logits[i].size() != want.logits[i].size()) return std::numeric_limits<double>::infinity();
    for (size_t k = 0; k < got.logits[i].size(); ++k) {
      const double b = want.logits[i][k];
      worst = std::max(worst, std::abs(got.logits[i][k] - b) / std::max(1.0, std::abs(b)));
    }
  }
  return worst;
}

/// A hit gives the tokens of a miss and, on the CPU backend, its logits bit for bit: the attention
/// over cached blocks runs the same loops in the same order as over blocks computed in the chunk.
/// On a GPU the GEMMs of a shorter prefill chunk take other cuBLAS kernels that reduce in another
/// order, so there the logits agree to float32 rounding (1e-4 relative).
void check_same(const outcome& got, const outcome& want) {
  CHECK(got.reason == want.reason);
  CHECK(got.tokens == want.tokens);
  const double err = logits_error(got, want);
  INFO("logits max relative error " << err);
  if (t::test_backend_options().device == "cpu") {
    CHECK(got.logits == want.logits);
  } else {
    CHECK(err <= 1e-4);
  }
}

struct collector {
  std::mutex m;
  std::condition_variable cv;
  outcome out;
  bool done = false;
  eng::stream_callbacks callbacks() {
    eng::stream_callbacks cb;
    cb.on_token = [this](int32_t id) {
      std::lock_guard lock(m);
      out.tokens.push_back(id);
      return true;
    };
    cb.on_logits = [this](std::span<const float> l) {
      std::lock_guard lock(m);
      out.logits.emplace_back(l.begin(), l.end());
    };
    cb.on_end = [this](eng::stream_end why, const std::string&) {
      std::lock_guard lock(m);
      out.reason = why;
      done = true;
      cv.notify_all();
    };
    return cb;
  }
  outcome wait() {
    std::unique_lock lock(m);
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return done; }));
    return out;
  }
};

outcome run(const std::shared_ptr<const eng::model>& m, const std::vector<int32_t>& prompt, const eng::sampling& s,
            size_t max_tokens) {
  collector c;
  auto h = eng::submit(m, prompt, s, max_tokens, c.callbacks());
  return c.wait();
}

/// A system prompt shared by several user turns.
struct conversation_case {
  std::vector<int32_t> system;
  std::vector<std::vector<int32_t>> questions;
};

conversation_case shared_system_prompt() {
  conversation_case c;
  eng::rng g(4242);
  for (int i = 0; i < 37; ++i) c.system.push_back(static_cast<int32_t>(5 + g.next() % 1000));
  for (int q = 0; q < 4; ++q) {
    std::vector<int32_t> p = c.system;
    const size_t n = 2 + g.next() % 9;
    for (size_t k = 0; k < n; ++k) p.push_back(static_cast<int32_t>(5 + g.next() % 1000));
    c.questions.push_back(std::move(p));
  }
  return c;
}

}  // namespace

TEST_CASE("prefix cache: a shared system prompt hits and gives exactly the tokens and logits of a miss",
          "[engine][scheduler][prefix]") {
  for (const std::string recipe : {"v2_greedy", "v3_qlora_yarn"}) {
    INFO("recipe " << recipe);
    const auto conv = shared_system_prompt();
    const eng::sampling greedy{};
    const std::vector<eng::sampling> samplings = {greedy, eng::sampling{0.8f, 0.95f, 0, 99}};
    const auto off = load(recipe, false, 4);
    const auto on = load(recipe, true, 4);
    for (size_t si = 0; si < samplings.size(); ++si) {
      const auto& s = samplings[si];
      for (size_t qi = 0; qi < conv.questions.size(); ++qi) {
        const auto& q = conv.questions[qi];
        const outcome miss = run(off, q, s, 6);
        const auto before = eng::stats(*on);
        const outcome got = run(on, q, s, 6);
        const auto after = eng::stats(*on);
        CHECK(got.reason == eng::stream_end::length);
        CHECK(got.tokens.size() == 6);
        check_same(got, miss);
        CHECK(after.prefix_cache_lookup_tokens - before.prefix_cache_lookup_tokens == q.size());
        if (qi > 0 || si > 0) {
          // The system prompt's 9 full blocks (36 of its 37 tokens) are found every time after the first.
          CHECK(after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens >= 36);
          // Only what was not cached went through the forward as prompt.
          CHECK(after.prompt_tokens - before.prompt_tokens == q.size() - (after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens));
        }
      }
    }
    // A request repeated exactly finds all but the block of its last position.
    const auto& q0 = conv.questions[0];
    const auto before = eng::stats(*on);
    check_same(run(on, q0, greedy, 6), run(off, q0, greedy, 6));
    CHECK(eng::stats(*on).prefix_cache_hit_tokens - before.prefix_cache_hit_tokens == (q0.size() - 1) / 4 * 4);

    const auto st = eng::stats(*on);
    CHECK(st.kv_blocks_used == 0);
    CHECK(st.kv_blocks_free == st.kv_blocks_total);
    CHECK(st.kv_blocks_cached > 0);
    CHECK(st.failed == 0);
    CHECK(eng::stats(*off).prefix_cache_hit_tokens == 0);
    CHECK(eng::stats(*off).kv_blocks_cached == 0);
  }
}

TEST_CASE("prefix cache: a multi-turn conversation reuses the earlier turns, answers included", "[engine][scheduler][prefix]") {
  const auto off = load("v2_greedy", false, 4);
  const auto on = load("v2_greedy", true, 4);
  eng::rng g(7);
  std::vector<int32_t> prompt;
  for (int turn = 0; turn < 5; ++turn) {
    for (int k = 0; k < 7; ++k) prompt.push_back(static_cast<int32_t>(5 + g.next() % 1000));
    const eng::sampling s{0.7f, 1.0f, 20, 1000 + static_cast<uint64_t>(turn)};
    const outcome miss = run(off, prompt, s, 9);
    const auto before = eng::stats(*on);
    const outcome got = run(on, prompt, s, 9);
    const auto hit = eng::stats(*on).prefix_cache_hit_tokens - before.prefix_cache_hit_tokens;
    INFO("turn " << turn << ", prompt " << prompt.size() << ", hit " << hit);
    check_same(got, miss);
    if (turn > 0) {
      // The previous turn's prompt and all but its last answer token were computed and cached:
      // every full block of them is found.
      CHECK(hit >= (prompt.size() - 7 - 1) / 4 * 4);
    }
    // The answer becomes part of the conversation.
    prompt.insert(prompt.end(), got.tokens.begin(), got.tokens.end());
  }
  CHECK(eng::stats(*on).kv_blocks_used == 0);
}

TEST_CASE("prefix cache: under pool pressure the least recently used blocks go, and hits stay exact",
          "[engine][scheduler][prefix]") {
  // 10 blocks of 4 positions. Each 16-token prompt with 2 answer tokens holds 5 blocks and leaves
  // its 4 full blocks cached.
  const auto on = load("v2_greedy", true, 4, 10);
  const auto off = load("v2_greedy", false, 4, 10);
  const auto p1 = seq_tokens(100, 16), p2 = seq_tokens(200, 16), p3 = seq_tokens(300, 16);
  const eng::sampling s{};
  for (const auto* p : {&p1, &p2}) check_same(run(on, *p, s, 2), run(off, *p, s, 2));
  auto st = eng::stats(*on);
  CHECK(st.kv_blocks_cached == 8);
  CHECK(st.kv_blocks_free == 10);
  // p3 takes the 2 never-used blocks and evicts 3: p1's, deepest first.
  check_same(run(on, p3, s, 2), run(off, p3, s, 2));
  st = eng::stats(*on);
  CHECK(st.kv_blocks_cached == 9);  // 1 of p1, 4 of p2, 4 of p3
  CHECK(st.kv_blocks_free == 10);
  // p1 finds only its first block; taking 4 more evicts the blocks released longest ago: p2's,
  // deepest first, so that p2 then finds only its first block too.
  auto before = eng::stats(*on).prefix_cache_hit_tokens;
  check_same(run(on, p1, s, 2), run(off, p1, s, 2));
  CHECK(eng::stats(*on).prefix_cache_hit_tokens - before == 4);
  before = eng::stats(*on).prefix_cache_hit_tokens;
  check_same(run(on, p2, s, 2), run(off, p2, s, 2));
  CHECK(eng::stats(*on).prefix_cache_hit_tokens - before == 4);

  // Many distinct prompts through the small pool: they never wait on cached blocks, all finish.
  eng::rng g(3);
  for (int i = 0; i < 12; ++i) {
    std::vector<int32_t> p;
    const size_t n = 5 + g.next() % 20;
    for (size_t k = 0; k < n; ++k) p.push_back(static_cast<int32_t>(5 + g.next() % 1000));
    if (i % 3 == 0) p.insert(p.begin(), p2.begin(), p2.begin() + 8);  // a partly shared prefix
    check_same(run(on, p, s, 3), run(off, p, s, 3));
  }
  st = eng::stats(*on);
  CHECK(st.kv_blocks_used == 0);
  CHECK(st.kv_blocks_free == 10);
  CHECK(st.kv_blocks_cached <= 10);
  CHECK(st.failed == 0);
}

TEST_CASE("prefix cache: batched sequences with a shared prefix, preempted and recomputed, give their solo tokens",
          "[engine][scheduler][prefix]") {
  const auto conv = shared_system_prompt();
  std::vector<std::vector<int32_t>> prompts;
  std::vector<eng::sampling> samplings;
  eng::rng g(11);
  for (int i = 0; i < 24; ++i) {
    auto p = conv.questions[static_cast<size_t>(i) % conv.questions.size()];
    const size_t extra = g.next() % 12;
    for (size_t k = 0; k < extra; ++k) p.push_back(static_cast<int32_t>(5 + g.next() % 1000));
    prompts.push_back(std::move(p));
    samplings.push_back(i % 2 ? eng::sampling{0.9f, 0.9f, 0, 500 + static_cast<uint64_t>(i)} : eng::sampling{});
  }
  const size_t max_tokens = 20;
  // Solo, without prefix caching.
  const auto off = load("v2_greedy", false, 4, 256);
  std::vector<outcome> expect;
  for (size_t i = 0; i < prompts.size(); ++i) expect.push_back(run(off, prompts[i], samplings[i], max_tokens));

  // Together in a pool of 60 blocks (240 positions; each sequence ends holding up to 18 blocks),
  // 32 tokens a step: prompts are chunked, sequences are preempted and come back through the cache.
  const auto on = load("v2_greedy", true, 4, 60, 16, 32);
  std::vector<std::unique_ptr<collector>> got;
  std::vector<std::shared_ptr<eng::stream>> handles;
  for (size_t i = 0; i < prompts.size(); ++i) {
    got.push_back(std::make_unique<collector>());
    handles.push_back(eng::submit(on, prompts[i], samplings[i], max_tokens, got.back()->callbacks()));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("sequence " << i);
    const outcome o = got[i]->wait();
    CHECK(o.reason == eng::stream_end::length);
    check_same(o, expect[i]);
  }
  const auto st = eng::stats(*on);
  CHECK(st.preemptions >= 1);
  CHECK(st.prefix_cache_hit_tokens > 0);
  CHECK(st.failed == 0);
  CHECK(st.running == 0);
  CHECK(st.waiting == 0);
  CHECK(st.kv_blocks_used == 0);
  CHECK(st.kv_blocks_free == 60);
}
