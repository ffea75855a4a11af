#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "protocol/anthropic_messages.hpp"
#include "protocol/anthropic_upstream.hpp"
#include "tests/protocol/sse_events.hpp"

using namespace tollgate::protocol;
using tollgate::test::split_sse;
using nlohmann::json;

namespace {

std::string anthropic_event(const json& data) { return sse_event(data["type"].get<std::string>(), data.dump()); }

/// The events Anthropic documents for a streamed answer with text and one tool call.
std::vector<std::string> documented_stream() {
  return {
      anthropic_event({{"type", "message_start"},
                       {"message", {{"id", "msg_01"}, {"type", "message"}, {"role", "assistant"}, {"model", "claude-up"},
                                    {"content", json::array()}, {"stop_reason", nullptr}, {"stop_sequence", nullptr},
                                    {"usage", {{"input_tokens", 25}, {"cache_read_input_tokens", 5},
                                               {"cache_creation_input_tokens", 3}, {"output_tokens", 1}}}}}}),
      anthropic_event({{"type", "content_block_start"}, {"index", 0}, {"content_block", {{"type", "text"}, {"text", ""}}}}),
      "event: ping\ndata: {\"type\": \"ping\"}\n\n",
      anthropic_event({{"type", "content_block_delta"}, {"index", 0}, {"delta", {{"type", "text_delta"}, {"text", "Okay"}}}}),
      anthropic_event({{"type", "content_block_stop"}, {"index", 0}}),
      anthropic_event({{"type", "content_block_start"}, {"index", 1},
                       {"content_block", {{"type", "tool_use"}, {"id", "toolu_01"}, {"name", "get_weather"}, {"input", json::object()}}}}),
      anthropic_event({{"type", "content_block_delta"}, {"index", 1}, {"delta", {{"type", "input_json_delta"}, {"partial_json", ""}}}}),
      anthropic_event({{"type", "content_block_delta"}, {"index", 1}, {"delta", {{"type", "input_json_delta"}, {"partial_json", "{\"city\": "}}}}),
      anthropic_event({{"type", "content_block_delta"}, {"index", 1}, {"delta", {{"type", "input_json_delta"}, {"partial_json", "\"Paris\"}"}}}}),
      anthropic_event({{"type", "content_block_stop"}, {"index", 1}}),
      anthropic_event({{"type", "message_delta"}, {"delta", {{"stop_reason", "tool_use"}, {"stop_sequence", nullptr}}},
                       {"usage", {{"output_tokens", 40}}}}),
      anthropic_event({{"type", "message_stop"}}),
  };
}

}  // namespace

TEST_CASE("a chat request becomes a Messages request", "[protocol]") {
  const json chat = {
      {"model", "claude-up"},
      {"max_completion_tokens", 300},
      {"stream", true},
      {"stream_options", {{"include_usage", true}}},
      {"stop", "END"},
      {"user", "u-2"},
      {"parallel_tool_calls", false},
      {"tools", json::array({{{"type", "function"}, {"function", {{"name", "f"}, {"parameters", {{"type", "object"}}}}}}})},
      {"messages", json::array({
                       {{"role", "system"}, {"content", "sys"}},
                       {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "hi"}},
                                                                  {{"type", "image_url"}, {"image_url", {{"url", "data:image/jpeg;base64,QUJD"}}}}})}},
                       {{"role", "assistant"}, {"content", nullptr},
                        {"tool_calls", json::array({{{"id", "c1"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{\"x\":2}"}}}}})}},
                       {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "42"}},
                       {{"role", "user"}, {"content", "thanks"}},
                   })},
  };
  bool include_usage = false;
  const auto t = chat_request_to_messages(chat.dump(), &include_usage);
  INFO(t.error);
  REQUIRE(t.ok());
  CHECK(include_usage);
  const json m = json::parse(t.body);
  CHECK(m["max_tokens"] == 300);
  CHECK(m["stream"] == true);
  CHECK_FALSE(m.contains("stream_options"));
  CHECK(m["system"] == json::array({{{"type", "text"}, {"text", "sys"}}}));
  CHECK(m["stop_sequences"] == json::array({"END"}));
  CHECK(m["metadata"]["user_id"] == "u-2");
  CHECK(m["tools"][0] == json{{"name", "f"}, {"input_schema", {{"type", "object"}}}});
  CHECK(m["tool_choice"] == json{{"type", "auto"}, {"disable_parallel_tool_use", true}});
  const json& msgs = m["messages"];
  REQUIRE(msgs.size() == 3);
  CHECK(msgs[0]["content"][1]["source"] == json{{"type", "base64"}, {"media_type", "image/jpeg"}, {"data", "QUJD"}});
  CHECK(msgs[1]["content"][0] == json{{"type", "tool_use"}, {"id", "c1"}, {"name", "f"}, {"input", {{"x", 2}}}});
  // The tool result and the user's next words share one user turn.
  CHECK(msgs[2]["role"] == "user");
  CHECK(msgs[2]["content"][0] == json{{"type", "tool_result"}, {"tool_use_id", "c1"}, {"content", "42"}});
  CHECK(msgs[2]["content"][1] == json{{"type", "text"}, {"text", "thanks"}});
}

TEST_CASE("a chat request without max_tokens gets the default, what Messages lacks is refused", "[protocol]") {
  const json base = {{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}};
  const auto ok = chat_request_to_messages(base.dump(), nullptr);
  REQUIRE(ok.ok());
  CHECK(json::parse(ok.body)["max_tokens"] == default_anthropic_max_tokens);
  auto refused = [&](const std::string& key, const json& value) {
    json r = base;
    r[key] = value;
    const auto t = chat_request_to_messages(r.dump(), nullptr);
    REQUIRE_FALSE(t.ok());
    return t.param;
  };
  CHECK(refused("n", 2) == "n");
  CHECK(refused("logprobs", true) == "logprobs");
  CHECK(refused("response_format", {{"type", "json_object"}}) == "response_format");
  CHECK(refused("frequency_penalty", 0.5) == "frequency_penalty");
  json bad_args = base;
  bad_args["messages"].push_back({{"role", "assistant"}, {"tool_calls", json::array({{{"id", "c"}, {"type", "function"},
                                                                                       {"function", {{"name", "f"}, {"arguments", "[1"}}}}})}});
  CHECK(chat_request_to_messages(bad_args.dump(), nullptr).param == "messages[1].tool_calls[0].function.arguments");
}

TEST_CASE("reasoning_effort becomes extended thinking with the effort's budget, kept under max_tokens", "[protocol]") {
  const auto thinking = [](const json& effort, int max_tokens) {
    const json chat = {{"model", "m"}, {"max_tokens", max_tokens}, {"reasoning_effort", effort},
                       {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}};
    const auto t = chat_request_to_messages(chat.dump(), nullptr);
    if (!t.ok()) return json{{"refused", t.param}};
    const json m = json::parse(t.body);
    return m.contains("thinking") ? m["thinking"] : json();
  };
  CHECK(thinking("low", 32000) == json{{"type", "enabled"}, {"budget_tokens", 2048}});
  CHECK(thinking("medium", 32000) == json{{"type", "enabled"}, {"budget_tokens", 8192}});
  CHECK(thinking("high", 32000) == json{{"type", "enabled"}, {"budget_tokens", 16384}});
  CHECK(thinking("high", 5000) == json{{"type", "enabled"}, {"budget_tokens", 4999}});
  CHECK(thinking("minimal", 32000).is_null());
  CHECK(thinking("low", 1000) == json{{"refused", "reasoning_effort"}});  // no room for Anthropic's 1,024 minimum
  CHECK(thinking("extreme", 32000) == json{{"refused", "reasoning_effort"}});
  CHECK(thinking(3, 32000) == json{{"refused", "reasoning_effort"}});
}

TEST_CASE("an Anthropic message becomes a chat completion with every input token counted", "[protocol]") {
  const json msg = {{"id", "msg_1"}, {"type", "message"}, {"role", "assistant"}, {"model", "claude-up"},
                    {"content", json::array({{{"type", "thinking"}, {"thinking", "t"}, {"signature", "sig"}},
                                             {{"type", "text"}, {"text", "Hi"}},
                                             {{"type", "tool_use"}, {"id", "toolu_1"}, {"name", "f"}, {"input", {{"a", 1}}}}})},
                    {"stop_reason", "tool_use"}, {"stop_sequence", nullptr},
                    {"usage", {{"input_tokens", 10}, {"cache_read_input_tokens", 4}, {"cache_creation_input_tokens", 6}, {"output_tokens", 3}}}};
  const auto t = message_to_chat_answer(msg.dump());
  REQUIRE(t.ok());
  const json c = json::parse(t.body);
  CHECK(c["object"] == "chat.completion");
  CHECK(c["model"] == "claude-up");
  const json& choice = c["choices"][0];
  CHECK(choice["finish_reason"] == "tool_calls");
  CHECK(choice["message"]["content"] == "Hi");
  CHECK(choice["message"]["reasoning_content"] == "t");
  CHECK(choice["message"]["tool_calls"][0]["id"] == "toolu_1");
  CHECK(json::parse(choice["message"]["tool_calls"][0]["function"]["arguments"].get<std::string>()) == json{{"a", 1}});
  CHECK(c["usage"]["prompt_tokens"] == 20);
  CHECK(c["usage"]["prompt_tokens_details"]["cached_tokens"] == 4);
  CHECK(c["usage"]["cache_creation_input_tokens"] == 6);
  CHECK(c["usage"]["completion_tokens"] == 3);
  CHECK(c["usage"]["total_tokens"] == 23);

  // And back to an Anthropic client: the same usage split.
  const json back = json::parse(chat_answer_to_message(t.body, "claude-x").body);
  CHECK(back["usage"] == msg["usage"]);
  REQUIRE(back["content"].size() == 3);
  CHECK(back["content"][1] == msg["content"][1]);
  CHECK(back["content"][2] == msg["content"][2]);
  CHECK(back["stop_reason"] == "tool_use");
}

TEST_CASE("Anthropic errors take OpenAI's shape, 529 becomes a retryable 503", "[protocol]") {
  const auto o = messages_error_to_chat(529, R"({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})");
  CHECK(o.status == 503);
  CHECK(json::parse(o.body)["error"]["code"] == "overloaded");
  CHECK(json::parse(o.body)["error"]["message"] == "Overloaded");
  const auto c = messages_error_to_chat(400, R"({"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 300000 tokens > 200000 maximum"}})");
  CHECK(c.status == 400);
  CHECK(json::parse(c.body)["error"]["code"] == "context_length_exceeded");
  CHECK(json::parse(messages_error_to_chat(401, "{}").body)["error"]["code"] == "upstream_error");
  CHECK(json::parse(messages_error_to_chat(429, R"({"type":"error","error":{"type":"rate_limit_error","message":"x"}})").body)["error"]["code"] ==
        "rate_limit_exceeded");
}

TEST_CASE("Anthropic's documented stream becomes chat chunks, usage and [DONE]", "[protocol]") {
  messages_stream_to_chat t(true);
  std::string out;
  for (const auto& e : documented_stream()) out += t.event(e);
  CHECK(t.done());
  const auto ev = split_sse(out);
  REQUIRE(ev.size() >= 7);
  CHECK(ev.back().done);
  std::string text, args, finish;
  json usage;
  for (const auto& e : ev) {
    if (e.done) continue;
    CHECK(e.data["object"] == "chat.completion.chunk");
    CHECK(e.data["model"] == "claude-up");
    if (e.data.contains("usage")) usage = e.data["usage"];
    if (e.data["choices"].empty()) continue;
    const json& d = e.data["choices"][0]["delta"];
    if (d.contains("content")) text += d["content"].get<std::string>();
    if (d.contains("tool_calls")) {
      CHECK(d["tool_calls"][0]["index"] == 0);
      if (d["tool_calls"][0].contains("id")) CHECK(d["tool_calls"][0]["function"]["name"] == "get_weather");
      args += d["tool_calls"][0]["function"]["arguments"].get<std::string>();
    }
    if (!e.data["choices"][0]["finish_reason"].is_null()) finish = e.data["choices"][0]["finish_reason"];
  }
  CHECK(text == "Okay");
  CHECK(json::parse(args) == json{{"city", "Paris"}});
  CHECK(finish == "tool_calls");
  CHECK(usage["prompt_tokens"] == 33);
  CHECK(usage["prompt_tokens_details"]["cached_tokens"] == 5);
  CHECK(usage["completion_tokens"] == 40);

  messages_stream_to_chat quiet(false);
  std::string out2;
  for (const auto& e : documented_stream()) out2 += quiet.event(e);
  for (const auto& e : split_sse(out2)) CHECK((e.done || !e.data.contains("usage")));
}

TEST_CASE("Anthropic stream to chat and back to Anthropic keeps text, tool input and usage", "[protocol]") {
  messages_stream_to_chat up(true);
  chat_stream_to_messages down("claude-x");
  std::string out;
  for (const auto& e : documented_stream()) {
    const std::string chat = up.event(e);
    for (std::size_t pos = 0; pos < chat.size();) {
      const auto end = chat.find("\n\n", pos);
      out += down.event(chat.substr(pos, end + 2 - pos));
      pos = end + 2;
    }
  }
  out += down.end();
  json message;
  for (const auto& e : split_sse(out)) {
    if (e.name == "message_start") message = e.data["message"];
    if (e.name == "content_block_start") message["content"].push_back(e.data["content_block"]);
    if (e.name == "content_block_delta") {
      json& block = message["content"][e.data["index"].get<std::size_t>()];
      if (e.data["delta"]["type"] == "text_delta") block["text"] = block["text"].get<std::string>() + e.data["delta"]["text"].get<std::string>();
      if (e.data["delta"]["type"] == "input_json_delta") block["partial"] = block.value("partial", "") + e.data["delta"]["partial_json"].get<std::string>();
    }
    if (e.name == "message_delta") {
      message["stop_reason"] = e.data["delta"]["stop_reason"];
      message["usage"] = e.data["usage"];
    }
  }
  REQUIRE(message["content"].size() == 2);
  CHECK(message["content"][0]["text"] == "Okay");
  CHECK(json::parse(message["content"][1]["partial"].get<std::string>()) == json{{"city", "Paris"}});
  CHECK(message["content"][1]["id"] == "toolu_01");
  CHECK(message["stop_reason"] == "tool_use");
  CHECK(message["usage"] == json{{"input_tokens", 25}, {"cache_creation_input_tokens", 3}, {"cache_read_input_tokens", 5},
                                 {"output_tokens", 40}});
}

TEST_CASE("an error event in an Anthropic stream ends the chat stream with an OpenAI error", "[protocol]") {
  messages_stream_to_chat t(true);
  std::string out = t.event(documented_stream()[0]);
  out += t.event("event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n");
  CHECK(t.done());
  const auto ev = split_sse(out);
  CHECK(ev.back().data["error"]["code"] == "overloaded");
  CHECK(ev.back().data["error"]["message"] == "Overloaded");
}
