#include "protocol/json_body.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

/// The first byte in [p, end) that is not a plain_string_byte (or end). Strings are where the
/// bytes of a large body are (a long prompt, a long answer), so they are skipped 16 bytes at a
/// time where SSE2 is there (every x86-64), 64 where AVX2 is.
inline const char* skip_plain_string_bytes(const char* p, const char* end) {
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"');
  const __m128i backslash = _mm_set1_epi8('\\');
  const __m128i space = _mm_set1_epi8(0x20);
  // A signed compare below ' ' finds the control bytes and every byte >= 0x80 at once.
  const auto special = [&](const char* at) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(at));
    return static_cast<unsigned>(_mm_movemask_epi8(
        _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)), _mm_cmpgt_epi8(space, v))));
  };
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

}  // namespace

std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto byte = [&](std::size_t k) -> unsigned { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0; };
  const auto in = [](unsigned b, unsigned lo, unsigned hi) { return b >= lo && b <= hi; };
  const unsigned c = byte(0);
  std::size_t len = 0;
  unsigned lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (in(c, 0xC2, 0xDF)) {
    len = 2;
  } else if (in(c, 0xE0, 0xEF)) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (in(c, 0xF0, 0xF4)) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (!in(byte(1), lo, hi)) return 0;
  for (std::size_t k = 2; k < len; ++k) {
    if (!in(byte(k), 0x80, 0xBF)) return 0;
  }
  return len;
}

namespace {

/// One member of a scanned object, as byte offsets into the text.
struct member {
  std::size_t key_begin, key_end;      // the key's literal, quotes included
  std::size_t value_begin, value_end;  // the value's JSON text
};

/// Checks a JSON text in one pass (RFC 8259 with strict UTF-8) and, when the text is an object,
/// records where each of its members lies. It accepts what nlohmann::json::accept accepts, as the
/// tests check, save a raw NUL byte: nlohmann takes one for the end of the input and ignores what
/// follows, which would let junk through to the upstream. nlohmann's accept runs near 150 MB/s, too
/// slow for 10 MB bodies on every request, and the member spans come from the same pass.
class json_scanner {
 public:
  explicit json_scanner(std::string_view text) : s_(text) { members_.reserve(16); }

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
  const std::vector<member>& members() const { return members_; }

 private:
  // Past the end reads as NUL, a byte that valid JSON never has outside a string.
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }

  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
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
      if (peek() != '"' || !scan_string()) return false;
      m.key_end = i_;
      skip_ws();
      if (peek() != ':') return false;
      ++i_;
      skip_ws();
      m.value_begin = i_;
      if (!scan_value()) return false;
      m.value_end = i_;
      members_.push_back(m);
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
    open_.clear();
    for (;;) {
      skip_ws();
      switch (peek()) {
        case '{':
        case '[': {
          // Whatever later walks the body as a tree (metering, stream_options) may recurse.
          if (base_depth_ + open_.size() >= max_json_depth) {
            too_deep_ = true;
            return false;
          }
          const char open = s_[i_++];
          skip_ws();
          if (peek() == (open == '{' ? '}' : ']')) {
            ++i_;
            break;  // an empty container is a whole value
          }
          open_.push_back(open);
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
        if (open_.empty()) return true;
        skip_ws();
        const bool in_object = open_.back() == '{';
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
        open_.pop_back();
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

  bool scan_string() {
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

  std::string_view s_;
  std::size_t i_ = 0;
  std::size_t value_begin_ = 0, value_end_ = 0;
  std::vector<member> members_;
  std::string open_;  // the opening bytes of the containers scan_value is inside
  std::size_t base_depth_ = 0;  // containers around scan_value's: 1 inside the top-level object
  bool too_deep_ = false;
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

/// A key's decoded text. Keys seldom hold escapes, so most are compared in place.
std::string_view key_text(std::string_view literal, std::string& scratch) {
  if (literal.find('\\') == std::string_view::npos) return literal.substr(1, literal.size() - 2);
  scratch = decode_string(literal);
  return scratch;
}

/// How OpenAI names a value's type in its messages ("but got an integer instead").
const char* type_name(std::string_view value) {
  switch (value.front()) {
    case '{': return "an object";
    case '[': return "an array";
    case '"': return "a string";
    case 't':
    case 'f': return "a boolean";
    case 'n': return "null";
    default: return value.find_first_of(".eE") == std::string_view::npos ? "an integer" : "a decimal number";
  }
}

body_parse_result failure(std::string message, std::string param = {}) {
  body_parse_result r;
  r.error = std::move(message);
  r.error_param = std::move(param);
  return r;
}

/// Reads a token count ("max_tokens" and the like). nullopt when it is fine; into is left alone
/// for null.
std::optional<body_parse_result> read_count(std::string_view value, const std::string& name,
                                            std::optional<std::int64_t>& into) {
  if (value == "null") return std::nullopt;
  if (std::string_view(type_name(value)) != "an integer") {
    return failure("Invalid type for '" + name + "': expected an integer, but got " + type_name(value) + " instead.",
                   name);
  }
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  // The value is not echoed when out of range: it may be any number of digits long.
  if (ec == std::errc::result_out_of_range && value.front() != '-') {
    return failure(
        "Invalid '" + name + "': integer above maximum value. Expected a value <= " + std::to_string(INT64_MAX) + ".",
        name);
  }
  if (ec != std::errc() || v < 0) {
    return failure("Invalid '" + name + "': integer below minimum value. Expected a value >= 0" +
                       (ec == std::errc() ? ", but got " + std::string(value) + " instead." : "."),
                   name);
  }
  into = v;
  return std::nullopt;
}

}  // namespace

body_parse_result parse_request_body(std::string_view body, bool model_required) {
  json_scanner scanner(body);
  if (!scanner.scan()) {
    if (scanner.too_deep()) {
      return failure("The JSON body of your request nests objects and arrays deeper than " +
                     std::to_string(max_json_depth) + " levels.");
    }
    return failure(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
        "library correctly. The API expects a JSON payload, but what was sent was not valid JSON.)");
  }
  if (!scanner.is_object()) {
    return failure(std::string("The request body must be a JSON object, but got ") + type_name(scanner.value()) +
                   " instead.");
  }

  // The last of duplicate keys wins, as in nlohmann and most parsers upstream.
  std::optional<std::string_view> model, stream, max_tokens, max_completion_tokens, stream_options;
  body_layout layout;
  std::string scratch;
  for (const member& m : scanner.members()) {
    const std::string_view key = key_text(body.substr(m.key_begin, m.key_end - m.key_begin), scratch);
    const std::string_view value = body.substr(m.value_begin, m.value_end - m.value_begin);
    if (key == "model") {
      model = value;
      layout.model.emplace_back(m.value_begin, m.value_end);
    } else if (key == "stream") {
      stream = value;
    } else if (key == "max_tokens") {
      max_tokens = value;
    } else if (key == "max_completion_tokens") {
      max_completion_tokens = value;
    } else if (key == "stream_options") {
      stream_options = value;
      layout.stream_options.emplace_back(m.value_begin, m.value_end);
    }
  }
  const auto& all = scanner.members();
  layout.has_members = !all.empty();
  layout.append_at = all.empty() ? scanner.open_brace() + 1 : all.back().value_end;

  request_fields fields;
  // OpenAI's schema makes every optional field nullable: null reads as absent throughout.
  if (model && *model != "null") {
    if (model->front() != '"') {
      return failure(
          std::string("Invalid type for 'model': expected a string, but got ") + type_name(*model) + " instead.",
          "model");
    }
    fields.model = decode_string(*model);
    if (fields.model.empty()) {
      return failure(
          "Invalid 'model': empty string. Expected a string with minimum length 1, but got an empty string "
          "instead.",
          "model");
    }
  } else if (model_required) {
    return failure("you must provide a model parameter", "model");
  }

  if (stream && *stream != "null") {
    if (*stream != "true" && *stream != "false") {
      return failure(
          std::string("Invalid type for 'stream': expected a boolean, but got ") + type_name(*stream) + " instead.",
          "stream");
    }
    fields.stream = *stream == "true";
  }

  // Both are checked; "max_tokens" is the one read when both are given.
  std::optional<std::int64_t> completion;
  if (max_completion_tokens) {
    if (auto bad = read_count(*max_completion_tokens, "max_completion_tokens", completion)) return std::move(*bad);
  }
  if (max_tokens) {
    if (auto bad = read_count(*max_tokens, "max_tokens", fields.max_tokens)) return std::move(*bad);
  }
  if (!fields.max_tokens) fields.max_tokens = completion;

  // null stays empty, so that a caller asking for usage writes a fresh object over it.
  if (stream_options && *stream_options != "null") {
    fields.stream_options = std::string(*stream_options);
    if (stream_options->front() == '{') {
      json_scanner options(*stream_options);
      options.scan();  // valid: it is part of body
      for (const member& m : options.members()) {
        const std::string_view key = key_text(stream_options->substr(m.key_begin, m.key_end - m.key_begin), scratch);
        if (key == "include_usage") {
          fields.include_usage = stream_options->substr(m.value_begin, m.value_end - m.value_begin) == "true";
        }
      }
    }
  }

  fields.layout = std::move(layout);
  body_parse_result r;
  r.fields = std::move(fields);
  return r;
}

std::vector<body_piece> edit_body_pieces(std::string_view body, const request_fields& fields,
                                         std::optional<std::string_view> model,
                                         std::optional<std::string_view> stream_options, std::string& added) {
  struct edit {
    std::size_t begin, end;
    std::string_view text;
  };
  std::vector<edit> edits;
  edits.reserve(fields.layout.model.size() + fields.layout.stream_options.size());
  added.clear();  // members the body lacks, added after its last value
  auto plan = [&](std::string_view key, const std::vector<std::pair<std::size_t, std::size_t>>& spans,
                  std::optional<std::string_view> value) {
    if (!value) return;
    for (const auto& [b, e] : spans) edits.push_back({b, e, *value});
    if (spans.empty()) {
      if (fields.layout.has_members || !added.empty()) added.push_back(',');
      append_json_string(added, key);
      added.push_back(':');
      added.append(*value);
    }
  };
  plan("model", fields.layout.model, model);
  plan("stream_options", fields.layout.stream_options, stream_options);
  std::sort(edits.begin(), edits.end(), [](const edit& a, const edit& b) { return a.begin < b.begin; });

  std::vector<body_piece> out;
  out.reserve(2 * edits.size() + 3);
  auto piece = [&](std::string_view text, bool original) {
    if (!text.empty()) out.push_back({text, original});
  };
  std::size_t copied = 0;
  bool added_done = added.empty();
  for (const edit& e : edits) {
    if (!added_done && fields.layout.append_at <= e.begin) {
      piece(body.substr(copied, fields.layout.append_at - copied), true);
      piece(added, false);
      copied = fields.layout.append_at;
      added_done = true;
    }
    piece(body.substr(copied, e.begin - copied), true);
    piece(e.text, false);
    copied = e.end;
  }
  if (!added_done) {
    piece(body.substr(copied, fields.layout.append_at - copied), true);
    piece(added, false);
    copied = fields.layout.append_at;
  }
  piece(body.substr(copied), true);
  return out;
}

std::string edit_body(std::string_view body, const request_fields& fields, std::optional<std::string_view> model,
                      std::optional<std::string_view> stream_options) {
  std::string added;
  const auto pieces = edit_body_pieces(body, fields, model, stream_options, added);
  std::size_t size = 0;
  for (const body_piece& p : pieces) size += p.text.size();
  std::string out;
  out.reserve(size);
  for (const body_piece& p : pieces) out.append(p.text);
  return out;
}

std::string set_top_level(std::string_view body, std::string_view key, std::string_view json_value) {
  json_scanner scanner(body);
  // Outside the precondition: leave the body as it is rather than guess at its structure.
  if (!scanner.scan() || !scanner.is_object()) return std::string(body);

  std::string out;
  out.reserve(body.size() + key.size() + json_value.size() + 4);
  std::string scratch;
  std::size_t copied = 0;
  bool found = false;
  for (const member& m : scanner.members()) {
    if (key_text(body.substr(m.key_begin, m.key_end - m.key_begin), scratch) != key) continue;
    out.append(body.substr(copied, m.value_begin - copied));
    out.append(json_value);
    copied = m.value_end;
    found = true;
  }
  if (!found) {
    // Absent: added right after the last value (or the '{'), so that whatever whitespace the
    // client put before the '}' still ends the object.
    const auto& members = scanner.members();
    const std::size_t at = members.empty() ? scanner.open_brace() + 1 : members.back().value_end;
    out.append(body.substr(0, at));
    if (!members.empty()) out.push_back(',');
    out.append(json_quote(key));
    out.push_back(':');
    out.append(json_value);
    copied = at;
  }
  out.append(body.substr(copied));
  return out;
}

bool json_depth_within(std::string_view text, std::size_t limit) {
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > limit) return false;
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
  }
  return true;
}

bool top_level_values(std::string_view text, std::span<const std::string_view> keys, std::span<std::string_view> values) {
  for (auto& v : values) v = {};
  json_scanner scanner(text);
  if (!scanner.scan() || !scanner.is_object()) return false;
  std::string scratch;
  for (const member& m : scanner.members()) {
    const std::string_view key = key_text(text.substr(m.key_begin, m.key_end - m.key_begin), scratch);
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (key == keys[i]) values[i] = text.substr(m.value_begin, m.value_end - m.value_begin);
    }
  }
  return true;
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t run = 0;  // start of the bytes not yet copied
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    std::size_t len = 1;
    if (c >= 0x80) {
      len = utf8_sequence_length(s, i);
      if (len > 0) {  // valid UTF-8 is copied as it is
        i += len;
        continue;
      }
      len = 1;
    }
    out.append(s.substr(run, i - run));
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\b': out.append("\\b"); break;
      case '\f': out.append("\\f"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      default:
        if (c >= 0x80) {
          out.append("\xEF\xBF\xBD");  // U+FFFD for a byte that starts no valid sequence
        } else {
          out.append("\\u00");
          out.push_back(hex[c >> 4]);
          out.push_back(hex[c & 0xF]);
        }
    }
    i += len;
    run = i;
  }
  out.append(s.substr(run));
  out.push_back('"');
}

std::string json_quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  append_json_string(out, s);
  return out;
}

bool rename_model(std::string& text, std::string_view from, std::string_view to) {
  constexpr std::string_view key = "\"model\"";
  for (std::size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + key.size())) {
    std::size_t v = at + key.size();
    while (v < text.size() && (text[v] == ' ' || text[v] == '\t' || text[v] == '\n' || text[v] == '\r')) ++v;
    if (v >= text.size() || text[v] != ':') continue;
    ++v;
    while (v < text.size() && (text[v] == ' ' || text[v] == '\t' || text[v] == '\n' || text[v] == '\r')) ++v;
    if (text.compare(v, from.size(), from) != 0) return false;  // the model member, another value
    text.replace(v, from.size(), to);
    return true;
  }
  return false;
}

}  // namespace tollgate::protocol
