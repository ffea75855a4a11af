// What the translations between API dialects share: a result that is either a body or a 400
// naming the field it refuses, and the few SSE helpers they need. Light on purpose (no JSON
// header): the session and the adapters include it.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace tollgate::protocol {

/// A body translated into another dialect, or why it cannot be: nothing the source expresses is
/// dropped silently, so a field without an equivalent is refused (a 400 that names it).
struct translated {
  std::string body;
  std::string error;  ///< empty when the translation succeeded
  std::string param;  ///< the refused field as a path, e.g. "messages[2].content[0].type"
  bool ok() const { return error.empty(); }
};

/// An answer's status and body after translation.
struct answer {
  int status = 0;
  std::string body;
};

/// One SSE event: "event: NAME\ndata: DATA\n\n" ("data: DATA\n\n" when name is empty).
std::string sse_event(std::string_view name, std::string_view data);

/// The "event:" name and the "data:" payload (lines joined by '\n') of one SSE event.
struct sse_fields {
  std::string name;
  std::optional<std::string> data;
};
sse_fields parse_sse_event(std::string_view event);

/// A random id with a prefix, e.g. "msg_" + 24 hex digits.
std::string random_id(std::string_view prefix);

}  // namespace tollgate::protocol
