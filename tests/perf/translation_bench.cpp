// What the dialect translations cost a request: an Anthropic Messages or Responses client's
// request to chat completions and its answer back (whole, with 600 B and 125 KB of text, and a
// stream of 200 chunks), and chat completions to and from an Anthropic upstream, for a small and
// a 100 KB conversation, and an Anthropic stream relayed to a Messages client untranslated.
// Prints the thread's CPU microseconds an operation (median of 7 rounds; CPU time, so that a
// loaded machine stretches it little) and MB/s of body for the requests and long answers.
//
//   tollgate-bench-translation [--rounds 7]
#include <nlohmann/json.hpp>

#include <algorithm>
#include <ctime>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "protocol/anthropic_upstream.hpp"
#include "protocol/client_dialect.hpp"

namespace p = tollgate::protocol;
using json = nlohmann::json;

namespace {

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/// Median over rounds of the CPU microseconds one call of f takes (each round runs f for 0.2 s
/// of this thread's CPU time).
double micros(const std::function<void()>& f, int rounds) {
  std::vector<double> t;
  for (int r = 0; r < rounds; ++r) {
    int n = 0;
    const double t0 = thread_cpu_seconds();
    double s = 0;
    do {
      f();
      ++n;
      s = thread_cpu_seconds() - t0;
    } while (s < 0.2);
    t.push_back(s / n * 1e6);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// A conversation whose user turns hold `text_bytes` of text in all, with a system prompt and a tool.
json conversation(std::size_t text_bytes, bool anthropic) {
  json messages = json::array();
  const std::size_t turns = 4;
  std::string chunk(text_bytes / turns, 'x');
  for (std::size_t i = 0; i < chunk.size(); i += 50) chunk[i] = ' ';
  for (std::size_t i = 0; i < turns; ++i) {
    messages.push_back({{"role", "user"}, {"content", chunk}});
    if (i + 1 < turns) messages.push_back({{"role", "assistant"}, {"content", "noted, turn " + std::to_string(i)}});
  }
  json tool_params = {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}, {"required", {"city"}}};
  json r = {{"model", "m"}, {"max_tokens", 512}, {"messages", messages}};
  if (anthropic) {
    r["system"] = "You are brief.";
    r["tools"] = json::array({{{"name", "get_weather"}, {"description", "weather"}, {"input_schema", tool_params}}});
  } else {
    r["messages"].insert(r["messages"].begin(), json{{"role", "system"}, {"content", "You are brief."}});
    r["tools"] = json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}, {"parameters", tool_params}}}}});
  }
  return r;
}

json responses_request(std::size_t text_bytes) {
  std::string text(text_bytes, 'x');
  for (std::size_t i = 0; i < text.size(); i += 50) text[i] = ' ';
  return {{"model", "m"}, {"instructions", "You are brief."}, {"max_output_tokens", 512},
          {"input", json::array({{{"role", "user"}, {"content", text}}})}};
}

std::string chat_answer() {
  std::string text(600, 'y');
  for (std::size_t i = 0; i < text.size(); i += 7) text[i] = ' ';
  return json{{"id", "chatcmpl-1"}, {"object", "chat.completion"}, {"created", 1}, {"model", "m"},
              {"choices", json::array({{{"index", 0}, {"message", {{"role", "assistant"}, {"content", text}}},
                                        {"finish_reason", "stop"}}})},
              {"usage", {{"prompt_tokens", 1000}, {"completion_tokens", 150}, {"total_tokens", 1150}}}}
      .dump();
}

std::vector<std::string> chat_stream(int chunks) {
  std::vector<std::string> ev;
  for (int i = 0; i < chunks; ++i) {
    ev.push_back("data: " +
                 json{{"id", "c"}, {"object", "chat.completion.chunk"}, {"created", 1}, {"model", "m"},
                      {"choices", json::array({{{"index", 0}, {"delta", {{"content", "tok" + std::to_string(i)}}}}})}}
                     .dump() +
                 "\n\n");
  }
  ev.push_back("data: " +
               json{{"id", "c"}, {"object", "chat.completion.chunk"}, {"created", 1}, {"model", "m"},
                    {"choices", json::array({{{"index", 0}, {"delta", json::object()}, {"finish_reason", "stop"}}})},
                    {"usage", {{"prompt_tokens", 1000}, {"completion_tokens", chunks}}}}
                   .dump() +
               "\n\n");
  ev.push_back("data: [DONE]\n\n");
  return ev;
}

std::string anthropic_message() {
  return json{{"id", "msg_1"}, {"type", "message"}, {"role", "assistant"}, {"model", "claude"},
              {"content", json::array({{{"type", "text"}, {"text", std::string(600, 'z')}}})},
              {"stop_reason", "end_turn"}, {"stop_sequence", nullptr},
              {"usage", {{"input_tokens", 1000}, {"output_tokens", 150}}}}
      .dump();
}

std::vector<std::string> anthropic_stream(int deltas) {
  const auto ev = [](const json& d) { return "event: " + d["type"].get<std::string>() + "\ndata: " + d.dump() + "\n\n"; };
  std::vector<std::string> out;
  out.push_back(ev({{"type", "message_start"},
                    {"message", {{"id", "msg_1"}, {"type", "message"}, {"role", "assistant"}, {"model", "claude"},
                                 {"content", json::array()}, {"usage", {{"input_tokens", 1000}, {"output_tokens", 1}}}}}}));
  out.push_back(ev({{"type", "content_block_start"}, {"index", 0}, {"content_block", {{"type", "text"}, {"text", ""}}}}));
  for (int i = 0; i < deltas; ++i) {
    out.push_back(ev({{"type", "content_block_delta"}, {"index", 0},
                      {"delta", {{"type", "text_delta"}, {"text", "tok" + std::to_string(i)}}}}));
  }
  out.push_back(ev({{"type", "content_block_stop"}, {"index", 0}}));
  out.push_back(ev({{"type", "message_delta"}, {"delta", {{"stop_reason", "end_turn"}}}, {"usage", {{"output_tokens", deltas}}}}));
  out.push_back(ev({{"type", "message_stop"}}));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 7;
  for (int i = 1; i + 1 < argc; i += 2)
    if (std::string(argv[i]) == "--rounds") rounds = std::stoi(argv[i + 1]);
  std::size_t sink = 0;
  const auto row = [&](const char* what, std::size_t bytes, const std::function<void()>& f) {
    const double us = micros(f, rounds);
    if (bytes > 0) std::printf("%-58s %9.1f us  %7.0f MB/s\n", what, us, bytes / us);
    else std::printf("%-58s %9.1f us\n", what, us);
  };
  const auto answer = chat_answer();
  const auto stream = chat_stream(200);
  for (const std::size_t size : {std::size_t{1000}, std::size_t{100000}}) {
    const std::string label = size == 1000 ? "1 KB" : "100 KB";
    const std::string msg = conversation(size, true).dump(), chat = conversation(size, false).dump();
    const std::string resp = responses_request(size).dump();
    row(("Messages request -> chat, " + label).c_str(), msg.size(),
        [&] { sink += p::anthropic_client(msg)->chat_request().body.size(); });
    row(("Responses request -> chat, " + label).c_str(), resp.size(),
        [&] { sink += p::responses_client(resp)->chat_request().body.size(); });
    row(("chat request -> Messages (Anthropic upstream), " + label).c_str(), chat.size(), [&] {
      bool include_usage = false;
      sink += p::chat_request_to_messages(chat, &include_usage).body.size();
    });
  }
  const std::string msg = conversation(1000, true).dump(), resp = responses_request(1000).dump();
  row("chat answer (600 B text) -> Message", 0, [&] { sink += p::anthropic_client(msg)->whole(200, answer).body.size(); });
  row("chat answer (600 B text) -> Response", 0, [&] { sink += p::responses_client(resp)->whole(200, answer).body.size(); });
  row("chat stream of 200 chunks -> Messages events", 0, [&] {
    auto d = p::anthropic_client(msg);
    for (const auto& e : stream) sink += d->event(e).size();
    sink += d->end().size();
  });
  row("chat stream of 200 chunks -> Responses events", 0, [&] {
    auto d = p::responses_client(resp);
    for (const auto& e : stream) sink += d->event(e).size();
    sink += d->end().size();
  });
  const auto message = anthropic_message();
  const auto astream = anthropic_stream(200);
  row("Anthropic message (600 B text) -> chat answer", 0, [&] { sink += p::message_to_chat_answer(message).body.size(); });
  // A long answer: 100 KB of text.
  json long_chat = json::parse(answer);
  long_chat["choices"][0]["message"]["content"] = conversation(100000, false)["messages"][1]["content"].get<std::string>() +
                                                  std::string(100000, 'y');
  const std::string long_answer = long_chat.dump();
  json long_msg = json::parse(message);
  long_msg["content"][0]["text"] = long_chat["choices"][0]["message"]["content"];
  const std::string long_message = long_msg.dump();
  row("chat answer (100 KB text) -> Message", long_answer.size(),
      [&] { sink += p::anthropic_client(msg)->whole(200, long_answer).body.size(); });
  row("chat answer (100 KB text) -> Response", long_answer.size(),
      [&] { sink += p::responses_client(resp)->whole(200, long_answer).body.size(); });
  row("Anthropic message (100 KB text) -> chat answer", long_message.size(),
      [&] { sink += p::message_to_chat_answer(long_message).body.size(); });
  row("Anthropic stream of 200 deltas -> chat chunks", 0, [&] {
    p::messages_stream_to_chat t(true);
    for (const auto& e : astream) sink += t.event(e).size();
  });
  // Relayed untranslated (a Messages client on Anthropic upstreams): each event is passed on,
  // its type and usage read.
  row("Anthropic stream of 200 deltas relayed (Messages client)", 0, [&] {
    auto d = p::anthropic_relay();
    for (const auto& e : astream) sink += d->event(e).size();
    sink += d->end().size();
  });
  std::printf("(checksum %zu)\n", sink);
  return 0;
}
