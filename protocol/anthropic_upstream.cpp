#include "protocol/anthropic_upstream.hpp"

#include <algorithm>
#include <array>
#include <chrono>

#include <nlohmann/json.hpp>

#include "protocol/errors.hpp"
#include "protocol/json_body.hpp"
#include "protocol/json_util.hpp"
#include "protocol/string_spans.hpp"

namespace tollgate::protocol {

using json = nlohmann::json;

namespace {

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

/// A chat message's content as Messages blocks: a string, or text and image_url parts.
json content_blocks(const json& content, const std::string& path, bool images) {
  json out = json::array();
  if (content.is_null()) return out;
  if (content.is_string()) {
    if (!content.get<std::string>().empty()) out.push_back({{"type", "text"}, {"text", content}});
    return out;
  }
  if (!content.is_array()) throw refusal{path, "must be a string or an array of content parts"};
  for (std::size_t i = 0; i < content.size(); ++i) {
    const json& p = content[i];
    const std::string ppath = path + "[" + std::to_string(i) + "]";
    const std::string type = string_member(p, "type", ppath + ".type");
    if (type == "text") {
      out.push_back({{"type", "text"}, {"text", string_member(p, "text", ppath + ".text")}});
    } else if (type == "image_url" && images) {
      const json* iu = member(p, "image_url");
      const std::string url = iu != nullptr && iu->is_string() ? iu->get<std::string>() : string_member(iu != nullptr ? *iu : p, "url", ppath + ".image_url.url");
      if (url.starts_with("data:")) {
        const auto semi = url.find(";base64,");
        if (semi == std::string::npos) throw refusal{ppath + ".image_url.url", "a data: URL must be base64"};
        out.push_back({{"type", "image"},
                       {"source", {{"type", "base64"}, {"media_type", url.substr(5, semi - 5)}, {"data", url.substr(semi + 8)}}}});
      } else {
        out.push_back({{"type", "image"}, {"source", {{"type", "url"}, {"url", url}}}});
      }
    } else {
      throw refusal{ppath + ".type", "a content part of type '" + type + "' has no Messages equivalent here"};
    }
  }
  return out;
}

std::string text_of(const json& content, const std::string& path) {
  std::string text;
  for (const json& b : content_blocks(content, path, false)) text += b["text"].get<std::string>();
  return text;
}

/// Appends blocks to the last message when it has the same role (Messages wants turns to
/// alternate; tool results and the user's next words share one user turn).
void append_turn(json& messages, const std::string& role, json blocks) {
  if (blocks.empty()) return;
  if (!messages.empty() && messages.back()["role"] == role) {
    for (auto& b : blocks) messages.back()["content"].push_back(std::move(b));
    return;
  }
  messages.push_back({{"role", role}, {"content", std::move(blocks)}});
}

std::string finish_reason_of(const std::string& stop_reason) {
  if (stop_reason == "max_tokens") return "length";
  if (stop_reason == "tool_use") return "tool_calls";
  if (stop_reason == "refusal") return "content_filter";
  return "stop";  // end_turn, stop_sequence, pause_turn
}

json chat_usage(std::int64_t input, std::int64_t cache_read, std::int64_t cache_write, std::int64_t output) {
  const std::int64_t prompt = input + cache_read + cache_write;
  return {{"prompt_tokens", prompt},
          {"completion_tokens", output},
          {"total_tokens", prompt + output},
          {"prompt_tokens_details", {{"cached_tokens", cache_read}}},
          {"cache_creation_input_tokens", cache_write}};
}

}  // namespace

std::string effort_for_thinking_budget(std::int64_t budget_tokens) {
  if (budget_tokens < 4096) return "low";
  if (budget_tokens < 16384) return "medium";
  return "high";
}

std::int64_t thinking_budget_for_effort(const std::string& effort) {
  if (effort == "minimal" || effort == "none") return 0;
  if (effort == "low") return 2048;
  if (effort == "medium") return 8192;
  if (effort == "high") return 16384;
  return -1;
}

static translated chat_request_to_messages_tree(std::string_view chat_body, bool* include_usage) {
  const json in = json::parse(chat_body, nullptr, false);
  if (in.is_discarded() || !in.is_object()) return {{}, "the body is not a JSON object", {}};
  if (include_usage != nullptr) *include_usage = false;
  try {
    only_keys(in, "", {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "stream", "stream_options",
                       "temperature", "top_p", "top_k", "user", "tools", "tool_choice", "parallel_tool_calls", "n",
                       "response_format", "reasoning_effort"});
    json out = json::object();
    out["model"] = string_member(in, "model", "model");
    std::int64_t max_tokens = default_anthropic_max_tokens;
    for (const char* k : {"max_tokens", "max_completion_tokens"}) {
      if (const json* v = member(in, k); v != nullptr && !v->is_null()) {
        if (!v->is_number_integer() || v->get<std::int64_t>() < 1) throw refusal{k, "must be a positive integer"};
        max_tokens = v->get<std::int64_t>();
      }
    }
    out["max_tokens"] = max_tokens;
    if (const json* e = member(in, "reasoning_effort"); e != nullptr && !e->is_null()) {
      const std::int64_t want = e->is_string() ? thinking_budget_for_effort(e->get<std::string>()) : -1;
      if (want < 0) throw refusal{"reasoning_effort", "must be minimal, low, medium or high"};
      if (want > 0) {
        const std::int64_t budget = std::min(want, max_tokens - 1);
        if (budget < min_thinking_budget) {
          throw refusal{"reasoning_effort", "thinking on this backend needs max_tokens above " +
                                                std::to_string(min_thinking_budget)};
        }
        out["thinking"] = {{"type", "enabled"}, {"budget_tokens", budget}};
      }
    }
    if (const json* n = member(in, "n"); n != nullptr && !n->is_null() && !(n->is_number_integer() && n->get<int>() == 1)) {
      throw refusal{"n", "Messages answers with one choice only"};
    }
    if (const json* rf = member(in, "response_format"); rf != nullptr && !rf->is_null()) {
      if (!rf->is_object() || string_member(*rf, "type", "response_format.type") != "text") {
        throw refusal{"response_format", "structured output (json_object, json_schema) has no Messages equivalent"};
      }
    }
    const json* msgs = member(in, "messages");
    if (msgs == nullptr || !msgs->is_array() || msgs->empty()) throw refusal{"messages", "Field required (a non-empty array)"};
    json system = json::array();
    json messages = json::array();
    for (std::size_t i = 0; i < msgs->size(); ++i) {
      const json& m = (*msgs)[i];
      const std::string path = "messages[" + std::to_string(i) + "]";
      if (!m.is_object()) throw refusal{path, "a message must be an object"};
      const std::string role = string_member(m, "role", path + ".role");
      const json* content = member(m, "content");
      const json empty;
      const json& c = content != nullptr ? *content : empty;
      if (role == "system" || role == "developer") {
        only_keys(m, path, {"role", "content", "name"});
        for (auto& b : content_blocks(c, path + ".content", false)) system.push_back(std::move(b));
      } else if (role == "user") {
        only_keys(m, path, {"role", "content", "name"});
        append_turn(messages, "user", content_blocks(c, path + ".content", true));
      } else if (role == "assistant") {
        only_keys(m, path, {"role", "content", "name", "tool_calls", "reasoning_content", "refusal"});
        json blocks = content_blocks(c, path + ".content", false);
        if (const json* calls = member(m, "tool_calls"); calls != nullptr && !calls->is_null()) {
          if (!calls->is_array()) throw refusal{path + ".tool_calls", "must be an array"};
          for (std::size_t k = 0; k < calls->size(); ++k) {
            const json& call = (*calls)[k];
            const std::string cpath = path + ".tool_calls[" + std::to_string(k) + "]";
            const json* fn = member(call, "function");
            if (fn == nullptr || !fn->is_object()) throw refusal{cpath + ".function", "Field required"};
            const std::string args = string_member(*fn, "arguments", cpath + ".function.arguments");
            json input = args.empty() ? json::object() : json::parse(args, nullptr, false);
            if (input.is_discarded() || !input.is_object()) {
              throw refusal{cpath + ".function.arguments", "must be a JSON object (Messages takes tool input as an object)"};
            }
            blocks.push_back({{"type", "tool_use"},
                              {"id", string_member(call, "id", cpath + ".id")},
                              {"name", string_member(*fn, "name", cpath + ".function.name")},
                              {"input", std::move(input)}});
          }
        }
        append_turn(messages, "assistant", std::move(blocks));
      } else if (role == "tool") {
        only_keys(m, path, {"role", "content", "tool_call_id", "name"});
        json result = {{"type", "tool_result"},
                       {"tool_use_id", string_member(m, "tool_call_id", path + ".tool_call_id")},
                       {"content", text_of(c, path + ".content")}};
        append_turn(messages, "user", json::array({std::move(result)}));
      } else {
        throw refusal{path + ".role", "role '" + role + "' has no Messages equivalent"};
      }
    }
    if (messages.empty()) throw refusal{"messages", "Messages needs at least one user or assistant message"};
    if (!system.empty()) out["system"] = std::move(system);
    out["messages"] = std::move(messages);
    if (const json* stop = member(in, "stop"); stop != nullptr && !stop->is_null()) {
      if (stop->is_string()) out["stop_sequences"] = json::array({*stop});
      else if (stop->is_array()) out["stop_sequences"] = *stop;
      else throw refusal{"stop", "must be a string or an array of strings"};
    }
    for (const char* k : {"temperature", "top_p", "top_k"}) {
      if (const json* v = member(in, k); v != nullptr && !v->is_null()) out[k] = *v;
    }
    if (const json* u = member(in, "user"); u != nullptr && u->is_string()) out["metadata"] = {{"user_id", *u}};
    if (const json* tools = member(in, "tools"); tools != nullptr && !tools->is_null()) {
      if (!tools->is_array()) throw refusal{"tools", "must be an array"};
      json list = json::array();
      for (std::size_t i = 0; i < tools->size(); ++i) {
        const json& t = (*tools)[i];
        const std::string path = "tools[" + std::to_string(i) + "]";
        if (string_member(t, "type", path + ".type") != "function") throw refusal{path + ".type", "only function tools are translated"};
        const json* fn = member(t, "function");
        if (fn == nullptr || !fn->is_object()) throw refusal{path + ".function", "Field required"};
        json tool = {{"name", string_member(*fn, "name", path + ".function.name")}};
        if (const json* d = member(*fn, "description"); d != nullptr && d->is_string()) tool["description"] = *d;
        const json* params = member(*fn, "parameters");
        tool["input_schema"] = params != nullptr && params->is_object() ? *params : json{{"type", "object"}, {"properties", json::object()}};
        list.push_back(std::move(tool));
      }
      if (!list.empty()) out["tools"] = std::move(list);
    }
    json choice;
    if (const json* tc = member(in, "tool_choice"); tc != nullptr && !tc->is_null()) {
      if (tc->is_string()) {
        const std::string s = tc->get<std::string>();
        if (s == "auto") choice = {{"type", "auto"}};
        else if (s == "none") choice = {{"type", "none"}};
        else if (s == "required") choice = {{"type", "any"}};
        else throw refusal{"tool_choice", "must be auto, none, required or a function"};
      } else if (tc->is_object()) {
        const json* fn = member(*tc, "function");
        if (fn == nullptr || !fn->is_object()) throw refusal{"tool_choice.function", "Field required"};
        choice = {{"type", "tool"}, {"name", string_member(*fn, "name", "tool_choice.function.name")}};
      } else {
        throw refusal{"tool_choice", "must be a string or an object"};
      }
    }
    if (const json* p = member(in, "parallel_tool_calls"); p != nullptr && p->is_boolean() && !p->get<bool>()) {
      if (choice.is_null()) choice = {{"type", "auto"}};
      if (choice["type"] != "none") choice["disable_parallel_tool_use"] = true;
    }
    if (!choice.is_null() && out.contains("tools")) out["tool_choice"] = std::move(choice);
    if (const json* s = member(in, "stream"); s != nullptr && s->is_boolean() && s->get<bool>()) {
      out["stream"] = true;
      if (const json* so = member(in, "stream_options"); so != nullptr && so->is_object() && include_usage != nullptr) {
        const json* iu = member(*so, "include_usage");
        *include_usage = iu != nullptr && iu->is_boolean() && iu->get<bool>();
      }
    }
    return {dump(out), {}, {}};
  } catch (const refusal& r) {
    return refused(r);
  }
}

static translated message_to_chat_answer_tree(std::string_view body) {
  const json in = json::parse(body, nullptr, false);
  const json* content = in.is_object() ? member(in, "content") : nullptr;
  if (content == nullptr || !content->is_array()) return {{}, "the upstream answer is not an Anthropic message", {}};
  std::string text, reasoning;
  json calls = json::array();
  for (const json& b : *content) {
    const json* type = member(b, "type");
    if (type == nullptr || !type->is_string()) continue;
    if (*type == "text") {
      if (const json* t = member(b, "text"); t != nullptr && t->is_string()) text += t->get<std::string>();
    } else if (*type == "thinking") {
      if (const json* t = member(b, "thinking"); t != nullptr && t->is_string()) reasoning += t->get<std::string>();
    } else if (*type == "tool_use") {
      const json* input = member(b, "input");
      const json* id = member(b, "id");
      const json* name = member(b, "name");
      calls.push_back({{"id", id != nullptr && id->is_string() ? id->get<std::string>() : random_id("call_")},
                       {"type", "function"},
                       {"function", {{"name", name != nullptr && name->is_string() ? name->get<std::string>() : std::string()},
                                     {"arguments", input != nullptr ? dump(*input) : std::string("{}")}}}});
    }
  }
  json message = {{"role", "assistant"}, {"content", text.empty() && !calls.empty() ? json(nullptr) : json(text)}};
  if (!calls.empty()) message["tool_calls"] = std::move(calls);
  if (!reasoning.empty()) message["reasoning_content"] = reasoning;
  const json* sr = member(in, "stop_reason");
  const std::string stop_reason = sr != nullptr && sr->is_string() ? sr->get<std::string>() : "end_turn";
  json choice = {{"index", 0}, {"message", std::move(message)}, {"finish_reason", finish_reason_of(stop_reason)}};
  if (const json* ss = member(in, "stop_sequence"); stop_reason == "stop_sequence" && ss != nullptr && ss->is_string()) {
    choice["stop_reason"] = *ss;  // as vLLM names the stop string that matched
  }
  const json* u = member(in, "usage");
  const json empty = json::object();
  const json& usage = u != nullptr && u->is_object() ? *u : empty;
  const json* id = member(in, "id");
  const json* model = member(in, "model");
  json out = {{"id", id != nullptr && id->is_string() ? id->get<std::string>() : random_id("chatcmpl-")},
              {"object", "chat.completion"},
              {"created", unix_now()},
              {"model", model != nullptr && model->is_string() ? model->get<std::string>() : std::string()},
              {"choices", json::array({std::move(choice)})},
              {"usage", chat_usage(int_member(usage, "input_tokens"), int_member(usage, "cache_read_input_tokens"),
                                   int_member(usage, "cache_creation_input_tokens"), int_member(usage, "output_tokens"))}};
  return {dump(out), {}, {}};
}

answer messages_error_to_chat(int status, std::string_view body) {
  const json in = json::parse(body, nullptr, false);
  std::string type = "upstream_error", message(body);
  if (const json* e = in.is_object() ? member(in, "error") : nullptr; e != nullptr && e->is_object()) {
    if (const json* t = member(*e, "type"); t != nullptr && t->is_string()) type = t->get<std::string>();
    if (const json* m = member(*e, "message"); m != nullptr && m->is_string()) message = m->get<std::string>();
  }
  if (message.empty()) message = "upstream answered with status " + std::to_string(status);
  std::string code = type;
  if (status == 529 || type == "overloaded_error") {
    status = 503;
    code = "overloaded";
  } else if (type == "rate_limit_error") {
    code = "rate_limit_exceeded";
  } else if (type == "authentication_error") {
    code = "invalid_api_key";
  } else if (type == "not_found_error") {
    code = "not_found";
  } else if (type == "invalid_request_error") {
    code = message.find("prompt is too long") != std::string::npos ? "context_length_exceeded" : "invalid_request";
  }
  return {status, api_error{status, std::move(type), std::move(code), std::move(message), {}}.body()};
}

std::string messages_stream_to_chat::chunk(std::string_view delta_json, std::string_view finish_reason) {
  // Written as the tree would write it (keys in its order), without one: delta_json is compact
  // JSON with its keys in that order, as dump() writes it.
  std::string c;
  c.reserve(delta_json.size() + id_.size() + model_.size() + 128);
  c.append(R"({"choices":[{"delta":)").append(delta_json).append(R"(,"finish_reason":)");
  if (finish_reason.empty()) c.append("null");
  else c.append(json_quote(finish_reason));
  c.append(R"(,"index":0}],"created":)").append(std::to_string(created_));
  c.append(R"(,"id":)").append(json_quote(id_)).append(R"(,"model":)").append(json_quote(model_));
  c.append(R"(,"object":"chat.completion.chunk"})");
  return sse_event({}, c);
}

std::string messages_stream_to_chat::usage_json() const { return dump(chat_usage(input_, cache_read_, cache_write_, output_)); }

std::string messages_stream_to_chat::event(std::string_view sse) {
  if (done_) return {};
  const sse_fields f = parse_sse_event(sse);
  if (!f.data) return {};
  {
    // The commonest event, a text or thinking delta, is read with the body scanner: no tree.
    static constexpr std::array<std::string_view, 2> keys{"type", "delta"};
    std::array<std::string_view, 2> v{};
    if (top_level_values(*f.data, keys, v) && v[0] == R"("content_block_delta")" && !v[1].empty() && v[1].front() == '{') {
      static constexpr std::array<std::string_view, 3> delta_keys{"type", "text", "thinking"};
      std::array<std::string_view, 3> d{};
      top_level_values(v[1], delta_keys, d);
      const bool text = d[0] == R"("text_delta")" && !d[1].empty() && d[1].front() == '"';
      const bool thinking = d[0] == R"("thinking_delta")" && !d[2].empty() && d[2].front() == '"';
      if (text || thinking) {
        std::string delta = text ? R"({"content":)" : R"({"reasoning_content":)";
        append_literal_as_quoted(delta, text ? d[1] : d[2]);
        delta.push_back('}');
        return chunk(delta);
      }
    }
  }
  const json e = json::parse(*f.data, nullptr, false);
  if (!e.is_object()) return {};
  const json* t = member(e, "type");
  const std::string type = t != nullptr && t->is_string() ? t->get<std::string>() : f.name;
  auto read_usage = [&](const json* u) {
    if (u == nullptr || !u->is_object()) return;
    // message_delta's usage is cumulative; a count it leaves out keeps its earlier value.
    if (member(*u, "input_tokens") != nullptr) input_ = int_member(*u, "input_tokens");
    if (member(*u, "cache_read_input_tokens") != nullptr) cache_read_ = int_member(*u, "cache_read_input_tokens");
    if (member(*u, "cache_creation_input_tokens") != nullptr) cache_write_ = int_member(*u, "cache_creation_input_tokens");
    if (member(*u, "output_tokens") != nullptr) output_ = int_member(*u, "output_tokens");
  };
  if (type == "message_start") {
    created_ = unix_now();
    if (const json* m = member(e, "message"); m != nullptr && m->is_object()) {
      if (const json* id = member(*m, "id"); id != nullptr && id->is_string()) id_ = id->get<std::string>();
      if (const json* model = member(*m, "model"); model != nullptr && model->is_string()) model_ = model->get<std::string>();
      read_usage(member(*m, "usage"));
    }
    return chunk(R"({"content":"","role":"assistant"})");
  }
  const json* index = member(e, "index");
  const int block = index != nullptr && index->is_number_integer() ? index->get<int>() : -1;
  if (type == "content_block_start") {
    const json* cb = member(e, "content_block");
    if (cb == nullptr || block < 0 || block > 4096) return {};
    if (tool_of_block_.size() <= static_cast<std::size_t>(block)) tool_of_block_.resize(static_cast<std::size_t>(block) + 1, -1);
    const json* ct = member(*cb, "type");
    if (ct != nullptr && *ct == "tool_use") {
      const int k = tools_++;
      tool_of_block_[static_cast<std::size_t>(block)] = k;
      const json* id = member(*cb, "id");
      const json* name = member(*cb, "name");
      json delta = {{"tool_calls", json::array({{{"index", k},
                                                 {"id", id != nullptr && id->is_string() ? id->get<std::string>() : random_id("call_")},
                                                 {"type", "function"},
                                                 {"function", {{"name", name != nullptr && name->is_string() ? name->get<std::string>() : std::string()},
                                                               {"arguments", ""}}}}})}};
      return chunk(dump(delta));
    }
    if (ct != nullptr && *ct == "text") {
      if (const json* text = member(*cb, "text"); text != nullptr && text->is_string() && !text->get<std::string>().empty()) {
        return chunk(dump(json{{"content", *text}}));
      }
    }
    return {};
  }
  if (type == "content_block_delta") {
    const json* d = member(e, "delta");
    if (d == nullptr || !d->is_object()) return {};
    const json* dt = member(*d, "type");
    if (dt == nullptr || !dt->is_string()) return {};
    if (*dt == "text_delta") {
      if (const json* text = member(*d, "text"); text != nullptr && text->is_string()) return chunk(dump(json{{"content", *text}}));
    } else if (*dt == "thinking_delta") {
      if (const json* text = member(*d, "thinking"); text != nullptr && text->is_string()) {
        return chunk(dump(json{{"reasoning_content", *text}}));
      }
    } else if (*dt == "input_json_delta") {
      if (block < 0 || static_cast<std::size_t>(block) >= tool_of_block_.size() || tool_of_block_[static_cast<std::size_t>(block)] < 0) return {};
      const json* pj = member(*d, "partial_json");
      if (pj == nullptr || !pj->is_string() || pj->get<std::string>().empty()) return {};
      json delta = {{"tool_calls", json::array({{{"index", tool_of_block_[static_cast<std::size_t>(block)]},
                                                 {"function", {{"arguments", *pj}}}}})}};
      return chunk(dump(delta));
    }
    return {};  // signature_delta, citations_delta: nothing a chat client reads
  }
  if (type == "message_delta") {
    read_usage(member(e, "usage"));
    const json* d = member(e, "delta");
    const json* sr = d != nullptr ? member(*d, "stop_reason") : nullptr;
    if (sr == nullptr || !sr->is_string()) return {};
    return chunk("{}", finish_reason_of(sr->get<std::string>()));
  }
  if (type == "message_stop") {
    done_ = true;
    std::string out;
    if (include_usage_) {
      json u = {{"id", id_}, {"object", "chat.completion.chunk"}, {"created", created_}, {"model", model_},
                {"choices", json::array()}, {"usage", json::parse(usage_json())}};
      out += sse_event({}, dump(u));
    }
    out += "data: [DONE]\n\n";
    return out;
  }
  if (type == "error") {
    done_ = true;
    const json* err = member(e, "error");
    const answer a = messages_error_to_chat(500, dump(json{{"error", err != nullptr ? *err : json::object()}}));
    return sse_event({}, a.body);
  }
  return {};  // ping, and event types added later
}


// Message texts are copied (tool call arguments are parsed, image URLs split: not carried).
translated chat_request_to_messages(std::string_view chat_body, bool* include_usage) {
  static const string_paths texts = [](std::span<const path_step> p) {
    return path_is(p, {"messages", "[]", "content"}) || path_is(p, {"messages", "[]", "content", "[]", "text"});
  };
  return with_string_spans<translated>(chat_body, texts, [include_usage](std::string_view b) {
    return chat_request_to_messages_tree(b, include_usage);
  });
}


// The message's text and thinking blocks are joined.
translated message_to_chat_answer(std::string_view body) {
  static const string_paths texts = [](std::span<const path_step> p) {
    return path_is(p, {"content", "[]", "text"}) || path_is(p, {"content", "[]", "thinking"});
  };
  return with_string_spans<translated>(body, texts, [](std::string_view b) { return message_to_chat_answer_tree(b); });
}

}  // namespace tollgate::protocol
