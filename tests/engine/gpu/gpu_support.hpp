// Helpers the GPU tests share: bf16 values on the host, and device arrays that copy in and out.
#pragma once

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace tollgate::engine::test {

/// A float rounded to bf16 (to nearest even), as its 16 bits.
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

/// The value of 16 bf16 bits.
inline float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// A device copy of a host vector, freed with it; get() copies it back.
template <typename U>
struct device_array {
  U* p = nullptr;
  size_t n = 0;
  explicit device_array(const std::vector<U>& host) : n(host.size()) {
    REQUIRE(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(U)) == cudaSuccess);
    REQUIRE(cudaMemcpy(p, host.data(), n * sizeof(U), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;
  ~device_array() { cudaFree(p); }
  std::vector<U> get() const {
    std::vector<U> h(n);
    REQUIRE(cudaMemcpy(h.data(), p, n * sizeof(U), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
  }
};

}  // namespace tollgate::engine::test
