// Metering tokenizer speed: MB/s and tokens/s of encode() on English, Chinese, code and a mix,
// medians of several passes. Usage: tollgate-bench-tokenizer TOKENIZER_JSON [PASSES]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.hpp"

namespace {

std::string repeat(const std::string& piece, std::size_t bytes) {
  std::string out;
  while (out.size() < bytes) out += piece;
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: tollgate-bench-tokenizer TOKENIZER_JSON [PASSES]\n");
    return 2;
  }
  const int passes = argc > 2 ? std::max(1, std::atoi(argv[2])) : 7;
  const auto t0 = std::chrono::steady_clock::now();
  const auto tok = tollgate::tokenizer::tokenizer::load(argv[1]);
  std::printf("load: %.0f ms\n",
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  const std::size_t size = 1 << 20;
  const std::vector<std::pair<const char*, std::string>> texts = {
      {"english", repeat("The quick brown fox jumps over the lazy dog, and the gateway meters every token it relays. ", size)},
      {"chinese", repeat("深度求索发布了新的大语言模型，网关按每个词元计费并记录用量。", size)},
      {"code", repeat("for (int i = 0; i < n; ++i) {\n    total += values[i] * weights[i];\n}\n", size)},
      {"mixed", repeat("Mixed 中英文 text with numbers 2024 and emoji 🎉, then {\"json\": [1, 2, 3]}.\n", size)},
  };
  std::printf("%-8s %10s %12s %14s\n", "text", "MB/s", "tokens/s", "bytes/token");
  for (const auto& [name, text] : texts) {
    std::vector<double> seconds;
    std::size_t tokens = 0;
    for (int p = 0; p < passes; ++p) {
      const auto start = std::chrono::steady_clock::now();
      tokens = tok->count(text);
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(seconds.begin(), seconds.end());
    const double median = seconds[seconds.size() / 2];
    std::printf("%-8s %10.1f %12.0f %14.2f\n", name, text.size() / median / 1e6, tokens / median,
                double(text.size()) / double(tokens));
  }
  return 0;
}
