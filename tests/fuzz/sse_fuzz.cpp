// The SSE splitter: whatever the bytes and however they are cut, the events it returns and the
// rest it keeps are the input again, byte for byte, and every event ends at a blank line; an event
// that holds the watched pair always says it may. And a relay that copies runs of alike events
// (append_event_run) writes what one that splits every event writes, renamed or not, also when
// it takes the runs from each read itself (relay_event_bytes).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "protocol/sse.hpp"
#include "tests/protocol/event_relay.hpp"

namespace {

/// The input relayed in reads of `piece` bytes, every other one moved in; or each handed over as
/// a view (the runs taken from the read itself).
std::string relay(std::string_view input, std::size_t piece, bool runs, bool rename, bool views = false) {
  tollgate::test::event_relay r(runs, rename, rename ? "\"bench\"" : "");
  for (std::size_t at = 0; at < input.size(); at += piece) {
    if (views) {
      r.feed_view(input.substr(at, piece));
    } else {
      r.feed(input.substr(at, piece), at / piece % 2 == 0);
    }
  }
  if (r.missed != 0) std::abort();
  return r.finish();
}

}  // namespace

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
  // Larger pieces too, as reads of many events come.
  for (const std::size_t n : {piece, 64 * piece}) {
    for (const bool rename : {false, true}) {
      const std::string expected = relay(input, n, false, rename);
      if (relay(input, n, true, rename) != expected || relay(input, n, true, rename, true) != expected) std::abort();
    }
  }
  return 0;
}
