#include "protocol/chunked_body.hpp"

#include <algorithm>

namespace tollgate::protocol {

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// RFC 9110 tchar.
bool token_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= '0' && u <= '9') return true;
  if ((u | 0x20) >= 'a' && (u | 0x20) <= 'z') return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-': case '.':
    case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

// A byte a field value or a quoted string may hold: visible, obs-text, space or tab.
bool text_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u == '\t' || (u >= 0x20 && u != 0x7f);
}

}  // namespace

std::optional<std::string_view> chunked_reader::fail(const char* why) {
  at_ = at::failed;
  error_ = why;
  return std::nullopt;
}

std::optional<std::string_view> chunked_reader::next(std::string_view& bytes) {
  // The usual shapes at once: the CRLF after a chunk's data, then a chunk line of hex digits and
  // CRLF (no extensions) whole in bytes. Anything else goes byte by byte below.
  if (at_ == at::data_cr && bytes.size() >= 2 && bytes[0] == '\r' && bytes[1] == '\n') {
    bytes.remove_prefix(2);
    at_ = at::size;
    line_ = 0;
  }
  if (at_ == at::size && digits_ == 0) {
    std::uint64_t size = 0;
    std::size_t i = 0;
    for (int v; i < bytes.size() && i < 16 && (v = hex_value(bytes[i])) >= 0; ++i) size = size * 16 + static_cast<std::uint64_t>(v);
    if (i > 0 && size > 0 && i + 2 <= bytes.size() && bytes[i] == '\r' && bytes[i + 1] == '\n') {
      bytes.remove_prefix(i + 2);
      left_ = size;
      at_ = at::data;
    }
  }
  while (!bytes.empty()) {
    if (at_ == at::data) {
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left_, bytes.size()));
      const std::string_view piece = bytes.substr(0, n);
      bytes.remove_prefix(n);
      left_ -= n;
      if (left_ == 0) at_ = at::data_cr;
      return piece;
    }
    if (at_ == at::done || at_ == at::failed) return std::nullopt;
    const char c = bytes.front();
    bytes.remove_prefix(1);
    switch (at_) {
      case at::size: {
        const int v = hex_value(c);
        if (v >= 0) {
          if (++digits_ > 16) return fail("chunk size too large");
          left_ = left_ * 16 + static_cast<std::uint64_t>(v);
          ++line_;
          break;
        }
        if (digits_ == 0) return fail("bad chunk size");
        if (c == '\r') {
          at_ = at::size_lf;
        } else if (c == ';' || c == ' ' || c == '\t') {
          at_ = at::ext;  // extensions (with the spaces around their ';' and '='): checked, not kept
          ++line_;
        } else {
          return fail("bad chunk size");
        }
        break;
      }
      case at::ext:
        if (++line_ > max_line) return fail("chunk line too long");
        if (c == '\r') at_ = at::size_lf;
        else if (c == '"') at_ = at::ext_quoted;
        else if (!token_char(c) && c != ';' && c != '=' && c != ' ' && c != '\t') return fail("bad chunk extension");
        break;
      case at::ext_quoted:
        if (++line_ > max_line) return fail("chunk line too long");
        if (c == '"') at_ = at::ext;
        else if (c == '\\') at_ = at::ext_escape;
        else if (!text_char(c)) return fail("bad chunk extension");
        break;
      case at::ext_escape:
        if (++line_ > max_line) return fail("chunk line too long");
        if (!text_char(c)) return fail("bad chunk extension");
        at_ = at::ext_quoted;
        break;
      case at::size_lf:
        if (c != '\n') return fail("bad chunk line end");
        digits_ = 0;
        line_ = 0;
        if (left_ == 0) {
          at_ = at::field;  // the last chunk: trailer fields, then an empty line
          field_part_ = 0;
        } else {
          at_ = at::data;
        }
        break;
      case at::data_cr:
        if (c != '\r') return fail("chunk data longer than its size");
        at_ = at::data_lf;
        break;
      case at::data_lf:
        if (c != '\n') return fail("chunk data longer than its size");
        at_ = at::size;
        line_ = 0;
        break;
      case at::field:
        // A trailer field line: a token name, ':', then a value (what a head's field may hold).
        if (++line_ > max_trailers) return fail("trailer fields too long");
        if (field_part_ == 0 && c == '\r') {
          at_ = at::end_lf;
        } else if (field_part_ == 2) {
          if (c == '\r') at_ = at::field_lf;
          else if (!text_char(c)) return fail("bad trailer field");
        } else if (token_char(c)) {
          field_part_ = 1;
        } else if (field_part_ == 1 && c == ':') {
          field_part_ = 2;
        } else {
          return fail("bad trailer field");
        }
        break;
      case at::field_lf:
        if (c != '\n') return fail("bad trailer line end");
        at_ = at::field;
        field_part_ = 0;
        break;
      case at::end_lf:
        if (c != '\n') return fail("bad trailer line end");
        at_ = at::done;
        return std::nullopt;
      default:
        break;
    }
  }
  return std::nullopt;
}

}  // namespace tollgate::protocol
