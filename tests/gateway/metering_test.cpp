// Counting the prompt and the completion of answers that came without usage.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>

#include "gateway/accounting/metering.hpp"
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
