#include "gateway/json_body.hpp"

#include <nlohmann/json.hpp>

#include <charconv>
#include <vector>

namespace tollgate::gateway {

namespace {

using json = nlohmann::json;

/// A top-level member of an object known to be valid JSON: its decoded key and value span.
struct member {
  std::string key;
  std::size_t value_begin;
  std::size_t value_end;
};

class top_level_scanner {
 public:
  explicit top_level_scanner(std::string_view text) : s_(text) {}

  /// Precondition: s_ is a valid JSON object (checked by nlohmann first).
  std::vector<member> members() {
    std::vector<member> out;
    skip_ws();
    ++i_;  // '{'
    for (;;) {
      skip_ws();
      if (s_[i_] == '}') break;
      const std::size_t key_begin = i_;
      skip_string();
      std::string key = decode_key(key_begin, i_);
      skip_ws();
      ++i_;  // ':'
      skip_ws();
      const std::size_t vb = i_;
      skip_value();
      out.push_back(member{std::move(key), vb, i_});
      skip_ws();
      if (s_[i_] == ',') ++i_;
    }
    closing_ = i_;
    return out;
  }

  std::size_t closing_brace() const { return closing_; }

 private:
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  void skip_string() {
    ++i_;  // opening quote
    while (s_[i_] != '"') i_ += s_[i_] == '\\' ? 2 : 1;
    ++i_;
  }

  void skip_value() {
    if (s_[i_] == '"') {
      skip_string();
      return;
    }
    if (s_[i_] == '{' || s_[i_] == '[') {
      int depth = 0;
      for (;;) {
        const char c = s_[i_];
        if (c == '"') {
          skip_string();
          continue;
        }
        if (c == '{' || c == '[') {
          ++depth;
        } else if ((c == '}' || c == ']') && --depth == 0) {
          ++i_;
          return;
        }
        ++i_;
      }
    }
    // A number, true, false or null: runs until a delimiter.
    while (i_ < s_.size() && s_[i_] != ',' && s_[i_] != '}' && s_[i_] != ']' && s_[i_] != ' ' && s_[i_] != '\t' &&
           s_[i_] != '\n' && s_[i_] != '\r')
      ++i_;
  }

  std::string decode_key(std::size_t begin, std::size_t end) const {
    const std::string_view raw = s_.substr(begin, end - begin);
    if (raw.find('\\') == std::string_view::npos) return std::string(raw.substr(1, raw.size() - 2));
    return json::parse(raw).get<std::string>();  // rare: escapes in a key
  }

  std::string_view s_;
  std::size_t i_ = 0;
  std::size_t closing_ = 0;
};

body_parse_result fail(std::string message, std::string param = {}) {
  body_parse_result r;
  r.error = std::move(message);
  r.error_param = std::move(param);
  return r;
}

}  // namespace

body_parse_result parse_request_body(std::string_view body, bool model_required) {
  if (!json::accept(body)) {
    return fail(
        "We could not parse the JSON body of your request. The body must be valid JSON (UTF-8) "
        "with the request fields at the top level.");
  }
  std::size_t first = body.find_first_not_of(" \t\r\n");
  if (body[first] != '{') return fail("The request body must be a JSON object.");

  top_level_scanner scanner(body);
  request_fields fields;
  bool have_model = false;
  std::optional<std::string_view> max_tokens, max_completion_tokens;
  for (const member& m : scanner.members()) {
    const std::string_view value = body.substr(m.value_begin, m.value_end - m.value_begin);
    if (m.key == "model") {
      if (value.empty() || value.front() != '"') return fail("'model' must be a string.", "model");
      fields.model = json::parse(value).get<std::string>();
      have_model = true;
    } else if (m.key == "stream") {
      if (value == "true") {
        fields.stream = true;
      } else if (value == "false" || value == "null") {
        fields.stream = false;
      } else {
        return fail("'stream' must be a boolean.", "stream");
      }
    } else if (m.key == "stream_options") {
      fields.stream_options = std::string(value);
      if (value.front() == '{') {
        const json so = json::parse(value);
        fields.include_usage = so.value("include_usage", false) == true;
      }
    } else if (m.key == "max_tokens") {
      max_tokens = value;
    } else if (m.key == "max_completion_tokens") {
      max_completion_tokens = value;
    }
  }
  if (model_required && (!have_model || fields.model.empty())) {
    return fail("You must provide a model parameter.", "model");
  }
  for (auto [text, name] : {std::pair{max_tokens, "max_tokens"}, std::pair{max_completion_tokens, "max_completion_tokens"}}) {
    if (!text || *text == "null") continue;
    std::int64_t v = 0;
    auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
    if (ec != std::errc() || end != text->data() + text->size() || v < 0) {
      return fail(std::string("'") + name + "' must be a non-negative integer.", name);
    }
    if (!fields.max_tokens || std::string_view(name) == "max_tokens") fields.max_tokens = v;
  }
  body_parse_result r;
  r.fields = std::move(fields);
  return r;
}

std::string set_top_level(std::string_view body, std::string_view key, std::string_view json_value) {
  top_level_scanner scanner(body);
  const auto members = scanner.members();
  std::string out;
  out.reserve(body.size() + json_value.size() + key.size() + 4);
  std::size_t copied = 0;
  bool found = false;
  for (const member& m : members) {
    if (m.key != key) continue;
    out.append(body.substr(copied, m.value_begin - copied));
    out.append(json_value);
    copied = m.value_end;
    found = true;
  }
  if (found) {
    out.append(body.substr(copied));
    return out;
  }
  // Append as the last member, just before the closing brace.
  const std::size_t close = scanner.closing_brace();
  out.append(body.substr(0, close));
  if (!members.empty()) out.push_back(',');
  out.append(json_quote(key));
  out.push_back(':');
  out.append(json_value);
  out.append(body.substr(close));
  return out;
}

std::string json_quote(std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out.push_back(hex[c >> 4]);
          out.push_back(hex[c & 0xf]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace tollgate::gateway
