#include "protocol/anthropic_messages.hpp"

#include <nlohmann/json.hpp>

#include "protocol/anthropic_upstream.hpp"
#include "protocol/json_body.hpp"
#include "protocol/json_util.hpp"
#include "protocol/string_spans.hpp"

namespace tollgate::protocol {

using json = nlohmann::json;

namespace {

/// A Messages block's image source as an OpenAI image_url part.
json image_part(const json& block, const std::string& path) {
  const json* source = member(block, "source");
  if (source == nullptr || !source->is_object()) throw refusal{path + ".source", "an image block needs a source object"};
  const std::string type = string_member(*source, "type", path + ".source.type");
  if (type == "base64") {
    const std::string media = string_member(*source, "media_type", path + ".source.media_type");
    const std::string data = string_member(*source, "data", path + ".source.data");
    return {{"type", "image_url"}, {"image_url", {{"url", "data:" + media + ";base64," + data}}}};
  }
  if (type == "url") {
    return {{"type", "image_url"}, {"image_url", {{"url", string_member(*source, "url", path + ".source.url")}}}};
  }
  throw refusal{path + ".source.type", "image source type '" + type + "' has no chat completions equivalent (use base64 or url)"};
}

/// The text of a tool_result's content: a string or text blocks (images have no place in a chat
/// tool message).
std::string tool_result_text(const json& block, const std::string& path) {
  const json* content = member(block, "content");
  if (content == nullptr || content->is_null()) return {};
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array()) throw refusal{path + ".content", "must be a string or an array of blocks"};
  std::string text;
  for (std::size_t i = 0; i < content->size(); ++i) {
    const json& b = (*content)[i];
    const std::string bpath = path + ".content[" + std::to_string(i) + "]";
    const std::string type = string_member(b, "type", bpath + ".type");
    if (type != "text") throw refusal{bpath + ".type", "a tool_result block of type '" + type + "' has no chat completions equivalent (text only)"};
    if (!text.empty()) text += "\n";
    text += string_member(b, "text", bpath + ".text");
  }
  return text;
}

void check_block_keys(const json& block, const std::string& path, std::initializer_list<std::string_view> allowed) {
  only_keys(block, path, allowed);
}

/// One Anthropic message as one or more chat messages: a user turn's tool_result blocks become
/// tool messages (placed first, where chat completions wants them: right after the assistant's
/// tool calls), the rest one user message.
void convert_message(const json& m, const std::string& path, json& out) {
  if (!m.is_object()) throw refusal{path, "a message must be an object"};
  only_keys(m, path, {"role", "content"});
  const std::string role = string_member(m, "role", path + ".role");
  if (role != "user" && role != "assistant") throw refusal{path + ".role", "role must be user or assistant, got '" + role + "'"};
  const json* content = member(m, "content");
  if (content == nullptr) throw refusal{path + ".content", "Field required"};
  if (content->is_string()) {
    out.push_back({{"role", role}, {"content", *content}});
    return;
  }
  if (!content->is_array()) throw refusal{path + ".content", "must be a string or an array of content blocks"};
  json parts = json::array();
  bool text_only = true;
  std::string reasoning;
  json tool_calls = json::array();
  for (std::size_t i = 0; i < content->size(); ++i) {
    const json& b = (*content)[i];
    const std::string bpath = path + ".content[" + std::to_string(i) + "]";
    if (!b.is_object()) throw refusal{bpath, "a content block must be an object"};
    const std::string type = string_member(b, "type", bpath + ".type");
    if (type == "text") {
      check_block_keys(b, bpath, {"type", "text", "cache_control", "citations"});
      if (const json* c = member(b, "citations"); c != nullptr && !c->is_null() && !(c->is_array() && c->empty())) {
        throw refusal{bpath + ".citations", "citations have no chat completions equivalent"};
      }
      parts.push_back({{"type", "text"}, {"text", string_member(b, "text", bpath + ".text")}});
    } else if (type == "image" && role == "user") {
      check_block_keys(b, bpath, {"type", "source", "cache_control"});
      parts.push_back(image_part(b, bpath));
      text_only = false;
    } else if (type == "tool_result" && role == "user") {
      check_block_keys(b, bpath, {"type", "tool_use_id", "content", "is_error", "cache_control"});
      std::string text = tool_result_text(b, bpath);
      if (const json* e = member(b, "is_error"); e != nullptr && e->is_boolean() && e->get<bool>()) {
        text = "[tool error] " + text;  // chat tool messages have no error flag: the text says it
      }
      out.push_back({{"role", "tool"}, {"tool_call_id", string_member(b, "tool_use_id", bpath + ".tool_use_id")},
                     {"content", text}});
    } else if (type == "tool_use" && role == "assistant") {
      check_block_keys(b, bpath, {"type", "id", "name", "input", "cache_control"});
      const json* input = member(b, "input");
      tool_calls.push_back({{"id", string_member(b, "id", bpath + ".id")},
                            {"type", "function"},
                            {"function", {{"name", string_member(b, "name", bpath + ".name")},
                                          {"arguments", input != nullptr ? dump(*input) : std::string("{}")}}}});
    } else if (type == "thinking" && role == "assistant") {
      check_block_keys(b, bpath, {"type", "thinking", "signature"});
      reasoning += string_member(b, "thinking", bpath + ".thinking");
    } else if (type == "redacted_thinking" && role == "assistant") {
      // Encrypted reasoning only Anthropic can read: nothing another backend could use.
    } else {
      throw refusal{bpath + ".type", "a " + role + " content block of type '" + type + "' has no chat completions equivalent"};
    }
  }
  if (role == "assistant") {
    json msg = {{"role", "assistant"}};
    std::string text;
    for (const auto& p : parts) text += p["text"].get<std::string>();
    msg["content"] = text.empty() && !tool_calls.empty() ? json(nullptr) : json(text);
    if (!tool_calls.empty()) msg["tool_calls"] = std::move(tool_calls);
    if (!reasoning.empty()) msg["reasoning_content"] = reasoning;
    out.push_back(std::move(msg));
    return;
  }
  if (parts.empty()) return;  // only tool results
  if (text_only) {
    // Plain text keeps the widest compatibility (some chat backends take only strings).
    std::string text;
    for (std::size_t i = 0; i < parts.size(); ++i) {
      if (i > 0) text += "\n";
      text += parts[i]["text"].get<std::string>();
    }
    out.push_back({{"role", "user"}, {"content", text}});
  } else {
    out.push_back({{"role", "user"}, {"content", std::move(parts)}});
  }
}

json convert_tools(const json& tools) {
  if (!tools.is_array()) throw refusal{"tools", "must be an array"};
  json out = json::array();
  for (std::size_t i = 0; i < tools.size(); ++i) {
    const json& t = tools[i];
    const std::string path = "tools[" + std::to_string(i) + "]";
    if (!t.is_object()) throw refusal{path, "a tool must be an object"};
    if (const json* type = member(t, "type"); type != nullptr && !(type->is_string() && type->get<std::string>() == "custom")) {
      throw refusal{path + ".type", "server tool '" + (type->is_string() ? type->get<std::string>() : dump(*type)) +
                                        "' has no chat completions equivalent (only custom tools are translated)"};
    }
    only_keys(t, path, {"type", "name", "description", "input_schema", "cache_control"});
    json fn = {{"name", string_member(t, "name", path + ".name")}};
    if (const json* d = member(t, "description"); d != nullptr && !d->is_null()) fn["description"] = *d;
    const json* schema = member(t, "input_schema");
    if (schema == nullptr || !schema->is_object()) throw refusal{path + ".input_schema", "Field required (an object)"};
    fn["parameters"] = *schema;
    out.push_back({{"type", "function"}, {"function", std::move(fn)}});
  }
  return out;
}

void convert_tool_choice(const json& tc, json& chat) {
  if (!tc.is_object()) throw refusal{"tool_choice", "must be an object"};
  only_keys(tc, "tool_choice", {"type", "name", "disable_parallel_tool_use"});
  const std::string type = string_member(tc, "type", "tool_choice.type");
  if (type == "auto") chat["tool_choice"] = "auto";
  else if (type == "any") chat["tool_choice"] = "required";
  else if (type == "none") chat["tool_choice"] = "none";
  else if (type == "tool") chat["tool_choice"] = {{"type", "function"}, {"function", {{"name", string_member(tc, "name", "tool_choice.name")}}}};
  else throw refusal{"tool_choice.type", "must be auto, any, tool or none, got '" + type + "'"};
  if (const json* d = member(tc, "disable_parallel_tool_use"); d != nullptr && d->is_boolean() && type != "none") {
    chat["parallel_tool_calls"] = !d->get<bool>();
  }
}

std::string stop_reason_of(const json& choice, std::string* stop_sequence) {
  const json* f = member(choice, "finish_reason");
  const std::string finish = f != nullptr && f->is_string() ? f->get<std::string>() : std::string("stop");
  if (finish == "length") return "max_tokens";
  if (finish == "tool_calls" || finish == "function_call") return "tool_use";
  if (finish == "content_filter") return "refusal";
  // vLLM and SGLang name the stop string that matched; a stop token id is no stop sequence.
  if (const json* s = member(choice, "stop_reason"); s != nullptr && s->is_string() && stop_sequence != nullptr) {
    *stop_sequence = s->get<std::string>();
    return "stop_sequence";
  }
  return "end_turn";
}

json anthropic_usage(const json* usage) {
  std::int64_t prompt = 0, cached = 0, completion = 0, created = 0;
  if (usage != nullptr && usage->is_object()) {
    prompt = int_member(*usage, "prompt_tokens");
    completion = int_member(*usage, "completion_tokens");
    if (const json* d = member(*usage, "prompt_tokens_details"); d != nullptr && d->is_object()) cached = int_member(*d, "cached_tokens");
    if (cached == 0) cached = int_member(*usage, "prompt_cache_hit_tokens");
    created = int_member(*usage, "cache_creation_input_tokens");
  }
  return {{"input_tokens", std::max<std::int64_t>(0, prompt - cached - created)},
          {"cache_creation_input_tokens", created},
          {"cache_read_input_tokens", cached},
          {"output_tokens", completion}};
}

}  // namespace

static translated messages_request_to_chat_tree(std::string_view body) {
  const json in = json::parse(body, nullptr, false);
  if (in.is_discarded() || !in.is_object()) return {{}, "the body is not a JSON object", {}};
  try {
    only_keys(in, "", {"model", "messages", "system", "max_tokens", "stop_sequences", "stream", "temperature", "top_p",
                       "top_k", "metadata", "tools", "tool_choice", "thinking"});
    json chat = json::object();
    chat["model"] = string_member(in, "model", "model");
    const json* max_tokens = member(in, "max_tokens");
    if (max_tokens == nullptr || !max_tokens->is_number_integer() || max_tokens->get<std::int64_t>() < 1) {
      throw refusal{"max_tokens", "Field required (a positive integer)"};
    }
    chat["max_tokens"] = *max_tokens;
    json messages = json::array();
    if (const json* system = member(in, "system"); system != nullptr && !system->is_null()) {
      if (system->is_string()) {
        messages.push_back({{"role", "system"}, {"content", *system}});
      } else if (system->is_array()) {
        std::string text;
        for (std::size_t i = 0; i < system->size(); ++i) {
          const json& b = (*system)[i];
          const std::string path = "system[" + std::to_string(i) + "]";
          if (!b.is_object() || string_member(b, "type", path + ".type") != "text") {
            throw refusal{path + ".type", "system blocks must be text"};
          }
          only_keys(b, path, {"type", "text", "cache_control", "citations"});
          if (!text.empty()) text += "\n";
          text += string_member(b, "text", path + ".text");
        }
        messages.push_back({{"role", "system"}, {"content", text}});
      } else {
        throw refusal{"system", "must be a string or an array of text blocks"};
      }
    }
    const json* msgs = member(in, "messages");
    if (msgs == nullptr || !msgs->is_array() || msgs->empty()) throw refusal{"messages", "Field required (a non-empty array)"};
    for (std::size_t i = 0; i < msgs->size(); ++i) convert_message((*msgs)[i], "messages[" + std::to_string(i) + "]", messages);
    chat["messages"] = std::move(messages);
    if (const json* s = member(in, "stop_sequences"); s != nullptr && !s->is_null()) {
      if (!s->is_array()) throw refusal{"stop_sequences", "must be an array of strings"};
      for (std::size_t i = 0; i < s->size(); ++i) {
        if (!(*s)[i].is_string()) throw refusal{"stop_sequences[" + std::to_string(i) + "]", "must be a string"};
      }
      if (!s->empty()) chat["stop"] = *s;
    }
    for (const char* k : {"temperature", "top_p", "top_k"}) {
      if (const json* v = member(in, k); v != nullptr && !v->is_null()) {
        if (!v->is_number()) throw refusal{k, "must be a number"};
        chat[k] = *v;
      }
    }
    if (const json* md = member(in, "metadata"); md != nullptr && !md->is_null()) {
      if (!md->is_object()) throw refusal{"metadata", "must be an object"};
      only_keys(*md, "metadata", {"user_id"});
      if (const json* u = member(*md, "user_id"); u != nullptr && !u->is_null()) chat["user"] = *u;
    }
    if (const json* tools = member(in, "tools"); tools != nullptr && !tools->is_null()) {
      json t = convert_tools(*tools);
      if (!t.empty()) chat["tools"] = std::move(t);
    }
    if (const json* tc = member(in, "tool_choice"); tc != nullptr && !tc->is_null()) convert_tool_choice(*tc, chat);
    if (const json* th = member(in, "thinking"); th != nullptr && !th->is_null()) {
      if (!th->is_object()) throw refusal{"thinking", "must be an object"};
      const std::string type = string_member(*th, "type", "thinking.type");
      if (type == "enabled") {
        only_keys(*th, "thinking", {"type", "budget_tokens"});
        const json* b = member(*th, "budget_tokens");
        if (b == nullptr || !b->is_number_integer() || b->get<std::int64_t>() < min_thinking_budget) {
          throw refusal{"thinking.budget_tokens", "must be an integer of at least " + std::to_string(min_thinking_budget)};
        }
        if (b->get<std::int64_t>() >= max_tokens->get<std::int64_t>()) {
          throw refusal{"thinking.budget_tokens", "must be less than max_tokens"};
        }
        chat["reasoning_effort"] = effort_for_thinking_budget(b->get<std::int64_t>());
      } else if (type != "disabled") {
        throw refusal{"thinking.type", "must be enabled or disabled"};
      }
    }
    stream_with_usage(in, chat);
    return {dump(chat), {}, {}};
  } catch (const refusal& r) {
    return refused(r);
  }
}

static translated chat_answer_to_message_tree(std::string_view chat_body, std::string_view model) {
  const json in = json::parse(chat_body, nullptr, false);
  const json* choices = in.is_object() ? member(in, "choices") : nullptr;
  if (choices == nullptr || !choices->is_array() || choices->empty() || !(*choices)[0].is_object()) {
    return {{}, "the upstream answer is not a chat completion", {}};
  }
  const json& choice = (*choices)[0];
  const json* message = member(choice, "message");
  json content = json::array();
  if (message != nullptr && message->is_object()) {
    if (const json* r = member(*message, "reasoning_content"); r != nullptr && r->is_string() && !r->get<std::string>().empty()) {
      content.push_back({{"type", "thinking"}, {"thinking", *r}, {"signature", ""}});
    }
    if (const json* c = member(*message, "content"); c != nullptr && c->is_string() && !c->get<std::string>().empty()) {
      content.push_back({{"type", "text"}, {"text", *c}});
    }
    if (const json* calls = member(*message, "tool_calls"); calls != nullptr && calls->is_array()) {
      for (const json& call : *calls) {
        const json* fn = member(call, "function");
        if (fn == nullptr || !fn->is_object()) continue;
        const json* args = member(*fn, "arguments");
        json input = args != nullptr && args->is_string() ? json::parse(args->get<std::string>(), nullptr, false) : json::object();
        if (input.is_discarded() || !input.is_object()) {
          return {{}, "the upstream's tool call arguments are not a JSON object", {}};
        }
        const json* id = member(call, "id");
        const json* name = member(*fn, "name");
        content.push_back({{"type", "tool_use"},
                           {"id", id != nullptr && id->is_string() ? id->get<std::string>() : random_id("toolu_")},
                           {"name", name != nullptr && name->is_string() ? name->get<std::string>() : std::string()},
                           {"input", std::move(input)}});
      }
    }
  }
  if (content.empty()) content.push_back({{"type", "text"}, {"text", ""}});
  std::string stop_sequence;
  const std::string stop_reason = stop_reason_of(choice, &stop_sequence);
  json out = {{"id", random_id("msg_")},
              {"type", "message"},
              {"role", "assistant"},
              {"model", model},
              {"content", std::move(content)},
              {"stop_reason", stop_reason},
              {"stop_sequence", stop_sequence.empty() ? json(nullptr) : json(stop_sequence)},
              {"usage", anthropic_usage(member(in, "usage"))}};
  return {dump(out), {}, {}};
}

std::string_view anthropic_error_type(int status) {
  switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 402: return "billing_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503:
    case 529: return "overloaded_error";
    case 504: return "timeout_error";
    default: return status >= 400 && status < 500 ? "invalid_request_error" : "api_error";
  }
}

std::string anthropic_error_body(int status, std::string_view message) {
  return dump(json{{"type", "error"}, {"error", {{"type", anthropic_error_type(status)}, {"message", message}}}});
}

answer chat_error_to_anthropic(int status, std::string_view openai_body) {
  const json in = json::parse(openai_body, nullptr, false);
  std::string message(openai_body);
  std::string code;
  if (in.is_object()) {
    if (const json* e = member(in, "error"); e != nullptr && e->is_object()) {
      if (const json* m = member(*e, "message"); m != nullptr && m->is_string()) message = m->get<std::string>();
      if (const json* c = member(*e, "code"); c != nullptr && c->is_string()) code = c->get<std::string>();
    } else if (const json* m = member(in, "message"); m != nullptr && m->is_string()) {
      message = m->get<std::string>();
    }
  }
  if (message.empty()) message = "upstream answered with status " + std::to_string(status);
  if (status == 503 && code == "overloaded") status = 529;
  return {status, anthropic_error_body(status, message)};
}

chat_stream_to_messages::chat_stream_to_messages(std::string model) : model_(std::move(model)), id_(random_id("msg_")) {}

std::string chat_stream_to_messages::message_start() {
  started_ = true;
  const json start = {{"type", "message_start"},
                      {"message", {{"id", id_},
                                   {"type", "message"},
                                   {"role", "assistant"},
                                   {"model", model_},
                                   {"content", json::array()},
                                   {"stop_reason", nullptr},
                                   {"stop_sequence", nullptr},
                                   {"usage", {{"input_tokens", 0}, {"output_tokens", 0}}}}}};
  return sse_event("message_start", dump(start));
}

std::string chat_stream_to_messages::close_block() {
  if (open_ == block::none) return {};
  open_ = block::none;
  open_tool_ = -1;
  return sse_event("content_block_stop", dump(json{{"type", "content_block_stop"}, {"index", index_}}));
}

std::string chat_stream_to_messages::start_block(block kind, std::string_view start_json) {
  std::string out = close_block();
  open_ = kind;
  ++index_;
  json start = {{"type", "content_block_start"}, {"index", index_}, {"content_block", json::parse(start_json)}};
  out += sse_event("content_block_start", dump(start));
  return out;
}

std::string chat_stream_to_messages::event(std::string_view sse) {
  if (ended_) return {};
  const sse_fields fields = parse_sse_event(sse);
  // The commonest chunk, a piece of text, is read and written without a tree; the bytes are
  // those the tree would give (keys in its order, strings as it writes them).
  if (fields.data) {
    if (const auto d = read_chat_text_delta(*fields.data)) {
      std::string out;
      if (!started_) out += message_start();
      const auto delta = [&](std::string_view kind, std::string_view key, std::string_view literal) {
        std::string data;
        data.reserve(literal.size() + 96);
        data.append(R"({"delta":{")").append(key).append("\":");
        append_literal_as_quoted(data, literal);
        data.append(R"(,"type":")").append(kind).append(R"("},"index":)").append(std::to_string(index_));
        data.append(R"(,"type":"content_block_delta"})");
        out += sse_event("content_block_delta", data);
      };
      if (!d->reasoning.empty()) {
        if (open_ != block::thinking) out += start_block(block::thinking, R"({"type":"thinking","thinking":"","signature":""})");
        delta("thinking_delta", "thinking", d->reasoning);
      }
      if (!d->content.empty()) {
        if (open_ != block::text) out += start_block(block::text, R"({"type":"text","text":""})");
        delta("text_delta", "text", d->content);
      }
      return out;
    }
  }
  const chat_stream_chunk read = read_chat_stream_data(fields.data);
  if (read.failed) return error(502, read.error);
  if (read.chunk.is_null()) return {};
  const json& chunk = read.chunk;
  std::string out;
  if (!started_) out += message_start();
  if (const json* u = member(chunk, "usage"); u != nullptr && u->is_object()) {
    const json a = anthropic_usage(u);
    prompt_ = a["input_tokens"].get<std::int64_t>();
    cached_ = a["cache_read_input_tokens"].get<std::int64_t>();
    created_ = a["cache_creation_input_tokens"].get<std::int64_t>();
    completion_ = a["output_tokens"].get<std::int64_t>();
  }
  const json* choices = member(chunk, "choices");
  if (choices == nullptr || !choices->is_array() || choices->empty() || !(*choices)[0].is_object()) return out;
  const json& choice = (*choices)[0];
  if (const json* delta = member(choice, "delta"); delta != nullptr && delta->is_object()) {
    if (const json* r = member(*delta, "reasoning_content"); r != nullptr && r->is_string() && !r->get<std::string>().empty()) {
      if (open_ != block::thinking) out += start_block(block::thinking, R"({"type":"thinking","thinking":"","signature":""})");
      out += sse_event("content_block_delta",
                       dump(json{{"type", "content_block_delta"}, {"index", index_}, {"delta", {{"type", "thinking_delta"}, {"thinking", *r}}}}));
    }
    if (const json* c = member(*delta, "content"); c != nullptr && c->is_string() && !c->get<std::string>().empty()) {
      if (open_ != block::text) out += start_block(block::text, R"({"type":"text","text":""})");
      out += sse_event("content_block_delta",
                       dump(json{{"type", "content_block_delta"}, {"index", index_}, {"delta", {{"type", "text_delta"}, {"text", *c}}}}));
    }
    if (const json* calls = member(*delta, "tool_calls"); calls != nullptr && calls->is_array()) {
      for (const json& call : *calls) {
        if (!call.is_object()) continue;
        const std::int64_t k = int_member(call, "index");
        if (k < 0 || k > 1024) continue;
        if (tool_blocks_.size() <= static_cast<std::size_t>(k)) tool_blocks_.resize(static_cast<std::size_t>(k) + 1, -1);
        const json* fn = member(call, "function");
        if (tool_blocks_[static_cast<std::size_t>(k)] < 0) {
          const json* id = member(call, "id");
          const json* name = fn != nullptr && fn->is_object() ? member(*fn, "name") : nullptr;
          const json start = {{"type", "tool_use"},
                              {"id", id != nullptr && id->is_string() ? id->get<std::string>() : random_id("toolu_")},
                              {"name", name != nullptr && name->is_string() ? name->get<std::string>() : std::string()},
                              {"input", json::object()}};
          out += start_block(block::tool_use, dump(start));
          open_tool_ = k;
          tool_blocks_[static_cast<std::size_t>(k)] = index_;
        }
        if (fn != nullptr && fn->is_object()) {
          if (const json* args = member(*fn, "arguments"); args != nullptr && args->is_string() && !args->get<std::string>().empty()) {
            out += sse_event("content_block_delta",
                             dump(json{{"type", "content_block_delta"},
                                       {"index", tool_blocks_[static_cast<std::size_t>(k)]},
                                       {"delta", {{"type", "input_json_delta"}, {"partial_json", *args}}}}));
          }
        }
      }
    }
  }
  if (const json* f2 = member(choice, "finish_reason"); f2 != nullptr && f2->is_string()) {
    stop_sequence_.clear();
    stop_reason_ = stop_reason_of(choice, &stop_sequence_);
  }
  return out;
}

std::string chat_stream_to_messages::end() {
  if (ended_) return {};
  std::string out;
  if (!started_) out += message_start();
  out += close_block();
  ended_ = true;
  const json delta = {{"type", "message_delta"},
                      {"delta", {{"stop_reason", stop_reason_}, {"stop_sequence", stop_sequence_.empty() ? json(nullptr) : json(stop_sequence_)}}},
                      {"usage", {{"input_tokens", prompt_},
                                 {"cache_creation_input_tokens", created_},
                                 {"cache_read_input_tokens", cached_},
                                 {"output_tokens", completion_}}}};
  out += sse_event("message_delta", dump(delta));
  out += sse_event("message_stop", R"({"type":"message_stop"})");
  return out;
}

std::string chat_stream_to_messages::error(int status, std::string_view message) {
  ended_ = true;
  return sse_event("error", anthropic_error_body(status, message));
}


// Texts, thinking, tool results and base64 image data are copied or joined: carried as spans.
translated messages_request_to_chat(std::string_view body) {
  static const string_paths texts = [](std::span<const path_step> p) {
    return path_is(p, {"system"}) || path_is(p, {"system", "[]", "text"}) || path_is(p, {"messages", "[]", "content"}) ||
           path_is(p, {"messages", "[]", "content", "[]", "text"}) ||
           path_is(p, {"messages", "[]", "content", "[]", "thinking"}) ||
           path_is(p, {"messages", "[]", "content", "[]", "content"}) ||
           path_is(p, {"messages", "[]", "content", "[]", "content", "[]", "text"}) ||
           path_is(p, {"messages", "[]", "content", "[]", "source", "data"});
  };
  return with_string_spans<translated>(body, texts, [](std::string_view b) { return messages_request_to_chat_tree(b); });
}


// The answer's text and reasoning are copied (tool call arguments are parsed).
translated chat_answer_to_message(std::string_view chat_body, std::string_view model) {
  static const string_paths texts = [](std::span<const path_step> p) {
    return path_is(p, {"choices", "[]", "message", "content"}) || path_is(p, {"choices", "[]", "message", "reasoning_content"});
  };
  return with_string_spans<translated>(chat_body, texts, [model](std::string_view b) { return chat_answer_to_message_tree(b, model); });
}

}  // namespace tollgate::protocol
