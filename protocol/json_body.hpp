// The request body as the gateway sees it: only the fields routing needs are read, and the bytes
// are kept. Edits touch only the top-level value they name; everything else stays byte for byte.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/container/small_vector.hpp>

namespace tollgate::protocol {

/// Where the top-level values the gateway may rewrite lie in a parsed body, as byte offsets.
struct body_layout {
  /// Spans of a key's values: a body names each key once, as a rule (no allocation then).
  using spans = boost::container::small_vector<std::pair<std::size_t, std::size_t>, 1>;
  spans model;           ///< every "model" value
  spans stream_options;  ///< every "stream_options" value
  std::size_t append_at = 0;  ///< where a new member goes: after the last value, or after '{'
  bool has_members = false;
};

struct request_fields {
  std::string model;                      ///< decoded top-level "model"
  bool stream = false;                    ///< top-level "stream" (false when absent)
  std::optional<std::int64_t> max_tokens; ///< "max_tokens", else "max_completion_tokens"
  std::string stream_options;             ///< the raw JSON of "stream_options", empty when absent
  bool include_usage = false;             ///< stream_options.include_usage is true
  body_layout layout;                     ///< for edit_body, without scanning the body again
};

/// The deepest nesting of objects and arrays a request body may have (the top-level object is
/// level 1). Anything that walks a body as a tree (nlohmann's dump and copies recurse) stays far
/// from the end of a worker's stack; real requests, JSON schemas of tools included, nest far less.
/// serde_json's default recursion limit is the same.
inline constexpr std::size_t max_json_depth = 128;

/// The vector instructions the scan of a body's strings uses on x86-64: by default the widest the
/// CPU has (AVX-512 with VBMI, else AVX2, else SSE2). Lowered, the scan takes the narrower loops
/// (tests check each path on one machine; benchmarks compare them in one run); it is never raised
/// past what the CPU has. Elsewhere every scan is `sse2`, the portable path.
enum class scan_vectors { sse2, avx2, avx512 };
/// What the CPU allows.
scan_vectors widest_scan_vectors();
/// What the scan uses now.
scan_vectors scan_vectors_used();
/// Uses `v`, or the widest the CPU allows where that is narrower; returns what is used.
scan_vectors use_scan_vectors(scan_vectors v);

struct body_parse_result {
  std::optional<request_fields> fields;  ///< set on success
  std::string error;                     ///< OpenAI-style message on failure
  std::string error_param;               ///< the offending field ("model", "stream"), may be empty
};

/// Checks that body is a valid JSON object and reads the routing fields.
/// model_required: false for endpoints that may omit it (none today, kept for symmetry).
body_parse_result parse_request_body(std::string_view body, bool model_required = true);

/// Returns body with every top-level `key`'s value replaced by json_value (a JSON text), or with
/// `"key":json_value` appended as the object's last member when absent. Precondition: body is a
/// valid JSON object (parse_request_body succeeded). Nested keys of the same name are untouched.
std::string set_top_level(std::string_view body, std::string_view key, std::string_view json_value);

/// body with its top-level "model" and "stream_options" values replaced by the given JSON texts
/// (every occurrence, as set_top_level does), each appended as the last member when absent; a
/// value left nullopt is not touched. One pass over the body, from the layout parse_request_body
/// found. Precondition: fields came from parse_request_body(body).
std::string edit_body(std::string_view body, const request_fields& fields, std::optional<std::string_view> model,
                      std::optional<std::string_view> stream_options);

/// One piece of an edited body: bytes of the original body (original), or an edited value or
/// appended members (a view into edit_body_pieces's model, stream_options or added).
struct body_piece {
  std::string_view text;
  bool original = false;
};

/// The pieces of an edited body. The usual edit (the model renamed, stream_options set) makes at
/// most seven, held without an allocation.
using body_pieces = boost::container::small_vector<body_piece, 8>;

/// edit_body without copying the body: the pieces that, joined in order, are edit_body's result.
/// No piece is empty. added holds the members appended at the end, if any: it must outlive the
/// pieces, as body, model and stream_options must.
body_pieces edit_body_pieces(std::string_view body, const request_fields& fields, std::optional<std::string_view> model,
                             std::optional<std::string_view> stream_options, std::string& added);

/// Reads named top-level members of a JSON object text in one pass, without building a tree:
/// values[i] becomes the raw JSON text of member keys[i] (the last of duplicates), or stays empty
/// when there is none. false (and every value empty) when text is not a valid JSON object.
/// Precondition: the keys are distinct and values.size() == keys.size().
bool top_level_values(std::string_view text, std::span<const std::string_view> keys, std::span<std::string_view> values);

/// top_level_values() for an object that a scan has accepted already, as part of a larger text:
/// the same values, found without checking the text again (a walk over its members that skips
/// strings and nested values by their delimiters). Used for objects inside a text that
/// top_level_values() accepted (an answer's "usage"), so that their bytes are checked once.
/// Precondition: object is a valid JSON object text (no whitespace around it), the keys are
/// distinct and values.size() == keys.size(). Outside it, values are unspecified but no byte outside object is
/// read.
void checked_object_values(std::string_view object, std::span<const std::string_view> keys,
                           std::span<std::string_view> values);

/// The text of a JSON string literal (quotes included) that top_level_values() gave, its escapes
/// decoded. Precondition: literal is a valid JSON string.
std::string json_string_text(std::string_view literal);

/// A chat completions stream chunk of the commonest kind, read without a tree: one choice whose
/// delta carries text (content, reasoning_content, or both) and nothing else the stream
/// translators act on (no tool calls, finish_reason, usage or error). Each text is its JSON string
/// literal, quotes included; empty when absent, null or "". nullopt for any other chunk, which the
/// caller reads whole.
struct chat_text_delta {
  std::string_view content;
  std::string_view reasoning;
};
std::optional<chat_text_delta> read_chat_text_delta(std::string_view data);

/// Appends a string literal that read_chat_text_delta() gave to out as json_quote() writes its
/// text: copied when it holds no escape, else decoded and written again; so a translation's
/// bytes are the same whichever way it read the chunk.
void append_literal_as_quoted(std::string& out, std::string_view literal);

/// true when no object or array in text nests deeper than limit levels. Only brackets outside
/// strings are counted; text need not be valid JSON. Iterative, for checking before a tree parse.
bool json_depth_within(std::string_view text, std::size_t limit);

/// Appends s to out as a JSON string literal (with quotes). Any bytes: one that starts no valid
/// UTF-8 sequence becomes U+FFFD, so the result is always valid JSON.
void append_json_string(std::string& out, std::string_view s);

/// The length of the UTF-8 sequence at s[i] (RFC 3629: no overlong forms, no surrogates, nothing
/// past U+10FFFF), or 0 when the bytes there are not one.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i);

/// Encodes s as a JSON string literal (with quotes), as append_json_string does.
std::string json_quote(std::string_view s);

/// Where key (a quoted name: `"` and at least one more byte) first occurs in text at or after
/// from, or npos. Looked for 16 bytes at a time (a quote and the key's next byte), so that a short
/// text such as an SSE event is searched in a few instructions a block: string::find stops at
/// every quote, glibc's memmem costs about 2.5 instructions a byte there.
std::size_t find_quoted(std::string_view text, std::string_view key, std::size_t from = 0);
/// Where a member whose key (quoted, as find_quoted looks for it) is at `at` in text ends when its
/// value is null: the offset past `null`, with spaces and tabs allowed around the colon (never a
/// line end); npos when text at `at` is not such a member. OpenAI's stream chunks each carry
/// `"usage":null` when usage is asked for, and only the last one a usage object.
std::size_t null_member_end(std::string_view text, std::size_t at, std::string_view key);
/// Whether every occurrence of key in text from `from` on is null_member_end's null member.
bool only_null_members(std::string_view text, std::string_view key, std::size_t from = 0);

/// In an answer's JSON text (a whole body, or one SSE event), the first `"model"` member whose
/// value is the string literal `from` (as json_quote writes it; whitespace around the colon
/// allowed) gets the literal `to` instead. false when there was none. Answers name the model up
/// front; a quote inside a string value is escaped, so the text `"model"` there cannot match.
bool rename_model(std::string& text, std::string_view from, std::string_view to);
/// Where rename_model would put `to` (the offset of `from` in text), or npos.
std::size_t find_model_value(std::string_view text, std::string_view from);
/// Appends text to out with rename_model's change made on the way (no copy of text first).
/// false, appending nothing, when there was none to make.
bool append_renamed(std::string& out, std::string_view text, std::string_view from, std::string_view to);

/// find_model_value over the events of one stream, which begin with the same bytes (an id, the
/// object, the time, then the model): an event that begins with the bytes up to and including the
/// last one's model value has its value at the same offset, found without a search. The answer
/// depends only on those bytes, so it is find_model_value's, exactly.
class model_value_finder {
 public:
  std::size_t find(std::string_view text, std::string_view from);
  /// append_renamed with find().
  bool append_renamed(std::string& out, std::string_view text, std::string_view from, std::string_view to);
  /// The last event's bytes up to and including its model value; empty when it had none.
  std::string_view prefix() const { return at_ == std::string_view::npos ? std::string_view() : prefix_; }

 private:
  std::string prefix_;  ///< the last event's bytes up to the end of its model value
  std::size_t at_ = std::string_view::npos;
};

}  // namespace tollgate::protocol
