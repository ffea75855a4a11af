// The string scan's loops for CPUs with AVX-512 (BW and VBMI: Ice Lake and Sapphire Rapids,
// Zen 4 and later), 64 bytes a vector. Private to protocol/, through
// json_scanner.hpp, which picks these or its AVX2 loops by the width the scan uses.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>

#include <immintrin.h>

namespace tollgate::protocol {

namespace {

#define TOLLGATE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vbmi,bmi,bmi2")))

/// Text written as \u escapes (Python's json.dumps writes all non-ASCII text so by default) is
/// runs of six bytes: a backslash, 'u', four hex digits. code_point_runs checks ten of them at
/// once against these rows: the backslashes and 'u's, where they must be, with one compare; the
/// digits with one lookup of each byte's kind (vpermi2b over a 128-entry table).
namespace code_point_runs {
constexpr std::uint8_t hex = 0x01;     // 0-9 a-f A-F
constexpr std::uint8_t d = 0x02;       // d D: a surrogate's first digit
constexpr std::uint8_t from_8 = 0x04;  // 8-9 a-f A-F: a surrogate's second digit
constexpr std::uint8_t simple = 0x08;  // " \ / b f n r t: the letter of a two-byte escape

constexpr std::uint64_t every_sixth(int from) {
  std::uint64_t m = 0;
  for (int k = from; k < 60; k += 6) m |= 1ull << k;
  return m;
}
constexpr std::uint64_t backslash_u = every_sixth(0) | every_sixth(1);
constexpr std::uint64_t digits = every_sixth(2) | every_sixth(3) | every_sixth(4) | every_sixth(5);
constexpr std::uint64_t first_digits = every_sixth(2);

/// Rows of 64 bytes: the kinds of the ASCII bytes (two rows, 128 entries), the backslashes and
/// 'u's where a run of escapes has them, and one row a kind to test the kinds with.
enum : std::size_t {
  kinds_low, kinds_high, pattern, hex_row, d_row, from_8_row, simple_row, quote_row, backslash_row, space_row, rows
};
alignas(64) constexpr std::array<std::array<std::uint8_t, 64>, rows> table = [] {
  std::array<std::uint8_t, 128> kinds{};
  for (int k = 0; k < 10; ++k) kinds['0' + k] |= hex;
  for (int k = 0; k < 6; ++k) kinds['a' + k] |= hex | from_8, kinds['A' + k] |= hex | from_8;
  kinds['8'] |= from_8, kinds['9'] |= from_8;
  kinds['d'] |= d, kinds['D'] |= d;
  for (const char c : {'"', '\\', '/', 'b', 'f', 'n', 'r', 't'}) kinds[static_cast<unsigned char>(c)] |= simple;
  std::array<std::array<std::uint8_t, 64>, rows> t{};
  for (std::size_t k = 0; k < 64; ++k) {
    t[kinds_low][k] = kinds[k];
    t[kinds_high][k] = kinds[64 + k];
    t[pattern][k] = k % 6 == 0 ? '\\' : k % 6 == 1 ? 'u' : 0;
    t[hex_row][k] = hex;
    t[d_row][k] = d;
    t[from_8_row][k] = from_8;
    t[simple_row][k] = simple;
    t[quote_row][k] = '"';
    t[backslash_row][k] = '\\';
    t[space_row][k] = ' ';
  }
  return t;
}();

/// Row k, read from memory: hidden from the optimizer, which would otherwise make each constant
/// anew where it is used (a broadcast, on the port the compares need).
[[gnu::always_inline]] TOLLGATE_AVX512 inline __m512i row(std::size_t k) {
  const auto* at = reinterpret_cast<const __m512i*>(table.data());
  asm("" : "+r"(at));
  return _mm512_load_si512(at + k);
}

/// How many escapes in a row of a code point outside the surrogates begin the 64 bytes v (whose
/// first is a backslash), up to ten: 60 bytes, the most a block holds whole.
/// The kinds of the 64 bytes v. Bytes from 0x80 up have none: the lookup reads only the low seven
/// bits, and a byte such as 0xE2 must not pass for a letter.
[[gnu::always_inline]] TOLLGATE_AVX512 inline __m512i kinds_of(__m512i v) {
  return _mm512_maskz_permutex2var_epi8(~_mm512_movepi8_mask(v), row(kinds_low), v, row(kinds_high));
}

[[gnu::always_inline]] TOLLGATE_AVX512 inline unsigned leading(__m512i v) {
  const __m512i kinds = kinds_of(v);
  const std::uint64_t fits = (_mm512_cmpeq_epi8_mask(v, row(pattern)) & backslash_u) |
                             (_mm512_test_epi8_mask(kinds, row(hex_row)) & digits);
  // A first digit d and a second from 8 up: a surrogate, which the scalar scan pairs.
  const std::uint64_t halves =
      _mm512_test_epi8_mask(kinds, row(d_row)) & (_mm512_test_epi8_mask(kinds, row(from_8_row)) >> 1) & first_digits;
  const auto first_misfit = static_cast<unsigned>(__builtin_ctzll(((backslash_u | digits) & ~fits) | halves | 1ull << 60));
  return first_misfit / 6;
}
}  // namespace code_point_runs

/// The stops of the 64 bytes at p (whose quotes are `q`, backslashes `b`, other special bytes
/// `o`), p not inside an escape, each backslash looked at in turn: the escapes passed are a
/// backslash and one of " \ / b f n r t, \u and four hex digits of a code point outside the
/// surrogates, and a high surrogate's escape followed at once by a low one's, read on past the
/// block as far as `end`. Any other backslash stops the block there; the scalar scan judges it.
/// `escaped` is set when an escape comes before the first stop. `length` becomes the start of an
/// escape that goes on past the block, where the next block starts (in a run of \u escapes, at a
/// backslash, so that the run is checked ten at a time from there); else it stays 64.
[[gnu::always_inline]] TOLLGATE_AVX512 inline std::uint64_t escape_stops(const char* p, const char* end, std::uint64_t q,
                                                                         std::uint64_t b, std::uint64_t o, int& length,
                                                                         bool& escaped) {
  const std::ptrdiff_t readable = end - p;
  std::uint64_t letters = 0, bad = 0;
  int next = 0;  // past the last escape passed
  int last = 0;  // where it began
  for (std::uint64_t m = b; m != 0; m &= m - 1) {
    const int k = __builtin_ctzll(m);
    if (k < next) continue;  // an escaped backslash
    if (k + 1 < readable) {
      const auto c = static_cast<unsigned char>(p[k + 1]);
      if (simple_escape_byte[c] || c == '\\') {
        letters |= 2ull << k;  // 0 for the last byte's: the next block starts at it
        last = k;
        next = k + 2;
        continue;
      }
      if (c == 'u' && k + 6 <= readable) {
        const int cp = hex4(std::string_view(p + k + 2, 4));
        if (cp >= 0 && (cp < 0xD800 || cp > 0xDFFF)) {
          last = k;
          next = k + 6;
          continue;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF && k + 12 <= readable && p[k + 6] == '\\' && p[k + 7] == 'u') {
          if (const int low = hex4(std::string_view(p + k + 8, 4)); low >= 0xDC00 && low <= 0xDFFF) {
            last = k;
            next = k + 12;
            continue;
          }
        }
      }
    }
    bad = 1ull << k;
    break;
  }
  const std::uint64_t stops = (q & ~letters) | o | bad;
  if (stops == 0 || (b & (_blsmsk_u64(stops) >> 1)) != 0) escaped = true;
  if (next > 64) length = last;
  return stops;
}

/// The first byte from p on that is not plain string text, as skip_plain_avx2 finds it, to the
/// end: '"', a control byte, a byte from 0x80 up, or a backslash (each backslash, when `escaped`
/// is null; else only those escape_stops or code_point_runs does not pass, and `escaped` is set
/// when one is passed); `end` when there is none. Runs of plain text go 128 bytes a step: one
/// compare a kind of special byte a vector, each under the mask of the one before, and one test
/// (0.1 instructions a byte). Blocks with special bytes go 64 at a time, until one has none.
TOLLGATE_AVX512 const char* skip_string_avx512(const char* p, const char* end, bool* escaped) {
  namespace runs = code_point_runs;
  const __m512i quote = runs::row(runs::quote_row), backslash = runs::row(runs::backslash_row),
                space = runs::row(runs::space_row);
  // Plain bytes: from ' ' up as a signed byte, not a quote, not a backslash.
  const auto plain = [&](__m512i v) TOLLGATE_AVX512 {
    return _mm512_mask_cmpneq_epi8_mask(_mm512_mask_cmpneq_epi8_mask(_mm512_cmpge_epi8_mask(v, space), v, quote), v,
                                        backslash);
  };
  // Whether an escape was passed, stored through `escaped` once, as the loop returns: a store a
  // block to the caller's flag made the loop wait on it.
  bool seen = false;
  const auto stop_at = [&](const char* stop) {
    if (seen) *escaped = true;
    return stop;
  };
  for (;;) {
    while (end - p >= 128) {
      fetch_ahead(p);
      fetch_ahead(p + 64);
      const __mmask64 both = _kand_mask64(plain(_mm512_loadu_si512(p)), plain(_mm512_loadu_si512(p + 64)));
      if (static_cast<std::uint64_t>(both) != ~0ull) break;
      p += 128;
    }
    for (;;) {
      if (p >= end) return stop_at(end);
      const std::ptrdiff_t left = end - p;
      fetch_ahead(p);
      const __mmask64 in = left >= 64 ? ~0ull : _bzhi_u64(~0ull, static_cast<unsigned>(left));
      const __m512i v = _mm512_maskz_loadu_epi8(in, p);
      if (*p == '\\' && escaped != nullptr) {
        // A run of code point escapes: ten in a block, or the few it begins with.
        const unsigned run = runs::leading(v);
        if (run == 10) {
          seen = true;
          // The step a constant the optimizer cannot fold into 6 * run: the next load then
          // need not wait for this block's masks.
          asm("" : "+r"(p));
          p += 60;
          continue;
        }
        if (run != 0) {
          seen = true;
          p += 6 * run;
          continue;
        }
      }
      const std::uint64_t q = _mm512_cmpeq_epi8_mask(v, quote), b = _mm512_cmpeq_epi8_mask(v, backslash);
      const std::uint64_t o = _mm512_cmplt_epi8_mask(v, space);  // past `end` too: zeros
      if ((q | b | o) == 0) {
        p += 64;
        break;  // plain: back to the long steps
      }
      std::uint64_t stops;
      int length = 64;
      if (b == 0 || escaped == nullptr) {
        stops = q | b | o;
      } else if (const std::uint64_t letters = b << 1;
                 (b & letters) == 0 && (b >> 63) == 0 &&
                 (letters & ~_mm512_test_epi8_mask(runs::kinds_of(v), runs::row(runs::simple_row))) == 0) {
        // Two-byte escapes only, each within the block (an escaped newline a line): their letters
        // judged by one lookup, not one at a time.
        stops = (q & ~letters) | o;
        if (stops == 0 || (b & (_blsmsk_u64(stops) >> 1)) != 0) seen = true;
      } else {
        stops = escape_stops(p, end, q, b, o, length, seen);
      }
      if (stops != 0) {
        const char* stop = p + __builtin_ctzll(stops);
        return stop_at(stop < end ? stop : end);
      }
      p += length;
    }
  }
}

/// skip_utf8_avx2's check, 64 bytes a vector: each byte against the byte before it by the same
/// three 16-entry tables (vpshufb looks up within each 16-byte lane, and the rows hold each table
/// in every lane), the third and fourth bytes of a sequence against the lead two and three back.
/// The bytes before a vector's come from the vector before (`before`), moved into place a lane at
/// a time (valignq, then vpalignr within the lanes).
namespace utf8_check512 {
/// utf8_rows' rows, each 32-byte row (a table twice) written twice: a table in every lane.
alignas(64) constexpr std::array<std::array<std::uint8_t, 64>, utf8_rows::count> rows = [] {
  std::array<std::array<std::uint8_t, 64>, utf8_rows::count> t{};
  for (std::size_t r = 0; r < t.size(); ++r) {
    for (std::size_t k = 0; k < 64; ++k) t[r][k] = utf8_rows::rows[r][k % 32];
  }
  return t;
}();

/// The rows a check uses, loaded once before the loop.
struct constants {
  __m512i nibble, first_high, first_low, second_high, third_lead, fourth_lead, high_bit;
};

/// Row k, read from memory: hidden from the optimizer, which would otherwise make the constants
/// anew in the loop (a broadcast each, on the port the lookups need).
[[gnu::always_inline]] TOLLGATE_AVX512 inline __m512i row(std::size_t k) {
  const auto* at = reinterpret_cast<const __m512i*>(rows.data());
  asm("" : "+r"(at));
  return _mm512_load_si512(at + k);
}

/// The 64 bytes `in`'s UTF-8 faults (nonzero bytes), given the 64 bytes before them.
[[gnu::always_inline]] TOLLGATE_AVX512 inline __m512i faults(const __m512i& in, const __m512i& before, const constants& c) {
  // before's last lane, in's first three (the zero-masked form: GCC 12 warns of the plain one's
  // undefined source)
  const __m512i lanes_before = _mm512_maskz_alignr_epi64(0xFF, in, before, 6);
  const __m512i prev1 = _mm512_alignr_epi8(in, lanes_before, 15);
  const __m512i prev2 = _mm512_alignr_epi8(in, lanes_before, 14);
  const __m512i prev3 = _mm512_alignr_epi8(in, lanes_before, 13);
  const __m512i pair = _mm512_ternarylogic_epi64(
      _mm512_shuffle_epi8(c.first_high, _mm512_and_si512(_mm512_srli_epi16(prev1, 4), c.nibble)),
      _mm512_shuffle_epi8(c.first_low, _mm512_and_si512(prev1, c.nibble)),
      _mm512_shuffle_epi8(c.second_high, _mm512_and_si512(_mm512_srli_epi16(in, 4), c.nibble)), 0x80);  // a & b & c
  const __m512i owed = _mm512_and_si512(
      _mm512_or_si512(_mm512_subs_epu8(prev2, c.third_lead), _mm512_subs_epu8(prev3, c.fourth_lead)), c.high_bit);
  return _mm512_xor_si512(pair, owed);
}
}  // namespace utf8_check512

/// Text of three-byte characters alone (Chinese, Japanese, Korean prose, with fullwidth
/// punctuation) checked by the place of its lead bytes: a 64-byte vector whose bytes are all from
/// 0x80 up is well formed where its leads are E1 to EC, EE or EF (whose second bytes have no
/// limit), every third byte from the first that the vector before did not owe, and all its other
/// bytes continuation bytes. One lookup of each byte's kind (vpermi2b, by its low seven bits) and
/// one compare with the row of that phase, where the full check takes about twenty vector
/// operations. E0 and ED leads (limited second bytes), two- and four-byte characters, and ASCII
/// leave a vector to the full check.
namespace three_byte_runs {
constexpr std::uint8_t continuation = 1;  // 80 to BF
constexpr std::uint8_t lead = 2;          // E1 to EC, EE, EF

/// Rows of 64 bytes: the kinds by a byte's low seven bits (two rows), then the kinds a vector
/// must have when the vector before owes it 0, 1 or 2 continuation bytes.
alignas(64) constexpr std::array<std::array<std::uint8_t, 64>, 5> rows = [] {
  std::array<std::array<std::uint8_t, 64>, 5> t{};
  for (unsigned b = 0x80; b < 0x100; ++b) {
    const unsigned low = b & 0x7F;
    const std::uint8_t kind = b <= 0xBF ? continuation : (b >= 0xE1 && b <= 0xEF && b != 0xED) ? lead : 0;
    t[low / 64][low % 64] = kind;
  }
  for (unsigned owed = 0; owed < 3; ++owed) {
    for (unsigned k = 0; k < 64; ++k) t[2 + owed][k] = (k >= owed && (k - owed) % 3 == 0) ? lead : continuation;
  }
  return t;
}();
/// What the next vector is owed after one that was owed 0, 1 or 2: its last lead is at byte 63,
/// 61 or 62.
constexpr std::array<int, 3> owed_after = {2, 0, 1};

[[gnu::always_inline]] TOLLGATE_AVX512 inline __m512i row(std::size_t k) {
  const auto* at = reinterpret_cast<const __m512i*>(rows.data());
  asm("" : "+r"(at));
  return _mm512_load_si512(at + k);
}

/// Whether the 64 bytes v, owed `owed` continuation bytes (0 to 2), are three-byte characters
/// alone, by the rule above. `high`: v's bytes from 0x80 up.
[[gnu::always_inline]] TOLLGATE_AVX512 inline bool whole(__m512i v, __mmask64 high, int owed) {
  const __m512i kinds = _mm512_permutex2var_epi8(row(0), v, row(1));
  const __mmask64 wrong = _mm512_cmpneq_epi8_mask(kinds, row(2 + static_cast<std::size_t>(owed)));
  const __mmask64 right = _kandn_mask64(wrong, high);
  return _kortestc_mask64_u8(right, right) != 0;
}

/// The continuation bytes that the well-formed text before `at` leaves owing, from its last three
/// bytes; 3 or more where the three-byte rule cannot take the next vector (a four-byte lead last,
/// or an E0 or ED lead, whose second byte is limited). Without branches (their way would change
/// with the text): a lead's leading one bits are its character's length, a continuation byte's
/// one, ASCII's none.
inline int owed_before(const char* at, const char* from) {
  if (at == from) return 0;  // the check starts at a character's start
  const auto ones = [&](int back) { return std::countl_one(static_cast<unsigned char>(at[-back])); };
  const auto b1 = static_cast<unsigned char>(at[-1]);
  const int owed = std::max({ones(1) - 1, ones(2) - 2, ones(3) - 3, 0});
  return owed + 3 * static_cast<int>((b1 == 0xE0) | (b1 == 0xED));
}
}  // namespace three_byte_runs

/// skip_utf8_avx2 with 64-byte vectors: the same result. A step with a special byte or a fault is
/// looked at again by utf8_rows::step_stop, which names the first stop, as it does for AVX2.
TOLLGATE_AVX512 const char* skip_utf8_avx512(const char* const from, const char* const end, bool& escaped) {
  namespace u = utf8_check512;
  using namespace utf8_rows;
  const u::constants c{u::row(nibble),     u::row(first_high),  u::row(first_low), u::row(second_high),
                       u::row(third_lead), u::row(fourth_lead), u::row(high_bit)};
  const __m512i quote = u::row(utf8_rows::quote), backslash = u::row(utf8_rows::backslash),
                below_space = u::row(utf8_rows::below_space);
  // Nonzero after a saturating subtract where the last three bytes of the 64 begin a character
  // that goes on past them: F0 up third from last, E0 up second from last, C0 up last.
  alignas(64) static constexpr std::array<std::uint8_t, 64> ends_inside_row = [] {
    std::array<std::uint8_t, 64> r{};
    r.fill(0xFF);
    r[61] = 0xF0 - 1, r[62] = 0xE0 - 1, r[63] = 0xC0 - 1;
    return r;
  }();
  const __m512i ends_inside = _mm512_load_si512(ends_inside_row.data());
  __m512i before = _mm512_setzero_si512();  // the previous vector; ASCII before `from`
  bool pending = false;                     // `before` ends inside a character
  int owed = -1;    // the continuation bytes `before` leaves owing, where the rule took it (else -1)
  int untried = 0;  // vectors to leave to the full check before the three-byte rule is tried again
  const char* p = from;
  for (; end - p >= 64; p += 64) {
    fetch_ahead(p);
    const __m512i v = _mm512_loadu_si512(p);
    // After a vector the rule took, the next is tried at once (its phase is known). Else one is
    // tried where a lead is among its first three bytes; after one that is not, or that the rule
    // did not take, the next few go to the full check untried: text of other scripts (Russian),
    // or that mixes them (Chinese terms in English), would otherwise pay for the tests at each.
    const auto* bytes = reinterpret_cast<const unsigned char*>(p);
    bool tried = false;
    if (owed >= 0) {
      tried = true;
    } else if (untried > 0) {
      --untried;
    } else if ((bytes[0] >= 0xE0) | (bytes[1] >= 0xE0) | (bytes[2] >= 0xE0)) {
      owed = three_byte_runs::owed_before(p, from);
      tried = owed < 3 && bytes[owed] >= 0xE1 && bytes[owed] <= 0xEF;
    } else {
      untried = 4;
    }
    if (tried) {
      if (three_byte_runs::whole(v, _mm512_movepi8_mask(v), owed)) {
        owed = three_byte_runs::owed_after[static_cast<std::size_t>(owed)];
        pending = owed != 0;
        before = v;
        continue;
      }
      untried = 4;
    }
    owed = -1;
    // Special bytes: '"', '\\', a control byte (unsigned: bytes from 0x80 up are text here).
    const __mmask64 special = _kor_mask64(_kor_mask64(_mm512_cmpeq_epi8_mask(v, quote), _mm512_cmpeq_epi8_mask(v, backslash)),
                                          _mm512_cmple_epu8_mask(v, below_space));
    if (_mm512_movepi8_mask(v) == 0) {
      // All ASCII: only special bytes, or a character the vector before left unfinished, stop it.
      if (special != 0 || pending) {
        if (const char* at = step_stop(from, p, end, escaped); at != nullptr) return at;
      }
      pending = false;
    } else {
      const __m512i fault = u::faults(v, before, c);
      if (special != 0 || _mm512_test_epi8_mask(fault, fault) != 0) {
        if (const char* at = step_stop(from, p, end, escaped); at != nullptr) return at;
      }
      pending = _mm512_test_epi8_mask(_mm512_subs_epu8(v, ends_inside), _mm512_subs_epu8(v, ends_inside)) != 0;
    }
    before = v;
  }
  // Fewer than 64 bytes left: the scalar check takes them, from the start of a character.
  return char_start_before(from, p);
}

#undef TOLLGATE_AVX512

}  // namespace

}  // namespace tollgate::protocol
