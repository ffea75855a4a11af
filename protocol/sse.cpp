#include "protocol/sse.hpp"
#include "protocol/line_scan.hpp"
#include "protocol/wire.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace tollgate::protocol {

namespace {

bool is_line_end(char c) { return c == '\n' || c == '\r'; }

}  // namespace

std::size_t sse_splitter::find_line_end(const std::string& s, std::size_t i, std::size_t n) {
  if (watch_[0] != 0 && !watched_) {
    // Until the pair is met in the event: then the rest of it needs only its line ends. A pair
    // cut by n counts as met (the answer is only "may hold").
    const std::size_t k = find_line_end_or_pair(s.data(), i, n, watch_[0], watch_[1], true);
    if (k == n || is_line_end(s[k])) return k;
    watched_ = true;
    i = k + 1;
  }
  return protocol::find_line_end(s.data(), i, n);
}

std::size_t sse_splitter::event_end(const std::string& s, std::size_t start, std::size_t& scan) {
  std::size_t i = std::max(scan, start);
  const std::size_t n = s.size();
  while (i < n) {
    i = find_line_end(s, i, n);
    if (i == n) break;
    std::size_t end = i + 1;
    if (s[i] == '\r') {
      // "\r" alone or the start of "\r\n": the next byte decides, so wait for it.
      if (end == n) break;
      if (s[end] == '\n') ++end;
    }
    if (i == start || is_line_end(s[i - 1])) {
      scan = end;
      return end;
    }
    i = end;
  }
  scan = i;
  return std::string::npos;
}

void sse_splitter::watch(std::string_view pair) {
  if (pair.empty()) {
    watch_[0] = watch_[1] = 0;
  } else {
    if (pair.size() != 2 || pair[0] == 0 || is_line_end(pair[0]) || is_line_end(pair[1]))
      throw std::invalid_argument("sse_splitter::watch: a pair of two bytes, neither a line end nor the first a NUL");
    watch_[0] = pair[0];
    watch_[1] = pair[1];
  }
  watched_ = true;  // what was searched before is unknown
}

std::string_view sse_splitter::returned(std::string_view event) {
  last_watched_ = watch_[0] == 0 || watched_;
  watched_ = false;
  return event;
}

void sse_splitter::merge_carry() {
  if (carry_.empty()) return;
  if (!carry_done_) {
    carry_.append(buf_, pos_);
    buf_.swap(carry_);
    pos_ = 0;
    scan_ = carry_scan_;
  }
  carry_.clear();
  carry_done_ = false;
}

void sse_splitter::feed(std::string_view bytes) {
  merge_carry();
  // Consumed bytes are dropped once they are at least as many as those kept, so each byte is
  // moved at most once on average and a long stream stays linear.
  if (pos_ > 0 && pos_ >= buf_.size() - pos_) {
    buf_.erase(0, pos_);
    scan_ -= std::min(scan_, pos_);
    pos_ = 0;
  }
  buf_.append(bytes);
}

std::string sse_splitter::feed_moved(std::string&& bytes) {
  if (carry_done_) {
    carry_.clear();
    carry_done_ = false;
  }
  const std::size_t held = buf_.size() - pos_;
  std::size_t scan = scan_;
  if (held == 0) {
    buf_.swap(bytes);
    pos_ = scan_ = 0;
    watched_ = false;
  } else if (carry_.empty() && 2 * held <= bytes.size() && event_end(buf_, pos_, scan) == std::string::npos) {
    // What is held is one event's start: kept apart, and bytes taken as the buffer.
    carry_.assign(buf_, pos_);
    carry_scan_ = scan - pos_;
    buf_.swap(bytes);
    pos_ = scan_ = 0;
  } else {
    feed(bytes);
  }
  bytes.clear();
  return std::move(bytes);
}

// An event ends at its first empty line (the WHATWG rule): a line end that starts the event or
// follows another line end. Line ends are "\r\n", "\n" or "\r", so "\n\n", "\r\n\r\n" and "\r\r"
// all end events, and so do the rarer mixes such as "\n\r\n".
//
// scan_ is where the search resumes. It never sits just after a '\r' whose line end is still
// undecided, so the byte before it tells whether a line starts there.
std::optional<std::string> sse_splitter::next_event() {
  const auto e = next_event_view();
  if (!e) return std::nullopt;
  return std::string(*e);
}

std::optional<std::string_view> sse_splitter::next_event_view() {
  if (!carry_.empty() && !carry_done_) {
    // The cut event: its end is copied to its start from buf_, a little more each time, until
    // it ends there; what was copied past its end stays buf_'s.
    for (std::size_t step = std::max<std::size_t>(carry_.size(), 256);; step *= 2) {
      const std::size_t take = std::min(step, buf_.size() - pos_);
      carry_.append(buf_, pos_, take);
      pos_ += take;
      if (const std::size_t end = event_end(carry_, 0, carry_scan_); end != std::string::npos) {
        pos_ -= carry_.size() - end;
        scan_ = pos_;
        carry_.resize(end);
        carry_done_ = true;
        return returned(std::string_view(carry_));
      }
      if (pos_ == buf_.size()) {
        // Still unfinished: all of it is the buffer again (the read's storage is let go: a held
        // stream keeps no second large buffer).
        buf_.swap(carry_);
        carry_ = std::string();
        pos_ = 0;
        scan_ = carry_scan_;
        return std::nullopt;
      }
    }
  }
  const std::size_t end = event_end(buf_, pos_, scan_);
  if (end == std::string::npos) return std::nullopt;
  const std::string_view event(buf_.data() + pos_, end - pos_);
  pos_ = end;
  return returned(event);
}

std::string sse_splitter::take_rest() {
  merge_carry();
  std::string rest = buf_.substr(pos_);
  buf_.clear();
  pos_ = scan_ = 0;
  watched_ = false;
  return rest;
}

std::optional<std::string> sse_data(std::string_view event) { return parse_sse_event(event).data; }

}  // namespace tollgate::protocol
