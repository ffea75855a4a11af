// Counting the prompt and the completion of answers that came without usage.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "gateway/accounting/metering.hpp"
#include "gateway/server/request.hpp"
#include "local_engine/engine.hpp"
#include "tokenizer/tokenizer.hpp"

using namespace tollgate;
using json = nlohmann::json;

namespace {
const std::string tokenizer_file = TOLLGATE_SOURCE_DIR "/data/deepseek_v3/tokenizer.json";
}

TEST_CASE("a chat prompt is counted as the bundled engine renders it", "[metering]") {
  INFO("the tokenizer comes from deploy/fetch-tokenizer.sh");
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const auto tok = tokenizer::tokenizer::load(tokenizer_file);
  const std::vector<std::vector<engine::chat_message>> conversations = {
      {{"user", "hello"}},
      {{"system", "You are terse."}, {"user", "深度求索 is 2 words?"}},
      {{"system", "one"}, {"developer", "two"}, {"user", "q1"}, {"assistant", "a1"}, {"user", "q2 😀"}},
      {{"user", "code: int main() { return 0; }"}, {"assistant", ""}, {"system", "late system"}, {"user", ""}},
  };
  for (const auto& messages : conversations) {
    json body = {{"model", "m"}, {"messages", json::array()}};
    for (const auto& m : messages) body["messages"].push_back({{"role", m.role}, {"content", m.content}});
    INFO(body.dump());
    const auto counted = gateway::count_prompt_tokens(*tok, "/chat/completions", body.dump());
    CHECK(counted == static_cast<std::int64_t>(tok->count(engine::apply_chat_template_text(messages, true))));
  }
  // Content given as parts reads as its text parts, as a string would.
  const auto parts = gateway::count_prompt_tokens(
      *tok, "/chat/completions",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hel"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"lo"}]}]})");
  CHECK(parts == static_cast<std::int64_t>(tok->count(engine::apply_chat_template_text({{"user", "hello"}}, true))));
}

TEST_CASE("a completion is counted from the text the client was sent", "[metering]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const auto tok = tokenizer::tokenizer::load(tokenizer_file);
  const std::string sse =
      "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"reasoning_content\":\"think \"}}]}\n\n"
      "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n"
      "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}]}}]}\n\n"
      "data: [DONE]\n\n";
  CHECK(gateway::count_completion_tokens(*tok, sse, true) ==
        static_cast<std::int64_t>(tok->count("think Hellof{\"a\":1}")));
  const std::string whole = R"({"choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"}}]})";
  CHECK(gateway::count_completion_tokens(*tok, whole, false) == static_cast<std::int64_t>(tok->count("Hi there")));
  // Text taken out of earlier events comes first, as if counted in one piece.
  std::string earlier;
  gateway::append_completion_text(sse, true, earlier);
  CHECK(gateway::count_completion_tokens(*tok, whole, false, earlier) ==
        static_cast<std::int64_t>(tok->count("think Hellof{\"a\":1}Hi there")));
}

TEST_CASE("a stream kept in pieces is counted as the bytes it holds, and its filled pieces never move",
          "[metering]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const auto tok = tokenizer::tokenizer::load(tokenizer_file);
  // 3,000 events appended one by one (about 230 KB), each split across two appends somewhere in
  // its middle, as a relay's writes may cut them.
  gateway::kept_bytes kept;
  std::string whole, expected_text;
  std::vector<std::pair<const char*, std::size_t>> filled;  // each finished piece's bytes and size
  for (int i = 0; i < 3000; ++i) {
    const std::string word = "w" + std::to_string(i) + " ";
    const std::string event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + word + "\"}}]}\n\n";
    const std::size_t cut = static_cast<std::size_t>(i) % event.size();
    const std::size_t pieces_before = kept.pieces().size();
    kept.append(std::string_view(event).substr(0, cut));
    kept.append(std::string_view(event).substr(cut));
    if (kept.pieces().size() > pieces_before && pieces_before > 0)
      filled.emplace_back(kept.pieces()[pieces_before - 1].data(), kept.pieces()[pieces_before - 1].size());
    whole += event;
    expected_text += word;
  }
  CHECK(kept.size() == whole.size());
  std::string joined;
  for (const auto& piece : kept.pieces()) {
    CHECK(piece.capacity() <= 64 * 1024);
    joined += piece;
  }
  CHECK(joined == whole);
  // Pieces grow with what is kept, up to 64 KB: a few dozen, not one an append.
  CHECK(kept.pieces().size() > 3);
  CHECK(kept.pieces().size() < 20);
  // A piece, once the next one started, still holds its bytes where they were written.
  for (std::size_t i = 0; i < filled.size(); ++i) {
    CHECK(kept.pieces()[i].data() == filled[i].first);
    CHECK(kept.pieces()[i].size() == filled[i].second);
  }
  CHECK(gateway::count_completion_tokens(*tok, kept.pieces(), true) ==
        gateway::count_completion_tokens(*tok, whole, true));
  CHECK(gateway::count_completion_tokens(*tok, whole, true) == static_cast<std::int64_t>(tok->count(expected_text)));
  std::string text;
  gateway::append_completion_text(kept.pieces(), true, text);
  CHECK(text == expected_text);
  kept.clear();
  CHECK(kept.empty());
  CHECK(gateway::count_completion_tokens(*tok, kept.pieces(), true) == 0);
}

TEST_CASE("a large string at least half full is kept as it is, and a small or mostly empty one is copied", "[metering]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const auto tok = tokenizer::tokenizer::load(tokenizer_file);
  std::string events;
  for (int i = 0; i < 100; ++i)
    events += "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w" + std::to_string(i) + " \"}}]}\n\n";
  REQUIRE(events.size() >= gateway::kept_bytes::adopted_from);
  gateway::kept_bytes kept;
  kept.append(std::string_view("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"first \"}}]}\n\n"));

  // A write's chunk of many events: its storage becomes a piece, no copy.
  std::string chunk = events;
  const char* const storage = chunk.data();
  kept.append(std::move(chunk));
  CHECK(chunk.empty());
  REQUIRE(kept.pieces().size() == 2);
  CHECK(kept.pieces()[1].data() == storage);
  CHECK(kept.pieces()[1] == events);

  // Small: copied into a piece of kept's own. The string keeps its storage and is emptied.
  std::string small = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"last\"}}]}\n\n";
  kept.append(std::move(small));
  CHECK(small.empty());
  REQUIRE(kept.pieces().size() == 3);

  // Large and filling three fifths of its storage (a chunk whose storage doubled as reads
  // gathered in it): kept as it is.
  std::string gathered;
  gathered.reserve(events.size() * 5 / 3);
  gathered = events;
  const char* const gathered_storage = gathered.data();
  kept.append(std::move(gathered));
  REQUIRE(kept.pieces().size() == 4);
  CHECK(kept.pieces()[3].data() == gathered_storage);

  // Large but mostly empty (its storage would keep four times its bytes): copied.
  std::string sparse;
  sparse.reserve(events.size() * 4);
  sparse = events;
  const char* const sparse_storage = sparse.data();
  kept.append(std::move(sparse));
  CHECK(sparse.empty());
  for (const auto& piece : kept.pieces()) CHECK(piece.data() != sparse_storage);

  std::string joined;
  for (const auto& piece : kept.pieces()) joined += piece;
  const std::string last = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"last\"}}]}\n\n";
  const std::string all = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"first \"}}]}\n\n" + events + last + events + events;
  CHECK(joined == all);
  CHECK(kept.size() == all.size());
  CHECK(gateway::count_completion_tokens(*tok, kept.pieces(), true) == gateway::count_completion_tokens(*tok, all, true));
}

TEST_CASE("a prompt nested far too deep is counted as raw text, not walked", "[metering][hardening]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const auto tok = tokenizer::tokenizer::load(tokenizer_file);
  // Dumping 200,000 levels recursively overflowed the stack and killed the process.
  const std::size_t depth = 200'000;
  const std::string body = R"({"model":"m","messages":[{"role":"assistant","content":"x","tool_calls":)" +
                           std::string(depth, '[') + std::string(depth, ']') + "}],\"tools\":" +
                           std::string(depth, '[') + std::string(depth, ']') + "}";
  CHECK(gateway::count_prompt_tokens(*tok, "/chat/completions", body) ==
        static_cast<std::int64_t>(tok->count(body)));
}

TEST_CASE("relayed answers without usage are counted from their own shapes", "[metering][relay]") {
  // Anthropic: the text, thinking and tool input deltas of a stream; a message's blocks.
  const std::string messages_sse =
      "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"content\":[]}}\n\n"
      "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm \"}}\n\n"
      "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"xyz\"}}\n\n"
      "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"hello\"}}\n\n"
      "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n"
      "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
  std::string text;
  gateway::append_completion_text(messages_sse, true, text);
  CHECK(text == "hmm hello{}");
  text.clear();
  gateway::append_completion_text(
      R"({"type":"message","content":[{"type":"thinking","thinking":"a","signature":"s"},{"type":"text","text":"b"},)"
      R"({"type":"tool_use","id":"t","name":"f","input":{"x":1}}]})",
      false, text);
  CHECK(text == R"(abf{"x":1})");
  // The Responses API: deltas only (the last event repeats the whole response), or the output.
  const std::string responses_sse =
      "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"one \"}\n\n"
      "event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"delta\":\"{}\"}\n\n"
      "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"object\":\"response\",\"output\":"
      "[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"one \"}]}]}}\n\n";
  text.clear();
  gateway::append_completion_text(responses_sse, true, text);
  CHECK(text == "one {}");
  text.clear();
  gateway::append_completion_text(
      R"({"object":"response","output":[{"type":"reasoning","summary":[{"type":"summary_text","text":"r"}]},)"
      R"({"type":"message","content":[{"type":"output_text","text":"t"}]},{"type":"function_call","name":"f","arguments":"{}"}]})",
      false, text);
  CHECK(text == "rtf{}");
}

TEST_CASE("a relayed request's prompt is counted as the chat request it translates to", "[metering][relay]") {
  REQUIRE(std::filesystem::exists(tokenizer_file));
  const auto tok = tokenizer::tokenizer::load(tokenizer_file);
  const auto chat = gateway::count_prompt_tokens(
      *tok, "/chat/completions", R"({"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello"}]})");
  CHECK(gateway::count_prompt_tokens(*tok, "/messages",
                                     R"({"model":"m","max_tokens":9,"system":"be brief","messages":[{"role":"user","content":"hello"}]})") ==
        chat);
  CHECK(gateway::count_prompt_tokens(*tok, "/responses", R"({"model":"m","instructions":"be brief","input":"hello"})") == chat);
  // What chat cannot carry: the body's bytes are counted.
  const std::string document =
      R"({"model":"m","max_tokens":9,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"a long contract"}}]}]})";
  CHECK(gateway::count_prompt_tokens(*tok, "/messages", document) == static_cast<std::int64_t>(tok->count(document)));
}
