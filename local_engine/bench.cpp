#include "local_engine/bench.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "local_engine/cpu_forward.hpp"
#include "local_engine/engine.hpp"
#include "local_engine/sampler.hpp"
#include "local_engine/thread_pool.hpp"

namespace tollgate::engine {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<int32_t> random_tokens(int n, int vocab, uint64_t seed) {
  rng g(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(g.next() % static_cast<uint64_t>(vocab));
  return t;
}

void bench_checkpoint(const bench_options& o, std::ostream& out) {
  auto m = load_model(o.checkpoint);
  std::vector<double> prefill, decode;
  for (int r = 0; r < o.runs; ++r) {
    auto seq = start(m, random_tokens(o.prompt_len, static_cast<int>(vocab_size(*m)), 100 + r), sampling{});
    auto t0 = clock_type::now();
    seq->step();
    prefill.push_back(o.prompt_len / seconds_since(t0));
    t0 = clock_type::now();
    for (int i = 0; i < o.decode_tokens; ++i) seq->step();
    decode.push_back(o.decode_tokens / seconds_since(t0));
  }
  nlohmann::json j = {{"bench", "checkpoint"},
                      {"checkpoint", model_name(*m)},
                      {"threads", thread_pool::shared().size()},
                      {"runs", o.runs},
                      {"prompt_len", o.prompt_len},
                      {"decode_tokens", o.decode_tokens},
                      {"prefill_tokens_per_s_median", median(prefill)},
                      {"decode_tokens_per_s_median", median(decode)},
                      {"prefill_tokens_per_s_runs", prefill},
                      {"decode_tokens_per_s_runs", decode}};
  out << j.dump() << std::endl;
}

void bench_v2_lite_layer(const bench_options& o, std::ostream& out) {
  // DeepSeek-V2-Lite's attention and MoE shapes; one MoE layer, a small vocabulary so that the
  // embedding and lm_head stay negligible next to the layer.
  const char* cfg_text = R"({
    "model_type": "deepseek_v2", "vocab_size": 1024, "hidden_size": 2048, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "num_hidden_layers": 1, "num_attention_heads": 16, "num_key_value_heads": 16,
    "q_lora_rank": null, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 0,
    "topk_method": "greedy", "norm_topk_prob": false, "routed_scaling_factor": 1.0,
    "max_position_embeddings": 163840, "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}})";
  const model_config c = parse_model_config(cfg_text, "v2-lite layer bench");
  auto buffers = std::make_shared<std::vector<std::shared_ptr<std::vector<float>>>>();
  uint64_t counter = 0;
  auto source = [&](const std::string& name, const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    auto buf = std::make_shared<std::vector<float>>(static_cast<size_t>(n));
    const bool norm = name.find("norm") != std::string::npos;
    const float a = shape.size() == 2 ? 1.7f / std::sqrt(static_cast<float>(shape[1])) : 0.0f;
    rng g(++counter);
    for (auto& v : *buf) v = norm ? 1.0f : a * static_cast<float>(2.0 * g.uniform() - 1.0);
    f32_tensor t;
    t.shape = shape;
    t.data = buf->data();
    t.owner = std::shared_ptr<const void>(buf, buf.get());
    return t;
  };
  const auto t_build = clock_type::now();
  auto backend = make_cpu_backend(c, source, [](const std::string&) { return false; });
  const double build_s = seconds_since(t_build);
  std::vector<double> prefill_ms, decode_ms;
  std::vector<float> logits;
  for (int r = 0; r < o.runs; ++r) {
    auto cache = backend->new_cache();
    const auto prompt = random_tokens(o.context, c.vocab_size, 200 + r);
    auto t0 = clock_type::now();
    backend->forward(*cache, prompt, false, logits);
    prefill_ms.push_back(1e3 * seconds_since(t0));
    std::vector<double> steps;
    for (int i = 0; i < o.decode_tokens; ++i) {
      const int32_t one[] = {static_cast<int32_t>((i * 7919) % c.vocab_size)};
      t0 = clock_type::now();
      backend->forward(*cache, one, false, logits);
      steps.push_back(1e3 * seconds_since(t0));
    }
    decode_ms.push_back(median(steps));
  }
  nlohmann::json j = {{"bench", "v2_lite_moe_layer"},
                      {"threads", thread_pool::shared().size()},
                      {"runs", o.runs},
                      {"weights_build_s", build_s},
                      {"prefill_tokens", o.context},
                      {"prefill_ms_median", median(prefill_ms)},
                      {"prefill_tokens_per_s_median", o.context / (median(prefill_ms) / 1e3)},
                      {"decode_context", o.context},
                      {"decode_step_ms_median", median(decode_ms)},
                      {"prefill_ms_runs", prefill_ms},
                      {"decode_step_ms_runs", decode_ms}};
  out << j.dump() << std::endl;
}

}  // namespace

void run_bench(const bench_options& o, std::ostream& out) {
  if (!o.checkpoint.empty()) bench_checkpoint(o, out);
  if (o.v2_lite_layer) bench_v2_lite_layer(o, out);
}

}  // namespace tollgate::engine
