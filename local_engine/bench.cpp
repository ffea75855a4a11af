#include "local_engine/bench.hpp"

#include <algorithm>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <iterator>
#include <stdexcept>
#include <chrono>
#include <map>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "local_engine/cpu_forward.hpp"
#include "local_engine/engine.hpp"
#include "local_engine/forward_backend.hpp"
#include "local_engine/kv_blocks.hpp"
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

// Times the backend directly, with a block allocator of its own: prefill of one prompt_len-token
// prompt, then decode steps of one forward over `batch` sequences that each hold `context` positions.
void bench_backend(forward_backend& backend, const model_config& c, const bench_options& o, const std::string& name,
                   nlohmann::json base, std::ostream& out) {
  const auto pool = backend.kv_pool();
  kv_block_allocator blocks(pool.blocks, pool.block_size);
  const sampling greedy{};
  batch_result res;
  // Prefill.
  std::vector<double> prefill_ms;
  for (int r = 0; r < o.runs; ++r) {
    const auto prompt = random_tokens(o.prompt_len, c.vocab_size, 100 + static_cast<uint64_t>(r));
    if (!blocks.reserve(0, prompt.size()))
      throw std::runtime_error("bench: the KV pool of " + std::to_string(pool.blocks) + " blocks cannot hold a prompt of " +
                               std::to_string(o.prompt_len) + " tokens (raise --kv-cache-memory)");
    batch_item it;
    it.tokens = prompt;
    it.blocks = blocks.table(0);
    it.sample = &greedy;
    const auto t0 = clock_type::now();
    backend.forward(std::span<const batch_item>(&it, 1), res);
    prefill_ms.push_back(1e3 * seconds_since(t0));
    blocks.release(0);
  }
  base["bench"] = name;
  base["device"] = backend.device();
  base["backend"] = backend.describe();
  base["runs"] = o.runs;
  base["prefill_tokens"] = o.prompt_len;
  base["prefill_ms_median"] = median(prefill_ms);
  base["prefill_tokens_per_s"] = o.prompt_len / (median(prefill_ms) / 1e3);
  base["prefill_ms_runs"] = prefill_ms;
  out << base.dump() << std::endl;

  // Decode at each batch size.
  for (int B : o.batches) {
    const size_t need = static_cast<size_t>(B) * blocks.blocks_for(static_cast<size_t>(o.context + o.decode_tokens));
    if (need > pool.blocks)
      throw std::runtime_error("bench: batch " + std::to_string(B) + " at context " + std::to_string(o.context) + " needs " +
                               std::to_string(need) + " KV blocks; the pool holds " + std::to_string(pool.blocks) +
                               " (raise --kv-cache-memory)");
    std::vector<std::vector<int32_t>> toks(static_cast<size_t>(B));
    std::vector<batch_item> items(static_cast<size_t>(B));
    const auto t_fill = clock_type::now();
    for (int b = 0; b < B; ++b) {
      auto& t = toks[static_cast<size_t>(b)];
      t = random_tokens(o.context, c.vocab_size, 1000 + static_cast<uint64_t>(b));
      blocks.reserve(static_cast<uint64_t>(b), static_cast<size_t>(o.context + o.decode_tokens));
      // The context goes in chunks of at most prefill_chunk tokens, one sequence at a time.
      for (size_t p = 0; p < t.size(); p += static_cast<size_t>(o.prefill_chunk)) {
        batch_item it;
        it.tokens = std::span<const int32_t>(t).subspan(p, std::min(t.size() - p, static_cast<size_t>(o.prefill_chunk)));
        it.start = p;
        it.blocks = blocks.table(static_cast<uint64_t>(b));
        backend.forward(std::span<const batch_item>(&it, 1), res);
      }
    }
    const double fill_s = seconds_since(t_fill);
    std::vector<int32_t> next(static_cast<size_t>(B));
    for (int b = 0; b < B; ++b) next[static_cast<size_t>(b)] = static_cast<int32_t>((b * 7919) % c.vocab_size);
    std::vector<double> step_ms;
    for (int i = 0; i < o.decode_tokens; ++i) {
      for (int b = 0; b < B; ++b) {
        auto& it = items[static_cast<size_t>(b)];
        it.tokens = std::span<const int32_t>(&next[static_cast<size_t>(b)], 1);
        it.start = static_cast<size_t>(o.context + i);
        it.blocks = blocks.table(static_cast<uint64_t>(b));
        it.sample = &greedy;
        it.draw = static_cast<uint64_t>(i);
      }
      const auto t0 = clock_type::now();
      backend.forward(items, res);
      step_ms.push_back(1e3 * seconds_since(t0));
      for (int b = 0; b < B; ++b) next[static_cast<size_t>(b)] = res.tokens[static_cast<size_t>(b)];
    }
    for (int b = 0; b < B; ++b) blocks.release(static_cast<uint64_t>(b));
    nlohmann::json j = {{"bench", name + "_decode"},
                        {"device", backend.device()},
                        {"batch", B},
                        {"context", o.context},
                        {"decode_steps", o.decode_tokens},
                        {"context_fill_s", fill_s},
                        {"decode_step_ms_median", median(step_ms)},
                        {"decode_tokens_per_s", B / (median(step_ms) / 1e3)},
                        {"decode_step_ms_runs", step_ms}};
    for (auto& [k, v] : base.items())
      if (!j.contains(k) && k.rfind("prefill", 0) != 0 && k != "runs") j[k] = v;
    out << j.dump() << std::endl;
  }
}

void bench_checkpoint(const bench_options& o, std::ostream& out) {
  const std::string cfg_path = o.checkpoint + "/config.json";
  std::ifstream in(cfg_path, std::ios::binary);
  if (!in) throw std::runtime_error(o.checkpoint + ": no config.json");
  const model_config c = parse_model_config(std::string(std::istreambuf_iterator<char>(in), {}), cfg_path);
  const auto t0 = clock_type::now();
  auto backend = make_backend(c, o.checkpoint, o.backend);
  const double load_s = seconds_since(t0);
  nlohmann::json base = {{"checkpoint", o.checkpoint}, {"threads", thread_pool::shared().size()}, {"load_s", load_s}};
  bench_backend(*backend, c, o, "checkpoint", base, out);
}

}  // namespace

std::vector<float> teacher_forced_logits(const std::string& checkpoint, const backend_options& bo,
                                         const std::vector<int32_t>& tokens, size_t prefill) {
  if (tokens.empty()) throw std::invalid_argument("teacher_forced_logits: no tokens");
  prefill = std::clamp<size_t>(prefill, 1, tokens.size());
  const std::string cfg_path = checkpoint + "/config.json";
  std::ifstream in(cfg_path, std::ios::binary);
  if (!in) throw std::runtime_error(checkpoint + ": no config.json");
  const model_config c = parse_model_config(std::string(std::istreambuf_iterator<char>(in), {}), cfg_path);
  for (int32_t id : tokens)
    if (id < 0 || id >= c.vocab_size) throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary");
  auto backend = make_backend(c, checkpoint, bo);
  const auto pool = backend->kv_pool();
  kv_block_allocator blocks(pool.blocks, pool.block_size);
  if (!blocks.reserve(0, tokens.size()))
    throw std::runtime_error("the KV pool cannot hold " + std::to_string(tokens.size()) + " positions");
  std::vector<float> logits;
  logits.reserve(tokens.size() * static_cast<size_t>(c.vocab_size));
  batch_result res;
  batch_item it;
  it.tokens = std::span<const int32_t>(tokens).first(prefill);
  it.blocks = blocks.table(0);
  it.logits = true;
  it.all_positions = true;
  backend->forward(std::span<const batch_item>(&it, 1), res);
  logits.insert(logits.end(), res.logits.begin(), res.logits.end());
  for (size_t p = prefill; p < tokens.size(); ++p) {
    batch_item d;
    d.tokens = std::span<const int32_t>(tokens).subspan(p, 1);
    d.start = p;
    d.blocks = blocks.table(0);
    d.logits = true;
    backend->forward(std::span<const batch_item>(&d, 1), res);
    logits.insert(logits.end(), res.logits.begin(), res.logits.end());
  }
  blocks.release(0);
  return logits;
}

namespace {

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
  auto backend = make_cpu_backend(c, source, [](const std::string&) { return false; }, o.backend);
  const double build_s = seconds_since(t_build);
  bench_options lo = o;
  lo.prompt_len = o.context;  // the layer bench prefills its context length
  bench_backend(*backend, c, lo, "v2_lite_moe_layer", {{"threads", thread_pool::shared().size()}, {"weights_build_s", build_s}}, out);
}

// Time to first token of one prompt through the model's scheduler: submit to the first sampled token.
double ttft_ms(const std::shared_ptr<const model>& m, const std::vector<int32_t>& prompt) {
  struct box {
    std::mutex mu;
    std::condition_variable cv;
    clock_type::time_point first;
    bool got = false, done = false;
    std::string error;
  };
  auto b = std::make_shared<box>();
  stream_callbacks cb;
  cb.on_token = [b](int32_t) {
    std::lock_guard lock(b->mu);
    b->first = clock_type::now();
    b->got = true;
    return true;
  };
  cb.on_end = [b](stream_end why, const std::string& msg) {
    std::lock_guard lock(b->mu);
    b->done = true;
    if (why == stream_end::failed) b->error = msg;
    b->cv.notify_all();
  };
  const auto t0 = clock_type::now();
  auto s = submit(m, prompt, sampling{}, 1, std::move(cb));
  std::unique_lock lock(b->mu);
  b->cv.wait(lock, [&] { return b->done; });
  if (!b->got) throw std::runtime_error("bench: the sequence produced no token: " + b->error);
  return 1e3 * std::chrono::duration<double>(b->first - t0).count();
}

void bench_shared_prefix(const bench_options& o, std::ostream& out) {
  for (const bool caching : {false, true}) {
    scheduler_options so;
    so.prefix_caching = caching;
    auto m = load_model(o.checkpoint, o.backend, so);
    const int V = static_cast<int>(vocab_size(*m));
    const auto prefix = random_tokens(o.shared_prefix, V, 7);
    auto prompt = [&](uint64_t seed) {
      auto p = prefix;
      const auto tail = random_tokens(o.prompt_len, V, seed);
      p.insert(p.end(), tail.begin(), tail.end());
      return p;
    };
    ttft_ms(m, prompt(1));  // warms the backend and, with caching, caches the prefix
    const auto before = stats(*m);
    std::vector<double> runs;
    for (int r = 0; r < o.runs; ++r) runs.push_back(ttft_ms(m, prompt(100 + static_cast<uint64_t>(r))));
    const auto after = stats(*m);
    const double lookups = static_cast<double>(after.prefix_cache_lookup_tokens - before.prefix_cache_lookup_tokens);
    nlohmann::json j = {{"bench", "shared_prefix_ttft"},
                        {"checkpoint", o.checkpoint},
                        {"backend", model_describe(*m)},
                        {"prefix_caching", caching},
                        {"shared_prefix", o.shared_prefix},
                        {"fresh_tokens", o.prompt_len},
                        {"runs", o.runs},
                        {"ttft_ms_median", median(runs)},
                        {"ttft_ms_runs", runs},
                        {"hit_rate", lookups > 0 ? static_cast<double>(after.prefix_cache_hit_tokens -
                                                                        before.prefix_cache_hit_tokens) / lookups
                                                 : 0.0}};
    out << j.dump() << std::endl;
  }
}

}  // namespace

void run_bench(const bench_options& o, std::ostream& out) {
  if (!o.checkpoint.empty() && o.shared_prefix > 0) {
    bench_shared_prefix(o, out);
    return;
  }
  if (!o.checkpoint.empty()) bench_checkpoint(o, out);
  if (o.v2_lite_layer) bench_v2_lite_layer(o, out);
}

}  // namespace tollgate::engine
