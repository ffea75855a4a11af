#include "local_engine/model_config.hpp"

#include <cmath>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace tollgate::engine {

namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& source, const std::string& what) {
  throw std::runtime_error(source + ": " + what);
}

bool present(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

int get_int(const json& j, const char* key, int def, const std::string& source) {
  if (!present(j, key)) return def;
  const json& v = j.at(key);
  if (v.is_number_integer()) {
    const auto x = v.get<int64_t>();
    if (x < INT32_MIN || x > INT32_MAX) fail(source, std::string("field '") + key + "' is out of range");
    return static_cast<int>(x);
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d == std::floor(d) && std::fabs(d) < 2e9) return static_cast<int>(d);
  }
  fail(source, std::string("field '") + key + "' must be an integer, got " + v.dump());
}

double get_double(const json& j, const char* key, double def, const std::string& source) {
  if (!present(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_number()) fail(source, std::string("field '") + key + "' must be a number, got " + v.dump());
  return v.get<double>();
}

std::optional<double> get_opt_double(const json& j, const char* key, const std::string& source) {
  if (!present(j, key)) return std::nullopt;
  return get_double(j, key, 0, source);
}

bool get_bool(const json& j, const char* key, bool def, const std::string& source) {
  if (!present(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_boolean()) fail(source, std::string("field '") + key + "' must be true or false, got " + v.dump());
  return v.get<bool>();
}

std::string get_string(const json& j, const char* key, const std::string& def, const std::string& source) {
  if (!present(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_string()) fail(source, std::string("field '") + key + "' must be a string, got " + v.dump());
  return v.get<std::string>();
}

void require_positive(int v, const char* key, const std::string& source) {
  if (v <= 0) fail(source, std::string("field '") + key + "' must be positive, got " + std::to_string(v));
}

rope_config parse_rope(const json& j, int max_pos, const std::string& source) {
  // transformers 5 prefers a non-empty legacy `rope_scaling` over `rope_parameters`.
  const json* rp = nullptr;
  const char* rp_name = "rope_parameters";
  if (present(j, "rope_scaling") && !j.at("rope_scaling").empty()) {
    rp = &j.at("rope_scaling");
    rp_name = "rope_scaling";
  } else if (present(j, "rope_parameters")) {
    rp = &j.at("rope_parameters");
  }
  rope_config r;
  r.theta = get_double(j, "rope_theta", 10000.0, source);
  if (rp == nullptr) return r;
  if (!rp->is_object()) fail(source, std::string("field '") + rp_name + "' must be an object");
  const std::string where = source + " " + rp_name;
  r.theta = get_double(*rp, "rope_theta", r.theta, where);
  r.type = get_string(*rp, "rope_type", get_string(*rp, "type", "default", where), where);
  if (r.type != "default" && r.type != "yarn")
    fail(source, std::string(rp_name) + ".rope_type '" + r.type + "' is not supported (default or yarn)");
  if (r.type == "yarn") {
    if (!present(*rp, "factor")) fail(source, std::string(rp_name) + ".factor is required for yarn");
    r.factor = get_double(*rp, "factor", 1.0, where);
    r.original_max_position_embeddings = get_double(*rp, "original_max_position_embeddings", max_pos, where);
    // transformers reads `beta_fast or 32`: a zero falls back to the default too.
    const double bf = get_double(*rp, "beta_fast", 0, where);
    const double bs = get_double(*rp, "beta_slow", 0, where);
    r.beta_fast = bf != 0 ? bf : 32.0;
    r.beta_slow = bs != 0 ? bs : 1.0;
    r.mscale = get_opt_double(*rp, "mscale", where);
    r.mscale_all_dim = get_opt_double(*rp, "mscale_all_dim", where);
    r.attention_factor = get_opt_double(*rp, "attention_factor", where);
    r.truncate = get_bool(*rp, "truncate", true, where);
    if (!(r.factor > 0)) fail(source, std::string(rp_name) + ".factor must be positive");
    if (!(r.original_max_position_embeddings > 0))
      fail(source, std::string(rp_name) + ".original_max_position_embeddings must be positive");
  }
  if (!(r.theta > 1)) fail(source, "rope_theta must be greater than 1");
  return r;
}

}  // namespace

double model_config::softmax_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (rope.type != "default" && rope.mscale_all_dim && *rope.mscale_all_dim != 0 && rope.factor > 1) {
    const double m = 0.1 * *rope.mscale_all_dim * std::log(rope.factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

model_config parse_model_config(std::string_view json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    fail(source, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(source, "must hold a JSON object");

  model_config c;
  c.model_type = get_string(j, "model_type", "", source);
  if (c.model_type.empty() && present(j, "architectures") && j.at("architectures").is_array() &&
      !j.at("architectures").empty() && j.at("architectures")[0].is_string()) {
    const auto a = j.at("architectures")[0].get<std::string>();
    if (a.rfind("DeepseekV2", 0) == 0) c.model_type = "deepseek_v2";
    if (a.rfind("DeepseekV3", 0) == 0) c.model_type = "deepseek_v3";
  }
  if (c.model_type != "deepseek_v2" && c.model_type != "deepseek_v3")
    fail(source, "model_type '" + c.model_type + "' is not supported (deepseek_v2 or deepseek_v3)");
  c.v3 = c.model_type == "deepseek_v3";

  // Defaults are transformers' for each architecture, so a config read here means what it means there.
  const bool v3 = c.v3;
  c.vocab_size = get_int(j, "vocab_size", v3 ? 129280 : 102400, source);
  c.hidden_size = get_int(j, "hidden_size", v3 ? 7168 : 4096, source);
  c.intermediate_size = get_int(j, "intermediate_size", v3 ? 18432 : 11008, source);
  c.moe_intermediate_size = get_int(j, "moe_intermediate_size", v3 ? 2048 : 1407, source);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", v3 ? 61 : 32, source);
  c.num_attention_heads = get_int(j, "num_attention_heads", v3 ? 128 : 32, source);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", v3 ? 4096 : 2048, source);
  c.rms_norm_eps = get_double(j, "rms_norm_eps", 1e-6, source);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, source);
  c.attention_bias = get_bool(j, "attention_bias", false, source);
  c.rope_interleave = v3 ? get_bool(j, "rope_interleave", true, source) : true;
  c.q_lora_rank = get_int(j, "q_lora_rank", 0, source);
  if (!j.contains("q_lora_rank")) c.q_lora_rank = 1536;  // absent (not null) means the default
  c.kv_lora_rank = get_int(j, "kv_lora_rank", 512, source);
  c.qk_nope_head_dim = get_int(j, "qk_nope_head_dim", 128, source);
  c.qk_rope_head_dim = get_int(j, "qk_rope_head_dim", 64, source);
  c.v_head_dim = get_int(j, "v_head_dim", 128, source);
  c.n_routed_experts = get_int(j, "n_routed_experts", v3 ? 256 : 64, source);
  c.n_shared_experts = get_int(j, "n_shared_experts", 0, source);
  if (!j.contains("n_shared_experts")) c.n_shared_experts = v3 ? 1 : 2;
  c.num_experts_per_tok = get_int(j, "num_experts_per_tok", v3 ? 8 : 0, source);
  c.first_k_dense_replace = get_int(j, "first_k_dense_replace", v3 ? 3 : 0, source);
  c.moe_layer_freq = get_int(j, "moe_layer_freq", 1, source);
  c.routed_scaling_factor = get_double(j, "routed_scaling_factor", v3 ? 2.5 : 1.0, source);
  c.norm_topk_prob = get_bool(j, "norm_topk_prob", v3, source);
  if (v3) {
    c.topk_method = get_string(j, "topk_method", "noaux_tc", source);
    c.n_group = get_int(j, "n_group", 8, source);
    c.topk_group = get_int(j, "topk_group", 4, source);
    if (!j.contains("n_group")) c.n_group = 8;
    if (c.topk_method != "noaux_tc")
      fail(source, "topk_method '" + c.topk_method + "' is not supported for deepseek_v3 (noaux_tc)");
    const auto sf = get_string(j, "scoring_func", "sigmoid", source);
    if (sf != "sigmoid") fail(source, "scoring_func '" + sf + "' is not supported for deepseek_v3 (sigmoid)");
  } else {
    c.topk_method = get_string(j, "topk_method", "greedy", source);
    c.n_group = get_int(j, "n_group", 1, source);
    c.topk_group = get_int(j, "topk_group", 1, source);
    if (c.topk_method != "greedy" && c.topk_method != "group_limited_greedy")
      fail(source, "topk_method '" + c.topk_method + "' is not supported for deepseek_v2 (greedy, group_limited_greedy)");
    if (c.topk_method == "group_limited_greedy" && (!present(j, "n_group") || !present(j, "topk_group")))
      fail(source, "topk_method group_limited_greedy needs n_group and topk_group");
    const auto sf = get_string(j, "scoring_func", "softmax", source);
    if (sf != "softmax") fail(source, "scoring_func '" + sf + "' is not supported for deepseek_v2 (softmax)");
  }
  const auto act = get_string(j, "hidden_act", "silu", source);
  if (act != "silu") fail(source, "hidden_act '" + act + "' is not supported (silu)");

  if (present(j, "eos_token_id")) {
    const json& e = j.at("eos_token_id");
    if (e.is_array()) {
      for (const auto& x : e) {
        if (!x.is_number_integer()) fail(source, "eos_token_id entries must be integers");
        c.eos_token_ids.push_back(x.get<int>());
      }
    } else {
      c.eos_token_ids.push_back(get_int(j, "eos_token_id", 0, source));
    }
  } else if (!j.contains("eos_token_id")) {
    c.eos_token_ids.push_back(v3 ? 1 : 2);
  }
  if (present(j, "quantization_config")) {
    const json& q = j.at("quantization_config");
    const std::string qs = source + ": quantization_config";
    if (!q.is_object()) fail(source, "field 'quantization_config' must be an object");
    const auto method = get_string(q, "quant_method", "", qs);
    if (method != "fp8") fail(qs, "quant_method '" + method + "' is not supported (fp8)");
    const auto fmt = get_string(q, "fmt", "e4m3", qs);
    if (fmt != "e4m3") fail(qs, "fmt '" + fmt + "' is not supported (e4m3)");
    const auto act_scheme = get_string(q, "activation_scheme", "dynamic", qs);
    if (act_scheme != "dynamic") fail(qs, "activation_scheme '" + act_scheme + "' is not supported (dynamic)");
    if (!present(q, "weight_block_size") || !q.at("weight_block_size").is_array() || q.at("weight_block_size").size() != 2 ||
        !q.at("weight_block_size")[0].is_number_integer() || !q.at("weight_block_size")[1].is_number_integer())
      fail(qs, "field 'weight_block_size' must be two integers, e.g. [128, 128] (per-tensor scales are not supported)");
    const auto br = q.at("weight_block_size")[0].get<int64_t>(), bc = q.at("weight_block_size")[1].get<int64_t>();
    if (br < 1 || bc < 1 || br > 65536 || bc > 65536)
      fail(qs, "weight_block_size must hold two integers from 1 to 65536, got " + q.at("weight_block_size").dump());
    c.fp8_block_rows = static_cast<int>(br);
    c.fp8_block_cols = static_cast<int>(bc);
  }
  if (present(j, "bos_token_id")) c.bos_token_id = get_int(j, "bos_token_id", 0, source);
  else if (!j.contains("bos_token_id")) c.bos_token_id = v3 ? 0 : 1;

  c.rope = parse_rope(j, c.max_position_embeddings, source);

  require_positive(c.vocab_size, "vocab_size", source);
  require_positive(c.hidden_size, "hidden_size", source);
  require_positive(c.num_hidden_layers, "num_hidden_layers", source);
  require_positive(c.num_attention_heads, "num_attention_heads", source);
  require_positive(c.max_position_embeddings, "max_position_embeddings", source);
  require_positive(c.kv_lora_rank, "kv_lora_rank", source);
  require_positive(c.qk_nope_head_dim, "qk_nope_head_dim", source);
  require_positive(c.qk_rope_head_dim, "qk_rope_head_dim", source);
  require_positive(c.v_head_dim, "v_head_dim", source);
  require_positive(c.moe_layer_freq, "moe_layer_freq", source);
  if (c.q_lora_rank < 0) fail(source, "field 'q_lora_rank' must be null or positive");
  if (c.qk_rope_head_dim % 2 != 0) fail(source, "field 'qk_rope_head_dim' must be even");
  if (c.n_routed_experts < 0 || c.n_shared_experts < 0 || c.first_k_dense_replace < 0)
    fail(source, "expert counts and first_k_dense_replace must not be negative");
  if (present(j, "num_key_value_heads") && get_int(j, "num_key_value_heads", 0, source) != c.num_attention_heads)
    fail(source, "num_key_value_heads must equal num_attention_heads for MLA attention");
  if (!(c.rms_norm_eps > 0)) fail(source, "field 'rms_norm_eps' must be positive");
  bool any_dense = false, any_moe = false;
  for (int l = 0; l < c.num_hidden_layers; ++l) (c.is_moe_layer(l) ? any_moe : any_dense) = true;
  if (any_dense) require_positive(c.intermediate_size, "intermediate_size", source);
  if (any_moe) {
    require_positive(c.moe_intermediate_size, "moe_intermediate_size", source);
    if (c.num_experts_per_tok <= 0 || c.num_experts_per_tok > c.n_routed_experts)
      fail(source, "num_experts_per_tok must be between 1 and n_routed_experts");
    const bool grouped = c.v3 || c.topk_method == "group_limited_greedy";
    if (grouped) {
      if (c.n_group <= 0 || c.n_routed_experts % c.n_group != 0)
        fail(source, "n_routed_experts must be a multiple of a positive n_group");
      if (c.topk_group <= 0 || c.topk_group > c.n_group) fail(source, "topk_group must be between 1 and n_group");
      if (c.topk_group * (c.n_routed_experts / c.n_group) < c.num_experts_per_tok)
        fail(source, "topk_group groups hold fewer experts than num_experts_per_tok");
      if (c.v3 && c.n_routed_experts / c.n_group < 2) fail(source, "each expert group needs at least 2 experts");
    }
  }
  for (int id : c.eos_token_ids)
    if (id < 0 || id >= c.vocab_size) fail(source, "eos_token_id " + std::to_string(id) + " is outside the vocabulary");
  return c;
}

rope_tables compute_rope(const model_config& c) {
  const int dim = c.qk_rope_head_dim;
  const int half = dim / 2;
  const rope_config& r = c.rope;
  rope_tables t;
  t.inv_freq.resize(half);
  // float32 throughout, as transformers builds these tables.
  std::vector<float> pos_freqs(half);
  for (int i = 0; i < half; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(dim);
    pos_freqs[i] = static_cast<float>(std::pow(static_cast<double>(static_cast<float>(r.theta)), static_cast<double>(e)));
  }
  if (r.type != "yarn") {
    for (int i = 0; i < half; ++i) t.inv_freq[i] = 1.0f / pos_freqs[i];
    t.attention_factor = 1.0f;
    return t;
  }
  const double factor = r.factor;
  auto get_mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  double attention_factor;
  if (r.attention_factor) {
    attention_factor = *r.attention_factor;
  } else if (r.mscale && *r.mscale != 0 && r.mscale_all_dim && *r.mscale_all_dim != 0) {
    attention_factor = get_mscale(factor, *r.mscale) / get_mscale(factor, *r.mscale_all_dim);
  } else {
    attention_factor = get_mscale(factor, 1.0);
  }
  t.attention_factor = static_cast<float>(attention_factor);

  const double pi = 3.14159265358979323846;
  auto correction_dim = [&](double rotations) {
    return (dim * std::log(r.original_max_position_embeddings / (rotations * 2 * pi))) / (2 * std::log(r.theta));
  };
  double low = correction_dim(r.beta_fast);
  double high = correction_dim(r.beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const float lowf = static_cast<float>(low), span = static_cast<float>(high - low);
  for (int i = 0; i < half; ++i) {
    float ramp = (static_cast<float>(i) - lowf) / span;
    ramp = std::min(1.0f, std::max(0.0f, ramp));
    const float extrapolation_factor = 1.0f - ramp;
    const float extrapolation = 1.0f / pos_freqs[i];
    const float interpolation = 1.0f / (static_cast<float>(factor) * pos_freqs[i]);
    t.inv_freq[i] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return t;
}

}  // namespace tollgate::engine
