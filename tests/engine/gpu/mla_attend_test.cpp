// The tensor-core latent attention (cuda/mla.cu) on fresh random inputs: a batch that mixes a
// prompt chunk in the middle of its sequence, a decode token and a prompt from position 0, over
// paged block tables. Every choice of tokens per block gives the same bits, and the result follows
// a double-precision softmax attention over the same bf16 values.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "local_engine/cuda/mla.cuh"
#include "tests/engine/gpu/gpu_support.hpp"

namespace cu = tollgate::engine::cuda;
using tollgate::engine::test::bf16_bits;
using tollgate::engine::test::bf16_value;
using tollgate::engine::test::device_array;

namespace {

struct sequence {
  int start, count;  // the batch's tokens of it are positions start .. start + count - 1
};

}  // namespace

TEST_CASE("gpu: latent attention gives the same bits for every tokens-per-block choice", "[gpu][attention]") {
  for (const int heads : {16, 20}) {
    cu::mla_dims d;
    d.heads = heads, d.kv_rank = 512, d.rope_dim = 64, d.nope_dim = 128, d.qk_dim = 192;
    const int W = d.width(), bs = 16;
    // A prompt chunk at positions 100..399, one decode token at 700, a prompt of 37 from 0, and a
    // second chunk of 5 tokens (odd, so blocks of 2 and 4 straddle sequences).
    const std::vector<sequence> seqs = {{100, 300}, {700, 1}, {0, 37}, {250, 5}};
    std::mt19937 gen(static_cast<uint32_t>(20261202 + heads));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<int32_t> pos, slot, table, table_off;
    int blocks_total = 0;
    for (const auto& s : seqs) blocks_total += (s.start + s.count + bs - 1) / bs;
    std::vector<int32_t> perm(static_cast<size_t>(blocks_total));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    int max_len = 0, next = 0;
    for (const auto& s : seqs) {
      const int off = static_cast<int>(table.size()), nb = (s.start + s.count + bs - 1) / bs;
      for (int b = 0; b < nb; ++b) table.push_back(perm[static_cast<size_t>(next++)]);
      for (int k = 0; k < s.count; ++k) {
        const int p = s.start + k;
        pos.push_back(p);
        slot.push_back(table[static_cast<size_t>(off + p / bs)] * bs + p % bs);
        table_off.push_back(off);
      }
      max_len = std::max(max_len, s.start + s.count);
    }
    const int n = static_cast<int>(pos.size());
    std::vector<uint16_t> q(static_cast<size_t>(n) * heads * W), cache(static_cast<size_t>(blocks_total) * bs * W);
    for (auto& v : q) v = bf16_bits(u(gen));
    for (auto& v : cache) v = bf16_bits(u(gen));
    device_array<int32_t> d_pos(pos), d_slot(slot), d_table(table), d_off(table_off);
    device_array<uint16_t> d_q(q), d_cache(cache);
    const cu::token_map map{d_pos.p, d_slot.p, d_table.p, d_off.p, bs};
    const float scale = 1.0f / std::sqrt(192.0f);
    const size_t out_n = static_cast<size_t>(n) * heads * d.kv_rank;
    std::vector<std::vector<uint16_t>> outs;
    for (const int tpb : {1, 2, 4}) {
      std::vector<uint16_t> zeros(out_n, 0);
      device_array<uint16_t> d_out(zeros);
      REQUIRE(cu::mla_partial_floats(n, d, max_len) == 0);  // a batch this size runs unsplit
      cu::mla_attend<cu::bf16>(reinterpret_cast<const cu::bf16*>(d_q.p), reinterpret_cast<const cu::bf16*>(d_cache.p), d,
                               n, static_cast<int>(seqs.size()), max_len, map, scale, nullptr, 0,
                               reinterpret_cast<cu::bf16*>(d_out.p), nullptr, tpb);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      outs.push_back(d_out.get());
    }
    CHECK(outs[1] == outs[0]);
    CHECK(outs[2] == outs[0]);

    // Against double precision, every 5th token (all heads).
    double num = 0, den = 0;
    std::vector<double> sc, acc(static_cast<size_t>(d.kv_rank));
    for (int t = 0; t < n; t += 5) {
      const int len = pos[static_cast<size_t>(t)] + 1;
      const int32_t* tab = table.data() + table_off[static_cast<size_t>(t)];
      for (int h = 0; h < heads; ++h) {
        const uint16_t* qv = q.data() + (static_cast<size_t>(t) * heads + h) * W;
        sc.assign(static_cast<size_t>(len), 0.0);
        double mx = -1e300;
        for (int j = 0; j < len; ++j) {
          const uint16_t* cv = cache.data() + (static_cast<size_t>(tab[j / bs]) * bs + j % bs) * W;
          double s = 0;
          for (int k = 0; k < W; ++k) s += static_cast<double>(bf16_value(qv[k])) * bf16_value(cv[k]);
          sc[static_cast<size_t>(j)] = s * scale;
          mx = std::max(mx, sc[static_cast<size_t>(j)]);
        }
        double l = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int j = 0; j < len; ++j) {
          const double p = std::exp(sc[static_cast<size_t>(j)] - mx);
          l += p;
          const uint16_t* cv = cache.data() + (static_cast<size_t>(tab[j / bs]) * bs + j % bs) * W;
          for (int c = 0; c < d.kv_rank; ++c) acc[static_cast<size_t>(c)] += p * bf16_value(cv[c]);
        }
        const uint16_t* got = outs[0].data() + (static_cast<size_t>(t) * heads + h) * d.kv_rank;
        for (int c = 0; c < d.kv_rank; ++c) {
          const double ref = acc[static_cast<size_t>(c)] / l, e = bf16_value(got[c]) - ref;
          num += e * e;
          den += ref * ref;
        }
      }
    }
    const double rel = std::sqrt(num / den);
    std::printf("gpu attention heads %d: %d tokens of %zu sequences, tokens per block 1/2/4 equal bits, relative error %.2e\n",
                heads, n, seqs.size(), rel);
    CHECK(rel < 2e-2);
  }
}
