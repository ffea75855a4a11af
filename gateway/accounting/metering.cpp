#include "gateway/accounting/metering.hpp"

#include <nlohmann/json.hpp>

#include "protocol/anthropic_messages.hpp"
#include "protocol/json_body.hpp"
#include "protocol/responses_api.hpp"
#include "protocol/sse.hpp"
#include "tokenizer/tokenizer.hpp"

namespace tollgate::gateway {

namespace {

using json = nlohmann::json;

/// Text of a message's content: a string, or the text parts of a list.
std::string content_text(const json& content) {
  if (content.is_string()) return content.get<std::string>();
  std::string out;
  if (content.is_array()) {
    for (const auto& part : content) {
      if (part.is_object() && part.contains("text") && part["text"].is_string()) out += part["text"].get<std::string>();
    }
  }
  return out;
}

/// Appends a choice's generated text: delta (stream) or message (whole), or legacy text.
void choice_text(const json& choice, std::string& out) {
  if (!choice.is_object()) return;
  if (choice.contains("text") && choice["text"].is_string()) out += choice["text"].get<std::string>();
  for (const char* field : {"delta", "message"}) {
    if (!choice.contains(field) || !choice[field].is_object()) continue;
    const json& m = choice[field];
    for (const char* text_field : {"reasoning_content", "reasoning", "content"}) {
      if (m.contains(text_field) && m[text_field].is_string()) out += m[text_field].get<std::string>();
    }
    if (m.contains("tool_calls") && m["tool_calls"].is_array()) {
      for (const auto& call : m["tool_calls"]) {
        if (!call.is_object() || !call.contains("function") || !call["function"].is_object()) continue;
        const json& f = call["function"];
        if (f.contains("name") && f["name"].is_string()) out += f["name"].get<std::string>();
        if (f.contains("arguments") && f["arguments"].is_string()) out += f["arguments"].get<std::string>();
      }
    }
  }
}

/// A string member's text, when there is one.
void append_string(const json& object, const char* name, std::string& out) {
  if (object.is_object() && object.contains(name) && object[name].is_string()) out += object[name].get<std::string>();
}

/// Relayed answers in the client's own API: an Anthropic message or stream event, a Responses
/// API response or stream event. Stream events give their deltas only (a Responses stream's last
/// event holds the whole response again, which is not counted twice).
void relayed_answer_text(const json& answer, std::string& out) {
  const std::string type = answer.value("type", std::string());
  if (type == "message" || answer.value("object", std::string()) == "response") {
    const json* blocks = answer.contains("content") ? &answer["content"] : answer.contains("output") ? &answer["output"] : nullptr;
    if (blocks == nullptr || !blocks->is_array()) return;
    for (const auto& b : *blocks) {
      if (!b.is_object()) continue;
      for (const char* field : {"text", "thinking", "name", "arguments"}) append_string(b, field, out);
      if (b.contains("input") && b["input"].is_object()) out += b["input"].dump();
      if (b.contains("content") && b["content"].is_array()) {
        for (const auto& part : b["content"]) append_string(part, "text", out);
      }
      if (b.contains("summary") && b["summary"].is_array()) {
        for (const auto& part : b["summary"]) append_string(part, "text", out);
      }
    }
  } else if (type == "content_block_delta" && answer.contains("delta")) {
    for (const char* field : {"text", "thinking", "partial_json"}) append_string(answer["delta"], field, out);
  } else if (type == "response.output_text.delta" || type == "response.function_call_arguments.delta" ||
             type == "response.reasoning_summary_text.delta" || type == "response.reasoning_text.delta") {
    append_string(answer, "delta", out);
  }
}

void answer_text(const json& answer, std::string& out) {
  if (!answer.is_object()) return;
  if (!answer.contains("choices") || !answer["choices"].is_array()) return relayed_answer_text(answer, out);
  for (const auto& c : answer["choices"]) choice_text(c, out);
}

}  // namespace

std::int64_t bounded_count::operator()(std::string_view text) {
  if (text.size() <= left_) {
    left_ -= text.size();
    const auto n = static_cast<std::int64_t>(tok_.count(text));
    counted_bytes_ += text.size();
    counted_tokens_ += n;
    return n;
  }
  estimated_ = true;
  // Cut at a character boundary: a split UTF-8 sequence would count as stray bytes.
  std::size_t cut = left_;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  std::int64_t n = 0;
  if (cut > 0) {
    n = static_cast<std::int64_t>(tok_.count(text.substr(0, cut)));
    counted_bytes_ += cut;
    counted_tokens_ += n;
  }
  left_ = 0;
  const double rate = counted_bytes_ >= 256 ? static_cast<double>(counted_tokens_) / static_cast<double>(counted_bytes_)
                                            : 0.25;
  return n + static_cast<std::int64_t>(static_cast<double>(text.size() - cut) * rate + 0.5);
}

std::int64_t count_prompt_tokens(const tokenizer::tokenizer& tok, std::string_view path, std::string_view body,
                                 std::size_t max_bytes, bool* estimated) {
  bounded_count count(tok, max_bytes);
  struct note_estimate {
    bounded_count& c;
    bool* out;
    ~note_estimate() {
      if (out != nullptr && c.estimated()) *out = true;
    }
  } note{count, estimated};
  // dump() below recurses once per level: a body nested too deep is counted as raw text (the
  // proxy refuses such bodies before they get here; this is for every other caller).
  if (!protocol::json_depth_within(body, protocol::max_json_depth)) return count(body);
  if (path == "/messages" || path == "/responses") {
    // A relayed request in the client's own API: counted as the chat request it translates to,
    // or as its bytes when it holds what chat cannot carry.
    const auto chat = path == "/messages" ? protocol::messages_request_to_chat(body) : protocol::responses_request_to_chat(body);
    if (!chat.ok()) return count(body);
    return count_prompt_tokens(tok, "/chat/completions", chat.body, max_bytes, estimated);
  }
  json req = json::parse(body, nullptr, false);
  if (req.is_discarded() || !req.is_object()) return count(body);
  std::string text;
  if (path == "/chat/completions") {
    // The DeepSeek chat template: system text first, then turns, then the assistant's cue.
    // The same text the bundled engine renders for system, user and assistant messages (a test
    // holds the two together), plus what an API's template adds for tools.
    text = "<｜begin▁of▁sentence｜>";
    std::string turns;
    bool first_system = true;
    if (req.contains("messages") && req["messages"].is_array()) {
      for (const auto& m : req["messages"]) {
        if (!m.is_object()) continue;
        const std::string role = m.value("role", std::string());
        const std::string content = m.contains("content") ? content_text(m["content"]) : std::string();
        if (role == "system" || role == "developer") {
          if (!first_system) text += "\n\n";
          text += content;
          first_system = false;
        } else if (role == "user") {
          turns += "<｜User｜>" + content;
        } else if (role == "assistant") {
          turns += "<｜Assistant｜>" + content;
          if (m.contains("tool_calls")) turns += m["tool_calls"].dump();
          turns += "<｜end▁of▁sentence｜>";
        } else if (role == "tool") {
          turns += "<｜tool▁output▁begin｜>" + content + "<｜tool▁output▁end｜>";
        } else {
          turns += content;
        }
      }
    }
    if (req.contains("tools") && req["tools"].is_array()) text += req["tools"].dump();
    text += turns + "<｜Assistant｜>";
  } else if (path == "/completions") {
    const json& p = req.contains("prompt") ? req["prompt"] : json();
    if (p.is_string()) text = p.get<std::string>();
    else if (p.is_array()) {
      for (const auto& s : p) {
        if (s.is_string()) text += s.get<std::string>();
      }
    }
  } else {
    const json& in = req.contains("input") ? req["input"] : json();
    if (in.is_string()) return count(in.get<std::string>());
    std::int64_t n = 0;
    if (in.is_array()) {
      for (const auto& s : in) {
        if (s.is_string()) n += count(s.get<std::string>());
        else if (s.is_number_integer()) ++n;  // an input already given as token ids
        else if (s.is_array()) n += static_cast<std::int64_t>(s.size());
      }
    }
    return n;
  }
  return count(text);
}

std::int64_t count_completion_tokens(const tokenizer::tokenizer& tok, std::string_view delivered, bool sse,
                                     std::string_view earlier, std::size_t max_bytes, bool* estimated) {
  std::string text(earlier);
  append_completion_text(delivered, sse, text);
  bounded_count count(tok, max_bytes);
  const std::int64_t n = count(text);
  if (estimated != nullptr && count.estimated()) *estimated = true;
  return n;
}

namespace {

/// Pieces of kept bytes as one text: the first piece itself when there is one, else joined.
std::string_view joined(std::span<const std::string> pieces, std::string& storage) {
  if (pieces.empty()) return {};
  if (pieces.size() == 1) return pieces[0];
  for (const std::string& piece : pieces) storage += piece;
  return storage;
}

}  // namespace

std::int64_t count_completion_tokens(const tokenizer::tokenizer& tok, std::span<const std::string> delivered,
                                     bool sse, std::string_view earlier, std::size_t max_bytes, bool* estimated) {
  std::string storage;
  return count_completion_tokens(tok, joined(delivered, storage), sse, earlier, max_bytes, estimated);
}

void append_completion_text(std::span<const std::string> delivered, bool sse, std::string& text) {
  std::string storage;
  append_completion_text(joined(delivered, storage), sse, text);
}

void append_completion_text(std::string_view delivered, bool sse, std::string& text) {
  if (sse) {
    protocol::sse_splitter events;
    events.feed(delivered);
    auto take = [&](const std::string& event) {
      auto data = protocol::sse_data(event);
      if (!data || *data == "[DONE]") return;
      json chunk = json::parse(*data, nullptr, false);
      if (!chunk.is_discarded()) answer_text(chunk, text);
    };
    while (auto e = events.next_event()) take(*e);
    if (std::string rest = events.take_rest(); !rest.empty()) take(rest);
  } else {
    json answer = json::parse(delivered, nullptr, false);
    if (!answer.is_discarded()) answer_text(answer, text);
  }
}

}  // namespace tollgate::gateway
