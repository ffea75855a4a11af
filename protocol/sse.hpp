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
  /// The bytes buffered after the last event returned, when they are one piece (no event cut by a
  /// read is kept apart): for a caller that takes whole events from their start itself, then
  /// skip()s them. Valid until the next call but may_hold_watched().
  std::string_view unread() const {
    return carry_.empty() || carry_done_ ? std::string_view(buf_).substr(pos_) : std::string_view();
  }
  /// Consumes the first n bytes of unread(), which must be whole events.
  void skip(std::size_t n) {
    if (n == 0) return;
    pos_ += n;
    scan_ = pos_;
    watched_ = false;
  }
  /// Whatever is buffered after the last complete event (a stream cut mid-event), then empties.
  std::string take_rest();
  std::size_t buffered() const { return buf_.size() - pos_ + (carry_done_ ? 0 : carry_.size()); }

  /// Has the search for events' ends also note whether each event holds `pair` (two bytes, no
  /// line end among them) in a row, at the cost of one more compare of each 16 bytes searched:
  /// a caller that looks for a rare key in events ("usage") skips the events without its first
  /// two bytes. An empty pair turns it off.
  void watch(std::string_view pair);
  /// Whether the event the last next_event_view() or next_event() returned may hold the watched
  /// pair: false only when it surely does not (always true when nothing is watched).
  bool may_hold_watched() const { return last_watched_; }

 private:
  /// Puts an unfinished carry_ back in front of buf_'s unread bytes (one copy), and forgets a
  /// finished one.
  void merge_carry();
  /// The end (past its blank line) of the event that starts at `start` in s, looking from `scan`
  /// on; npos when s holds no whole event yet. scan: where to look next time (never just after a
  /// '\r' whose line end is undecided, so the byte before it tells whether a line starts there).
  /// Notes the watched pair in the bytes it searches.
  std::size_t event_end(const std::string& s, std::size_t start, std::size_t& scan);
  /// The first '\n' or '\r' in s[i, n), or n; notes the watched pair before it.
  std::size_t find_line_end(const std::string& s, std::size_t i, std::size_t n);
  /// event, as the one returned: may_hold_watched() answers for it, and the next event's search
  /// starts with nothing noted.
  std::string_view returned(std::string_view event);

  std::string buf_;
  std::size_t pos_ = 0;   // start of the first unconsumed byte
  std::size_t scan_ = 0;  // where to resume looking for a terminator
  // The start of an event that a read cut, kept apart from buf_ (which holds the read's bytes
  // from pos_); once the event's end is copied to it, the event that next_event_view() returned.
  std::string carry_;
  std::size_t carry_scan_ = 0;  // scan_ within carry_
  bool carry_done_ = false;     // carry_ holds the event returned: nothing more comes from it
  char watch_[2] = {0, 0};      // the watched pair; watch_[0] 0: none
  bool watched_ = false;        // the pair may be in the bytes searched of the event being found
  bool last_watched_ = true;    // may_hold_watched()
};

/// The "data:" payload of one event (lines joined by '\n'), or nullopt when it has none.
std::optional<std::string> sse_data(std::string_view event);

}  // namespace tollgate::protocol
