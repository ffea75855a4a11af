// The SSE splitter: whatever the bytes and however they are cut, the events it returns and the
// rest it keeps are the input again, byte for byte, and every event ends at a blank line; an event
// that holds the watched pair always says it may. And a relay that copies runs of alike events
// (append_event_run) writes what one that splits every event writes, renamed or not.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "protocol/event_run.hpp"
#include "protocol/json_body.hpp"
#include "protocol/sse.hpp"
#include "protocol/usage.hpp"

namespace {

constexpr std::string_view key = R"("usage")";
constexpr std::string_view pair = R"("u)";

/// Whether the gateway's stream writer takes the event's usage (exchange::take_usage).
bool takes_usage(std::string_view e) {
  namespace p = tollgate::protocol;
  const std::size_t at = p::find_quoted(e, key);
  if (at == std::string_view::npos || p::only_null_members(e, key, at)) return false;
  const auto data = p::sse_data(e);
  if (!data) return false;
  bool refused = false;
  const auto u = p::usage_from_json(*data, nullptr, &refused);
  return u.has_value() || refused;
}

/// The input relayed in pieces as the gateway's stream writer does: each event whose usage is
/// taken is marked, the rest renamed from "m" to `to` (when renaming). runs: the events
/// append_event_run takes are copied as runs first.
std::string relay(std::string_view input, std::size_t piece, bool runs, bool rename, std::string_view to) {
  constexpr std::string_view from = "\"m\"";
  tollgate::protocol::sse_splitter events;
  events.watch(pair);
  tollgate::protocol::model_value_finder model_at;
  std::string out;
  for (std::size_t at = 0; at < input.size(); at += piece) {
    const std::string_view bytes = input.substr(at, piece);
    if (at / piece % 2 == 0) {
      events.feed_moved(std::string(bytes));
    } else {
      events.feed(bytes);
    }
    for (;;) {
      if (runs) {
        if (const std::string_view unread = events.unread(); !unread.empty()) {
          if (!rename) {
            events.skip(tollgate::protocol::append_event_run(out, unread, key));
          } else if (const std::string_view prefix = model_at.prefix(); !prefix.empty()) {
            events.skip(tollgate::protocol::append_event_run(out, unread, key, prefix, from.size(), to));
          }
        }
      }
      const auto e = events.next_event_view();
      if (!e) break;
      const bool holds = e->find(pair) != std::string_view::npos;
      if (holds && !events.may_hold_watched()) std::abort();
      if (holds && takes_usage(*e)) {
        out += "<usage>";
        out += *e;
        continue;
      }
      if (!rename || !model_at.append_renamed(out, *e, from, to)) out += *e;
    }
  }
  out += events.take_rest();
  return out;
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
    if (relay(input, n, true, false, {}) != relay(input, n, false, false, {})) std::abort();
    if (relay(input, n, true, true, "\"bench\"") != relay(input, n, false, true, "\"bench\"")) std::abort();
  }
  return 0;
}
