// Test helper: a chat stream relayed as the gateway's stream writer relays it (exchange.cpp),
// with or without runs of alike events, for tests and the SSE fuzz target to compare.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "protocol/event_run.hpp"
#include "protocol/json_body.hpp"
#include "protocol/sse.hpp"
#include "protocol/usage.hpp"

namespace tollgate::test {

inline constexpr std::string_view usage_key = R"("usage")";

/// Whether the stream writer takes the event's usage (exchange::take_usage): the key as written,
/// not only null, and the event's data a JSON object with a usage object (or a bad one).
inline bool takes_usage(std::string_view e) {
  const std::size_t at = protocol::find_quoted(e, usage_key);
  if (at == std::string_view::npos || protocol::only_null_members(e, usage_key, at)) return false;
  const auto data = protocol::sse_data(e);
  if (!data) return false;
  bool refused = false;
  const auto u = protocol::usage_from_json(*data, nullptr, &refused);
  return u.has_value() || refused;
}

/// What a relay makes of a stream, event by event: an event whose usage is taken is marked, the
/// rest renamed from `from` to `to` when renaming. With runs, the events append_event_run takes
/// are copied as runs first, from the read itself when it is fed as a view. missed counts events that hold the key's first two bytes but that
/// the splitter said could not.
struct event_relay {
  bool runs = false;
  bool rename = false;
  std::string from = "\"m\"", to;
  protocol::sse_splitter events;
  protocol::model_value_finder model_at;
  protocol::event_runs runner{usage_key};
  std::string out;
  std::size_t run_bytes = 0;
  std::size_t missed = 0;

  event_relay(bool with_runs, bool renaming, std::string new_name = {})
      : runs(with_runs), rename(renaming), to(std::move(new_name)) {
    events.watch(usage_key.substr(0, 2));
  }

  /// bytes as one upstream read: moved in (feed_moved) or appended (feed).
  void feed(std::string_view bytes, bool moved) {
    if (moved) {
      events.feed_moved(std::string(bytes));
    } else {
      events.feed(bytes);
    }
    split();
  }

  /// bytes as one upstream read, handed over as a view (protocol::relay_event_bytes): the
  /// splitter gets only what the runs do not take.
  void feed_view(std::string_view bytes) {
    protocol::relay_event_bytes(events, bytes, [this](std::string_view b) { return run(b); }, [this] { split(); });
  }

  /// The run at the start of bytes, appended to out (none without runs); the bytes taken.
  std::size_t run(std::string_view bytes) {
    if (!runs) return 0;
    std::size_t took = 0;
    if (!rename) {
      took = runner.append(out, bytes);
    } else if (const std::string_view prefix = model_at.prefix(); !prefix.empty()) {
      took = runner.append(out, bytes, prefix, from.size(), to);
    }
    run_bytes += took;
    return took;
  }

  /// The events the splitter holds, and the runs among them.
  void split() {
    for (;;) {
      if (const std::string_view unread = events.unread(); !unread.empty()) events.skip(run(unread));
      const auto e = events.next_event_view();
      if (!e) break;
      if (e->find(usage_key.substr(0, 2)) != std::string_view::npos && !events.may_hold_watched()) ++missed;
      if (events.may_hold_watched() && takes_usage(*e)) {
        out += "<usage>";
        out += *e;
        continue;
      }
      if (!rename || !model_at.append_renamed(out, *e, from, to)) out += *e;
    }
  }

  /// What the relay wrote, then the bytes left after the last whole event.
  std::string finish() { return out + events.take_rest(); }
};

}  // namespace tollgate::test
