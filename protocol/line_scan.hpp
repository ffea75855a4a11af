// Searches of SSE bytes for line ends, 16 bytes at a time: shared by the splitter (protocol/sse)
// and the runs of alike events (protocol/event_run). A memchr for each line end costs several
// times more on an event's short lines.
#pragma once

#include <cstddef>

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tollgate::protocol {

/// The first '\n' or '\r' in p[i, n), or n.
inline std::size_t find_line_end(const char* p, std::size_t i, std::size_t n) {
#ifdef __SSE2__
  const __m128i lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r');
  for (; i + 16 <= n; i += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    const auto m = static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, lf), _mm_cmpeq_epi8(v, cr))));
    if (m != 0) return i + static_cast<std::size_t>(__builtin_ctz(m));
  }
#endif
  for (; i < n; ++i)
    if (p[i] == '\n' || p[i] == '\r') return i;
  return n;
}

/// The first byte in p[i, n) that is '\n', '\r', or s0 followed by s1: n when there is none. An s0
/// at n - 1 counts when cut_pair does.
inline std::size_t find_line_end_or_pair(const char* p, std::size_t i, std::size_t n, char s0, char s1, bool cut_pair) {
#ifdef __SSE2__
  const __m128i lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r');
  const __m128i first = _mm_set1_epi8(s0), second = _mm_set1_epi8(s1);
  for (; i + 17 <= n; i += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    const __m128i next = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 1));
    const __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, lf), _mm_cmpeq_epi8(v, cr)),
                                     _mm_and_si128(_mm_cmpeq_epi8(v, first), _mm_cmpeq_epi8(next, second)));
    if (const auto m = static_cast<unsigned>(_mm_movemask_epi8(hit)); m != 0)
      return i + static_cast<std::size_t>(__builtin_ctz(m));
  }
#endif
  for (; i < n; ++i) {
    const char c = p[i];
    if (c == '\n' || c == '\r' || (c == s0 && (i + 1 == n ? cut_pair : p[i + 1] == s1))) return i;
  }
  return n;
}

#if defined(__x86_64__)
/// find_line_end_or_pair, 32 bytes at a time: for a CPU with AVX2 (protocol::scan_vectors_used()).
__attribute__((target("avx2"))) inline std::size_t find_line_end_or_pair_avx2(const char* p, std::size_t i, std::size_t n,
                                                                               char s0, char s1, bool cut_pair) {
  const __m256i lf = _mm256_set1_epi8('\n'), cr = _mm256_set1_epi8('\r');
  const __m256i first = _mm256_set1_epi8(s0), second = _mm256_set1_epi8(s1);
  for (; i + 33 <= n; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    const __m256i next = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 1));
    const __m256i hit = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(v, lf), _mm256_cmpeq_epi8(v, cr)),
                                        _mm256_and_si256(_mm256_cmpeq_epi8(v, first), _mm256_cmpeq_epi8(next, second)));
    if (const auto m = static_cast<unsigned>(_mm256_movemask_epi8(hit)); m != 0)
      return i + static_cast<std::size_t>(__builtin_ctz(m));
  }
  return find_line_end_or_pair(p, i, n, s0, s1, cut_pair);
}
#endif

}  // namespace tollgate::protocol
