// Config loading on any text: problems are reported, nothing crashes, and a config that loads has
// no control characters in what becomes an upstream header.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "config/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto r = tollgate::config::load_string(text, "fuzz.yaml", [](const std::string& name) -> std::optional<std::string> {
    if (name == "NL") return std::string("a\nb");
    return std::nullopt;
  });
  if (!r.value) return 0;
  for (const auto& b : r.value->backends) {
    const auto* remote = b.remote();
    if (remote == nullptr) continue;
    for (unsigned char c : remote->api_key) {
      if (c < 0x20 || c == 0x7F) std::abort();
    }
    for (const auto& [name, value] : remote->headers) {
      for (unsigned char c : value) {
        if ((c < 0x20 && c != '\t') || c == 0x7F) std::abort();
      }
    }
  }
  return 0;
}
