#include "protocol/json_body.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <vector>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "protocol/json_scanner.hpp"

namespace tollgate::protocol {

namespace detail {
std::atomic<scan_vectors> scan_vectors_now{cpu_scan_vectors()};
}  // namespace detail

scan_vectors widest_scan_vectors() {
  static const scan_vectors widest = cpu_scan_vectors();
  return widest;
}

scan_vectors scan_vectors_used() { return detail::scan_vectors_now.load(std::memory_order_relaxed); }

scan_vectors use_scan_vectors(scan_vectors v) {
  const scan_vectors used = std::min(v, widest_scan_vectors());
  detail::scan_vectors_now.store(used, std::memory_order_relaxed);
  return used;
}

std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto byte = [&](std::size_t k) -> unsigned { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0; };
  const auto in = [](unsigned b, unsigned lo, unsigned hi) { return b >= lo && b <= hi; };
  const unsigned c = byte(0);
  std::size_t len = 0;
  unsigned lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (in(c, 0xC2, 0xDF)) {
    len = 2;
  } else if (in(c, 0xE0, 0xEF)) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (in(c, 0xF0, 0xF4)) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (!in(byte(1), lo, hi)) return 0;
  for (std::size_t k = 2; k < len; ++k) {
    if (!in(byte(k), 0x80, 0xBF)) return 0;
  }
  return len;
}

namespace {

/// How OpenAI names a value's type in its messages ("but got an integer instead").
const char* type_name(std::string_view value) {
  switch (value.front()) {
    case '{': return "an object";
    case '[': return "an array";
    case '"': return "a string";
    case 't':
    case 'f': return "a boolean";
    case 'n': return "null";
    default: return value.find_first_of(".eE") == std::string_view::npos ? "an integer" : "a decimal number";
  }
}

body_parse_result failure(std::string message, std::string param = {}) {
  body_parse_result r;
  r.error = std::move(message);
  r.error_param = std::move(param);
  return r;
}

/// Reads a token count ("max_tokens" and the like). nullopt when it is fine; into is left alone
/// for null.
std::optional<body_parse_result> read_count(std::string_view value, const std::string& name,
                                            std::optional<std::int64_t>& into) {
  if (value == "null") return std::nullopt;
  if (std::string_view(type_name(value)) != "an integer") {
    return failure("Invalid type for '" + name + "': expected an integer, but got " + type_name(value) + " instead.",
                   name);
  }
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  // The value is not echoed when out of range: it may be any number of digits long.
  if (ec == std::errc::result_out_of_range && value.front() != '-') {
    return failure(
        "Invalid '" + name + "': integer above maximum value. Expected a value <= " + std::to_string(INT64_MAX) + ".",
        name);
  }
  if (ec != std::errc() || v < 0) {
    return failure("Invalid '" + name + "': integer below minimum value. Expected a value >= 0" +
                       (ec == std::errc() ? ", but got " + std::string(value) + " instead." : "."),
                   name);
  }
  into = v;
  return std::nullopt;
}

/// parse_request_body's reading into fields; the failure, if any.
std::optional<body_parse_result> read_request_body(std::string_view body, bool model_required, request_fields& fields) {
  json_scanner scanner(body);
  if (!scanner.scan()) {
    if (scanner.too_deep()) {
      return failure("The JSON body of your request nests objects and arrays deeper than " +
                     std::to_string(max_json_depth) + " levels.");
    }
    return failure(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
        "library correctly. The API expects a JSON payload, but what was sent was not valid JSON.)");
  }
  if (!scanner.is_object()) {
    return failure(std::string("The request body must be a JSON object, but got ") + type_name(scanner.value()) +
                   " instead.");
  }

  // The last of duplicate keys wins, as in nlohmann and most parsers upstream.
  std::optional<std::string_view> model, stream, max_tokens, max_completion_tokens, stream_options;
  body_layout& layout = fields.layout;
  std::string scratch;
  for (const member& m : scanner.members()) {
    const std::string_view key = member_key(body, m, scratch);
    const std::string_view value = body.substr(m.value_begin, m.value_end - m.value_begin);
    if (key == "model") {
      model = value;
      layout.model.emplace_back(m.value_begin, m.value_end);
    } else if (key == "stream") {
      stream = value;
    } else if (key == "max_tokens") {
      max_tokens = value;
    } else if (key == "max_completion_tokens") {
      max_completion_tokens = value;
    } else if (key == "stream_options") {
      stream_options = value;
      layout.stream_options.emplace_back(m.value_begin, m.value_end);
    }
  }
  const auto& all = scanner.members();
  layout.has_members = !all.empty();
  layout.append_at = all.empty() ? scanner.open_brace() + 1 : all.back().value_end;

  // OpenAI's schema makes every optional field nullable: null reads as absent throughout.
  if (model && *model != "null") {
    if (model->front() != '"') {
      return failure(
          std::string("Invalid type for 'model': expected a string, but got ") + type_name(*model) + " instead.",
          "model");
    }
    fields.model = decode_string(*model);
    if (fields.model.empty()) {
      return failure(
          "Invalid 'model': empty string. Expected a string with minimum length 1, but got an empty string "
          "instead.",
          "model");
    }
  } else if (model_required) {
    return failure("you must provide a model parameter", "model");
  }

  if (stream && *stream != "null") {
    if (*stream != "true" && *stream != "false") {
      return failure(
          std::string("Invalid type for 'stream': expected a boolean, but got ") + type_name(*stream) + " instead.",
          "stream");
    }
    fields.stream = *stream == "true";
  }

  // Both are checked; "max_tokens" is the one read when both are given.
  std::optional<std::int64_t> completion;
  if (max_completion_tokens) {
    if (auto bad = read_count(*max_completion_tokens, "max_completion_tokens", completion)) return std::move(*bad);
  }
  if (max_tokens) {
    if (auto bad = read_count(*max_tokens, "max_tokens", fields.max_tokens)) return std::move(*bad);
  }
  if (!fields.max_tokens) fields.max_tokens = completion;

  // null stays empty, so that a caller asking for usage writes a fresh object over it.
  if (stream_options && *stream_options != "null") {
    fields.stream_options = std::string(*stream_options);
    if (stream_options->front() == '{') {
      // Valid: it is part of the body that was scanned.
      static constexpr std::array<std::string_view, 1> options_keys{"include_usage"};
      std::array<std::string_view, 1> include_usage{};
      checked_object_values(*stream_options, options_keys, include_usage);
      fields.include_usage = include_usage[0] == "true";
    }
  }

  return std::nullopt;
}

}  // namespace

body_parse_result parse_request_body(std::string_view body, bool model_required) {
  // Read in place, and one return of one object: a result's move copies its strings and spans.
  body_parse_result r;
  if (auto bad = read_request_body(body, model_required, r.fields.emplace())) r = std::move(*bad);
  return r;
}

body_pieces edit_body_pieces(std::string_view body, const request_fields& fields, std::optional<std::string_view> model,
                             std::optional<std::string_view> stream_options, std::string& added) {
  struct edit {
    std::size_t begin, end;
    std::string_view text;
  };
  // A body names each key once, as a rule: a duplicate or two still fit without an allocation.
  boost::container::small_vector<edit, 4> edits;
  added.clear();  // members the body lacks, added after its last value
  auto plan = [&](std::string_view key, const body_layout::spans& spans,
                  std::optional<std::string_view> value) {
    if (!value) return;
    for (const auto& [b, e] : spans) edits.push_back({b, e, *value});
    if (spans.empty()) {
      if (fields.layout.has_members || !added.empty()) added.push_back(',');
      append_json_string(added, key);
      added.push_back(':');
      added.append(*value);
    }
  };
  plan("model", fields.layout.model, model);
  plan("stream_options", fields.layout.stream_options, stream_options);
  std::sort(edits.begin(), edits.end(), [](const edit& a, const edit& b) { return a.begin < b.begin; });

  body_pieces out;
  out.reserve(2 * edits.size() + 3);
  auto piece = [&](std::string_view text, bool original) {
    if (!text.empty()) out.push_back({text, original});
  };
  std::size_t copied = 0;
  bool added_done = added.empty();
  for (const edit& e : edits) {
    if (!added_done && fields.layout.append_at <= e.begin) {
      piece(body.substr(copied, fields.layout.append_at - copied), true);
      piece(added, false);
      copied = fields.layout.append_at;
      added_done = true;
    }
    piece(body.substr(copied, e.begin - copied), true);
    piece(e.text, false);
    copied = e.end;
  }
  if (!added_done) {
    piece(body.substr(copied, fields.layout.append_at - copied), true);
    piece(added, false);
    copied = fields.layout.append_at;
  }
  piece(body.substr(copied), true);
  return out;
}

std::string edit_body(std::string_view body, const request_fields& fields, std::optional<std::string_view> model,
                      std::optional<std::string_view> stream_options) {
  std::string added;
  const auto pieces = edit_body_pieces(body, fields, model, stream_options, added);
  std::size_t size = 0;
  for (const body_piece& p : pieces) size += p.text.size();
  std::string out;
  out.reserve(size);
  for (const body_piece& p : pieces) out.append(p.text);
  return out;
}

std::string set_top_level(std::string_view body, std::string_view key, std::string_view json_value) {
  json_scanner scanner(body);
  // Outside the precondition: leave the body as it is rather than guess at its structure.
  if (!scanner.scan() || !scanner.is_object()) return std::string(body);

  std::string out;
  out.reserve(body.size() + key.size() + json_value.size() + 4);
  std::string scratch;
  std::size_t copied = 0;
  bool found = false;
  for (const member& m : scanner.members()) {
    if (member_key(body, m, scratch) != key) continue;
    out.append(body.substr(copied, m.value_begin - copied));
    out.append(json_value);
    copied = m.value_end;
    found = true;
  }
  if (!found) {
    // Absent: added right after the last value (or the '{'), so that whatever whitespace the
    // client put before the '}' still ends the object.
    const auto& members = scanner.members();
    const std::size_t at = members.empty() ? scanner.open_brace() + 1 : members.back().value_end;
    out.append(body.substr(0, at));
    if (!members.empty()) out.push_back(',');
    out.append(json_quote(key));
    out.push_back(':');
    out.append(json_value);
    copied = at;
  }
  out.append(body.substr(copied));
  return out;
}

bool json_depth_within(std::string_view text, std::size_t limit) {
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > limit) return false;
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
  }
  return true;
}

namespace {

/// Where key is among names (distinct), or names.size(). Most keys match none of the names and
/// differ from each in length: the lengths are compared first, the bytes only where a length and
/// the first byte agree, and the look ends at the first match.
[[gnu::always_inline]] inline std::size_t name_index(std::string_view key, std::span<const std::string_view> names) {
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string_view n = names[i];
    if (n.size() == key.size() && (n.empty() || (n.front() == key.front() && n == key))) return i;
  }
  return names.size();
}

}  // namespace

bool top_level_values(std::string_view text, std::span<const std::string_view> keys, std::span<std::string_view> values) {
  for (auto& v : values) v = {};
  json_scanner scanner(text);
  if (!scanner.scan() || !scanner.is_object()) return false;
  std::string scratch;
  for (const member& m : scanner.members()) {
    const std::size_t i = name_index(member_key(text, m, scratch), keys);
    if (i != keys.size()) values[i] = text.substr(m.value_begin, m.value_end - m.value_begin);
  }
  return true;
}

namespace {

/// Past the string literal whose opening quote is at p, in valid JSON; sets escaped when it holds
/// an escape. Stops at end.
const char* past_checked_string(const char* p, const char* end, bool& escaped) {
  ++p;
  for (;;) {
#ifdef __SSE2__
    // A quote or a backslash, 16 bytes at a time (the other bytes need no look: they were checked).
    while (end - p >= 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const auto mask = static_cast<unsigned>(
          _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')))));
      if (mask != 0) {
        p += __builtin_ctz(mask);
        break;
      }
      p += 16;
    }
#endif
    while (p < end && *p != '"' && *p != '\\') ++p;
    if (p >= end) return end;
    if (*p == '"') return p + 1;
    escaped = true;
    p += 2;  // the backslash and the byte it escapes (the rest of a \uXXXX is plain)
  }
}

bool json_space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

[[gnu::always_inline]] inline const char* past_space(const char* p, const char* end) {
  // Compact JSON has none: one compare finds that out (every JSON space is below '!').
  if (p < end && static_cast<unsigned char>(*p) > ' ') return p;
  while (p < end && json_space(*p)) ++p;
  return p;
}

/// The bytes that end a number or a literal in valid JSON: a delimiter or whitespace.
constexpr std::array<bool, 256> ends_checked_scalar = [] {
  std::array<bool, 256> t{};
  for (const char c : {',', '}', ']', ' ', '\n', '\r', '\t'}) t[static_cast<unsigned char>(c)] = true;
  return t;
}();

/// Past the JSON value at p, in valid JSON. Stops at end.
const char* past_checked_value(const char* p, const char* end) {
  bool escaped = false;
  if (*p == '"') return past_checked_string(p, end, escaped);
  if (*p == '{' || *p == '[') {
    std::size_t depth = 0;
    while (p < end) {
      const char c = *p;
      if (c == '"') {
        p = past_checked_string(p, end, escaped);
        continue;
      }
      if (c == '{' || c == '[') {
        ++depth;
      } else if ((c == '}' || c == ']') && --depth == 0) {
        return p + 1;
      }
      ++p;
    }
    return end;
  }
  // A number or a literal: it ends where a delimiter or whitespace does.
  while (p < end && !ends_checked_scalar[static_cast<unsigned char>(*p)]) ++p;
  return p;
}

}  // namespace

void checked_object_values(std::string_view object, std::span<const std::string_view> keys,
                           std::span<std::string_view> values) {
  for (auto& v : values) v = {};
  const char* const begin = object.data();
  const char* const end = begin + object.size();
  const char* p = past_space(begin + 1, end);  // past the '{'
  std::string scratch;
  while (p < end && *p == '"') {
    bool escaped = false;
    const char* const key_end = past_checked_string(p, end, escaped);
    if (key_end == end) break;  // a valid object goes on past its keys
    std::string_view key(p + 1, static_cast<std::size_t>(key_end - p) - 2);
    if (escaped) {
      scratch = decode_string(std::string_view(p, static_cast<std::size_t>(key_end - p)));
      key = scratch;
    }
    p = past_space(key_end, end);
    if (p >= end) break;
    p = past_space(p + 1, end);  // past the ':'
    if (p >= end) break;
    const char* const value_end = past_checked_value(p, end);
    if (const std::size_t i = name_index(key, keys); i != keys.size()) {
      values[i] = std::string_view(p, static_cast<std::size_t>(value_end - p));
    }
    p = past_space(value_end, end);
    if (p >= end || *p != ',') break;  // the '}'
    p = past_space(p + 1, end);
  }
}

std::string json_string_text(std::string_view literal) { return decode_string(literal); }

std::optional<chat_text_delta> read_chat_text_delta(std::string_view data) {
  const auto absent = [](std::string_view v) { return v.empty() || v == "null"; };
  const auto trim = [](std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\n' || v.front() == '\r' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\n' || v.back() == '\r' || v.back() == '\t')) v.remove_suffix(1);
    return v;
  };
  static constexpr std::array<std::string_view, 3> top_keys{"choices", "usage", "error"};
  std::array<std::string_view, 3> top{};
  if (!top_level_values(data, top_keys, top) || !absent(top[1]) || !absent(top[2])) return std::nullopt;
  const std::string_view choices = top[0];
  if (choices.size() < 2 || choices.front() != '[') return std::nullopt;
  // One choice: the array's inside is one object (two would not scan as one value).
  const std::string_view choice = trim(choices.substr(1, choices.size() - 2));
  if (choice.empty() || choice.front() != '{') return std::nullopt;
  static constexpr std::array<std::string_view, 2> choice_keys{"delta", "finish_reason"};
  std::array<std::string_view, 2> c{};
  if (!top_level_values(choice, choice_keys, c) || !absent(c[1]) || c[0].empty() || c[0].front() != '{') return std::nullopt;
  static constexpr std::array<std::string_view, 3> delta_keys{"content", "reasoning_content", "tool_calls"};
  std::array<std::string_view, 3> d{};
  if (!top_level_values(c[0], delta_keys, d) || !absent(d[2])) return std::nullopt;
  chat_text_delta out;
  for (const auto& [value, into] : {std::pair{d[0], &out.content}, std::pair{d[1], &out.reasoning}}) {
    if (absent(value) || value == "\"\"") continue;
    if (value.front() != '"') return std::nullopt;
    *into = value;
  }
  return out;
}

void append_literal_as_quoted(std::string& out, std::string_view literal) {
  if (literal.find('\\') == std::string_view::npos) {
    out.append(literal);  // valid UTF-8 with no control byte (the scanner checked): as json_quote writes it
  } else {
    append_json_string(out, decode_string(literal));
  }
}

void append_json_string(std::string& out, std::string_view s) {
  // Most strings written here (model names, keys, ids) are printable ASCII with nothing to
  // escape: found so in one pass and written in one step.
  if (std::all_of(s.begin(), s.end(), [](char c) { return plain_string_byte[static_cast<unsigned char>(c)]; })) {
    const std::size_t at = out.size();
    out.resize(at + s.size() + 2);
    char* const p = out.data() + at;
    p[0] = '"';
    if (!s.empty()) std::memcpy(p + 1, s.data(), s.size());
    p[s.size() + 1] = '"';
    return;
  }
  static constexpr char hex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t run = 0;  // start of the bytes not yet copied
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    std::size_t len = 1;
    if (c >= 0x80) {
      len = utf8_sequence_length(s, i);
      if (len > 0) {  // valid UTF-8 is copied as it is
        i += len;
        continue;
      }
      len = 1;
    }
    out.append(s.substr(run, i - run));
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\b': out.append("\\b"); break;
      case '\f': out.append("\\f"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      default:
        if (c >= 0x80) {
          out.append("\xEF\xBF\xBD");  // U+FFFD for a byte that starts no valid sequence
        } else {
          out.append("\\u00");
          out.push_back(hex[c >> 4]);
          out.push_back(hex[c & 0xF]);
        }
    }
    i += len;
    run = i;
  }
  out.append(s.substr(run));
  out.push_back('"');
}

std::string json_quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  append_json_string(out, s);
  return out;
}

std::size_t find_quoted(std::string_view text, std::string_view key, std::size_t from) {
  // A long text (a whole answer) has its quotes far apart, where memchr (behind string::find)
  // goes faster than the pairs compared here; events are short and full of quotes.
  if (text.size() > from + 4096) return text.find(key, from);
  const char* const p = text.data();
  const std::size_t n = text.size();
  std::size_t i = from;
#ifdef __SSE2__
  const __m128i quote = _mm_set1_epi8('"');
  const __m128i second = _mm_set1_epi8(key[1]);
  for (; i + 17 <= n; i += 16) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 1));
    auto m = static_cast<unsigned>(_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(a, quote), _mm_cmpeq_epi8(b, second))));
    while (m != 0) {
      const std::size_t at = i + static_cast<std::size_t>(__builtin_ctz(m));
      if (text.substr(at, key.size()) == key) return at;
      m &= m - 1;
    }
  }
#endif
  for (; i + key.size() <= n; ++i) {
    if (p[i] == '"' && text.substr(i, key.size()) == key) return i;
  }
  return std::string_view::npos;
}

std::size_t null_member_end(std::string_view text, std::size_t at, std::string_view key) {
  if (at > text.size() || text.compare(at, key.size(), key) != 0) return std::string_view::npos;
  std::size_t i = at + key.size();
  const auto blanks = [&] {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
  };
  blanks();
  if (i >= text.size() || text[i] != ':') return std::string_view::npos;
  ++i;
  blanks();
  if (text.compare(i, 4, "null") != 0) return std::string_view::npos;
  return i + 4;
}

bool only_null_members(std::string_view text, std::string_view key, std::size_t from) {
  for (std::size_t at = find_quoted(text, key, from); at != std::string_view::npos; at = find_quoted(text, key, at)) {
    at = null_member_end(text, at, key);
    if (at == std::string_view::npos) return false;
  }
  return true;
}

std::size_t find_model_value(std::string_view text, std::string_view from) {
  constexpr std::string_view key = "\"model\"";
  for (std::size_t at = find_quoted(text, key); at != std::string_view::npos; at = find_quoted(text, key, at + key.size())) {
    std::size_t v = at + key.size();
    while (v < text.size() && (text[v] == ' ' || text[v] == '\t' || text[v] == '\n' || text[v] == '\r')) ++v;
    if (v >= text.size() || text[v] != ':') continue;
    ++v;
    while (v < text.size() && (text[v] == ' ' || text[v] == '\t' || text[v] == '\n' || text[v] == '\r')) ++v;
    if (text.compare(v, from.size(), from) != 0) return std::string_view::npos;  // the model member, another value
    return v;
  }
  return std::string_view::npos;
}

bool rename_model(std::string& text, std::string_view from, std::string_view to) {
  const std::size_t v = find_model_value(text, from);
  if (v == std::string_view::npos) return false;
  text.replace(v, from.size(), to);
  return true;
}

namespace {

/// text appended to out with `to` in place of `from` at v; false, appending nothing, when v is npos.
bool append_replaced(std::string& out, std::string_view text, std::size_t v, std::string_view from, std::string_view to) {
  if (v == std::string_view::npos) return false;
  out.append(text.substr(0, v)).append(to).append(text.substr(v + from.size()));
  return true;
}

}  // namespace

bool append_renamed(std::string& out, std::string_view text, std::string_view from, std::string_view to) {
  return append_replaced(out, text, find_model_value(text, from), from, to);
}

std::size_t model_value_finder::find(std::string_view text, std::string_view from) {
  if (at_ != std::string_view::npos && prefix_.size() == at_ + from.size() && text.size() >= prefix_.size() &&
      std::memcmp(text.data(), prefix_.data(), prefix_.size()) == 0)
    return at_;
  at_ = find_model_value(text, from);
  if (at_ != std::string_view::npos) prefix_.assign(text.substr(0, at_ + from.size()));
  return at_;
}

bool model_value_finder::append_renamed(std::string& out, std::string_view text, std::string_view from,
                                        std::string_view to) {
  return append_replaced(out, text, find(text, from), from, to);
}

}  // namespace tollgate::protocol
