// The CUDA engine's speed at a real model's shapes with random weights made on the GPU: decode
// tokens/s at several batch sizes over a given context, and prefill of one long prompt, each as
// a fraction of its roofline (bytes a decode step must read over the measured copy bandwidth;
// FLOPs of a prefill over the measured bf16 matrix rate). Both ceilings are measured in the run.
//
// --dense R1,R2,.. (bf16): the decode steps are timed once for each R, with the dense products of
// up to R rows on the engine's skinny kernel and larger ones (all, for 0) on cuBLAS. With more than
// one R, each dense product shape of the model is also timed alone at 1, 16 and 64 rows both ways.
// --experts fp8: the routed experts are drawn in FP8 (e4m3 with a scale per 128 columns of a row,
// as an FP8 checkpoint's stay on the GPU), and the roofline counts their bytes so.
//
//   tollgate-engine-gpu-bench [--config tests/perf/deepseek_v2_lite.json] [--dtype bfloat16]
//       [--batches 1,16,64,256] [--context 1024] [--steps 32] [--prefill 2048] [--json FILE]
//       [--dense 1,0] [--experts fp8|bf16] [--dense-prefill TOKENS] [--sample T,P,K]
// --dense-prefill: backend_options::dense_prefill_tokens (0: the prompt attends absorbed too).
// --sample T,P,K: decode steps draw with temperature T, top_p P and top_k K (seed 1) instead of
// greedily, so that the sampling kernel's cost shows in the steps.
#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <tuple>
#include <map>
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

#include "tests/perf/kernel_trace.hpp"
#include "local_engine/cuda/dense.cuh"
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

/// Each dense product of the model (weights [N, K]) at 1, 16 and 64 rows: the skinny kernel and
/// cuBLAS, kernel time by CUDA events with L2 flushed before each run (a decode step's weights
/// are never in L2), median of 15 after 3 warm-ups; as weight bytes a second against `bw`.
nlohmann::json dense_products(const eng::model_config& c, double bw) {
  namespace cu = tollgate::engine::cuda;
  struct shape {
    const char* name;
    int N, K;
  };
  const int H = c.hidden_size, nh = c.num_attention_heads;
  std::vector<shape> shapes;
  if (c.q_lora_rank > 0) {
    shapes.push_back({"q_a", c.q_lora_rank, H});
    shapes.push_back({"q_b", nh * c.qk_head_dim(), c.q_lora_rank});
  } else {
    shapes.push_back({"q_proj", nh * c.qk_head_dim(), H});
  }
  shapes.push_back({"kv_a", c.kv_lora_rank + c.qk_rope_head_dim, H});
  shapes.push_back({"o_proj", H, nh * c.v_head_dim});
  shapes.push_back({"router", c.n_routed_experts, H});
  shapes.push_back({"shared gate_up", 2 * c.moe_intermediate_size * c.n_shared_experts, H});
  shapes.push_back({"shared down", H, c.moe_intermediate_size * c.n_shared_experts});
  shapes.push_back({"dense gate_up", 2 * c.intermediate_size, H});
  shapes.push_back({"dense down", H, c.intermediate_size});
  shapes.push_back({"lm_head", c.vocab_size, H});
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  const size_t ws_floats = size_t{4} << 20, flush_bytes = size_t{256} << 20;
  void *x = nullptr, *w = nullptr, *y = nullptr, *flush = nullptr;
  size_t max_w = 0, max_n = 0, max_k = 0;
  for (const auto& s : shapes) {
    max_w = std::max(max_w, static_cast<size_t>(s.N) * s.K);
    max_n = std::max(max_n, static_cast<size_t>(s.N));
    max_k = std::max(max_k, static_cast<size_t>(s.K));
  }
  cuda_ok(cudaMalloc(&w, max_w * 2));
  cuda_ok(cudaMemset(w, 0x3c, max_w * 2));  // bf16 0.0115
  cuda_ok(cudaMalloc(&x, 64 * max_k * 2));
  cuda_ok(cudaMemset(x, 0x3c, 64 * max_k * 2));
  cuda_ok(cudaMalloc(&y, 64 * max_n * 4));
  const cu::skinny_scratch scratch(ws_floats);
  cuda_ok(cudaMalloc(&flush, flush_bytes));
  cublasHandle_t h;
  cublasCreate(&h);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  const auto time = [&](auto&& launch) {
    std::vector<double> t;
    for (int i = 0; i < 18; ++i) {
      cuda_ok(cudaMemsetAsync(flush, i, flush_bytes));
      cudaEventRecord(e0);
      launch();
      cudaEventRecord(e1);
      cuda_ok(cudaEventSynchronize(e1));
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      if (i >= 3) t.push_back(ms / 1e3);
    }
    return median(t);
  };
  nlohmann::json out = nlohmann::json::array();
  std::printf("%-15s %-6s %-6s %-4s %-10s %-10s %-10s %-10s %-8s\n", "product", "N", "K", "M", "skinny us", "GB/s",
              "cuBLAS us", "GB/s", "speedup");
  for (const auto& s : shapes) {
    if (s.N <= 0 || s.K <= 0 || !cu::skinny_fits(s.N, s.K)) continue;
    const double bytes = 2.0 * s.N * s.K;
    const auto plan = cu::skinny_split(s.N, s.K, sms, ws_floats);
    for (int M : {1, 16, 64}) {
      const double ts = time([&] {
        cu::skinny_gemm(static_cast<cu::bf16*>(x), M, static_cast<cu::bf16*>(w), s.N, s.K, y, true, plan,
                        scratch, nullptr);
      });
      const float one = 1, zero = 0;
      const double tb = time([&] {
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.N, M, s.K, &one, w, CUDA_R_16BF, s.K, x, CUDA_R_16BF, s.K, &zero, y,
                     CUDA_R_32F, s.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      });
      std::printf("%-15s %-6d %-6d %-4d %-10.1f %-10.0f %-10.1f %-10.0f %-8.2f\n", s.name, s.N, s.K, M, ts * 1e6,
                  bytes / ts / 1e9, tb * 1e6, bytes / tb / 1e9, tb / ts);
      out.push_back({{"product", s.name}, {"N", s.N}, {"K", s.K}, {"M", M}, {"splits", plan.splits},
                     {"skinny_seconds", ts}, {"cublas_seconds", tb}, {"weight_bytes", bytes},
                     {"skinny_fraction_of_copy", bytes / ts / bw}});
    }
  }
  cublasDestroy(h);
  cudaFree(x), cudaFree(w), cudaFree(y), cudaFree(flush);
  return out;
}

/// One traced decode step, as one timeline over every stream (a graph's branches run on streams
/// of their own): how far each kernel moved the step's end (its end past the latest end before
/// it, or all of it after a gap), summed by kernel; the gaps where no kernel ran; and one layer's
/// sequence (stream, start from the layer's first kernel, gap, moved, busy).
void print_trace(int B, const std::vector<tollgate::perf::kernel_span>& k) {
  if (k.empty()) return;
  struct agg {
    int count = 0;
    double moved = 0, busy = 0;
  };
  std::map<std::string, agg> by_name;
  double gaps = 0, moved_total = 0;
  const uint64_t first = k.front().start;
  uint64_t last_end = first;
  struct row {
    std::string name;
    uint32_t stream;
    double start, gap, moved, busy;
  };
  std::vector<row> rows;
  for (const auto& x : k) {
    const double gap = x.start > last_end ? (x.start - last_end) / 1e3 : 0;
    const double moved = x.end > std::max(last_end, x.start) ? (x.end - std::max(last_end, x.start)) / 1e3 : 0;
    auto& a = by_name[x.name];
    ++a.count, a.moved += moved, a.busy += (x.end - x.start) / 1e3;
    gaps += gap, moved_total += moved;
    rows.push_back({x.name, x.stream, (x.start - first) / 1e3, gap, moved, (x.end - x.start) / 1e3});
    last_end = std::max(last_end, x.end);
  }
  std::printf("trace B=%d: %zu kernels over %.1f us: %.1f us moved by kernels, %.1f us of gaps\n", B, rows.size(),
              (last_end - first) / 1e3, moved_total, gaps);
  std::vector<std::pair<std::string, agg>> sorted(by_name.begin(), by_name.end());
  std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) { return a.second.moved > b.second.moved; });
  std::printf("  %-62s %6s %10s %10s\n", "kernel", "count", "moved us", "busy us");
  for (const auto& [n, a] : sorted) std::printf("  %-62s %6d %10.1f %10.1f\n", n.c_str(), a.count, a.moved, a.busy);
  // A layer from the middle of the step: from the 27th norm on (the 14th layer's first), to the next.
  int norms = 0;
  size_t at = 0, stop = rows.size();
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i].name.find("rmsnorm") != std::string::npos) {
      ++norms;
      if (norms == 27) at = i;
      if (norms == 29) {
        stop = i;
        break;
      }
    }
  std::printf("  one layer (stream, start, gap, moved, busy; us):\n");
  for (size_t i = at; i < stop; ++i)
    std::printf("    %-62s %4u %8.2f %6.2f %7.2f %7.2f\n", rows[i].name.c_str(), rows[i].stream, rows[i].start - rows[at].start,
                rows[i].gap, rows[i].moved, rows[i].busy);
  // The step's end: the final norm, the head's product and the sampler.
  size_t tail = rows.size();
  while (tail > 0 && rows[tail - 1].name.find("rmsnorm") == std::string::npos) --tail;
  if (tail == 0) return;
  std::printf("  the step's end (same columns):\n");
  for (size_t i = tail - 1; i < rows.size(); ++i)
    std::printf("    %-62s %4u %8.2f %6.2f %7.2f %7.2f\n", rows[i].name.c_str(), rows[i].stream, rows[i].start - rows[tail - 1].start,
                rows[i].gap, rows[i].moved, rows[i].busy);
}

int main(int argc, char** argv) try {
  std::string config_path = "tests/perf/deepseek_v2_lite.json", dtype = "bfloat16", json_out;
  std::vector<int> modes = {1};
  std::vector<int> batches = {1, 16, 64, 256};
  int context = 1024, steps = 32, prefill = 2048;
  bool fp8_experts = false;  // routed experts in FP8 (e4m3, a scale per 128 columns a row)
  int dense_prefill = eng::backend_options{}.dense_prefill_tokens;
  eng::sampling decode_sampling{};  // greedy unless --sample
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--config") config_path = v;
    else if (k == "--dtype") dtype = v;
    else if (k == "--batches") batches = parse_list(v);
    else if (k == "--context") context = std::stoi(v);
    else if (k == "--steps") steps = std::stoi(v);
    else if (k == "--prefill") prefill = std::stoi(v);
    else if (k == "--json") json_out = v;
    else if (k == "--dense") modes = parse_list(v);
    else if (k == "--dense-prefill") dense_prefill = std::stoi(v);
    else if (k == "--sample") {
      float t = 0, p = 1;
      int top_k = 0;
      if (std::sscanf(v.c_str(), "%f,%f,%d", &t, &p, &top_k) != 3 || t <= 0 || p <= 0 || p > 1 || top_k < 0)
        throw std::invalid_argument("--sample takes T,P,K: a temperature over 0, top_p in (0, 1], top_k 0 or more");
      decode_sampling = eng::sampling{t, p, top_k, 1};
    }
    else if (k == "--experts") {
      if (v != "fp8" && v != "bf16") throw std::invalid_argument("--experts takes fp8 or bf16");
      fp8_experts = v == "fp8";
    } else throw std::invalid_argument("unknown option " + k);
  }
  std::ifstream in(config_path);
  if (!in) throw std::runtime_error(config_path + ": cannot open");
  const eng::model_config c =
      eng::parse_model_config(std::string(std::istreambuf_iterator<char>(in), {}), config_path);
  const double elem = dtype == "float32" ? 4 : 2;
  // TOLLGATE_BENCH_PROFILE=1: one warm decode step per batch size is captured under a profiler
  // (ncu --profile-from-start off); =prefill: one warm prefill instead.
  const char* profile_env = std::getenv("TOLLGATE_BENCH_PROFILE");
  const bool profile_prefill = profile_env != nullptr && std::string(profile_env) == "prefill";
  const bool profile = profile_env != nullptr && !profile_prefill;
  const bool trace = std::getenv("TOLLGATE_BENCH_TRACE") != nullptr && std::string(std::getenv("TOLLGATE_BENCH_TRACE")) == "1";
  if (trace && !tollgate::perf::kernel_trace_available())
    throw std::invalid_argument("TOLLGATE_BENCH_TRACE=1: this build has no kernel trace (CUPTI was not found)");
  if (trace && steps < 5) throw std::invalid_argument("TOLLGATE_BENCH_TRACE=1 takes --steps 5 or more");
  if (modes.empty()) throw std::invalid_argument("--dense takes row counts, 0 to 64");
  // The first three decode steps are warm-up, not timed.
  if (steps < 4) throw std::invalid_argument("--steps takes 4 or more (three warm-up steps and at least one timed)");

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
  o.random_fp8_experts = fp8_experts;
  o.dense_prefill_tokens = dense_prefill;
  // Bytes an expert weight takes: one e4m3 byte and its share of a float scale per 128 columns.
  const double expert_elem = fp8_experts ? 1.0 + 4.0 / 128 : elem;
  nlohmann::json report = {{"config", config_path}, {"dtype", dtype}, {"experts", fp8_experts ? "fp8" : dtype},
                           {"copy_bandwidth", bw}, {"bf16_matmul", peak}};
  if (modes.size() > 1 && dtype == "bfloat16") report["dense_products"] = dense_products(c, bw);
  for (const int mode : modes) {
    o.skinny_rows = mode;
    auto be = eng::make_cuda_backend(c, "", o);
    std::printf("%s\n", be->describe().c_str());
    const model_sizes ms = sizes(c);
    std::mt19937 gen(7);
    std::uniform_int_distribution<int32_t> tok(0, c.vocab_size - 1);
    const eng::sampling greedy{};
    report["backend"] = be->describe();

    // Prefill: one prompt from an empty cache.
    if (prefill > 0 && mode == modes.front()) {
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
        if (profile_prefill && rep == 2) cudaProfilerStart();
        const double t0 = now();
        be->forward({&it, 1}, r);
        if (rep > 0) t.push_back(now() - t0);
        if (profile_prefill && rep == 2) cudaProfilerStop();
      }
      const double sec = median(t), P = prefill;
      const double experts_per_token = c.num_experts_per_tok;
      const double linear = ms.attn * c.num_hidden_layers + ms.dense_mlp * ms.dense_layers +
                            (ms.router + ms.shared + experts_per_token * ms.expert) * ms.moe_layers;
      // A pair of (query, key) positions costs, a head: absorbed, scores over kv_lora_rank + rope
      // values and the weighted sum over kv_lora_rank; un-absorbed (the engine's path for a long
      // prompt), scores over qk_head_dim and the sum over v_head_dim (the expansion of the latents
      // with kv_b is in `linear` either way: the same FLOPs as the absorbed form's two products).
      const bool unabsorbed = o.dense_prefill_tokens > 0 && prefill >= o.dense_prefill_tokens && prefill > 256;
      const double pair = unabsorbed ? 2.0 * (c.qk_head_dim() + c.v_head_dim)
                                     : 2.0 * (c.kv_lora_rank + c.qk_rope_head_dim) + 2.0 * c.kv_lora_rank;
      const double attn_flops = c.num_hidden_layers * c.num_attention_heads * pair * P * (P + 1) / 2;
      const double flops = 2 * P * linear + attn_flops + 2 * ms.head;
      std::printf("prefill %d tokens (attention %s): %.1f ms, %.0f tokens/s, %.1f TFLOP/s = %.1f%% of the bf16 matmul rate\n",
                  prefill, unabsorbed ? "un-absorbed" : "absorbed", sec * 1e3, P / sec, flops / sec / 1e12,
                  100 * flops / sec / peak);
      report["prefill"] = {{"tokens", prefill}, {"seconds", sec}, {"tokens_per_s", P / sec}, {"flops", flops},
                           {"attention", unabsorbed ? "unabsorbed" : "absorbed"}, {"fraction_of_peak", flops / sec / peak}};
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
    std::printf("decode, dense products of up to %d rows on the skinny kernel, the rest on cuBLAS; %s\n", mode,
                decode_sampling.temperature > 0
                    ? ("draws at temperature " + std::to_string(decode_sampling.temperature) + ", top_p " +
                       std::to_string(decode_sampling.top_p) + ", top_k " + std::to_string(decode_sampling.top_k))
                          .c_str()
                    : "greedy");
    std::printf("%-6s %-10s %-12s %-12s %-10s\n", "batch", "step ms", "tokens/s", "roofline t/s", "fraction");
    for (int B : batches) {
      std::vector<int32_t> last(static_cast<size_t>(B), 1);
      std::vector<double> t;
      std::vector<tollgate::perf::kernel_span> traced;
      for (int k = 0; k < steps; ++k) {
        std::vector<eng::batch_item> items(static_cast<size_t>(B));
        for (int s = 0; s < B; ++s) {
          items[s].tokens = {&last[s], 1};
          items[s].start = static_cast<size_t>(context + k);
          items[s].blocks = tables[s];
          items[s].sample = &decode_sampling;
          items[s].draw = static_cast<uint64_t>(k);
        }
        eng::batch_result r;
        // Under a profiler (ncu --profile-from-start off), one warm step per batch size is captured.
        if (profile && k == 3) cudaProfilerStart();
        // TOLLGATE_BENCH_TRACE=1: the last step's kernels, start to end (not timed).
        const bool traced_step = trace && k == steps - 1;
        if (traced_step) tollgate::perf::kernel_trace_begin();
        const double t0 = now();
        be->forward(items, r);
        if (k >= 3 && !traced_step) t.push_back(now() - t0);
        if (traced_step) traced = tollgate::perf::kernel_trace_end();
        if (profile && k == 3) cudaProfilerStop();
        for (int s = 0; s < B; ++s) last[s] = r.tokens[s];
      }
      if (trace) print_trace(B, traced);
      const double sec = median(t);
      const double E = c.n_routed_experts, K = c.num_experts_per_tok;
      const double unique = E * (1 - std::pow(1 - K / E, B));  // experts a step touches, routing spread evenly
      const double params = ms.attn * c.num_hidden_layers + ms.dense_mlp * ms.dense_layers +
                            (ms.router + ms.shared) * ms.moe_layers + ms.head;
      const double expert_params = unique * ms.expert * ms.moe_layers;
      const double kv = static_cast<double>(B) * (context + steps / 2.0) * (c.kv_lora_rank + c.qk_rope_head_dim) *
                        c.num_hidden_layers * elem;
      const double bytes = params * elem + expert_params * expert_elem + kv;
      // A step must read `bytes`; the copy figure counts a read and a write, so reads alone go at it.
      const double floor_sec = bytes / bw;
      std::printf("%-6d %-10.3f %-12.0f %-12.0f %-10.3f\n", B, sec * 1e3, B / sec, B / floor_sec, floor_sec / sec);
      report[mode == modes.front() ? "decode" : "decode_skinny_rows_" + std::to_string(mode)].push_back({{"batch", B}, {"context", context}, {"step_seconds", sec}, {"tokens_per_s", B / sec},
                                  {"bytes_per_step", bytes}, {"roofline_tokens_per_s", B / floor_sec},
                                  {"fraction_of_roofline", floor_sec / sec}});
    }
  }
  if (!json_out.empty()) std::ofstream(json_out) << report.dump(2) << "\n";
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "tollgate-engine-gpu-bench: %s\n", e.what());
  return 1;
}
