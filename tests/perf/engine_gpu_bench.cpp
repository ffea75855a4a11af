// The CUDA engine's speed at a real model's shapes with random weights made on the GPU: decode
// tokens/s at several batch sizes over a given context, and prefill of one long prompt, each as
// a fraction of its roofline (bytes a decode step must read over the measured copy bandwidth;
// FLOPs of a prefill over the measured bf16 matrix rate). Both ceilings are measured in the run.
//
//   tollgate-engine-gpu-bench [--config tests/perf/deepseek_v2_lite.json] [--dtype bfloat16]
//       [--batches 1,16,64,256] [--context 1024] [--steps 32] [--prefill 2048] [--json FILE]
#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "local_engine/forward_backend.hpp"
#include "local_engine/model_config.hpp"

namespace eng = tollgate::engine;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void cuda_ok(cudaError_t e) {
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
}

/// Bytes read plus written per second by a large device-to-device copy.
double copy_bandwidth() {
  const size_t n = size_t{2} << 30;
  void *a = nullptr, *b = nullptr;
  cuda_ok(cudaMalloc(&a, n));
  cuda_ok(cudaMalloc(&b, n));
  cuda_ok(cudaMemset(a, 1, n));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  std::vector<double> t;
  for (int i = 0; i < 12; ++i) {
    cudaEventRecord(e0);
    cuda_ok(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 2) t.push_back(ms / 1e3);
  }
  cudaFree(a), cudaFree(b);
  return 2.0 * n / median(t);
}

/// bf16 matrix rate of an 8192^3 product through cuBLAS on random data.
double matmul_rate() {
  const int n = 8192;
  const size_t count = size_t(n) * n;
  std::vector<uint16_t> host(count);
  std::mt19937 gen(1);
  for (auto& h : host) h = static_cast<uint16_t>(0x3c00 + (gen() & 0x3ff) - 0x200);  // bf16 values near 0.01..0.03
  void *a, *b, *c;
  cuda_ok(cudaMalloc(&a, count * 2));
  cuda_ok(cudaMalloc(&b, count * 2));
  cuda_ok(cudaMalloc(&c, count * 2));
  cuda_ok(cudaMemcpy(a, host.data(), count * 2, cudaMemcpyHostToDevice));
  cuda_ok(cudaMemcpy(b, host.data(), count * 2, cudaMemcpyHostToDevice));
  cublasHandle_t h;
  cublasCreate(&h);
  const float one = 1, zero = 0;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  std::vector<double> t;
  for (int i = 0; i < 8; ++i) {
    cudaEventRecord(e0);
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &zero, c, CUDA_R_16BF, n,
                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 2) t.push_back(ms / 1e3);
  }
  cublasDestroy(h);
  cudaFree(a), cudaFree(b), cudaFree(c);
  return 2.0 * n * n * n / median(t);
}

struct model_sizes {
  double attn = 0, dense_mlp = 0, router = 0, shared = 0, expert = 0, head = 0;
  int moe_layers = 0, dense_layers = 0;
};

model_sizes sizes(const eng::model_config& c) {
  model_sizes s;
  const double H = c.hidden_size, nh = c.num_attention_heads, qk = c.qk_head_dim();
  s.attn = (c.q_lora_rank > 0 ? H * c.q_lora_rank + c.q_lora_rank * nh * qk : H * nh * qk) +
           H * (c.kv_lora_rank + c.qk_rope_head_dim) + nh * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank +
           H * nh * c.v_head_dim;
  s.dense_mlp = 3 * H * c.intermediate_size;
  s.router = H * c.n_routed_experts;
  s.shared = 3 * H * c.moe_intermediate_size * c.n_shared_experts;
  s.expert = 3 * H * c.moe_intermediate_size;
  s.head = H * c.vocab_size;
  for (int l = 0; l < c.num_hidden_layers; ++l) (c.is_moe_layer(l) ? s.moe_layers : s.dense_layers)++;
  return s;
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');) v.push_back(std::stoi(part));
  return v;
}

}  // namespace

int main(int argc, char** argv) try {
  std::string config_path = "tests/perf/deepseek_v2_lite.json", dtype = "bfloat16", json_out;
  std::vector<int> batches = {1, 16, 64, 256};
  int context = 1024, steps = 32, prefill = 2048;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--config") config_path = v;
    else if (k == "--dtype") dtype = v;
    else if (k == "--batches") batches = parse_list(v);
    else if (k == "--context") context = std::stoi(v);
    else if (k == "--steps") steps = std::stoi(v);
    else if (k == "--prefill") prefill = std::stoi(v);
    else if (k == "--json") json_out = v;
    else throw std::invalid_argument("unknown option " + k);
  }
  std::ifstream in(config_path);
  if (!in) throw std::runtime_error(config_path + ": cannot open");
  const eng::model_config c =
      eng::parse_model_config(std::string(std::istreambuf_iterator<char>(in), {}), config_path);
  const double elem = dtype == "float32" ? 4 : 2;
  const bool profile = std::getenv("TOLLGATE_BENCH_PROFILE") != nullptr;

  const double bw = copy_bandwidth(), peak = matmul_rate();
  std::printf("ceilings: copy %.2f TB/s (read + write), bf16 matmul %.0f TFLOP/s\n", bw / 1e12, peak / 1e12);

  const int max_batch = *std::max_element(batches.begin(), batches.end());
  const int per_seq = context + steps + 8;
  eng::backend_options o;
  o.device = "cuda:0";
  o.dtype = dtype;
  o.kv_block_size = 64;
  const size_t blocks_per_seq = static_cast<size_t>((per_seq + o.kv_block_size - 1) / o.kv_block_size);
  const size_t bytes_per_block = static_cast<size_t>(c.num_hidden_layers) * o.kv_block_size *
                                 (c.kv_lora_rank + c.qk_rope_head_dim) * static_cast<size_t>(elem);
  const size_t prefill_blocks = static_cast<size_t>((prefill + o.kv_block_size - 1) / o.kv_block_size);
  o.kv_cache_memory = static_cast<double>((blocks_per_seq * max_batch + prefill_blocks + 4) * bytes_per_block);
  o.random_weights_seed = 20261201;
  auto be = eng::make_cuda_backend(c, "", o);
  std::printf("%s\n", be->describe().c_str());
  const model_sizes ms = sizes(c);
  std::mt19937 gen(7);
  std::uniform_int_distribution<int32_t> tok(0, c.vocab_size - 1);
  const eng::sampling greedy{};
  nlohmann::json report = {{"config", config_path}, {"dtype", dtype}, {"copy_bandwidth", bw}, {"bf16_matmul", peak},
                           {"backend", be->describe()}};

  // Prefill: one prompt from an empty cache.
  if (prefill > 0) {
    std::vector<int32_t> prompt(static_cast<size_t>(prefill));
    for (auto& t : prompt) t = tok(gen);
    std::vector<int32_t> blocks(prefill_blocks);
    std::iota(blocks.begin(), blocks.end(), static_cast<int32_t>(blocks_per_seq * max_batch));
    eng::batch_item it;
    it.tokens = prompt;
    it.blocks = blocks;
    it.sample = &greedy;
    eng::batch_result r;
    std::vector<double> t;
    for (int rep = 0; rep < 4; ++rep) {
      const double t0 = now();
      be->forward({&it, 1}, r);
      if (rep > 0) t.push_back(now() - t0);
    }
    const double sec = median(t), P = prefill;
    const double experts_per_token = c.num_experts_per_tok;
    const double linear = ms.attn * c.num_hidden_layers + ms.dense_mlp * ms.dense_layers +
                          (ms.router + ms.shared + experts_per_token * ms.expert) * ms.moe_layers;
    const double W = c.kv_lora_rank + c.qk_rope_head_dim;
    // Absorbed attention: scores over W values and the weighted sum over kv_lora_rank, causal.
    const double attn_flops = c.num_hidden_layers * c.num_attention_heads * (2 * W + 2.0 * c.kv_lora_rank) * P * (P + 1) / 2;
    const double flops = 2 * P * linear + attn_flops + 2 * ms.head;
    std::printf("prefill %d tokens: %.1f ms, %.0f tokens/s, %.1f TFLOP/s = %.1f%% of the bf16 matmul rate\n", prefill,
                sec * 1e3, P / sec, flops / sec / 1e12, 100 * flops / sec / peak);
    report["prefill"] = {{"tokens", prefill}, {"seconds", sec}, {"tokens_per_s", P / sec}, {"flops", flops},
                         {"fraction_of_peak", flops / sec / peak}};
  }

  // Decode: every sequence's context is prefilled (distinct blocks), then timed steps.
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(max_batch));
  for (int s = 0; s < max_batch; ++s) {
    tables[s].resize(blocks_per_seq);
    std::iota(tables[s].begin(), tables[s].end(), static_cast<int32_t>(s * blocks_per_seq));
  }
  {
    const double t0 = now();
    std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(max_batch));
    const int per_forward = std::max(1, 16384 / context);
    for (int s0 = 0; s0 < max_batch; s0 += per_forward) {
      std::vector<eng::batch_item> items;
      for (int s = s0; s < std::min(max_batch, s0 + per_forward); ++s) {
        prompts[s].resize(static_cast<size_t>(context));
        for (auto& t : prompts[s]) t = tok(gen);
        eng::batch_item it;
        it.tokens = prompts[s];
        it.blocks = tables[s];
        items.push_back(it);
      }
      eng::batch_result r;
      be->forward(items, r);
    }
    std::printf("filled %d contexts of %d tokens in %.1f s\n", max_batch, context, now() - t0);
  }
  report["decode"] = nlohmann::json::array();
  std::printf("%-6s %-10s %-12s %-12s %-10s\n", "batch", "step ms", "tokens/s", "roofline t/s", "fraction");
  for (int B : batches) {
    std::vector<int32_t> last(static_cast<size_t>(B), 1);
    std::vector<double> t;
    for (int k = 0; k < steps; ++k) {
      std::vector<eng::batch_item> items(static_cast<size_t>(B));
      for (int s = 0; s < B; ++s) {
        items[s].tokens = {&last[s], 1};
        items[s].start = static_cast<size_t>(context + k);
        items[s].blocks = tables[s];
        items[s].sample = &greedy;
        items[s].draw = static_cast<uint64_t>(k);
      }
      eng::batch_result r;
      // Under a profiler (ncu --profile-from-start off), one warm step per batch size is captured.
      if (profile && k == 3) cudaProfilerStart();
      const double t0 = now();
      be->forward(items, r);
      if (k >= 3) t.push_back(now() - t0);
      if (profile && k == 3) cudaProfilerStop();
      for (int s = 0; s < B; ++s) last[s] = r.tokens[s];
    }
    const double sec = median(t);
    const double E = c.n_routed_experts, K = c.num_experts_per_tok;
    const double unique = E * (1 - std::pow(1 - K / E, B));  // experts a step touches, routing spread evenly
    const double params = ms.attn * c.num_hidden_layers + ms.dense_mlp * ms.dense_layers +
                          (ms.router + ms.shared + unique * ms.expert) * ms.moe_layers + ms.head;
    const double kv = static_cast<double>(B) * (context + steps / 2.0) * (c.kv_lora_rank + c.qk_rope_head_dim) *
                      c.num_hidden_layers * elem;
    const double bytes = params * elem + kv;
    // A step must read `bytes`; the copy figure counts a read and a write, so reads alone go at it.
    const double floor_sec = bytes / bw;
    std::printf("%-6d %-10.3f %-12.0f %-12.0f %-10.3f\n", B, sec * 1e3, B / sec, B / floor_sec, floor_sec / sec);
    report["decode"].push_back({{"batch", B}, {"context", context}, {"step_seconds", sec}, {"tokens_per_s", B / sec},
                                {"bytes_per_step", bytes}, {"roofline_tokens_per_s", B / floor_sec},
                                {"fraction_of_roofline", floor_sec / sec}});
  }
  if (!json_out.empty()) std::ofstream(json_out) << report.dump(2) << "\n";
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "tollgate-engine-gpu-bench: %s\n", e.what());
  return 1;
}
