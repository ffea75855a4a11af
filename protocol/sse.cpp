#include "protocol/sse.hpp"

#include <algorithm>
#include <cstring>

namespace tollgate::protocol {

namespace {

bool is_line_end(char c) { return c == '\n' || c == '\r'; }

/// The first '\n' or '\r' in s[i, n), or n: memchr, not a loop over bytes.
std::size_t find_line_end(const std::string& s, std::size_t i, std::size_t n) {
  const char* const base = s.data();
  const void* lf = std::memchr(base + i, '\n', n - i);
  const std::size_t stop = lf != nullptr ? static_cast<std::size_t>(static_cast<const char*>(lf) - base) : n;
  const void* cr = std::memchr(base + i, '\r', stop - i);
  return cr != nullptr ? static_cast<std::size_t>(static_cast<const char*>(cr) - base) : stop;
}

}  // namespace

void sse_splitter::feed(std::string_view bytes) {
  // Consumed bytes are dropped once they are at least as many as those kept, so each byte is
  // moved at most once on average and a long stream stays linear.
  if (pos_ > 0 && pos_ >= buf_.size() - pos_) {
    buf_.erase(0, pos_);
    scan_ -= std::min(scan_, pos_);
    pos_ = 0;
  }
  buf_.append(bytes);
}

// An event ends at its first empty line (the WHATWG rule): a line end that starts the event or
// follows another line end. Line ends are "\r\n", "\n" or "\r", so "\n\n", "\r\n\r\n" and "\r\r"
// all end events, and so do the rarer mixes such as "\n\r\n".
//
// scan_ is where the search resumes. It never sits just after a '\r' whose line end is still
// undecided, so the byte before it tells whether a line starts there.
std::optional<std::string> sse_splitter::next_event() {
  std::size_t i = std::max(scan_, pos_);
  const std::size_t n = buf_.size();
  while (i < n) {
    i = find_line_end(buf_, i, n);
    if (i == n) break;
    std::size_t end = i + 1;
    if (buf_[i] == '\r') {
      // "\r" alone or the start of "\r\n": the next byte decides, so wait for it.
      if (end == n) break;
      if (buf_[end] == '\n') ++end;
    }
    const bool empty_line = i == pos_ || is_line_end(buf_[i - 1]);
    if (empty_line) {
      std::string event = buf_.substr(pos_, end - pos_);
      pos_ = scan_ = end;
      return event;
    }
    i = end;
  }
  scan_ = i;
  return std::nullopt;
}

std::string sse_splitter::take_rest() {
  std::string rest = buf_.substr(pos_);
  buf_.clear();
  pos_ = scan_ = 0;
  return rest;
}

std::optional<std::string> sse_data(std::string_view event) {
  std::optional<std::string> data;
  while (!event.empty()) {
    const std::size_t line_end = std::min(event.find_first_of("\r\n"), event.size());
    std::string_view line = event.substr(0, line_end);
    std::size_t next = line_end;
    if (next < event.size()) next += event.substr(next, 2) == "\r\n" ? 2 : 1;
    event.remove_prefix(next);

    // "field: value"; a line with no colon is a field with an empty value; comments start with ':'.
    const std::size_t colon = std::min(line.find(':'), line.size());
    if (line.substr(0, colon) != "data") continue;
    std::string_view value = line.substr(std::min(colon + 1, line.size()));
    if (value.starts_with(' ')) value.remove_prefix(1);
    if (data) {
      data->push_back('\n');
      data->append(value);
    } else {
      data.emplace(value);
    }
  }
  return data;
}

}  // namespace tollgate::protocol
