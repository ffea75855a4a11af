// The one-pass JSON scanner that request bodies go through, and the decoding of the string
// literals it finds. Private to protocol/json_body.cpp, the one file that includes it: what it
// holds has internal linkage there, as it had when it was part of that file.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "protocol/json_body.hpp"

namespace tollgate::protocol {

namespace {

// Bytes a string may hold with nothing to check: printable ASCII other than '"' and '\\'. Message
// texts are mostly these, so the string loop runs over them with one table load per byte.
constexpr std::array<bool, 256> plain_string_byte = [] {
  std::array<bool, 256> t{};
  for (std::size_t c = 0x20; c < 0x80; ++c) t[c] = c != '"' && c != '\\';
  return t;
}();

bool is_digit(char c) { return c >= '0' && c <= '9'; }

#if defined(__x86_64__)
/// skip_plain_string_bytes's long runs, 64 bytes a step, on a CPU with AVX2. Returns the first
/// special byte, or the last position from which fewer than 64 bytes remain.
__attribute__((target("avx2"))) const char* skip_plain_avx2(const char* p, const char* end) {
  const __m256i quote = _mm256_set1_epi8('"');
  const __m256i backslash = _mm256_set1_epi8('\\');
  const __m256i space = _mm256_set1_epi8(0x20);
  const auto special = [&](__m256i v) __attribute__((target("avx2"))) {
    return _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(v, quote), _mm256_cmpeq_epi8(v, backslash)),
                           _mm256_cmpgt_epi8(space, v));
  };
  while (end - p >= 64) {
    const __m256i a = special(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m256i b = special(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
    if (!_mm256_testz_si256(_mm256_or_si256(a, b), _mm256_or_si256(a, b))) {
      const auto mask = static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm256_movemask_epi8(a))) |
                        (static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm256_movemask_epi8(b))) << 32);
      return p + __builtin_ctzll(mask);
    }
    p += 64;
  }
  return p;
}

bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}
#endif

#if defined(__SSE2__)
/// A bit for each of the 16 bytes at `at` that is not a plain_string_byte. A signed compare below
/// ' ' finds the control bytes and every byte >= 0x80 at once.
inline unsigned special_string_bytes16(const char* at) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(at));
  return static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(
      _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))),
      _mm_cmpgt_epi8(_mm_set1_epi8(0x20), v))));
}
#endif

/// The first byte in [p, end) that is not a plain_string_byte (or end). Strings are where the
/// bytes of a large body are (a long prompt, a long answer), so they are skipped 16 bytes at a
/// time where SSE2 is there (every x86-64), 64 where AVX2 is.
inline const char* skip_plain_string_bytes(const char* p, const char* end) {
#if defined(__SSE2__)
  const auto special = special_string_bytes16;
  // Most strings (keys, roles, short values) end within their first 16 bytes.
  if (end - p >= 16) {
    if (const unsigned mask = special(p); mask != 0) return p + __builtin_ctz(mask);
    p += 16;
#if defined(__x86_64__)
    if (end - p >= 64 && cpu_has_avx2()) p = skip_plain_avx2(p, end);
#endif
    while (end - p >= 16) {
      if (const unsigned mask = special(p); mask != 0) return p + __builtin_ctz(mask);
      p += 16;
    }
  }
#endif
  while (p < end && plain_string_byte[static_cast<unsigned char>(*p)]) ++p;
  return p;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// Four hex digits at the start of s, or -1.
int hex4(std::string_view s) {
  if (s.size() < 4) return -1;
  int v = 0;
  for (std::size_t k = 0; k < 4; ++k) {
    const int d = hex_value(s[k]);
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

/// nlohmann refuses a number that does not fit a double ("number overflow"); so must we, or a body
/// we pass would fail later wherever it is parsed with nlohmann. num is a well-formed JSON number.
/// The decimal magnitude decides, and from_chars (correctly rounded, like strtod) settles the one
/// decade where the limit lies.
bool fits_double(std::string_view num) {
  std::size_t i = num.front() == '-' ? 1 : 0;
  // The value is 0.d... x 10^magnitude, d the first non-zero digit.
  std::int64_t magnitude = 0;
  bool nonzero = false;
  for (; i < num.size() && is_digit(num[i]); ++i) {
    if (nonzero) {
      ++magnitude;
    } else if (num[i] != '0') {
      nonzero = true;
      magnitude = 1;
    }
  }
  if (i < num.size() && num[i] == '.') {
    for (++i; i < num.size() && is_digit(num[i]); ++i) {
      if (nonzero) continue;
      if (num[i] != '0') {
        nonzero = true;
      } else {
        --magnitude;
      }
    }
  }
  if (!nonzero) return true;
  std::int64_t exponent = 0;
  if (i < num.size()) {  // 'e' or 'E'
    ++i;
    const bool negative = num[i] == '-';
    if (num[i] == '-' || num[i] == '+') ++i;
    // Saturate: any exponent past a billion is out of range either way.
    for (; i < num.size(); ++i) exponent = std::min<std::int64_t>(exponent * 10 + (num[i] - '0'), 1'000'000'000);
    if (negative) exponent = -exponent;
  }
  const std::int64_t decade = magnitude + exponent;
  if (decade < 309) return true;  // below 1e308, or an underflow, which nlohmann takes as zero
  if (decade > 309) return false;
  double v = 0;
  const auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), v);
  return ec == std::errc() && end == num.data() + num.size() && std::isfinite(v);
}

/// One member of a scanned object, as byte offsets into the text.
struct member {
  std::size_t key_begin, key_end;      // the key's literal, quotes included
  std::size_t value_begin, value_end;  // the value's JSON text
  bool key_escaped;                    // the key's literal holds an escape: decode it to compare
};

/// Checks a JSON text in one pass (RFC 8259 with strict UTF-8) and, when the text is an object,
/// records where each of its members lies. It accepts what nlohmann::json::accept accepts, as the
/// tests check, save a raw NUL byte: nlohmann takes one for the end of the input and ignores what
/// follows, which would let junk through to the upstream. nlohmann's accept runs near 150 MB/s, too
/// slow for 10 MB bodies on every request, and the member spans come from the same pass.
class json_scanner {
 public:
  explicit json_scanner(std::string_view text) : s_(text) {}

  /// true when the whole text is one valid JSON value.
  bool scan() {
    // nlohmann skips a UTF-8 byte order mark at the very start.
    if (s_.starts_with("\xEF\xBB\xBF")) i_ = 3;
    skip_ws();
    value_begin_ = i_;
    if (peek() == '{') {
      base_depth_ = 1;
      if (!scan_members()) return false;
    } else if (!scan_value()) {
      return false;
    }
    value_end_ = i_;
    skip_ws();
    return i_ == s_.size();
  }

  /// The scan failed because containers nest deeper than max_json_depth.
  bool too_deep() const { return too_deep_; }

  /// The top-level value's text (after a successful scan).
  std::string_view value() const { return s_.substr(value_begin_, value_end_ - value_begin_); }
  bool is_object() const { return s_[value_begin_] == '{'; }
  /// Offset of the object's '{'.
  std::size_t open_brace() const { return value_begin_; }
  /// The object's members in text order, duplicates included.
  std::span<const member> members() const {
    return more_.empty() ? std::span<const member>(first_.data(), count_) : std::span<const member>(more_);
  }

 private:
  // Past the end reads as NUL, a byte that valid JSON never has outside a string.
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }

  void skip_ws() {
    // Compact JSON has no whitespace between its tokens: one compare finds that out.
    if (i_ < s_.size() && static_cast<unsigned char>(s_[i_]) > ' ') return;
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }

  /// Objects of up to first_.size() members (a request, an answer, its usage) are recorded
  /// without an allocation.
  void add_member(const member& m) {
    if (more_.empty() && count_ < first_.size()) {
      first_[count_++] = m;
      return;
    }
    if (more_.empty()) more_.assign(first_.begin(), first_.end());
    more_.push_back(m);
  }

  bool scan_members() {
    ++i_;  // '{'
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return true;
    }
    for (;;) {
      member m{};
      m.key_begin = i_;
      escaped_ = false;
      if (peek() != '"' || !scan_string()) return false;
      m.key_end = i_;
      m.key_escaped = escaped_;
      skip_ws();
      if (peek() != ':') return false;
      ++i_;
      skip_ws();
      m.value_begin = i_;
      if (!scan_value()) return false;
      m.value_end = i_;
      add_member(m);
      skip_ws();
      if (peek() == '}') {
        ++i_;
        return true;
      }
      if (peek() != ',') return false;
      ++i_;
      skip_ws();
    }
  }

  /// One value at i_. Containers are tracked on a stack of their opening bytes, not by recursion,
  /// so that a body nested a million deep cannot exhaust the thread's stack.
  bool scan_value() {
    open_size_ = 0;
    for (;;) {
      skip_ws();
      switch (peek()) {
        case '{':
        case '[': {
          // Whatever later walks the body as a tree (metering, stream_options) may recurse.
          if (base_depth_ + open_size_ >= max_json_depth) {
            too_deep_ = true;
            return false;
          }
          const char open = s_[i_++];
          skip_ws();
          if (peek() == (open == '{' ? '}' : ']')) {
            ++i_;
            break;  // an empty container is a whole value
          }
          open_[open_size_++] = open;
          if (open == '{' && !scan_key_colon()) return false;
          continue;  // its first value
        }
        case '"':
          if (!scan_string()) return false;
          break;
        case 't':
          if (!scan_literal("true")) return false;
          break;
        case 'f':
          if (!scan_literal("false")) return false;
          break;
        case 'n':
          if (!scan_literal("null")) return false;
          break;
        default:
          if (!scan_number()) return false;
      }
      // A value ended: close the containers that end here, then go on to the next value.
      for (;;) {
        if (open_size_ == 0) return true;
        skip_ws();
        const bool in_object = open_[open_size_ - 1] == '{';
        if (peek() == ',') {
          ++i_;
          if (in_object) {
            skip_ws();
            if (!scan_key_colon()) return false;
          }
          break;
        }
        if (peek() != (in_object ? '}' : ']')) return false;
        ++i_;
        --open_size_;
      }
    }
  }

  bool scan_key_colon() {
    if (peek() != '"' || !scan_string()) return false;
    skip_ws();
    if (peek() != ':') return false;
    ++i_;
    return true;
  }

  bool scan_literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }

  bool scan_number() {
    const std::size_t begin = i_;
    if (peek() == '-') ++i_;
    if (peek() == '0') {
      ++i_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (is_digit(peek())) ++i_;
    } else {
      return false;
    }
    bool integer = true;
    if (peek() == '.') {
      ++i_;
      if (!is_digit(peek())) return false;
      while (is_digit(peek())) ++i_;
      integer = false;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (!is_digit(peek())) return false;
      while (is_digit(peek())) ++i_;
      integer = false;
    }
    // An integer of up to 18 digits fits an int64; longer ones nlohmann reads as a double.
    const std::string_view num = s_.substr(begin, i_ - begin);
    return (integer && num.size() <= 18) || fits_double(num);
  }

  /// The string literal at i_ (its opening quote). Most strings (keys, roles, short values) end
  /// within 16 bytes with no byte to check before their closing quote: that case is decided here,
  /// inline, and the rest goes the general way.
  [[gnu::always_inline]] bool scan_string() {
#if defined(__SSE2__)
    if (s_.size() - i_ >= 17) {
      const unsigned mask = special_string_bytes16(s_.data() + i_ + 1);
      if (mask != 0) {
        const auto at = static_cast<std::size_t>(__builtin_ctz(mask));
        if (s_[i_ + 1 + at] == '"') {
          i_ += at + 2;
          return true;
        }
      }
    }
#endif
    return scan_string_general();
  }

  bool scan_string_general() {
    ++i_;  // the opening quote
    const char* const begin = s_.data();
    const char* const end = begin + s_.size();
    for (;;) {
      const char* p = skip_plain_string_bytes(begin + i_, end);
      // Non-ASCII text (CJK, say) is mostly multi-byte sequences in a row: checked here in one
      // loop, without going back to the plain-byte skip for each.
      while (p < end && static_cast<unsigned char>(*p) >= 0x80) {
        const auto c = static_cast<unsigned char>(*p);
        // The common sequences first, inline: two bytes from C2-DF, and three from E1-EC or
        // EE-EF (their second byte has the full 80-BF range; E0 and ED, which do not, and four-
        // byte sequences go the general way). The bytes read are before end, as the checks show.
        const auto continuation = [&](std::ptrdiff_t k) { return (static_cast<unsigned char>(p[k]) & 0xC0) == 0x80; };
        if (c >= 0xC2 && c <= 0xDF && end - p >= 2 && continuation(1)) {
          p += 2;
        } else if (c >= 0xE1 && c <= 0xEF && c != 0xED && end - p >= 3 && continuation(1) && continuation(2)) {
          p += 3;
        } else {
          const std::size_t len = utf8_sequence_length(s_, static_cast<std::size_t>(p - begin));
          if (len == 0) return false;  // bytes that are not UTF-8
          p += len;
        }
      }
      i_ = static_cast<std::size_t>(p - begin);
      if (p >= end) return false;
      const auto c = static_cast<unsigned char>(*p);
      if (c == '"') {
        ++i_;
        return true;
      }
      if (c == '\\') {
        escaped_ = true;
        if (!scan_escape()) return false;
      } else if (c < 0x20) {
        return false;  // a raw control character
      }
      // else: a plain byte after a multi-byte run; the next round goes on from it
    }
  }

  bool scan_escape() {
    ++i_;  // the backslash
    switch (peek()) {
      case '"':
      case '\\':
      case '/':
      case 'b':
      case 'f':
      case 'n':
      case 'r':
      case 't': ++i_; return true;
      case 'u': {
        ++i_;
        const int cp = hex4(s_.substr(i_));
        if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) return false;  // a low surrogate alone
        i_ += 4;
        if (cp < 0xD800 || cp > 0xDBFF) return true;
        // A high surrogate must be followed at once by an escaped low one.
        if (s_.substr(i_, 2) != "\\u") return false;
        const int low = hex4(s_.substr(i_ + 2));
        if (low < 0xDC00 || low > 0xDFFF) return false;
        i_ += 6;
        return true;
      }
      default: return false;
    }
  }

  std::array<member, 16> first_;
  std::size_t count_ = 0;
  std::vector<member> more_;  // all of them, once there are more than first_ holds
  std::string_view s_;
  std::size_t i_ = 0;
  std::size_t value_begin_ = 0, value_end_ = 0;
  // The opening bytes of the containers scan_value is inside: fewer than max_json_depth, so a
  // fixed array holds them.
  std::array<char, max_json_depth> open_;
  std::size_t open_size_ = 0;
  std::size_t base_depth_ = 0;  // containers around scan_value's: 1 inside the top-level object
  bool too_deep_ = false;
  bool escaped_ = false;  // scan_string met an escape since it was last cleared
};

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

/// Decodes a string literal (quotes included) that json_scanner accepted.
std::string decode_string(std::string_view literal) {
  const std::string_view s = literal.substr(1, literal.size() - 2);
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const std::size_t slash = std::min(s.find('\\', i), s.size());
    out.append(s.substr(i, slash - i));
    if (slash == s.size()) break;
    const char e = s[slash + 1];
    i = slash + 2;
    switch (e) {
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'u': {
        auto cp = static_cast<std::uint32_t>(hex4(s.substr(i)));
        i += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {  // the scanner saw the low half follow
          const auto low = static_cast<std::uint32_t>(hex4(s.substr(i + 2)));
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          i += 6;
        }
        append_utf8(out, cp);
        break;
      }
      default: out.push_back(e);  // '"', '\\' or '/'
    }
  }
  return out;
}

/// The decoded key of a member that json_scanner recorded in text. Keys seldom hold escapes (the
/// scan noted which do), so most are compared in place.
[[maybe_unused, gnu::always_inline]] inline std::string_view member_key(std::string_view text, const member& m, std::string& scratch) {
  const std::string_view literal = text.substr(m.key_begin, m.key_end - m.key_begin);
  if (!m.key_escaped) return literal.substr(1, literal.size() - 2);
  scratch = decode_string(literal);
  return scratch;
}

}  // namespace

}  // namespace tollgate::protocol
