// The one-pass JSON scanner that request bodies go through, and the decoding of the string
// literals it finds. Private to protocol/ (json_body.cpp and string_spans.cpp include it): what
// it holds has internal linkage in each, but for the vector width the scan uses, which is one.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
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

/// Each byte's value as a hex digit, or -1.
constexpr std::array<std::int8_t, 256> hex_digit_values = [] {
  std::array<std::int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (int d = 0; d < 10; ++d) t['0' + d] = static_cast<std::int8_t>(d);
  for (int d = 0; d < 6; ++d) t['a' + d] = t['A' + d] = static_cast<std::int8_t>(10 + d);
  return t;
}();

/// The vector loops ask for the body's bytes this far ahead of the ones they read. A body just
/// read from a socket is often out of the first caches (Intel VMs leave it in the last level), and
/// the hardware's prefetcher stops at each 4 KB page: asked ahead, a 1 MB English body scans in
/// 66 to 71 us from memory against 95 to 103, and 16 to 18 from the last level against 21
/// (tests/perf/README.md, "Prefetched scans").
constexpr std::uintptr_t scan_prefetch_distance = 2048;

/// Asks for the cache line scan_prefetch_distance past p. A prefetch does not fault, so past the
/// body's end it does nothing; the address is made as an integer, not a pointer past the body.
[[gnu::always_inline]] inline void fetch_ahead(const char* p) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(p) + scan_prefetch_distance), 0, 3);
}

int hex_value(char c) { return hex_digit_values[static_cast<unsigned char>(c)]; }

/// Four hex digits at the start of s, or -1. The four looked up at once and tested once: the
/// escapes of text written as \u escapes come here at each step's end.
int hex4(std::string_view s) {
  if (s.size() < 4) return -1;
  const int a = hex_value(s[0]), b = hex_value(s[1]), c = hex_value(s[2]), d = hex_value(s[3]);
  if ((a | b | c | d) < 0) return -1;
  return a << 12 | b << 8 | c << 4 | d;
}

#if defined(__x86_64__)
/// The top bits of the 64 bytes x then y, one bit a byte.
__attribute__((target("avx2"), always_inline)) inline std::uint64_t bits_of(const __m256i& x, const __m256i& y) {
  return static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm256_movemask_epi8(x))) |
         (static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm256_movemask_epi8(y))) << 32);
}

/// Bytes that may follow a backslash in a two-byte escape. A second backslash is not among them:
/// two backslashes in a row go the scalar way, as does \u.
constexpr std::array<bool, 256> simple_escape_byte = [] {
  std::array<bool, 256> t{};
  for (const char c : {'"', '/', 'b', 'f', 'n', 'r', 't'}) t[static_cast<unsigned char>(c)] = true;
  return t;
}();

/// Row k of a table of 32-byte constants, read from memory: hidden from the optimizer, which with
/// the values known would make each constant anew where it is used (three instructions a set1),
/// inside loops where the registers run short.
template <std::size_t N>
__attribute__((target("avx2"), always_inline)) inline __m256i hidden_row(
    const std::array<std::array<std::uint8_t, 32>, N>& table, std::size_t k) {
  const auto* at = reinterpret_cast<const __m256i*>(table.data());
  asm("" : "+r"(at));
  return _mm256_load_si256(at + k);  // the tables are aligned to 32
}

/// What each byte may be in an escape, one bit a kind, found as the AND of two 16-entry tables:
/// one looked up by the byte's high nibble, one by its low nibble (every kind is a set of low
/// nibbles under one or two high nibbles, so the AND marks it exactly; bytes from 0x80 up have
/// none). The letters of two-byte escapes take three bits, one a high nibble: " / under 2, b f n
/// under 6, r t under 7.
namespace escape_kind {
constexpr std::uint8_t simple_2 = 0x01, simple_6 = 0x02, simple_7 = 0x04;  // " /, b f n, r t
constexpr std::uint8_t digit_low = 0x08;   // 0-7
constexpr std::uint8_t digit_high = 0x10;  // 8 9
constexpr std::uint8_t letter = 0x20;      // a-f A-F
constexpr std::uint8_t u = 0x40;
constexpr std::uint8_t d = 0x80;  // d D: with a digit from 8 up after it, a surrogate's first two
constexpr std::uint8_t simple = simple_2 | simple_6 | simple_7;
constexpr std::uint8_t from_8 = digit_high | letter;  // hex digits 8-F
constexpr std::uint8_t hex = digit_low | from_8;

/// The two tables, each written twice (once a 16-byte lane), then the masks used with them, each
/// byte alike: every constant is one load (a set1 costs three instructions a call).
enum : std::size_t { by_high, by_low, nibble, hex_mask, from_8_mask, simple_mask, rows };
alignas(32) constexpr std::array<std::array<std::uint8_t, 32>, rows> tables = [] {
  std::array<std::uint8_t, 16> high{}, low{};
  high[2] = simple_2;
  high[3] = digit_low | digit_high;
  high[4] = letter | d;
  high[6] = simple_6 | letter | d;
  high[7] = simple_7 | u;
  for (int n = 0; n <= 7; ++n) low[n] |= digit_low;
  for (int n = 8; n <= 9; ++n) low[n] |= digit_high;
  for (int n = 1; n <= 6; ++n) low[n] |= letter;
  low[0x2] |= simple_2 | simple_6 | simple_7;  // " b r
  low[0xF] |= simple_2;                        // /
  low[0x6] |= simple_6;                        // f
  low[0xE] |= simple_6;                        // n
  low[0x4] |= simple_7 | d;                    // t, d
  low[0x5] |= u;
  std::array<std::array<std::uint8_t, 32>, rows> t{};
  for (int k = 0; k < 32; ++k) {
    t[by_high][k] = high[k % 16];
    t[by_low][k] = low[k % 16];
    t[nibble][k] = 0x0F;
    t[hex_mask][k] = hex;
    t[from_8_mask][k] = from_8;
    t[simple_mask][k] = simple;
  }
  return t;
}();

__attribute__((target("avx2"), always_inline)) inline __m256i row(std::size_t k) { return hidden_row(tables, k); }
}  // namespace escape_kind

/// Of the backslashes of the 64-byte step at `at`, the ones whose escape is not plainly one that
/// step_stops passes (a backslash and one of " / b f n r t, or \u and four hex digits outside
/// D800-DFFF, all within the step), found with vector masks rather than one backslash at a time:
/// for steps dense with escapes (text written as \u escapes, ten a step). step_stops looks at
/// those that are left one by one: surrogate pairs, escapes cut by the step's end, bad ones.
[[gnu::noinline]] __attribute__((target("avx2"))) std::uint64_t escapes_left_by_mask(const char* at,
                                                                                    std::uint64_t backslashes) {
  namespace k = escape_kind;
  const __m256i high = k::row(k::by_high), low = k::row(k::by_low);
  const __m256i nibble = k::row(k::nibble), zero = _mm256_setzero_si256();
  const auto kinds = [&](const char* from) __attribute__((target("avx2"), always_inline)) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from));
    return _mm256_and_si256(_mm256_shuffle_epi8(high, _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble)),
                            _mm256_shuffle_epi8(low, _mm256_and_si256(v, nibble)));
  };
  const __m256i x = kinds(at), y = kinds(at + 32);
  // The bytes of any of the kinds in `of`.
  const auto any = [&](std::size_t of) __attribute__((target("avx2"), always_inline)) {
    const __m256i m = k::row(of);
    return ~bits_of(_mm256_cmpeq_epi8(_mm256_and_si256(x, m), zero), _mm256_cmpeq_epi8(_mm256_and_si256(y, m), zero));
  };
  const std::uint64_t hex = any(k::hex_mask);
  const std::uint64_t d_digits = bits_of(x, y);  // k::d is the top bit
  const std::uint64_t us = bits_of(_mm256_slli_epi16(x, 1), _mm256_slli_epi16(y, 1));  // k::u, the next bit
  const std::uint64_t follows = backslashes << 1;
  // At each 'u' after a backslash, four hex digits after it (none past the step: shifted in as 0).
  const std::uint64_t code_points = follows & us & (hex >> 1) & (hex >> 2) & (hex >> 3) & (hex >> 4);
  // ... not D800 to DFFF: a first digit d and a second from 8 up.
  const std::uint64_t halves = code_points & (d_digits >> 1) & (any(k::from_8_mask) >> 2);
  const std::uint64_t passed = (follows & any(k::simple_mask)) | (code_points & ~halves);
  return backslashes & ~(passed >> 1);
}

/// Where the 64-byte step of a string at `at` stops being text that needs no more look, one bit a
/// byte, given its quotes, backslashes and the other bytes that stop it. Escapes are text: a
/// backslash and one of " / b f n r t, \u and four hex digits of a code point outside the
/// surrogates, and a high surrogate's \u escape followed at once by a low one's (as Python's
/// json.dumps writes non-ASCII text by default). Their backslashes do not stop the step, nor does
/// an escaped quote. A backslash before anything else (a second backslash, a lone surrogate, a
/// byte that is no escape) stops it. An escape that goes on past the step is read on there, up
/// to `readable` bytes from `at` (at least 64): what it leaves in the next step (a letter, 'u',
/// hex digits) stops nothing there. One that cannot be judged so (past `readable`, a surrogate
/// pair, an escaped quote that would be the next step's first byte) ends the step early:
/// `length` (else 64) is where, the escape's backslash, from which the next step starts.
/// `escaped` is set when a backslash comes before the first stop.
[[gnu::always_inline]] inline std::uint64_t step_stops(const char* at, std::ptrdiff_t readable, std::uint64_t quotes,
                                                     std::uint64_t backslashes, std::uint64_t others, bool& escaped,
                                                     int& length) {
  length = 64;
  if (backslashes == 0) return quotes | others;
  std::uint64_t bad = 0;
  // Dense escapes: the plain ones passed at once, the rest looked at one by one.
  const std::uint64_t one_by_one =
      __builtin_popcountll(backslashes) >= 4 ? escapes_left_by_mask(at, backslashes) : backslashes;
  for (std::uint64_t b = one_by_one; b != 0; b &= b - 1) {
    const int k = __builtin_ctzll(b);
    if (k + 1 >= readable) {
      length = k;
      break;
    }
    const auto next = static_cast<unsigned char>(at[k + 1]);
    if (simple_escape_byte[next]) {
      if (k < 63 || next != '"') continue;
      length = k;  // the quote would end the string in the next step
      break;
    }
    if (next == 'u') {
      if (k + 6 > readable) {
        length = k;
        break;
      }
      const int cp = hex4(std::string_view(at + k + 2, 4));
      if (cp >= 0 && (cp < 0xD800 || cp > 0xDFFF)) continue;
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (k > 63 - 11) {
          length = k;
          break;
        }
        if (at[k + 6] == '\\' && at[k + 7] == 'u') {
          if (const int low = hex4(std::string_view(at + k + 8, 4)); low >= 0xDC00 && low <= 0xDFFF) {
            b &= ~(1ull << (k + 6));  // the low half's backslash is taken with it
            continue;
          }
        }
      }
    }
    bad |= 1ull << k;
  }
  const std::uint64_t within = length == 64 ? ~0ull : (1ull << length) - 1;
  const std::uint64_t stops = ((quotes & ~(backslashes << 1)) | others | bad) & within;
  const std::uint64_t before_stop = stops == 0 ? within : (1ull << __builtin_ctzll(stops)) - 1;
  if ((backslashes & before_stop) != 0) escaped = true;
  return stops;
}

/// skip_plain_string_bytes's long runs of ASCII, 128 bytes a step (then 64), on a CPU with AVX2: the four
/// blocks' marks are joined and tested once, and the loop's own test, add and branch come once a
/// step (0.30 instructions a byte of a long prompt, against 0.34 with 64-byte steps). A step with
/// a special byte is looked at again, 64 bytes at a time, and passed when its only special bytes
/// are escapes (step_stops) and `escaped` is given. Returns the first byte that stops a step, or
/// the last position from which fewer than 64 bytes remain.
__attribute__((target("avx2"))) const char* skip_plain_avx2(const char* p, const char* end, bool* escaped) {
  const __m256i quote = _mm256_set1_epi8('"');
  const __m256i backslash = _mm256_set1_epi8('\\');
  const __m256i space = _mm256_set1_epi8(0x20);
  const auto special = [&](__m256i v) __attribute__((target("avx2"))) {
    return _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(v, quote), _mm256_cmpeq_epi8(v, backslash)),
                           _mm256_cmpgt_epi8(space, v));
  };
  // The stops of the 64 bytes at `at`, whose special bytes are marked in x and y: most often
  // backslashes alone (escaped newlines), which need no quote or control mask. `length`: how far
  // the step goes when nothing stops it (step_stops).
  const auto stops_at = [&](const char* at, const __m256i& x, const __m256i& y, int& length)
                            __attribute__((target("avx2"), always_inline)) {
    const std::uint64_t specials = bits_of(x, y);
    length = 64;
    if (escaped == nullptr) return specials;  // escapes not passed: each backslash stops
    // The bytes read again, from a pointer the optimizer cannot see through: else it keeps the
    // compares the loop made for every step live into this rare path, and the loop pays.
    const char* again = at;
    asm("" : "+r"(again));
    const __m256i in_x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(again));
    const __m256i in_y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(again + 32));
    const std::uint64_t backslashes = bits_of(_mm256_cmpeq_epi8(in_x, backslash), _mm256_cmpeq_epi8(in_y, backslash));
    if (specials == backslashes) return step_stops(at, end - at, 0, backslashes, 0, *escaped, length);
    const std::uint64_t quotes = bits_of(_mm256_cmpeq_epi8(in_x, quote), _mm256_cmpeq_epi8(in_y, quote));
    return step_stops(at, end - at, quotes, backslashes, specials & ~(quotes | backslashes), *escaped, length);
  };
  while (end - p >= 128) {
    fetch_ahead(p);
    fetch_ahead(p + 64);
    const __m256i a = special(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m256i b = special(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
    const __m256i c = special(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64)));
    const __m256i d = special(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 96)));
    const __m256i any = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
    if (!_mm256_testz_si256(any, any)) {
      int length = 64;
      if (const std::uint64_t stops = stops_at(p, a, b, length); stops != 0) return p + __builtin_ctzll(stops);
      if (length < 64) {  // an escape across the halves: go on from it
        p += length;
        continue;
      }
      if (const std::uint64_t stops = stops_at(p + 64, c, d, length); stops != 0) return p + 64 + __builtin_ctzll(stops);
      p += 64 + length;
      continue;
    }
    p += 128;
  }
  while (end - p >= 64) {
    fetch_ahead(p);
    const __m256i a = special(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m256i b = special(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
    int length = 64;
    if (!_mm256_testz_si256(_mm256_or_si256(a, b), _mm256_or_si256(a, b))) {
      if (const std::uint64_t stops = stops_at(p, a, b, length); stops != 0) return p + __builtin_ctzll(stops);
    }
    p += length;
  }
  return p;
}

/// The rows of constants skip_utf8_avx2 checks UTF-8 with, 32 bytes each.
namespace utf8_rows {
// One bit a kind of fault; the three tables each hold, for their index, the faults that index
// allows, and a pair is at fault where all three agree.
constexpr std::uint8_t too_short = 0x01;   // a lead (or ASCII) then a lead or ASCII
constexpr std::uint8_t too_long = 0x02;    // ASCII then a continuation
constexpr std::uint8_t overlong_3 = 0x04;  // E0 then 80-9F
constexpr std::uint8_t too_large = 0x08;   // F4 then 90-BF; F5-FF then 90-BF
constexpr std::uint8_t surrogate = 0x10;   // ED then A0-BF
constexpr std::uint8_t overlong_2 = 0x20;  // C0-C1 then a continuation
constexpr std::uint8_t four_80 = 0x40;     // F0 then 80-8F (overlong); F5-FF then 80-8F
constexpr std::uint8_t two_conts = 0x80;   // two continuations: right only where a lead two or three back owes one
constexpr std::uint8_t any_low = too_short | too_long | two_conts;
constexpr std::uint8_t large = any_low | too_large | four_80;
constexpr std::uint8_t cont = too_long | overlong_2 | two_conts;
using row = std::array<std::uint8_t, 32>;
constexpr row twice(std::array<std::uint8_t, 16> t) {
  row r{};
  for (std::size_t k = 0; k < 32; ++k) r[k] = t[k % 16];
  return r;
}
constexpr row all(std::uint8_t v) {
  row r{};
  for (auto& b : r) b = v;
  return r;
}
enum : std::size_t { first_high, first_low, second_high, nibble, quote, backslash, below_space, third_lead, fourth_lead,
                     high_bit, goes_on, count };
// Every constant is one load: a set1 costs three instructions.
alignas(32) constexpr std::array<row, count> rows = {
    // by the previous byte's high nibble
    twice({too_long, too_long, too_long, too_long, too_long, too_long, too_long, too_long, two_conts, two_conts,
           two_conts, two_conts, too_short | overlong_2, too_short, too_short | overlong_3 | surrogate,
           too_short | too_large | four_80}),
    // by the previous byte's low nibble
    twice({any_low | overlong_3 | overlong_2 | four_80, any_low | overlong_2, any_low, any_low, any_low | too_large,
           large, large, large, large, large, large, large, large, large | surrogate, large, large}),
    // by this byte's high nibble
    twice({too_short, too_short, too_short, too_short, too_short, too_short, too_short, too_short,
           cont | overlong_3 | four_80, cont | overlong_3 | too_large, cont | surrogate | too_large,
           cont | surrogate | too_large, too_short, too_short, too_short, too_short}),
    all(0x0F), all('"'), all('\\'), all(0x1F),
    all(0xE0 - 0x80),  // a byte two back from E0 up owes a continuation (bit 7 after subtracting)
    all(0xF0 - 0x80),  // so does one three back from F0 up
    all(0x80),
    // Nonzero after a saturating subtract where a block's last bytes begin a character that goes
    // on past it: F0 up third from last, E0 up second from last, C0 up last.
    [] {
      row r = all(0xFF);
      r[29] = 0xF0 - 1, r[30] = 0xE0 - 1, r[31] = 0xC0 - 1;
      return r;
    }()};

__attribute__((target("avx2"), always_inline)) inline __m256i load(std::size_t k) { return hidden_row(rows, k); }

/// The 32 bytes `in`'s special bytes ('"', '\\', a control byte) and UTF-8 faults, given the 32
/// bytes before them.
__attribute__((target("avx2"), always_inline)) inline void check(const __m256i& in, const __m256i& before,
                                                                 __m256i& fault, __m256i& special) {
  const __m256i low = load(nibble);
  const __m256i joined = _mm256_permute2x128_si256(before, in, 0x21);  // before's high half, in's low half
  const __m256i prev1 = _mm256_alignr_epi8(in, joined, 15);
  const __m256i prev2 = _mm256_alignr_epi8(in, joined, 14);
  const __m256i prev3 = _mm256_alignr_epi8(in, joined, 13);
  const __m256i pair = _mm256_and_si256(
      _mm256_and_si256(_mm256_shuffle_epi8(load(first_high), _mm256_and_si256(_mm256_srli_epi16(prev1, 4), low)),
                       _mm256_shuffle_epi8(load(first_low), _mm256_and_si256(prev1, low))),
      _mm256_shuffle_epi8(load(second_high), _mm256_and_si256(_mm256_srli_epi16(in, 4), low)));
  const __m256i owed = _mm256_and_si256(
      _mm256_or_si256(_mm256_subs_epu8(prev2, load(third_lead)), _mm256_subs_epu8(prev3, load(fourth_lead))),
      load(high_bit));
  fault = _mm256_xor_si256(pair, owed);
  special = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(in, load(quote)), _mm256_cmpeq_epi8(in, load(backslash))),
                            _mm256_cmpeq_epi8(_mm256_min_epu8(in, load(below_space)), in));
}

/// The start of the character that ends just before q, or q itself: at `from`, and after an ASCII
/// byte, which is a whole character and may be an escape's second byte (the scalar scan must not
/// take it for a byte of its own: a quote would end the string).
inline const char* char_start_before(const char* from, const char* q) {
  if (q == from || static_cast<unsigned char>(q[-1]) < 0x80) return q;
  const char* r = q - 1;
  while (r > from && r > q - 4 && (static_cast<unsigned char>(*r) & 0xC0) == 0x80) --r;
  return r;
}

/// Where to stop in the 64-byte step at `at`, which holds a special byte or a fault: the first
/// stop (step_stops) when every byte before it is well formed, else char_start_before(at); nullptr
/// when the step is all well-formed text and two-byte escapes. Out of line: it runs at most once a
/// string and for each escape, and the loop keeps its registers.
[[gnu::noinline]] __attribute__((target("avx2"))) const char* step_stop(const char* from, const char* at, const char* end,
                                                                      bool& escaped) {
  const __m256i before = at == from ? _mm256_setzero_si256() : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at - 32));
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + 32));
  __m256i fault_a, special_a, fault_b, special_b;
  check(a, before, fault_a, special_a);
  check(b, a, fault_b, special_b);
  const __m256i zero = _mm256_setzero_si256();
  const std::uint64_t faults = ~bits_of(_mm256_cmpeq_epi8(fault_a, zero), _mm256_cmpeq_epi8(fault_b, zero));
  const std::uint64_t specials = bits_of(special_a, special_b);
  const __m256i backslash_row = load(backslash), quote_row = load(quote);
  const std::uint64_t backslashes = bits_of(_mm256_cmpeq_epi8(a, backslash_row), _mm256_cmpeq_epi8(b, backslash_row));
  const std::uint64_t quotes = bits_of(_mm256_cmpeq_epi8(a, quote_row), _mm256_cmpeq_epi8(b, quote_row));
  int length = 64;
  std::uint64_t stops = step_stops(at, end - at, quotes, backslashes, specials & ~(quotes | backslashes), escaped, length);
  if (length < 64) stops |= 1ull << length;  // an escape that goes on past the step: the scalar scan takes it
  // A fault at the first stop itself may be a character cut short by it.
  const int k = stops == 0 ? 64 : __builtin_ctzll(stops);
  const std::uint64_t through_stop = k >= 63 ? ~0ull : (2ull << k) - 1;
  if ((faults & through_stop) != 0) return char_start_before(from, at);
  return stops == 0 ? nullptr : at + k;
}
}  // namespace utf8_rows

/// The first byte from `from` on that ends or leaves a run of well-formed UTF-8 text with nothing
/// else to check: '"', a backslash other than a two-byte escape's (step_stops), a control byte, or
/// a byte not well placed in UTF-8. Non-ASCII prompts (CJK, Cyrillic, accented Latin) stay here,
/// 64 bytes a step: about 1.2 instructions a byte where a step holds non-ASCII bytes, a third of
/// one where it does not.
///
/// Each byte is checked against the byte before it with three 16-entry tables, one indexed by the
/// previous byte's high nibble, one by its low nibble, one by this byte's high nibble: the AND of
/// the three looked-up values is nonzero where the pair cannot occur (a lead byte or ASCII where
/// a continuation is owed, a continuation after ASCII, an overlong form, a surrogate, a code point
/// past U+10FFFF). The third and fourth bytes of a sequence, which the previous byte alone cannot
/// place, are checked against the lead two or three bytes back.
///
/// `from` must be at a character's start. What comes back is too: the first stop when every byte
/// before it is well formed; else the start of the last character before the step where a fault
/// (or the end) was met, at least `from`, so that the scalar check takes over from a character
/// known to begin there.
__attribute__((target("avx2"))) const char* skip_utf8_avx2(const char* const from, const char* const end, bool& escaped) {
  using namespace utf8_rows;
  __m256i before = _mm256_setzero_si256();   // the previous block; ASCII before `from`
  __m256i pending = _mm256_setzero_si256();  // nonzero where `before` ends inside a character
  const char* p = from;
  for (auto left = static_cast<std::size_t>(end - p); left >= 64; left -= 64, p += 64) {
    fetch_ahead(p);
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
    __m256i special_a, special_b;
    if (_mm256_testz_si256(_mm256_or_si256(a, b), load(high_bit))) {
      // All ASCII: only special bytes, or a character the step before left unfinished, stop it.
      const __m256i space_row = load(below_space), quote_row = load(quote), backslash_row = load(backslash);
      special_a = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(a, quote_row), _mm256_cmpeq_epi8(a, backslash_row)),
                                  _mm256_cmpeq_epi8(_mm256_min_epu8(a, space_row), a));
      special_b = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(b, quote_row), _mm256_cmpeq_epi8(b, backslash_row)),
                                  _mm256_cmpeq_epi8(_mm256_min_epu8(b, space_row), b));
      const __m256i either = _mm256_or_si256(_mm256_or_si256(special_a, special_b), pending);
      if (!_mm256_testz_si256(either, either)) {
        if (const char* at = step_stop(from, p, end, escaped); at != nullptr) return at;
      }
      pending = _mm256_setzero_si256();
    } else {
      __m256i fault_a, fault_b;
      check(a, before, fault_a, special_a);
      check(b, a, fault_b, special_b);
      const __m256i any = _mm256_or_si256(_mm256_or_si256(fault_a, special_a), _mm256_or_si256(fault_b, special_b));
      if (!_mm256_testz_si256(any, any)) {
        if (const char* at = step_stop(from, p, end, escaped); at != nullptr) return at;
      }
      pending = _mm256_subs_epu8(b, load(goes_on));
    }
    before = b;
  }
  if (end - p >= 32) {  // one more block; a backslash stops it
    const __m256i in = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    __m256i fault, special;
    check(in, before, fault, special);
    const __m256i either = _mm256_or_si256(fault, special);
    if (!_mm256_testz_si256(either, either)) {
      const auto specials = static_cast<std::uint32_t>(_mm256_movemask_epi8(special));
      const auto faults = ~static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(fault, _mm256_setzero_si256())));
      const int k = specials == 0 ? 32 : __builtin_ctz(specials);
      const std::uint32_t through_stop = k >= 31 ? ~0u : (2u << k) - 1;
      if ((faults & through_stop) != 0) return char_start_before(from, p);
      return p + k;
    }
    p += 32;
  }
  return char_start_before(from, p);  // the last block may end inside a character
}


}  // namespace
}  // namespace tollgate::protocol

// The loops for AVX-512, which use the helpers above.
#include "protocol/json_scanner_avx512.hpp"

namespace tollgate::protocol {
namespace {
#endif

/// The widest vectors the CPU and the system allow the scan.
inline scan_vectors cpu_scan_vectors() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("bmi2")) {
    return scan_vectors::avx512;
  }
  if (__builtin_cpu_supports("avx2")) return scan_vectors::avx2;
#endif
  return scan_vectors::sse2;
}

}  // namespace

namespace detail {
/// What the scan uses (use_scan_vectors), one for every file that includes this one (defined in
/// json_body.cpp). Set as the program starts; a scan that ran before that (none does) would read
/// it as zero, sse2, the path every CPU has.
extern std::atomic<scan_vectors> scan_vectors_now;
}  // namespace detail

namespace {

[[gnu::always_inline]] inline bool use_avx2() {
  return detail::scan_vectors_now.load(std::memory_order_relaxed) >= scan_vectors::avx2;
}
[[gnu::always_inline]] inline bool use_avx512() {
  return detail::scan_vectors_now.load(std::memory_order_relaxed) == scan_vectors::avx512;
}

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

/// The first byte in [p, end) that is not a plain_string_byte (or end), where runs of 64 bytes
/// and more pass over escapes (step_stops) when `escaped` is given, and set it; without it each
/// backslash stops the run (a caller that looks at each escape itself). Strings are where the bytes of a large body are (a long prompt, a long answer), so
/// they are skipped 16 bytes at a time where SSE2 is there (every x86-64), 64 where AVX2 is.
inline const char* skip_plain_string_bytes(const char* p, const char* end, bool* escaped) {
#if defined(__SSE2__)
  const auto special = special_string_bytes16;
  // Most strings (keys, roles, short values) end within their first 16 bytes.
  if (end - p >= 16) {
    if (const unsigned mask = special(p); mask == 0) {
      p += 16;
#if defined(__x86_64__)
    } else if (escaped != nullptr && p[__builtin_ctz(mask)] == '\\' && end - p >= 64 && use_avx2()) {
      // An escape in a long string: text written with many (\n a line, \u a character) stays
      // in the AVX2 loop, which passes over them.
#endif
    } else {
      return p + __builtin_ctz(mask);
    }
#if defined(__x86_64__)
    if (end - p >= 64 && use_avx2()) {
      if (use_avx512()) return skip_string_avx512(p, end, escaped);
      p = skip_plain_avx2(p, end, escaped);
    }
#endif
    while (end - p >= 16) {
      if (const unsigned mask = special(p); mask != 0) return p + __builtin_ctz(mask);
      p += 16;
    }
  }
#endif
  static_cast<void>(escaped);
  while (p < end && plain_string_byte[static_cast<unsigned char>(*p)]) ++p;
  return p;
}

/// From p, at a character's start, the first byte of non-ASCII text that needs a look, as
/// skip_utf8_avx2 finds it where the CPU has AVX2 and 64 bytes remain; else p.
inline const char* skip_utf8_text(const char* p, const char* end, bool& escaped) {
#if defined(__x86_64__)
  if (end - p >= 64 && use_avx2()) return use_avx512() ? skip_utf8_avx512(p, end, escaped) : skip_utf8_avx2(p, end, escaped);
#endif
  static_cast<void>(end), static_cast<void>(escaped);
  return p;
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
///
/// Every request body and every answer that is metered goes through it, most of them a few hundred
/// bytes of compact JSON: the position and the text's end are passed along as pointers (so they
/// stay in registers through the loops, where a member would be stored and read back around each
/// call), each function returning the position past what it accepted or nullptr, and the byte
/// after a gap is read once, for both the whitespace test and what follows.
class json_scanner {
 public:
  explicit json_scanner(std::string_view text) : s_(text) {}

  /// true when the whole text is one valid JSON value.
  bool scan() {
    const char* const begin = s_.data();
    const char* const end = begin + s_.size();
    const char* p = begin;
    // nlohmann skips a UTF-8 byte order mark at the very start.
    if (s_.starts_with("\xEF\xBB\xBF")) p += 3;
    const char first = next_byte(p, end);
    value_begin_ = static_cast<std::size_t>(p - begin);
    // A failed scan returns nullptr; a whole value is at least one byte, so a text whose data()
    // is null (an empty one) never gives a null success.
    p = first == '{' ? scan_members(p, end) : scan_value(p, end, max_json_depth);
    if (p == nullptr) return false;
    value_end_ = static_cast<std::size_t>(p - begin);
    next_byte(p, end);
    return p == end;
  }

  /// The scan failed because containers nest deeper than max_json_depth.
  bool too_deep() const { return too_deep_; }

  /// The top-level value's text (after a successful scan).
  std::string_view value() const { return s_.substr(value_begin_, value_end_ - value_begin_); }
  bool is_object() const { return s_[value_begin_] == '{'; }
  /// Offset of the object's '{'.
  std::size_t open_brace() const { return value_begin_; }
  /// The object's members in text order, duplicates included (after a successful scan).
  std::span<const member> members() const {
    return more_.empty() ? std::span<const member>(first_.data(), count_) : std::span<const member>(more_);
  }

 private:
  // Past the end reads as NUL, a byte that valid JSON never has outside a string.
  [[gnu::always_inline]] static char at(const char* p, const char* end) { return p < end ? *p : '\0'; }

  /// The byte at p once p is moved past the whitespace there (NUL at the end). Compact JSON has no
  /// whitespace between its tokens: the byte's one load and one compare find that out, and the
  /// caller tests the same byte for what it expects next.
  [[gnu::always_inline]] static char next_byte(const char*& p, const char* end) {
    if (p < end && static_cast<unsigned char>(*p) > ' ') return *p;
    while (p < end && json_whitespace[static_cast<unsigned char>(*p)]) ++p;
    return at(p, end);
  }

  static constexpr std::array<bool, 256> json_whitespace = [] {
    std::array<bool, 256> t{};
    for (const char c : {' ', '\n', '\r', '\t'}) t[static_cast<unsigned char>(c)] = true;
    return t;
  }();

  /// The slot for the object's next member. Objects of up to first_.size() members (a request, an
  /// answer, its usage) are recorded without an allocation; once more_ is used, count_ stays at
  /// first_.size().
  [[gnu::always_inline]] member& next_member() {
    if (count_ < first_.size()) return first_[count_++];
    if (more_.empty()) more_.assign(first_.begin(), first_.end());
    return more_.emplace_back();
  }

  /// The top-level object whose '{' is at p, its members recorded.
  const char* scan_members(const char* p, const char* const end) {
    const char* const begin = s_.data();
    ++p;  // '{'
    char c = next_byte(p, end);
    if (c == '}') return p + 1;
    for (;;) {
      member& m = next_member();
      m.key_begin = static_cast<std::size_t>(p - begin);
      if (c != '"') return nullptr;
      escaped_ = false;
      if ((p = scan_string(p, end)) == nullptr) return nullptr;
      m.key_end = static_cast<std::size_t>(p - begin);
      m.key_escaped = escaped_;
      if (next_byte(p, end) != ':') return nullptr;
      ++p;
      next_byte(p, end);
      m.value_begin = static_cast<std::size_t>(p - begin);
      if ((p = scan_value(p, end, max_json_depth - 1)) == nullptr) return nullptr;
      m.value_end = static_cast<std::size_t>(p - begin);
      c = next_byte(p, end);
      if (c == '}') return p + 1;
      if (c != ',') return nullptr;
      ++p;
      c = next_byte(p, end);
    }
  }

  /// One value at p. Containers are tracked on a stack of their opening bytes, not by recursion,
  /// so that a body nested a million deep cannot exhaust the thread's stack; room is how many may
  /// be open at once (max_json_depth less the containers around this value). Inlined into
  /// scan_members: a call for each member's value, with its registers saved and restored, cost
  /// about as much as the short values it scanned.
  [[gnu::always_inline]] const char* scan_value(const char* p, const char* const end, const std::size_t room) {
    char* const open = open_.data();
    std::size_t open_size = 0;
    for (;;) {
      // The gap before a value and the value's kind are told apart by one load of its first byte.
      switch (at(p, end)) {
        case ' ':
        case '\n':
        case '\r':
        case '\t':
          ++p;
          next_byte(p, end);
          continue;
        case '{':
        case '[': {
          // Whatever later walks the body as a tree (metering, stream_options) may recurse.
          if (open_size >= room) {
            too_deep_ = true;
            return nullptr;
          }
          const char opening = *p++;
          const char c = next_byte(p, end);
          if (c == (opening == '{' ? '}' : ']')) {
            ++p;
            break;  // an empty container is a whole value
          }
          open[open_size++] = opening;
          if (opening == '{' && (p = scan_key_colon(p, c, end)) == nullptr) return nullptr;
          continue;  // its first value
        }
        case '"':
          if ((p = scan_string(p, end)) == nullptr) return nullptr;
          break;
        case 't':
          if ((p = scan_literal(p, end, "true")) == nullptr) return nullptr;
          break;
        case 'f':
          if ((p = scan_literal(p, end, "false")) == nullptr) return nullptr;
          break;
        case 'n':
          if ((p = scan_literal(p, end, "null")) == nullptr) return nullptr;
          break;
        default:
          if ((p = scan_number(p, end)) == nullptr) return nullptr;
      }
      // A value ended: close the containers that end here, then go on to the next value.
      for (;;) {
        if (open_size == 0) return p;
        const char c = next_byte(p, end);
        const bool in_object = open[open_size - 1] == '{';
        if (c == ',') {
          ++p;
          if (in_object) {
            const char k = next_byte(p, end);
            if ((p = scan_key_colon(p, k, end)) == nullptr) return nullptr;
          }
          break;
        }
        if (c != (in_object ? '}' : ']')) return nullptr;
        ++p;
        --open_size;
      }
    }
  }

  /// A key and its colon at p, whose byte is c.
  [[gnu::always_inline]] const char* scan_key_colon(const char* p, char c, const char* const end) {
    if (c != '"' || (p = scan_string(p, end)) == nullptr) return nullptr;
    if (next_byte(p, end) != ':') return nullptr;
    return p + 1;
  }

  static const char* scan_literal(const char* p, const char* const end, std::string_view word) {
    if (static_cast<std::size_t>(end - p) < word.size() || std::string_view(p, word.size()) != word) return nullptr;
    return p + word.size();
  }

  /// The number at p. Most numbers are short integers (counts, indexes, times): one of up to 18
  /// digits, with no fraction or exponent after it, is decided here, inline, and the rest goes the
  /// general way.
  [[gnu::always_inline]] static const char* scan_number(const char* p, const char* const end) {
    const char c = at(p, end);
    const char* q = p + 1;
    if (c == '0') {
      // "0", whatever follows: the general way would take no more digits either
    } else if (c >= '1' && c <= '9') {
      while (q < end && is_digit(*q)) ++q;
    } else {
      return scan_number_general(p, end);
    }
    const char next = at(q, end);
    if (q - p <= 18 && next != '.' && next != 'e' && next != 'E') return q;
    return scan_number_general(p, end);
  }

  static const char* scan_number_general(const char* p, const char* const end) {
    const char* const begin = p;
    const auto digit = [&] { return is_digit(at(p, end)); };
    if (at(p, end) == '-') ++p;
    if (at(p, end) == '0') {
      ++p;
    } else if (at(p, end) >= '1' && at(p, end) <= '9') {
      while (digit()) ++p;
    } else {
      return nullptr;
    }
    bool integer = true;
    if (at(p, end) == '.') {
      ++p;
      if (!digit()) return nullptr;
      while (digit()) ++p;
      integer = false;
    }
    if (at(p, end) == 'e' || at(p, end) == 'E') {
      ++p;
      if (at(p, end) == '+' || at(p, end) == '-') ++p;
      if (!digit()) return nullptr;
      while (digit()) ++p;
      integer = false;
    }
    // An integer of up to 18 digits fits an int64; longer ones nlohmann reads as a double.
    const std::string_view num(begin, static_cast<std::size_t>(p - begin));
    return (integer && num.size() <= 18) || fits_double(num) ? p : nullptr;
  }

  /// The string literal whose opening quote is at p. Most strings (keys, roles, short values) end
  /// within 16 bytes with no byte to check before their closing quote: that case is decided here,
  /// inline, and the rest goes the general way.
  [[gnu::always_inline]] const char* scan_string(const char* p, const char* const end) {
#if defined(__SSE2__)
    if (end - p >= 17) {
      const unsigned mask = special_string_bytes16(p + 1);
      if (mask != 0) {
        const auto first = __builtin_ctz(mask);
        if (p[1 + first] == '"') return p + first + 2;
      }
    }
#endif
    return scan_string_general(p, end);
  }

  const char* scan_string_general(const char* p, const char* const end) {
    ++p;  // the opening quote
    for (;;) {
      p = skip_plain_string_bytes(p, end, &escaped_);
      // Non-ASCII text (CJK, say) is mostly multi-byte sequences in a row: checked 64 bytes a
      // step where AVX2 is, and what that leaves (the last bytes, a fault to be named) here in one
      // loop, without going back to the plain-byte skip for each.
      if (p < end && static_cast<unsigned char>(*p) >= 0x80) p = skip_utf8_text(p, end, escaped_);
      while (p < end && static_cast<unsigned char>(*p) >= 0x80) {
        if constexpr (std::endian::native == std::endian::little) {
          // Three-byte sequences in a row (CJK text is nearly all of them), two with one 8-byte load,
          // then one with a 4-byte load: a lead byte E1-EC or EE-EF and two continuation bytes, the
          // inline case below.
          while (end - p >= 8) {  // two at a time
            std::uint64_t w;
            std::memcpy(&w, p, 8);
            if ((w & 0x0000C0C0F0C0C0F0u) != 0x00008080E08080E0u) break;
            const unsigned low0 = w & 0x0Fu, low1 = (w >> 24) & 0x0Fu;
            if (low0 == 0x0 || low0 == 0xD || low1 == 0x0 || low1 == 0xD) break;
            p += 6;
          }
          while (end - p >= 4) {
            std::uint32_t w;
            std::memcpy(&w, p, 4);
            if ((w & 0x00C0C0F0u) != 0x008080E0u) break;  // E0-EF, 80-BF, 80-BF
            const unsigned low = w & 0x0Fu;
            if (low == 0x0 || low == 0xD) break;  // E0 and ED: their second byte's range is narrower
            p += 3;
          }
          if (p >= end || static_cast<unsigned char>(*p) < 0x80) break;
        }
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
          const std::size_t len = utf8_sequence_length(s_, static_cast<std::size_t>(p - s_.data()));
          if (len == 0) return nullptr;  // bytes that are not UTF-8
          p += len;
        }
      }
      if (p >= end) return nullptr;
      const auto c = static_cast<unsigned char>(*p);
      if (c == '"') return p + 1;
      if (c == '\\') {
        escaped_ = true;
        if ((p = scan_escape(p, end)) == nullptr) return nullptr;
      } else if (c < 0x20) {
        return nullptr;  // a raw control character
      }
      // else: a plain byte after a multi-byte run; the next round goes on from it
    }
  }

  /// The escape whose backslash is at p.
  static const char* scan_escape(const char* p, const char* const end) {
    ++p;  // the backslash
    switch (at(p, end)) {
      case '"':
      case '\\':
      case '/':
      case 'b':
      case 'f':
      case 'n':
      case 'r':
      case 't': return p + 1;
      case 'u': {
        ++p;
        const auto rest = [&] { return std::string_view(p, static_cast<std::size_t>(end - p)); };
        const int cp = hex4(rest());
        if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) return nullptr;  // a low surrogate alone
        p += 4;
        if (cp < 0xD800 || cp > 0xDBFF) return p;
        // A high surrogate must be followed at once by an escaped low one.
        if (!rest().starts_with("\\u")) return nullptr;
        p += 2;
        const int low = hex4(rest());
        if (low < 0xDC00 || low > 0xDFFF) return nullptr;
        return p + 4;
      }
      default: return nullptr;
    }
  }

  std::array<member, 16> first_;
  std::size_t count_ = 0;
  std::vector<member> more_;  // all of them, once there are more than first_ holds
  std::string_view s_;
  std::size_t value_begin_ = 0, value_end_ = 0;
  // The opening bytes of the containers scan_value is inside: fewer than max_json_depth, so a
  // fixed array holds them.
  std::array<char, max_json_depth> open_;
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
