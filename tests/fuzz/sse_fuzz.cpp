// The SSE splitter: whatever the bytes and however they are cut, the events it returns and the
// rest it keeps are the input again, byte for byte, and every event ends at a blank line.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "protocol/sse.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  // The first byte picks the piece size the stream arrives in.
  const std::size_t piece = 1 + data[0] % 17;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  tollgate::protocol::sse_splitter events;
  std::string out;
  for (std::size_t at = 0; at < input.size(); at += piece) {
    events.feed(input.substr(at, piece));
    while (auto e = events.next_event()) {
      if (e->empty() || (e->back() != '\n' && e->back() != '\r')) std::abort();
      tollgate::protocol::sse_data(*e);
      out += *e;
    }
  }
  out += events.take_rest();
  if (out != input) std::abort();
  return 0;
}
