// A run of plain events copied, renamed, without splitting them one by one: the hot path of a
// relayed chat stream, whose events are alike.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/sse.hpp"

namespace tollgate::protocol {

/// Appends to out the run of plain events at the start of `events` (SSE bytes) and returns the
/// bytes taken; stops before the first event that is not plain (0: the first is not). A plain event
/// is one line ending in "\n\n" that begins with `prefix` and holds no `key` (a quoted name, such
/// as "usage" with its quotes) after it, but as null_member_end's null members; any other place
/// where the key's first two bytes occur ends the run before that event. The prefix itself (one
/// line, the same rule) is checked once. Renaming: each event's prefix is written with `to` in
/// place of its last `cut` bytes (the model value, when prefix is model_value_finder::prefix()).
/// The result is byte for byte what splitting the run into events and appending each, renamed so,
/// would give.
std::size_t append_event_run(std::string& out, std::string_view events, std::string_view key,
                             std::string_view prefix = {}, std::size_t cut = 0, std::string_view to = {});

/// append_event_run for one stream's reads, one key: what each run would work out again (the
/// key's usual null member, the search's width, whether the last prefix is one line without the
/// key) is kept between them.
class event_runs {
 public:
  explicit event_runs(std::string_view key);
  std::size_t append(std::string& out, std::string_view events, std::string_view prefix = {}, std::size_t cut = 0,
                     std::string_view to = {});

 private:
  std::string key_;
  std::uint64_t null_head_ = 0, null_tail_ = 0;  // the first and last 8 bytes of key_ + ":null"
  std::size_t null_size_ = 0;                    // 0: no such compare (a key under 3 or over 11 bytes)
  std::string prefix_;                           // the last prefix checked
  bool prefix_plain_ = true;                     // and whether it is one line without the key
  std::string renamed_;                          // prefix_ renamed: its first bytes, then to_
  std::string to_;
  std::size_t cut_ = 0;
  bool wide_ = false;                            // the search goes 32 bytes at a time

  friend struct event_run_scan;
};

/// Bytes of a stream as they come (a view of a read's buffer), handled without copying the runs
/// in them to the splitter first: where `events` holds nothing, run(bytes) appends the run of
/// plain events at their start (append_event_run) and returns the bytes it took; the rest goes to
/// `events` up to the end of the first event that ends in it (a "\n\n", always a blank line), or
/// all of it, and split() then handles the events `events` holds. What run and split append is
/// what feeding all the bytes to `events` and handling them so would append.
template <class Run, class Split>
void relay_event_bytes(sse_splitter& events, std::string_view bytes, Run&& run, Split&& split) {
  while (!bytes.empty()) {
    if (events.buffered() == 0) {
      bytes.remove_prefix(run(bytes));
      if (bytes.empty()) return;
    }
    const std::size_t blank = bytes.find("\n\n");
    const std::size_t n = blank == std::string_view::npos ? bytes.size() : blank + 2;
    events.feed(bytes.substr(0, n));
    bytes.remove_prefix(n);
    split();
  }
}

}  // namespace tollgate::protocol
