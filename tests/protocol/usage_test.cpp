#include <catch2/catch.hpp>

#include <string>

#include "protocol/usage.hpp"

using namespace tollgate::protocol;

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
