// Decoding over a tiny model: seeded sampling is reproducible, top_k=1 is greedy, stop strings,
// max_tokens, EOS and the end of the context; the chat template; argument checks.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>

#include "local_engine/engine.hpp"
#include "local_engine/forward_backend.hpp"
#include "local_engine/sampler.hpp"
#include "tests/engine/test_support.hpp"

namespace eng = tollgate::engine;
namespace t = tollgate::engine::test;
using Catch::Matchers::Contains;

namespace {

// One tiny checkpoint (with its byte-level tokenizer) shared by the cases of this file.
const std::filesystem::path& tiny_dir() {
  static t::temp_dir dir;
  static bool made = (t::make_recipe_checkpoint("v3_qlora_yarn", dir.path()), true);
  (void)made;
  return dir.path();
}

std::shared_ptr<const eng::model> tiny() {
  static auto m = eng::load_model(tiny_dir().string());
  return m;
}

std::vector<int32_t> run(const std::shared_ptr<const eng::model>& m, const std::vector<int32_t>& prompt,
                         const eng::sampling& s, int n) {
  auto seq = eng::start(m, prompt, s);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(seq->step());
  return out;
}

const std::vector<int32_t> prompt = {0, 259, 75, 104, 111, 260};

}  // namespace

TEST_CASE("sampling: a seed gives the same tokens, another seed others", "[engine][sampling]") {
  const eng::sampling s{1.0f, 0.95f, 0, 1234};
  const auto a = run(tiny(), prompt, s, 24), b = run(tiny(), prompt, s, 24);
  CHECK(a == b);
  auto s2 = s;
  s2.seed = 99;
  CHECK(run(tiny(), prompt, s2, 24) != a);
  CHECK(run(tiny(), prompt, eng::sampling{}, 24) != a);  // greedy differs from sampling at T=1
}

TEST_CASE("sampling: top_k = 1 equals greedy whatever the temperature and seed", "[engine][sampling]") {
  const auto greedy = run(tiny(), prompt, eng::sampling{}, 20);
  CHECK(run(tiny(), prompt, eng::sampling{1.5f, 1.0f, 1, 7}, 20) == greedy);
  CHECK(run(tiny(), prompt, eng::sampling{0.7f, 0.5f, 1, 8}, 20) == greedy);
}

TEST_CASE("sampler: top_k and top_p bound the candidates, and frequencies follow the softmax", "[engine][sampling]") {
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f};
  std::map<int, int> seen;
  eng::sampler k2(eng::sampling{1.0f, 1.0f, 2, 5});
  for (int i = 0; i < 4000; ++i) ++seen[k2.pick(logits)];
  CHECK(seen.size() == 2);
  CHECK(seen.count(0) == 1);
  CHECK(seen.count(1) == 1);
  const double p0 = 1.0 / (1.0 + std::exp(-1.0));  // softmax over the two kept
  CHECK(seen[0] / 4000.0 == Approx(p0).margin(0.03));

  seen.clear();
  // Probabilities at T=1: 0.543, 0.200, 0.121, 0.074, 0.027; top_p 0.7 keeps the first two.
  eng::sampler p(eng::sampling{1.0f, 0.7f, 0, 6});
  for (int i = 0; i < 4000; ++i) ++seen[p.pick(logits)];
  CHECK(seen.size() == 2);
  seen.clear();
  eng::sampler all(eng::sampling{1.0f, 1.0f, 0, 7});
  for (int i = 0; i < 20000; ++i) ++seen[all.pick(logits)];
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (int i = 0; i < 5; ++i) CHECK(seen[i] / 20000.0 == Approx(std::exp(logits[static_cast<size_t>(i)]) / z).margin(0.015));
  eng::sampler cold(eng::sampling{0.01f, 1.0f, 0, 8});
  for (int i = 0; i < 100; ++i) CHECK(cold.pick(logits) == 0);
  eng::sampler greedy(eng::sampling{});
  CHECK(greedy.pick(std::vector<float>{0.5f, 3.0f, 3.0f, 1.0f}) == 1);  // first of equal maxima
}

TEST_CASE("sampling: values out of range are refused", "[engine][sampling]") {
  CHECK_THROWS_AS(eng::start(tiny(), prompt, eng::sampling{-1.0f, 1, 0, 0}), std::invalid_argument);
  CHECK_THROWS_AS(eng::start(tiny(), prompt, eng::sampling{1.0f, 0.0f, 0, 0}), std::invalid_argument);
  CHECK_THROWS_AS(eng::start(tiny(), prompt, eng::sampling{1.0f, 1.5f, 0, 0}), std::invalid_argument);
  CHECK_THROWS_AS(eng::start(tiny(), prompt, eng::sampling{1.0f, 1.0f, -2, 0}), std::invalid_argument);
  CHECK_THROWS_AS(eng::start(tiny(), prompt, eng::sampling{NAN, 1.0f, 0, 0}), std::invalid_argument);
  CHECK_THROWS_WITH(eng::start(tiny(), {}, eng::sampling{}), Contains("empty"));
  CHECK_THROWS_WITH(eng::start(tiny(), {1, 1024}, eng::sampling{}), Contains("1024 is outside the vocabulary"));
  CHECK_THROWS_WITH(eng::start(tiny(), {-3}, eng::sampling{}), Contains("outside the vocabulary"));
}

TEST_CASE("generate: max_tokens, stop strings and EOS", "[engine][generate]") {
  const auto m = tiny();
  eng::generate_options o;
  o.max_tokens = 12;
  o.stop_at_eos = false;
  const auto full = eng::generate(m, prompt, eng::sampling{}, o);
  CHECK(full.tokens.size() == 12);
  CHECK(full.finish_reason == "length");
  CHECK(full.tokens == run(m, prompt, eng::sampling{}, 12));
  CHECK(full.text == eng::model_tokenizer(*m)->decode(full.tokens, true));
  o.max_tokens = 0;
  CHECK(eng::generate(m, prompt, eng::sampling{}, o).tokens.empty());

  // A stop string taken from the middle of the greedy text cuts the text before its first match.
  o.max_tokens = 32;
  const auto longer = eng::generate(m, prompt, eng::sampling{}, o);
  REQUIRE(longer.text.size() >= 8);
  const std::string stop = longer.text.substr(5, 2);
  o.stop = {"\x01\x02\x03 never", stop};
  const auto cut = eng::generate(m, prompt, eng::sampling{}, o);
  CHECK(cut.finish_reason == "stop");
  CHECK(cut.text == longer.text.substr(0, longer.text.find(stop)));
  CHECK(cut.tokens.size() < longer.tokens.size());
  CHECK(std::equal(cut.tokens.begin(), cut.tokens.end(), longer.tokens.begin()));

  // EOS: a checkpoint whose eos_token_id is the greedy run's third token stops before it.
  t::temp_dir dir;
  t::make_recipe_checkpoint("v3_qlora_yarn", dir.path());
  auto cfg = nlohmann::json::parse(t::read_text(dir.path() / "config.json"));
  const int32_t eos = longer.tokens[2];
  cfg["eos_token_id"] = eos;
  t::write_text(dir.path() / "config.json", cfg.dump());
  const auto m2 = eng::load_model(dir.str());
  CHECK(eng::eos_token(*m2) == eos);
  eng::generate_options oe;
  oe.max_tokens = 32;
  const auto stopped = eng::generate(m2, prompt, eng::sampling{}, oe);
  const auto first = std::find(longer.tokens.begin(), longer.tokens.end(), eos) - longer.tokens.begin();
  CHECK(stopped.finish_reason == "stop");
  CHECK(stopped.tokens == std::vector<int32_t>(longer.tokens.begin(), longer.tokens.begin() + first));
  CHECK_THROWS_WITH(eng::generate(m, prompt, eng::sampling{}, eng::generate_options{4, {""}, true}), Contains("empty"));
}

TEST_CASE("generate: the context ends the sequence", "[engine][generate]") {
  t::temp_dir dir;
  t::make_recipe_checkpoint("v2_greedy", dir.path());
  auto cfg = nlohmann::json::parse(t::read_text(dir.path() / "config.json"));
  cfg["max_position_embeddings"] = 8;
  t::write_text(dir.path() / "config.json", cfg.dump());
  const auto m = eng::load_model(dir.str());
  CHECK(eng::max_positions(*m) == 8);
  auto seq = eng::start(m, {5, 6, 7, 8, 9, 10}, eng::sampling{});
  seq->step();  // prefill: positions 0..5
  seq->step();  // position 6
  seq->step();  // position 7
  CHECK_THROWS_WITH(seq->step(), Contains("context of 8 positions is full"));
  eng::generate_options o;
  o.max_tokens = 100;
  o.stop_at_eos = false;
  const auto r = eng::generate(m, {5, 6, 7, 8, 9, 10}, eng::sampling{}, o);
  CHECK(r.tokens.size() == 2);
  CHECK(r.finish_reason == "length");
  CHECK_THROWS_WITH(eng::start(m, std::vector<int32_t>(9, 3), eng::sampling{}), Contains("longer than the context"));
}

TEST_CASE("chat template: DeepSeek-V3's form", "[engine][chat]") {
  const std::vector<eng::chat_message> msgs = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"system", "Use English."}, {"user", "2+2?"}};
  CHECK(eng::apply_chat_template_text(msgs, true) ==
        "<｜begin▁of▁sentence｜>Be brief.\n\nUse English.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>"
        "<｜User｜>2+2?<｜Assistant｜>");
  CHECK(eng::apply_chat_template_text({{"user", "x"}}, false) == "<｜begin▁of▁sentence｜><｜User｜>x");
  CHECK_THROWS_WITH(eng::apply_chat_template_text({{"tool", "x"}}, true), Contains("unsupported role 'tool'"));
  // Through the generated byte-level tokenizer: specials are single ids, text is one id per byte.
  const auto ids = eng::apply_chat_template(*tiny(), {{"user", "Hi"}}, true);
  CHECK(ids == std::vector<int32_t>{0, 259, 3 + 'H', 3 + 'i', 260});
  CHECK(eng::bos_token(*tiny()) == 0);
  CHECK(eng::vocab_size(*tiny()) == 1024);
  CHECK(eng::model_architecture(*tiny()) == "deepseek_v3");
  CHECK(eng::model_device(*tiny()) == "cpu");
  CHECK(eng::model_name(*tiny()) == tiny_dir().filename().string());
}

TEST_CASE("forward: the paged KV cache gives the logits of a full forward", "[engine][forward]") {
  const std::vector<int32_t> tokens = {0, 259, 40, 41, 42, 43, 44, 260, 100, 200, 300, 400};
  const auto full = eng::forward_logits(*tiny(), tokens);
  const size_t V = eng::vocab_size(*tiny());
  // A backend of its own (the model's belongs to its engine thread), with blocks of 4 positions
  // given out of order, so that the table and not the layout decides where positions live.
  eng::backend_options bo;
  bo.kv_block_size = 4;
  bo.kv_cache_memory = 1 << 20;
  auto backend = eng::make_backend(tiny()->config, tiny_dir().string(), bo);
  REQUIRE(backend->kv_pool().block_size == 4);
  REQUIRE(backend->kv_pool().blocks >= 8);
  const std::vector<int32_t> table = {7, 2, 5};
  eng::batch_result res;
  eng::batch_item it;
  it.blocks = table;
  it.logits = true;
  it.tokens = std::span<const int32_t>(tokens.data(), 3);
  backend->forward(std::span<const eng::batch_item>(&it, 1), res);
  for (size_t pos = 2; pos < tokens.size(); ++pos) {
    if (pos > 2) {
      it.tokens = std::span<const int32_t>(&tokens[pos], 1);
      it.start = pos;
      backend->forward(std::span<const eng::batch_item>(&it, 1), res);
    }
    REQUIRE(res.logits.size() == V);
    REQUIRE(res.tokens == std::vector<int32_t>{-1});
    double num = 0, den = 0;
    for (size_t i = 0; i < V; ++i) {
      const double d = res.logits[i] - full[pos * V + i];
      num += d * d;
      den += static_cast<double>(full[pos * V + i]) * full[pos * V + i];
    }
    INFO("position " << pos);
    CHECK(std::sqrt(num / den) < 1e-5);
  }
  CHECK(eng::forward_logits(*tiny(), {}).empty());
  // Bad items are refused before anything runs.
  const std::vector<int32_t> bad_token = {5000};
  it.tokens = bad_token;
  it.start = 0;
  CHECK_THROWS_WITH(backend->forward(std::span<const eng::batch_item>(&it, 1), res), Contains("outside the vocabulary"));
  it.tokens = std::span<const int32_t>(tokens.data(), tokens.size());
  it.start = 1;  // 13 positions; the table's three blocks hold 12
  CHECK_THROWS_WITH(backend->forward(std::span<const eng::batch_item>(&it, 1), res), Contains("does not cover 13 positions"));
  const std::vector<int32_t> outside = {0, 1, 100000};
  it.blocks = outside;
  it.start = 0;
  CHECK_THROWS_WITH(backend->forward(std::span<const eng::batch_item>(&it, 1), res), Contains("outside the pool"));
  CHECK_THROWS_AS(backend->forward({}, res), std::invalid_argument);
}

TEST_CASE("backends: devices and pool sizes", "[engine][forward]") {
  eng::backend_options bo;
  bo.device = "cuda:0";
  if (!eng::built_with_cuda()) {
    CHECK_THROWS_WITH(eng::load_model(tiny_dir().string(), bo), Contains("device 'cuda:0': this build has no CUDA backend"));
  }
  bo.device = "tpu";
  CHECK_THROWS_WITH(eng::load_model(tiny_dir().string(), bo), Contains("device 'tpu' is not known"));
  bo.device = "cpu";
  bo.dtype = "bfloat16";
  CHECK_THROWS_WITH(eng::load_model(tiny_dir().string(), bo), Contains("float32 only"));
  bo.dtype = "float32";
  bo.kv_cache_memory = 100;  // bytes: less than one block
  CHECK_THROWS_WITH(eng::load_model(tiny_dir().string(), bo), Contains("holds no KV block"));
  // v3_qlora_yarn: 3 layers of (32 + 8) floats a position; 64 positions a block: 30 KiB.
  const size_t block_bytes = 3 * 40 * 4 * 64;
  bo.kv_cache_memory = 10.5 * block_bytes;
  auto m = eng::load_model(tiny_dir().string(), bo);
  CHECK(eng::stats(*m).kv_blocks_total == 10);
  CHECK(eng::stats(*m).kv_blocks_free == 10);
  CHECK(eng::stats(*m).kv_block_size == 64);
  bo.kv_cache_memory = 0.5;  // half the CPU default of 256 MiB
  CHECK(eng::stats(*eng::load_model(tiny_dir().string(), bo)).kv_blocks_total == (size_t{128} << 20) / block_bytes);
  bo.kv_cache_memory = 0;
  CHECK(eng::stats(*eng::load_model(tiny_dir().string(), bo)).kv_blocks_total == (size_t{256} << 20) / block_bytes);
  CHECK_THAT(eng::model_describe(*m), Contains("KV pool 10 blocks"));
}
