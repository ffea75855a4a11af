#include "protocol/http1_head.hpp"

#include <array>
#include <cstring>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

namespace tollgate::protocol {

namespace {

/// RFC 9110's tchar: visible ASCII save the delimiters (the set Beast's parser uses for methods
/// and field names).
constexpr std::array<bool, 256> token_table = [] {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<unsigned char>(c)] = true;
  return t;
}();

bool token_char(char c) { return token_table[static_cast<unsigned char>(c)]; }

/// A byte a field value or a reason phrase may not hold: a control byte other than HTAB, or DEL.
bool value_stop(unsigned char c) { return (c < 0x20 && c != '\t') || c == 0x7f; }

/// The first byte from p on (before end) that value_stop() refuses; end when there is none.
const char* value_end(const char* p, const char* end) {
#ifdef __SSE2__
  const __m128i x1f = _mm_set1_epi8(0x1f);
  const __m128i tab = _mm_set1_epi8('\t');
  const __m128i del = _mm_set1_epi8(0x7f);
  while (end - p >= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i control = _mm_andnot_si128(_mm_cmpeq_epi8(v, tab), _mm_cmpeq_epi8(_mm_min_epu8(v, x1f), v));
    const int mask = _mm_movemask_epi8(_mm_or_si128(control, _mm_cmpeq_epi8(v, del)));
    if (mask != 0) return p + __builtin_ctz(static_cast<unsigned>(mask));
    p += 16;
  }
#endif
  for (; p != end; ++p) {
    if (value_stop(static_cast<unsigned char>(*p))) return p;
  }
  return end;
}

/// The first byte from p on (before end) that is not a letter, a digit or '-' (the bytes of
/// almost every field name), 16 at a time; p itself when fewer than 16 bytes are left. The
/// caller's token loop goes on from there, so this only skips bytes that loop would take.
const char* common_name_end(const char* p, const char* end) {
#ifdef __SSE2__
  const __m128i case_bit = _mm_set1_epi8(0x20);
  const __m128i before_a = _mm_set1_epi8('a' - 1);
  const __m128i after_z = _mm_set1_epi8('z' + 1);
  const __m128i before_0 = _mm_set1_epi8('0' - 1);
  const __m128i after_9 = _mm_set1_epi8('9' + 1);
  const __m128i dash = _mm_set1_epi8('-');
  while (end - p >= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    // Signed compares: bytes past 127 are negative, so neither letters nor digits.
    const __m128i lower = _mm_or_si128(v, case_bit);
    const __m128i letter = _mm_and_si128(_mm_cmpgt_epi8(lower, before_a), _mm_cmplt_epi8(lower, after_z));
    const __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(v, before_0), _mm_cmplt_epi8(v, after_9));
    const __m128i ok = _mm_or_si128(_mm_or_si128(letter, digit), _mm_cmpeq_epi8(v, dash));
    const unsigned stop = ~static_cast<unsigned>(_mm_movemask_epi8(ok)) & 0xffffu;
    if (stop != 0) return p + __builtin_ctz(stop);
    p += 16;
  }
#endif
  static_cast<void>(end);
  return p;
}

/// The first byte from p on (before end) that may not be in a request target: a control byte,
/// a space or DEL (bytes past 127 may), 16 at a time; p itself when fewer than 16 are left.
const char* common_target_end(const char* p, const char* end) {
#ifdef __SSE2__
  const __m128i space = _mm_set1_epi8(0x20);
  const __m128i del = _mm_set1_epi8(0x7f);
  while (end - p >= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i low = _mm_cmpeq_epi8(_mm_max_epu8(v, space), space);  // v <= 0x20, unsigned
    const int mask = _mm_movemask_epi8(_mm_or_si128(low, _mm_cmpeq_epi8(v, del)));
    if (mask != 0) return p + __builtin_ctz(static_cast<unsigned>(mask));
    p += 16;
  }
#endif
  static_cast<void>(end);
  return p;
}

/// name equals lower (lower case letters and '-' only), ignoring the case of name's letters.
/// Precondition: name holds token characters only. Eight bytes at a time: the case bit is set in
/// each byte of name, as the byte loop does.
bool name_is(std::string_view name, std::string_view lower) {
  if (name.size() != lower.size()) return false;
  const std::size_t n = name.size();
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t a = 0, b = 0;
    std::memcpy(&a, name.data() + i, 8);
    std::memcpy(&b, lower.data() + i, 8);
    if ((a | 0x2020202020202020ull) != b) return false;
  }
  for (; i < n; ++i) {
    if ((name[i] | 0x20) != lower[i]) return false;
  }
  return true;
}

/// "HTTP/1.0" or "HTTP/1.1" at the start of s: 10 or 11, else 0.
int read_version(std::string_view s) {
  if (s.size() < 8 || std::memcmp(s.data(), "HTTP/1.", 7) != 0) return 0;
  return s[7] == '1' ? 11 : s[7] == '0' ? 10 : 0;
}

}  // namespace

std::size_t complete_head_length(std::string_view bytes) {
  if (bytes.size() > max_fast_head) bytes = bytes.substr(0, max_fast_head);
  const auto end = bytes.find("\r\n\r\n");
  return end == std::string_view::npos ? 0 : end + 4;
}

std::optional<std::string_view> read_request_line(std::string_view head, http1_head& out) {
  const char* p = head.data();
  const char* const end = p + head.size();
  const char* const method = p;
  while (p != end && token_char(*p)) ++p;
  if (p == method || p == end || *p != ' ') return std::nullopt;
  out.method = std::string_view(method, static_cast<std::size_t>(p - method));
  const char* const target = ++p;
  p = common_target_end(p, end);
  while (p != end && static_cast<unsigned char>(*p) > 0x20 && *p != 0x7f) ++p;
  if (p == target || p == end || *p != ' ') return std::nullopt;
  out.target = std::string_view(target, static_cast<std::size_t>(p - target));
  ++p;
  std::string_view rest(p, static_cast<std::size_t>(end - p));
  out.version = read_version(rest);
  if (out.version == 0 || rest.size() < 10 || rest[8] != '\r' || rest[9] != '\n') return std::nullopt;
  return rest.substr(10);
}

std::optional<std::string_view> read_status_line(std::string_view head, http1_head& out) {
  out.version = read_version(head);
  if (out.version == 0 || head.size() < 13 || head[8] != ' ') return std::nullopt;
  int status = 0;
  for (std::size_t i = 9; i < 12; ++i) {
    if (head[i] < '0' || head[i] > '9') return std::nullopt;
    status = status * 10 + (head[i] - '0');
  }
  if (head[12] != ' ' || status < 200 || status > 599 || status == 204 || status == 304) return std::nullopt;
  out.status = status;
  const char* const end = head.data() + head.size();
  const char* p = value_end(head.data() + 13, end);
  if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return std::nullopt;
  p += 2;
  return std::string_view(p, static_cast<std::size_t>(end - p));
}

head_fields::step head_fields::next(head_field& f, http1_head& head) {
  const char* p = rest_.data();
  const char* const end = p + rest_.size();
  if (p == end) return step::declined;
  if (*p == '\r') return rest_ == "\r\n" ? step::end : step::declined;
  const char* const name = p;
  p = common_name_end(p, end);
  while (p != end && token_char(*p)) ++p;
  if (p == name || p == end || *p != ':') return step::declined;
  f.name = std::string_view(name, static_cast<std::size_t>(p - name));
  ++p;
  while (p != end && (*p == ' ' || *p == '\t')) ++p;
  const char* const value = p;
  p = value_end(p, end);
  // A line ends in CRLF, and the next one does not start with a space or tab (obs-fold, which
  // Beast joins into one value: left to it).
  if (end - p < 3 || p[0] != '\r' || p[1] != '\n' || p[2] == ' ' || p[2] == '\t') return step::declined;
  const char* last = p;
  while (last != value && (last[-1] == ' ' || last[-1] == '\t')) --last;
  f.value = std::string_view(value, static_cast<std::size_t>(last - value));
  rest_ = std::string_view(p + 2, static_cast<std::size_t>(end - p - 2));

  // The fields that frame the body or the connection. Beast reads lists and repeats of these in
  // ways of its own: anything but the plain forms is left to it.
  const std::string_view n = f.name;
  switch (n.size()) {
    case 7:
      if (name_is(n, "upgrade")) return step::declined;
      break;
    case 10:
      if (name_is(n, "connection")) {
        if (f.value.empty()) return step::declined;
        for (char c : f.value) {
          if (!token_char(c)) return step::declined;  // a list, or not a token
        }
        if (name_is(f.value, "close")) head.close = true;
        else if (name_is(f.value, "keep-alive")) head.keep_alive = true;
        else if (name_is(f.value, "upgrade")) return step::declined;
      }
      break;
    case 14:
      if (name_is(n, "content-length")) {
        if (length_seen_ || f.value.empty() || f.value.size() > 18) return step::declined;
        std::uint64_t v = 0;
        for (char c : f.value) {
          if (c < '0' || c > '9') return step::declined;
          v = v * 10 + static_cast<std::uint64_t>(c - '0');
        }
        length_seen_ = true;
        head.content_length = v;
      }
      break;
    case 16:
      if (name_is(n, "proxy-connection")) return step::declined;
      break;
    case 17:
      // Only a lone "chunked" (a response's usual stream framing); codings and repeats go to Beast.
      if (name_is(n, "transfer-encoding")) {
        if (head.chunked || !name_is(f.value, "chunked")) return step::declined;
        head.chunked = true;
      }
      break;
    default:
      break;
  }
  return step::field;
}

}  // namespace tollgate::protocol
