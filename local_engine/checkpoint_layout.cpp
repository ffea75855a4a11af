#include "local_engine/checkpoint_layout.hpp"

#include <cstdio>
#include <stdexcept>

namespace tollgate::engine {

std::string layer_prefix(int l) { return "model.layers." + std::to_string(l) + "."; }

std::vector<tensor_spec> checkpoint_tensors(const model_config& c) {
  using k = tensor_spec::kind;
  std::vector<tensor_spec> t;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads, qk = c.qk_head_dim();
  auto add = [&](std::string name, std::vector<int64_t> shape, k role = k::matrix) {
    t.push_back({std::move(name), std::move(shape), role});
  };
  auto mlp = [&](const std::string& p, int64_t inter) {
    add(p + "gate_proj.weight", {inter, H});
    add(p + "up_proj.weight", {inter, H});
    add(p + "down_proj.weight", {H, inter});
  };
  add("model.embed_tokens.weight", {c.vocab_size, H});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    add(p + "input_layernorm.weight", {H}, k::norm);
    add(p + "post_attention_layernorm.weight", {H}, k::norm);
    const std::string a = p + "self_attn.";
    if (c.q_lora_rank > 0) {
      add(a + "q_a_proj.weight", {c.q_lora_rank, H});
      if (c.attention_bias) add(a + "q_a_proj.bias", {c.q_lora_rank}, k::bias);
      add(a + "q_a_layernorm.weight", {c.q_lora_rank}, k::norm);
      add(a + "q_b_proj.weight", {nh * qk, c.q_lora_rank});
    } else {
      add(a + "q_proj.weight", {nh * qk, H});
    }
    add(a + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, H});
    if (c.attention_bias) add(a + "kv_a_proj_with_mqa.bias", {c.kv_lora_rank + c.qk_rope_head_dim}, k::bias);
    add(a + "kv_a_layernorm.weight", {c.kv_lora_rank}, k::norm);
    add(a + "kv_b_proj.weight", {nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
    add(a + "o_proj.weight", {H, nh * c.v_head_dim});
    if (c.attention_bias) add(a + "o_proj.bias", {H}, k::bias);
    if (c.is_moe_layer(l)) {
      add(p + "mlp.gate.weight", {c.n_routed_experts, H});
      if (c.v3) add(p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, k::score_correction);
      for (int e = 0; e < c.n_routed_experts; ++e)
        mlp(p + "mlp.experts." + std::to_string(e) + ".", c.moe_intermediate_size);
      if (c.n_shared_experts > 0)
        mlp(p + "mlp.shared_experts.", static_cast<int64_t>(c.moe_intermediate_size) * c.n_shared_experts);
    } else {
      mlp(p + "mlp.", c.intermediate_size);
    }
  }
  add("model.norm.weight", {H}, k::norm);
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, H});
  return t;
}

std::uint64_t device_weight_bytes(const model_config& c, std::size_t matrix_value_bytes, int fp8_expert_block_cols) {
  std::uint64_t bytes = 0;
  for (const auto& t : checkpoint_tensors(c)) {
    std::uint64_t n = 1;
    for (auto d : t.shape) n *= static_cast<std::uint64_t>(d);
    if (fp8_expert_block_cols > 0 && t.role == tensor_spec::kind::matrix && t.name.find(".mlp.experts.") != std::string::npos &&
        t.shape.size() == 2) {
      // One byte a value, and a float scale a row for each block of columns.
      const auto rows = static_cast<std::uint64_t>(t.shape[0]), cols = static_cast<std::uint64_t>(t.shape[1]);
      const auto blocks = (cols + static_cast<std::uint64_t>(fp8_expert_block_cols) - 1) / static_cast<std::uint64_t>(fp8_expert_block_cols);
      bytes += n + rows * blocks * sizeof(float);
      continue;
    }
    bytes += n * (t.role == tensor_spec::kind::matrix ? matrix_value_bytes : sizeof(float));
  }
  return bytes;
}

void check_weights_fit(std::uint64_t needed, std::uint64_t available, const std::string& device) {
  if (needed <= available) return;
  char line[320];
  std::snprintf(line, sizeof line,
                "the checkpoint does not fit %s: its weights need %llu bytes (%.2f GiB), %llu bytes (%.2f GiB) are free",
                device.c_str(), static_cast<unsigned long long>(needed), static_cast<double>(needed) / (1u << 30),
                static_cast<unsigned long long>(available), static_cast<double>(available) / (1u << 30));
  throw std::runtime_error(line);
}

}  // namespace tollgate::engine
