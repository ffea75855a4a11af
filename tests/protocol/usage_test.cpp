#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "protocol/usage.hpp"

using namespace tollgate::protocol;

namespace {

/// usage_from_json's reading of the OpenAI fields, written over nlohmann: no usage unless the
/// whole text is JSON (a raw NUL refused, as the gateway does) with a "usage" object at its top
/// level; a count absent or null is 0, one that is not an integer in [0, max_reported_tokens]
/// refuses the usage.
std::optional<usage> reference_usage(const std::string& text, bool& refused) {
  using nlohmann::json;
  refused = false;
  if (text.find('\0') != std::string::npos || !json::accept(text)) return std::nullopt;
  const json j = json::parse(text);
  if (!j.is_object() || !j.contains("usage") || !j["usage"].is_object()) return std::nullopt;
  const json& u = j["usage"];
  bool bad = false;
  const auto count = [&](const json& object, const char* name) -> std::int64_t {
    if (!object.is_object() || !object.contains(name) || object[name].is_null()) return 0;
    const json& v = object[name];
    if (v.is_number_unsigned() && v.get<std::uint64_t>() <= static_cast<std::uint64_t>(max_reported_tokens)) {
      return v.get<std::int64_t>();
    }
    if (v.is_number_integer() && v.get<std::int64_t>() >= 0 && v.get<std::int64_t>() <= max_reported_tokens) {
      return v.get<std::int64_t>();
    }
    bad = true;
    return 0;
  };
  const json none;
  usage out;
  out.prompt = count(u, "prompt_tokens");
  out.completion = count(u, "completion_tokens");
  out.cached = count(u.contains("prompt_tokens_details") ? u["prompt_tokens_details"] : none, "cached_tokens");
  out.reasoning = count(u.contains("completion_tokens_details") ? u["completion_tokens_details"] : none, "reasoning_tokens");
  if (bad) {
    refused = true;
    return std::nullopt;
  }
  out.reasoning = std::min(out.reasoning, out.completion);
  out.cached = std::min(out.cached, out.prompt);
  return out;
}

bool same(const std::optional<usage>& a, const std::optional<usage>& b) {
  if (!a || !b) return !a && !b;
  return a->prompt == b->prompt && a->cached == b->cached && a->completion == b->completion &&
         a->reasoning == b->reasoning && a->cache_write == b->cache_write;
}

}  // namespace

TEST_CASE("usage in the OpenAI shape, with cached and reasoning tokens", "[usage]") {
  bool no_choices = true;
  auto u = usage_from_json(R"({"choices":[{"index":0}],"usage":{"prompt_tokens":100,"completion_tokens":40,
    "total_tokens":140,"prompt_tokens_details":{"cached_tokens":30},"completion_tokens_details":{"reasoning_tokens":25}}})",
                           &no_choices);
  REQUIRE(u);
  CHECK(u->prompt == 100);
  CHECK(u->cached == 30);
  CHECK(u->completion == 40);
  CHECK(u->reasoning == 25);
  CHECK_FALSE(no_choices);
}

TEST_CASE("DeepSeek's cache-hit field and the usage-only chunk", "[usage]") {
  bool no_choices = false;
  auto u = usage_from_json(
      R"({"choices":[],"usage":{"prompt_tokens":50,"completion_tokens":5,"prompt_cache_hit_tokens":20,"prompt_cache_miss_tokens":30}})",
      &no_choices);
  REQUIRE(u);
  CHECK(u->cached == 20);
  CHECK(no_choices);
}

TEST_CASE("no usage, null usage and garbage are not usage", "[usage]") {
  CHECK_FALSE(usage_from_json(R"({"choices":[{"delta":{"content":"hi"}}]})"));
  CHECK_FALSE(usage_from_json(R"({"choices":[],"usage":null})"));
  CHECK_FALSE(usage_from_json(R"({"usage":)"));
  CHECK_FALSE(usage_from_json("[DONE]"));
  auto odd = usage_from_json(R"({"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":9}}})");
  REQUIRE(odd);
  CHECK(odd->prompt == 5);
  CHECK(odd->completion == 0);  // absent
  CHECK(odd->cached == 5);      // never more than the prompt
}

TEST_CASE("usage out of range is refused, not recorded as zero or as a huge number", "[usage][hardening]") {
  for (const std::string bad : {"-5", "9223372036854775807", "1000000001", "1e308", "12.5", "\"7\"", "true", "{}",
                                "99999999999999999999999"}) {
    for (const std::string field : {"prompt_tokens", "completion_tokens"}) {
      INFO(field << ": " << bad);
      bool refused = false;
      const std::string text = R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,")" + field +
                               R"(":)" + bad + "}}";
      CHECK_FALSE(usage_from_json(text, nullptr, &refused));
      CHECK(refused);
    }
    INFO("nested: " << bad);
    bool refused = false;
    CHECK_FALSE(usage_from_json(R"({"usage":{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":)" + bad + "}}}",
                                nullptr, &refused));
    CHECK(refused);
  }
  bool refused = true;
  const auto top = usage_from_json(R"({"usage":{"prompt_tokens":1000000000,"completion_tokens":0}})", nullptr, &refused);
  REQUIRE(top);
  CHECK(top->prompt == max_reported_tokens);
  CHECK_FALSE(refused);
}

TEST_CASE("Anthropic's cache writes, kept in the chat usage, are read and priced", "[usage]") {
  auto u = usage_from_json(R"({"usage":{"prompt_tokens":1000,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":200},
    "cache_creation_input_tokens":300}})");
  REQUIRE(u);
  CHECK(u->prompt == 1000);
  CHECK(u->cached == 200);
  CHECK(u->cache_write == 300);
  tollgate::config::price_config price{3.0, 0.3, 15.0};
  price.cache_write = 3.75;
  CHECK(cost_of(*u, price) == Approx((500 * 3.0 + 200 * 0.3 + 300 * 3.75 + 10 * 15.0) / 1e6));
  // More writes than the prompt leaves uncached are clamped; a bad count refuses the usage.
  auto over = usage_from_json(R"({"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":4},"cache_creation_input_tokens":99}})");
  REQUIRE(over);
  CHECK(over->cache_write == 6);
  bool refused = false;
  CHECK_FALSE(usage_from_json(R"({"usage":{"prompt_tokens":10,"cache_creation_input_tokens":-1}})", nullptr, &refused));
  CHECK(refused);
}

TEST_CASE("cost: uncached input, cached input and output at their prices", "[usage]") {
  const tollgate::config::price_config price{2.0, 0.5, 8.0};
  const usage u{1'000'000, 400'000, 250'000, 0};
  CHECK(cost_of(u, price) == Approx(600'000 * 2.0 / 1e6 + 400'000 * 0.5 / 1e6 + 250'000 * 8.0 / 1e6));
  CHECK(cost_of(usage{}, price) == 0);
}

TEST_CASE("usage is read from the top level only, whatever the spacing and order", "[usage]") {
  bool no_choices = false;
  auto u = usage_from_json(
      "{ \"choices\" : [ ] ,\n \"note\": {\"usage\": {\"prompt_tokens\": 999}},\n"
      " \"usage\" : { \"completion_tokens_details\" : { \"reasoning_tokens\" : 3 } , \"completion_tokens\" : 12 ,"
      " \"prompt_tokens\" : 20, \"prompt_tokens_details\": {\"cached_tokens\": 0}, \"prompt_cache_hit_tokens\": 8 } }",
      &no_choices);
  REQUIRE(u);
  CHECK(u->prompt == 20);
  CHECK(u->completion == 12);
  CHECK(u->reasoning == 3);
  CHECK(u->cached == 8);  // OpenAI's field said 0; DeepSeek's is read then
  CHECK(no_choices);
  // The last of duplicate keys wins, as in the parsers upstream; fields not read are not checked.
  auto dup = usage_from_json(R"({"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":1e2}})");
  REQUIRE(dup);
  CHECK(dup->prompt == 7);
  CHECK(dup->completion == 2);
  // Fractions and exponents are not counts: the usage is refused (see the hardening case below).
  CHECK_FALSE(usage_from_json(R"({"usage":{"prompt_tokens":7,"completion_tokens":2.0}})"));
  CHECK_FALSE(usage_from_json(R"({"usage":[1,2]})"));
  CHECK_FALSE(usage_from_json(R"({"choices":[], "usage": {"prompt_tokens": 3})"));  // cut short: not JSON
  CHECK_FALSE(usage_from_json(R"({"usage":{"prompt_tokens":99999999999999999999}})"));
}

TEST_CASE("usage of relayed answers: an Anthropic message and a Responses API response", "[usage][relay]") {
  // Anthropic's input_tokens leaves out the cache reads and writes.
  auto m = usage_from_json(R"({"type":"message","content":[],"usage":{"input_tokens":40,"cache_creation_input_tokens":7,)"
                           R"("cache_read_input_tokens":1200,"output_tokens":31}})");
  REQUIRE(m);
  CHECK(m->prompt == 1247);
  CHECK(m->cached == 1200);
  CHECK(m->cache_write == 7);
  CHECK(m->completion == 31);
  // The Responses API counts its cached tokens in input_tokens.
  auto r = usage_from_json(R"({"object":"response","usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":60},)"
                           R"("output_tokens":20,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":120}})");
  REQUIRE(r);
  CHECK(r->prompt == 100);
  CHECK(r->cached == 60);
  CHECK(r->cache_write == 0);
  CHECK(r->completion == 20);
  CHECK(r->reasoning == 12);
  bool refused = false;
  CHECK_FALSE(usage_from_json(R"({"usage":{"input_tokens":-1,"output_tokens":2}})", nullptr, &refused));
  CHECK(refused);
  CHECK_FALSE(usage_from_json(R"({"usage":{"input_tokens":1,"cache_read_input_tokens":"9"}})", nullptr, &refused));
  CHECK(refused);
}

TEST_CASE("an Anthropic stream's usage: message_start, then message_delta's counts replace those it names", "[usage][relay]") {
  messages_stream_usage s;
  CHECK_FALSE(s.get());
  s.take(R"({"type":"ping"})");
  s.take(R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\"usage\""}})");
  CHECK_FALSE(s.get());
  s.take(R"({"type":"message_start","message":{"id":"m","usage":{"input_tokens":40,"cache_creation_input_tokens":7,)"
         R"("cache_read_input_tokens":1200,"output_tokens":1}}})");
  auto u = s.get();
  REQUIRE(u);
  CHECK(u->prompt == 1247);
  CHECK(u->completion == 1);
  s.take(R"({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":31}})");
  u = s.get();
  REQUIRE(u);
  CHECK(u->prompt == 1247);
  CHECK(u->cached == 1200);
  CHECK(u->cache_write == 7);
  CHECK(u->completion == 31);
  // Newer API versions repeat every count in message_delta.
  s.take(R"({"type":"message_delta","usage":{"input_tokens":41,"cache_creation_input_tokens":7,"cache_read_input_tokens":1200,"output_tokens":32}})");
  CHECK(s.get()->prompt == 1248);
  // One count not to be trusted: the tokenizer counts the answer instead.
  s.take(R"({"type":"message_delta","usage":{"output_tokens":1e308}})");
  CHECK_FALSE(s.get());
}

TEST_CASE("a Responses API stream's usage comes with its last event", "[usage][relay]") {
  CHECK_FALSE(responses_event_usage(R"({"type":"response.created","response":{"usage":null}})"));
  CHECK_FALSE(responses_event_usage(R"({"type":"response.output_text.delta","delta":"\"usage\""})"));
  for (const char* type : {"response.completed", "response.incomplete", "response.failed"}) {
    auto u = responses_event_usage(std::string(R"({"type":")") + type +
                                   R"(","sequence_number":9,"response":{"usage":{"input_tokens":5,"input_tokens_details":{"cached_tokens":1},"output_tokens":4}}})");
    REQUIRE(u);
    CHECK(u->prompt == 5);
    CHECK(u->cached == 1);
    CHECK(u->completion == 4);
  }
  bool refused = false;
  CHECK_FALSE(responses_event_usage(R"({"type":"response.completed","response":{"usage":{"input_tokens":"5"}}})", &refused));
  CHECK(refused);
}

TEST_CASE("usage is read past strings with escapes, quotes and look-alike keys", "[usage]") {
  // Escaped quotes and backslashes (one at a string's very end), "usage" written inside strings,
  // and usage objects nested in the content, the choices and another member: only the top level
  // counts.
  const std::string answer =
      R"({"id":"a\"b","choices":[{"message":{"content":"say \"usage\":{\"prompt_tokens\":999} \\",)"
      R"("usage":{"prompt_tokens":888}},"finish_reason":"stop"}],"note":{"usage":{"completion_tokens":777}},)"
      R"("text":"\u0022usage\u0022:{\u0022prompt_tokens\u0022:666}\\\\","usage":{"prompt_tokens":12,)"
      R"("x":"}\\\"],{","completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4,"note":"\"cached_tokens\":9"},)"
      R"("completion_tokens_details":{"y":[{"reasoning_tokens":99}],"reasoning_tokens":2}},"tail":"\\"})";
  auto u = usage_from_json(answer);
  REQUIRE(u);
  CHECK(u->prompt == 12);
  CHECK(u->completion == 5);
  CHECK(u->cached == 4);
  CHECK(u->reasoning == 2);
  // Keys written with escapes are the keys they decode to, in the usage object and its details.
  u = usage_from_json(R"({"usage":{"prompt_\u0074okens":5,"completion_tokens":2,"prompt_tokens_details":{"cached\u005ftokens":3}}})");
  REQUIRE(u);
  CHECK(u->prompt == 5);
  CHECK(u->cached == 3);
  // A string with an escape on either side of a 16-byte boundary, before the usage's members.
  for (std::size_t at = 0; at <= 40; ++at) {
    std::string pad(40, 'p');
    pad.insert(at, "\\\"");
    u = usage_from_json(R"({"usage":{"a":")" + pad + R"(","prompt_tokens":7,"b":")" + pad + R"(","completion_tokens":1}})");
    REQUIRE(u);
    CHECK(u->prompt == 7);
    CHECK(u->completion == 1);
  }
}

TEST_CASE("an answer with a raw control byte or bad UTF-8 anywhere has no usage, one with good UTF-8 has", "[usage][hardening]") {
  const std::vector<std::string> bad = {"\x01", "\n", "\x1f", std::string(1, '\0'), "\xc3", "\x80", "\xff",
                                        "\xc0\xaf", "\xed\xa0\x80", "\xe4\xb8", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
                                        "\\x", "\\ud83d"};
  const std::vector<std::string> good = {"\x7f", "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\\n", "\\u00e9",
                                         "\\ud83d\\ude00", "\\\\", "\\\""};
  for (const std::size_t length : {0, 1, 14, 15, 16, 17, 31, 32, 33, 70}) {
    for (std::size_t at = 0; at <= length; ++at) {
      for (const auto* list : {&bad, &good}) {
        for (const auto& piece : *list) {
          std::string content(length, 'c');
          content.insert(at, piece);
          const bool ok = list == &good;
          // In the content, and in a string inside the usage object itself.
          for (const std::string& text :
               {R"({"choices":[{"message":{"content":")" + content + R"("}}],"usage":{"prompt_tokens":3,"completion_tokens":2}})",
                R"({"usage":{"prompt_tokens":3,"s":")" + content + R"(","completion_tokens":2}})"}) {
            INFO(nlohmann::json(text).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace));
            bool refused = true;
            const auto u = usage_from_json(text, nullptr, &refused);
            CHECK_FALSE(refused);
            REQUIRE(u.has_value() == ok);
            if (ok) CHECK((u->prompt == 3 && u->completion == 2));
          }
        }
      }
    }
  }
}

TEST_CASE("an answer cut short anywhere has no usage", "[usage][hardening]") {
  const std::string answer =
      R"({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,)"
      R"("message":{"role":"assistant","content":"ok \"\u00e9\" \\ )" "\xe4\xb8\xad" R"("},"finish_reason":"stop"}],)"
      R"("usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6,"prompt_tokens_details":{"cached_tokens":2}}})";
  REQUIRE(usage_from_json(answer));
  for (std::size_t cut = 0; cut < answer.size(); ++cut) {
    INFO(cut);
    bool refused = true;
    CHECK_FALSE(usage_from_json(answer.substr(0, cut), nullptr, &refused));
    CHECK_FALSE(refused);
  }
}

TEST_CASE("usage read from every one-byte edit of an answer agrees with nlohmann's reading", "[usage][hardening]") {
  // Deletions, insertions and replacements of the bytes where readers go wrong, at every offset of
  // an answer with escapes, UTF-8, nested objects and details: usage_from_json must give what the
  // reference reads (nothing when the text is not JSON), count for count, whether it looks for the
  // key first (stream events) or scans at once (whole answers).
  const std::string answer =
      R"({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,)"
      R"("message":{"role":"assistant","content":"ok \"q\" \\ \u00e9 )" "\xe4\xb8\xad\xf0\x9f\x98\x80" R"( {\"usage\":[1]}"},)"
      R"("finish_reason":"stop"}],"usage":{"prompt_tokens":50,"completion_tokens":12,"total_tokens":62,)"
      R"("prompt_tokens_details":{"cached_tokens":20,"audio_tokens":null},"completion_tokens_details":{"reasoning_tokens":3}}})";
  const std::string bytes =
      std::string("\"\\{}[],:0-1.eEunl \n\t\x01\x1f\x7f\x80\xbf\xc0\xc3\xe4\xed\xf0\xf4\xff") + '\0';
  int checked = 0, with_usage = 0;
  const auto check = [&](const std::string& text) {
    bool refused = false, expected_refused = false;
    const auto got = usage_from_json(text, nullptr, &refused);
    const auto expected = reference_usage(text, expected_refused);
    INFO(nlohmann::json(text).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace));
    REQUIRE(same(got, expected));
    REQUIRE(refused == expected_refused);
    bool scanned_refused = false;
    REQUIRE(same(usage_from_json(text, nullptr, &scanned_refused, /*look_first=*/false), expected));
    REQUIRE(scanned_refused == expected_refused);
    ++checked;
    if (got) ++with_usage;
  };
  check(answer);
  for (std::size_t at = 0; at <= answer.size(); ++at) {
    if (at < answer.size()) check(std::string(answer).erase(at, 1));
    for (const char b : bytes) {
      check(std::string(answer).insert(at, 1, b));
      if (at < answer.size()) {
        std::string replaced = answer;
        replaced[at] = b;
        check(replaced);
      }
    }
  }
  CHECK(checked > 20000);
  CHECK(with_usage > 1000);
}

TEST_CASE("usage keys are told apart by every byte, and the last of duplicates wins in the usage object", "[usage]") {
  // Keys of a name's length, some with its first byte too (output_tokens and prompt_tokens have one
  // length; total_tokens and input_tokens another), an empty key, and a name written twice.
  auto u = usage_from_json(
      R"({"usage":{"":1,"prompt_tokenz":50,"p":2,"prompt_tokens":9,"prompt_tokens":7,"total_tokens":10,)"
      R"("Prompt_tokens":60,"completion_tokens":3,"completion_tokenS":70,"prompt_tokens_details":{"cached_token":80,)"
      R"("cached_tokens":2,"cached_tokenss":90}}})");
  REQUIRE(u);
  CHECK(u->prompt == 7);
  CHECK(u->completion == 3);
  CHECK(u->cached == 2);
  // The Responses API's names only where prompt_tokens is absent: output_tokens is not prompt_tokens.
  u = usage_from_json(R"({"usage":{"output_tokens":4,"input_tokens":11,"input_tokens":12}})");
  REQUIRE(u);
  CHECK(u->prompt == 12);
  CHECK(u->completion == 4);
}

TEST_CASE("usage counts end at whitespace, commas and braces alike, before or after the choices", "[usage]") {
  for (const std::string sp : {"", " ", "\t", "\r\n", " \n\t\r "}) {
    const std::string usage_text = "{" + sp + "\"prompt_tokens\"" + sp + ":" + sp + "21" + sp + "," + sp +
                                   "\"completion_tokens\"" + sp + ":" + sp + "4" + sp + "," + sp +
                                   "\"prompt_tokens_details\"" + sp + ":" + sp + "{" + sp + "\"cached_tokens\"" + sp +
                                   ":" + sp + "null" + sp + "}" + sp + "," + sp + "\"completion_tokens_details\"" +
                                   sp + ":" + sp + "{" + sp + "\"reasoning_tokens\"" + sp + ":" + sp + "2" + sp + "}" +
                                   sp + "}";
    const std::string choices = "\"choices\"" + sp + ":" + sp + "[" + sp + "]";
    for (const bool usage_first : {true, false}) {
      const std::string text = "{" + sp +
                               (usage_first ? "\"usage\"" + sp + ":" + sp + usage_text + sp + "," + sp + choices
                                            : choices + sp + "," + sp + "\"usage\"" + sp + ":" + sp + usage_text) +
                               sp + "}";
      bool no_choices = false;
      const auto u = usage_from_json(text, &no_choices);
      INFO(text);
      REQUIRE(u);
      CHECK(u->prompt == 21);
      CHECK(u->completion == 4);
      CHECK(u->cached == 0);
      CHECK(u->reasoning == 2);
      CHECK(no_choices);
      bool refused = false;
      CHECK(same(u, reference_usage(text, refused)));
    }
  }
}
