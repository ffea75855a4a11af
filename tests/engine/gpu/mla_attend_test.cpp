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

TEST_CASE("gpu: W_UV in the attention's merge gives each head's product of the merged latent", "[gpu][attention]") {
  // A few decode tokens whose contexts are split across blocks: mla_attend gives the merged latent
  // o_lat (bf16), mla_attend_uv the W_UV product of it from the merging blocks. Each value is the
  // double product of the same bf16 o_lat and weights rounded to bf16, or within one bf16 step of
  // it (a float sum across a rounding boundary; where the terms cancel, within 2^-16 of their
  // magnitudes' sum).
  for (const int heads : {16, 20}) {
    for (const std::vector<int>& positions : {std::vector<int>{700}, std::vector<int>{130, 1000, 64}}) {
      cu::mla_dims d;
      d.heads = heads, d.kv_rank = 512, d.rope_dim = 64, d.nope_dim = 128, d.qk_dim = 192;
      const int W = d.width(), bs = 16, vd = 128, n = static_cast<int>(positions.size());
      std::mt19937 gen(std::random_device{}());
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      std::vector<int32_t> pos, slot, table, table_off;
      int max_len = 0;
      for (const int p : positions) {
        const int off = static_cast<int>(table.size()), nb = p / bs + 1;
        for (int b = 0; b < nb; ++b) table.push_back(static_cast<int32_t>(table.size()));
        pos.push_back(p);
        slot.push_back(table[static_cast<size_t>(off + p / bs)] * bs + p % bs);
        table_off.push_back(off);
        max_len = std::max(max_len, p + 1);
      }
      std::shuffle(table.begin(), table.end(), gen);  // blocks anywhere in the pool
      for (int t = 0; t < n; ++t) {
        const int p = pos[static_cast<size_t>(t)];
        slot[static_cast<size_t>(t)] = table[static_cast<size_t>(table_off[static_cast<size_t>(t)] + p / bs)] * bs + p % bs;
      }
      std::vector<uint16_t> q(static_cast<size_t>(n) * heads * W), cache(table.size() * bs * W),
          kv_b(static_cast<size_t>(heads) * (d.nope_dim + vd) * d.kv_rank);
      for (auto& v : q) v = bf16_bits(u(gen));
      for (auto& v : cache) v = bf16_bits(u(gen));
      for (auto& v : kv_b) v = bf16_bits(u(gen) * 0.05f);
      device_array<int32_t> d_pos(pos), d_slot(slot), d_table(table), d_off(table_off);
      device_array<uint16_t> d_q(q), d_cache(cache), d_kv_b(kv_b);
      const cu::token_map map{d_pos.p, d_slot.p, d_table.p, d_off.p, bs};
      const float scale = 1.0f / std::sqrt(192.0f);
      REQUIRE(cu::mla_attend_uv_takes(d, n, max_len, vd));
      const size_t part = cu::mla_partial_floats(n, d, max_len);
      REQUIRE(part > 0);
      device_array<float> d_partial(std::vector<float>(part, 0.0f));
      device_array<uint16_t> d_lat(std::vector<uint16_t>(static_cast<size_t>(n) * heads * d.kv_rank, 0)),
          d_attn(std::vector<uint16_t>(static_cast<size_t>(n) * heads * vd, 0));
      const auto* qp = reinterpret_cast<const cu::bf16*>(d_q.p);
      const auto* cp = reinterpret_cast<const cu::bf16*>(d_cache.p);
      cu::mla_attend<cu::bf16>(qp, cp, d, n, n, max_len, map, scale, d_partial.p, part,
                               reinterpret_cast<cu::bf16*>(d_lat.p), nullptr);
      cu::mla_attend_uv(qp, cp, d, n, max_len, map, scale, d_partial.p, part,
                        reinterpret_cast<const cu::bf16*>(d_kv_b.p), vd, reinterpret_cast<cu::bf16*>(d_attn.p), nullptr);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      const auto lat = d_lat.get(), attn = d_attn.get();
      size_t exact = 0, near = 0, total = 0;
      double num = 0, den = 0;
      for (int t = 0; t < n; ++t)
        for (int h = 0; h < heads; ++h)
          for (int c = 0; c < vd; ++c) {
            const uint16_t* o = lat.data() + (static_cast<size_t>(t) * heads + h) * d.kv_rank;
            const uint16_t* w = kv_b.data() + (static_cast<size_t>(h) * (d.nope_dim + vd) + d.nope_dim + c) * d.kv_rank;
            double ref = 0, size = 0;
            for (int k = 0; k < d.kv_rank; ++k) {
              const double term = static_cast<double>(bf16_value(o[k])) * bf16_value(w[k]);
              ref += term, size += std::fabs(term);
            }
            const uint16_t got = attn[(static_cast<size_t>(t) * heads + h) * vd + c],
                           want = bf16_bits(static_cast<float>(ref));
            exact += got == want;
            // One bf16 step of the value, or a float sum's rounding where the terms cancel.
            const double step = ref == 0 ? 0 : std::ldexp(1.0, std::ilogb(ref) - 7);
            near += std::fabs(bf16_value(got) - ref) <= std::max(step, size * 0x1.0p-16);
            ++total;
            const double e = bf16_value(got) - ref;
            num += e * e, den += ref * ref;
          }
      std::printf("gpu W_UV in the merge, %d heads, %d tokens (%d splits): %zu of %zu values the rounded double "
                  "product, %zu within one bf16 step, relative error %.2e\n",
                  heads, n, cu::mla_splits(n, d, max_len), exact, total, near, std::sqrt(num / den));
      CHECK(near == total);
      CHECK(exact >= total * 95 / 100);
      CHECK(std::sqrt(num / den) < 4e-3);
    }
  }
}
