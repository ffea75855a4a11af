#include "protocol/event_run.hpp"

#include "protocol/json_body.hpp"
#include "protocol/line_scan.hpp"
#include "protocol/unfilled_string.hpp"

#include <cstring>
#include <stdexcept>

namespace tollgate::protocol {

namespace {

/// find_line_end_or_pair over p[i, n) with key's first two bytes as the pair, passing over the
/// key's null members (with no line end inside): where the line ends, or the key is met otherwise.
std::size_t find_line_end_or_key(const char* p, std::size_t i, std::size_t n, std::string_view key, bool cut_pair) {
  const std::string_view text(p, n);
  for (;;) {
    const std::size_t k = find_line_end_or_pair(p, i, n, key[0], key[1], cut_pair);
    if (k == n || p[k] != key[0]) return k;
    const std::size_t end = null_member_end(text, k, key);
    if (end == std::string_view::npos) return k;
    i = end;
  }
}

}  // namespace

std::size_t append_event_run(std::string& out, std::string_view events, std::string_view key, std::string_view prefix,
                             std::size_t cut, std::string_view to) {
  if (key.size() < 2 || key[0] == '\n' || key[0] == '\r' || key[1] == '\n' || key[1] == '\r')
    throw std::invalid_argument("append_event_run: the key has two bytes or more, its first two no line end");
  if (cut > prefix.size()) throw std::invalid_argument("append_event_run: cut is part of the prefix");
  if (find_line_end_or_key(prefix.data(), 0, prefix.size(), key, false) != prefix.size()) return 0;
  const char* const p = events.data();
  const std::size_t n = events.size();
  const std::size_t start = out.size();
  const std::size_t keep = prefix.size() - cut;
  char* o = nullptr;
  std::size_t at = 0;
  while (n - at >= prefix.size() + 2) {
    if (!prefix.empty() && std::memcmp(p + at, prefix.data(), prefix.size()) != 0) break;
    // The search starts on the prefix's last byte, for a pair that begins there.
    const std::size_t rest = at + prefix.size();
    const std::size_t k = find_line_end_or_key(p, prefix.empty() ? at : rest - 1, n, key, true);
    // One line (not a blank one), then a blank one. Anything else is split as usual: "\r" line
    // ends, more lines, the key, or an event not yet whole.
    if (k == at || k + 1 >= n || p[k] != '\n' || p[k + 1] != '\n') break;
    if (o == nullptr) {
      // Room, unfilled, for the most events the bytes can hold, each grown by the rename; cut
      // back at the end. Sized once the first event is taken, so a run that takes none costs no
      // more than its first event's search.
      const std::size_t grow = to.size() > cut ? to.size() - cut : 0;
      resize_unfilled(out, start + n + (grow == 0 ? 0 : (n / (prefix.size() + 2) + 1) * grow));
      o = out.data() + start;
    }
    const std::size_t end = k + 2;
    if (!prefix.empty()) {
      std::memcpy(o, p + at, keep);
      o += keep;
      if (!to.empty()) std::memcpy(o, to.data(), to.size());
      o += to.size();
    }
    std::memcpy(o, p + rest, end - rest);
    o += end - rest;
    at = end;
  }
  if (o != nullptr) out.resize(static_cast<std::size_t>(o - out.data()));
  return at;
}

}  // namespace tollgate::protocol
