// The architecture read from a checkpoint's config.json, as plain values checked once at load.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate::engine {

/// Rotary embedding parameters, from `rope_parameters` (transformers 5) or `rope_scaling` (published
/// checkpoints) plus a top-level `rope_theta`.
struct rope_config {
  std::string type = "default";  ///< "default" or "yarn"
  double theta = 10000.0;
  double factor = 1.0;
  double original_max_position_embeddings = 0;  ///< yarn: defaults to max_position_embeddings
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  std::optional<double> attention_factor;
  bool truncate = true;
};

struct model_config {
  std::string model_type;  ///< "deepseek_v2" or "deepseek_v3"
  bool v3 = false;

  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int moe_intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool rope_interleave = true;  ///< V3 only: rotary pairs are adjacent (true) or half a head apart

  int q_lora_rank = 0;  ///< 0: no q-LoRA (a plain q_proj)
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;

  int n_routed_experts = 0;
  int n_shared_experts = 0;
  int num_experts_per_tok = 0;
  int n_group = 1;
  int topk_group = 1;
  int first_k_dense_replace = 0;
  int moe_layer_freq = 1;
  std::string topk_method;  ///< V2: "greedy" or "group_limited_greedy"; V3: "noaux_tc"
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;

  std::vector<int> eos_token_ids;
  std::optional<int> bos_token_id;

  rope_config rope;

  /// `quantization_config` of an FP8 checkpoint (DeepSeek-V3's published form: quant_method fp8,
  /// fmt e4m3, weight_block_size [128, 128]): its matrices are stored as e4m3 with one float32
  /// `<name>_scale_inv` per block of fp8_block_rows x fp8_block_cols values. 0: not quantised.
  int fp8_block_rows = 0;
  int fp8_block_cols = 0;

  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  /// Whether layer `l` is a DeepSeekMoE layer (else a dense MLP).
  bool is_moe_layer(int l) const {
    return n_routed_experts > 0 && l >= first_k_dense_replace && l % moe_layer_freq == 0;
  }
  /// The softmax scale of attention: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN.
  double softmax_scale() const;
};

/// Parses config.json text. `source` names the file in error messages. Throws std::runtime_error
/// naming the field for a missing, mistyped or inconsistent value.
model_config parse_model_config(std::string_view json_text, const std::string& source = "config.json");

/// YaRN's (or the default) inverse frequencies for the rope dimension, and the factor that scales
/// cos and sin, computed as transformers computes them (float32 frequencies).
struct rope_tables {
  std::vector<float> inv_freq;  ///< qk_rope_head_dim / 2 entries
  float attention_factor = 1.0f;
};
rope_tables compute_rope(const model_config& c);

}  // namespace tollgate::engine
