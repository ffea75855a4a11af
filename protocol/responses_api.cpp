#include "protocol/responses_api.hpp"

#include <array>
#include <chrono>
#include <vector>

#include <nlohmann/json.hpp>

#include "protocol/json_body.hpp"
#include "protocol/json_util.hpp"
#include "protocol/responses_items.hpp"
#include "protocol/string_spans.hpp"

namespace tollgate::protocol {

using json = nlohmann::json;

namespace responses_detail {

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

/// A message item's content as chat content: a string, or text and image parts.
json message_content(const json& content, const std::string& path, const std::string& role) {
  if (content.is_string()) return content;
  if (!content.is_array()) throw refusal{path, "must be a string or an array of content parts"};
  json parts = json::array();
  bool text_only = true;
  for (std::size_t i = 0; i < content.size(); ++i) {
    const json& p = content[i];
    const std::string ppath = path + "[" + std::to_string(i) + "]";
    const std::string type = string_member(p, "type", ppath + ".type");
    if (type == "input_text" || type == "output_text" || (type == "refusal" && role == "assistant")) {
      parts.push_back({{"type", "text"}, {"text", string_member(p, type == "refusal" ? "refusal" : "text", ppath + ".text")}});
    } else if (type == "input_image" && role != "assistant") {
      if (const json* f = member(p, "file_id"); f != nullptr && !f->is_null()) {
        throw refusal{ppath + ".file_id", "file ids need OpenAI's file store; send image_url (a URL or a data: URL)"};
      }
      json image = {{"url", string_member(p, "image_url", ppath + ".image_url")}};
      if (const json* d = member(p, "detail"); d != nullptr && d->is_string()) image["detail"] = *d;
      parts.push_back({{"type", "image_url"}, {"image_url", std::move(image)}});
      text_only = false;
    } else {
      throw refusal{ppath + ".type", "a content part of type '" + type + "' has no chat completions equivalent"};
    }
  }
  if (!text_only) return parts;
  std::string text;
  for (const auto& p : parts) text += p["text"].get<std::string>();
  return text;
}

std::string output_text(const json& output, const std::string& path) {
  if (output.is_string()) return output.get<std::string>();
  if (!output.is_array()) throw refusal{path, "must be a string or an array of input_text parts"};
  std::string text;
  for (std::size_t i = 0; i < output.size(); ++i) {
    const std::string ppath = path + "[" + std::to_string(i) + "]";
    if (string_member(output[i], "type", ppath + ".type") != "input_text") {
      throw refusal{ppath + ".type", "a chat tool message holds text only"};
    }
    text += string_member(output[i], "text", ppath + ".text");
  }
  return text;
}

void convert_input(const json& input, json& messages) {
  if (input.is_string()) {
    messages.push_back({{"role", "user"}, {"content", input}});
    return;
  }
  if (!input.is_array()) throw refusal{"input", "must be a string or an array of items"};
  for (std::size_t i = 0; i < input.size(); ++i) {
    const json& item = input[i];
    const std::string path = "input[" + std::to_string(i) + "]";
    if (!item.is_object()) throw refusal{path, "an input item must be an object"};
    const json* type_v = member(item, "type");
    const std::string type = type_v != nullptr && type_v->is_string() ? type_v->get<std::string>() : "message";
    if (type == "message") {
      only_keys(item, path, {"type", "role", "content", "id", "status"});
      std::string role = string_member(item, "role", path + ".role");
      if (role == "developer") role = "system";  // the widest-understood name for it
      if (role != "user" && role != "system" && role != "assistant") throw refusal{path + ".role", "unknown role '" + role + "'"};
      const json* content = member(item, "content");
      if (content == nullptr) throw refusal{path + ".content", "Field required"};
      messages.push_back({{"role", role}, {"content", message_content(*content, path + ".content", role)}});
    } else if (type == "function_call") {
      only_keys(item, path, {"type", "call_id", "name", "arguments", "id", "status"});
      json call = {{"id", string_member(item, "call_id", path + ".call_id")},
                   {"type", "function"},
                   {"function", {{"name", string_member(item, "name", path + ".name")},
                                 {"arguments", string_member(item, "arguments", path + ".arguments")}}}};
      // Calls in a row belong to one assistant turn.
      if (!messages.empty() && messages.back()["role"] == "assistant") {
        json& last = messages.back();
        if (!last.contains("tool_calls")) last["tool_calls"] = json::array();
        last["tool_calls"].push_back(std::move(call));
      } else {
        messages.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({std::move(call)})}});
      }
    } else if (type == "function_call_output") {
      only_keys(item, path, {"type", "call_id", "output", "id", "status"});
      const json* out = member(item, "output");
      if (out == nullptr) throw refusal{path + ".output", "Field required"};
      messages.push_back({{"role", "tool"},
                          {"tool_call_id", string_member(item, "call_id", path + ".call_id")},
                          {"content", output_text(*out, path + ".output")}});
    } else if (type == "item_reference") {
      throw refusal{path + ".type", "this gateway keeps no responses to refer to: send the items whole (with the Vercel AI SDK, providerOptions.openai.store = false)"};
    } else if (type == "reasoning") {
      // The model's own earlier reasoning: chat backends take none back (DeepSeek refuses it).
    } else {
      throw refusal{path + ".type", "an input item of type '" + type + "' has no chat completions equivalent"};
    }
  }
}

json convert_tools(const json& tools) {
  if (!tools.is_array()) throw refusal{"tools", "must be an array"};
  json out = json::array();
  for (std::size_t i = 0; i < tools.size(); ++i) {
    const json& t = tools[i];
    const std::string path = "tools[" + std::to_string(i) + "]";
    const std::string type = string_member(t, "type", path + ".type");
    if (type != "function") throw refusal{path + ".type", "built-in tool '" + type + "' is not available through this gateway"};
    only_keys(t, path, {"type", "name", "description", "parameters", "strict"});
    json fn = {{"name", string_member(t, "name", path + ".name")}};
    if (const json* d = member(t, "description"); d != nullptr && !d->is_null()) fn["description"] = *d;
    if (const json* p = member(t, "parameters"); p != nullptr && !p->is_null()) fn["parameters"] = *p;
    if (const json* s = member(t, "strict"); s != nullptr && s->is_boolean()) fn["strict"] = *s;
    out.push_back({{"type", "function"}, {"function", std::move(fn)}});
  }
  return out;
}

json convert_format(const json& text) {
  if (!text.is_object()) throw refusal{"text", "must be an object"};
  only_keys(text, "text", {"format"});
  const json* format = member(text, "format");
  if (format == nullptr || format->is_null()) return nullptr;
  const std::string type = string_member(*format, "type", "text.format.type");
  if (type == "text") return nullptr;
  if (type == "json_object") return {{"type", "json_object"}};
  if (type != "json_schema") throw refusal{"text.format.type", "must be text, json_object or json_schema"};
  only_keys(*format, "text.format", {"type", "name", "schema", "strict", "description"});
  json schema = {{"name", string_member(*format, "name", "text.format.name")}};
  const json* s = member(*format, "schema");
  if (s == nullptr || !s->is_object()) throw refusal{"text.format.schema", "Field required (an object)"};
  schema["schema"] = *s;
  if (const json* st = member(*format, "strict"); st != nullptr && st->is_boolean()) schema["strict"] = *st;
  if (const json* d = member(*format, "description"); d != nullptr && d->is_string()) schema["description"] = *d;
  return {{"type", "json_schema"}, {"json_schema", std::move(schema)}};
}

/// The request's top-level settings that a response echoes (base_response), read without
/// building a tree of the rest (the input, the bulk of a large request). An object; empty when the
/// body is not a JSON object.
json echoed_settings(std::string_view request_body) {
  static constexpr std::array<std::string_view, 11> keys{"instructions", "max_output_tokens", "parallel_tool_calls",
                                                         "reasoning",    "temperature",       "text",
                                                         "tool_choice",  "tools",             "top_p",
                                                         "user",         "metadata"};
  std::array<std::string_view, keys.size()> values{};
  json out = json::object();
  if (!top_level_values(request_body, keys, values)) return out;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (values[i].empty()) continue;
    json v = json::parse(values[i], nullptr, false);
    if (!v.is_discarded()) out[std::string(keys[i])] = std::move(v);
  }
  return out;
}

/// The response object around `output`, echoing the request's settings as OpenAI does.
json base_response(const json& req, const std::string& id, const std::string& model, std::int64_t created,
                   const std::string& status) {
  auto echo = [&](const char* key, json fallback) {
    const json* v = member(req, key);
    return v != nullptr && !v->is_null() ? *v : fallback;
  };
  return {{"id", id},
          {"object", "response"},
          {"created_at", created},
          {"status", status},
          {"error", nullptr},
          {"incomplete_details", nullptr},
          {"instructions", echo("instructions", nullptr)},
          {"max_output_tokens", echo("max_output_tokens", nullptr)},
          {"model", model},
          {"output", json::array()},
          {"parallel_tool_calls", echo("parallel_tool_calls", true)},
          {"previous_response_id", nullptr},
          {"reasoning", echo("reasoning", json{{"effort", nullptr}, {"summary", nullptr}})},
          {"store", false},
          {"temperature", echo("temperature", 1.0)},
          {"text", echo("text", json{{"format", {{"type", "text"}}}})},
          {"tool_choice", echo("tool_choice", "auto")},
          {"tools", echo("tools", json::array())},
          {"top_p", echo("top_p", 1.0)},
          {"truncation", "disabled"},
          {"usage", nullptr},
          {"user", echo("user", nullptr)},
          {"metadata", echo("metadata", json::object())}};
}

json response_usage(const json* u) {
  std::int64_t prompt = 0, cached = 0, completion = 0, reasoning = 0;
  if (u != nullptr && u->is_object()) {
    prompt = int_member(*u, "prompt_tokens");
    completion = int_member(*u, "completion_tokens");
    if (const json* d = member(*u, "prompt_tokens_details"); d != nullptr) cached = int_member(*d, "cached_tokens");
    if (cached == 0) cached = int_member(*u, "prompt_cache_hit_tokens");
    if (const json* d = member(*u, "completion_tokens_details"); d != nullptr) reasoning = int_member(*d, "reasoning_tokens");
  }
  return {{"input_tokens", prompt},
          {"input_tokens_details", {{"cached_tokens", cached}}},
          {"output_tokens", completion},
          {"output_tokens_details", {{"reasoning_tokens", reasoning}}},
          {"total_tokens", prompt + completion}};
}

/// status and incomplete_details for a chat finish_reason.
void set_status(json& response, const std::string& finish) {
  if (finish == "length") {
    response["status"] = "incomplete";
    response["incomplete_details"] = {{"reason", "max_output_tokens"}};
  } else if (finish == "content_filter") {
    response["status"] = "incomplete";
    response["incomplete_details"] = {{"reason", "content_filter"}};
  } else {
    response["status"] = "completed";
  }
}

json message_item(const std::string& id, const std::string& text, const char* status) {
  return {{"type", "message"},
          {"id", id},
          {"status", status},
          {"role", "assistant"},
          {"content", json::array({{{"type", "output_text"}, {"text", text}, {"annotations", json::array()}, {"logprobs", json::array()}}})}};
}

json reasoning_item(const std::string& id, const std::string& text) {
  return {{"type", "reasoning"}, {"id", id}, {"summary", json::array({{{"type", "summary_text"}, {"text", text}}})}};
}

json function_item(const std::string& id, const std::string& call_id, const std::string& name, const std::string& args,
                   const char* status) {
  return {{"type", "function_call"}, {"id", id}, {"call_id", call_id}, {"name", name}, {"arguments", args}, {"status", status}};
}

}  // namespace responses_detail

using namespace responses_detail;

static translated responses_request_to_chat_tree(std::string_view body) {
  const json in = json::parse(body, nullptr, false);
  if (in.is_discarded() || !in.is_object()) return {{}, "the body is not a JSON object", {}};
  try {
    only_keys(in, "", {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "tools",
                       "tool_choice", "parallel_tool_calls", "text", "metadata", "store", "user", "reasoning", "include",
                       "previous_response_id", "safety_identifier", "prompt_cache_key", "service_tier", "truncation"});
    json chat = json::object();
    chat["model"] = string_member(in, "model", "model");
    if (const json* p = member(in, "previous_response_id"); p != nullptr && !p->is_null()) {
      throw refusal{"previous_response_id", "this gateway keeps no responses: send the whole conversation in input"};
    }
    // Translated answers are stored nowhere (they say "store": false): asking for it is refused,
    // not dropped.
    if (const json* st = member(in, "store"); st != nullptr && !st->is_null()) {
      if (!st->is_boolean()) throw refusal{"store", "must be a boolean"};
      if (st->get<bool>()) {
        throw refusal{"store", "this model's backends do not serve the Responses API and the gateway keeps no responses: "
                               "send false or leave it out"};
      }
    }
    if (const json* t = member(in, "truncation"); t != nullptr && !t->is_null() && *t != "disabled") {
      throw refusal{"truncation", "only 'disabled' is supported"};
    }
    if (const json* inc = member(in, "include"); inc != nullptr && !inc->is_null()) {
      if (!inc->is_array()) throw refusal{"include", "must be an array"};
      for (std::size_t i = 0; i < inc->size(); ++i) {
        // Encrypted reasoning is OpenAI's own; asking for it is harmless (none comes back).
        if ((*inc)[i] != "reasoning.encrypted_content") {
          throw refusal{"include[" + std::to_string(i) + "]", "not available through chat completions"};
        }
      }
    }
    json messages = json::array();
    if (const json* ins = member(in, "instructions"); ins != nullptr && !ins->is_null()) {
      if (!ins->is_string()) throw refusal{"instructions", "must be a string"};
      messages.push_back({{"role", "system"}, {"content", *ins}});
    }
    const json* input = member(in, "input");
    if (input == nullptr || input->is_null()) throw refusal{"input", "Field required"};
    convert_input(*input, messages);
    if (messages.empty()) throw refusal{"input", "holds no message"};
    chat["messages"] = std::move(messages);
    if (const json* v = member(in, "max_output_tokens"); v != nullptr && !v->is_null()) {
      if (!v->is_number_integer() || v->get<std::int64_t>() < 1) throw refusal{"max_output_tokens", "must be a positive integer"};
      chat["max_tokens"] = *v;
    }
    for (const char* k : {"temperature", "top_p", "parallel_tool_calls", "service_tier", "prompt_cache_key"}) {
      if (const json* v = member(in, k); v != nullptr && !v->is_null()) chat[k] = *v;
    }
    for (const char* k : {"user", "safety_identifier"}) {
      if (const json* v = member(in, k); v != nullptr && v->is_string()) chat["user"] = *v;
    }
    if (const json* r = member(in, "reasoning"); r != nullptr && !r->is_null()) {
      if (!r->is_object()) throw refusal{"reasoning", "must be an object"};
      only_keys(*r, "reasoning", {"effort", "summary", "generate_summary"});
      if (const json* e = member(*r, "effort"); e != nullptr && e->is_string()) chat["reasoning_effort"] = *e;
    }
    if (const json* t = member(in, "tools"); t != nullptr && !t->is_null()) {
      json tools = convert_tools(*t);
      if (!tools.empty()) chat["tools"] = std::move(tools);
    }
    if (const json* tc = member(in, "tool_choice"); tc != nullptr && !tc->is_null()) {
      if (tc->is_string()) {
        chat["tool_choice"] = *tc;
      } else if (tc->is_object() && member(*tc, "type") != nullptr && (*tc)["type"] == "function") {
        chat["tool_choice"] = {{"type", "function"}, {"function", {{"name", string_member(*tc, "name", "tool_choice.name")}}}};
      } else {
        throw refusal{"tool_choice", "must be auto, none, required or {type: function, name}"};
      }
    }
    if (const json* t = member(in, "text"); t != nullptr && !t->is_null()) {
      json format = convert_format(*t);
      if (!format.is_null()) chat["response_format"] = std::move(format);
    }
    if (const json* md = member(in, "metadata"); md != nullptr && !md->is_null() && !md->is_object()) {
      throw refusal{"metadata", "must be an object"};
    }
    stream_with_usage(in, chat);
    return {dump(chat), {}, {}};
  } catch (const refusal& r) {
    return refused(r);
  }
}

static translated chat_answer_to_response_tree(std::string_view chat_body, std::string_view request_body,
                                                std::string_view model) {
  const json in = json::parse(chat_body, nullptr, false);
  const json* choices = in.is_object() ? member(in, "choices") : nullptr;
  if (choices == nullptr || !choices->is_array() || choices->empty() || !(*choices)[0].is_object()) {
    return {{}, "the upstream answer is not a chat completion", {}};
  }
  const json req = echoed_settings(request_body);
  json out = base_response(req, random_id("resp_"), std::string(model), unix_now(), "completed");
  const json& choice = (*choices)[0];
  const json* message = member(choice, "message");
  json& output = out["output"];
  if (message != nullptr && message->is_object()) {
    if (const json* r = member(*message, "reasoning_content"); r != nullptr && r->is_string() && !r->get<std::string>().empty()) {
      output.push_back(reasoning_item(random_id("rs_"), r->get<std::string>()));
    }
    if (const json* c = member(*message, "content"); c != nullptr && c->is_string() && !c->get<std::string>().empty()) {
      output.push_back(message_item(random_id("msg_"), c->get<std::string>(), "completed"));
    }
    if (const json* calls = member(*message, "tool_calls"); calls != nullptr && calls->is_array()) {
      for (const json& call : *calls) {
        const json* fn = member(call, "function");
        if (fn == nullptr || !fn->is_object()) continue;
        const json* id = member(call, "id");
        const json* name = member(*fn, "name");
        const json* args = member(*fn, "arguments");
        output.push_back(function_item(random_id("fc_"), id != nullptr && id->is_string() ? id->get<std::string>() : random_id("call_"),
                                       name != nullptr && name->is_string() ? name->get<std::string>() : std::string(),
                                       args != nullptr && args->is_string() ? args->get<std::string>() : std::string("{}"),
                                       "completed"));
      }
    }
  }
  const json* f = member(choice, "finish_reason");
  set_status(out, f != nullptr && f->is_string() ? f->get<std::string>() : "stop");
  out["usage"] = response_usage(member(in, "usage"));
  return {dump(out), {}, {}};
}

// Instructions, input texts, tool outputs and arguments, image URLs are copied or joined: carried
// as spans.
translated responses_request_to_chat(std::string_view body) {
  static const string_paths texts = [](std::span<const path_step> p) {
    return path_is(p, {"instructions"}) || path_is(p, {"input"}) || path_is(p, {"input", "[]", "content"}) ||
           path_is(p, {"input", "[]", "content", "[]", "text"}) || path_is(p, {"input", "[]", "content", "[]", "refusal"}) ||
           path_is(p, {"input", "[]", "content", "[]", "image_url"}) || path_is(p, {"input", "[]", "output"}) ||
           path_is(p, {"input", "[]", "output", "[]", "text"}) || path_is(p, {"input", "[]", "arguments"});
  };
  return with_string_spans<translated>(body, texts, [](std::string_view b) { return responses_request_to_chat_tree(b); });
}


// The answer's text, reasoning and tool call arguments are copied.
translated chat_answer_to_response(std::string_view chat_body, std::string_view request_body, std::string_view model) {
  static const string_paths texts = [](std::span<const path_step> p) {
    return path_is(p, {"choices", "[]", "message", "content"}) || path_is(p, {"choices", "[]", "message", "reasoning_content"}) ||
           path_is(p, {"choices", "[]", "message", "tool_calls", "[]", "function", "arguments"});
  };
  return with_string_spans<translated>(chat_body, texts, [request_body, model](std::string_view b) {
    return chat_answer_to_response_tree(b, request_body, model);
  });
}

}  // namespace tollgate::protocol
