#include "local_engine/cpu_forward.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <stdexcept>

#include "local_engine/checkpoint_layout.hpp"
#include "local_engine/sampler.hpp"
#include "local_engine/thread_pool.hpp"

namespace tollgate::engine {

namespace {

// Norms inside attention (q_a_layernorm, kv_a_layernorm) keep the modeling code's default epsilon;
// only the layer norms read rms_norm_eps from the config.
constexpr double latent_norm_eps = 1e-6;

struct matrix {
  const float* data = nullptr;
  int rows = 0, cols = 0;
  const float* row(int r) const { return data + static_cast<size_t>(r) * static_cast<size_t>(cols); }
};

struct mlp_weights {
  matrix gate, up, down;
};

struct layer_weights {
  const float* input_norm = nullptr;
  const float* post_norm = nullptr;
  matrix q_proj, q_a, q_b;
  const float* q_a_norm = nullptr;
  const float* q_a_bias = nullptr;
  matrix kv_a;
  const float* kv_a_bias = nullptr;
  const float* kv_a_norm = nullptr;
  matrix kv_b, o;
  const float* o_bias = nullptr;
  bool moe = false;
  mlp_weights dense;
  matrix router;
  const float* score_bias = nullptr;
  std::vector<mlp_weights> experts;
  bool has_shared = false;
  mlp_weights shared;
};

// Eight independent partial sums: the compiler vectorises them without reassociating a single sum.
inline float dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y[t, r] = x[t, :] . W[r, :] (+ bias[r]) for t < T.
void linear(const float* x, int T, const matrix& W, float* y, const float* bias = nullptr) {
  const int rows = W.rows, cols = W.cols;
  auto body = [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const float* w = W.row(static_cast<int>(r));
      const float b = bias ? bias[r] : 0.0f;
      for (int t = 0; t < T; ++t) y[static_cast<size_t>(t) * rows + r] = dot(x + static_cast<size_t>(t) * cols, w, cols) + b;
    }
  };
  const size_t work = static_cast<size_t>(rows) * cols * static_cast<size_t>(T);
  if (work < (1u << 16)) body(0, static_cast<size_t>(rows));
  else thread_pool::shared().parallel_for(static_cast<size_t>(rows), body);
}

// RMSNorm of each of T rows of n values: w * (x / sqrt(mean(x^2) + eps)). y may alias x.
void rmsnorm(const float* x, int T, int n, const float* w, double eps, float* y) {
  for (int t = 0; t < T; ++t) {
    const float* xr = x + static_cast<size_t>(t) * n;
    float* yr = y + static_cast<size_t>(t) * n;
    double ss = 0;
    for (int i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float var = static_cast<float>(ss / n);
    const float r = 1.0f / std::sqrt(var + static_cast<float>(eps));
    for (int i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * r);
  }
}

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

class cpu_backend final : public forward_backend {
 public:
  cpu_backend(const model_config& c, const tensor_source& src, const tensor_probe& probe, const backend_options& o)
      : c_(c), rope_(compute_rope(c)), scale_(static_cast<float>(c.softmax_scale())) {
    if (!o.dtype.empty() && o.dtype != "float32")
      throw std::runtime_error("dtype '" + o.dtype + "': the CPU backend computes in float32 only (bfloat16 needs a cuda device)");
    if (o.kv_block_size < 1 || o.kv_block_size > 4096)
      throw std::runtime_error("kv_block_size must be in [1, 4096], got " + std::to_string(o.kv_block_size));
    if (!(o.kv_cache_memory >= 0) || !std::isfinite(o.kv_cache_memory))
      throw std::runtime_error("kv_cache_memory must be a number >= 0 (bytes, or a fraction of the default)");
    const auto t0 = std::chrono::steady_clock::now();
    auto keep = [&](f32_tensor t) {
      owners_.push_back(t.owner);
      return t.data;
    };
    auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
      matrix m;
      m.data = keep(src(name, {rows, cols}));
      m.rows = static_cast<int>(rows);
      m.cols = static_cast<int>(cols);
      return m;
    };
    auto vec = [&](const std::string& name, int64_t n) { return keep(src(name, {n})); };
    auto mlp = [&](const std::string& p, int64_t inter) {
      return mlp_weights{mat(p + "gate_proj.weight", inter, H()), mat(p + "up_proj.weight", inter, H()),
                         mat(p + "down_proj.weight", H(), inter)};
    };
    const int64_t nh = c.num_attention_heads, qk = c.qk_head_dim();
    embed_ = mat("model.embed_tokens.weight", c.vocab_size, H());
    layers_.resize(static_cast<size_t>(c.num_hidden_layers));
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      layer_weights& L = layers_[static_cast<size_t>(l)];
      const std::string p = layer_prefix(l), a = p + "self_attn.";
      L.input_norm = vec(p + "input_layernorm.weight", H());
      L.post_norm = vec(p + "post_attention_layernorm.weight", H());
      if (c.q_lora_rank > 0) {
        L.q_a = mat(a + "q_a_proj.weight", c.q_lora_rank, H());
        if (c.attention_bias) L.q_a_bias = vec(a + "q_a_proj.bias", c.q_lora_rank);
        L.q_a_norm = vec(a + "q_a_layernorm.weight", c.q_lora_rank);
        L.q_b = mat(a + "q_b_proj.weight", nh * qk, c.q_lora_rank);
      } else {
        L.q_proj = mat(a + "q_proj.weight", nh * qk, H());
      }
      L.kv_a = mat(a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, H());
      if (c.attention_bias) L.kv_a_bias = vec(a + "kv_a_proj_with_mqa.bias", c.kv_lora_rank + c.qk_rope_head_dim);
      L.kv_a_norm = vec(a + "kv_a_layernorm.weight", c.kv_lora_rank);
      L.kv_b = mat(a + "kv_b_proj.weight", nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
      L.o = mat(a + "o_proj.weight", H(), nh * c.v_head_dim);
      if (c.attention_bias) L.o_bias = vec(a + "o_proj.bias", H());
      L.moe = c.is_moe_layer(l);
      if (!L.moe) {
        L.dense = mlp(p + "mlp.", c.intermediate_size);
        continue;
      }
      L.router = mat(p + "mlp.gate.weight", c.n_routed_experts, H());
      if (c.v3) L.score_bias = vec(p + "mlp.gate.e_score_correction_bias", c.n_routed_experts);
      const int64_t E = c.n_routed_experts, I = c.moe_intermediate_size;
      if (probe(p + "mlp.experts.gate_up_proj")) {
        // transformers 5's fused layout: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I].
        const float* gu = keep(src(p + "mlp.experts.gate_up_proj", {E, 2 * I, H()}));
        const float* dn = keep(src(p + "mlp.experts.down_proj", {E, H(), I}));
        for (int64_t e = 0; e < E; ++e) {
          const float* g = gu + static_cast<size_t>(e * 2 * I * H());
          L.experts.push_back({matrix{g, static_cast<int>(I), H()}, matrix{g + static_cast<size_t>(I * H()), static_cast<int>(I), H()},
                               matrix{dn + static_cast<size_t>(e * H() * I), H(), static_cast<int>(I)}});
        }
      } else {
        for (int64_t e = 0; e < E; ++e) L.experts.push_back(mlp(p + "mlp.experts." + std::to_string(e) + ".", I));
      }
      if (c.n_shared_experts > 0) {
        L.has_shared = true;
        L.shared = mlp(p + "mlp.shared_experts.", I * c.n_shared_experts);
      }
    }
    final_norm_ = vec("model.norm.weight", H());
    lm_head_ = c.tie_word_embeddings ? embed_ : mat("lm_head.weight", c.vocab_size, H());
    load_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    // The paged latent pool: [layer][block][slot][kv_lora_rank + qk_rope_head_dim] floats.
    row_ = static_cast<size_t>(c.kv_lora_rank + c.qk_rope_head_dim);
    shape_.block_size = o.kv_block_size;
    shape_.bytes_per_block = static_cast<size_t>(o.kv_block_size) * row_ * sizeof(float) * static_cast<size_t>(c.num_hidden_layers);
    const double bytes = o.kv_cache_memory > 1 ? o.kv_cache_memory
                         : o.kv_cache_memory > 0 ? o.kv_cache_memory * static_cast<double>(default_pool_bytes)
                                                 : static_cast<double>(default_pool_bytes);
    shape_.blocks = static_cast<size_t>(bytes / static_cast<double>(shape_.bytes_per_block));
    if (shape_.blocks == 0)
      throw std::runtime_error("kv_cache_memory of " + std::to_string(static_cast<long long>(bytes)) +
                               " bytes holds no KV block of " + std::to_string(shape_.bytes_per_block) + " bytes");
    shape_.blocks = std::min<size_t>(shape_.blocks, std::numeric_limits<int32_t>::max());
    layer_stride_ = shape_.blocks * static_cast<size_t>(o.kv_block_size) * row_;
    // Left uninitialised: pages are touched only as blocks are written.
    pool_.reset(new float[layer_stride_ * static_cast<size_t>(c.num_hidden_layers)]);
  }

  static constexpr size_t default_pool_bytes = size_t{256} << 20;

  kv_pool_shape kv_pool() const override { return shape_; }
  std::string device() const override { return "cpu"; }
  std::string describe() const override {
    char buf[256];
    std::snprintf(buf, sizeof buf, "device cpu, dtype float32, weights loaded in %.2f s, KV pool %zu blocks of %d positions (%.1f MiB)",
                  load_s_, shape_.blocks, shape_.block_size,
                  static_cast<double>(shape_.blocks * shape_.bytes_per_block) / (1024.0 * 1024.0));
    return buf;
  }

  void forward(std::span<const batch_item> batch, batch_result& out) override {
    if (batch.empty()) throw std::invalid_argument("cpu forward: an empty batch");
    const size_t bs = static_cast<size_t>(shape_.block_size);
    // Every item is checked before anything is written, so a bad item leaves the pool untouched.
    int T = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const batch_item& it = batch[i];
      const std::string who = "cpu forward: item " + std::to_string(i) + ": ";
      if (it.tokens.empty()) throw std::invalid_argument(who + "no tokens");
      for (int32_t id : it.tokens)
        if (id < 0 || id >= c_.vocab_size)
          throw std::invalid_argument(who + "token id " + std::to_string(id) + " is outside the vocabulary of " +
                                      std::to_string(c_.vocab_size));
      const size_t end = it.start + it.tokens.size();
      if (it.blocks.size() * bs < end)
        throw std::invalid_argument(who + "the block table of " + std::to_string(it.blocks.size()) + " blocks does not cover " +
                                    std::to_string(end) + " positions");
      for (size_t b = 0; b < (end + bs - 1) / bs; ++b)
        if (it.blocks[b] < 0 || static_cast<size_t>(it.blocks[b]) >= shape_.blocks)
          throw std::invalid_argument(who + "block id " + std::to_string(it.blocks[b]) + " is outside the pool of " +
                                      std::to_string(shape_.blocks));
      if (it.sample) check_sampling(*it.sample);
      T += static_cast<int>(it.tokens.size());
    }
    // All items' tokens go through the dense layers as one [T, hidden] batch; attention reads each
    // item's own positions through its block table.
    tok_item_.resize(static_cast<size_t>(T));
    tok_pos_.resize(static_cast<size_t>(T));
    const int Hd = H();
    std::vector<float> x(static_cast<size_t>(T) * Hd), h(x.size()), y(x.size());
    {
      size_t t = 0;
      for (size_t i = 0; i < batch.size(); ++i)
        for (size_t k = 0; k < batch[i].tokens.size(); ++k, ++t) {
          tok_item_[t] = static_cast<int>(i);
          tok_pos_[t] = batch[i].start + k;
          std::copy_n(embed_.row(batch[i].tokens[k]), Hd, x.begin() + static_cast<ptrdiff_t>(t) * Hd);
        }
    }
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
      const layer_weights& L = layers_[static_cast<size_t>(l)];
      rmsnorm(x.data(), T, Hd, L.input_norm, c_.rms_norm_eps, h.data());
      attention(L, batch, l, h.data(), T, y.data());
      for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
      rmsnorm(x.data(), T, Hd, L.post_norm, c_.rms_norm_eps, h.data());
      if (L.moe) moe(L, h.data(), T, y.data());
      else mlp(L.dense, h.data(), T, y.data());
      for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    }
    // The rows that need logits: every new position of all_positions items, else the last one of
    // items that sample or ask for logits.
    std::vector<int> rows;
    std::vector<size_t> first_row(batch.size(), 0);
    {
      int t = 0;
      for (size_t i = 0; i < batch.size(); ++i) {
        const int n = static_cast<int>(batch[i].tokens.size());
        first_row[i] = rows.size();
        if (batch[i].logits && batch[i].all_positions) {
          for (int k = 0; k < n; ++k) rows.push_back(t + k);
        } else if (batch[i].logits || batch[i].sample) {
          rows.push_back(t + n - 1);
        }
        t += n;
      }
    }
    const size_t V = static_cast<size_t>(c_.vocab_size);
    std::vector<float> hn(rows.size() * static_cast<size_t>(Hd)), logits(rows.size() * V);
    for (size_t r = 0; r < rows.size(); ++r)
      rmsnorm(x.data() + static_cast<size_t>(rows[r]) * Hd, 1, Hd, final_norm_, c_.rms_norm_eps, hn.data() + r * Hd);
    if (!rows.empty()) linear(hn.data(), static_cast<int>(rows.size()), lm_head_, logits.data());
    out.tokens.assign(batch.size(), -1);
    out.logits.clear();
    for (size_t i = 0; i < batch.size(); ++i) {
      const batch_item& it = batch[i];
      if (!it.logits && !it.sample) continue;
      const size_t n = it.logits && it.all_positions ? it.tokens.size() : 1;
      const float* base = logits.data() + first_row[i] * V;
      if (it.logits) out.logits.insert(out.logits.end(), base, base + n * V);
      if (it.sample) {
        sampler sp(*it.sample);
        out.tokens[i] = sp.pick(std::span<const float>(base + (n - 1) * V, V), it.draw);
      }
    }
  }

 private:
  int H() const { return c_.hidden_size; }

  // Rotates one rope vector in place for position pos.
  void rope(float* v, size_t pos) const {
    const int half = c_.qk_rope_head_dim / 2;
    const float p = static_cast<float>(pos);
    // Adjacent pairs (x[2i], x[2i+1]) as DeepSeek lays its weights out (V2 always, V3 with
    // rope_interleave), or halves (x[i], x[i + half]). Either way q and k use the same layout.
    const bool pairs = c_.rope_interleave;
    for (int i = 0; i < half; ++i) {
      const float angle = rope_.inv_freq[static_cast<size_t>(i)] * p;
      const float cs = static_cast<float>(std::cos(static_cast<double>(angle))) * rope_.attention_factor;
      const float sn = static_cast<float>(std::sin(static_cast<double>(angle))) * rope_.attention_factor;
      float& a = pairs ? v[2 * i] : v[i];
      float& b = pairs ? v[2 * i + 1] : v[i + half];
      const float a0 = a, b0 = b;
      a = a0 * cs - b0 * sn;
      b = b0 * cs + a0 * sn;
    }
  }

  // The latent row (kv_lora_rank normalised values, then the rotated rope key) of `pos` in layer l.
  float* kv_row(int l, std::span<const int32_t> blocks, size_t pos) const {
    const size_t bs = static_cast<size_t>(shape_.block_size);
    return pool_.get() + static_cast<size_t>(l) * layer_stride_ +
           (static_cast<size_t>(blocks[pos / bs]) * bs + pos % bs) * row_;
  }

  void attention(const layer_weights& L, std::span<const batch_item> batch, int l, const float* h, int T, float* out) const {
    const int nh = c_.num_attention_heads, qk = c_.qk_head_dim(), nope = c_.qk_nope_head_dim;
    const int rd = c_.qk_rope_head_dim, kvr = c_.kv_lora_rank, vd = c_.v_head_dim;
    std::vector<float> q(static_cast<size_t>(T) * nh * qk);
    if (c_.q_lora_rank > 0) {
      std::vector<float> qa(static_cast<size_t>(T) * c_.q_lora_rank);
      linear(h, T, L.q_a, qa.data(), L.q_a_bias);
      rmsnorm(qa.data(), T, c_.q_lora_rank, L.q_a_norm, latent_norm_eps, qa.data());
      linear(qa.data(), T, L.q_b, q.data());
    } else {
      linear(h, T, L.q_proj, q.data());
    }
    std::vector<float> ckv(static_cast<size_t>(T) * (kvr + rd));
    linear(h, T, L.kv_a, ckv.data(), L.kv_a_bias);
    // Every new position is written to its block before any query reads the cache.
    size_t ctx_work = 0;
    for (int t = 0; t < T; ++t) {
      const size_t pos = tok_pos_[static_cast<size_t>(t)];
      const auto blocks = batch[static_cast<size_t>(tok_item_[static_cast<size_t>(t)])].blocks;
      const float* row = ckv.data() + static_cast<size_t>(t) * (kvr + rd);
      float* dst = kv_row(l, blocks, pos);
      rmsnorm(row, 1, kvr, L.kv_a_norm, latent_norm_eps, dst);
      float* k = dst + kvr;
      std::copy_n(row + kvr, rd, k);
      rope(k, pos);
      for (int hd = 0; hd < nh; ++hd) rope(q.data() + (static_cast<size_t>(t) * nh + hd) * qk + nope, pos);
      ctx_work += pos + 1;
    }
    // Attention in the latent space: the key projection is folded into the query and the value
    // projection applied after the weighted sum, so the cache holds only the latent and rope key.
    std::vector<float> att(static_cast<size_t>(T) * nh * vd);
    auto body = [&](size_t u0, size_t u1) {
      std::vector<float> qlat(static_cast<size_t>(kvr)), olat(static_cast<size_t>(kvr)), scores;
      std::vector<const float*> rows;
      for (size_t u = u0; u < u1; ++u) {
        const int t = static_cast<int>(u / static_cast<size_t>(nh)), hd = static_cast<int>(u % static_cast<size_t>(nh));
        const auto blocks = batch[static_cast<size_t>(tok_item_[static_cast<size_t>(t)])].blocks;
        const float* qh = q.data() + (static_cast<size_t>(t) * nh + hd) * qk;
        std::fill(qlat.begin(), qlat.end(), 0.0f);
        for (int d = 0; d < nope; ++d) {
          const float qd = qh[d];
          const float* w = L.kv_b.row(hd * (nope + vd) + d);
          for (int cidx = 0; cidx < kvr; ++cidx) qlat[static_cast<size_t>(cidx)] += qd * w[cidx];
        }
        const size_t len = tok_pos_[static_cast<size_t>(t)] + 1;
        scores.resize(len);
        rows.resize(len);
        for (size_t j = 0; j < len; ++j) rows[j] = kv_row(l, blocks, j);
        float mx = -std::numeric_limits<float>::infinity();
        for (size_t j = 0; j < len; ++j) {
          const float s = (dot(qlat.data(), rows[j], kvr) + dot(qh + nope, rows[j] + kvr, rd)) * scale_;
          scores[j] = s;
          mx = std::max(mx, s);
        }
        double sum = 0;
        for (size_t j = 0; j < len; ++j) {
          scores[j] = std::exp(scores[j] - mx);
          sum += scores[j];
        }
        const float inv = static_cast<float>(1.0 / sum);
        std::fill(olat.begin(), olat.end(), 0.0f);
        for (size_t j = 0; j < len; ++j) {
          const float pj = scores[j] * inv;
          const float* lj = rows[j];
          for (int cidx = 0; cidx < kvr; ++cidx) olat[static_cast<size_t>(cidx)] += pj * lj[cidx];
        }
        float* oh = att.data() + (static_cast<size_t>(t) * nh + hd) * vd;
        for (int i = 0; i < vd; ++i) oh[i] = dot(L.kv_b.row(hd * (nope + vd) + nope + i), olat.data(), kvr);
      }
    };
    const size_t units = static_cast<size_t>(T) * nh;
    const size_t work = units * static_cast<size_t>(nope + vd) * kvr + static_cast<size_t>(nh) * ctx_work * static_cast<size_t>(2 * kvr + rd);
    if (work < (1u << 16)) body(0, units);
    else thread_pool::shared().parallel_for(units, body);
    linear(att.data(), T, L.o, out, L.o_bias);
  }

  void mlp(const mlp_weights& w, const float* h, int T, float* out) const {
    const int inter = w.gate.rows;
    std::vector<float> g(static_cast<size_t>(T) * inter), u(g.size());
    linear(h, T, w.gate, g.data());
    linear(h, T, w.up, u.data());
    for (size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
    linear(g.data(), T, w.down, out);
  }

  void moe(const layer_weights& L, const float* h, int T, float* out) const {
    const int E = c_.n_routed_experts, Hd = H();
    std::vector<float> logits(static_cast<size_t>(T) * E);
    linear(h, T, L.router, logits.data());
    std::vector<std::vector<std::pair<int, float>>> assigned(static_cast<size_t>(E));
    for (int t = 0; t < T; ++t) {
      const routing r = route_token(c_, logits.data() + static_cast<size_t>(t) * E, L.score_bias);
      for (size_t k = 0; k < r.experts.size(); ++k) assigned[static_cast<size_t>(r.experts[k])].push_back({t, r.weights[k]});
    }
    std::fill(out, out + static_cast<size_t>(T) * Hd, 0.0f);
    std::vector<float> xe, ye;
    for (int e = 0; e < E; ++e) {
      const auto& list = assigned[static_cast<size_t>(e)];
      if (list.empty()) continue;
      const int n = static_cast<int>(list.size());
      xe.resize(static_cast<size_t>(n) * Hd);
      ye.resize(xe.size());
      for (int i = 0; i < n; ++i)
        std::copy_n(h + static_cast<size_t>(list[static_cast<size_t>(i)].first) * Hd, Hd, xe.begin() + static_cast<ptrdiff_t>(i) * Hd);
      mlp(L.experts[static_cast<size_t>(e)], xe.data(), n, ye.data());
      for (int i = 0; i < n; ++i) {
        const auto [t, wgt] = list[static_cast<size_t>(i)];
        float* o = out + static_cast<size_t>(t) * Hd;
        const float* yi = ye.data() + static_cast<size_t>(i) * Hd;
        for (int d = 0; d < Hd; ++d) o[d] += yi[d] * wgt;
      }
    }
    if (L.has_shared) {
      std::vector<float> s(static_cast<size_t>(T) * Hd);
      mlp(L.shared, h, T, s.data());
      for (size_t i = 0; i < s.size(); ++i) out[i] += s[i];
    }
  }

  model_config c_;
  rope_tables rope_;
  float scale_;
  double load_s_ = 0;
  kv_pool_shape shape_;
  size_t row_ = 0, layer_stride_ = 0;
  std::unique_ptr<float[]> pool_;
  std::vector<int> tok_item_;     // per batch token: its item
  std::vector<size_t> tok_pos_;   // per batch token: its position
  std::vector<std::shared_ptr<const void>> owners_;
  matrix embed_, lm_head_;
  const float* final_norm_ = nullptr;
  std::vector<layer_weights> layers_;
};

// Indices of the k largest values, largest first; ties go to the lower index.
std::vector<int> top_indices(const std::vector<float>& v, int k) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
    const float va = v[static_cast<size_t>(a)], vb = v[static_cast<size_t>(b)];
    return va > vb || (va == vb && a < b);
  });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

}  // namespace

routing route_token(const model_config& c, const float* router_logits, const float* score_correction_bias) {
  const int E = c.n_routed_experts, K = c.num_experts_per_tok;
  std::vector<float> scores(static_cast<size_t>(E));
  if (c.v3) {
    for (int e = 0; e < E; ++e) scores[static_cast<size_t>(e)] = 1.0f / (1.0f + std::exp(-router_logits[e]));
  } else {
    const float mx = *std::max_element(router_logits, router_logits + E);
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += scores[static_cast<size_t>(e)] = std::exp(router_logits[e] - mx);
    const float inv = static_cast<float>(1.0 / sum);
    for (auto& s : scores) s *= inv;
  }
  std::vector<float> choice = scores;
  if (c.v3 && score_correction_bias)
    for (int e = 0; e < E; ++e) choice[static_cast<size_t>(e)] += score_correction_bias[e];
  if (c.v3 || c.topk_method == "group_limited_greedy") {
    const int G = c.n_group, per = E / G;
    std::vector<float> group_score(static_cast<size_t>(G));
    for (int g = 0; g < G; ++g) {
      if (c.v3) {  // the sum of the group's two best biased scores
        float b1 = -std::numeric_limits<float>::infinity(), b2 = b1;
        for (int i = 0; i < per; ++i) {
          const float v = choice[static_cast<size_t>(g * per + i)];
          if (v > b1) {
            b2 = b1;
            b1 = v;
          } else if (v > b2) {
            b2 = v;
          }
        }
        group_score[static_cast<size_t>(g)] = b1 + b2;
      } else {  // the group's best score
        group_score[static_cast<size_t>(g)] = *std::max_element(scores.begin() + g * per, scores.begin() + (g + 1) * per);
      }
    }
    std::vector<bool> keep(static_cast<size_t>(G), false);
    for (int g : top_indices(group_score, c.topk_group)) keep[static_cast<size_t>(g)] = true;
    // V3 masks the other groups with -inf, V2 with 0 (its softmax scores are positive).
    const float masked = c.v3 ? -std::numeric_limits<float>::infinity() : 0.0f;
    for (int e = 0; e < E; ++e)
      if (!keep[static_cast<size_t>(e / per)]) choice[static_cast<size_t>(e)] = masked;
  }
  routing r;
  r.experts = top_indices(choice, K);
  for (int e : r.experts) r.weights.push_back(scores[static_cast<size_t>(e)]);
  // V3 always honours norm_topk_prob. transformers' V2 router ignores it; DeepSeek's own V2 code
  // normalises when top_k > 1, and published V2 checkpoints set it false, so both agree there.
  if (c.norm_topk_prob && (c.v3 || K > 1)) {
    float sum = 0;
    for (float w : r.weights) sum += w;
    const float den = sum + 1e-20f;
    for (float& w : r.weights) w /= den;
  }
  for (float& w : r.weights) w *= static_cast<float>(c.routed_scaling_factor);
  return r;
}

std::unique_ptr<forward_backend> make_cpu_backend(const model_config& config, const tensor_source& source,
                                                  const tensor_probe& probe, const backend_options& options) {
  return std::make_unique<cpu_backend>(config, source, probe, options);
}

std::unique_ptr<forward_backend> make_cpu_backend(const model_config& config, const std::string& checkpoint_dir,
                                                  const backend_options& options) {
  auto store = std::make_shared<tensor_store>(tensor_store::open_dir(checkpoint_dir));
  // An FP8 checkpoint's matrices are dequantised to fp32 as they are read.
  store->set_fp8_block(config.fp8_block_rows, config.fp8_block_cols);
  return make_cpu_backend(
      config, [store](const std::string& n, const std::vector<int64_t>& s) { return store->read(n, s); },
      [store](const std::string& n) { return store->contains(n); }, options);
}

}  // namespace tollgate::engine
