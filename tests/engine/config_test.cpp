// config.json parsing: both rope spellings (published `rope_scaling`, transformers 5's
// `rope_parameters`), transformers' defaults, YaRN tables, and errors that name the field.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>

#include "local_engine/model_config.hpp"
#include "tests/engine/test_support.hpp"

namespace eng = tollgate::engine;
namespace t = tollgate::engine::test;
using Catch::Matchers::Contains;
using nlohmann::json;

namespace {
json recipe_config(const std::string& name) { return json::parse(t::read_text(t::recipe_path(name))).at("config"); }
eng::model_config parse(const json& j) { return eng::parse_model_config(j.dump(), "test config.json"); }
}  // namespace

TEST_CASE("config: rope_scaling and rope_parameters mean the same", "[engine][config]") {
  json legacy = recipe_config("v2_qlora_group_yarn");  // written as published checkpoints write it
  json v5 = legacy;
  v5.erase("rope_scaling");
  v5.erase("rope_theta");
  v5["rope_parameters"] = {{"rope_type", "yarn"},       {"rope_theta", 10000.0},  {"factor", 4.0},
                           {"original_max_position_embeddings", 128}, {"beta_fast", 32}, {"beta_slow", 1},
                           {"mscale", 0.9},             {"mscale_all_dim", 0.7}};
  const auto a = parse(legacy), b = parse(v5);
  CHECK(a.rope.type == "yarn");
  CHECK(b.rope.type == "yarn");
  CHECK(a.rope.theta == b.rope.theta);
  CHECK(a.rope.factor == b.rope.factor);
  CHECK(a.rope.original_max_position_embeddings == b.rope.original_max_position_embeddings);
  CHECK(*a.rope.mscale == *b.rope.mscale);
  CHECK(*a.rope.mscale_all_dim == *b.rope.mscale_all_dim);
  CHECK(eng::compute_rope(a).inv_freq == eng::compute_rope(b).inv_freq);
  CHECK(a.softmax_scale() == b.softmax_scale());

  // A non-empty rope_scaling wins over rope_parameters, as in transformers.
  json both = v5;
  both["rope_scaling"] = {{"type", "yarn"}, {"factor", 2.0}, {"original_max_position_embeddings", 64}};
  CHECK(parse(both).rope.factor == 2.0);
  both["rope_scaling"] = nullptr;
  CHECK(parse(both).rope.factor == 4.0);
  // No rope fields: default rope, theta 10000.
  json plain = legacy;
  plain.erase("rope_scaling");
  plain.erase("rope_theta");
  CHECK(parse(plain).rope.type == "default");
  CHECK(parse(plain).rope.theta == 10000.0);
}

TEST_CASE("config: YaRN frequencies and softmax scale follow the YaRN formulas", "[engine][config]") {
  const auto c = parse(recipe_config("v2_qlora_group_yarn"));
  const auto r = eng::compute_rope(c);
  REQUIRE(r.inv_freq.size() == 4);
  // dim 8, theta 1e4, factor 4, original 128: the ramp runs over dims [0, 2] (floor/ceil of the
  // correction range [-0.20, 1.31]); dims 0 extrapolate, 1 blends half-half, 2 and 3 interpolate.
  for (int i = 0; i < 4; ++i) {
    const double base = std::pow(10000.0, 2.0 * i / 8.0);
    const double ramp = std::clamp(i / 2.0, 0.0, 1.0);
    const double expect = (1 / (4 * base)) * ramp + (1 / base) * (1 - ramp);
    CHECK(r.inv_freq[static_cast<size_t>(i)] == Approx(expect).epsilon(1e-6));
  }
  const double m = 0.1 * 0.9 * std::log(4.0) + 1, m_all = 0.1 * 0.7 * std::log(4.0) + 1;
  CHECK(r.attention_factor == Approx(m / m_all).epsilon(1e-6));
  CHECK(c.softmax_scale() == Approx(m_all * m_all / std::sqrt(24.0)).epsilon(1e-12));
  const auto plain = parse(recipe_config("v2_greedy"));
  CHECK(plain.softmax_scale() == Approx(1 / std::sqrt(24.0)).epsilon(1e-12));
  CHECK(eng::compute_rope(plain).attention_factor == 1.0f);
}

TEST_CASE("config: architecture fields and transformers' defaults", "[engine][config]") {
  const auto v3 = parse(recipe_config("v3_qlora_yarn"));
  CHECK(v3.v3);
  CHECK(v3.q_lora_rank == 48);
  CHECK(v3.topk_method == "noaux_tc");
  CHECK(v3.n_group == 4);
  CHECK(v3.norm_topk_prob);
  CHECK_FALSE(v3.is_moe_layer(0));
  CHECK(v3.is_moe_layer(1));
  CHECK(v3.eos_token_ids == std::vector<int>{1});
  const auto v2 = parse(recipe_config("v2_greedy"));
  CHECK_FALSE(v2.v3);
  CHECK(v2.q_lora_rank == 0);  // null: no q-LoRA
  json j = recipe_config("v2_greedy");
  j.erase("q_lora_rank");
  CHECK(parse(j).q_lora_rank == 1536);  // absent: transformers' default
  j = recipe_config("v2_greedy");
  j["eos_token_id"] = {7, 9};
  j["moe_layer_freq"] = 2;
  CHECK(parse(j).eos_token_ids == std::vector<int>{7, 9});
  CHECK(parse(j).is_moe_layer(0));
  CHECK_FALSE(parse(j).is_moe_layer(1));
  j = recipe_config("v3_bf16");
  j.erase("model_type");
  CHECK(parse(j).model_type == "deepseek_v3");  // from architectures
}

TEST_CASE("config: bad values are refused with the field's name", "[engine][config]") {
  auto bad = [](const std::string& recipe, const std::string& key, json value) {
    json j = recipe_config(recipe);
    if (value.is_null() && key.front() == '-') j.erase(key.substr(1));
    else j[key] = value;
    return j.dump();
  };
  CHECK_THROWS_WITH(eng::parse_model_config("{", "c.json"), Contains("c.json") && Contains("not valid JSON"));
  CHECK_THROWS_WITH(eng::parse_model_config("[]", "c.json"), Contains("JSON object"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "hidden_size", "big")), Contains("'hidden_size' must be an integer"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "hidden_size", 0)), Contains("'hidden_size' must be positive"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "model_type", "llama")), Contains("model_type 'llama'"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "topk_method", "random")), Contains("topk_method 'random'"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "num_experts_per_tok", 9)), Contains("num_experts_per_tok"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "qk_rope_head_dim", 7)), Contains("qk_rope_head_dim"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "num_key_value_heads", 2)), Contains("num_key_value_heads"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "hidden_act", "gelu")), Contains("hidden_act 'gelu'"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "eos_token_id", 5000)), Contains("eos_token_id 5000"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v3_qlora_yarn", "n_group", 3)), Contains("multiple of a positive n_group"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v3_qlora_yarn", "topk_group", 5)), Contains("topk_group"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "rope_scaling", json{{"type", "yarn"}})), Contains("factor is required"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "rope_scaling", json{{"type", "longrope"}, {"factor", 2}})),
                    Contains("'longrope' is not supported"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("v2_greedy", "rope_parameters", 3)), Contains("must be an object"));
}
