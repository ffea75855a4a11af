// Long strings carried across translations as spans of the input: found at the paths asked for,
// and the translations give what they give through the tree alone.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "protocol/anthropic_messages.hpp"
#include "protocol/anthropic_upstream.hpp"
#include "protocol/responses_api.hpp"
#include "protocol/string_spans.hpp"

using namespace tollgate::protocol;
using json = nlohmann::json;

namespace {

std::string long_text(const std::string& seed, std::size_t bytes) {
  std::string out;
  while (out.size() < bytes) out += seed;
  return out;
}

/// The same body, but for a DEL byte in one short string: a body with a DEL is translated
/// through the tree alone. Both outputs parsed, with that one string made equal again.
void check_same_as_tree(const std::string& body, const std::function<translated(std::string_view)>& translate,
                        const std::function<json&(json&)>& marked) {
  json with_del = json::parse(body);
  marked(with_del) = marked(with_del).get<std::string>() + "\x7f";
  const translated spans = translate(body);
  const translated tree = translate(with_del.dump());
  INFO(spans.error << " / " << tree.error);
  REQUIRE(spans.ok());
  REQUIRE(tree.ok());
  json a = json::parse(spans.body), b = json::parse(tree.body);
  marked(b) = marked(a);
  CHECK(a == b);
  CHECK(spans.body.find('\x7f') == std::string::npos);
}

}  // namespace

TEST_CASE("long strings are found at the paths asked for, and only valid ones", "[protocol][spans]") {
  const std::string big = long_text("abc ", 200);
  const json body = {{"model", big},
                     {"messages", json::array({{{"role", "user"}, {"content", big}},
                                               {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", big}}, {{"type", "text"}, {"text", "short"}}})}}})},
                     {big, big}};
  const string_paths wanted = [](std::span<const path_step> p) {
    return path_is(p, {"messages", "[]", "content"}) || path_is(p, {"messages", "[]", "content", "[]", "text"});
  };
  const std::string text = body.dump(1);  // with whitespace
  std::vector<std::pair<std::size_t, std::size_t>> found;
  REQUIRE(find_long_strings(text, 128, wanted, found));
  REQUIRE(found.size() == 2);
  for (const auto& [b, e] : found) CHECK(text.substr(b, e - b) == "\"" + big + "\"");

  // Surrogate escapes and invalid UTF-8 are left to the parser; broken JSON finds nothing.
  const std::string surrogate = R"({"messages":[{"content":")" + big + R"(\ud83d\ude00"}]})";
  CHECK(find_long_strings(surrogate, 128, wanted, found));
  CHECK(found.empty());
  // ... also among other escapes early in a long string, where the scan goes 64 bytes a step.
  const std::string lines = std::string(70, 'a') + R"(\n)" + std::string(70, 'b') + R"(\n)";
  const std::string early = R"({"messages":[{"content":")" + lines + R"(\ud83d\ude00)" + lines + big + R"("}]})";
  CHECK(find_long_strings(early, 128, wanted, found));
  CHECK(found.empty());
  const std::string plain_escapes = R"({"messages":[{"content":")" + lines + R"(\u4e2d)" + lines + big + R"("}]})";
  CHECK(find_long_strings(plain_escapes, 128, wanted, found));
  CHECK(found.size() == 1);
  const std::string bad_utf8 = R"({"messages":[{"content":")" + big + "\xff" + R"("}]})";
  CHECK(find_long_strings(bad_utf8, 128, wanted, found));
  CHECK(found.empty());
  for (const std::string& broken : std::vector<std::string>{R"({"messages":[{"content":")" + big + R"("}])", R"({"messages":[{"content":")" + big + R"("},]})",
                                   R"({"messages":[{"content" ")" + big + R"("}]})", R"(["x"])", R"({"a":1} x)",
                                   R"({"messages":[{"content":")" + big + R"(\x"}]})"}) {
    INFO(broken.substr(0, 40));
    CHECK_FALSE(find_long_strings(broken, 128, wanted, found));
    CHECK(found.empty());
  }
}

TEST_CASE("markers go in and the bytes come back, escapes as written", "[protocol][spans]") {
  const std::string text = R"({"content":")" + long_text(R"(a \"quoted\" line\n, é \u00e9 )", 300) + R"(","n":1})";
  string_spans spans;
  REQUIRE(spans.take_out(text, [](std::span<const path_step> p) { return path_is(p, {"content"}); }));
  CHECK(spans.small().size() < 40);
  CHECK(spans.put_back(spans.small()) == text);
  const json small = json::parse(spans.small());
  // What a translation would write: the string copied, and joined with another.
  const std::string out = json{{"a", small["content"]}, {"b", "x\n" + small["content"].get<std::string>()}}.dump();
  const json back = json::parse(spans.put_back(out));
  const json original = json::parse(text);
  CHECK(back["a"] == original["content"]);
  CHECK(back["b"] == "x\n" + original["content"].get<std::string>());
  // A DEL anywhere: nothing is taken out.
  CHECK_FALSE(spans.take_out(R"({"content":")" + long_text("x", 300) + "\",\"d\":\"\x7f\"}",
                             [](std::span<const path_step>) { return true; }));
}

TEST_CASE("a Messages request with long texts translates as it does through the tree", "[protocol][spans]") {
  const std::string text = long_text("héllo \"wörld\" 😀 \\ line\n", 400);
  const json body = {
      {"model", "m"},
      {"max_tokens", 64},
      {"metadata", {{"user_id", "u1"}}},
      {"system", json::array({{{"type", "text"}, {"text", text}}, {{"type", "text"}, {"text", "short system"}}})},
      {"messages",
       json::array({{{"role", "user"}, {"content", text}},
                    {{"role", "assistant"},
                     {"content", json::array({{{"type", "thinking"}, {"thinking", text}, {"signature", "s"}},
                                              {{"type", "text"}, {"text", text}},
                                              {{"type", "tool_use"}, {"id", "t1"}, {"name", "f"}, {"input", {{"q", text}}}}})}},
                    {{"role", "user"},
                     {"content", json::array({{{"type", "tool_result"}, {"tool_use_id", "t1"}, {"content", text}, {"is_error", true}},
                                              {{"type", "image"}, {"source", {{"type", "base64"}, {"media_type", "image/png"}, {"data", long_text("iVBORw0KGgo", 300)}}}},
                                              {{"type", "text"}, {"text", text}, {"cache_control", {{"type", "ephemeral"}}}}})}}})}};
  check_same_as_tree(body.dump(), [](std::string_view b) { return messages_request_to_chat(b); },
                     [](json& j) -> json& { return j.contains("metadata") ? j["metadata"]["user_id"] : j["user"]; });
  // Refusals are the tree's too.
  json refused = body;
  refused["messages"][0]["content"] = json::array({{{"type", "document"}, {"source", {{"type", "text"}, {"media_type", "text/plain"}, {"data", text}}}}});
  const auto r = messages_request_to_chat(refused.dump());
  CHECK(r.param == "messages[0].content[0].type");
}

TEST_CASE("a Responses request with long texts translates as it does through the tree", "[protocol][spans]") {
  const std::string text = long_text("résumé \"q\" \t😀 ", 500);
  const json body = {{"model", "m"},
                     {"user", "u1"},
                     {"instructions", text},
                     {"input", json::array({{{"role", "user"}, {"content", json::array({{{"type", "input_text"}, {"text", text}},
                                                                                       {{"type", "input_image"}, {"image_url", "data:image/png;base64," + long_text("iVBORw0KGgo", 300)}}})}},
                                            {{"type", "function_call"}, {"call_id", "c1"}, {"name", "f"}, {"arguments", json{{"q", text}}.dump()}},
                                            {{"type", "function_call_output"}, {"call_id", "c1"}, {"output", text}},
                                            {{"role", "assistant"}, {"content", text}}})}};
  check_same_as_tree(body.dump(), [](std::string_view b) { return responses_request_to_chat(b); },
                     [](json& j) -> json& { return j["user"]; });
  json plain = body;
  plain["input"] = text;
  check_same_as_tree(plain.dump(), [](std::string_view b) { return responses_request_to_chat(b); },
                     [](json& j) -> json& { return j["user"]; });
}

TEST_CASE("a chat request with long texts reaches an Anthropic upstream as it does through the tree", "[protocol][spans]") {
  const std::string text = long_text("texte \"long\" ✓\n", 400);
  const json body = {{"model", "m"},
                     {"user", "u1"},
                     {"messages", json::array({{{"role", "system"}, {"content", text}},
                                               {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", text}}})}},
                                               {{"role", "assistant"}, {"content", text},
                                                {"tool_calls", json::array({{{"id", "c1"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", json{{"q", text}}.dump()}}}}})}},
                                               {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", text}},
                                               {{"role", "user"}, {"content", text}}})}};
  bool include_usage = false;
  check_same_as_tree(body.dump(), [&](std::string_view b) { return chat_request_to_messages(b, &include_usage); },
                     [](json& j) -> json& { return j.contains("metadata") ? j["metadata"]["user_id"] : j["user"]; });
}

namespace {

/// Random ids and clock times differ between two translations of the same answer.
json without_ids(json j) {
  if (j.is_object()) {
    for (const char* k : {"id", "created", "created_at"}) j.erase(k);
    for (auto& [k, v] : j.items()) v = without_ids(v);
  } else if (j.is_array()) {
    for (auto& v : j) v = without_ids(v);
  }
  return j;
}

void check_answer_same_as_tree(const json& answer, const std::function<translated(std::string_view)>& translate) {
  json with_del = answer;
  with_del["model"] = answer["model"].get<std::string>() + "\x7f";
  const translated spans = translate(answer.dump());
  const translated tree = translate(with_del.dump());
  REQUIRE(spans.ok());
  REQUIRE(tree.ok());
  json a = without_ids(json::parse(spans.body)), b = without_ids(json::parse(tree.body));
  if (b.contains("model")) b["model"] = a["model"];
  CHECK(a == b);
  CHECK(spans.body.find('\x7f') == std::string::npos);
}

}  // namespace

TEST_CASE("long answers translate as they do through the tree", "[protocol][spans]") {
  const std::string text = long_text("réponse \"longue\" 😀\n", 600);
  const json chat = {{"id", "c1"}, {"object", "chat.completion"}, {"created", 1}, {"model", "up"},
                     {"choices", json::array({{{"index", 0}, {"finish_reason", "tool_calls"},
                                               {"message", {{"role", "assistant"}, {"content", text}, {"reasoning_content", text},
                                                            {"tool_calls", json::array({{{"id", "call_1"}, {"type", "function"},
                                                                                         {"function", {{"name", "f"}, {"arguments", json{{"q", text}}.dump()}}}}})}}}}})},
                     {"usage", {{"prompt_tokens", 10}, {"completion_tokens", 5}}}};
  check_answer_same_as_tree(chat, [](std::string_view b) { return chat_answer_to_message(b, "public"); });
  const std::string request = json{{"model", "public"}, {"instructions", text}, {"input", "hi"}}.dump();
  check_answer_same_as_tree(chat, [&](std::string_view b) { return chat_answer_to_response(b, request, "public"); });
  const json message = {{"id", "msg_1"}, {"type", "message"}, {"role", "assistant"}, {"model", "claude"},
                        {"content", json::array({{{"type", "thinking"}, {"thinking", text}, {"signature", "s"}},
                                                 {{"type", "text"}, {"text", text}},
                                                 {{"type", "text"}, {"text", text}},
                                                 {{"type", "tool_use"}, {"id", "t"}, {"name", "f"}, {"input", {{"q", text}}}}})},
                        {"stop_reason", "tool_use"}, {"usage", {{"input_tokens", 3}, {"output_tokens", 4}}}};
  check_answer_same_as_tree(message, [](std::string_view b) { return message_to_chat_answer(b); });
}
