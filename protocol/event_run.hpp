// A run of plain events copied, renamed, without splitting them one by one: the hot path of a
// relayed chat stream, whose events are alike.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tollgate::protocol {

/// Appends to out the run of plain events at the start of `events` (SSE bytes) and returns the
/// bytes taken; stops before the first event that is not plain (0: the first is not). A plain event
/// is one line ending in "\n\n" that begins with `prefix` and holds no `key` (a quoted name, such
/// as "usage" with its quotes) after it, but as null_member_end's null members; any other place
/// where the key's first two bytes occur ends the run before that event. The prefix itself (one
/// line, the same rule) is checked once. Renaming: each event's prefix is written with `to` in
/// place of its last `cut` bytes (the model value, when prefix is model_value_finder::prefix()).
/// The result is byte for byte what splitting the run into events and appending each, renamed so,
/// would give.
std::size_t append_event_run(std::string& out, std::string_view events, std::string_view key,
                             std::string_view prefix = {}, std::size_t cut = 0, std::string_view to = {});

}  // namespace tollgate::protocol
