#include "protocol/sse.hpp"
#include "protocol/wire.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

namespace tollgate::protocol {

namespace {

bool is_line_end(char c) { return c == '\n' || c == '\r'; }

}  // namespace

// 16 bytes compared with both line ends at a time (a memchr for each costs several times more on
// an event's short lines); watching, also each byte with the pair's first and the next with its
// second. A pair cut by n counts as held (it is only "may hold").
template <bool Watch>
std::size_t sse_splitter::find_line_end(const std::string& s, std::size_t i, std::size_t n) {
  const char* const p = s.data();
#ifdef __SSE2__
  const __m128i lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r');
  if constexpr (Watch) {
    const __m128i first = _mm_set1_epi8(watch_[0]), second = _mm_set1_epi8(watch_[1]);
    for (; i + 17 <= n; i += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
      const __m128i next = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 1));
      const auto m = static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, lf), _mm_cmpeq_epi8(v, cr))));
      const auto w =
          static_cast<unsigned>(_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(v, first), _mm_cmpeq_epi8(next, second))));
      if ((m | w) == 0) continue;
      if (m == 0) {
        watched_ = true;
        continue;
      }
      const unsigned k = static_cast<unsigned>(__builtin_ctz(m));
      if ((w & ((1u << k) - 1)) != 0) watched_ = true;  // a pair past the line end is the next line's
      return i + k;
    }
  } else {
    for (; i + 16 <= n; i += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
      const auto m = static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, lf), _mm_cmpeq_epi8(v, cr))));
      if (m != 0) return i + static_cast<std::size_t>(__builtin_ctz(m));
    }
  }
#endif
  for (; i < n; ++i) {
    if (is_line_end(p[i])) return i;
    if constexpr (Watch) {
      if (p[i] == watch_[0] && (i + 1 == n || p[i + 1] == watch_[1])) watched_ = true;
    }
  }
  return n;
}

std::size_t sse_splitter::event_end(const std::string& s, std::size_t start, std::size_t& scan) {
  std::size_t i = std::max(scan, start);
  const std::size_t n = s.size();
  const bool watching = watch_[0] != 0;
  while (i < n) {
    i = watching ? find_line_end<true>(s, i, n) : find_line_end<false>(s, i, n);
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
