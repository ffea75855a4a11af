#include "protocol/string_spans.hpp"

#include <charconv>
#include <cstring>
#include <string>
#include <vector>

#include "protocol/json_scanner.hpp"

namespace tollgate::protocol {

bool find_long_strings(std::string_view text, std::size_t min_bytes, const string_paths& wanted,
                       std::vector<std::pair<std::size_t, std::size_t>>& out) {
  out.clear();
  const char* const begin = text.data();
  const char* const end = begin + text.size();
  const char* p = begin;
  const auto skip_ws = [&] {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  };
  // p at an opening quote: past the closing one. clean: the contents mean what their bytes say.
  const auto scan_string = [&](bool& clean) {
    ++p;
    clean = true;
    for (;;) {
      p = skip_plain_string_bytes(p, end, nullptr);  // each escape looked at below: a surrogate one is not clean
      if (p >= end) return false;
      const auto c = static_cast<unsigned char>(*p);
      if (c == '"') {
        ++p;
        return true;
      }
      if (c == '\\') {
        if (end - p < 2) return false;
        const char e = p[1];
        if (e == 'u') {
          const int v = hex4(std::string_view(p + 2, static_cast<std::size_t>(end - p - 2)));
          if (v < 0) return false;
          if (v >= 0xD800 && v <= 0xDFFF) clean = false;  // a pair, or a lone half: the parser decides
          p += 6;
        } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
          p += 2;
        } else {
          return false;
        }
        continue;
      }
      if (c < 0x20) return false;
      const std::size_t n = utf8_sequence_length(text, static_cast<std::size_t>(p - begin));
      if (n == 0) {
        clean = false;
        ++p;
      } else {
        p += n;
      }
    }
  };
  enum class expect { key_or_close, key, value, value_or_close, comma_or_close };
  std::vector<char> open;  // '{' or '[' of each container around p
  std::vector<path_step> path;
  skip_ws();
  if (p == end || *p != '{') return false;
  open.push_back('{');
  ++p;
  expect state = expect::key_or_close;
  const auto after_value = [&] {
    if (open.back() == '{') path.pop_back();  // the member's key
    state = expect::comma_or_close;
  };
  const auto fail = [&] {
    out.clear();
    return false;
  };
  for (;;) {
    skip_ws();
    if (p == end) return fail();
    const char c = *p;
    switch (state) {
      case expect::key_or_close:
      case expect::key: {
        if (c == '}' && state == expect::key_or_close) {
          state = expect::comma_or_close;
          break;  // closed below, as after a value
        }
        if (c != '"') return fail();
        const char* key = p;
        bool clean = false;
        if (!scan_string(clean)) return fail();
        path.push_back({std::string_view(key + 1, static_cast<std::size_t>(p - key - 2)), false});
        skip_ws();
        if (p == end || *p != ':') return fail();
        ++p;
        state = expect::value;
        continue;
      }
      case expect::value:
      case expect::value_or_close:
        if (c == ']' && state == expect::value_or_close) {
          state = expect::comma_or_close;
          break;
        }
        if (c == '{') {
          open.push_back('{');
          ++p;
          state = expect::key_or_close;
        } else if (c == '[') {
          open.push_back('[');
          path.push_back({{}, true});
          ++p;
          state = expect::value_or_close;
        } else if (c == '"') {
          const char* literal = p;
          bool clean = false;
          if (!scan_string(clean)) return fail();
          if (clean && static_cast<std::size_t>(p - literal - 2) >= min_bytes && wanted(path)) {
            out.emplace_back(static_cast<std::size_t>(literal - begin), static_cast<std::size_t>(p - begin));
          }
          after_value();
        } else {
          const char* scalar = p;
          while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') ++p;
          if (p == scalar) return fail();
          after_value();
        }
        continue;
      case expect::comma_or_close:
        if (c == ',') {
          ++p;
          state = open.back() == '{' ? expect::key : expect::value;
          continue;
        }
        break;
    }
    // A container closes: c must match it.
    if ((c == '}' && open.back() != '{') || (c == ']' && open.back() != '[') || (c != '}' && c != ']')) return fail();
    if (open.back() == '[') path.pop_back();
    open.pop_back();
    ++p;
    if (open.empty()) {
      skip_ws();
      return p == end ? true : fail();
    }
    after_value();
  }
}

bool string_spans::take_out(std::string_view text, const string_paths& wanted) {
  source_ = text;
  spans_.clear();
  small_.clear();
  if (text.size() < min_bytes || std::memchr(text.data(), 0x7F, text.size()) != nullptr) return false;
  if (!find_long_strings(text, min_bytes, wanted, spans_) || spans_.empty()) return false;
  std::size_t taken = 0;
  for (const auto& [b, e] : spans_) taken += e - b;
  small_.reserve(text.size() - taken + spans_.size() * 12);
  std::size_t at = 0;
  for (std::size_t i = 0; i < spans_.size(); ++i) {
    small_.append(text, at, spans_[i].first - at);
    small_ += "\"\x7F";
    small_ += std::to_string(i);
    small_ += "\x7F\"";
    at = spans_[i].second;
  }
  small_.append(text, at);
  return true;
}

std::string string_spans::put_back(std::string_view translated) const {
  std::string out;
  std::size_t size = translated.size();
  for (const auto& [b, e] : spans_) size += e - b;
  out.reserve(size);
  std::size_t at = 0;
  for (;;) {
    const std::size_t mark = translated.find('\x7F', at);
    const std::size_t close = mark == std::string_view::npos ? mark : translated.find('\x7F', mark + 1);
    if (close == std::string_view::npos) break;
    std::size_t index = 0;
    const auto [stop, ec] = std::from_chars(translated.data() + mark + 1, translated.data() + close, index);
    if (ec != std::errc() || stop != translated.data() + close || index >= spans_.size()) {
      out.append(translated, at, close - at);  // not a marker of ours (no input holds a DEL)
      at = close;
      continue;
    }
    out.append(translated, at, mark - at);
    const auto& [b, e] = spans_[index];
    out.append(source_, b + 1, e - b - 2);
    at = close + 1;
  }
  out.append(translated, at);
  return out;
}

}  // namespace tollgate::protocol
