// Splits a Server-Sent Events byte stream into whole events, as they complete.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace tollgate::protocol {

class sse_splitter {
 public:
  /// Appends bytes as they arrive from the upstream, in any fragmentation.
  void feed(std::string_view bytes);
  /// The same, taking the storage of bytes when nothing is buffered (no copy, no allocation), or
  /// when what is buffered is the start of one event and bytes hold at least twice as many: that
  /// start is kept apart, and only the rest of that event is copied to it, not all of bytes (a
  /// read of many events that cuts one). Returns the storage it let go then (emptied), or else
  /// bytes' (emptied): for the producer of the next bytes to fill, so that a stream of events
  /// allocates nothing.
  std::string feed_moved(std::string&& bytes);
  /// The next complete event, including its terminating blank line, byte for byte. An event ends
  /// at its first blank line: two line ends in a row, each "\n", "\r\n" or "\r" (a final "\r"
  /// waits for the next byte). nullopt when no complete event is buffered.
  std::optional<std::string> next_event();
  /// next_event() as a view of the splitter's buffer (no copy), valid until the next feed or
  /// take_rest().
  std::optional<std::string_view> next_event_view();
  /// Whatever is buffered after the last complete event (a stream cut mid-event), then empties.
  std::string take_rest();
  std::size_t buffered() const { return buf_.size() - pos_ + (carry_done_ ? 0 : carry_.size()); }

 private:
  /// Puts an unfinished carry_ back in front of buf_'s unread bytes (one copy), and forgets a
  /// finished one.
  void merge_carry();

  std::string buf_;
  std::size_t pos_ = 0;   // start of the first unconsumed byte
  std::size_t scan_ = 0;  // where to resume looking for a terminator
  // The start of an event that a read cut, kept apart from buf_ (which holds the read's bytes
  // from pos_); once the event's end is copied to it, the event that next_event_view() returned.
  std::string carry_;
  std::size_t carry_scan_ = 0;  // scan_ within carry_
  bool carry_done_ = false;     // carry_ holds the event returned: nothing more comes from it
};

/// The "data:" payload of one event (lines joined by '\n'), or nullopt when it has none.
std::optional<std::string> sse_data(std::string_view event);

}  // namespace tollgate::protocol
