#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "protocol/json_body.hpp"

using namespace tollgate::protocol;
using nlohmann::json;

namespace {

bool refused_as_invalid_json(const body_parse_result& r) {
  return !r.fields && r.error.starts_with("We could not parse the JSON body of your request.");
}

/// The reference for validity. nlohmann takes a NUL byte between tokens for the end of the input
/// and ignores what follows ("{}\0junk" passes); the gateway refuses any raw NUL, as RFC 8259 does.
bool reference_accepts(std::string_view text) {
  return text.find('\0') == std::string_view::npos && json::accept(text);
}

/// Random JSON texts, written by hand rather than by nlohmann so that they carry what a client
/// may send: odd whitespace, escapes, raw UTF-8, duplicate keys, numbers in every form.
class json_maker {
 public:
  explicit json_maker(std::uint32_t seed) : rng_(seed) {}

  std::string value(int depth) {
    switch (pick(depth > 0 ? 7 : 5)) {
      case 0: return string();
      case 1: return number();
      case 2: return pick_of({"true", "false"});
      case 3: return "null";
      case 4: return string();
      case 5: return object(depth - 1, {"a", "model", "stream", "", "k\\u00e9y"});
      default: {
        std::string out = "[" + ws();
        const int n = pick(4);
        for (int k = 0; k < n; ++k) out += (k ? "," + ws() : "") + value(depth - 1) + ws();
        return out + "]";
      }
    }
  }

  std::string object(int depth, const std::vector<std::string>& keys) {
    std::string out = "{" + ws();
    const int n = pick(6);
    for (int k = 0; k < n; ++k) {
      out += (k ? "," + ws() : "") + "\"" + keys[pick(static_cast<int>(keys.size()))] + "\"" + ws() + ":" + ws() +
             value(depth) + ws();
    }
    return out + "}";
  }

  std::string string() {
    static const std::vector<std::string> pieces = {"a",
                                                    "model",
                                                    " ",
                                                    "\\n",
                                                    "\\\"",
                                                    "\\\\",
                                                    "\\/",
                                                    "\\u00e9",
                                                    "\\u0000",
                                                    "\\ud83d\\ude00",
                                                    "\\uD834\\uDD1E",
                                                    "\xe4\xbd\xa0\xe5\xa5\xbd",
                                                    "\xf0\x9f\x98\x80",
                                                    "\xc3\xa9",
                                                    "}",
                                                    "]",
                                                    ",",
                                                    ":",
                                                    "{\\\"model\\\":1}"};
    std::string out = "\"";
    const int n = pick(5);
    for (int k = 0; k < n; ++k) out += pieces[pick(static_cast<int>(pieces.size()))];
    return out + "\"";
  }

  std::string number() {
    return pick_of({"0",
                    "-0",
                    "7",
                    "64",
                    "-12",
                    "3.25",
                    "-0.5",
                    "1e5",
                    "1E+2",
                    "2.5e-3",
                    "0.0",
                    "9223372036854775807",
                    "9223372036854775808",
                    "18446744073709551616",
                    "123456789012345678901234567890",
                    "1e308",
                    "1e309",
                    "-1e400",
                    "1e-400",
                    "1.7976931348623157e308",
                    "1.7976931348623159e308"});
  }

  std::string ws() { return pick_of({"", "", "", " ", "\n  ", "\t", "\r\n"}); }

  /// One random edit: most keep the text valid-looking, and the bytes come from the places
  /// where parsers disagree.
  std::string mutate(std::string s) {
    static const std::string bytes =
        std::string("\"\\{}[],:0-.eEu+ntf \n\x01\x1f\x7f\x80\xbf\xc0\xc1\xc3\xe0\xe4\xed\xf0\xf4\xf5\xff") + '\0';
    const auto at = [&] { return static_cast<std::size_t>(pick(static_cast<int>(s.size()) + 1)); };
    switch (pick(5)) {
      case 0:
        if (!s.empty()) s.erase(std::min(at(), s.size() - 1), 1);
        break;
      case 1: s.insert(at(), 1, bytes[pick(static_cast<int>(bytes.size()))]); break;
      case 2:
        if (!s.empty()) s[std::min(at(), s.size() - 1)] = bytes[pick(static_cast<int>(bytes.size()))];
        break;
      case 3: s.resize(at()); break;
      default: {
        const std::size_t from = at();
        s.insert(at(), s.substr(from, 3));
      }
    }
    return s;
  }

  int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
  std::string pick_of(std::initializer_list<const char*> options) {
    return *(options.begin() + pick(static_cast<int>(options.size())));
  }

 private:
  std::mt19937 rng_;
};

/// The scan's vector widths this CPU has, narrowest first, each named: a test case that takes
/// one with GENERATE runs once with each (on a CPU without AVX-512, without those loops; the
/// machines CI and the benchmarks run on have it).
std::vector<scan_vectors> scan_widths() {
  std::vector<scan_vectors> widths;
  for (const auto v : {scan_vectors::sse2, scan_vectors::avx2, scan_vectors::avx512}) {
    if (v <= widest_scan_vectors()) widths.push_back(v);
  }
  return widths;
}

const char* width_name(scan_vectors v) {
  return v == scan_vectors::sse2 ? "sse2" : v == scan_vectors::avx2 ? "avx2" : "avx512";
}

/// Uses one width for the life of the guard, then the widest again.
class scan_width_in_use {
 public:
  explicit scan_width_in_use(scan_vectors v) { REQUIRE(use_scan_vectors(v) == v); }
  ~scan_width_in_use() { use_scan_vectors(widest_scan_vectors()); }
  scan_width_in_use(const scan_width_in_use&) = delete;
  scan_width_in_use& operator=(const scan_width_in_use&) = delete;
};

}  // namespace

TEST_CASE("routing fields are read from the top level only", "[json_body]") {
  const auto r = parse_request_body(
      R"({"messages":[{"role":"user","content":"x","model":"nested","stream":"no"}],)"
      R"("tools":[{"type":"function","function":{"name":"f","parameters":{"model":{"type":"string"},"max_tokens":{}}}}],)"
      R"("model":"deepseek-chat","stream":true,"max_tokens":64})");
  REQUIRE(r.fields);
  CHECK(r.fields->model == "deepseek-chat");
  CHECK(r.fields->stream);
  CHECK(r.fields->max_tokens == 64);
  CHECK(r.fields->stream_options.empty());
  CHECK_FALSE(r.fields->include_usage);
  CHECK(r.error.empty());
}

TEST_CASE("absent and null fields take their defaults", "[json_body]") {
  auto r = parse_request_body(R"({"model":"m"})");
  REQUIRE(r.fields);
  CHECK_FALSE(r.fields->stream);
  CHECK_FALSE(r.fields->max_tokens);

  r = parse_request_body(R"({"model":"m","stream":null,"max_tokens":null,"stream_options":null})");
  REQUIRE(r.fields);
  CHECK_FALSE(r.fields->stream);
  CHECK_FALSE(r.fields->max_tokens);
  CHECK(r.fields->stream_options.empty());

  r = parse_request_body(R"({"model":"m","stream":false})");
  REQUIRE(r.fields);
  CHECK_FALSE(r.fields->stream);
}

TEST_CASE("max_tokens wins over max_completion_tokens", "[json_body]") {
  auto r = parse_request_body(R"({"model":"m","max_completion_tokens":12})");
  REQUIRE(r.fields);
  CHECK(r.fields->max_tokens == 12);
  r = parse_request_body(R"({"max_tokens":5,"model":"m","max_completion_tokens":12})");
  REQUIRE(r.fields);
  CHECK(r.fields->max_tokens == 5);
  r = parse_request_body(R"({"max_tokens":null,"model":"m","max_completion_tokens":12})");
  REQUIRE(r.fields);
  CHECK(r.fields->max_tokens == 12);
  r = parse_request_body(R"({"model":"m","max_tokens":0})");
  REQUIRE(r.fields);
  CHECK(r.fields->max_tokens == 0);
  r = parse_request_body(R"({"model":"m","max_tokens":-0})");
  REQUIRE(r.fields);
  CHECK(r.fields->max_tokens == 0);
  r = parse_request_body(R"({"model":"m","max_tokens":9223372036854775807})");
  REQUIRE(r.fields);
  CHECK(r.fields->max_tokens == INT64_MAX);
}

TEST_CASE("escaped keys and values are decoded", "[json_body]") {
  auto r = parse_request_body(R"({"mod\u0065l":"qwen\u002dmax","\u0073tream":true,"x":"\"}{\"model\":1"})");
  REQUIRE(r.fields);
  CHECK(r.fields->model == "qwen-max");
  CHECK(r.fields->stream);

  r = parse_request_body(R"({"model":"a\/b \ud83d\ude00 \u00e9\t\\ \"q\""})");
  REQUIRE(r.fields);
  CHECK(r.fields->model == "a/b \xf0\x9f\x98\x80 \xc3\xa9\t\\ \"q\"");

  r = parse_request_body("{\"model\":\"\xe6\xa8\xa1\xe5\x9e\x8b-\xf0\x9f\x99\x82\"}");
  REQUIRE(r.fields);
  CHECK(r.fields->model == "\xe6\xa8\xa1\xe5\x9e\x8b-\xf0\x9f\x99\x82");
}

TEST_CASE("the last of duplicate keys wins for reading", "[json_body]") {
  auto r = parse_request_body(
      R"({"model":"first","stream":true,"max_tokens":1,"model":"second","stream":false,"max_tokens":2})");
  REQUIRE(r.fields);
  CHECK(r.fields->model == "second");
  CHECK_FALSE(r.fields->stream);
  CHECK(r.fields->max_tokens == 2);

  // The earlier value is not checked: only the one read matters.
  r = parse_request_body(R"({"model":42,"mod\u0065l":"m"})");
  REQUIRE(r.fields);
  CHECK(r.fields->model == "m");
  r = parse_request_body(R"({"model":"m","model":42})");
  CHECK_FALSE(r.fields);
  CHECK(r.error_param == "model");
}

TEST_CASE("stream_options is kept raw and include_usage read from it", "[json_body]") {
  auto r = parse_request_body(
      R"({"model":"m","stream":true,"stream_options": { "x_keep" : [1, "\u00e9"], "include_usage" :true }})");
  REQUIRE(r.fields);
  CHECK(r.fields->stream_options == R"({ "x_keep" : [1, "\u00e9"], "include_usage" :true })");
  CHECK(r.fields->include_usage);

  r = parse_request_body(R"({"model":"m","stream_options":{"include_usage":false}})");
  REQUIRE(r.fields);
  CHECK_FALSE(r.fields->include_usage);
  r = parse_request_body(R"({"model":"m","stream_options":{"include_usage":true,"include_usage":false}})");
  REQUIRE(r.fields);
  CHECK_FALSE(r.fields->include_usage);
  r = parse_request_body(R"({"model":"m","stream_options":{"include_\u0075sage":true}})");
  REQUIRE(r.fields);
  CHECK(r.fields->include_usage);
  r = parse_request_body(R"({"model":"m","stream_options":{"x":{"include_usage":true}},"include_usage":true})");
  REQUIRE(r.fields);
  CHECK_FALSE(r.fields->include_usage);
  r = parse_request_body(R"({"model":"m","stream_options":{"include_usage":"true"}})");
  REQUIRE(r.fields);
  CHECK_FALSE(r.fields->include_usage);
  r = parse_request_body(R"({"model":"m","stream_options":{}})");
  REQUIRE(r.fields);
  CHECK(r.fields->stream_options == "{}");
  r = parse_request_body(R"({"model":"m","stream_options":[true]})");
  REQUIRE(r.fields);
  CHECK(r.fields->stream_options == "[true]");
  CHECK_FALSE(r.fields->include_usage);
}

TEST_CASE("a model may be left out where it is not required", "[json_body]") {
  auto r = parse_request_body(R"({"input":"x"})", false);
  REQUIRE(r.fields);
  CHECK(r.fields->model.empty());
  r = parse_request_body(R"({"model":null})", false);
  REQUIRE(r.fields);
  r = parse_request_body(R"({"model":7})", false);
  CHECK(r.error_param == "model");
}

TEST_CASE("bad bodies are refused with an OpenAI-style reason", "[json_body]") {
  struct bad_case {
    std::string body;
    std::string param;
    std::string message;  // a part of the error
  };
  const std::string invalid = "We could not parse the JSON body of your request.";
  const std::vector<bad_case> cases = {
      {"", "", invalid},
      {"   ", "", invalid},
      {"{", "", invalid},
      {"not json", "", invalid},
      {R"({"model":"m",})", "", invalid},
      {R"({"model":"m"} {})", "", invalid},
      {R"({"model":"m"}x)", "", invalid},
      {R"({'model':'m'})", "", invalid},
      {R"({"model":"m","n":01})", "", invalid},
      {R"({"model":"m","n":1.})", "", invalid},
      {R"({"model":"m","n":NaN})", "", invalid},
      {R"({"model":"m","n":1e400})", "", invalid},  // nlohmann: number overflow
      {R"({"model":"m\x"})", "", invalid},
      {R"({"model":"\ud800"})", "", invalid},
      {R"({"model":"\udc00\ud800"})", "", invalid},
      {R"({"model":"\u12"})", "", invalid},
      {std::string("{\"model\":\"m\"}\0", 14), "", invalid},
      {"{\"model\":\"a\tb\"}", "", invalid},              // a raw control character
      {"{\"model\":\"\xff\xfe\"}", "", invalid},          // not UTF-8 at all
      {"{\"model\":\"\x80\"}", "", invalid},              // a lone continuation byte
      {"{\"model\":\"\xc0\xaf\"}", "", invalid},          // overlong '/'
      {"{\"model\":\"\xe0\x80\xaf\"}", "", invalid},      // overlong, three bytes
      {"{\"model\":\"\xed\xa0\x80\"}", "", invalid},      // a surrogate encoded in UTF-8
      {"{\"model\":\"\xf4\x90\x80\x80\"}", "", invalid},  // past U+10FFFF
      {"{\"model\":\"\xe4\xbd\"}", "", invalid},          // a sequence cut short
      {"{\"m\xe4\xbd\":\"m\"}", "", invalid},             // in a key too
      {"[1,2]", "", "must be a JSON object, but got an array instead"},
      {R"("just a string")", "", "but got a string instead"},
      {"42", "", "but got an integer instead"},
      {"null", "", "but got null instead"},
      {R"({"messages":[]})", "model", "you must provide a model parameter"},
      {R"({"messages":[{"model":"nested"}]})", "model", "you must provide a model parameter"},
      {R"({"model":null})", "model", "you must provide a model parameter"},
      {R"({"model":""})", "model", "Invalid 'model': empty string"},
      {R"({"model":42})", "model", "Invalid type for 'model': expected a string, but got an integer instead."},
      {R"({"model":["m"]})", "model", "but got an array instead"},
      {R"({"model":{"id":"m"}})", "model", "but got an object instead"},
      {R"({"model":true})", "model", "but got a boolean instead"},
      {R"({"model":"m","stream":"yes"})", "stream",
       "Invalid type for 'stream': expected a boolean, but got a string instead."},
      {R"({"model":"m","stream":1})", "stream", "but got an integer instead"},
      {R"({"model":"m","stream":{}})", "stream", "but got an object instead"},
      {R"({"model":"m","max_tokens":1.5})", "max_tokens",
       "Invalid type for 'max_tokens': expected an integer, but got a decimal number instead."},
      {R"({"model":"m","max_tokens":1e3})", "max_tokens", "but got a decimal number instead"},
      {R"({"model":"m","max_tokens":10.0})", "max_tokens", "but got a decimal number instead"},
      {R"({"model":"m","max_tokens":"10"})", "max_tokens", "but got a string instead"},
      {R"({"model":"m","max_tokens":true})", "max_tokens", "but got a boolean instead"},
      {R"({"model":"m","max_tokens":-1})", "max_tokens",
       "integer below minimum value. Expected a value >= 0, but got -1 instead."},
      {R"({"model":"m","max_tokens":-99999999999999999999})", "max_tokens", "integer below minimum value"},
      {R"({"model":"m","max_tokens":9223372036854775808})", "max_tokens", "integer above maximum value"},
      {R"({"model":"m","max_completion_tokens":"x"})", "max_completion_tokens",
       "Invalid type for 'max_completion_tokens'"},
      {R"({"model":"m","max_tokens":5,"max_completion_tokens":-5})", "max_completion_tokens", "below minimum"},
  };
  for (const auto& c : cases) {
    INFO(c.body);
    const auto r = parse_request_body(c.body);
    CHECK_FALSE(r.fields);
    CHECK(r.error_param == c.param);
    CHECK_THAT(r.error, Catch::Contains(c.message));
    CHECK(refused_as_invalid_json(r) == !reference_accepts(c.body));
  }
}

TEST_CASE("validation agrees with nlohmann::json::accept at the edges", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  const std::vector<std::string> texts = {"{}",
                                          " {} ",
                                          "\xEF\xBB\xBF{}",
                                          "\xEF\xBB{}",
                                          " \xEF\xBB\xBF{}",
                                          "{}\xEF\xBB\xBF",
                                          "\n\r\t{\n\r\t}\n\r\t",
                                          "{\f}",
                                          "{\"a\":1,}",
                                          "{\"a\" 1}",
                                          "{\"a\":}",
                                          "{:1}",
                                          "{1:1}",
                                          "{\"a\":1 \"b\":2}",
                                          "[",
                                          "[]",
                                          "[,]",
                                          "[1,]",
                                          "[1 2]",
                                          "[[[]]]",
                                          "[[[]]",
                                          "[]]",
                                          "{]",
                                          "[}",
                                          "\"\"",
                                          "\"",
                                          "\"\\\"",
                                          "\"\\u0000\"",
                                          "\"\\uD83D\"",
                                          "\"\\uDE00\"",
                                          "\"\\uD83D\\uDE00\"",
                                          "\"\\uD83D\\u0041\"",
                                          "\"\\uD83D\\\\uDE00\"",
                                          "\"\\uD83Dx\"",
                                          "\"\\uzzzz\"",
                                          "\"\\U0041\"",
                                          "\"\\a\"",
                                          "\"\\'\"",
                                          "\"\x7f\"",
                                          "\"\x1f\"",
                                          "\"\xc2\x80\"",
                                          "\"\xc1\xbf\"",
                                          "\"\xdf\xbf\"",
                                          "\"\xe0\x9f\xbf\"",
                                          "\"\xe0\xa0\x80\"",
                                          "\"\xed\x9f\xbf\"",
                                          "\"\xed\xa0\x80\"",
                                          "\"\xee\x80\x80\"",
                                          "\"\xef\xbf\xbf\"",
                                          "\"\xf0\x8f\xbf\xbf\"",
                                          "\"\xf0\x90\x80\x80\"",
                                          "\"\xf4\x8f\xbf\xbf\"",
                                          "\"\xf4\x90\x80\x80\"",
                                          "\"\xf5\x80\x80\x80\"",
                                          "\"\xf0\x90\x80\"",
                                          "\"\xe4\xbd\"",
                                          "0",
                                          "-0",
                                          "-",
                                          "+1",
                                          "01",
                                          "-01",
                                          "1.",
                                          ".1",
                                          "1.e1",
                                          "1e",
                                          "1e+",
                                          "1e-1",
                                          "1E1",
                                          "0.0e0",
                                          "00",
                                          "1x",
                                          "tru",
                                          "true",
                                          "truex",
                                          "nul",
                                          "null",
                                          "NULL",
                                          "false",
                                          "falsey",
                                          "1e308",
                                          "1e309",
                                          "-1e309",
                                          "1e-400",
                                          "1.7976931348623157e308",
                                          "1.7976931348623158e308",
                                          "1.7976931348623159e308",
                                          "17976931348623157" + std::string(292, '0'),
                                          "17976931348623159" + std::string(292, '0'),
                                          "0.0000000000000000000000000000001e340",
                                          "0.0000000000000000000000000000001e339",
                                          "10e307",
                                          "100e307",
                                          "1e99999999999999999999",
                                          "1e-99999999999999999999",
                                          "0e99999999999999999999",
                                          std::string(400, '9'),
                                          "-" + std::string(400, '9'),
                                          "123456789012345678",
                                          "1234567890123456789",
                                          "18446744073709551616",
                                          "",
                                          std::string("{}\0", 3),
                                          std::string("\0{}", 3),
                                          std::string("{\"model\":\"m\"}\0junk", 18)};
  for (const auto& t : texts) {
    INFO(json(t).dump(-1, ' ', true, json::error_handler_t::replace));
    CHECK(refused_as_invalid_json(parse_request_body(t)) == !reference_accepts(t));
  }
}

TEST_CASE("validation agrees with nlohmann::json::accept on random texts and their mutations", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  json_maker maker(20240601);
  const std::vector<std::string> keys = {"model", "stream", "max_tokens", "messages", "a", "mod\\u0065l"};
  int valid = 0, invalid = 0;
  for (int round = 0; round < 6000; ++round) {
    std::string text = maker.pick(4) ? maker.object(3, keys) : maker.value(3);
    text = maker.ws() + text + maker.ws();
    const int edits = maker.pick(4);
    for (int k = 0; k < edits; ++k) text = maker.mutate(text);
    const bool accepted = reference_accepts(text);
    (accepted ? valid : invalid)++;
    INFO(json(text).dump(-1, ' ', true, json::error_handler_t::replace));
    REQUIRE(refused_as_invalid_json(parse_request_body(text)) == !accepted);
  }
  // Both sides of the line are well exercised.
  CHECK(valid > 1000);
  CHECK(invalid > 1000);
}

TEST_CASE("fields read agree with nlohmann on random valid bodies", "[json_body]") {
  json_maker maker(7);
  const std::vector<std::string> keys = {"model",       "stream",   "max_tokens",  "max_completion_tokens",
                                         "mod\\u0065l", "messages", "\\u0073tream"};
  for (int round = 0; round < 3000; ++round) {
    const std::string text = maker.object(2, keys);
    if (!json::accept(text)) continue;  // an out-of-range number
    const json j = json::parse(text);   // its last duplicate wins too
    INFO(text);
    const auto r = parse_request_body(text);

    const auto count_ok = [&](const char* name) {
      if (!j.contains(name) || j[name].is_null()) return true;
      const json& v = j[name];
      if (v.is_number_unsigned()) return v.get<std::uint64_t>() <= static_cast<std::uint64_t>(INT64_MAX);
      return v.is_number_integer() && v.get<std::int64_t>() >= 0;
    };
    std::string param;
    if (!j.contains("model") || j["model"].is_null() || !j["model"].is_string() || j["model"] == "") {
      param = "model";
    } else if (j.contains("stream") && !j["stream"].is_null() && !j["stream"].is_boolean()) {
      param = "stream";
    } else if (!count_ok("max_completion_tokens")) {
      param = "max_completion_tokens";
    } else if (!count_ok("max_tokens")) {
      param = "max_tokens";
    }
    if (!param.empty()) {
      CHECK_FALSE(r.fields);
      CHECK(r.error_param == param);
      continue;
    }
    REQUIRE(r.fields);
    CHECK(r.fields->model == j["model"].get<std::string>());
    const json stream = j.value("stream", json(false));
    CHECK(r.fields->stream == (stream.is_boolean() && stream.get<bool>()));
    std::optional<std::int64_t> expected;
    for (const char* name : {"max_completion_tokens", "max_tokens"}) {
      if (j.contains(name) && !j[name].is_null()) expected = j[name].get<std::int64_t>();
    }
    CHECK(r.fields->max_tokens == expected);
  }
}

TEST_CASE("checked_object_values reads what top_level_values reads, in every object of valid texts", "[json_body]") {
  // The walk that skips checked bytes must find the same members as the scan that checks them:
  // every object of random valid texts (escaped keys and values, nested containers, odd spacing,
  // duplicates), looked up by decoded keys.
  json_maker maker(4242);
  const std::vector<std::string> raw_keys = {"a", "model", "usage", "\\u0075sage", "k\\u00e9y", "", "x\\\"y", "prompt_tokens"};
  const std::array<std::string_view, 7> keys{"a", "model", "usage", "k\xc3\xa9y", "", "x\"y", "prompt_tokens"};
  int objects = 0;
  std::vector<std::string_view> pending;
  for (int round = 0; round < 3000; ++round) {
    const std::string text = maker.object(3, raw_keys);
    if (!reference_accepts(text)) continue;  // an out-of-range number
    pending.assign(1, text);
    while (!pending.empty()) {
      const std::string_view object = pending.back();
      pending.pop_back();
      std::array<std::string_view, 7> scanned{}, walked{};
      INFO(std::string(object));
      REQUIRE(top_level_values(object, keys, scanned));
      checked_object_values(object, keys, walked);
      for (std::size_t i = 0; i < keys.size(); ++i) {
        REQUIRE(walked[i] == scanned[i]);
        // Same bytes, not only the same text.
        REQUIRE(walked[i].data() == scanned[i].data());
        if (!scanned[i].empty() && scanned[i].front() == '{') pending.push_back(scanned[i]);
      }
      ++objects;
    }
  }
  CHECK(objects > 3000);
  // Strings with an escape on either side of a 16-byte boundary, keys among them.
  for (std::size_t at = 0; at <= 40; ++at) {
    std::string pad(40, 'p');
    pad.insert(at, "\\\\\\\"");
    const std::string text = R"({")" + pad + R"(":1,"a":")" + pad + R"(","b":[")" + pad + R"(",{"c":"]}"}],"model":2})";
    REQUIRE(reference_accepts(text));
    static constexpr std::array<std::string_view, 3> wanted{"a", "b", "model"};
    std::array<std::string_view, 3> scanned{}, walked{};
    REQUIRE(top_level_values(text, wanted, scanned));
    checked_object_values(text, wanted, walked);
    CHECK(walked == scanned);
    CHECK(walked[2] == "2");
  }
}

TEST_CASE("deep nesting is checked without recursion", "[json_body]") {
  // Far past max_json_depth, valid or not: refused without the scan recursing.
  const std::size_t depth = 200000;
  std::string deep = R"({"model":"m","x":)" + std::string(depth, '[') + std::string(depth, ']') + "}";
  CHECK_FALSE(parse_request_body(deep).fields);
  deep = R"({"model":"m","x":)" + std::string(depth, '[') + std::string(depth - 1, ']') + "}";
  CHECK_FALSE(parse_request_body(deep).fields);
  std::string objects = R"({"model":"m","x":)";
  for (std::size_t k = 0; k < depth; ++k) objects += R"({"a":)";
  objects += "1" + std::string(depth, '}') + "}";
  CHECK_FALSE(parse_request_body(objects).fields);
  // Objects nested as deep as allowed (the top level and 127 more) pass, and edit as any body.
  objects = R"({"model":"m","x":)";
  for (std::size_t k = 0; k + 1 < max_json_depth; ++k) objects += R"({"a":)";
  objects += "1" + std::string(max_json_depth - 1, '}') + "}";
  CHECK(parse_request_body(objects).fields);
  CHECK(set_top_level(objects, "model", "\"n\"") == R"({"model":"n")" + objects.substr(12));
}

TEST_CASE("set_top_level replaces only the top-level value, byte for byte", "[json_body]") {
  const std::string head =
      "\xEF\xBB\xBF {\n  \"messages\": [{\"role\":\"user\",\"content\":\"\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 "
      "\\u00e9 \\ud83d\\ude00 \\\"model\\\": \\\"x\\\"\", \"model\": \"nested\"}],\n  ";
  const std::string tail =
      ",\n  \"tools\": [{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"model\":{\"type\":"
      "\"string\"}}}}],\r\n\t\"response_format\" : {\"type\":\"json_schema\",\"json_schema\":{\"model\":\"s\"}}, "
      "\"unknown_field\": [1e3, -0.0, 1E+2, true, null, {}, [], \"\\/\"],\"x_\\u00e9\":\"\xc3\xa9\"\n} \n";
  const std::string body = head + "\"model\"  :\t\"public\"" + tail;
  REQUIRE(parse_request_body(body).fields);

  const std::string out = set_top_level(body, "model", json_quote("upstream/\xe5\x90\x8d\xe5\xad\x97"));
  CHECK(out == head + "\"model\"  :\t\"upstream/\xe5\x90\x8d\xe5\xad\x97\"" + tail);
  const json j = json::parse(out);
  CHECK(j["model"] == "upstream/\xe5\x90\x8d\xe5\xad\x97");
  CHECK(j["messages"][0]["model"] == "nested");
  CHECK(j["tools"][0]["function"]["parameters"]["model"]["type"] == "string");
  CHECK(j["response_format"]["json_schema"]["model"] == "s");

  // A key written with escapes is the same key.
  CHECK(set_top_level(R"({"mod\u0065l" : "a"})", "model", "\"b\"") == R"({"mod\u0065l" : "b"})");
  // A key that only looks like it is not.
  CHECK(set_top_level(R"({"Model":"a","model ":"b"})", "model", "\"c\"") ==
        R"({"Model":"a","model ":"b","model":"c"})");
}

TEST_CASE("set_top_level replaces every duplicate and any type of value", "[json_body]") {
  CHECK(set_top_level(R"({"model":"a","x":1,"model":"b"})", "model", "\"z\"") == R"({"model":"z","x":1,"model":"z"})");
  CHECK(set_top_level(R"({"stream_options":{"include_usage":false},"model":"m"})", "stream_options",
                      R"({"include_usage":true})") == R"({"stream_options":{"include_usage":true},"model":"m"})");
  CHECK(set_top_level(R"({"n":[1,[2,{"a":"]}\"["}]],"model":"m"})", "n", "3") == R"({"n":3,"model":"m"})");
  CHECK(set_top_level(R"({"n":12.5e-3 ,"model":"m"})", "n", "true") == R"({"n":true ,"model":"m"})");
  CHECK(set_top_level(R"({"n":null})", "n", "[]") == R"({"n":[]})");
  CHECK(set_top_level(R"({"n":"\\"})", "n", "0") == R"({"n":0})");
  CHECK(set_top_level(R"({"stream_options":null,"model":"m"})", "stream_options", R"({"include_usage":true})") ==
        R"({"stream_options":{"include_usage":true},"model":"m"})");
}

TEST_CASE("set_top_level appends an absent key as the last member", "[json_body]") {
  CHECK(set_top_level("{}", "model", "\"m\"") == R"({"model":"m"})");
  CHECK(set_top_level("{ \n}", "model", "\"m\"") == "{\"model\":\"m\" \n}");
  CHECK(set_top_level(R"({"a":1})", "model", "\"m\"") == R"({"a":1,"model":"m"})");
  CHECK(set_top_level(R"({ "a":1 })", "model", "\"m\"") == R"({ "a":1,"model":"m" })");
  CHECK(set_top_level("{\n  \"a\": 1\n}\n", "stream_options", R"({"include_usage":true})") ==
        "{\n  \"a\": 1,\"stream_options\":{\"include_usage\":true}\n}\n");
  CHECK(set_top_level("{\"a\":{\"model\":1} } ", "model", "\"m\"") == "{\"a\":{\"model\":1},\"model\":\"m\" } ");
  CHECK(set_top_level(R"({"a":"}"})", "k\"ey", "1") == R"({"a":"}","k\"ey":1})");
  for (const std::string body : {"{}", " { } ", R"({"a":[{}],"b":"\"}"})", "{\"\xe4\xbd\xa0\":\"\xf0\x9f\x98\x80\"}"}) {
    INFO(body);
    const std::string out = set_top_level(body, "model", "\"m\"");
    json expected = json::parse(body);
    expected["model"] = "m";
    CHECK(json::parse(out) == expected);
  }
}

TEST_CASE("set_top_level agrees with nlohmann on random bodies", "[json_body]") {
  json_maker maker(99);
  const std::vector<std::string> keys = {"model", "a", "mod\\u0065l", "stream", "m\\u00f6del"};
  for (int round = 0; round < 2000; ++round) {
    const std::string body = maker.ws() + maker.object(2, keys) + maker.ws();
    if (!json::accept(body)) continue;
    INFO(body);
    const std::string value = maker.value(1);
    if (!json::accept(value)) continue;
    json expected = json::parse(body);
    expected["model"] = json::parse(value);
    CHECK(json::parse(set_top_level(body, "model", value)) == expected);
  }
}

TEST_CASE("set_top_level leaves a body outside its precondition alone", "[json_body]") {
  CHECK(set_top_level("[1]", "model", "\"m\"") == "[1]");
  CHECK(set_top_level("{\"a\":", "model", "\"m\"") == "{\"a\":");
}

TEST_CASE("json_quote escapes what JSON requires and keeps UTF-8", "[json_body]") {
  CHECK(json_quote("") == "\"\"");
  CHECK(json_quote("plain") == "\"plain\"");
  CHECK(json_quote("a\"b\\c/d") == R"("a\"b\\c/d")");
  CHECK(json_quote("line\nnext\ttab\rcr\bb\ff") == R"("line\nnext\ttab\rcr\bb\ff")");
  CHECK(json_quote(std::string("\x00\x01\x1f\x7f", 4)) == "\"\\u0000\\u0001\\u001f\x7f\"");
  CHECK(json_quote("\xe6\xa8\xa1\xe5\x9e\x8b \xf0\x9f\x99\x82") == "\"\xe6\xa8\xa1\xe5\x9e\x8b \xf0\x9f\x99\x82\"");
  std::string all_ascii;
  for (int c = 0; c < 0x80; ++c) all_ascii.push_back(static_cast<char>(c));
  for (const std::string& s :
       {all_ascii, std::string("\xe4\xb8\xad\xe6\x96\x87\"\n\xf0\x9f\x98\x80"), all_ascii + all_ascii}) {
    const std::string quoted = json_quote(s);
    CHECK(json::parse(quoted).get<std::string>() == s);
    CHECK(parse_request_body("{\"model\":" + quoted + "}").fields->model == s);
  }
}

TEST_CASE("append_json_string appends after what the string holds, with or without escapes", "[json_body]") {
  // Plain printable ASCII is written in one step; anything else byte by byte: the same literal
  // either way, as nlohmann writes it, after the bytes already there.
  std::string printable;
  for (int c = 0x20; c < 0x80; ++c) {
    if (c != '"' && c != '\\') printable.push_back(static_cast<char>(c));
  }
  for (const std::string& s : {std::string(), std::string("m"), std::string("bench-model"), printable,
                               printable + "\"", "\\" + printable, std::string("a\nb"), std::string("\xc3\xa9"),
                               std::string(40, 'x') + "\x01"}) {
    for (const std::string& before : {std::string(), std::string("prefix:"), std::string(100, 'p')}) {
      std::string out = before;
      append_json_string(out, s);
      CHECK(out == before + json(s).dump());
    }
  }
}

TEST_CASE("edit_body equals set_top_level on model then stream_options, in one pass", "[json_body]") {
  const std::vector<std::string> bodies = {
      R"({"model":"public","messages":[]})",
      R"({"messages":[{"role":"user","content":"\"model\": x"}],"model":"public","stream":true})",
      R"({"stream_options":{"include_usage":false,"x":1},"model":"public","stream":true})",
      R"({"model":"a","stream_options":null,"model":"b","stream":true,"stream_options":{}})",
      "\xEF\xBB\xBF {\n \"model\" : \"p\" ,\n \"stream\": true \n}\n",
      R"({"model":"m"})",
      R"({"stream":true,"model":"m"   })",
  };
  const std::string so = R"({"include_usage":true})";
  for (const auto& body : bodies) {
    INFO(body);
    const auto parsed = parse_request_body(body);
    REQUIRE(parsed.fields);
    const auto& f = *parsed.fields;
    CHECK(edit_body(body, f, json_quote("up"), std::nullopt) == set_top_level(body, "model", json_quote("up")));
    CHECK(edit_body(body, f, std::nullopt, so) == set_top_level(body, "stream_options", so));
    CHECK(edit_body(body, f, json_quote("up/\xe5\x90\x8d"), so) ==
          set_top_level(set_top_level(body, "model", json_quote("up/\xe5\x90\x8d")), "stream_options", so));
    CHECK(edit_body(body, f, std::nullopt, std::nullopt) == body);
    CHECK(json::accept(edit_body(body, f, json_quote("x"), so)));
  }
  // An object without members gains both, in order.
  const std::string empty = "{ }";
  REQUIRE(parse_request_body(empty, false).fields);
  CHECK(edit_body(empty, *parse_request_body(empty, false).fields, "\"m\"", so) ==
        R"({"model":"m","stream_options":{"include_usage":true} })");
}

TEST_CASE("bodies nested deeper than max_json_depth are refused, without recursion", "[json_body][hardening]") {
  auto nested = [](std::size_t levels) {  // an object holding levels - 1 arrays
    return R"({"model":"m","tools":)" + std::string(levels - 1, '[') + std::string(levels - 1, ']') + "}";
  };
  CHECK(parse_request_body(nested(max_json_depth)).fields);
  const auto deep = parse_request_body(nested(max_json_depth + 1));
  CHECK_FALSE(deep.fields);
  CHECK(deep.error.find("deeper than 128 levels") != std::string::npos);
  // Far deeper than any stack that recursed would survive.
  CHECK_FALSE(parse_request_body(nested(1'000'000)).fields);
  CHECK(json_depth_within(nested(max_json_depth), max_json_depth));
  CHECK_FALSE(json_depth_within(nested(max_json_depth + 1), max_json_depth));
  CHECK(json_depth_within(R"({"a":"[[[[{{{{\"[["})", 1));  // brackets in strings do not count
}

TEST_CASE("a top-level array may nest max_json_depth deep, spaced or not", "[json_body][hardening]") {
  const auto arrays = [](std::size_t levels) { return std::string(levels, '[') + std::string(levels, ']'); };
  // Valid but not an object: refused for its type, not its depth.
  const auto deepest = parse_request_body(arrays(max_json_depth));
  CHECK(deepest.error.find("must be a JSON object") != std::string::npos);
  CHECK(parse_request_body(arrays(max_json_depth + 1)).error.find("deeper than 128 levels") != std::string::npos);
  // Whitespace between the brackets changes nothing.
  const std::string spaced = " [ \n" + arrays(max_json_depth - 1) + "\t]\r\n";
  CHECK(parse_request_body(spaced).error.find("must be a JSON object") != std::string::npos);
}

TEST_CASE("numbers are checked alike alone, in an array and as a member's value", "[json_body]") {
  // Short integers are decided by a quicker path than other numbers: each form, with each byte
  // that may or may not go on a number after it, agrees with nlohmann wherever it stands.
  const std::vector<std::string> numbers = {"0",
                                            "7",
                                            "-0",
                                            "-7",
                                            "00",
                                            "01",
                                            "0.5",
                                            "10.",
                                            "1e",
                                            "9E2",
                                            "0e1",
                                            "12e+",
                                            "-",
                                            "123456789012345678",
                                            "1234567890123456789",
                                            "999999999999999999999",
                                            "1" + std::string(308, '0'),
                                            "1" + std::string(309, '0')};
  for (const std::string& n : numbers) {
    for (const std::string after : {"", " ", ".", "e", "E", "0", "x", "-", "+"}) {
      const std::string number = n + after;
      for (const std::string& text : {number, "[" + number + "]", "[" + number + ",1]",
                                      R"({"model":"m","a":)" + number + "}", R"({"a":)" + number + R"(,"model":"m"})"}) {
        INFO(text);
        CHECK(refused_as_invalid_json(parse_request_body(text)) == !reference_accepts(text));
      }
    }
  }
}

TEST_CASE("top_level_values records every member of objects of any size, whatever the spacing", "[json_body]") {
  // The scan keeps the first 16 members in place and moves to a vector past them: objects on both
  // sides, each value's text as written, whitespace of every kind in every gap or none, and the
  // last of a duplicate key winning on either side of the 16th member.
  json_maker maker(36);
  const std::array<std::string, 8> values{"1",    "-0.5e3", "\"s\\u00e9\"", "true",
                                          "null", "[1, {\"a\":[]}]", "{ }", "\"\""};
  for (int round = 0; round < 400; ++round) {
    const std::size_t n = static_cast<std::size_t>(round % 41);
    std::vector<std::string> keys, written;
    std::string text = maker.ws() + "{" + maker.ws();
    for (std::size_t k = 0; k < n; ++k) {
      keys.push_back("k" + std::to_string(k));
      written.push_back(values[static_cast<std::size_t>(maker.pick(static_cast<int>(values.size())))]);
      text += (k ? "," + maker.ws() : "") + "\"" + keys.back() + "\"" + maker.ws() + ":" + maker.ws() + written.back() +
              maker.ws();
    }
    // A key written again past the end: k0, or k16 when there is one.
    const std::size_t again = n > 16 ? 16 : 0;
    if (n > 0) {
      written[again] = "\"again\"";
      text += ",\"" + keys[again] + "\":" + written[again];
    }
    text += "}" + maker.ws();
    INFO(text);
    REQUIRE(reference_accepts(text));
    std::vector<std::string_view> names(keys.begin(), keys.end());
    names.push_back("absent");
    std::vector<std::string_view> found(names.size());
    REQUIRE(top_level_values(text, names, found));
    for (std::size_t k = 0; k < n; ++k) CHECK(found[k] == written[k]);
    CHECK(found.back().empty());
    // Without its closing brace the text is not JSON, and nothing is read.
    CHECK_FALSE(top_level_values(text.substr(0, text.rfind('}')), names, found));
    for (const std::string_view v : found) CHECK(v.empty());
  }
}

/// A string of this content, in a chat request's message and alone at the end of an object
/// (only "} after its closing quote), is accepted by the scanner exactly when nlohmann accepts it.
static void check_string_content(const std::string& content) {
  const std::string body = R"({"model":"m","messages":[{"role":"user","content":")" + content + R"("}]})";
  INFO(json(body).dump(-1, ' ', true, json::error_handler_t::replace));
  REQUIRE(refused_as_invalid_json(parse_request_body(body)) == !reference_accepts(body));
  const std::string bare = R"({"a":")" + content + "\"}";
  const std::array<std::string_view, 1> key{"a"};
  std::array<std::string_view, 1> value{};
  REQUIRE(top_level_values(bare, key, value) == reference_accepts(bare));
}

/// check_string_content, with nlohmann's verdict on the string alone counted in valid or invalid:
/// random cases check that both sides of the line are well exercised.
static void check_and_count(const std::string& content, int& valid, int& invalid) {
  (reference_accepts(R"({"a":")" + content + "\"}") ? valid : invalid)++;
  check_string_content(content);
}

TEST_CASE("long strings are checked in blocks: every kind of byte at every offset", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // Strings are skipped 16, 64 and 128 bytes at a time: each byte that needs a look (the closing quote,
  // an escape, a control character, UTF-8, good or bad) is put at every offset of a long string,
  // near its end too, and the verdict compared with nlohmann's.
  const std::vector<std::string> specials = {
      "\"",        "\\\\",     "\\n",       "\\u00e9",       "\\ud83d\\ude00", "\\x",         "\\ud83d",
      "\x01",      "\x1f",     "\t",        "\x7f",          "\xc3\xa9",       "\xe4\xb8\xad", "\xf0\x9f\x98\x80",
      "\xc3",      "\x80",     "\xff",      "\xe4\xb8",      "\xed\xa0\x80",   "\xc0\xaf",     "\xf4\x90\x80\x80",
      "\xe4\xb8\xad\xe6\x96\x87\xe4\xb8\xad", "\\\"", "\\\\\\\"", "\\\\\""};
  int checked = 0;
  for (const std::size_t length : {15, 16, 17, 31, 32, 33, 63, 64, 65, 80, 95, 96, 97, 129, 143, 144, 145, 200, 271, 272, 273, 300}) {
    for (std::size_t at = 0; at <= length; ++at) {
      for (const auto& special : specials) {
        std::string content(length, 'a');
        content.insert(at, special);
        check_string_content(content);
        ++checked;
      }
    }
  }
  CHECK(checked > 20000);
  // A string cut off anywhere in a long run is refused.
  const std::string text = R"({"model":"m","content":")" + std::string(300, 'x');
  for (std::size_t cut = 24; cut <= text.size(); cut += 7) CHECK(refused_as_invalid_json(parse_request_body(text.substr(0, cut))));
}

TEST_CASE("runs of multi-byte characters: every kind of byte at every offset", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // Three-byte sequences in a row are checked two and one at a time (one 8- or 4-byte load): a run
  // of them, with each byte that needs a look put at every offset (between characters and inside
  // one, where it breaks the sequence), and each run cut at every length; the verdict compared
  // with nlohmann's.
  const std::vector<std::string> runs = {
      std::string("\xe4\xb8\xad\xe6\x96\x87", 6) + "\xe5\xad\x97\xe7\xac\xa6\xef\xbc\x8c\xe3\x80\x82",  // CJK, fullwidth
      "\xe0\xa0\x80\xe4\xb8\xad\xed\x9f\xbf\xe1\x80\x80\xec\xbf\xbf\xee\x80\x80\xef\xbf\xbf",    // E0, ED and the edges
      "\xe4\xb8\xad\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\xe4\xb8\xad\xe4\xb8\xad\x61\xe4\xb8\xad",  // mixed lengths
  };
  const std::vector<std::string> specials = {
      "\"",       "\\\\",      "\x01",         "a",           "\x80",         "\xbf",         "\xc0\xaf",
      "\xe0\x80\x80", "\xe0\x9f\xbf", "\xed\xa0\x80", "\xe4\xb8",    "\xe4",         "\xf4\x90\x80\x80", "\xff",
      "\xe4\xb8\xad", "\xc3\xa9"};
  int checked = 0;
  for (const auto& unit : runs) {
    std::string run;
    for (int k = 0; k < 4; ++k) run += unit;
    for (std::size_t at = 0; at <= run.size(); ++at) {
      for (const auto& special : specials) {
        std::string content = run;
        content.insert(at, special);
        check_string_content(content);
        ++checked;
      }
      // Cut here: the string ends (or its text does) inside or after a character.
      const std::string cut = R"({"a":")" + run.substr(0, at) + "\"}";
      const std::array<std::string_view, 1> key{"a"};
      std::array<std::string_view, 1> value{};
      REQUIRE(top_level_values(cut, key, value) == reference_accepts(cut));
      const std::string open = R"({"a":")" + run.substr(0, at);
      CHECK_FALSE(top_level_values(open, key, value));
    }
  }
  CHECK(checked > 3000);
}

TEST_CASE("non-ASCII text is checked 64 bytes a step: every byte pair at a block's edge", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // Non-ASCII text in a string is checked in steps of 64 bytes (two blocks of 32) from its first
  // non-ASCII byte, each byte against the one to three before it. Every pair of bytes is put
  // across the edge between a step's blocks and across the edge between steps (after 10 or 20
  // three-byte characters and 0 to 4 ASCII letters), followed by nothing or by one or two
  // continuation bytes (which some pairs need to be a character), then more text; the verdict is
  // compared with nlohmann's.
  const std::string han = "\xe4\xb8\xad";
  std::string suffix;
  for (int k = 0; k < 30; ++k) suffix += han;
  const std::array<std::string_view, 1> key{"a"};
  std::array<std::string_view, 1> value{};
  int checked = 0, accepted = 0;
  for (const int characters : {10, 20}) {
    std::string prefix;
    for (int k = 0; k < characters; ++k) prefix += han;
    for (const std::string_view tail : {"", "\x80", "\x80\x80"}) {
      for (std::size_t letters = 0; letters <= 4; ++letters) {
        for (unsigned first = 0; first < 256; ++first) {
          for (unsigned second = 0; second < 256; ++second) {
            std::string text = R"({"a":")" + prefix + std::string(letters, 'a');
            text += static_cast<char>(first);
            text += static_cast<char>(second);
            text += tail;
            text += suffix + "\"}";
            const bool reference = reference_accepts(text);
            if (top_level_values(text, key, value) != reference) {
              INFO("bytes " << first << " " << second << " after " << characters << " characters and " << letters
                            << " letters, then " << tail.size() << " continuation bytes");
              FAIL("the scanner and nlohmann disagree");
            }
            ++checked;
            accepted += reference;
          }
        }
      }
    }
  }
  CHECK(checked == 2 * 3 * 5 * 65536);
  CHECK(accepted > 10000);
}

TEST_CASE("non-ASCII text is checked 64 bytes a step: a character cut at a step's end, then ASCII", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // A step of ASCII alone is checked the short way, for special bytes and for a character the
  // step before left unfinished. Each character, whole or cut, is put at every offset of the
  // first step and past it, followed by a step's worth of ASCII or by more non-ASCII text.
  const std::vector<std::string> pieces = {"\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xc3",
                                           "\xe4",       "\xe4\xb8",     "\xf0",             "\xf0\x9f",
                                           "\xf0\x9f\x98", "\x80",       "\xe4\xb8\xad\x80"};
  std::string more_text(40, 'b');
  more_text += "\xe4\xb8\xad";
  more_text.append(60, 'b');
  const std::array<std::string, 2> afters = {std::string(100, 'b'), more_text};
  int checked = 0;
  for (const auto& piece : pieces) {
    for (std::size_t letters = 0; letters <= 80; ++letters) {
      for (const auto& after : afters) {
        std::string content = "\xe4\xb8\xad\xe6\x96\x87";
        content.append(letters, 'a');
        content += piece;
        content += after;
        check_string_content(content);
        ++checked;
      }
    }
  }
  CHECK(checked == 11 * 81 * 2);
}

TEST_CASE("non-ASCII text is checked 64 bytes a step: random texts of every character length", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // Long strings of random characters (ASCII, and two-, three- and four-byte ones, edges of each
  // range included), each character drawn alone or in runs of one range (ASCII runs of up to 150
  // letters, where steps of ASCII alone take a shorter way); some have one or two bytes anywhere
  // that need a look or break the text. The verdict compared with nlohmann's.
  std::mt19937 rng(20261205);
  const auto below = [&](std::uint32_t n) { return static_cast<std::uint32_t>(rng() % n); };
  static constexpr std::array<std::pair<std::uint32_t, std::uint32_t>, 7> ranges{
      {{0x20, 0x7f}, {0x80, 0x7ff}, {0x800, 0xfff}, {0x1000, 0xd7ff}, {0xe000, 0xffff}, {0x10000, 0x3ffff}, {0x100000, 0x10ffff}}};
  const auto character = [&](std::size_t range) {
    const auto [low, high] = ranges[range];
    // The range's ends a quarter of the time, where the tables' edges are.
    const std::uint32_t cp = below(4) == 0 ? (below(2) ? low : high) : low + below(high - low + 1);
    if (cp == '"' || cp == '\\') return std::string("x");
    std::string out;
    const auto put = [&](std::uint32_t byte) { out += static_cast<char>(byte); };
    if (cp < 0x80) {
      put(cp);
    } else if (cp < 0x800) {
      put(0xc0 | cp >> 6), put(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      put(0xe0 | cp >> 12), put(0x80 | (cp >> 6 & 0x3f)), put(0x80 | (cp & 0x3f));
    } else {
      put(0xf0 | cp >> 18), put(0x80 | (cp >> 12 & 0x3f)), put(0x80 | (cp >> 6 & 0x3f)), put(0x80 | (cp & 0x3f));
    }
    return out;
  };
  const std::vector<std::string> breaks = {"\"", "\\\\", "\\n", "\x01", "\x1f", "\x80", "\xbf", "\xc0\xaf", "\xc1\xbf",
                                           "\xe0\x9f\xbf", "\xed\xa0\x80", "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
                                           "\xf8", "\xff", "\xe4\xb8", "\xe4", "\xf0\x9f\x98", "\xc3"};
  int valid = 0, invalid = 0;
  for (int round = 0; round < 4000; ++round) {
    std::string content;
    const std::uint32_t length = 64 + below(400);
    const bool in_runs = below(2) != 0;
    while (content.size() < length) {
      const std::size_t range = below(ranges.size());
      for (std::uint32_t k = in_runs ? 1 + below(range == 0 ? 150 : 30) : 1; k > 0; --k) content += character(range);
    }
    if (below(2) != 0) {
      for (std::uint32_t k = 1 + below(2); k > 0; --k) content.insert(below(static_cast<std::uint32_t>(content.size()) + 1), breaks[below(breaks.size())]);
    }
    check_and_count(content, valid, invalid);
  }
  CHECK(valid > 1000);
  CHECK(invalid > 1000);
}

TEST_CASE("runs of three-byte characters, 64 bytes a step by their leads' places: every edit at every offset", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // With AVX-512 a vector of three-byte characters alone is passed when its leads (E1 to EC, EE,
  // EF) are every third byte from the first the vector before owed, and its other bytes are
  // continuation bytes; anything else goes to the full check. Runs of such characters start at
  // each phase (after characters of one to four bytes), and each byte is replaced by each byte
  // value that changes what the rule must say, deleted, or doubled; the verdict is compared with
  // nlohmann's.
  const std::vector<std::string> units = {
      "\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\xe7\xac\xa6\xef\xbc\x8c\xe6\xb5\x8b\xe8\xaf\x95\xe3\x80\x82",  // Chinese
      "\xe1\x80\x80\xec\xbf\xbf\xee\x80\x80\xef\xbf\xbf\xe3\x81\x82\xea\xb0\x80",  // the leads' edges, kana, hangul
  };
  const std::vector<std::string> prefixes = {"", "a", "\xc3\xa9", "\xf0\x9f\x98\x80", "\xc3\xa9\xc3\xa9", "a\xc3\xa9",
                                             "\xe0\xa0\x80", "\xed\x9f\xbf", "\xe4\xb8\xad" + std::string(61, 'a')};
  const std::vector<unsigned char> values = {0x00, 0x1f, 0x20, 0x22, 0x41, 0x5c, 0x7f, 0x80, 0x8f, 0x9f, 0xa0, 0xbf,
                                             0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf4,
                                             0xf5, 0xf8, 0xff};
  const std::array<std::string_view, 1> key{"a"};
  std::array<std::string_view, 1> value{};
  int checked = 0, accepted = 0;
  const auto check = [&](const std::string& content) {
    const std::string text = R"({"a":")" + content + "\"}";
    const bool reference = reference_accepts(text);
    if (top_level_values(text, key, value) != reference) {
      INFO(json(text).dump(-1, ' ', true, json::error_handler_t::replace));
      FAIL("the scanner and nlohmann disagree");
    }
    ++checked;
    accepted += reference;
  };
  for (const auto& unit : units) {
    std::string run;
    while (run.size() < 200) run += unit;
    for (const auto& prefix : prefixes) {
      const std::string whole = prefix + run + "tail";
      check(whole);
      for (std::size_t at = prefix.size(); at < prefix.size() + run.size(); ++at) {
        for (const unsigned char byte : values) {
          std::string edited = whole;
          edited[at] = static_cast<char>(byte);
          check(edited);
        }
        check(std::string(whole).erase(at, 1));
        check(std::string(whole).insert(at, 1, whole[at]));
      }
    }
  }
  CHECK(checked > 100000);
  CHECK(accepted > 5000);
}

TEST_CASE("two-byte escapes are passed over 64 bytes a step: random strings of escapes, text and faults", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // Long strings where escapes come often (an escaped newline a line, quotes in code), among ASCII
  // and non-ASCII text, next to each other and at every offset of a step; some with a byte that
  // breaks the string: a bad or cut escape, a raw control byte, a bare quote. The verdict
  // compared with nlohmann's.
  std::mt19937 rng(20261206);
  const auto below = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  const std::vector<std::string> pieces = {"\\n",        "\\t",  "\\\"", "\\\\", "\\/",  "\\b\\f\\r", "\\u00e9", "\\ud83d\\ude00",
                                           "lorem ",     "ipsum dolor sit amet, ", "x",    "\xe4\xb8\xad\xe6\x96\x87",
                                           "\xc3\xa9",   "\\\\n", "\\\\\\\"", "{\\\"a\\\":1}"};
  const std::vector<std::string> breaks = {"\\x", "\\u12g4", "\\U0041", "\\\x01", "\x01", "\"", "\\\xe4\xb8\xad", "\\ ", "\\'",
                                           "\\\\\\", "\\ud83d", "\x7f\\"};
  int valid = 0, invalid = 0;
  for (int round = 0; round < 6000; ++round) {
    std::string content;
    const std::size_t length = 64 + below(500);
    while (content.size() < length) content += pieces[below(pieces.size())];
    if (below(2) != 0) content.insert(below(content.size() + 1), breaks[below(breaks.size())]);
    check_and_count(content, valid, invalid);
  }
  CHECK(valid > 1500);
  CHECK(invalid > 1500);
}

TEST_CASE("code point escapes in a row, 64 bytes a step: every offset, pairs and lone halves", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // Text written as \u escapes (Python's json.dumps writes all non-ASCII so by default): runs of
  // them after 0 to 70 letters, so that an escape, or a surrogate pair, is cut by a step's end at
  // every offset; some runs with a lone half, a half pair or a bad digit put in anywhere. The
  // verdict compared with nlohmann's.
  std::mt19937 rng(20261207);
  const auto below = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  const std::vector<std::string> escapes = {"\\u4e2d", "\\u6587", "\\u00e9", "\\uFF0C", "\\ud83d\\ude00", "\\uDBFF\\uDFFF",
                                            "\\u0041", "\\u0022", "\\u005c", "\\uffff", "\\ud7ff", "\\ue000", "\\n"};
  const std::vector<std::string> breaks = {"\\ud83d",   "\\ude00",        "\\ud83d\\u0041", "\\ud83dx",       "\\u12g4",
                                           "\\u123g",   "\\uD83D\\uDE0", "\\uDFFF",       "\\ug123",        "\\x41",
                                           "\\u12",     "\\ude00\\ud83d", "\\ud83d\\ud83d", "\\uDC00",        "\\u",
                                           "\\ud83d\\", "\\ud83d\\n"};
  int valid = 0, invalid = 0;
  for (std::size_t letters = 0; letters <= 70; ++letters) {
    for (int round = 0; round < 40; ++round) {
      std::string content(letters, 'a');
      for (int k = 0; k < 30; ++k) content += escapes[below(escapes.size())];
      if (round % 2 == 1) content.insert(letters + below(content.size() - letters + 1), breaks[below(breaks.size())]);
      check_and_count(content, valid, invalid);
    }
  }
  CHECK(valid + invalid == 71 * 40);
  CHECK(valid > 71 * 20);
  CHECK(invalid > 71 * 10);
}

TEST_CASE("every byte after a backslash and in a code point escape, among dense escapes", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // Steps with many escapes have them passed by masks of what each byte may be (a letter of a
  // two-byte escape, a hex digit, from 8 up, 'u', 'd'): each byte value is put after a backslash,
  // in each digit of a \u escape, after "\ud" (a surrogate when it is 8 to F), and in the place
  // of an escape's 'u', among runs of \u escapes, so that it lands at several offsets of a step
  // and near its end. The verdict compared with nlohmann's.
  int valid = 0, invalid = 0;
  for (int c = 0x20; c < 0x100; ++c) {
    if (c == '"') continue;  // a bare quote ends the string: the rest is no string
    const char b = static_cast<char>(c);
    const std::vector<std::string> forms = {std::string("\\") + b,      std::string("\\u") + b + "e2d",
                                            std::string("\\u4") + b + "2d", std::string("\\u4e") + b + "d",
                                            std::string("\\u4e2") + b,  std::string("\\ud") + b + "00",
                                            std::string("\\ud") + b + "3d\\ude00", std::string("\\") + b + "4e2d"};
    for (const auto& form : forms) {
      for (const std::size_t letters : {0, 5, 17, 40, 57, 58, 59, 60, 61, 62, 63}) {
        std::string content(letters, 'a');
        for (int k = 0; k < 6; ++k) content += "\\u4e2d";
        content += form;
        for (int k = 0; k < 12; ++k) content += "\\u6587";
        check_and_count(content, valid, invalid);
      }
    }
  }
  CHECK(valid > 1000);
  CHECK(invalid > 10000);
}

TEST_CASE("an escape across a step's end, then steps of two-byte escapes, then a special byte", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // An escape that goes on past a step leaves its last bytes to the next step, which must not take
  // them for bytes of their own; the step after that starts clean. A \u escape and an escaped
  // quote are put at every offset, then text with an escaped newline every ten bytes, then a byte
  // that ends or breaks the string (or an escaped quote, which does not) at every offset after
  // them, so that it lands where the escape's bytes fell a step or two before. The verdict
  // compared with nlohmann's.
  int valid = 0, invalid = 0;
  for (const std::string crossing : {"\\u4e2d", "\\\"", "\\ud83d\\ude00"}) {
    for (std::size_t lead = 0; lead < 80; ++lead) {
      for (std::size_t at = 0; at < 150; at += 1 + at / 40) {
        for (const std::string special : {"\"", "\\\"", "\x01", "\\\\"}) {
          std::string content(lead, 'a');
          content += crossing;
          while (content.size() < lead + crossing.size() + at) content += content.size() % 10 == 9 ? "\\n" : "b";
          content += special;
          content += std::string(70, 'c');
          check_and_count(content, valid, invalid);
        }
      }
    }
  }
  CHECK(valid > 1000);
  CHECK(invalid > 1000);
}

TEST_CASE("a body cut off in a run of code point escapes is refused", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // An escape that goes on past a step is read on past it, never past the body's end: each body
  // is in storage of its own exact size (so a read past it is seen by the address sanitizer).
  std::string text = R"({"model":"m","content":")";
  for (int k = 0; k < 40; ++k) text += k % 7 == 3 ? "\\ud83d\\ude00" : "\\u4e2d";
  for (std::size_t cut = 24; cut <= text.size(); ++cut) {
    const auto exact = std::make_unique<char[]>(cut);
    std::memcpy(exact.get(), text.data(), cut);
    INFO(cut);
    CHECK(refused_as_invalid_json(parse_request_body(std::string_view(exact.get(), cut))));
  }
}

TEST_CASE("a long key written with escapes is found by its decoded name", "[json_body]") {
  const scan_vectors width = GENERATE(from_range(scan_widths()));
  INFO("scan vectors: " << width_name(width));
  const scan_width_in_use in_use(width);
  // The key's escape is passed over in the 64-byte steps; the scan must still note that the key
  // holds one, so that it is decoded before it is compared.
  int checked = 0;
  for (const std::string_view escape : {"\\n", "\\/", "\\\"", "\\t", "\\u0041"}) {
    for (const std::string_view text : {"k", "\xe4\xb8\xad"}) {
      for (std::size_t at = 0; at <= 150; at += 1) {
        std::string key;
        while (key.size() < 160) key += text;
        key.insert(at - at % text.size(), escape);
        const std::string body = R"({"model":"m",")" + key + R"(":1,"messages":[]})";
        const json tree = json::parse(body);
        std::string name;
        for (const auto& [k, v] : tree.items()) {
          if (k != "model" && k != "messages") name = k;
        }
        REQUIRE(name.size() >= 150);
        const std::array<std::string_view, 2> keys{name, "model"};
        std::array<std::string_view, 2> values{};
        INFO("escape " << escape << " at " << at);
        REQUIRE(top_level_values(body, keys, values));
        CHECK(values[0] == "1");
        CHECK(values[1] == "\"m\"");
        ++checked;
      }
    }
  }
  CHECK(checked == 5 * 2 * 151);
}

TEST_CASE("edit_body_pieces: the original bytes as views into the body, joined equal to edit_body", "[json_body]") {
  const std::string long_text(100000, 'x');
  const std::vector<std::string> bodies = {
      R"({"model":"public","messages":[{"role":"user","content":")" + long_text + R"("}]})",
      R"({"messages":[],"model":"a","stream_options":{"x":1},"model":"b"})",
      R"({"messages":[{"content":")" + long_text + R"("}]  })",
      "{}",
  };
  const std::string so = R"({"include_usage":true})";
  const std::string model = json_quote("upstream-model");
  for (const auto& body : bodies) {
    INFO(body.substr(0, 80));
    const auto parsed = parse_request_body(body, false);
    REQUIRE(parsed.fields);
    for (const bool rename : {false, true}) {
      for (const bool options : {false, true}) {
        const auto m = rename ? std::optional<std::string_view>(model) : std::nullopt;
        const auto o = options ? std::optional<std::string_view>(so) : std::nullopt;
        std::string added;
        const auto pieces = edit_body_pieces(body, *parsed.fields, m, o, added);
        std::string joined;
        std::size_t original = 0;
        for (const body_piece& p : pieces) {
          CHECK_FALSE(p.text.empty());
          if (p.original) {  // a view into the body itself, not a copy
            CHECK(p.text.data() >= body.data());
            CHECK(p.text.data() + p.text.size() <= body.data() + body.size());
            original += p.text.size();
          }
          joined += p.text;
        }
        CHECK(joined == edit_body(body, *parsed.fields, m, o));
        CHECK(original + 200 > body.size());  // all of the body but the values replaced
      }
    }
  }
}

TEST_CASE("rename_model renames the answer's model member and nothing else", "[json_body]") {
  const std::string from = json_quote("upstream-m"), to = json_quote("asked \"for\"");
  std::string whole = R"({"id":"c1","object":"chat.completion","created":1,"model":"upstream-m","choices":[]})";
  CHECK(rename_model(whole, from, to));
  CHECK(json::parse(whole)["model"] == "asked \"for\"");
  std::string spaced = "data: {\"id\": \"c1\", \"model\" :  \"upstream-m\", \"choices\": []}\n\n";
  CHECK(rename_model(spaced, from, to));
  CHECK(spaced.find(R"("model" :  "asked \"for\"")") != std::string::npos);
  // A model member with another value is left alone, and so is the text inside a string.
  std::string other = R"({"model":"upstream-mx","choices":[]})";
  CHECK_FALSE(rename_model(other, from, to));
  CHECK(other == R"({"model":"upstream-mx","choices":[]})");
  std::string inside = R"({"choices":[{"delta":{"content":"say \"model\":\"upstream-m\""}}]})";
  const std::string before = inside;
  CHECK_FALSE(rename_model(inside, from, to));
  CHECK(inside == before);
}

TEST_CASE("append_renamed appends what rename_model would leave, or nothing", "[json_body]") {
  const std::string from = json_quote("m"), to = json_quote("bench-model");
  for (std::string text : {std::string(R"(data: {"id":"c1","model":"m","choices":[]})" "\n\n"),
                           std::string(R"({"model" : "m"})"), std::string(R"({"model":"mx"})"),
                           std::string(R"({"content":"\"model\":\"m\""})"), std::string()}) {
    std::string out = "kept|";
    const bool changed = append_renamed(out, text, from, to);
    std::string renamed = text;
    CHECK(changed == rename_model(renamed, from, to));
    CHECK(out == (changed ? "kept|" + renamed : "kept|"));
  }
}

TEST_CASE("find_quoted finds a quoted key at every offset and length, as string::find does", "[json_body]") {
  const std::string key = "\"usage\"";
  for (std::size_t size = 0; size < 80; ++size) {
    for (std::size_t at = 0; at + key.size() <= size + key.size(); ++at) {
      // Near misses around it: a quote and a u, a key cut short.
      std::string text(size, 'x');
      for (std::size_t i = 0; i + 1 < size; i += 5) {
        text[i] = '"';
        text[i + 1] = 'u';
      }
      if (size >= 6) text.replace(size - 6, 6, "\"usag");
      if (at + key.size() <= text.size()) text.replace(at, key.size(), key);
      INFO("size " << size << ", key at " << at);
      CHECK(find_quoted(text, key) == text.find(key));
      for (std::size_t from : {std::size_t{1}, at, at + 1, text.size()}) {
        CHECK(find_quoted(text, key, from) == text.find(key, from));
      }
    }
  }
}

TEST_CASE("model_value_finder finds what find_model_value finds, event after event", "[json_body]") {
  std::mt19937 gen(std::random_device{}());
  const std::string from = "\"m\"";
  // Events of a stream share their first bytes; some change them (another id, the model's value
  // moved by a space, another value, a key that only looks like the model, none at all), and the
  // finder must then search again.
  const std::vector<std::string> heads = {
      R"(data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",)",
      R"(data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"m",)",
      R"(data: {"id":"c1","object":"chat.completion.chunk","created":1,"model": "m",)",
      R"(data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"n",)",
      R"(data: {"id":"c1","object":"chat.completion.chunk","created":1,"models":"m","model":"m",)",
      R"(data: {"id":"c1","object":"chat.completion.chunk","created":1,"model" :"m",)",
      R"(data: {"id":"c1","object":"chat.completion.chunk","created":1,)",
      R"(data: {"id":"c1","model":"m")",
      R"(data: {"id":"c1",)",
  };
  model_value_finder finder;
  for (int i = 0; i < 3000; ++i) {
    // Mostly the same head as the event before, as a stream sends them.
    const std::string& head = heads[gen() % 4 == 0 ? gen() % heads.size() : 0];
    const std::string event = head + R"("choices":[{"index":0,"delta":{"content":"w )" + std::to_string(i) + R"("}}]})" + "\n\n";
    const std::string cut = event.substr(0, gen() % 3 == 0 ? gen() % (event.size() + 1) : event.size());
    INFO(cut);
    CHECK(finder.find(cut, from) == find_model_value(cut, from));
    std::string a = "x", b = "x";
    CHECK(finder.append_renamed(a, cut, from, "\"longer-name\"") == append_renamed(b, cut, from, "\"longer-name\""));
    CHECK(a == b);
  }
}

TEST_CASE("null_member_end and only_null_members: a usage member whose value is null", "[json_body]") {
  const std::string key = "\"usage\"";
  const std::string text = R"({"a":1,"usage":null,"b":"usage"})";
  const std::size_t at = text.find(key);
  CHECK(null_member_end(text, at, key) == text.find(",\"b\""));
  CHECK(null_member_end("\"usage\" :\t null", 0, key) == 15);
  CHECK(null_member_end(R"("usage":nul)", 0, key) == std::string_view::npos);
  CHECK(null_member_end(R"("usage":{"prompt_tokens":1})", 0, key) == std::string_view::npos);
  CHECK(null_member_end("\"usage\":\nnull", 0, key) == std::string_view::npos);  // never past a line end
  CHECK(null_member_end(R"("usage")", 0, key) == std::string_view::npos);
  CHECK(null_member_end(R"("user":null)", 0, key) == std::string_view::npos);
  CHECK(null_member_end(R"(x)", 5, key) == std::string_view::npos);
  // "usage" as a string value is an occurrence too, and no null member: the caller parses.
  CHECK_FALSE(only_null_members(text, key));
  CHECK(only_null_members(R"({"a":1,"usage":null})", key));
  CHECK(only_null_members(R"({"usage":null,"x":{"usage":null}})", key));
  CHECK(only_null_members(R"({"a":1})", key));
  CHECK_FALSE(only_null_members(R"({"usage":null,"usage":{"prompt_tokens":1}})", key));
  CHECK_FALSE(only_null_members(R"({"usage":{"prompt_tokens":1},"usage":null})", key));
  CHECK(only_null_members(R"({"usage":{"prompt_tokens":1},"usage":null})", key, 10));
}
