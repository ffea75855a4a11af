#include "protocol/event_run.hpp"

#include "protocol/json_body.hpp"
#include "protocol/line_scan.hpp"
#include "protocol/unfilled_string.hpp"

#include <cstring>
#include <stdexcept>

namespace tollgate::protocol {

/// The searches of a run, over an event_runs' state.
struct event_run_scan {
  /// Where the key's null member that starts at p[k] ends, when it is written as usual ("usage":null,
  /// no blanks: two compares of 8 bytes); 0 when it is not, or p[k, n) is too short.
  static std::size_t usual_null_end(const event_runs& r, const char* p, std::size_t k, std::size_t n) {
    if (r.null_size_ == 0 || n - k < r.null_size_) return 0;
    std::uint64_t head, tail;
    std::memcpy(&head, p + k, 8);
    std::memcpy(&tail, p + k + r.null_size_ - 8, 8);
    return head == r.null_head_ && tail == r.null_tail_ ? k + r.null_size_ : 0;
  }

  /// find_line_end_or_pair over p[i, n) with the key's first two bytes as the pair, passing over
  /// the key's null members (with no line end inside): where the line ends, or the key is met
  /// otherwise. Wide: 32 bytes at a time (AVX2).
  template <bool Wide>
  static std::size_t find_line_end_or_key(const event_runs& r, const char* p, std::size_t i, std::size_t n, bool cut_pair) {
    const std::string_view key = r.key_;
    for (;;) {
#if defined(__x86_64__)
      const std::size_t k = Wide ? find_line_end_or_pair_avx2(p, i, n, key[0], key[1], cut_pair)
                                 : find_line_end_or_pair(p, i, n, key[0], key[1], cut_pair);
#else
      const std::size_t k = find_line_end_or_pair(p, i, n, key[0], key[1], cut_pair);
#endif
      if (k == n || p[k] != key[0]) return k;
      std::size_t end = usual_null_end(r, p, k, n);
      if (end == 0) end = null_member_end(std::string_view(p, n), k, key);
      if (end == std::string_view::npos) return k;
      i = end;
    }
  }

  /// The run, the prefix checked.
  template <bool Wide>
  static std::size_t append(const event_runs& r, std::string& out, std::string_view events, std::string_view prefix,
                            std::size_t cut, std::string_view to) {
    const char* const p = events.data();
    const std::size_t n = events.size();
    if (prefix.empty()) {
      // Nothing renamed: the run is copied as it is, at once.
      std::size_t at = 0;
      while (n - at >= 2) {
        const std::size_t k = find_line_end_or_key<Wide>(r, p, at, n, true);
        if (k == at || k + 1 >= n || p[k] != '\n' || p[k + 1] != '\n') break;
        at = k + 2;
      }
      out.append(p, at);
      return at;
    }
    const std::size_t start = out.size();
    const std::string_view renamed = r.renamed_;  // each event's prefix, renamed
    char* o = nullptr;
    std::size_t at = 0;
    while (n - at >= prefix.size() + 2) {
      if (std::memcmp(p + at, prefix.data(), prefix.size()) != 0) break;
      // The search starts on the prefix's last byte, for a pair that begins there.
      const std::size_t rest = at + prefix.size();
      const std::size_t k = find_line_end_or_key<Wide>(r, p, rest - 1, n, true);
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
      std::memcpy(o, renamed.data(), renamed.size());
      o += renamed.size();
      std::memcpy(o, p + rest, end - rest);
      o += end - rest;
      at = end;
    }
    if (o != nullptr) out.resize(static_cast<std::size_t>(o - out.data()));
    return at;
  }
};

event_runs::event_runs(std::string_view key) : key_(key), wide_(scan_vectors_used() >= scan_vectors::avx2) {
  if (key.size() < 2 || key[0] == '\n' || key[0] == '\r' || key[1] == '\n' || key[1] == '\r')
    throw std::invalid_argument("append_event_run: the key has two bytes or more, its first two no line end");
  constexpr std::string_view null = ":null";
  if (const std::size_t size = key.size() + null.size(); size >= 8 && size <= 16) {
    char bytes[16];
    std::memcpy(bytes, key.data(), key.size());
    std::memcpy(bytes + key.size(), null.data(), null.size());
    std::memcpy(&null_head_, bytes, 8);
    std::memcpy(&null_tail_, bytes + size - 8, 8);
    null_size_ = size;
  }
}

std::size_t event_runs::append(std::string& out, std::string_view events, std::string_view prefix, std::size_t cut,
                               std::string_view to) {
  if (cut > prefix.size()) throw std::invalid_argument("append_event_run: cut is part of the prefix");
  const bool new_prefix = prefix != prefix_;
  if (new_prefix) {
    prefix_plain_ = event_run_scan::find_line_end_or_key<false>(*this, prefix.data(), 0, prefix.size(), false) == prefix.size();
    prefix_.assign(prefix);
  }
  if (!prefix_plain_) return 0;
  if (new_prefix || cut != cut_ || to != to_) {
    renamed_.assign(prefix.substr(0, prefix.size() - cut)).append(to);
    to_.assign(to);
    cut_ = cut;
  }
  if (wide_) return event_run_scan::append<true>(*this, out, events, prefix, cut, to);
  return event_run_scan::append<false>(*this, out, events, prefix, cut, to);
}

std::size_t append_event_run(std::string& out, std::string_view events, std::string_view key, std::string_view prefix,
                             std::size_t cut, std::string_view to) {
  return event_runs(key).append(out, events, prefix, cut, to);
}

}  // namespace tollgate::protocol
