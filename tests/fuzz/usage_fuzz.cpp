// The usage reader on upstream JSON: never crashes, and what it returns is always in range.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "protocol/usage.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace tollgate::protocol;
  bool no_choices = false, refused = false;
  const auto u = usage_from_json(std::string_view(reinterpret_cast<const char*>(data), size), &no_choices, &refused);
  if (!u) return 0;
  if (refused) std::abort();
  for (const std::int64_t v : {u->prompt, u->cached, u->completion, u->reasoning}) {
    if (v < 0 || v > max_reported_tokens) std::abort();
  }
  if (u->cached > u->prompt || u->reasoning > u->completion) std::abort();
  tollgate::config::price_config price;
  price.input = 2;
  price.cached_input = 0.5;
  price.output = 8;
  if (cost_of(*u, price) < 0) std::abort();
  return 0;
}
