#include "protocol/event_run.hpp"

#include "protocol/json_body.hpp"
#include "protocol/line_scan.hpp"
#include "protocol/unfilled_string.hpp"

#include <cstring>
#include <stdexcept>

namespace tollgate::protocol {

namespace {

/// The key's null member as it is usually written ("usage":null, no blanks), for a compare of 16
/// bytes at once; null_member_end answers for the rest.
class null_member {
 public:
  explicit null_member(std::string_view key) {
#ifdef __SSE2__
    constexpr std::string_view null = ":null";
    if (key.size() + null.size() > sizeof bytes_) return;
    std::memcpy(bytes_, key.data(), key.size());
    std::memcpy(bytes_ + key.size(), null.data(), null.size());
    size_ = key.size() + null.size();
    want_ = (1u << size_) - 1;
    pattern_ = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes_));
#endif
  }

  /// Where the member that starts at p[k] ends, when it is the usual one; 0 when it is not, or
  /// p[k, n) is too short to compare at once.
  std::size_t end_at(const char* p, std::size_t k, std::size_t n) const {
#ifdef __SSE2__
    if (size_ == 0 || n - k < sizeof bytes_) return 0;
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + k));
    const auto same = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, pattern_)));
    return (same & want_) == want_ ? k + size_ : 0;
#else
    (void)p, (void)k, (void)n;
    return 0;
#endif
  }

 private:
  char bytes_[16] = {};
  std::size_t size_ = 0;
  unsigned want_ = 0;
#ifdef __SSE2__
  __m128i pattern_{};
#endif
};

/// find_line_end_or_pair over p[i, n) with key's first two bytes as the pair, passing over the
/// key's null members (with no line end inside): where the line ends, or the key is met otherwise.
/// Wide: 32 bytes at a time (AVX2).
template <bool Wide>
std::size_t find_line_end_or_key(const char* p, std::size_t i, std::size_t n, std::string_view key, const null_member& usual,
                                 bool cut_pair) {
  for (;;) {
#if defined(__x86_64__)
    const std::size_t k = Wide ? find_line_end_or_pair_avx2(p, i, n, key[0], key[1], cut_pair)
                               : find_line_end_or_pair(p, i, n, key[0], key[1], cut_pair);
#else
    const std::size_t k = find_line_end_or_pair(p, i, n, key[0], key[1], cut_pair);
#endif
    if (k == n || p[k] != key[0]) return k;
    std::size_t end = usual.end_at(p, k, n);
    if (end == 0) end = null_member_end(std::string_view(p, n), k, key);
    if (end == std::string_view::npos) return k;
    i = end;
  }
}

/// append_event_run's events, its arguments checked.
template <bool Wide>
std::size_t append_run(std::string& out, std::string_view events, std::string_view key, const null_member& usual,
                       std::string_view prefix, std::size_t cut, std::string_view to) {
  if (find_line_end_or_key<Wide>(prefix.data(), 0, prefix.size(), key, usual, false) != prefix.size()) return 0;
  const char* const p = events.data();
  const std::size_t n = events.size();
  if (prefix.empty()) {
    // Nothing renamed: the run is copied as it is, at once.
    std::size_t at = 0;
    while (n - at >= 2) {
      const std::size_t k = find_line_end_or_key<Wide>(p, at, n, key, usual, true);
      if (k == at || k + 1 >= n || p[k] != '\n' || p[k + 1] != '\n') break;
      at = k + 2;
    }
    out.append(p, at);
    return at;
  }
  const std::size_t start = out.size();
  const std::size_t keep = prefix.size() - cut;
  char* o = nullptr;
  std::size_t at = 0;
  while (n - at >= prefix.size() + 2) {
    if (std::memcmp(p + at, prefix.data(), prefix.size()) != 0) break;
    // The search starts on the prefix's last byte, for a pair that begins there.
    const std::size_t rest = at + prefix.size();
    const std::size_t k = find_line_end_or_key<Wide>(p, rest - 1, n, key, usual, true);
    // One line (not a blank one), then a blank one. Anything else is split as usual: "\r" line
    // ends, more lines, the key, or an event not yet whole.
    if (k + 1 >= n || p[k] != '\n' || p[k + 1] != '\n') break;
    if (o == nullptr) {
      // Room, unfilled, for the most events the bytes can hold, each grown by the rename; cut
      // back at the end. Sized once the first event is taken, so a run that takes none costs no
      // more than its first event's search.
      const std::size_t grow = to.size() > cut ? to.size() - cut : 0;
      resize_unfilled(out, start + n + (grow == 0 ? 0 : (n / (prefix.size() + 2) + 1) * grow));
      o = out.data() + start;
    }
    const std::size_t end = k + 2;
    std::memcpy(o, p + at, keep);
    o += keep;
    if (!to.empty()) std::memcpy(o, to.data(), to.size());
    o += to.size();
    std::memcpy(o, p + rest, end - rest);
    o += end - rest;
    at = end;
  }
  if (o != nullptr) out.resize(static_cast<std::size_t>(o - out.data()));
  return at;
}

}  // namespace

std::size_t append_event_run(std::string& out, std::string_view events, std::string_view key, std::string_view prefix,
                             std::size_t cut, std::string_view to) {
  if (key.size() < 2 || key[0] == '\n' || key[0] == '\r' || key[1] == '\n' || key[1] == '\r')
    throw std::invalid_argument("append_event_run: the key has two bytes or more, its first two no line end");
  if (cut > prefix.size()) throw std::invalid_argument("append_event_run: cut is part of the prefix");
  const null_member usual(key);
  if (scan_vectors_used() >= scan_vectors::avx2) return append_run<true>(out, events, key, usual, prefix, cut, to);
  return append_run<false>(out, events, key, usual, prefix, cut, to);
}

}  // namespace tollgate::protocol
