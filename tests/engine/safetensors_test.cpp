// Safetensors reading and writing: dtype conversion, sharded folders, and clear errors for
// corrupt files, missing tensors and wrong shapes.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <limits>

#include "local_engine/engine.hpp"
#include "local_engine/forward_backend.hpp"
#include "local_engine/safetensors.hpp"
#include "tests/engine/test_support.hpp"

namespace eng = tollgate::engine;
namespace t = tollgate::engine::test;
using Catch::Matchers::Contains;

namespace {

std::string header_file(const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i));
  return s + header + std::string(data_bytes, '\0');
}

}  // namespace

TEST_CASE("safetensors: fp32, fp16 and bf16 read back as fp32", "[engine][safetensors]") {
  t::temp_dir dir;
  const std::vector<float> exact = {0.0f, 1.0f, -2.5f, 0.15625f, 1024.0f, -0.0078125f};
  std::vector<float> noisy;
  for (int i = 0; i < 64; ++i) noisy.push_back(std::sin(0.37f * i) * std::pow(10.0f, static_cast<float>(i % 7 - 3)));
  const auto path = (dir.path() / "t.safetensors").string();
  eng::write_safetensors(path, {{"a.f32", {2, 3}, exact, eng::dtype::f32},
                                {"a.f16", {6}, exact, eng::dtype::f16},
                                {"a.bf16", {3, 2}, exact, eng::dtype::bf16},
                                {"n.f32", {64}, noisy, eng::dtype::f32},
                                {"n.f16", {64}, noisy, eng::dtype::f16},
                                {"n.bf16", {8, 8}, noisy, eng::dtype::bf16}});
  const auto f = eng::safetensors_file::open(path);
  for (const char* n : {"a.f32", "a.f16", "a.bf16"}) {
    const auto x = f->read(n);
    REQUIRE(x.numel() == 6);
    for (size_t i = 0; i < exact.size(); ++i) CHECK(x.data[i] == exact[i]);
  }
  CHECK(f->read("a.f32").shape == std::vector<int64_t>{2, 3});
  CHECK(f->entries().at("a.bf16").dtype_name == "BF16");
  const auto n32 = f->read("n.f32"), n16 = f->read("n.f16"), nb = f->read("n.bf16");
  for (size_t i = 0; i < noisy.size(); ++i) {
    CHECK(n32.data[i] == noisy[i]);
    // half keeps 11 significant bits (subnormals below 6.1e-5 keep less), bfloat16 8 bits
    CHECK(std::fabs(n16.data[i] - noisy[i]) <= std::max(std::fabs(noisy[i]) * 1.0e-3f, 6.0e-8f));
    CHECK(std::fabs(nb.data[i] - noisy[i]) <= std::fabs(noisy[i]) * 4.0e-3f);
  }
}

TEST_CASE("safetensors: half and bfloat16 conversions round to nearest and keep specials", "[engine][safetensors]") {
  CHECK(eng::f16_to_f32(eng::f32_to_f16(65504.0f)) == 65504.0f);
  CHECK(std::isinf(eng::f16_to_f32(eng::f32_to_f16(1e6f))));
  CHECK(std::isnan(eng::f16_to_f32(eng::f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(eng::f16_to_f32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(eng::f16_to_f32(eng::f32_to_f16(std::ldexp(3.0f, -24))) == std::ldexp(3.0f, -24));
  CHECK(eng::f16_to_f32(0xc000) == -2.0f);
  CHECK(eng::bf16_to_f32(eng::f32_to_bf16(1.0f + std::ldexp(1.0f, -8))) == 1.0f);  // tie to even
  CHECK(eng::bf16_to_f32(eng::f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))) == 1.0f + std::ldexp(1.0f, -6));
  CHECK(std::isnan(eng::bf16_to_f32(eng::f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("safetensors: corrupt files give errors that name the problem", "[engine][safetensors]") {
  t::temp_dir dir;
  auto open_with = [&](const std::string& bytes) {
    const auto p = dir.path() / "bad.safetensors";
    t::write_text(p, bytes);
    return p.string();
  };
  CHECK_THROWS_WITH(eng::safetensors_file::open(open_with("abc")), Contains("shorter than"));
  CHECK_THROWS_WITH(eng::safetensors_file::open(open_with(std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8) + "{}")),
                    Contains("bad header length"));
  CHECK_THROWS_WITH(eng::safetensors_file::open(open_with(header_file("{not json", 0))), Contains("not valid JSON"));
  CHECK_THROWS_WITH(eng::safetensors_file::open(open_with(header_file("[1,2]", 0))), Contains("not a JSON object"));
  CHECK_THROWS_WITH(
      eng::safetensors_file::open(open_with(header_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8))),
      Contains("tensor 'w'") && Contains("outside"));
  CHECK_THROWS_WITH(
      eng::safetensors_file::open(open_with(header_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16))),
      Contains("tensor 'w'") && Contains("needs 12"));
  CHECK_THROWS_WITH(
      eng::safetensors_file::open(open_with(header_file(R"({"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}})", 1))),
      Contains("unknown dtype"));
  CHECK_THROWS_WITH(
      eng::safetensors_file::open(open_with(header_file(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4))),
      Contains("dimension"));
  CHECK_THROWS_WITH(eng::safetensors_file::open(open_with(header_file(R"({"w":{"dtype":"F32"}})", 0))),
                    Contains("needs dtype, shape and data_offsets"));
  const auto ok = open_with(header_file(R"({"w":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", 4));
  CHECK_THROWS_WITH(eng::safetensors_file::open(ok)->read("w"), Contains("only F32, F16, BF16 and F8_E4M3"));
  CHECK_THROWS_WITH(eng::safetensors_file::open(ok)->read("nope"), Contains("no tensor 'nope'"));
  CHECK_THROWS_WITH(eng::safetensors_file::open((dir.path() / "absent.safetensors").string()), Contains("cannot open"));
}

TEST_CASE("checkpoint: sharded and single-file checkpoints give the same logits", "[engine][safetensors]") {
  t::temp_dir one, three;
  auto recipe = nlohmann::json::parse(t::read_text(t::recipe_path("v2_greedy")));
  eng::make_tiny_checkpoint(recipe.dump(), one.str());
  recipe["shards"] = 3;
  eng::make_tiny_checkpoint(recipe.dump(), three.str());
  CHECK(std::filesystem::exists(three.path() / "model.safetensors.index.json"));
  CHECK(std::filesystem::exists(three.path() / "model-00003-of-00003.safetensors"));
  const std::vector<int32_t> tokens = {3, 14, 15, 92, 65};
  const auto a = eng::forward_logits(*eng::load_model(one.str()), tokens);
  const auto b = eng::forward_logits(*eng::load_model(three.str()), tokens);
  CHECK(a == b);
  // The same weights in bf16 and fp16 load through conversion and stay close to fp32.
  for (const char* dt : {"bfloat16", "float16"}) {
    t::temp_dir d;
    recipe["shards"] = 1;
    recipe["dtype"] = dt;
    eng::make_tiny_checkpoint(recipe.dump(), d.str());
    const auto c = eng::forward_logits(*eng::load_model(d.str()), tokens);
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      num += (c[i] - a[i]) * (c[i] - a[i]);
      den += a[i] * a[i];
    }
    INFO(dt);
    CHECK(std::sqrt(num / den) < 0.05);
    CHECK(c != a);
  }
}

TEST_CASE("checkpoint: missing tensors, wrong shapes and bad indexes are named", "[engine][safetensors]") {
  t::temp_dir src;
  t::make_recipe_checkpoint("v2_greedy", src.path());
  const auto f = eng::safetensors_file::open((src.path() / "model.safetensors").string());
  auto rewrite = [&](const std::filesystem::path& dir, const std::string& drop, const std::string& reshape) {
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(src.path() / "config.json", dir / "config.json");
    std::vector<eng::tensor_to_write> ts;
    for (const auto& [name, e] : f->entries()) {
      if (name == drop) continue;
      const auto x = f->read(name);
      eng::tensor_to_write w{name, x.shape, std::vector<float>(x.data, x.data + x.numel()), eng::dtype::f32};
      if (name == reshape) w.shape = {x.numel()};
      ts.push_back(std::move(w));
    }
    eng::write_safetensors((dir / "model.safetensors").string(), ts);
  };
  t::temp_dir work;
  rewrite(work.path() / "missing", "model.layers.1.mlp.experts.7.down_proj.weight", "");
  CHECK_THROWS_WITH(eng::load_model((work.path() / "missing").string()),
                    Contains("no tensor 'model.layers.1.mlp.experts.7.down_proj.weight'"));
  rewrite(work.path() / "shape", "", "model.layers.0.self_attn.kv_b_proj.weight");
  CHECK_THROWS_WITH(eng::load_model((work.path() / "shape").string()),
                    Contains("'model.layers.0.self_attn.kv_b_proj.weight' has shape [4096], expected [128, 32]"));

  const auto idx = work.path() / "index";
  std::filesystem::create_directories(idx);
  std::filesystem::copy_file(src.path() / "config.json", idx / "config.json");
  t::write_text(idx / "model.safetensors.index.json", R"({"weight_map": {"model.norm.weight": "model-1.safetensors"}})");
  CHECK_THROWS_WITH(eng::load_model(idx.string()), Contains("model-1.safetensors") && Contains("cannot open"));
  t::write_text(idx / "model.safetensors.index.json", R"({"weight_map": {"model.norm.weight": "../x.safetensors"}})");
  CHECK_THROWS_WITH(eng::load_model(idx.string()), Contains("outside the folder"));
  t::write_text(idx / "model.safetensors.index.json", "{");
  CHECK_THROWS_WITH(eng::load_model(idx.string()), Contains("not valid JSON"));

  const auto nocfg = work.path() / "nocfg";
  std::filesystem::create_directories(nocfg);
  CHECK_THROWS_WITH(eng::load_model(nocfg.string()), Contains("no config.json"));
  CHECK_THROWS_WITH(eng::load_model((work.path() / "absent").string()), Contains("not a checkpoint folder"));
  eng::backend_options cuda;
  cuda.device = "cuda:0";
  if (!eng::built_with_cuda()) CHECK_THROWS_WITH(eng::load_model(src.str(), cuda), Contains("this build has no CUDA backend"));
  eng::backend_options tpu;
  tpu.device = "tpu";
  CHECK_THROWS_WITH(eng::load_model(src.str(), tpu), Contains("not known"));
}
