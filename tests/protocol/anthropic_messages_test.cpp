#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "protocol/anthropic_messages.hpp"
#include "tests/protocol/sse_events.hpp"

using namespace tollgate::protocol;
using tollgate::test::chat_chunk;
using tollgate::test::split_sse;
using tollgate::test::usage_chunk;
using nlohmann::json;

namespace {

json to_chat(const json& anthropic) {
  const auto t = messages_request_to_chat(anthropic.dump());
  INFO(t.error);
  REQUIRE(t.ok());
  return json::parse(t.body);
}

std::string refused_param(const json& anthropic) {
  const auto t = messages_request_to_chat(anthropic.dump());
  REQUIRE_FALSE(t.ok());
  CHECK(t.error.find(t.param) == 0);  // the message starts with the field it names
  return t.param;
}

}  // namespace

TEST_CASE("an Anthropic request with system, turns, tools and tool results becomes a chat request", "[protocol]") {
  const json req = {
      {"model", "claude-x"},
      {"max_tokens", 256},
      {"system", json::array({{{"type", "text"}, {"text", "be brief"}, {"cache_control", {{"type", "ephemeral"}}}},
                              {{"type", "text"}, {"text", "be kind"}}})},
      {"stop_sequences", {"END"}},
      {"temperature", 0.5},
      {"top_k", 5},
      {"metadata", {{"user_id", "u-1"}}},
      {"tools", json::array({{{"name", "get_weather"}, {"description", "weather"},
                              {"input_schema", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}}}})},
      {"tool_choice", {{"type", "any"}, {"disable_parallel_tool_use", true}}},
      {"messages",
       json::array({{{"role", "user"}, {"content", "weather in Paris?"}},
                    {{"role", "assistant"},
                     {"content", json::array({{{"type", "thinking"}, {"thinking", "use the tool"}, {"signature", "s"}},
                                              {{"type", "text"}, {"text", "Let me look."}},
                                              {{"type", "tool_use"}, {"id", "toolu_1"}, {"name", "get_weather"},
                                               {"input", {{"city", "Paris"}}}}})}},
                    {{"role", "user"},
                     {"content", json::array({{{"type", "tool_result"}, {"tool_use_id", "toolu_1"},
                                               {"content", json::array({{{"type", "text"}, {"text", "sunny"}}})}},
                                              {{"type", "text"}, {"text", "and tomorrow?"}},
                                              {{"type", "image"}, {"source", {{"type", "base64"}, {"media_type", "image/png"}, {"data", "AAAA"}}}}})}}})},
  };
  const json chat = to_chat(req);
  CHECK(chat["model"] == "claude-x");
  CHECK(chat["max_tokens"] == 256);
  CHECK(chat["stop"] == json::array({"END"}));
  CHECK(chat["temperature"] == 0.5);
  CHECK(chat["top_k"] == 5);
  CHECK(chat["user"] == "u-1");
  CHECK(chat["tool_choice"] == "required");
  CHECK(chat["parallel_tool_calls"] == false);
  CHECK(chat["tools"][0]["function"]["name"] == "get_weather");
  CHECK(chat["tools"][0]["function"]["parameters"]["properties"]["city"]["type"] == "string");
  const json& m = chat["messages"];
  REQUIRE(m.size() == 5);
  CHECK(m[0] == json{{"role", "system"}, {"content", "be brief\nbe kind"}});
  CHECK(m[1] == json{{"role", "user"}, {"content", "weather in Paris?"}});
  CHECK(m[2]["role"] == "assistant");
  CHECK(m[2]["content"] == "Let me look.");
  CHECK(m[2]["reasoning_content"] == "use the tool");
  CHECK(m[2]["tool_calls"][0]["id"] == "toolu_1");
  CHECK(json::parse(m[2]["tool_calls"][0]["function"]["arguments"].get<std::string>()) == json{{"city", "Paris"}});
  // The tool result comes first, right after the assistant's call, as chat completions wants.
  CHECK(m[3] == json{{"role", "tool"}, {"tool_call_id", "toolu_1"}, {"content", "sunny"}});
  CHECK(m[4]["role"] == "user");
  CHECK(m[4]["content"][0] == json{{"type", "text"}, {"text", "and tomorrow?"}});
  CHECK(m[4]["content"][1]["image_url"]["url"] == "data:image/png;base64,AAAA");
  CHECK_FALSE(chat.contains("stream"));
}

TEST_CASE("a streamed Anthropic request asks the chat backend for usage", "[protocol]") {
  const json chat = to_chat({{"model", "m"}, {"max_tokens", 10}, {"stream", true},
                             {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}});
  CHECK(chat["stream"] == true);
  CHECK(chat["stream_options"]["include_usage"] == true);
}

TEST_CASE("what a chat request cannot carry is refused with the field named", "[protocol]") {
  const json base = {{"model", "m"}, {"max_tokens", 10}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}};
  json r = base;
  r.erase("max_tokens");
  CHECK(refused_param(r) == "max_tokens");
  r = base;
  r["thinking"] = {{"type", "enabled"}, {"budget_tokens", 1000}};  // under Anthropic's 1,024
  CHECK(refused_param(r) == "thinking.budget_tokens");
  r = base;
  r["thinking"] = {{"type", "enabled"}, {"budget_tokens", 2000}};  // not under max_tokens (10)
  CHECK(refused_param(r) == "thinking.budget_tokens");
  r = base;
  r["thinking"] = {{"type", "sometimes"}};
  CHECK(refused_param(r) == "thinking.type");
  r = base;
  r["mcp_servers"] = json::array();
  CHECK(refused_param(r) == "mcp_servers");
  r = base;
  r["tools"] = json::array({{{"type", "web_search_20250305"}, {"name", "web_search"}}});
  CHECK(refused_param(r) == "tools[0].type");
  r = base;
  r["messages"][0]["content"] = json::array({{{"type", "document"}, {"source", json::object()}}});
  CHECK(refused_param(r) == "messages[0].content[0].type");
  r = base;
  r["messages"][0]["role"] = "system";
  CHECK(refused_param(r) == "messages[0].role");
  CHECK_FALSE(messages_request_to_chat("not json").ok());
}

TEST_CASE("a chat completion becomes an Anthropic message naming the requested model", "[protocol]") {
  const json chat = {
      {"id", "x"}, {"object", "chat.completion"}, {"model", "upstream-name"},
      {"choices", json::array({{{"index", 0},
                                {"message", {{"role", "assistant"}, {"content", "Checking."}, {"reasoning_content", "hmm"},
                                             {"tool_calls", json::array({{{"id", "call_9"}, {"type", "function"},
                                                                          {"function", {{"name", "f"}, {"arguments", "{\"a\":1}"}}}}})}}},
                                {"finish_reason", "tool_calls"}}})},
      {"usage", {{"prompt_tokens", 30}, {"completion_tokens", 7}, {"prompt_tokens_details", {{"cached_tokens", 10}}}}}};
  const auto t = chat_answer_to_message(chat.dump(), "claude-x");
  REQUIRE(t.ok());
  const json m = json::parse(t.body);
  CHECK(m["type"] == "message");
  CHECK(m["role"] == "assistant");
  CHECK(m["model"] == "claude-x");
  CHECK(m["id"].get<std::string>().starts_with("msg_"));
  REQUIRE(m["content"].size() == 3);
  CHECK(m["content"][0] == json{{"type", "thinking"}, {"thinking", "hmm"}, {"signature", ""}});
  CHECK(m["content"][1] == json{{"type", "text"}, {"text", "Checking."}});
  CHECK(m["content"][2] == json{{"type", "tool_use"}, {"id", "call_9"}, {"name", "f"}, {"input", {{"a", 1}}}});
  CHECK(m["stop_reason"] == "tool_use");
  CHECK(m["stop_sequence"].is_null());
  CHECK(m["usage"] == json{{"input_tokens", 20}, {"cache_creation_input_tokens", 0}, {"cache_read_input_tokens", 10},
                           {"output_tokens", 7}});
  CHECK_FALSE(chat_answer_to_message(R"({"object":"list"})", "m").ok());
}

TEST_CASE("finish reasons map to stop reasons", "[protocol]") {
  auto stop = [](const json& choice_extra) {
    json choice = {{"index", 0}, {"message", {{"role", "assistant"}, {"content", "x"}}}};
    choice.update(choice_extra);
    const json chat = {{"choices", json::array({choice})}};
    const json m = json::parse(chat_answer_to_message(chat.dump(), "m").body);
    return std::pair{m["stop_reason"].get<std::string>(), m["stop_sequence"]};
  };
  CHECK(stop({{"finish_reason", "stop"}}).first == "end_turn");
  CHECK(stop({{"finish_reason", "length"}}).first == "max_tokens");
  CHECK(stop({{"finish_reason", "content_filter"}}).first == "refusal");
  const auto seq = stop({{"finish_reason", "stop"}, {"stop_reason", "END"}});
  CHECK(seq.first == "stop_sequence");
  CHECK(seq.second == "END");
}

TEST_CASE("errors take Anthropic's shape, an overloaded 503 becomes 529", "[protocol]") {
  const auto a = chat_error_to_anthropic(429, R"({"error":{"message":"slow down","type":"rate_limit_error","code":"rpm"}})");
  CHECK(a.status == 429);
  CHECK(json::parse(a.body) == json{{"type", "error"}, {"error", {{"type", "rate_limit_error"}, {"message", "slow down"}}}});
  const auto o = chat_error_to_anthropic(503, R"({"error":{"message":"busy","type":"server_error","code":"overloaded"}})");
  CHECK(o.status == 529);
  CHECK(json::parse(o.body)["error"]["type"] == "overloaded_error");
  CHECK(json::parse(chat_error_to_anthropic(401, "{}").body)["error"]["type"] == "authentication_error");
  CHECK(json::parse(chat_error_to_anthropic(404, "not json").body)["error"]["message"] == "not json");
  CHECK(anthropic_error_type(413) == "request_too_large");
}

TEST_CASE("a chat stream becomes Anthropic's event sequence, text, thinking and tool use", "[protocol]") {
  chat_stream_to_messages t("claude-x");
  std::string out;
  out += t.event(chat_chunk({{"role", "assistant"}, {"content", ""}}));
  out += t.event(chat_chunk({{"reasoning_content", "think"}}));
  out += t.event(chat_chunk({{"content", "Hel"}}));
  out += t.event(chat_chunk({{"content", "lo"}}));
  out += t.event(chat_chunk({{"tool_calls", json::array({{{"index", 0}, {"id", "call_1"}, {"type", "function"},
                                                          {"function", {{"name", "f"}, {"arguments", ""}}}}})}}));
  out += t.event(chat_chunk({{"tool_calls", json::array({{{"index", 0}, {"function", {{"arguments", "{\"a\":"}}}}})}}));
  out += t.event(chat_chunk({{"tool_calls", json::array({{{"index", 0}, {"function", {{"arguments", "1}"}}}}})}}));
  out += t.event(chat_chunk({{"tool_calls", json::array({{{"index", 1}, {"id", "call_2"}, {"type", "function"},
                                                          {"function", {{"name", "g"}, {"arguments", "{}"}}}}})}}));
  out += t.event(chat_chunk(json::object(), "tool_calls"));
  out += t.event(usage_chunk(12, 9, 2));
  out += t.event("data: [DONE]\n\n");
  out += t.end();
  CHECK(t.end().empty());
  const auto ev = split_sse(out);
  std::vector<std::string> names;
  for (const auto& e : ev) {
    names.push_back(e.name);
    CHECK(e.data["type"] == e.name);  // Anthropic repeats the event name as data.type
  }
  const std::vector<std::string> want = {
      "message_start",
      "content_block_start", "content_block_delta", "content_block_stop",                         // thinking
      "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",  // text
      "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",  // tool f
      "content_block_start", "content_block_delta", "content_block_stop",                         // tool g
      "message_delta", "message_stop"};
  CHECK(names == want);
  CHECK(ev[0].data["message"]["model"] == "claude-x");
  CHECK(ev[1].data["content_block"]["type"] == "thinking");
  CHECK(ev[2].data["delta"] == json{{"type", "thinking_delta"}, {"thinking", "think"}});
  CHECK(ev[4].data["index"] == 1);
  CHECK(ev[5].data["delta"] == json{{"type", "text_delta"}, {"text", "Hel"}});
  CHECK(ev[8].data["content_block"] == json{{"type", "tool_use"}, {"id", "call_1"}, {"name", "f"}, {"input", json::object()}});
  CHECK(ev[9].data["delta"] == json{{"type", "input_json_delta"}, {"partial_json", "{\"a\":"}});
  CHECK(ev[12].data["index"] == 3);
  CHECK(ev[15].data["delta"]["stop_reason"] == "tool_use");
  CHECK(ev[15].data["usage"] == json{{"input_tokens", 10}, {"cache_creation_input_tokens", 0}, {"cache_read_input_tokens", 2},
                                     {"output_tokens", 9}});
}

TEST_CASE("an empty chat stream still gives a whole Anthropic sequence, an error event ends it", "[protocol]") {
  chat_stream_to_messages t("m");
  const auto ev = split_sse(t.end());
  REQUIRE(ev.size() == 3);
  CHECK(ev[0].name == "message_start");
  CHECK(ev[1].data["delta"]["stop_reason"] == "end_turn");
  CHECK(ev[2].name == "message_stop");

  chat_stream_to_messages e("m");
  std::string out = e.event(chat_chunk({{"content", "a"}}));
  out += e.event(R"(data: {"error":{"message":"upstream broke","type":"upstream_error"}})" "\n\n");
  CHECK(e.end().empty());
  const auto ev2 = split_sse(out);
  CHECK(ev2.back().name == "error");
  CHECK(ev2.back().data["error"]["message"] == "upstream broke");
  CHECK(ev2.back().data["error"]["type"] == "api_error");
}

TEST_CASE("extended thinking asks the chat backend for the reasoning effort its budget names", "[protocol]") {
  const auto effort = [](const json& thinking) {
    const json chat = to_chat({{"model", "m"}, {"max_tokens", 32000}, {"thinking", thinking},
                               {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}});
    return chat.contains("reasoning_effort") ? chat["reasoning_effort"] : json();
  };
  CHECK(effort({{"type", "enabled"}, {"budget_tokens", 1024}}) == "low");
  CHECK(effort({{"type", "enabled"}, {"budget_tokens", 4096}}) == "medium");
  CHECK(effort({{"type", "enabled"}, {"budget_tokens", 16384}}) == "high");
  CHECK(effort({{"type", "disabled"}}).is_null());
}
