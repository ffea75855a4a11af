// The byte-level BPE tokenizer on any bytes: counting equals encoding's length, and decoding the
// ids gives the bytes back. TOLLGATE_TOKENIZER names the tokenizer.json (default: the repository's
// data/deepseek_v3/tokenizer.json).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "protocol/json_body.hpp"
#include "tokenizer/tokenizer.hpp"

namespace {
std::shared_ptr<const tollgate::tokenizer::tokenizer> tok;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* path = std::getenv("TOLLGATE_TOKENIZER");
  tok = tollgate::tokenizer::tokenizer::load(path != nullptr ? path : TOLLGATE_SOURCE_DIR "/data/deepseek_v3/tokenizer.json");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto ids = tok->encode(text);
  if (tok->count(text) != ids.size()) std::abort();
  // Byte-level BPE gives any valid UTF-8 text back from its ids.
  bool utf8 = true;
  for (std::size_t i = 0; i < text.size() && utf8;) {
    const std::size_t n = static_cast<unsigned char>(text[i]) < 0x80 ? 1 : tollgate::protocol::utf8_sequence_length(text, i);
    if (n == 0) utf8 = false;
    i += n;
  }
  if (utf8 && tok->decode(ids) != text) std::abort();
  return 0;
}
