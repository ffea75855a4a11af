// The CPU forward against transformers: full-sequence logits of every golden prompt within a
// relative error of 1e-4 per position, and the same 32 greedy tokens through the KV cache. The
// checkpoints are regenerated from the recipes; the goldens come from tests/engine/make_goldens.py.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>

#include "local_engine/engine.hpp"
#include "tests/engine/test_support.hpp"

namespace eng = tollgate::engine;
namespace t = tollgate::engine::test;

namespace {

double relative_error(const float* out, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(out[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num) / std::sqrt(den);
}

void check_recipe(const std::string& name) {
  const auto golden = nlohmann::json::parse(
      t::read_text(std::filesystem::path(TOLLGATE_SOURCE_DIR) / "tests/engine/goldens" / (name + ".json")));
  t::temp_dir dir;
  t::make_recipe_checkpoint(name, dir.path());
  const auto m = eng::load_model(dir.str(), t::test_backend_options());
  const size_t V = eng::vocab_size(*m);

  double worst = 0;
  for (const auto& p : golden.at("prompts")) {
    const auto tokens = p.at("tokens").get<std::vector<int32_t>>();
    const auto logits = eng::forward_logits(*m, tokens);
    REQUIRE(logits.size() == tokens.size() * V);
    const auto& ref = p.at("logits");
    REQUIRE(ref.size() == tokens.size());
    for (size_t pos = 0; pos < tokens.size(); ++pos) {
      const auto r = ref[pos].get<std::vector<double>>();
      REQUIRE(r.size() == V);
      const double err = relative_error(logits.data() + pos * V, r);
      worst = std::max(worst, err);
      INFO(name << " prompt of " << tokens.size() << " tokens, position " << pos);
      CHECK(err < 1e-4);
    }
  }
  std::printf("golden %-22s max relative error %.3e\n", name.c_str(), worst);

  const auto& g = golden.at("greedy");
  REQUIRE(g.at("tokens").size() == 32);  // the 32 greedy steps
  auto seq = eng::start(m, g.at("prompt").get<std::vector<int32_t>>(), eng::sampling{});
  std::vector<int32_t> got;
  for (size_t i = 0; i < g.at("tokens").size(); ++i) got.push_back(seq->step());
  CHECK(got == g.at("tokens").get<std::vector<int32_t>>());
  CHECK(seq->generated_tokens() == got.size());
  CHECK(seq->prompt_tokens() == g.at("prompt").size());
}

}  // namespace

TEST_CASE("golden: DeepSeek-V2, no q-LoRA, greedy routing", "[engine][golden]") { check_recipe("v2_greedy"); }
TEST_CASE("golden: DeepSeek-V2, q-LoRA, group-limited routing, YaRN", "[engine][golden]") {
  check_recipe("v2_qlora_group_yarn");
}
TEST_CASE("golden: DeepSeek-V3, q-LoRA, score correction bias, YaRN, a dense first layer", "[engine][golden]") {
  check_recipe("v3_qlora_yarn");
}
TEST_CASE("golden: DeepSeek-V3, no q-LoRA, bf16 shards, non-interleaved rope", "[engine][golden]") {
  check_recipe("v3_bf16");
}
