// FP8 checkpoints as DeepSeek-V3 publishes them (e4m3 matrices with float32 block scales,
// quantization_config in config.json): the e4m3 conversions, the generator's FP8 checkpoint and
// its dequantised twins, loading (the CPU backend dequantises at load), and the errors a broken
// FP8 checkpoint gets. Also the pure check that refuses weights a device cannot hold.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "local_engine/checkpoint_layout.hpp"
#include "local_engine/engine.hpp"
#include "local_engine/model_config.hpp"
#include "local_engine/safetensors.hpp"
#include "tests/engine/test_support.hpp"

namespace eng = tollgate::engine;
namespace t = tollgate::engine::test;
using Catch::Matchers::Contains;
using json = nlohmann::json;

namespace {

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

json fp8_recipe(const std::string& base, const std::string& dtype, bool dequantize) {
  json r = json::parse(t::read_text(t::recipe_path(base)));
  r["dtype"] = dtype;
  r["fp8_block_size"] = {16, 16};
  if (dequantize) r["dequantize_fp8"] = true;
  return r;
}

}  // namespace

TEST_CASE("fp8: e4m3 conversions round to nearest even, saturate and keep NaN", "[engine][fp8]") {
  CHECK(eng::e4m3_to_f32(0x00) == 0.0f);
  CHECK(eng::e4m3_to_f32(0x38) == 1.0f);
  CHECK(eng::e4m3_to_f32(0x30) == 0.5f);
  CHECK(eng::e4m3_to_f32(0x7e) == 448.0f);
  CHECK(eng::e4m3_to_f32(0xfe) == -448.0f);
  CHECK(eng::e4m3_to_f32(0x01) == std::ldexp(1.0f, -9));  // the smallest subnormal
  CHECK(eng::e4m3_to_f32(0x08) == std::ldexp(1.0f, -6));  // the smallest normal
  CHECK(std::isnan(eng::e4m3_to_f32(0x7f)));
  CHECK(std::isnan(eng::e4m3_to_f32(0xff)));
  // Every finite code round-trips.
  for (int v = 0; v < 256; ++v) {
    if ((v & 0x7f) == 0x7f) continue;
    INFO("code " << v);
    const float f = eng::e4m3_to_f32(static_cast<uint8_t>(v));
    if (v == 0x80) CHECK(eng::f32_to_e4m3(f) == 0x80);  // -0 keeps its sign
    else CHECK(eng::f32_to_e4m3(f) == v);
  }
  CHECK(eng::f32_to_e4m3(1.0625f) == 0x38);  // halfway between 1 and 1.125: to the even code
  CHECK(eng::f32_to_e4m3(1.1875f) == 0x3a);  // halfway between 1.125 and 1.25: to the even code
  CHECK(eng::f32_to_e4m3(1.07f) == 0x39);
  CHECK(eng::f32_to_e4m3(1000.0f) == 0x7e);  // saturates
  CHECK(eng::f32_to_e4m3(-1e30f) == 0xfe);
  CHECK(eng::f32_to_e4m3(std::ldexp(1.0f, -11)) == 0x00);  // a quarter of the smallest subnormal
  CHECK(eng::f32_to_e4m3(std::nanf("")) == 0x7f);
}

TEST_CASE("fp8: the generator writes DeepSeek-V3's FP8 layout", "[engine][fp8]") {
  t::temp_dir dir;
  eng::make_tiny_checkpoint(fp8_recipe("v3_qlora_yarn", "float8_e4m3", false).dump(), dir.str());
  const json cfg = json::parse(t::read_text(dir.path() / "config.json"));
  CHECK(cfg["quantization_config"] ==
        json({{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"}, {"weight_block_size", {16, 16}}}));
  const auto c = eng::parse_model_config(cfg.dump());
  CHECK(c.fp8_block_rows == 16);
  CHECK(c.fp8_block_cols == 16);
  const auto f = eng::safetensors_file::open((dir.path() / "model.safetensors").string());
  const auto& e = f->entries();
  const std::string a = "model.layers.1.self_attn.";
  REQUIRE(e.count(a + "kv_a_proj_with_mqa.weight"));
  CHECK(e.at(a + "kv_a_proj_with_mqa.weight").dtype_name == "F8_E4M3");
  const auto kv_shape = e.at(a + "kv_a_proj_with_mqa.weight").shape;
  REQUIRE(e.count(a + "kv_a_proj_with_mqa.weight_scale_inv"));
  CHECK(e.at(a + "kv_a_proj_with_mqa.weight_scale_inv").dtype_name == "F32");
  CHECK(e.at(a + "kv_a_proj_with_mqa.weight_scale_inv").shape ==
        std::vector<int64_t>{(kv_shape[0] + 15) / 16, (kv_shape[1] + 15) / 16});
  CHECK(e.at("model.layers.1.mlp.experts.0.down_proj.weight").dtype_name == "F8_E4M3");
  // Not quantised, as in the published checkpoints: embeddings, lm_head, router, norms.
  CHECK(e.at("model.embed_tokens.weight").dtype_name == "BF16");
  CHECK(e.at("lm_head.weight").dtype_name == "BF16");
  CHECK(e.at("model.layers.1.mlp.gate.weight").dtype_name == "BF16");
  CHECK(e.at("model.layers.1.input_layernorm.weight").dtype_name == "BF16");
  CHECK_FALSE(e.count("model.embed_tokens.weight_scale_inv"));
  // Each block's largest magnitude maps to 448 (the scale is that magnitude / 448).
  const auto q = f->read(a + "kv_a_proj_with_mqa.weight");
  float amax = 0;
  for (int64_t r = 0; r < 16; ++r)
    for (int64_t col = 0; col < 16; ++col) amax = std::max(amax, std::fabs(q.data[r * kv_shape[1] + col]));
  CHECK(amax == 448.0f);
}

TEST_CASE("fp8: an FP8 checkpoint's logits equal its dequantised twin's, and are near the unquantised model's",
          "[engine][fp8]") {
  for (const std::string base : {"v3_qlora_yarn", "v2_greedy"}) {
    INFO("recipe " << base);
    t::temp_dir fp8, twin32, twin16, plain;
    eng::make_tiny_checkpoint(fp8_recipe(base, "float8_e4m3", false).dump(), fp8.str());
    eng::make_tiny_checkpoint(fp8_recipe(base, "float32", true).dump(), twin32.str());
    eng::make_tiny_checkpoint(fp8_recipe(base, "bfloat16", true).dump(), twin16.str());
    auto plain_recipe = json::parse(t::read_text(t::recipe_path(base)));
    plain_recipe["dtype"] = "float32";
    eng::make_tiny_checkpoint(plain_recipe.dump(), plain.str());
    std::vector<int32_t> tokens;
    for (int i = 0; i < 40; ++i) tokens.push_back(5 + (i * 37) % 250);

    const auto m8 = eng::load_model(fp8.str());
    const auto l8 = eng::forward_logits(*m8, tokens);
    // Dequantised at load to float32: exactly the twin that holds the dequantised values.
    const auto l32 = eng::forward_logits(*eng::load_model(twin32.str()), tokens);
    CHECK(l8 == l32);
    // The twin in bfloat16 (each dequantised value rounded once more): within bfloat16's tolerance.
    const double e16 = relative_error(eng::forward_logits(*eng::load_model(twin16.str()), tokens), l8);
    CHECK(e16 < 0.02);
    // The model before quantisation: near, but not the same (e4m3 keeps three mantissa bits).
    const double eq = relative_error(eng::forward_logits(*eng::load_model(plain.str()), tokens), l8);
    CHECK(eq > 1e-4);
    CHECK(eq < 0.25);
    INFO("bf16 twin " << e16 << ", unquantised " << eq);
    // Generation through the scheduler gives the twin's tokens.
    const eng::sampling s{0.8f, 0.9f, 0, 7};
    eng::generate_options go;
    go.max_tokens = 12;
    go.stop_at_eos = false;
    CHECK(eng::generate(m8, tokens, s, go).tokens == eng::generate(eng::load_model(twin32.str()), tokens, s, go).tokens);
  }
}

TEST_CASE("fp8: broken FP8 checkpoints and quantization configs are named", "[engine][fp8]") {
  t::temp_dir src;
  eng::make_tiny_checkpoint(fp8_recipe("v2_greedy", "float8_e4m3", false).dump(), src.str());
  const json cfg = json::parse(t::read_text(src.path() / "config.json"));
  auto with_config = [&](const json& c) {
    auto d = std::make_unique<t::temp_dir>();
    std::filesystem::copy_file(src.path() / "model.safetensors", d->path() / "model.safetensors");
    t::write_text(d->path() / "config.json", c.dump());
    return d;
  };
  {  // FP8 tensors without a quantization_config.
    json c = cfg;
    c.erase("quantization_config");
    const auto d = with_config(c);
    CHECK_THROWS_WITH(eng::load_model(d->str()), Contains("is F8_E4M3, but config.json has no quantization_config"));
  }
  {  // Scales for other blocks than the config says.
    json c = cfg;
    c["quantization_config"]["weight_block_size"] = {8, 8};
    const auto d = with_config(c);
    CHECK_THROWS_WITH(eng::load_model(d->str()), Contains("weight_scale_inv' has shape") && Contains("blocks of 8 x 8"));
  }
  {  // A scale missing.
    const auto f = eng::safetensors_file::open((src.path() / "model.safetensors").string());
    std::vector<eng::tensor_to_write> kept;
    for (const auto& [name, e] : f->entries()) {
      if (name == "model.layers.0.self_attn.o_proj.weight_scale_inv") continue;
      const auto v = f->read(name);
      kept.push_back({name, e.shape, std::vector<float>(v.data, v.data + v.numel()), e.type});
    }
    t::temp_dir d;
    eng::write_safetensors((d.path() / "model.safetensors").string(), kept);
    t::write_text(d.path() / "config.json", cfg.dump());
    CHECK_THROWS_WITH(eng::load_model(d.str()), Contains("o_proj.weight' is F8_E4M3 but 'model.layers.0.self_attn.o_proj.weight_scale_inv' is missing"));
  }
  // quantization_config values the engine does not read.
  auto bad = [&](const char* key, const json& v) {
    json c = cfg;
    c["quantization_config"][key] = v;
    return c.dump();
  };
  CHECK_THROWS_WITH(eng::parse_model_config(bad("quant_method", "awq")), Contains("quant_method 'awq' is not supported"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("fmt", "e5m2")), Contains("fmt 'e5m2'"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("activation_scheme", "static")), Contains("activation_scheme 'static'"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("weight_block_size", json::array())), Contains("weight_block_size"));
  CHECK_THROWS_WITH(eng::parse_model_config(bad("weight_block_size", {0, 128})), Contains("from 1 to 65536"));
  // The recipe's own fields.
  auto r = fp8_recipe("v2_greedy", "float8_e4m3", true);
  t::temp_dir out;
  CHECK_THROWS_WITH(eng::make_tiny_checkpoint(r.dump(), out.str()), Contains("dequantize_fp8"));
  r = fp8_recipe("v2_greedy", "float8_e4m3", false);
  r["fp8_block_size"] = 16;
  CHECK_THROWS_WITH(eng::make_tiny_checkpoint(r.dump(), out.str()), Contains("fp8_block_size"));
  r["dtype"] = "float8_e5m2";
  CHECK_THROWS_WITH(eng::make_tiny_checkpoint(r.dump(), out.str()), Contains("float8_e4m3"));
}

TEST_CASE("limits: weights that do not fit a device are refused with the bytes needed and free", "[engine][limits]") {
  t::temp_dir d;
  t::make_recipe_checkpoint("v2_greedy", d.path());  // float32: every tensor at 4 bytes a value
  const auto c = eng::parse_model_config(t::read_text(d.path() / "config.json"));
  const auto f = eng::safetensors_file::open((d.path() / "model.safetensors").string());
  uint64_t on_disk = 0;
  for (const auto& [name, e] : f->entries()) on_disk += e.end - e.begin;
  CHECK(eng::device_weight_bytes(c, 4) == on_disk);
  const uint64_t bf16 = eng::device_weight_bytes(c, 2);
  CHECK(bf16 < on_disk);
  CHECK(bf16 > on_disk / 2);  // norms stay float32

  // Routed experts kept in FP8: a byte a value and a float scale a row for each 128 columns.
  uint64_t expert_values = 0, expert_scales = 0;
  for (const auto& t : eng::checkpoint_tensors(c))
    if (t.name.find(".mlp.experts.") != std::string::npos) {
      expert_values += static_cast<uint64_t>(t.shape[0] * t.shape[1]);
      expert_scales += static_cast<uint64_t>(t.shape[0] * ((t.shape[1] + 127) / 128)) * 4;
    }
  REQUIRE(expert_values > 0);
  CHECK(eng::device_weight_bytes(c, 2, 128) == bf16 - expert_values + expert_scales);

  CHECK_NOTHROW(eng::check_weights_fit(bf16, bf16, "cuda:0"));
  CHECK_THROWS_WITH(eng::check_weights_fit(16'000'000'000ull, 12'884'901'888ull, "cuda:1"),
                    Contains("does not fit cuda:1") && Contains("need 16000000000 bytes (14.90 GiB)") &&
                        Contains("12884901888 bytes (12.00 GiB) are free"));
}

TEST_CASE("fp8: the fp8_experts modes set what the GPU backend keeps and how it multiplies", "[engine][fp8]") {
  eng::backend_options o;
  CHECK(o.keep_fp8);
  CHECK(o.fp8_tensor_cores);
  eng::set_fp8_experts(o, "dequantise_at_load");
  CHECK_FALSE(o.keep_fp8);
  CHECK_FALSE(o.fp8_tensor_cores);
  eng::set_fp8_experts(o, "dequantise_on_read");
  CHECK(o.keep_fp8);
  CHECK_FALSE(o.fp8_tensor_cores);
  eng::set_fp8_experts(o, "tensor_cores");
  CHECK(o.keep_fp8);
  CHECK(o.fp8_tensor_cores);
  CHECK_THROWS_WITH(eng::set_fp8_experts(o, "fp8"), Contains("tensor_cores, dequantise_on_read or dequantise_at_load") &&
                                                        Contains("got 'fp8'"));
}
