// HTTP/1.1 heads read in one pass, for the common case only: a complete head of a request or a
// response, framed by Content-Length, by a lone "Transfer-Encoding: chunked" or by nothing. What
// it does not take (other transfer codings, Upgrade, obs-fold, a Connection list, a head past max_fast_head, 1xx/204/304 answers, anything
// malformed) it declines, and the caller gives the same bytes to Beast's parser, which accepts or
// rejects them as it always did. This reader never rejects: its tests check that it never takes
// what Beast rejects and reads every head it takes as Beast does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tollgate::protocol {

/// The most bytes of head (its blank line included) the fast reader takes.
inline constexpr std::size_t max_fast_head = 8192;

/// The length of the head at the start of bytes, its blank line included; 0 when bytes hold no
/// complete head within max_fast_head bytes.
std::size_t complete_head_length(std::string_view bytes);

/// What a head's start line and framing fields say.
struct http1_head {
  std::string_view method;  ///< a request's
  std::string_view target;  ///< a request's
  int status = 0;           ///< a response's, 200..599 but 204 and 304
  int version = 11;         ///< 10 or 11
  std::optional<std::uint64_t> content_length;
  bool chunked = false;     ///< Transfer-Encoding: chunked (its only coding, once)
  bool close = false;       ///< a Connection field named close
  bool keep_alive = false;  ///< a Connection field named keep-alive
  /// What Beast's keep_alive() says: HTTP/1.1 unless close, HTTP/1.0 only with keep-alive.
  bool persistent() const { return version >= 11 ? !close : keep_alive; }
};

struct head_field {
  std::string_view name;   ///< as sent
  std::string_view value;  ///< without its leading and trailing spaces and tabs
};

/// Reads a head's fields one at a time, after its start line.
class head_fields {
 public:
  enum class step { field, end, declined };
  /// rest: the head after its start line, blank line included.
  explicit head_fields(std::string_view rest) : rest_(rest) {}
  /// The next field into f (and its framing into head), the end of the head, or a decline.
  step next(head_field& f, http1_head& head);

 private:
  std::string_view rest_;
  bool length_seen_ = false;
};

/// Reads a request line ("METHOD target HTTP/1.x\r\n") from the start of head. Returns the rest of
/// the head (its fields), or nullopt to decline.
std::optional<std::string_view> read_request_line(std::string_view head, http1_head& out);

/// Reads a status line ("HTTP/1.x 200 reason\r\n") from the start of head; declines statuses
/// outside 200..599, and 204 and 304 (no body whatever their fields say).
std::optional<std::string_view> read_status_line(std::string_view head, http1_head& out);

/// Reads a whole head: its start line (a request's or a response's) and every field, each handed
/// to on_field(const head_field&) in order. false: declined (on_field may have seen some fields).
template <class OnField>
bool read_head(std::string_view head, bool request, http1_head& out, OnField&& on_field) {
  const auto rest = request ? read_request_line(head, out) : read_status_line(head, out);
  if (!rest) return false;
  head_fields fields(*rest);
  head_field f;
  for (;;) {
    switch (fields.next(f, out)) {
      case head_fields::step::field: on_field(f); break;
      case head_fields::step::end: return true;
      case head_fields::step::declined: return false;
    }
  }
}

}  // namespace tollgate::protocol
