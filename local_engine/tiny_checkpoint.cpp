#include "local_engine/tiny_checkpoint.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "local_engine/checkpoint_layout.hpp"
#include "local_engine/model_config.hpp"
#include "local_engine/safetensors.hpp"
#include "local_engine/sampler.hpp"

namespace tollgate::engine {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  return h;
}

double number(const json& r, const char* key, double def) {
  if (!r.contains(key)) return def;
  if (!r.at(key).is_number()) throw std::runtime_error(std::string("recipe: '") + key + "' must be a number");
  return r.at(key).get<double>();
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error(p.string() + ": cannot create");
  out << text;
  if (!out) throw std::runtime_error(p.string() + ": write failed");
}

// UTF-8 of a code point below 0x800 (all the byte-level alphabet needs).
std::string utf8(unsigned cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xc0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
  return s;
}

// A byte-level BPE tokenizer.json: one token per byte (ids 3 to 258), DeepSeek's special tokens
// (ids 0 to 2 and the chat markers 259, 260), then as many merged pairs of a lowercase letter or a
// space and a lowercase letter as the vocabulary holds, so that what a random model samples reads
// as text rather than stray bytes. With fill, merges of three and then four lowercase letters follow
// until every id of the vocabulary is a token, so that any id a model samples decodes to text.
std::string byte_tokenizer_json(int vocab_size, bool fill) {
  const char* specials[] = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜User｜>",
                            "<｜Assistant｜>"};
  const int n_special = 5;
  if (vocab_size < 256 + n_special)
    throw std::runtime_error("recipe: a generated tokenizer needs vocab_size >= " + std::to_string(256 + n_special));
  // The byte-level alphabet: printable bytes stand for themselves, the rest map above U+0100.
  std::vector<unsigned> alphabet(256);
  unsigned extra = 0;
  for (unsigned b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
    alphabet[b] = printable ? b : 256 + extra++;
  }
  json vocab = json::object();
  json added = json::array();
  for (int i = 0; i < n_special; ++i) {
    const int id = i < 3 ? i : 256 + i;
    vocab[specials[i]] = id;
    added.push_back({{"id", id}, {"content", specials[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  for (unsigned b = 0; b < 256; ++b) vocab[utf8(alphabet[b])] = static_cast<int>(3 + b);
  json merges = json::array();
  int next = 256 + n_special;
  for (unsigned first : {unsigned(' '), unsigned('a')}) {
    for (unsigned a = first; a <= (first == ' ' ? unsigned(' ') : unsigned('z')); ++a) {
      for (unsigned b = 'a'; b <= 'z' && next < vocab_size; ++b) {
        const std::string left = utf8(alphabet[a]), right = utf8(alphabet[b]);
        merges.push_back(left + " " + right);
        vocab[left + right] = next++;
      }
    }
  }
  if (fill) {
    std::vector<std::string> prev;
    for (char a = 'a'; a <= 'z'; ++a)
      for (char b = 'a'; b <= 'z'; ++b) prev.push_back(std::string{a, b});
    while (next < vocab_size && !prev.empty()) {
      std::vector<std::string> longer;
      for (const auto& left : prev)
        for (char c = 'a'; c <= 'z' && next < vocab_size; ++c) {
          merges.push_back(left + " " + std::string(1, c));
          vocab[left + c] = next++;
          longer.push_back(left + c);
        }
      prev = std::move(longer);
    }
  }
  json doc = {{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
              {"post_processor", nullptr},
              {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
              {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                         {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                         {"ignore_merges", false}, {"vocab", vocab}, {"merges", merges}}}};
  return doc.dump(1) + "\n";
}

}  // namespace

std::string generated_tokenizer_json(int vocab_size) { return byte_tokenizer_json(vocab_size, true); }

void make_tiny_checkpoint(const std::string& recipe_json_text, const std::string& out_dir) {
  json r;
  try {
    r = json::parse(recipe_json_text);
  } catch (const json::exception& e) {
    throw std::runtime_error(std::string("recipe: not valid JSON: ") + e.what());
  }
  if (!r.is_object() || !r.contains("config") || !r.at("config").is_object())
    throw std::runtime_error("recipe: needs a 'config' object (a transformers config.json)");
  if (!r.contains("seed") || !r.at("seed").is_number_unsigned())
    throw std::runtime_error("recipe: needs a non-negative integer 'seed'");
  const json& cj = r.at("config");
  const model_config c = parse_model_config(cj.dump(), "recipe config");
  const uint64_t seed = r.at("seed").get<uint64_t>();
  const std::string dt = r.value("dtype", std::string("float32"));
  dtype type;
  if (dt == "float32") type = dtype::f32;
  else if (dt == "bfloat16") type = dtype::bf16;
  else if (dt == "float16") type = dtype::f16;
  else if (dt == "float8_e4m3") type = dtype::f8_e4m3;
  else throw std::runtime_error("recipe: dtype '" + dt + "' is not float32, bfloat16, float16 or float8_e4m3");
  if (r.contains("dequantize_fp8") && !r.at("dequantize_fp8").is_boolean())
    throw std::runtime_error("recipe: 'dequantize_fp8' must be true or false");
  const bool dequantize = r.value("dequantize_fp8", false);
  if (dequantize && type == dtype::f8_e4m3)
    throw std::runtime_error("recipe: 'dequantize_fp8' writes another dtype than float8_e4m3");
  const bool fp8 = type == dtype::f8_e4m3 || dequantize;
  int64_t block_rows = 128, block_cols = 128;
  if (r.contains("fp8_block_size")) {
    const json& b = r.at("fp8_block_size");
    if (!b.is_array() || b.size() != 2 || !b[0].is_number_unsigned() || !b[1].is_number_unsigned() || b[0].get<int64_t>() < 1 ||
        b[1].get<int64_t>() < 1 || b[0].get<int64_t>() > 65536 || b[1].get<int64_t>() > 65536)
      throw std::runtime_error("recipe: 'fp8_block_size' must be two integers from 1 to 65536");
    block_rows = b[0].get<int64_t>();
    block_cols = b[1].get<int64_t>();
  }
  const double init_std = number(r, "init_std", 0.02);
  const double norm_std = number(r, "norm_std", 0.1);
  const double bias_std = number(r, "bias_std", 0.05);
  const double shards_d = number(r, "shards", 1);
  if (shards_d < 1 || shards_d > 64 || shards_d != static_cast<int>(shards_d))
    throw std::runtime_error("recipe: 'shards' must be an integer from 1 to 64");
  const int shards = static_cast<int>(shards_d);

  const auto specs = checkpoint_tensors(c);
  uint64_t total = 0;
  for (const auto& s : specs) {
    uint64_t n = 1;
    for (auto d : s.shape) n *= static_cast<uint64_t>(d);
    total += n;
  }
  if (total > (uint64_t{1} << 30)) throw std::runtime_error("recipe: the model would hold over 2^30 values; a tiny recipe should not");

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw std::runtime_error(out_dir + ": cannot create: " + ec.message());

  // The matrices DeepSeek-V3's FP8 checkpoints quantise: every projection but the embeddings,
  // lm_head and the router.
  auto quantised = [&](const tensor_spec& s) {
    return fp8 && s.role == tensor_spec::kind::matrix && s.shape.size() == 2 && s.name != "model.embed_tokens.weight" &&
           s.name != "lm_head.weight" && !s.name.ends_with("mlp.gate.weight");
  };
  std::vector<std::vector<tensor_to_write>> files(static_cast<size_t>(shards));
  uint64_t total_bytes = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& s = specs[i];
    tensor_to_write t;
    t.name = s.name;
    t.shape = s.shape;
    t.type = type == dtype::f8_e4m3 ? dtype::bf16 : type;
    int64_t n = 1;
    for (auto d : s.shape) n *= d;
    t.values.resize(static_cast<size_t>(n));
    rng g(seed ^ fnv1a(s.name));
    for (auto& v : t.values) {
      const double z = g.normal();
      switch (s.role) {
        case tensor_spec::kind::matrix: v = static_cast<float>(z * init_std); break;
        case tensor_spec::kind::norm: v = static_cast<float>(1.0 + z * norm_std); break;
        case tensor_spec::kind::bias: v = static_cast<float>(z * init_std); break;
        case tensor_spec::kind::score_correction: v = static_cast<float>(z * bias_std); break;
      }
    }
    auto& file = files[i * static_cast<size_t>(shards) / specs.size()];
    if (quantised(s)) {
      // Per block: scale = largest magnitude / 448, q = e4m3(v / scale); the value is q * scale.
      const int64_t R = s.shape[0], C = s.shape[1];
      const int64_t sr = (R + block_rows - 1) / block_rows, sc = (C + block_cols - 1) / block_cols;
      tensor_to_write scale;
      scale.name = s.name + "_scale_inv";
      scale.shape = {sr, sc};
      scale.type = dtype::f32;
      scale.values.assign(static_cast<size_t>(sr * sc), 0.0f);
      for (int64_t rr = 0; rr < R; ++rr)
        for (int64_t cc = 0; cc < C; ++cc) {
          float& m = scale.values[static_cast<size_t>((rr / block_rows) * sc + cc / block_cols)];
          m = std::max(m, std::fabs(t.values[static_cast<size_t>(rr * C + cc)]));
        }
      for (float& m : scale.values) m = m > 0 ? m / 448.0f : 1.0f;
      for (int64_t rr = 0; rr < R; ++rr)
        for (int64_t cc = 0; cc < C; ++cc) {
          float& v = t.values[static_cast<size_t>(rr * C + cc)];
          const float sv = scale.values[static_cast<size_t>((rr / block_rows) * sc + cc / block_cols)];
          const float q = e4m3_to_f32(f32_to_e4m3(v / sv));
          v = dequantize ? q * sv : q;
        }
      if (type == dtype::f8_e4m3) {
        t.type = dtype::f8_e4m3;
        total_bytes += static_cast<uint64_t>(scale.values.size()) * 4;
        file.push_back(std::move(scale));
      }
    } else if (fp8) {
      // What is not quantised is bfloat16 in the FP8 checkpoint, so its twin holds the same values.
      for (auto& v : t.values) v = bf16_to_f32(f32_to_bf16(v));
    }
    total_bytes += static_cast<uint64_t>(t.values.size()) * (t.type == dtype::f32 ? 4 : t.type == dtype::f8_e4m3 ? 1 : 2);
    file.push_back(std::move(t));
  }
  json config_out = cj;
  if (type == dtype::f8_e4m3)
    config_out["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"},
                                         {"weight_block_size", {block_rows, block_cols}}};
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  if (shards == 1) {
    write_safetensors((fs::path(out_dir) / "model.safetensors").string(), files[0], meta);
  } else {
    json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", json::object()}};
    for (int k = 0; k < shards; ++k) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, shards);
      write_safetensors((fs::path(out_dir) / name).string(), files[static_cast<size_t>(k)], meta);
      for (const auto& t : files[static_cast<size_t>(k)]) index["weight_map"][t.name] = name;
    }
    write_text(fs::path(out_dir) / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  if (r.value("tokenizer", false)) write_text(fs::path(out_dir) / "tokenizer.json", byte_tokenizer_json(c.vocab_size, false));
  write_text(fs::path(out_dir) / "config.json", config_out.dump(2) + "\n");
}

}  // namespace tollgate::engine
