// Text chunks of a chat stream are translated without a JSON tree (read_chat_text_delta): the
// events are byte for byte those the tree gives. The tree is made to read the same chunks by an
// empty tool_calls list beside the text, which only the tree path takes.
#include <catch2/catch.hpp>

#include <regex>
#include <string>
#include <vector>

#include "protocol/anthropic_messages.hpp"
#include "protocol/anthropic_upstream.hpp"
#include "protocol/json_body.hpp"
#include "protocol/responses_api.hpp"

using namespace tollgate::protocol;

namespace {

std::string sse(const std::string& data) { return "data: " + data + "\n\n"; }

/// Text chunks as upstreams write them: escapes of every kind, raw UTF-8, spaces, a role chunk,
/// reasoning then content, then the finish and usage chunks. with_tools adds "tool_calls": [].
std::vector<std::string> text_stream(bool with_tools) {
  const std::string tools = with_tools ? R"(,"tool_calls":[])" : "";
  std::vector<std::string> texts = {
      R"("")", R"("Let me think")", R"(" about \"this\"\n\tfirst")", R"("caf\u00e9 \ud83d\ude00 \/ \\ end")",
  };
  std::vector<std::string> out;
  out.push_back(sse(R"({"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"")" + tools +
                    R"(}}]})"));
  for (const auto& t : texts) {
    out.push_back(sse(R"({"id":"c1","choices":[{"index":0,"delta":{"reasoning_content":)" + t + tools + R"(},"finish_reason":null}]})"));
  }
  for (const auto& t : texts) {
    out.push_back(sse(R"({ "id" : "c1", "choices" : [ { "index" : 0, "delta" : { "content" : )" + t + tools +
                      R"( }, "logprobs": null } ], "usage": null })"));
  }
  out.push_back(sse(R"({"id":"c1","choices":[{"index":0,"delta":{"content":"你好, both","reasoning_content":"and more")" + tools +
                    R"(}}]})"));
  out.push_back(sse(R"({"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})"));
  out.push_back(sse(R"({"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}})"));
  out.push_back("data: [DONE]\n\n");
  return out;
}

/// Random ids and the clock read as placeholders.
std::string normalized(std::string s) {
  s = std::regex_replace(s, std::regex(R"(\b(msg|rs|resp)_[A-Za-z0-9]+)"), "$1_ID");
  s = std::regex_replace(s, std::regex(R"("created":[0-9]+)"), R"("created":0)");
  return std::regex_replace(s, std::regex(R"("created_at":[0-9]+)"), R"("created_at":0)");
}

template <class Translator>
std::string run(Translator t, const std::vector<std::string>& chunks) {
  std::string out;
  for (const auto& c : chunks) out += t.event(c);
  return out + t.end();
}

}  // namespace

TEST_CASE("read_chat_text_delta reads text chunks only", "[protocol][stream]") {
  auto d = read_chat_text_delta(R"({"choices":[{"index":0,"delta":{"content":"a\nb"}}]})");
  REQUIRE(d);
  CHECK(d->content == R"("a\nb")");
  CHECK(d->reasoning.empty());
  CHECK(json_string_text(d->content) == "a\nb");
  d = read_chat_text_delta(R"({"choices":[{"delta":{"content":null,"reasoning_content":"r","tool_calls":null}}],"usage":null})");
  REQUIRE(d);
  CHECK(d->content.empty());
  CHECK(d->reasoning == R"("r")");
  // Anything the translators must look at whole.
  for (const char* other : {R"({"choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]})",
                            R"({"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":1}})",
                            R"({"choices":[{"delta":{"tool_calls":[{"index":0}]}}]})",
                            R"({"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]})",
                            R"({"choices":[{"delta":{"content":5}}]})", R"({"choices":[]})", R"({"error":{"message":"x"}})",
                            R"({"choices":[{"delta":{"content":"a"}}]} trailing)", "[DONE]", R"({"choices":[{"delta":"x"}]})"}) {
    INFO(other);
    CHECK(!read_chat_text_delta(other));
  }
}

TEST_CASE("text chunks translate to the same Messages and Responses events with or without a tree", "[protocol][stream]") {
  const auto fast = text_stream(false);
  const auto tree = text_stream(true);
  // Every text chunk of the first takes the way without a tree; none of the second does.
  std::size_t fast_chunks = 0;
  for (std::size_t i = 0; i < fast.size(); ++i) {
    const auto data = fast[i].substr(6, fast[i].size() - 8);
    if (read_chat_text_delta(data)) ++fast_chunks;
    CHECK(!read_chat_text_delta(tree[i].substr(6, tree[i].size() - 8)));
  }
  CHECK(fast_chunks == 10);

  const std::string messages = run(chat_stream_to_messages("m"), fast);
  CHECK(normalized(messages) == normalized(run(chat_stream_to_messages("m"), tree)));
  CHECK(messages.find(R"("text":"caf\u00e9)") == std::string::npos);  // written as the tree writes it: UTF-8
  CHECK(messages.find("café 😀 / \\\\ end") != std::string::npos);

  const std::string request = R"({"model":"m","input":"hi","stream":true})";
  const std::string responses = run(chat_stream_to_responses(request, "m"), fast);
  CHECK(normalized(responses) == normalized(run(chat_stream_to_responses(request, "m"), tree)));
  // The text collected for the done events and the final response is the decoded text.
  CHECK(responses.find(R"("text":"Let me think about \"this\"\n\tfirstcafé 😀 / \\ end")") != std::string::npos);
  CHECK(responses.find(R"("text":"你好, both")") != std::string::npos);
}

TEST_CASE("Anthropic text and thinking deltas translate to the same chat chunks with or without a tree", "[protocol][stream]") {
  // escaped: the delta types written with an escape, which only the tree reads as the same name.
  const auto stream = [](bool escaped) {
    const std::string block_delta = escaped ? R"("content_block\u005fdelta")" : R"("content_block_delta")";
    const std::string text_delta = escaped ? R"("text\u005fdelta")" : R"("text_delta")";
    const std::string thinking_delta = escaped ? R"("thinking\u005fdelta")" : R"("thinking_delta")";
    std::vector<std::string> out = {
        "event: message_start\ndata: " +
            std::string(R"({"type":"message_start","message":{"id":"msg_é1","model":"claude-x","usage":{"input_tokens":5,"output_tokens":1}}})") +
            "\n\n",
        R"(event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}

)",
    };
    for (const std::string t : {R"("hmm \"quoted\"\n")", R"("caf\u00e9 \ud83d\ude00")", R"("")"}) {
      out.push_back("event: content_block_delta\ndata: {\"type\":" + block_delta + R"(,"index":0,"delta":{"type":)" + thinking_delta +
                    R"(,"thinking":)" + t + "}}\n\n");
    }
    out.push_back("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
    for (const std::string t : {R"("Hello")", R"(" wörld\t\\ \/ end")", R"("你好")"}) {
      out.push_back("event: content_block_delta\ndata: { \"type\" : " + block_delta + R"( , "index":1, "delta": { "type": )" + text_delta +
                    R"(, "text": )" + t + " } }\n\n");
    }
    out.push_back("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n");
    out.push_back("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    return out;
  };
  const auto run_chat = [](const std::vector<std::string>& events) {
    messages_stream_to_chat t(true);
    std::string out;
    for (const auto& e : events) out += t.event(e);
    return out;
  };
  const std::string fast = run_chat(stream(false));
  CHECK(normalized(fast) == normalized(run_chat(stream(true))));
  CHECK(fast.find(R"({"choices":[{"delta":{"content":" wörld\t\\ / end"},"finish_reason":null,"index":0}],"created":)") !=
        std::string::npos);
  CHECK(fast.find(R"("reasoning_content":"café 😀")") != std::string::npos);
  CHECK(fast.find(R"("id":"msg_é1","model":"claude-x","object":"chat.completion.chunk")") != std::string::npos);
  CHECK(fast.find(R"("finish_reason":"stop")") != std::string::npos);
}
