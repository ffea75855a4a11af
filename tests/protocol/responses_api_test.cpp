#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "protocol/client_dialect.hpp"
#include "protocol/responses_api.hpp"
#include "tests/protocol/sse_events.hpp"

using namespace tollgate::protocol;
using tollgate::test::chat_chunk;
using tollgate::test::split_sse;
using tollgate::test::usage_chunk;
using nlohmann::json;

TEST_CASE("a Responses request becomes a chat request", "[protocol]") {
  const json req = {
      {"model", "gpt-x"},
      {"instructions", "be brief"},
      {"max_output_tokens", 100},
      {"temperature", 0.2},
      {"reasoning", {{"effort", "low"}}},
      {"metadata", {{"k", "v"}}},
      {"include", {"reasoning.encrypted_content"}},
      {"store", false},
      {"tools", json::array({{{"type", "function"}, {"name", "weather"}, {"description", "w"},
                              {"parameters", {{"type", "object"}}}, {"strict", true}}})},
      {"tool_choice", {{"type", "function"}, {"name", "weather"}}},
      {"text", {{"format", {{"type", "json_schema"}, {"name", "answer"}, {"strict", true},
                            {"schema", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}}}}}},
      {"input", json::array({
                    {{"role", "developer"}, {"content", "dev note"}},
                    {{"role", "user"}, {"content", json::array({{{"type", "input_text"}, {"text", "weather?"}},
                                                               {{"type", "input_image"}, {"image_url", "https://x/y.png"}, {"detail", "low"}}})}},
                    {{"type", "reasoning"}, {"id", "rs_1"}, {"summary", json::array()}},
                    {{"type", "function_call"}, {"call_id", "call_1"}, {"name", "weather"}, {"arguments", "{\"c\":1}"}},
                    {{"type", "function_call"}, {"call_id", "call_2"}, {"name", "weather"}, {"arguments", "{\"c\":2}"}},
                    {{"type", "function_call_output"}, {"call_id", "call_1"}, {"output", "sunny"}},
                    {{"type", "function_call_output"}, {"call_id", "call_2"}, {"output", "rainy"}},
                    {{"type", "message"}, {"role", "assistant"}, {"content", json::array({{{"type", "output_text"}, {"text", "done"}}})}},
                })},
  };
  const auto t = responses_request_to_chat(req.dump());
  INFO(t.error);
  REQUIRE(t.ok());
  const json c = json::parse(t.body);
  CHECK(c["model"] == "gpt-x");
  CHECK(c["max_tokens"] == 100);
  CHECK(c["temperature"] == 0.2);
  CHECK(c["reasoning_effort"] == "low");
  CHECK_FALSE(c.contains("metadata"));
  CHECK(c["tools"][0] == json{{"type", "function"}, {"function", {{"name", "weather"}, {"description", "w"},
                                                                  {"parameters", {{"type", "object"}}}, {"strict", true}}}});
  CHECK(c["tool_choice"] == json{{"type", "function"}, {"function", {{"name", "weather"}}}});
  CHECK(c["response_format"]["type"] == "json_schema");
  CHECK(c["response_format"]["json_schema"]["name"] == "answer");
  CHECK(c["response_format"]["json_schema"]["strict"] == true);
  CHECK(c["response_format"]["json_schema"]["schema"]["properties"]["city"]["type"] == "string");
  const json& m = c["messages"];
  REQUIRE(m.size() == 7);
  CHECK(m[0] == json{{"role", "system"}, {"content", "be brief"}});
  CHECK(m[1] == json{{"role", "system"}, {"content", "dev note"}});
  CHECK(m[2]["content"][0] == json{{"type", "text"}, {"text", "weather?"}});
  CHECK(m[2]["content"][1] == json{{"type", "image_url"}, {"image_url", {{"url", "https://x/y.png"}, {"detail", "low"}}}});
  CHECK(m[3]["role"] == "assistant");
  REQUIRE(m[3]["tool_calls"].size() == 2);  // two calls in a row: one assistant turn
  CHECK(m[3]["tool_calls"][1]["id"] == "call_2");
  CHECK(m[4] == json{{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "sunny"}});
  CHECK(m[5] == json{{"role", "tool"}, {"tool_call_id", "call_2"}, {"content", "rainy"}});
  CHECK(m[6] == json{{"role", "assistant"}, {"content", "done"}});
}

TEST_CASE("a Responses request with a string input streams with usage", "[protocol]") {
  const auto t = responses_request_to_chat(R"({"model":"m","input":"hi","stream":true})");
  REQUIRE(t.ok());
  const json c = json::parse(t.body);
  CHECK(c["messages"] == json::array({{{"role", "user"}, {"content", "hi"}}}));
  CHECK(c["stream_options"]["include_usage"] == true);
}

TEST_CASE("what chat completions cannot do is refused with the field named", "[protocol]") {
  auto param = [](const json& extra) {
    json r = {{"model", "m"}, {"input", "hi"}};
    r.update(extra);
    const auto t = responses_request_to_chat(r.dump());
    REQUIRE_FALSE(t.ok());
    return t.param;
  };
  CHECK(param({{"previous_response_id", "resp_1"}}) == "previous_response_id");
  CHECK(param({{"store", true}}) == "store");  // nothing stores a translated response
  CHECK(param({{"store", "yes"}}) == "store");
  CHECK(param({{"tools", json::array({{{"type", "web_search"}}})}}) == "tools[0].type");
  CHECK(param({{"input", json::array({{{"type", "item_reference"}, {"id", "x"}}})}}) == "input[0].type");
  CHECK(param({{"input", json::array({{{"role", "user"}, {"content", json::array({{{"type", "input_file"}, {"file_id", "f"}}})}}})}}) ==
        "input[0].content[0].type");
  CHECK(param({{"background", true}}) == "background");
  CHECK(param({{"include", {"file_search_call.results"}}}) == "include[0]");
  CHECK(param({{"text", {{"format", {{"type", "json_schema"}, {"name", "x"}}}}}}) == "text.format.schema");
  CHECK(param({{"input", nullptr}}) == "input");
}

TEST_CASE("a chat completion becomes a response object", "[protocol]") {
  const json chat = {
      {"choices", json::array({{{"index", 0},
                                {"message", {{"role", "assistant"}, {"content", "Hi"}, {"reasoning_content", "r"},
                                             {"tool_calls", json::array({{{"id", "call_1"}, {"type", "function"},
                                                                          {"function", {{"name", "f"}, {"arguments", "{}"}}}}})}}},
                                {"finish_reason", "tool_calls"}}})},
      {"usage", {{"prompt_tokens", 11}, {"completion_tokens", 4}, {"completion_tokens_details", {{"reasoning_tokens", 2}}}}}};
  const json req = {{"model", "gpt-x"}, {"input", "hi"}, {"metadata", {{"k", "v"}}}, {"instructions", "i"}};
  const auto t = chat_answer_to_response(chat.dump(), req.dump(), "gpt-x");
  REQUIRE(t.ok());
  const json r = json::parse(t.body);
  CHECK(r["object"] == "response");
  CHECK(r["id"].get<std::string>().starts_with("resp_"));
  CHECK(r["status"] == "completed");
  CHECK(r["model"] == "gpt-x");
  CHECK(r["metadata"] == json{{"k", "v"}});
  CHECK(r["instructions"] == "i");
  REQUIRE(r["output"].size() == 3);
  CHECK(r["output"][0]["type"] == "reasoning");
  CHECK(r["output"][0]["summary"][0]["text"] == "r");
  CHECK(r["output"][1]["type"] == "message");
  CHECK(r["output"][1]["content"][0]["type"] == "output_text");
  CHECK(r["output"][1]["content"][0]["text"] == "Hi");
  CHECK(r["output"][2]["type"] == "function_call");
  CHECK(r["output"][2]["call_id"] == "call_1");
  CHECK(r["output"][2]["arguments"] == "{}");
  CHECK(r["usage"] == json{{"input_tokens", 11}, {"input_tokens_details", {{"cached_tokens", 0}}}, {"output_tokens", 4},
                           {"output_tokens_details", {{"reasoning_tokens", 2}}}, {"total_tokens", 15}});

  json cut = chat;
  cut["choices"][0]["finish_reason"] = "length";
  const json rc = json::parse(chat_answer_to_response(cut.dump(), "{}", "m").body);
  CHECK(rc["status"] == "incomplete");
  CHECK(rc["incomplete_details"]["reason"] == "max_output_tokens");
}

TEST_CASE("a chat stream becomes Responses events", "[protocol]") {
  chat_stream_to_responses t(R"({"model":"gpt-x","input":"hi"})", "gpt-x");
  std::string out;
  out += t.event(chat_chunk({{"role", "assistant"}, {"content", ""}}));
  out += t.event(chat_chunk({{"content", "Hel"}}));
  out += t.event(chat_chunk({{"content", "lo"}}));
  out += t.event(chat_chunk({{"tool_calls", json::array({{{"index", 0}, {"id", "call_1"}, {"type", "function"},
                                                          {"function", {{"name", "f"}, {"arguments", "{\"a\""}}}}})}}));
  out += t.event(chat_chunk({{"tool_calls", json::array({{{"index", 0}, {"function", {{"arguments", ":1}"}}}}})}}));
  out += t.event(chat_chunk(json::object(), "tool_calls"));
  out += t.event(usage_chunk(7, 5));
  out += t.event("data: [DONE]\n\n");
  out += t.end();
  const auto ev = split_sse(out);
  std::vector<std::string> names;
  std::int64_t seq = 0;
  for (const auto& e : ev) {
    names.push_back(e.name);
    CHECK(e.data["type"] == e.name);
    CHECK(e.data["sequence_number"] == seq++);
  }
  const std::vector<std::string> want = {
      "response.created", "response.in_progress",
      "response.output_item.added", "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
      "response.output_text.done", "response.content_part.done", "response.output_item.done",
      "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
      "response.function_call_arguments.done", "response.output_item.done",
      "response.completed"};
  CHECK(names == want);
  CHECK(ev[0].data["response"]["status"] == "in_progress");
  CHECK(ev[6].data["text"] == "Hello");
  CHECK(ev[9].data["output_index"] == 1);
  CHECK(ev[9].data["item"]["call_id"] == "call_1");
  CHECK(ev[12].data["arguments"] == "{\"a\":1}");
  const json& done = ev.back().data["response"];
  CHECK(done["status"] == "completed");
  CHECK(done["model"] == "gpt-x");
  REQUIRE(done["output"].size() == 2);
  CHECK(done["output"][0]["content"][0]["text"] == "Hello");
  CHECK(done["output"][1]["arguments"] == "{\"a\":1}");
  CHECK(done["usage"]["input_tokens"] == 7);
  CHECK(done["usage"]["output_tokens"] == 5);
  CHECK(t.end().empty());
}

TEST_CASE("a Responses stream cut at max tokens is incomplete, a broken one fails", "[protocol]") {
  chat_stream_to_responses t("{}", "m");
  std::string out = t.event(chat_chunk({{"reasoning_content", "think"}}));
  out += t.event(chat_chunk({{"content", "a"}}, "length"));
  out += t.end();
  const auto ev = split_sse(out);
  CHECK(ev[2].data["item"]["type"] == "reasoning");
  CHECK(ev.back().name == "response.incomplete");
  CHECK(ev.back().data["response"]["output"][0]["summary"][0]["text"] == "think");

  chat_stream_to_responses b("{}", "m");
  std::string out2 = b.event(chat_chunk({{"content", "a"}}));
  out2 += b.error(502, "upstream broke");
  CHECK(b.end().empty());
  const auto ev2 = split_sse(out2);
  CHECK(ev2[ev2.size() - 2].name == "error");
  CHECK(ev2[ev2.size() - 2].data["message"] == "upstream broke");
  CHECK(ev2.back().name == "response.failed");
}

TEST_CASE("a relayed Responses answer names the response it stored before the answer is handed on", "[protocol]") {
  std::vector<std::string> noted;
  {
    // Whole: the id is noted inside whole(), before the answer it returns goes anywhere.
    const auto relay = tollgate::protocol::responses_relay([&](const std::string& id) { noted.push_back(id); });
    const auto answer = relay->whole(200, R"({"id":"resp_1","object":"response","store":true,"output":[]})");
    CHECK(noted == std::vector<std::string>{"resp_1"});
    CHECK(answer.body.find("resp_1") != std::string::npos);
    CHECK(relay->stored_response_id() == "resp_1");
  }
  {
    // Not stored, or an error: nothing noted.
    const auto relay = tollgate::protocol::responses_relay([&](const std::string& id) { noted.push_back(id); });
    relay->whole(200, R"({"id":"resp_2","object":"response","store":false})");
    relay->whole(500, R"({"id":"resp_3"})");
    CHECK(noted.size() == 1);
    CHECK(relay->stored_response_id().empty());
  }
  {
    // A stream: at its response.created event, before event() returns it.
    const auto relay = tollgate::protocol::responses_relay([&](const std::string& id) { noted.push_back(id); });
    relay->event("event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,"
                 "\"response\":{\"id\":\"resp_4\",\"status\":\"in_progress\"}}\n\n");
    CHECK(noted == std::vector<std::string>{"resp_1", "resp_4"});
    relay->event("event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":1,"
                 "\"response\":{\"id\":\"resp_4\",\"status\":\"completed\"}}\n\n");
    CHECK(noted.size() == 2);
  }
  {
    // Without a hook, as before.
    const auto relay = tollgate::protocol::responses_relay();
    relay->whole(200, R"({"id":"resp_5","object":"response"})");
    CHECK(relay->stored_response_id() == "resp_5");
  }
}
