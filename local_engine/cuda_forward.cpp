// The CUDA forward: weights uploaded once (float32 or bf16), a paged latent KV pool in GPU memory,
// and one forward over a whole batch of sequences. Dense products of up to 64 rows in bf16 (decode
// steps) take the skinny kernel in cuda/dense.cu, larger ones cuBLAS; attention, norms, rope,
// routing, the grouped expert products and sampling are the kernels in cuda/.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <memory>
#include <set>
#include <tuple>
#include <type_traits>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "local_engine/checkpoint_layout.hpp"
#include "local_engine/cuda/dense.cuh"
#include "local_engine/cuda/elementwise.cuh"
#include "local_engine/cuda/mla.cuh"
#include "local_engine/cuda/mla_prefill.cuh"
#include "local_engine/cuda/moe.cuh"
#include "local_engine/cuda/sampling.cuh"
#include "local_engine/forward_backend.hpp"
#include "local_engine/safetensors.hpp"

namespace tollgate::engine {

namespace {

using cuda::bf16;
using cuda::check;

/// cuBLAS, opened when the first CUDA backend is made rather than linked: linked, every process
/// of the project (the gateway, each test) maps and relocates libcublas and libcublasLt, some
/// 700 MB, at start: about half a second and 200 MB of memory where most never run a GPU product.
struct cublas_api {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
  // The C functions (C++ overloads them with a legacy compute type).
  cublasStatus_t (*gemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*, const void*,
                         cudaDataType, int, const void*, cudaDataType, int, const void*, void*, cudaDataType, int,
                         cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  cublasStatus_t (*gemm_strided)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                 const void*, cudaDataType, int, long long, const void*, cudaDataType, int, long long,
                                 const void*, void*, cudaDataType, int, long long, int, cublasComputeType_t,
                                 cublasGemmAlgo_t) = nullptr;
  cublasStatus_t (*gemm_batched)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                 const void* const[], cudaDataType, int, const void* const[], cudaDataType, int,
                                 const void*, void* const[], cudaDataType, int, int, cublasComputeType_t,
                                 cublasGemmAlgo_t) = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};

/// The library by its soname (the loader's paths, then the toolkit's library directory the build
/// found); throws naming it when it cannot be opened or lacks a function.
const cublas_api& cublas() {
  static const cublas_api api = [] {
    const std::string name = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
#ifdef TOLLGATE_CUDA_LIBRARY_DIR
    if (!lib) lib = dlopen((std::string(TOLLGATE_CUDA_LIBRARY_DIR) + "/" + name).c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
    if (!lib) throw std::runtime_error("the CUDA engine needs cuBLAS: cannot open " + name + ": " + dlerror());
    cublas_api a;
    const auto get = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, symbol));
      if (!fn) throw std::runtime_error(name + " has no " + symbol);
    };
    get(a.create, "cublasCreate_v2");
    get(a.destroy, "cublasDestroy_v2");
    get(a.set_stream, "cublasSetStream_v2");
    get(a.set_workspace, "cublasSetWorkspace_v2");
    get(a.gemm, "cublasGemmEx");
    get(a.gemm_strided, "cublasGemmStridedBatchedEx");
    get(a.gemm_batched, "cublasGemmBatchedEx");
    get(a.status_string, "cublasGetStatusString");
    return a;
  }();
  return api;
}

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS ") + what + " failed: " + cublas().status_string(s));
}

// Norms inside attention keep the modeling code's default epsilon (as the CPU path does).
constexpr float latent_norm_eps = 1e-6f;
// Batches of at most this many tokens run the routed experts as grouped matrix-vector products
// with no host round trip; larger ones read the expert counts back and use cuBLAS per expert.
constexpr int gemv_token_limit = 256;

/// A device allocation that only grows. Every move to a new address bumps `moves`, so graphs
/// captured over the old address are known to be stale.
class device_buffer {
 public:
  static inline std::atomic<uint64_t> moves{0};
  device_buffer() = default;
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() {
    if (p_) cudaFree(p_);
  }
  void* reserve(size_t bytes) {
    if (bytes > bytes_) {
      if (p_) check(cudaFree(p_));
      p_ = nullptr;
      const size_t want = std::max(bytes, bytes_ + bytes_ / 2);
      check(cudaMalloc(&p_, want));
      bytes_ = want;
      moves.fetch_add(1, std::memory_order_relaxed);
    }
    return p_;
  }
  template <typename U>
  U* as(size_t count) {
    return static_cast<U*>(reserve(std::max<size_t>(count, 1) * sizeof(U)));
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
constexpr cudaDataType_t data_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else return CUDA_R_16BF;
}

template <typename T>
struct mat {
  T* w = nullptr;
  int rows = 0, cols = 0;
};

template <typename T>
struct layer_weights {
  float *input_norm = nullptr, *post_norm = nullptr, *q_a_norm = nullptr, *kv_a_norm = nullptr;
  float *q_a_bias = nullptr, *kv_a_bias = nullptr, *o_bias = nullptr;
  mat<T> q_a, q_b, q_proj, kv_a, kv_b, o;
  bool moe = false;
  mat<T> dense_gate_up, dense_down;  // gate rows then up rows: [2I, H]
  mat<T> router;
  float* score_bias = nullptr;
  T* experts_gate_up = nullptr;  // [E, 2I, H]
  T* experts_down = nullptr;     // [E, H, I]
  cuda::fp8_experts experts_gate_up_fp8, experts_down_fp8;  // instead, when the experts stay in FP8
  bool has_shared = false;
  mat<T> shared_gate_up, shared_down;
  /// With shared experts: the router's rows, then the shared gate and up, in one [E + 2 Is, H]
  /// matrix (router and shared_gate_up are views of it): one product gives all three.
  mat<T> router_shared;
  /// Without q_lora or attention biases: q_proj's rows, then kv_a's, in one matrix (q_proj and
  /// kv_a are views of it): one product gives the query and the latent.
  mat<T> q_kv;
};

uint64_t name_seed(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

int parse_device(const std::string& device) {
  if (device != "cuda" && device.rfind("cuda:", 0) != 0) throw std::runtime_error("device '" + device + "' is not cuda:N");
  const std::string n = device == "cuda" ? "0" : device.substr(5);
  if (n.empty() || n.size() > 3 || !std::all_of(n.begin(), n.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
    throw std::runtime_error("device '" + device + "' is not cuda:N");
  const int index = std::stoi(n);
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess)
    throw std::runtime_error("device '" + device + "': no CUDA device is usable here (" + cudaGetErrorString(e) + ")");
  if (index >= count)
    throw std::runtime_error("device '" + device + "': no such GPU (" + std::to_string(count) + " found)");
  return index;
}

/// An item of a planned batch: its tokens [first, first + n) at positions start.., where its block
/// table starts, and whether it attends un-absorbed.
struct item_span {
  int first = 0, n = 0, start = 0, table_off = 0;
  bool dense = false;
};

template <typename T>
class cuda_backend final : public forward_backend {
 public:
  cuda_backend(const model_config& c, const std::string& dir, const backend_options& opt)
      : c_(c), device_(parse_device(opt.device)), dims_{c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim,
                                                        c.qk_nope_head_dim, c.qk_head_dim()} {
    const auto t0 = std::chrono::steady_clock::now();
    check(cudaSetDevice(device_));
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    check_blas(cublas().create(&blas_), "create");
    check_blas(cublas().set_stream(blas_, stream_), "set stream");
    // A workspace of its own, so that products captured into graphs never allocate.
    check(cudaMalloc(&blas_workspace_, blas_workspace_bytes));
    check_blas(cublas().set_workspace(blas_, blas_workspace_, blas_workspace_bytes), "set workspace");
    // The shared experts run on a second stream beside the routed ones (forked after the router's
    // product, joined before the next norm), with their own cuBLAS handle and scratch.
    side_stream_ = std::getenv("TOLLGATE_ENGINE_SIDE_STREAM") == nullptr ||
                   std::string(std::getenv("TOLLGATE_ENGINE_SIDE_STREAM")) != "0";
    if (side_stream_) {
      check(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
      check(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
      check(cudaEventCreateWithFlags(&join_, cudaEventDisableTiming));
      check_blas(cublas().create(&blas_side_), "create");
      check_blas(cublas().set_stream(blas_side_, side_), "set stream");
      check(cudaMalloc(&blas_side_workspace_, blas_workspace_bytes));
      check_blas(cublas().set_workspace(blas_side_, blas_side_workspace_, blas_workspace_bytes), "set workspace");
    }
    check(cudaMalloc(&route_arrivals_, sizeof(unsigned)));
    check(cudaMemset(route_arrivals_, 0, sizeof(unsigned)));
    if (sample_split_) sample_scratch_ = std::make_unique<cuda::sample_scratch>();
    skinny_rows_ = std::clamp(opt.skinny_rows, 0, cuda::skinny_max_rows);
    dense_prefill_tokens_ = std::max(0, opt.dense_prefill_tokens);
    if (std::is_same_v<T, bf16> && skinny_rows_ > 0) {
      check(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device_));
      skinny_[0] = std::make_unique<cuda::skinny_scratch>(skinny_workspace_floats);
      if (side_stream_) skinny_[1] = std::make_unique<cuda::skinny_scratch>(skinny_workspace_floats);
    }
    if (c.kv_lora_rank > 512)
      throw std::runtime_error("the CUDA attention holds kv_lora_rank up to 512; the checkpoint has " +
                               std::to_string(c.kv_lora_rank));
    if (c.qk_rope_head_dim % 2 != 0) throw std::runtime_error("qk_rope_head_dim must be even");
    if (c.n_routed_experts > 1024 || c.n_group > 64 || c.num_experts_per_tok > 32)
      throw std::runtime_error("the CUDA router takes up to 1024 experts, 64 groups and top 32");
    std::optional<tensor_store> store;
    {
      // Refused before anything is uploaded, naming the bytes needed and free.
      size_t free_bytes = 0, total = 0;
      check(cudaMemGetInfo(&free_bytes, &total));
      if (!opt.random_weights_seed) store.emplace(tensor_store::open_dir(dir));
      plan_fp8_experts(store ? &*store : nullptr, opt);
      check_weights_fit(device_weight_bytes(c, sizeof(T), fp8_experts_ ? 1 << fp8_shift_ : 0), free_bytes,
                        opt.device);
    }
    if (store) load_weights(*store, dir);
    else make_random_weights(*opt.random_weights_seed);
    fp8_mma_ = fp8_experts_ && opt.fp8_tensor_cores &&
               cuda::fp8_mma_fits(2 * c.moe_intermediate_size, c.hidden_size, fp8_shift_) &&
               cuda::fp8_mma_fits(c.hidden_size, c.moe_intermediate_size, fp8_shift_);
    upload_rope();
    make_pool(opt);
    check(cudaStreamSynchronize(stream_));
    load_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device_));
    gpu_name_ = prop.name;
  }

  ~cuda_backend() override {
    cudaSetDevice(device_);
    if (stream_) cudaStreamSynchronize(stream_);
    for (auto& [k, exec] : graphs_) cudaGraphExecDestroy(exec);
    for (void* p : allocations_) cudaFree(p);
    if (blas_) cublas().destroy(blas_);
    if (blas_workspace_) cudaFree(blas_workspace_);
    if (route_arrivals_) cudaFree(route_arrivals_);
    if (blas_side_) cublas().destroy(blas_side_);
    if (blas_side_workspace_) cudaFree(blas_side_workspace_);
    skinny_[0].reset();
    skinny_[1].reset();
    sample_scratch_.reset();
    if (fork_) cudaEventDestroy(fork_);
    if (join_) cudaEventDestroy(join_);
    if (side_) cudaStreamDestroy(side_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  kv_pool_shape kv_pool() const override { return pool_shape_; }
  std::string device() const override { return "cuda:" + std::to_string(device_); }
  std::string describe() const override {
    char line[512];
    std::snprintf(line, sizeof line,
                  "cuda:%d (%s), %s%s, weights %.2f GB, loaded in %.1f s; KV pool %zu blocks of %d positions (%zu tokens, "
                  "%.2f GB)",
                  device_, gpu_name_.c_str(), std::is_same_v<T, float> ? "float32" : "bfloat16",
                  fp8_mma_ ? " with FP8 experts on FP8 tensor cores" : (fp8_experts_ ? " with FP8 experts" : ""),
                  weight_bytes_ / 1e9,
                  load_seconds_, pool_shape_.blocks, pool_shape_.block_size,
                  pool_shape_.blocks * static_cast<size_t>(pool_shape_.block_size),
                  static_cast<double>(pool_shape_.blocks * pool_shape_.bytes_per_block) / 1e9);
    return line;
  }

  void forward(std::span<const batch_item> batch, batch_result& out) override {
    check(cudaSetDevice(device_));
    plan_batch(batch);
    const int N = static_cast<int>(tokens_.size()), S = static_cast<int>(rows_.size());
    out.tokens.assign(batch.size(), -1);
    out.logits.clear();
    if (N == 0) return;
    upload_meta();
    run_or_replay(N, S);
    const int V = c_.vocab_size;
    const float* logits = ws_logits_.as<float>(static_cast<size_t>(S) * V);
    const int32_t* picked = ws_picked_.as<int32_t>(static_cast<size_t>(S));
    picked_host_.resize(static_cast<size_t>(S));
    check(cudaMemcpyAsync(picked_host_.data(), picked, sizeof(int32_t) * S, cudaMemcpyDeviceToHost, stream_));
    if (want_logits_) {
      logits_host_.resize(static_cast<size_t>(S) * V);
      check(cudaMemcpyAsync(logits_host_.data(), logits, sizeof(float) * S * static_cast<size_t>(V),
                            cudaMemcpyDeviceToHost, stream_));
    }
    check(cudaStreamSynchronize(stream_));
    for (size_t r = 0; r < rows_.size(); ++r) {
      const auto& row = row_info_[r];
      if (row.sample) out.tokens[row.item] = picked_host_[r];
      if (row.logits)
        out.logits.insert(out.logits.end(), logits_host_.begin() + static_cast<ptrdiff_t>(r * V),
                          logits_host_.begin() + static_cast<ptrdiff_t>((r + 1) * V));
    }
  }

 private:
  /// A batch shape whose forward was captured as a CUDA graph: the kernels and their arguments
  /// depend only on these (the batch's tokens and tables are in the metadata buffer).
  using graph_key = std::tuple<int, int, int>;  // tokens, rows that get logits, attention splits

  /// Decode-sized batches (no host round trip inside) replay a graph of their shape: captured the
  /// second time a shape is seen, after an eager run has sized every scratch buffer. Launches a
  /// step would pay one by one (about 25 a layer) become one.
  void run_or_replay(int N, int S) {
    const bool graphable = graphs_enabled_ && N <= gemv_token_limit;
    if (!graphable) {
      enqueue_forward(N, S);
      return;
    }
    if (graph_moves_ != device_buffer::moves.load(std::memory_order_relaxed)) drop_graphs();
    const graph_key key{N, S, cuda::mla_splits(N, dims_, max_len_)};
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      if (seen_.insert(key).second || graphs_.size() >= 256) {
        enqueue_forward(N, S);
        return;
      }
      cudaGraph_t graph = nullptr;
      check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        enqueue_forward(N, S);
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      check(cudaStreamEndCapture(stream_, &graph));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      check(e);
      if (graph_moves_ != device_buffer::moves.load(std::memory_order_relaxed)) {
        // A buffer moved while capturing: this graph (and any older) may point at freed memory.
        cudaGraphExecDestroy(exec);
        drop_graphs();
        enqueue_forward(N, S);
        return;
      }
      it = graphs_.emplace(key, exec).first;
    }
    check(cudaGraphLaunch(it->second, stream_));
  }

  void drop_graphs() {
    for (auto& [k, exec] : graphs_) cudaGraphExecDestroy(exec);
    graphs_.clear();
    seen_.clear();
    graph_moves_ = device_buffer::moves.load(std::memory_order_relaxed);
  }

  /// Every kernel and product of one forward, queued on stream_.
  void enqueue_forward(int N, int S) {
    const int H = c_.hidden_size;
    float* x = ws_x_.as<float>(static_cast<size_t>(N) * H);
    float* y = ws_y_.as<float>(static_cast<size_t>(N) * H);
    T* h = ws_h_.as<T>(static_cast<size_t>(N) * H);
    cuda::embed<T>(embed_.w, d_tokens_, N, H, x, stream_);
    const float eps = static_cast<float>(c_.rms_norm_eps);
    // A layer's MLP output is added to the residual stream by the next norm: y for a dense MLP,
    // the experts' weighted rows (summed there) for a MoE layer.
    cuda::moe_sum pending;
    const float* add = nullptr;
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
      const auto& L = layers_[static_cast<size_t>(l)];
      cuda::rmsnorm<T>(x, add, pending, nullptr, L.input_norm, eps, H, N, nullptr, h, stream_);
      attention(L, l, h, N, y);
      cuda::rmsnorm<T>(x, y, {}, nullptr, L.post_norm, eps, H, N, nullptr, h, stream_);
      if (L.moe) {
        pending = moe(L, h, N);
        add = nullptr;
      } else {
        mlp(L.dense_gate_up, L.dense_down, h, N, y);
        pending = {};
        add = y;
      }
    }
    // Only the rows that need logits go through the final norm and the head.
    T* hs = ws_hs_.as<T>(static_cast<size_t>(S) * H);
    cuda::rmsnorm<T>(x, add, pending, nullptr, final_norm_, eps, H, S, d_rows_, hs, stream_);
    const int V = c_.vocab_size;
    float* logits = ws_logits_.as<float>(static_cast<size_t>(S) * V);
    gemm(hs, S, lm_head_, logits, CUDA_R_32F);
    int32_t* picked = ws_picked_.as<int32_t>(static_cast<size_t>(S));
    cuda::sample_rows(logits, V, d_params_, S, picked, stream_, sample_scratch_.get());
  }

  struct row_meta {
    size_t item = 0;
    bool sample = false, logits = false;
  };

  template <typename U>
  U* alloc(size_t count) {
    void* p = nullptr;
    check(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(U)));
    allocations_.push_back(p);
    weight_bytes_ += count * sizeof(U);
    return static_cast<U*>(p);
  }

  // ---- weights -------------------------------------------------------------------------------

  /// Reads a tensor as fp32, checks its shape, and converts it on the device into dst.
  void upload(const tensor_store& store, const std::string& name, const std::vector<int64_t>& shape, T* dst) {
    if constexpr (std::is_same_v<T, bf16>) {
      // Stored as bf16 already: its bytes go to the device as they are, with no pass on the host.
      const raw_tensor r = store.raw(name, shape);
      if (r.type == dtype::bf16) {
        check(cudaMemcpy(dst, r.data, r.bytes, cudaMemcpyHostToDevice));
        return;
      }
    }
    const f32_tensor t = store.read(name, shape);
    const size_t n = static_cast<size_t>(t.numel());
    if constexpr (std::is_same_v<T, float>) {
      check(cudaMemcpyAsync(dst, t.data, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
    } else {
      float* staging = staging_.as<float>(n);
      check(cudaMemcpyAsync(staging, t.data, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
      cuda::convert<T>(staging, n, dst, stream_);
    }
    check(cudaStreamSynchronize(stream_));  // the host tensor is released when t goes
  }
  float* upload_f32(const tensor_store& store, const std::string& name, int64_t n) {
    const f32_tensor t = store.read(name, {n});
    float* d = alloc<float>(static_cast<size_t>(n));
    check(cudaMemcpy(d, t.data, static_cast<size_t>(n) * sizeof(float), cudaMemcpyHostToDevice));
    return d;
  }

  // The tensors every layer has, in one place for both weight sources. `matrix(name, rows, cols,
  // dst)` fills dst (rows x cols of T); `vector(name, n)` gives an fp32 device vector.
  template <typename MatrixFn, typename VectorFn, typename ProbeFn, typename Fp8Fn>
  void build_layers(MatrixFn&& matrix, VectorFn&& vector, ProbeFn&& probe, Fp8Fn&& fp8) {
    const auto& c = c_;
    const int H = c.hidden_size, nh = c.num_attention_heads, qk = c.qk_head_dim();
    auto mat_of = [&](const std::string& name, int rows, int cols) {
      mat<T> m{alloc<T>(static_cast<size_t>(rows) * cols), rows, cols};
      matrix(name, rows, cols, m.w);
      return m;
    };
    // gate and up stacked into one [2I, H] matrix, so one product gives both.
    auto gate_up = [&](const std::string& p, int inter) {
      mat<T> m{alloc<T>(2 * static_cast<size_t>(inter) * H), 2 * inter, H};
      matrix(p + "gate_proj.weight", inter, H, m.w);
      matrix(p + "up_proj.weight", inter, H, m.w + static_cast<size_t>(inter) * H);
      return m;
    };
    embed_ = mat_of("model.embed_tokens.weight", c.vocab_size, H);
    layers_.resize(static_cast<size_t>(c.num_hidden_layers));
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      auto& L = layers_[static_cast<size_t>(l)];
      const std::string p = layer_prefix(l), a = p + "self_attn.";
      L.input_norm = vector(p + "input_layernorm.weight", H);
      L.post_norm = vector(p + "post_attention_layernorm.weight", H);
      if (c.q_lora_rank > 0) {
        L.q_a = mat_of(a + "q_a_proj.weight", c.q_lora_rank, H);
        if (c.attention_bias) L.q_a_bias = vector(a + "q_a_proj.bias", c.q_lora_rank);
        L.q_a_norm = vector(a + "q_a_layernorm.weight", c.q_lora_rank);
        L.q_b = mat_of(a + "q_b_proj.weight", nh * qk, c.q_lora_rank);
        L.kv_a = mat_of(a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, H);
      } else if (!c.attention_bias) {
        const int W = c.kv_lora_rank + c.qk_rope_head_dim;
        L.q_kv = {alloc<T>(static_cast<size_t>(nh * qk + W) * H), nh * qk + W, H};
        L.q_proj = {L.q_kv.w, nh * qk, H};
        L.kv_a = {L.q_kv.w + static_cast<size_t>(nh) * qk * H, W, H};
        matrix(a + "q_proj.weight", nh * qk, H, L.q_proj.w);
        matrix(a + "kv_a_proj_with_mqa.weight", W, H, L.kv_a.w);
      } else {
        L.q_proj = mat_of(a + "q_proj.weight", nh * qk, H);
        L.kv_a = mat_of(a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, H);
      }
      if (c.attention_bias) L.kv_a_bias = vector(a + "kv_a_proj_with_mqa.bias", c.kv_lora_rank + c.qk_rope_head_dim);
      L.kv_a_norm = vector(a + "kv_a_layernorm.weight", c.kv_lora_rank);
      L.kv_b = mat_of(a + "kv_b_proj.weight", nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
      L.o = mat_of(a + "o_proj.weight", H, nh * c.v_head_dim);
      if (c.attention_bias) L.o_bias = vector(a + "o_proj.bias", H);
      L.moe = c.is_moe_layer(l);
      if (!L.moe) {
        L.dense_gate_up = gate_up(p + "mlp.", c.intermediate_size);
        L.dense_down = mat_of(p + "mlp.down_proj.weight", H, c.intermediate_size);
        continue;
      }
      const int E = c.n_routed_experts, I = c.moe_intermediate_size;
      if (c.n_shared_experts > 0) {
        L.has_shared = true;
        const int Is = I * c.n_shared_experts;
        L.router_shared = {alloc<T>(static_cast<size_t>(E + 2 * Is) * H), E + 2 * Is, H};
        L.router = {L.router_shared.w, E, H};
        L.shared_gate_up = {L.router_shared.w + static_cast<size_t>(E) * H, 2 * Is, H};
        matrix(p + "mlp.gate.weight", E, H, L.router.w);
        matrix(p + "mlp.shared_experts.gate_proj.weight", Is, H, L.shared_gate_up.w);
        matrix(p + "mlp.shared_experts.up_proj.weight", Is, H, L.shared_gate_up.w + static_cast<size_t>(Is) * H);
        L.shared_down = mat_of(p + "mlp.shared_experts.down_proj.weight", H, Is);
      } else {
        L.router = mat_of(p + "mlp.gate.weight", E, H);
      }
      if (c.v3) L.score_bias = vector(p + "mlp.gate.e_score_correction_bias", E);
      if (fp8_experts_) {
        // e4m3 bytes and a scale per row per block of columns; `fp8(name, rows, cols, w, scales)`.
        const int bc = 1 << fp8_shift_, bh = (H + bc - 1) / bc, bi = (I + bc - 1) / bc;
        auto& gu = L.experts_gate_up_fp8;
        auto& dn = L.experts_down_fp8;
        uint8_t* gw = alloc<uint8_t>(static_cast<size_t>(E) * 2 * I * H);
        float* gs = alloc<float>(static_cast<size_t>(E) * 2 * I * bh);
        uint8_t* dw = alloc<uint8_t>(static_cast<size_t>(E) * H * I);
        float* ds = alloc<float>(static_cast<size_t>(E) * H * bi);
        gu = {gw, gs, fp8_shift_};
        dn = {dw, ds, fp8_shift_};
        for (int e = 0; e < E; ++e) {
          const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
          const size_t g0 = static_cast<size_t>(e) * 2 * I, d0 = static_cast<size_t>(e) * H;
          fp8(ep + "gate_proj.weight", I, H, gw + g0 * H, gs + g0 * bh);
          fp8(ep + "up_proj.weight", I, H, gw + (g0 + I) * H, gs + (g0 + I) * bh);
          fp8(ep + "down_proj.weight", H, I, dw + d0 * I, ds + d0 * bi);
        }
        continue;
      }
      L.experts_gate_up = alloc<T>(static_cast<size_t>(E) * 2 * I * H);
      L.experts_down = alloc<T>(static_cast<size_t>(E) * H * I);
      if (probe(p + "mlp.experts.gate_up_proj")) {
        // transformers 5's fused layout is already [E, 2I, H] (gate rows first) and [E, H, I].
        matrix(p + "mlp.experts.gate_up_proj", -E, 2 * I, L.experts_gate_up);
        matrix(p + "mlp.experts.down_proj", -E, H, L.experts_down);
      } else {
        for (int e = 0; e < E; ++e) {
          const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
          T* gu = L.experts_gate_up + static_cast<size_t>(e) * 2 * I * H;
          matrix(ep + "gate_proj.weight", I, H, gu);
          matrix(ep + "up_proj.weight", I, H, gu + static_cast<size_t>(I) * H);
          matrix(ep + "down_proj.weight", H, I, L.experts_down + static_cast<size_t>(e) * H * I);
        }
      }
    }
    final_norm_ = vector("model.norm.weight", H);
    lm_head_ = c.tie_word_embeddings ? embed_ : mat_of("lm_head.weight", c.vocab_size, H);
  }

  /// Whether the routed experts stay in FP8 on the GPU (sets fp8_experts_ and fp8_shift_): an FP8
  /// checkpoint's (store), or the benchmark's random ones (no store), in bf16 mode on a GPU with
  /// FP8 where their shapes fit. Decided before the weights-fit check, which counts them at FP8 size.
  void plan_fp8_experts(const tensor_store* store, const backend_options& opt) {
    const int H = c_.hidden_size, I = c_.moe_intermediate_size;
    if (!std::is_same_v<T, bf16>) return;
    if (!store) {
      if (!opt.random_fp8_experts) return;
      if (!gpu_has_fp8() || !cuda::fp8_experts_fit(2 * I, H, 128) || !cuda::fp8_experts_fit(H, I, 128))
        throw std::runtime_error("FP8 experts need a GPU of compute capability 8.9 or later and expert sizes that are multiples of 32");
      fp8_experts_ = true;
      fp8_shift_ = 7;
      return;
    }
    const int first_moe = [&] {
      for (int l = 0; l < c_.num_hidden_layers; ++l)
        if (c_.is_moe_layer(l)) return l;
      return -1;
    }();
    const std::string probe0 = first_moe < 0 ? "" : layer_prefix(first_moe) + "mlp.experts.0.gate_proj.weight";
    if (opt.keep_fp8 && gpu_has_fp8() && first_moe >= 0 && c_.fp8_block_rows > 0 && store->contains(probe0) &&
        store->is_fp8(probe0) && cuda::fp8_experts_fit(2 * I, H, c_.fp8_block_cols) &&
        cuda::fp8_experts_fit(H, I, c_.fp8_block_cols)) {
      fp8_experts_ = true;
      fp8_shift_ = std::countr_zero(static_cast<unsigned>(c_.fp8_block_cols));
    }
  }

  void load_weights(tensor_store& store, const std::string& dir) {
    // FP8 matrices are dequantised on the host as they are read, then uploaded as T; the routed
    // experts of an FP8 checkpoint stay in FP8 where plan_fp8_experts kept them.
    store.set_fp8_block(c_.fp8_block_rows, c_.fp8_block_cols);
    const int H = c_.hidden_size, I = c_.moe_intermediate_size;
    std::vector<float> scales;
    build_layers(
        [&](const std::string& name, int rows, int cols, T* dst) {
          // rows < 0: a fused expert tensor of -rows experts, [E, cols, H or I].
          if (rows < 0) {
            const int64_t E = -rows;
            const int64_t inner = name.ends_with("gate_up_proj") ? H : I;
            upload(store, name, {E, cols, inner}, dst);
          } else {
            upload(store, name, {rows, cols}, dst);
          }
        },
        [&](const std::string& name, int n) { return upload_f32(store, name, n); },
        [&](const std::string& name) { return store.contains(name); },
        [&](const std::string& name, int rows, int cols, uint8_t* w, float* s) {
          if (!store.is_fp8(name))
            throw std::runtime_error(dir + ": tensor '" + name + "' is not F8_E4M3 like the other experts");
          const raw_tensor r = store.raw(name, {rows, cols});
          check(cudaMemcpy(w, r.data, r.bytes, cudaMemcpyHostToDevice));
          // The checkpoint's scales per block of rows, spread to one row each.
          const int br = c_.fp8_block_rows, bc = c_.fp8_block_cols;
          const int64_t sr = (rows + br - 1) / br, sc = (cols + bc - 1) / bc;
          const f32_tensor st = store.read(name + "_scale_inv", {sr, sc});
          scales.resize(static_cast<size_t>(rows) * sc);
          for (int64_t row = 0; row < rows; ++row)
            std::copy_n(st.data + (row / br) * sc, sc, scales.begin() + row * sc);
          check(cudaMemcpy(s, scales.data(), scales.size() * sizeof(float), cudaMemcpyHostToDevice));
        });
  }

  bool gpu_has_fp8() const {
    int major = 0, minor = 0;
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_));
    check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device_));
    return major * 10 + minor >= 89;
  }

  /// Benchmark weights drawn on the device from a seed: matrices with the recipes' spread,
  /// norms near one, biases small, no disk and no host memory.
  void make_random_weights(uint64_t seed) {
    const int H = c_.hidden_size, I = c_.moe_intermediate_size;
    build_layers(
        [&](const std::string& name, int rows, int cols, T* dst) {
          const size_t n = rows < 0 ? static_cast<size_t>(-rows) * cols * (name.ends_with("gate_up_proj") ? H : I)
                                    : static_cast<size_t>(rows) * cols;
          cuda::fill_random<T>(dst, n, name_seed(name, seed), 0.0f, 0.02f, stream_);
        },
        [&](const std::string& name, int n) {
          float* d = alloc<float>(static_cast<size_t>(n));
          const bool norm = name.ends_with("layernorm.weight") || name == "model.norm.weight";
          const bool correction = name.ends_with("e_score_correction_bias");
          cuda::fill_random<float>(d, static_cast<size_t>(n), name_seed(name, seed), norm ? 1.0f : 0.0f,
                                   norm ? 0.1f : (correction ? 0.0f : 0.05f), stream_);
          return d;
        },
        [](const std::string&) { return false; },
        [&](const std::string& name, int rows, int cols, uint8_t* w, float* s) {
          cuda::fill_random_fp8(w, s, static_cast<size_t>(rows), cols, fp8_shift_, name_seed(name, seed), 0.02f, stream_);
        });
  }

  void upload_rope() {
    const rope_tables rt = compute_rope(c_);
    const int half = c_.qk_rope_head_dim / 2;
    const size_t P = static_cast<size_t>(c_.max_position_embeddings);
    std::vector<float2> cs(P * static_cast<size_t>(half));
    // As the CPU path computes them: a float angle, cos and sin in double, times the YaRN factor.
    for (size_t p = 0; p < P; ++p)
      for (int i = 0; i < half; ++i) {
        const float angle = rt.inv_freq[static_cast<size_t>(i)] * static_cast<float>(p);
        cs[p * half + i] = float2{static_cast<float>(std::cos(static_cast<double>(angle))) * rt.attention_factor,
                                  static_cast<float>(std::sin(static_cast<double>(angle))) * rt.attention_factor};
      }
    rope_cs_ = alloc<float2>(cs.size());
    check(cudaMemcpy(rope_cs_, cs.data(), cs.size() * sizeof(float2), cudaMemcpyHostToDevice));
  }

  void make_pool(const backend_options& opt) {
    if (opt.kv_block_size < 1 || opt.kv_block_size > 4096) throw std::runtime_error("kv_block_size must be 1..4096");
    const size_t per_block = static_cast<size_t>(c_.num_hidden_layers) * opt.kv_block_size * dims_.width() * sizeof(T);
    size_t free_bytes = 0, total = 0;
    check(cudaMemGetInfo(&free_bytes, &total));
    // Room kept back for the forward's scratch buffers and cuBLAS.
    const size_t reserve = std::min<size_t>(free_bytes / 4, size_t{4} << 30);
    const size_t usable = free_bytes > reserve ? free_bytes - reserve : 0;
    size_t bytes = 0;
    if (opt.kv_cache_memory > 1) bytes = static_cast<size_t>(opt.kv_cache_memory);
    else bytes = static_cast<size_t>(static_cast<double>(usable) * (opt.kv_cache_memory > 0 ? opt.kv_cache_memory : 0.9));
    if (bytes > usable)
      throw std::runtime_error("kv_cache_memory asks for " + std::to_string(bytes) + " bytes; " + std::to_string(usable) +
                               " are free on " + opt.device + " after the weights");
    const size_t blocks = bytes / per_block;
    if (blocks == 0) throw std::runtime_error("kv_cache_memory holds no KV block of " + std::to_string(per_block) + " bytes");
    void* p = nullptr;
    check(cudaMalloc(&p, blocks * per_block));
    allocations_.push_back(p);
    pool_ = static_cast<T*>(p);
    pool_shape_ = kv_pool_shape{opt.kv_block_size, blocks, per_block};
  }

  T* cache_layer(int l) const {
    return pool_ + static_cast<size_t>(l) * pool_shape_.blocks * pool_shape_.block_size * dims_.width();
  }

  // ---- the batch ------------------------------------------------------------------------------

  void plan_batch(std::span<const batch_item> batch) {
    tokens_.clear(), pos_.clear(), slot_.clear(), table_off_.clear(), table_.clear(), rows_.clear(), row_info_.clear();
    params_.clear();
    spans_.clear();
    dense_items_ = 0;
    want_logits_ = false;
    max_len_ = 0;
    sequences_ = static_cast<int>(batch.size());
    const int bs = pool_shape_.block_size;
    for (size_t i = 0; i < batch.size(); ++i) {
      const batch_item& it = batch[i];
      const size_t n = it.tokens.size();
      if (n == 0) throw std::invalid_argument("batch item " + std::to_string(i) + " has no tokens");
      const size_t end = it.start + n;
      if (end > static_cast<size_t>(c_.max_position_embeddings))
        throw std::invalid_argument("batch item " + std::to_string(i) + " runs past the context of " +
                                    std::to_string(c_.max_position_embeddings));
      if (it.blocks.size() * static_cast<size_t>(bs) < end)
        throw std::invalid_argument("batch item " + std::to_string(i) + ": its block table covers " +
                                    std::to_string(it.blocks.size() * bs) + " positions, it needs " + std::to_string(end));
      for (int32_t b : it.blocks)
        if (b < 0 || static_cast<size_t>(b) >= pool_shape_.blocks)
          throw std::invalid_argument("block " + std::to_string(b) + " is outside the pool of " +
                                      std::to_string(pool_shape_.blocks));
      const int32_t off = static_cast<int32_t>(table_.size());
      table_.insert(table_.end(), it.blocks.begin(), it.blocks.end());
      spans_.push_back(item_span{static_cast<int>(tokens_.size()), static_cast<int>(n), static_cast<int>(it.start), off,
                                 dense_prefill_tokens_ > 0 && n >= static_cast<size_t>(dense_prefill_tokens_)});
      max_len_ = std::max(max_len_, static_cast<int>(end));
      for (size_t k = 0; k < n; ++k) {
        const int32_t id = it.tokens[k];
        if (id < 0 || id >= c_.vocab_size)
          throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary of " +
                                      std::to_string(c_.vocab_size));
        const size_t p = it.start + k;
        const bool last = k + 1 == n;
        if ((it.logits && it.all_positions) || (last && (it.logits || it.sample))) {
          rows_.push_back(static_cast<int32_t>(tokens_.size()));
          row_info_.push_back(row_meta{i, last && it.sample != nullptr, it.logits});
          cuda::sample_params sp;
          if (last && it.sample) {
            sp.temperature = it.sample->temperature;
            sp.top_p = it.sample->top_p;
            sp.top_k = it.sample->top_k;
            sp.seed = it.sample->seed;
            sp.draw = it.draw;
          }
          params_.push_back(sp);
          want_logits_ = want_logits_ || it.logits;
        }
        tokens_.push_back(id);
        pos_.push_back(static_cast<int32_t>(p));
        slot_.push_back(it.blocks[p / bs] * bs + static_cast<int32_t>(p % bs));
        table_off_.push_back(off);
      }
    }
    // Graphed batches (up to gemv_token_limit tokens) keep one layout: the absorbed kernel.
    if (tokens_.size() <= static_cast<size_t>(gemv_token_limit))
      for (auto& sp : spans_) sp.dense = false;
    for (const auto& sp : spans_) dense_items_ += sp.dense;
  }

  void upload_meta() {
    const size_t S = rows_.size();
    // One copy: five int arrays, the sampling parameters (8-byte aligned), then the block tables.
    std::vector<int32_t>& h = meta_host_;
    h.clear();
    auto put = [&](const std::vector<int32_t>& v) {
      const size_t at = h.size();
      h.insert(h.end(), v.begin(), v.end());
      return at;
    };
    // The block tables go last, so every other array's place depends on N and S alone (a captured
    // graph keeps pointing at the right ones).
    const size_t o_tok = put(tokens_), o_pos = put(pos_), o_slot = put(slot_), o_toff = put(table_off_),
                 o_rows = put(rows_);
    if (h.size() % 2) h.push_back(0);
    const size_t o_params = h.size();
    h.resize(h.size() + S * sizeof(cuda::sample_params) / sizeof(int32_t));
    std::memcpy(h.data() + o_params, params_.data(), S * sizeof(cuda::sample_params));
    const size_t o_table = put(table_);
    // Room to spare, so that growing block tables rarely move the buffer (and drop the graphs).
    int32_t* d = ws_meta_.as<int32_t>(h.size() + 4096);
    check(cudaMemcpyAsync(d, h.data(), h.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    d_tokens_ = d + o_tok;
    d_rows_ = d + o_rows;
    d_params_ = reinterpret_cast<const cuda::sample_params*>(d + o_params);
    map_ = cuda::token_map{d + o_pos, d + o_slot, d + o_table, d + o_toff, pool_shape_.block_size};
  }

  // ---- layers ---------------------------------------------------------------------------------

  /// y[M, W.rows] = x[M, W.cols] . W^T, y of type ytype (float or T).
  /// side: on the second stream (the shared experts), else on the main one.
  void gemm(const T* x, int M, const mat<T>& W, void* y, cudaDataType_t ytype, bool side = false) {
    gemm_raw(x, M, W.w, W.rows, W.cols, y, ytype, side);
  }
  /// Whether gemm takes the skinny kernel for this product (bf16, few rows, its shapes, 16-byte aligned).
  bool uses_skinny(int M, const T* x, const T* w, int rows, int cols, bool side = false) const {
    const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    return std::is_same_v<T, bf16> && skinny_[side ? 1 : 0] && M <= skinny_rows_ && cuda::skinny_fits(rows, cols) &&
           aligned(x) && aligned(w);
  }
  bool uses_skinny(int M, const mat<T>& W) const { return uses_skinny(M, nullptr, W.w, W.rows, W.cols); }
  void gemm_raw(const T* x, int M, const T* w, int rows, int cols, void* y, cudaDataType_t ytype, bool side = false) {
    if (M == 0) return;
    const auto& skinny = skinny_[side ? 1 : 0];
    if constexpr (std::is_same_v<T, bf16>) {
      if (uses_skinny(M, x, w, rows, cols, side)) {
        if (M == 1 && staged_ && cuda::staged_row_fits(rows, cols, sms_)) {
          cuda::staged_row_gemm(x, w, rows, cols, y, ytype == CUDA_R_32F, sms_, side ? side_ : stream_);
          return;
        }
        cuda::skinny_gemm(x, M, w, rows, cols, y, ytype == CUDA_R_32F,
                          cuda::skinny_split(rows, cols, sms_, skinny_workspace_floats), *skinny,
                          side ? side_ : stream_);
        return;
      }
    }
    const float one = 1.0f, zero = 0.0f;
    check_blas(cublas().gemm(side ? blas_side_ : blas_, CUBLAS_OP_T, CUBLAS_OP_N, rows, M, cols, &one, w, data_type<T>(), cols, x,
                            data_type<T>(), cols, &zero, y, ytype, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "gemm");
  }

  void attention(const layer_weights<T>& L, int l, const T* h, int N, float* y) {
    const auto& c = c_;
    const int nh = c.num_attention_heads, qk = c.qk_head_dim(), W = dims_.width();
    const int nope = c.qk_nope_head_dim, vd = c.v_head_dim;
    cuda::mla_query<T> query;
    float* ckv = nullptr;
    int ckv_stride = W;
    // q_nope as the W_UK product reads it: rows q_ld apart, heads q_head apart.
    const T* q_nope = nullptr;
    int q_ld = nh * qk, q_head = qk;
    if (L.q_kv.w) {
      // One product for q and the latent, in float; mla_prepare writes q's nope parts in T.
      ckv_stride = L.q_kv.rows;
      float* qkv = ws_ckv_.as<float>(static_cast<size_t>(N) * ckv_stride);
      gemm(h, N, L.q_kv, qkv, CUDA_R_32F);
      ckv = qkv + static_cast<size_t>(nh) * qk;
      T* nope_out = ws_q_.as<T>(static_cast<size_t>(N) * nh * nope);
      query = {nullptr, qkv, ckv_stride, nope_out};
      q_nope = nope_out, q_ld = nh * nope, q_head = nope;
    } else {
      T* q = ws_q_.as<T>(static_cast<size_t>(N) * nh * qk);
      if (c.q_lora_rank > 0) {
        float* qa = ws_qa_.as<float>(static_cast<size_t>(N) * c.q_lora_rank);
        T* qa_n = ws_qa_n_.as<T>(static_cast<size_t>(N) * c.q_lora_rank);
        gemm(h, N, L.q_a, qa, CUDA_R_32F);
        cuda::rmsnorm<T>(qa, nullptr, {}, L.q_a_bias, L.q_a_norm, latent_norm_eps, c.q_lora_rank, N, nullptr, qa_n,
                         stream_);
        gemm(qa_n, N, L.q_b, q, data_type<T>());
      } else {
        gemm(h, N, L.q_proj, q, data_type<T>());
      }
      ckv = ws_ckv_.as<float>(static_cast<size_t>(N) * W);
      gemm(h, N, L.kv_a, ckv, CUDA_R_32F);
      if (L.kv_a_bias) cuda::add_bias(ckv, L.kv_a_bias, W, N, stream_);
      query.t = q;
      q_nope = q;
    }
    T* q_full = ws_q_full_.as<T>(static_cast<size_t>(N) * nh * W);
    T* cache = cache_layer(l);
    // A lone token's W_UK in the preparation's kernel (bf16, q in float from the fused product).
    bool absorbed = false;
    if constexpr (std::is_same_v<T, bf16>) {
      if (uk_in_prepare_ && N == 1 && query.f != nullptr && dense_items_ == 0 && cuda::mla_prepare_absorbing_fits(dims_)) {
        cuda::mla_query<cuda::bf16> q16{nullptr, query.f, query.stride, nullptr};
        cuda::mla_prepare_absorbing(ckv, ckv_stride, L.kv_a_norm, latent_norm_eps, q16, L.kv_b.w, c.v_head_dim,
                                    rope_cs_, c.rope_interleave, dims_, map_, q_full, cache, stream_);
        absorbed = true;
      }
    }
    if (!absorbed)
      cuda::mla_prepare<T>(ckv, ckv_stride, L.kv_a_norm, latent_norm_eps, query, rope_cs_, c.rope_interleave, dims_, N,
                           map_, q_full, cache, stream_);
    T* attn = ws_attn_.as<T>(static_cast<size_t>(N) * nh * vd);
    if (dense_items_ < sequences_) absorbed_attention(L, q_nope, q_ld, q_head, q_full, cache, N, attn, absorbed);
    if (dense_items_ > 0)
      for (const auto& sp : spans_)
        if (sp.dense) dense_attention(L, sp, q_nope, q_ld, q_head, q_full, cache, attn);
    gemm(attn, N, L.o, y, CUDA_R_32F);
    if (L.o_bias) cuda::add_bias(y, L.o_bias, c.hidden_size, N, stream_);
  }

  /// Attention in the absorbed form for every token but those of items that attend un-absorbed
  /// (their rows of attn are written by dense_attention after this).
  void absorbed_attention(const layer_weights<T>& L, const T* q_nope, int q_ld, int q_head, T* q_full, const T* cache,
                          int N, T* attn, bool uk_done) {
    const auto& c = c_;
    const int nh = c.num_attention_heads, kvr = c.kv_lora_rank, W = dims_.width(), nope = c.qk_nope_head_dim,
              vd = c.v_head_dim;
    const float one = 1.0f, zero = 0.0f;
    // W_UK absorbed: q_full[t, h, :kvr] = q_nope[t, h, :] . kv_b[h, :nope, :]   (per head), unless
    // the preparation did it.
    if (!uk_done)
      check_blas(cublas().gemm_strided(blas_, CUBLAS_OP_N, CUBLAS_OP_N, kvr, N, nope, &one, L.kv_b.w, data_type<T>(), kvr,
                                       static_cast<long long>(nope + vd) * kvr, q_nope, data_type<T>(), q_ld, q_head,
                                       &zero, q_full, data_type<T>(), nh * W, W, nh, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT),
                 "q absorb");
    const float scale = static_cast<float>(c.softmax_scale());
    // A few tokens, none attending un-absorbed, whose contexts are split: W_UV in the merge's kernel.
    if constexpr (std::is_same_v<T, bf16>) {
      if (uv_in_merge_ && N <= uv_merge_tokens && dense_items_ == 0 && cuda::mla_attend_uv_takes(dims_, N, max_len_, vd)) {
        const size_t part = cuda::mla_partial_floats(N, dims_, max_len_);
        cuda::mla_attend_uv(q_full, cache, dims_, N, max_len_, map_, scale, ws_partial_.as<float>(part), part, L.kv_b.w,
                            vd, attn, stream_);
        return;
      }
    }
    T* o_lat = ws_o_lat_.as<T>(static_cast<size_t>(N) * nh * kvr);
    // Runs of items side by side that take the kernel (all of the batch when none is dense).
    for (size_t i = 0; i < spans_.size();) {
      if (spans_[i].dense) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < spans_.size() && !spans_[j].dense) ++j;
      const int first = spans_[i].first, n = spans_[j - 1].first + spans_[j - 1].n - first;
      const size_t part = cuda::mla_partial_floats(n, dims_, max_len_);
      float* partial = part ? ws_partial_.as<float>(part) : nullptr;
      cuda::token_map m = map_;
      m.pos += first, m.slot += first, m.table_off += first;
      cuda::mla_attend<T>(q_full + static_cast<size_t>(first) * nh * W, cache, dims_, n, static_cast<int>(j - i),
                          max_len_, m, scale, partial, part, o_lat + static_cast<size_t>(first) * nh * kvr, stream_);
      i = j;
    }
    // W_UV after attention: attn[t, h, :] = kv_b[h, nope:, :] . o_lat[t, h, :]
    check_blas(cublas().gemm_strided(blas_, CUBLAS_OP_T, CUBLAS_OP_N, vd, N, kvr, &one,
                                          L.kv_b.w + static_cast<size_t>(nope) * kvr, data_type<T>(), kvr,
                                          static_cast<long long>(nope + vd) * kvr, o_lat, data_type<T>(), nh * kvr, kvr,
                                          &zero, attn, data_type<T>(), nh * vd, vd, nh, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT),
               "v absorb");
  }

  /// One long prompt chunk's attention, un-absorbed (mla_prefill.cuh): its sequence's cached
  /// latents (the chunk's own included: mla_prepare wrote them) are expanded with kv_b to per-head
  /// keys and values, then per head scores = q . k (nope and rope parts side by side), a causal softmax, and
  /// attn = p . v: in bf16 at DeepSeek's head shapes by one fused kernel (cuda::flash_prefill), else
  /// by cuBLAS products with the softmax kernel between them. Heads go in groups (and, unfused,
  /// queries in chunks) so that the scratch stays within dense_scratch_bytes; a chunk of queries
  /// attends only up to its last position.
  void dense_attention(const layer_weights<T>& L, const item_span& sp, const T* q_nope, int q_ld, int q_head,
                       const T* q_full, const T* cache, T* attn) {
    const auto& c = c_;
    const int nh = c.num_attention_heads, kvr = c.kv_lora_rank, W = dims_.width(), nope = c.qk_nope_head_dim,
              vd = c.v_head_dim, rope = c.qk_rope_head_dim, hd = nope + vd;
    const int len = sp.start + sp.n;
    T* lat = ws_lat_.as<T>(static_cast<size_t>(len) * W);
    cuda::gather_positions<T>(cache, map_.table + sp.table_off, pool_shape_.block_size, W, len, lat, stream_);
    const float one = 1.0f, zero = 0.0f, scale = static_cast<float>(c.softmax_scale());
    // kv[j, h, :nope] = k_nope, kv[j, h, nope:] = v, for a group of g heads from h0.
    const auto expand = [&](int h0, int g, T* kv) {
      check_blas(cublas().gemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, g * hd, len, kvr, &one,
                              L.kv_b.w + static_cast<size_t>(h0) * hd * kvr, data_type<T>(), kvr, lat, data_type<T>(), W,
                              &zero, kv, data_type<T>(), g * hd, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "kv expand");
    };
    if constexpr (std::is_same_v<T, cuda::bf16>) {
      // The fused kernel: scores, softmax and values in registers, no scratch but the expansion.
      const int hg = static_cast<int>(std::clamp<size_t>(dense_scratch_bytes / (static_cast<size_t>(len) * hd * sizeof(T)), 1,
                                                         static_cast<size_t>(nh)));
      T* kv = ws_kv_full_.as<T>(static_cast<size_t>(len) * hg * hd);
      const auto operands = [&](int h0, int g) {
        cuda::flash_operands a{};
        a.q_nope = q_nope + static_cast<size_t>(sp.first) * q_ld + static_cast<size_t>(h0) * q_head;
        a.q_nope_ld = q_ld, a.q_nope_head = q_head;
        a.q_rope = q_full + (static_cast<size_t>(sp.first) * nh + h0) * W + kvr;
        a.q_rope_ld = nh * W, a.q_rope_head = W;
        a.k_nope = kv, a.k_nope_ld = g * hd, a.k_nope_head = hd;
        a.k_rope = lat + kvr, a.k_rope_ld = W;
        a.v = kv + nope, a.v_ld = g * hd, a.v_head = hd;
        a.out = attn + static_cast<size_t>(sp.first) * nh * vd + static_cast<size_t>(h0) * vd;
        a.out_ld = nh * vd, a.out_head = vd;
        a.nope = nope, a.rope = rope, a.v_dim = vd, a.heads = g, a.n = sp.n, a.start = sp.start, a.scale = scale;
        return a;
      };
      if (flash_prefill_ && cuda::flash_prefill_fits(operands(0, hg))) {
        for (int h0 = 0; h0 < nh; h0 += hg) {
          const int g = std::min(hg, nh - h0);
          expand(h0, g, kv);
          cuda::flash_prefill(operands(h0, g), stream_);
        }
        return;
      }
    }
    // Otherwise cuBLAS products of the scores and of the values, the causal softmax between them.
    const size_t per_head = static_cast<size_t>(len) * (hd + nope + rope) * sizeof(T);
    const int hg = static_cast<int>(std::clamp<size_t>(dense_scratch_bytes / per_head, 1, static_cast<size_t>(nh)));
    const int qk = nope + rope;
    T* kv = ws_kv_full_.as<T>(static_cast<size_t>(len) * hg * hd);
    T* k_cat = ws_k_cat_.as<T>(static_cast<size_t>(len) * hg * qk);
    T* q_cat = ws_q_cat_.as<T>(static_cast<size_t>(sp.n) * hg * qk);
    const int pitch = (len + 7) / 8 * 8;  // score rows 16-byte aligned for the tensor cores
    int qc = std::min(sp.n, std::max(64, (sp.n + query_chunks - 1) / query_chunks));
    const size_t per_query = static_cast<size_t>(hg) * pitch * (sizeof(float) + sizeof(T));
    qc = static_cast<int>(std::clamp<size_t>(dense_scratch_bytes / per_query, 1, static_cast<size_t>(qc)));
    float* S = ws_scores_.as<float>(static_cast<size_t>(hg) * qc * pitch);
    T* P = ws_probs_.as<T>(static_cast<size_t>(hg) * qc * pitch);
    for (int h0 = 0; h0 < nh; h0 += hg) {
      const int g = std::min(hg, nh - h0);
      expand(h0, g, kv);
      // Keys and queries with each head's nope and rope parts side by side (the rope key is
      // shared by the heads).
      cuda::concat_heads<T>(kv, g * hd, hd, nope, lat + kvr, W, 0, rope, len, g, k_cat, stream_);
      cuda::concat_heads<T>(q_nope + static_cast<size_t>(sp.first) * q_ld + static_cast<size_t>(h0) * q_head, q_ld,
                            q_head, nope, q_full + static_cast<size_t>(sp.first) * nh * W + static_cast<size_t>(h0) * W + kvr,
                            nh * W, W, rope, sp.n, g, q_cat, stream_);
      for (int q0 = 0; q0 < sp.n; q0 += qc) {
        const int nq = std::min(qc, sp.n - q0), keys = sp.start + q0 + nq;
        const int lp = (keys + 7) / 8 * 8;
        const size_t tok = static_cast<size_t>(sp.first + q0);
        check_blas(cublas().gemm_strided(blas_, CUBLAS_OP_T, CUBLAS_OP_N, keys, nq, qk, &one, k_cat, data_type<T>(),
                                              g * qk, qk, q_cat + static_cast<size_t>(q0) * g * qk, data_type<T>(), g * qk,
                                              qk, &zero, S, CUDA_R_32F, lp, static_cast<long long>(nq) * lp, g,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "scores");
        cuda::causal_softmax<T>(S, g * nq, nq, lp, sp.start + q0, scale, P, stream_);
        check_blas(cublas().gemm_strided(blas_, CUBLAS_OP_N, CUBLAS_OP_N, vd, nq, keys, &one, kv + nope,
                                              data_type<T>(), g * hd, hd, P, data_type<T>(), lp,
                                              static_cast<long long>(nq) * lp, &zero,
                                              attn + tok * nh * vd + static_cast<size_t>(h0) * vd, data_type<T>(), nh * vd,
                                              vd, g, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "attend values");
      }
    }
  }

  void mlp(const mat<T>& gate_up, const mat<T>& down, const T* h, int N, float* y) {
    const int inter = gate_up.rows / 2;
    float* gu = ws_gu_.as<float>(static_cast<size_t>(N) * gate_up.rows);
    T* act = ws_act_.as<T>(static_cast<size_t>(N) * inter);
    gemm(h, N, gate_up, gu, CUDA_R_32F);
    cuda::silu_mul<T>(gu, inter, N, act, stream_);
    gemm(act, N, down, y, CUDA_R_32F);
  }

  /// Routes and runs the experts; the result is summed into the residual stream by the next norm.
  cuda::moe_sum moe(const layer_weights<T>& L, const T* h, int N) {
    const auto& c = c_;
    const int E = c.n_routed_experts, K = c.num_experts_per_tok, H = c.hidden_size, I = c.moe_intermediate_size;
    const int R = N * K;
    // With shared experts, one product gives the router logits and the shared gate and up, unless
    // the routed gate-up product takes the shared gate and up (its shared items run while the
    // router's product still sums and routes).
    const bool gate_up_shared = shared_gate_up_in_experts(L, N) && uses_skinny(N, h, L.router.w, L.router.rows, L.router.cols);
    const mat<T>& first = L.has_shared && !gate_up_shared ? L.router_shared : L.router;
    float* router_logits = ws_router_.as<float>(static_cast<size_t>(N) * first.rows);
    int32_t* ids = ws_ids_.as<int32_t>(static_cast<size_t>(R));
    float* wts = ws_wts_.as<float>(static_cast<size_t>(R));
    cuda::router_config rc;
    rc.experts = E, rc.top_k = K, rc.groups = c.n_group, rc.top_groups = c.topk_group;
    rc.sigmoid = c.v3;
    rc.grouped = c.v3 || c.topk_method == "group_limited_greedy";
    rc.group_by_top2 = c.v3;
    rc.normalise = c.norm_topk_prob && (c.v3 || K > 1);
    rc.scaling = static_cast<float>(c.routed_scaling_factor);
    rc.stride = first.rows;
    int32_t* grouping = ws_grouping_.as<int32_t>(2 * static_cast<size_t>(E) + 2 + 2 * static_cast<size_t>(R));
    int32_t *offsets = grouping, *active = offsets + E + 1, *row_token = active + E + 1, *slot_row = row_token + R;
    const cuda::expert_groups groups{offsets, active, row_token, slot_row};
    // A lone token in bf16 is routed by the router's product itself when the fused gate-up product
    // follows and the router kernel has no other work (the shared experts' SiLU-mul from the
    // router-and-shared product's rows: with their gate and up in the gate-up product, it has none).
    const bool with_shared = shared_in_experts(L, N);
    // The router's columns are cut finer than the rest (skinny_plan's lead blocks), at every batch
    // size, so that a lone token's logits are summed and routed while the shared columns stream.
    bool routed = false, done = false;
    if constexpr (std::is_same_v<T, bf16>) {
      if (uses_skinny(N, h, first.w, first.rows, first.cols)) {
        const auto plan = cuda::skinny_split(first.rows, first.cols, sms_, skinny_workspace_floats, E, router_chunks_);
        routed = route_in_product_ && N == 1 && !L.experts_gate_up_fp8.w && fused_silu_ &&
                 (!with_shared || gate_up_shared) && cuda::expert_gate_up_silu_fits(I, H) &&
                 cuda::skinny_route_fits(plan, N, first.rows, rc);
        const cuda::skinny_route route{rc, L.score_bias, ids, wts, groups};
        cuda::skinny_gemm(h, N, first.w, first.rows, first.cols, router_logits, true, plan, *skinny_[0], stream_,
                          routed ? &route : nullptr);
        done = true;
      }
    }
    if (!done) gemm(h, N, first, router_logits, CUDA_R_32F);
    // A decode step's shared experts: in the router's kernel (or, routed in the product, the
    // gate-up product) and the routed down product, or their own SiLU-mul and product.
    cuda::shared_experts in_experts;
    if (with_shared) {
      const int Is = L.shared_gate_up.rows / 2;
      in_experts.act = reinterpret_cast<cuda::bf16*>(ws_sact_.as<T>(static_cast<size_t>(N) * Is));
      in_experts.out = ws_shared_.as<float>(static_cast<size_t>(N) * H);
      in_experts.w = reinterpret_cast<const cuda::bf16*>(L.shared_down.w);
      in_experts.inter = I, in_experts.parts = c.n_shared_experts, in_experts.hidden = H, in_experts.rows = N;
      if (gate_up_shared) in_experts.gate_up = reinterpret_cast<const cuda::bf16*>(L.shared_gate_up.w);
    }
    float* shared = in_experts.act    ? in_experts.out
                    : L.has_shared ? shared_experts(L, router_logits, first.rows, N)
                                   : nullptr;
    // The shared experts' SiLU-mul: written by the gate-up product from their own rows there
    // (gate_up_shared), else by the router's kernel from the router-and-shared product's rows.
    const cuda::shared_experts prep = gate_up_shared ? in_experts : cuda::shared_experts{};
    if (!routed)
      cuda::route_and_group(router_logits, L.score_bias, rc, N, ids, wts, groups, route_arrivals_, stream_,
                            gate_up_shared ? cuda::shared_experts{} : in_experts);
    float* gu = ws_gu_.as<float>(static_cast<size_t>(R) * 2 * I);
    T* act = ws_act_.as<T>(static_cast<size_t>(R) * I);
    float* rows = ws_rows_.as<float>(static_cast<size_t>(R) * H);
    // FP8 tensor-core experts take prefill up to fp8_slot_tokens too: no host round trip, each
    // weight slice re-read from L2 for each 16 rows (longer prompts dequantise into slots).
    if (N <= gemv_token_limit || (L.experts_gate_up_fp8.w && fp8_mma_ && N < fp8_slot_tokens)) {
      const int max_active = std::min(E, R);
      if constexpr (std::is_same_v<T, bf16>) {
        if (L.experts_gate_up_fp8.w && fp8_mma_) {
          // Activations quantised per block of 128 (the tokens' rows, then the grouped rows).
          uint8_t* hq = ws_xq_.as<uint8_t>(static_cast<size_t>(N) * H);
          float* hs = ws_xs_.as<float>(static_cast<size_t>(N) * H / 128);
          cuda::quantise_rows_fp8(h, N, H, hq, hs, stream_);
          cuda::expert_fp8_mma(L.experts_gate_up_fp8, hq, hs, row_token, offsets, active, max_active, 2 * I, H, gu,
                               stream_);
          cuda::silu_mul<T>(gu, I, R, act, stream_);
          uint8_t* aq = ws_aq_.as<uint8_t>(static_cast<size_t>(R) * I);
          float* as = ws_as_.as<float>(static_cast<size_t>(R) * I / 128);
          cuda::quantise_rows_fp8(act, R, I, aq, as, stream_);
          cuda::expert_fp8_mma(L.experts_down_fp8, aq, as, nullptr, offsets, active, max_active, H, I, rows, stream_);
          return finish_moe(shared, rows, slot_row, wts);
        }
        if (L.experts_gate_up_fp8.w) {
          cuda::expert_gemv_fp8(L.experts_gate_up_fp8, h, row_token, offsets, active, max_active, 2 * I, H, gu, stream_);
          cuda::silu_mul<T>(gu, I, R, act, stream_);
          cuda::expert_gemv_fp8(L.experts_down_fp8, act, nullptr, offsets, active, max_active, H, I, rows, stream_,
                                in_experts);
          return finish_moe(shared, rows, slot_row, wts);
        }
      }
      bool fused = false;
      if constexpr (std::is_same_v<T, bf16>) {
        if (fused_silu_ && cuda::expert_gate_up_silu_fits(I, H)) {
          cuda::expert_gate_up_silu(L.experts_gate_up, h, row_token, offsets, active, max_active, I, H, act, stream_,
                                    prep, N == 1 && lone_experts_, expert_lines_);
          fused = true;
        }
      }
      if (!fused) {
        cuda::expert_gemv<T>(L.experts_gate_up, h, row_token, offsets, active, max_active, 2 * I, H, gu, stream_);
        cuda::silu_mul<T>(gu, I, R, act, stream_);
      }
      bool down_done = false;
      if constexpr (std::is_same_v<T, bf16>) {
        if (in_experts.act) {
          cuda::expert_down_with_shared(L.experts_down, act, offsets, active, max_active, H, I, rows, in_experts,
                                        stream_, N == 1 && lone_experts_, expert_lines_);
          down_done = true;
        }
      }
      if (!down_done)
        cuda::expert_gemv<T>(L.experts_down, act, nullptr, offsets, active, max_active, H, I, rows, stream_);
    } else {
      offsets_host_.resize(static_cast<size_t>(E) + 1);
      check(cudaMemcpyAsync(offsets_host_.data(), offsets, sizeof(int32_t) * (E + 1), cudaMemcpyDeviceToHost, stream_));
      check(cudaStreamSynchronize(stream_));
      return slot_experts(L, h, N, ids, wts, {offsets, active, row_token, slot_row}, shared);
    }
    return finish_moe(shared, rows, slot_row, wts);
  }

  /// Prefill's routed experts in two batched products (cuBLAS's pointer-array form) instead of two
  /// per expert: each expert's grouped rows are cut into slots of `rows` rows (the last one
  /// partial), every slot a product of the same shape with its expert's matrix. An expert's slots'
  /// outputs lie together in a padded buffer from its first padded row (slot_index tells the next
  /// norm where each (token, k) row went). In bf16 mode the products write bf16: half the bytes for
  /// the products to write and for SiLU-mul and the next norm to read. One launch fills the GPU where
  /// one product per expert fills a third of it, and the host queues two products a layer instead
  /// of 2 * experts. FP8 experts are dequantised (to the loader's bf16 values) a group at a time
  /// into scratch of at most dense_scratch_bytes * 4, each group's slots run after its
  /// dequantisation.
  cuda::moe_sum slot_experts(const layer_weights<T>& L, const T* h, int N, const int32_t* ids, const float* wts,
                             const cuda::expert_groups& g, float* shared) {
    const int E = c_.n_routed_experts, K = c_.num_experts_per_tok, H = c_.hidden_size, I = c_.moe_intermediate_size;
    const int R = N * K;
    const int rows = slot_rows > 0 ? slot_rows : (R >= 128 * E ? 128 : 64);
    const size_t gu_size = static_cast<size_t>(2) * I * H, dn_size = static_cast<size_t>(H) * I;
    const bool fp8 = L.experts_gate_up_fp8.w != nullptr;
    // The products write bf16 in bf16 mode (cuBLAS takes bf16 in, float sums, bf16 out), else float.
    const bool narrow = std::is_same_v<T, bf16> && !slot_out_float_;
    const cudaDataType_t out_type = narrow ? CUDA_R_16BF : CUDA_R_32F;
    const size_t ob = narrow ? 2 : 4;
    int group = E;
    if (fp8) {  // as many experts a group as the scratch holds, the groups evened out
      const int most = static_cast<int>(
          std::clamp<size_t>(4 * dense_scratch_bytes / ((gu_size + dn_size) * sizeof(T)), 1, static_cast<size_t>(E)));
      const int groups = (E + most - 1) / most;
      group = (E + groups - 1) / groups;
    }
    T* wgu = fp8 ? ws_dequant_.as<T>(static_cast<size_t>(group) * (gu_size + dn_size)) : nullptr;
    T* wdn = fp8 ? wgu + static_cast<size_t>(group) * gu_size : nullptr;
    // Each expert's first padded row, and its slots.
    slot_base_host_.assign(static_cast<size_t>(E) + 1, 0);
    slot_list_.clear();
    int padded = 0;
    for (int e = 0; e < E; ++e) {
      const int r0 = offsets_host_[static_cast<size_t>(e)], n = offsets_host_[static_cast<size_t>(e) + 1] - r0;
      slot_base_host_[static_cast<size_t>(e)] = padded;
      for (int at = 0; at < n; at += rows) slot_list_.push_back({e, r0 + at, at});
      padded += (n + rows - 1) / rows * rows;
    }
    slot_base_host_[static_cast<size_t>(E)] = padded;
    const int slots = static_cast<int>(slot_list_.size());
    // A slot reads `rows` rows of xg from its first: the last one reads past R (into the spare).
    T* xg = ws_xg_.as<T>((static_cast<size_t>(R) + rows) * H);
    auto* gu = reinterpret_cast<char*>(ws_gu_.as<float>(static_cast<size_t>(padded) * 2 * I));
    T* act = ws_act_.as<T>(static_cast<size_t>(padded) * I);
    auto* out = reinterpret_cast<char*>(ws_rows_.as<float>(static_cast<size_t>(padded) * H));
    cuda::gather_rows<T>(h, g.row_token, H, R, xg, stream_);
    // Six pointer arrays (gate-up A, B, C; down A, B, C) of `slots` entries, then the bases.
    slot_ptrs_host_.assign(6 * static_cast<size_t>(slots), nullptr);
    const void** p = slot_ptrs_host_.data();
    for (int k = 0; k < slots; ++k) {
      const auto [e, first, at] = slot_list_[static_cast<size_t>(k)];
      // FP8: the expert's place in its group's dequantised scratch.
      const T* a_gu = fp8 ? wgu + static_cast<size_t>(e % group) * gu_size : L.experts_gate_up + e * gu_size;
      const T* a_dn = fp8 ? wdn + static_cast<size_t>(e % group) * dn_size : L.experts_down + e * dn_size;
      const size_t pad = static_cast<size_t>(slot_base_host_[static_cast<size_t>(e)]) + at;
      p[k] = a_gu;
      p[slots + k] = xg + static_cast<size_t>(first) * H;
      p[2 * slots + k] = gu + pad * 2 * I * ob;
      p[3 * slots + k] = a_dn;
      p[4 * slots + k] = act + pad * I;
      p[5 * slots + k] = out + pad * H * ob;
    }
    const size_t ptr_bytes = slot_ptrs_host_.size() * sizeof(void*),
                 base_bytes = static_cast<size_t>(E + 1) * sizeof(int32_t);
    auto* d = ws_slot_meta_.as<uint8_t>(ptr_bytes + base_bytes);
    // Pageable copies: the host arrays are copied out before these calls return.
    check(cudaMemcpyAsync(d, slot_ptrs_host_.data(), ptr_bytes, cudaMemcpyHostToDevice, stream_));
    check(cudaMemcpyAsync(d + ptr_bytes, slot_base_host_.data(), base_bytes, cudaMemcpyHostToDevice, stream_));
    auto* const* dp = reinterpret_cast<void* const*>(d);
    const auto* base = reinterpret_cast<const int32_t*>(d + ptr_bytes);
    int32_t* slot_index = ws_slot_index_.as<int32_t>(static_cast<size_t>(R));
    cuda::expert_slot_index(ids, g.slot_row, g.offsets, base, R, slot_index, stream_);
    const float one = 1.0f, zero = 0.0f;
    // Slots k0.. (n of them): gate and up, or (down) the experts' rows.
    const auto products = [&](bool down, int k0, int n) {
      const int out_rows = down ? H : 2 * I, inner = down ? I : H, a = down ? 3 : 0;
      check_blas(cublas().gemm_batched(blas_, CUBLAS_OP_T, CUBLAS_OP_N, out_rows, rows, inner, &one, dp + a * slots + k0,
                                     data_type<T>(), inner, dp + (a + 1) * slots + k0, data_type<T>(), inner, &zero,
                                     const_cast<void**>(dp + (a + 2) * slots + k0), out_type, out_rows, n,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 down ? "experts down" : "experts gate and up");
    };
    for (int e0 = 0, k0 = 0; e0 < E; e0 += group) {
      const int e1 = std::min(E, e0 + group);
      int n = 0;
      while (k0 + n < slots && slot_list_[static_cast<size_t>(k0 + n)].expert < e1) ++n;
      if (n == 0) continue;
      if constexpr (std::is_same_v<T, bf16>) {
        if (fp8) {
          cuda::dequantise_experts(L.experts_gate_up_fp8, e0, e1 - e0, 2 * I, H, wgu, stream_);
          cuda::dequantise_experts(L.experts_down_fp8, e0, e1 - e0, H, I, wdn, stream_);
        }
      }
      products(false, k0, n);
      // SiLU-mul over the group's padded rows.
      const int p0 = slot_base_host_[static_cast<size_t>(e0)], pn = slot_base_host_[static_cast<size_t>(e1)] - p0;
      const char* gu0 = gu + static_cast<size_t>(p0) * 2 * I * ob;
      T* act0 = act + static_cast<size_t>(p0) * I;
      if constexpr (std::is_same_v<T, bf16>) {
        if (narrow) cuda::silu_mul(reinterpret_cast<const bf16*>(gu0), I, pn, act0, stream_);
      }
      if (!narrow) cuda::silu_mul<T>(reinterpret_cast<const float*>(gu0), I, pn, act0, stream_);
      products(true, k0, n);
      k0 += n;
    }
    if (narrow) {
      cuda::moe_sum sum = finish_moe(shared, nullptr, slot_index, wts);
      sum.rows16 = reinterpret_cast<const bf16*>(out);
      return sum;
    }
    return finish_moe(shared, reinterpret_cast<float*>(out), slot_index, wts);
  }

  /// Whether a step's shared experts go into the routed kernels (route_and_group's SiLU-mul, the
  /// routed down product's extra items): bf16 mode, up to shared_in_experts_rows tokens (each
  /// shared item walks all of them, where a routed expert has a few), at most two shared experts,
  /// routed experts in bf16 or FP8 read as bf16 (the same kernel, so an FP8 checkpoint kept in FP8
  /// still gives the dequantised model's bits; the FP8 tensor-core product keeps its own path).
  bool shared_in_experts(const layer_weights<T>& L, int N) const {
    if constexpr (std::is_same_v<T, bf16>) {
      const int I = c_.moe_intermediate_size, H = c_.hidden_size;
      return shared_in_experts_ && L.has_shared && N <= shared_in_experts_rows &&
             !(L.experts_gate_up_fp8.w && fp8_mma_) && L.shared_gate_up.rows == 2 * I * c_.n_shared_experts &&
             cuda::shared_in_experts_fits(I, c_.n_shared_experts, H);
    }
    return false;
  }

  /// Whether a step's shared experts' gate and up are items of the routed gate-up product
  /// (expert_gate_up_silu's shared.gate_up) rather than rows of the router's product: with the
  /// shared experts in the routed kernels, bf16 experts and the fused gate-up store; moe() also
  /// asks for the router's product on the skinny kernel. The items run before the gate-up kernel
  /// waits for the router's kernels. The skinny product lets the next kernel be placed only after
  /// its own wait, and the route kernel after it starts only then, so the normed rows are complete
  /// when the gate-up kernel is placed.
  bool shared_gate_up_in_experts(const layer_weights<T>& L, int N) const {
    if constexpr (!std::is_same_v<T, bf16>) return false;
    else
      return shared_gate_up_in_experts_ && shared_in_experts(L, N) && !L.experts_gate_up_fp8.w && fused_silu_ &&
             cuda::expert_gate_up_silu_fits(c_.moe_intermediate_size, c_.hidden_size);
  }

  /// The shared experts' SwiGLU and down product, on the side stream for small batches (it waits
  /// for the router's product; finish_moe joins it). Larger batches keep one stream: the routed
  /// experts' persistent grid expects every multiprocessor, and a product beside it costs a wave.
  float* shared_experts(const layer_weights<T>& L, const float* router_logits, int stride, int N) {
    const int E = c_.n_routed_experts, H = c_.hidden_size;
    float* shared = ws_shared_.as<float>(static_cast<size_t>(N) * H);
    const int Is = L.shared_gate_up.rows / 2;
    T* sact = ws_sact_.as<T>(static_cast<size_t>(N) * Is);
    side_now_ = side_stream_ && N <= side_stream_rows;
    if (side_now_) {
      check(cudaEventRecord(fork_, stream_));
      check(cudaStreamWaitEvent(side_, fork_, 0));
    }
    cuda::silu_mul<T>(router_logits + E, Is, N, sact, side_now_ ? side_ : stream_, stride);
    gemm(sact, N, L.shared_down, shared, CUDA_R_32F, side_now_);
    if (side_now_) check(cudaEventRecord(join_, side_));
    return shared;
  }

  /// What the next norm needs to add the routed experts and the shared ones (joined here).
  cuda::moe_sum finish_moe(float* shared, float* rows, const int32_t* slot_row, const float* wts) {
    if (shared && side_now_) check(cudaStreamWaitEvent(stream_, join_, 0));
    side_now_ = false;
    return cuda::moe_sum{rows, slot_row, wts, shared, c_.num_experts_per_tok};
  }

  model_config c_;
  int device_ = 0;
  cuda::mla_dims dims_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  static constexpr size_t blas_workspace_bytes = size_t{32} << 20;
  void* blas_workspace_ = nullptr;
  // Partial sums of the skinny products' K slices (bf16 only; null where cuBLAS does them all).
  static constexpr size_t skinny_workspace_floats = size_t{4} << 20;
  std::unique_ptr<cuda::skinny_scratch> skinny_[2];  // main stream, side stream
  unsigned* route_arrivals_ = nullptr;  ///< the router's blocks count themselves here (left at 0)
  bool side_stream_ = false;  ///< TOLLGATE_ENGINE_SIDE_STREAM=0 turns it off, for measurements
  bool side_now_ = false;     ///< this layer's shared experts run on side_
  static constexpr int side_stream_rows = 16;
  static constexpr int shared_in_experts_rows = 16;
  cudaStream_t side_ = nullptr;
  cudaEvent_t fork_ = nullptr, join_ = nullptr;
  cublasHandle_t blas_side_ = nullptr;
  void* blas_side_workspace_ = nullptr;
  int sms_ = 0, skinny_rows_ = 0;
  // One row's products whose weights fit shared memory copy them there before their wait
  // (cuda::staged_row_gemm); TOLLGATE_ENGINE_STAGED=0 keeps the skinny kernel for them.
  bool staged_ = [] {
    const char* v = std::getenv("TOLLGATE_ENGINE_STAGED");
    return v == nullptr || std::string(v) != "0";
  }();
  // A greedy row of a small batch is sampled by several blocks (cuda::sample_parts);
  // TOLLGATE_ENGINE_SAMPLE_SPLIT=0 keeps one block a row.
  bool sample_split_ = [] {
    const char* v = std::getenv("TOLLGATE_ENGINE_SAMPLE_SPLIT");
    return v == nullptr || std::string(v) != "0";
  }();
  std::unique_ptr<cuda::sample_scratch> sample_scratch_;
  // TOLLGATE_ENGINE_FUSED_SILU=0: a decode step's routed gate-up product writes float and SiLU·mul
  // runs as a kernel of its own (for measurements; the values are the same).
  const bool fused_silu_ = std::getenv("TOLLGATE_ENGINE_FUSED_SILU") == nullptr ||
                           std::string(std::getenv("TOLLGATE_ENGINE_FUSED_SILU")) != "0";
  // TOLLGATE_ENGINE_ROUTE_IN_PRODUCT=0: a lone token is routed by the router's own kernel, not by
  // the router's product (for measurements; the same bits).
  // TOLLGATE_ENGINE_UK_IN_PREPARE=0: a lone token's W_UK stays a cuBLAS product (for measurements).
  const bool uk_in_prepare_ = std::getenv("TOLLGATE_ENGINE_UK_IN_PREPARE") == nullptr ||
                              std::string(std::getenv("TOLLGATE_ENGINE_UK_IN_PREPARE")) != "0";
  // TOLLGATE_ENGINE_UV_IN_MERGE=0: W_UV stays a cuBLAS product after the attention's merge (for
  // measurements). Up to uv_merge_tokens tokens a step take it: each merging block reads its rows
  // of W_UV for its token.
  const bool uv_in_merge_ = std::getenv("TOLLGATE_ENGINE_UV_IN_MERGE") == nullptr ||
                            std::string(std::getenv("TOLLGATE_ENGINE_UV_IN_MERGE")) != "0";
  static constexpr int uv_merge_tokens = 4;
  const bool route_in_product_ = std::getenv("TOLLGATE_ENGINE_ROUTE_IN_PRODUCT") == nullptr ||
                                 std::string(std::getenv("TOLLGATE_ENGINE_ROUTE_IN_PRODUCT")) != "0";
  // TOLLGATE_ENGINE_ROUTER_CHUNKS=n: the router's columns of its product are cut in K slices of n
  // 128-value chunks (0: cut as the rest of the product; for measurements).
  const int router_chunks_ = std::getenv("TOLLGATE_ENGINE_ROUTER_CHUNKS") == nullptr
                                 ? 1
                                 : std::max(0, std::atoi(std::getenv("TOLLGATE_ENGINE_ROUTER_CHUNKS")));
  // TOLLGATE_ENGINE_LONE_EXPERTS=0: a lone token's expert products read its grouped rows from
  // `offsets` and `x_rows` as a batch's do (for measurements; the same values).
  const bool lone_experts_ = std::getenv("TOLLGATE_ENGINE_LONE_EXPERTS") == nullptr ||
                             std::string(std::getenv("TOLLGATE_ENGINE_LONE_EXPERTS")) != "0";
  // TOLLGATE_ENGINE_EXPERT_LINES=0: a lone token's bf16 expert products on the batch's kernel (its
  // tensor-core fragments' 64 bytes of 8 rows a load) instead of expert_lone_kernel's whole lines,
  // for measurements and the tests that compare the two.
  const bool expert_lines_ = std::getenv("TOLLGATE_ENGINE_EXPERT_LINES") == nullptr ||
                             std::string(std::getenv("TOLLGATE_ENGINE_EXPERT_LINES")) != "0";
  // TOLLGATE_ENGINE_SHARED_IN_EXPERTS=0: a decode step's shared experts run their own SiLU-mul and
  // product (on the side stream up to side_stream_rows tokens), for measurements.
  const bool shared_in_experts_ = std::getenv("TOLLGATE_ENGINE_SHARED_IN_EXPERTS") == nullptr ||
                                  std::string(std::getenv("TOLLGATE_ENGINE_SHARED_IN_EXPERTS")) != "0";
  // TOLLGATE_ENGINE_SHARED_GATE_UP_IN_EXPERTS=0: the shared experts' gate and up stay rows of the
  // router's product, and the router's kernel writes their SiLU-mul (for measurements and the test
  // that compares the two; shared_gate_up_in_experts).
  const bool shared_gate_up_in_experts_ = std::getenv("TOLLGATE_ENGINE_SHARED_GATE_UP_IN_EXPERTS") == nullptr ||
                                          std::string(std::getenv("TOLLGATE_ENGINE_SHARED_GATE_UP_IN_EXPERTS")) != "0";
  // Long prompt chunks' un-absorbed attention (dense_attention): the planned batch's items, and
  // the scratch its products may use at most (beyond the cache's gathered latents).
  std::vector<item_span> spans_;
  int dense_items_ = 0, dense_prefill_tokens_ = 0;
  static constexpr size_t dense_scratch_bytes = size_t{256} << 20;
  // Measurement knobs: TOLLGATE_ENGINE_QUERY_CHUNKS, the chunks a long prompt's queries are cut
  // into (each attends up to its last position: more chunks skip more of the masked half, in
  // smaller products; default 4), and TOLLGATE_ENGINE_SLOT_ROWS, the rows of an expert slot
  // (slot_experts; default 128 when experts average 128 rows or more, else 64).
  static int env_int(const char* name, int fallback) {
    const char* v = std::getenv(name);
    return v && std::atoi(v) > 0 ? std::atoi(v) : fallback;
  }
  const int query_chunks = env_int("TOLLGATE_ENGINE_QUERY_CHUNKS", 4);
  // TOLLGATE_ENGINE_FLASH_PREFILL=0: long prompt chunks attend through cuBLAS products and the
  // softmax kernel instead of the fused kernel (for measurements and for the test that compares them).
  const bool flash_prefill_ = std::getenv("TOLLGATE_ENGINE_FLASH_PREFILL") == nullptr ||
                              std::string(std::getenv("TOLLGATE_ENGINE_FLASH_PREFILL")) != "0";
  // FP8 experts on tensor cores take prefill batches below this many tokens on the FP8 product;
  // longer ones dequantise into slots (slot_experts): about 10 ms of dequantisation a 2K prefill
  // at V2-Lite's shapes, against 30 us a token more on the FP8 product.
  static constexpr int fp8_slot_tokens = 512;
  const int slot_rows = env_int("TOLLGATE_ENGINE_SLOT_ROWS", 0);
  // TOLLGATE_ENGINE_SLOT_OUT_FLOAT=1: bf16 slots' products write float (for measurements).
  const bool slot_out_float_ = env_int("TOLLGATE_ENGINE_SLOT_OUT_FLOAT", 0) == 1;
  // Prefill's expert products in slots (slot_experts): the slots' first rows and the matrices
  // each product reads and writes, on the host and on the device.
  struct slot_entry {
    int expert, first, at;  ///< the expert, its first grouped row, its first row in the expert's padding
  };
  std::vector<int32_t> slot_base_host_;
  std::vector<slot_entry> slot_list_;
  std::vector<const void*> slot_ptrs_host_;
  std::vector<void*> allocations_;
  size_t weight_bytes_ = 0;
  double load_seconds_ = 0;
  std::string gpu_name_;

  mat<T> embed_, lm_head_;
  float* final_norm_ = nullptr;
  std::vector<layer_weights<T>> layers_;
  float2* rope_cs_ = nullptr;
  T* pool_ = nullptr;
  kv_pool_shape pool_shape_;

  // The batch being run (host side) and its device copy.
  std::vector<int32_t> tokens_, pos_, slot_, table_off_, table_, rows_, meta_host_, picked_host_, offsets_host_;
  std::vector<row_meta> row_info_;
  std::vector<cuda::sample_params> params_;
  std::vector<float> logits_host_;
  bool want_logits_ = false;
  int max_len_ = 0;
  int sequences_ = 0;  ///< items of the planned batch
  bool fp8_experts_ = false;  ///< routed experts kept in FP8 (layer_weights::experts_*_fp8)
  int fp8_shift_ = 7;         ///< log2 of the FP8 scale block's columns
  bool fp8_mma_ = false;      ///< FP8 experts' decode products on FP8 tensor cores
  const int32_t* d_tokens_ = nullptr;
  const int32_t* d_rows_ = nullptr;
  const cuda::sample_params* d_params_ = nullptr;
  cuda::token_map map_;

  bool graphs_enabled_ = std::getenv("TOLLGATE_ENGINE_NO_GRAPHS") == nullptr;
  std::map<graph_key, cudaGraphExec_t> graphs_;
  std::set<graph_key> seen_;
  uint64_t graph_moves_ = 0;

  device_buffer staging_, ws_meta_, ws_x_, ws_y_, ws_h_, ws_hs_, ws_logits_, ws_picked_, ws_q_, ws_qa_, ws_qa_n_, ws_ckv_,
      ws_q_full_, ws_o_lat_, ws_partial_, ws_attn_, ws_gu_, ws_act_, ws_router_, ws_ids_, ws_wts_, ws_grouping_, ws_xg_,
      ws_rows_, ws_shared_, ws_sact_, ws_dequant_, ws_xq_, ws_xs_, ws_aq_, ws_as_, ws_lat_, ws_kv_full_, ws_scores_,
      ws_probs_, ws_slot_index_, ws_slot_meta_, ws_k_cat_, ws_q_cat_;
};

}  // namespace

bool built_with_cuda() { return true; }

std::unique_ptr<forward_backend> make_cuda_backend(const model_config& config, const std::string& checkpoint_dir,
                                                   const backend_options& options) {
  std::string dtype = options.dtype.empty() ? "bfloat16" : options.dtype;
  if (dtype == "float32") return std::make_unique<cuda_backend<float>>(config, checkpoint_dir, options);
  if (dtype == "bfloat16") return std::make_unique<cuda_backend<bf16>>(config, checkpoint_dir, options);
  throw std::runtime_error("dtype '" + dtype + "' is not float32 or bfloat16");
}

}  // namespace tollgate::engine
