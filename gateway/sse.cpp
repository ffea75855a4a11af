#include "gateway/sse.hpp"

namespace tollgate::gateway {

void sse_splitter::feed(std::string_view bytes) {
  // Drop consumed bytes once they dominate the buffer, so a long stream stays O(total bytes).
  if (pos_ > 0 && pos_ >= buf_.size() / 2) {
    buf_.erase(0, pos_);
    scan_ -= pos_;
    pos_ = 0;
  }
  buf_.append(bytes);
}

std::optional<std::string> sse_splitter::next_event() {
  // An event ends at a blank line: two line ends in a row, each "\n", "\r\n" or "\r".
  std::size_t i = std::max(scan_, pos_);
  while (i < buf_.size()) {
    const char c = buf_[i];
    if (c != '\n' && c != '\r') {
      ++i;
      continue;
    }
    // First line end at i; find its length, then whether a second one follows at once.
    std::size_t first = 1;
    if (c == '\r') {
      if (i + 1 >= buf_.size()) break;  // "\r" then maybe "\n": wait for more bytes
      if (buf_[i + 1] == '\n') first = 2;
    }
    const std::size_t j = i + first;
    if (j >= buf_.size()) break;
    const char d = buf_[j];
    if (d == '\n' || d == '\r') {
      std::size_t second = 1;
      if (d == '\r') {
        if (j + 1 >= buf_.size()) break;
        if (buf_[j + 1] == '\n') second = 2;
      }
      const std::size_t end = j + second;
      std::string event = buf_.substr(pos_, end - pos_);
      pos_ = end;
      scan_ = end;
      return event;
    }
    i = j;
  }
  scan_ = i;
  return std::nullopt;
}

std::string sse_splitter::take_rest() {
  std::string rest = buf_.substr(pos_);
  buf_.clear();
  pos_ = 0;
  scan_ = 0;
  return rest;
}

std::optional<std::string> sse_data(std::string_view event) {
  std::optional<std::string> data;
  while (!event.empty()) {
    std::size_t end = event.find_first_of("\r\n");
    std::string_view line = event.substr(0, end);
    if (end == std::string_view::npos) {
      event = {};
    } else {
      const std::size_t skip = (event[end] == '\r' && end + 1 < event.size() && event[end + 1] == '\n') ? 2 : 1;
      event.remove_prefix(end + skip);
    }
    if (!line.starts_with("data")) continue;
    line.remove_prefix(4);
    if (!line.empty() && line.front() != ':') continue;  // "dataX": another field
    if (!line.empty()) line.remove_prefix(1);
    if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    if (data) {
      data->push_back('\n');
      data->append(line);
    } else {
      data = std::string(line);
    }
  }
  return data;
}

}  // namespace tollgate::gateway
