#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <vector>

#include "gateway/json_body.hpp"

using namespace tollgate::gateway;

TEST_CASE("routing fields are read from the top level only", "[json_body]") {
  auto r = parse_request_body(
      R"({"messages":[{"role":"user","content":"x","model":"nested"}],"model":"deepseek-chat","stream":true,"max_tokens":64})");
  REQUIRE(r.fields);
  CHECK(r.fields->model == "deepseek-chat");
  CHECK(r.fields->stream);
  CHECK(r.fields->max_tokens == 64);
}

TEST_CASE("defaults and alternates", "[json_body]") {
  auto r = parse_request_body(R"({"model":"m"})");
  REQUIRE(r.fields);
  CHECK_FALSE(r.fields->stream);
  CHECK_FALSE(r.fields->max_tokens);
  auto alt = parse_request_body(R"({"model":"m","max_completion_tokens":12,"stream":null})");
  REQUIRE(alt.fields);
  CHECK(alt.fields->max_tokens == 12);
  CHECK_FALSE(alt.fields->stream);
  auto both = parse_request_body(R"({"max_tokens":5,"model":"m","max_completion_tokens":12})");
  CHECK(both.fields->max_tokens == 5);
}

TEST_CASE("escaped keys and values are decoded", "[json_body]") {
  auto r = parse_request_body(R"({"mod\u0065l":"qwen\u002dmax","x":"\"}{"})");
  REQUIRE(r.fields);
  CHECK(r.fields->model == "qwen-max");
}

TEST_CASE("the last duplicate key wins for reading", "[json_body]") {
  auto r = parse_request_body(R"({"model":"first","model":"second"})");
  REQUIRE(r.fields);
  CHECK(r.fields->model == "second");
}

TEST_CASE("bad bodies are refused with a reason", "[json_body]") {
  struct bad_case {
    const char* body;
    const char* param;
  };
  const bad_case cases[] = {
      {"", ""},
      {"{", ""},
      {"not json", ""},
      {"[1,2]", ""},
      {R"("just a string")", ""},
      {R"({"model":"m",})", ""},
      {R"({"messages":[]})", "model"},
      {R"({"model":""})", "model"},
      {R"({"model":null})", "model"},
      {R"({"model":42})", "model"},
      {R"({"model":"m","stream":"yes"})", "stream"},
      {R"({"model":"m","max_tokens":1.5})", "max_tokens"},
      {R"({"model":"m","max_tokens":-1})", "max_tokens"},
      {R"({"model":"m","max_tokens":"10"})", "max_tokens"},
      {"{\"model\":\"\xff\xfe\"}", ""},  // invalid UTF-8
  };
  for (const auto& c : cases) {
    INFO(c.body);
    auto r = parse_request_body(c.body);
    CHECK_FALSE(r.fields);
    CHECK_FALSE(r.error.empty());
    CHECK(r.error_param == c.param);
  }
}

TEST_CASE("set_top_level replaces only the top-level value, byte for byte", "[json_body]") {
  const std::string head = "{\n  \"messages\": [{\"role\":\"user\",\"content\":\"\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 \\u00e9\"}],\n  ";
  const std::string tail =
      ",\n  \"tools\": [{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"model\":{\"type\":\"string\"}}}}],"
      " \"response_format\": {\"type\":\"json_schema\"}, \"unknown_field\": [1e3, -0.0, true, null]\n}";
  const std::string body = head + "\"model\"  :\t\"public\"" + tail;
  REQUIRE(parse_request_body(body).fields);
  const std::string out = set_top_level(body, "model", json_quote("upstream/名字"));
  CHECK(out == head + "\"model\"  :\t\"upstream/名字\"" + tail);
  CHECK(nlohmann::json::parse(out)["tools"][0]["function"]["parameters"]["model"]["type"] == "string");
}

TEST_CASE("set_top_level replaces every duplicate and handles any value type", "[json_body]") {
  CHECK(set_top_level(R"({"model":"a","x":1,"model":"b"})", "model", "\"z\"") == R"({"model":"z","x":1,"model":"z"})");
  CHECK(set_top_level(R"({"stream_options":{"include_usage":false},"model":"m"})", "stream_options",
                      R"({"include_usage":true})") == R"({"stream_options":{"include_usage":true},"model":"m"})");
  CHECK(set_top_level(R"({"n":[1,[2,{"a":"]"}]],"model":"m"})", "n", "3") == R"({"n":3,"model":"m"})");
  CHECK(set_top_level(R"({"n":12.5e-3 ,"model":"m"})", "n", "true") == R"({"n":true ,"model":"m"})");
}

TEST_CASE("set_top_level appends when the key is absent", "[json_body]") {
  CHECK(set_top_level("{}", "model", "\"m\"") == R"({"model":"m"})");
  CHECK(set_top_level("{ \n}", "model", "\"m\"") == "{ \n\"model\":\"m\"}");
  CHECK(set_top_level(R"({"a":1})", "model", "\"m\"") == R"({"a":1,"model":"m"})");
  CHECK(set_top_level("{\"a\":{\"model\":1} } ", "model", "\"m\"") == "{\"a\":{\"model\":1} ,\"model\":\"m\"} ");
}

TEST_CASE("json_quote escapes what JSON requires and keeps UTF-8", "[json_body]") {
  CHECK(json_quote("plain") == "\"plain\"");
  CHECK(json_quote("a\"b\\c") == R"("a\"b\\c")");
  CHECK(json_quote("line\nnext\ttab") == R"("line\nnext\ttab")");
  CHECK(json_quote(std::string("\x01\x1f", 2)) == R"("\u0001\u001f")");
  CHECK(json_quote("模型 🙂") == "\"模型 🙂\"");
  for (const std::string s : std::vector<std::string>{"x", "\"\\/", "\b\f\r", "中文", std::string(1, '\0')}) {
    CHECK(nlohmann::json::parse(json_quote(s)).get<std::string>() == s);
  }
}
