// The Responses API's stream, made from a chat completions stream: each chat chunk becomes the
// item and part events a Responses client expects (message, reasoning summary, function call).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "protocol/json_body.hpp"
#include "protocol/json_util.hpp"
#include "protocol/responses_api.hpp"
#include "protocol/responses_items.hpp"

namespace tollgate::protocol {

using json = nlohmann::json;
using namespace responses_detail;

struct chat_stream_to_responses::state {
  json request;
  std::string model;
  std::string id = random_id("resp_");
  std::int64_t created = unix_now();
  std::int64_t seq = 0;
  bool started = false;
  bool ended = false;
  enum class kind { none, message, reasoning, function } open = kind::none;
  json output = json::array();  // items done, in order
  std::string item_id, text;    // the open item
  std::string call_id, name;    // the open function call
  std::vector<int> call_items;  // chat tool call index -> 1 when seen
  std::string finish = "stop";
  json usage = nullptr;

  std::string emit(const std::string& type, json data) {
    data["type"] = type;
    data["sequence_number"] = seq++;
    return sse_event(type, dump(data));
  }

  json response(const std::string& status) {
    json r = base_response(request, id, model, created, status);
    r["output"] = output;
    return r;
  }

  std::string start() {
    started = true;
    std::string out = emit("response.created", {{"response", response("in_progress")}});
    out += emit("response.in_progress", {{"response", response("in_progress")}});
    return out;
  }

  int index() const { return static_cast<int>(output.size()); }

  std::string close() {
    std::string out;
    switch (open) {
      case kind::none: return out;
      case kind::message: {
        out += emit("response.output_text.done", {{"item_id", item_id}, {"output_index", index()}, {"content_index", 0},
                                                  {"text", text}, {"logprobs", json::array()}});
        out += emit("response.content_part.done", {{"item_id", item_id}, {"output_index", index()}, {"content_index", 0},
                                                   {"part", {{"type", "output_text"}, {"text", text}, {"annotations", json::array()}}}});
        json item = message_item(item_id, text, "completed");
        out += emit("response.output_item.done", {{"output_index", index()}, {"item", item}});
        output.push_back(std::move(item));
        break;
      }
      case kind::reasoning: {
        out += emit("response.reasoning_summary_text.done",
                    {{"item_id", item_id}, {"output_index", index()}, {"summary_index", 0}, {"text", text}});
        out += emit("response.reasoning_summary_part.done", {{"item_id", item_id}, {"output_index", index()}, {"summary_index", 0},
                                                             {"part", {{"type", "summary_text"}, {"text", text}}}});
        json item = reasoning_item(item_id, text);
        out += emit("response.output_item.done", {{"output_index", index()}, {"item", item}});
        output.push_back(std::move(item));
        break;
      }
      case kind::function: {
        out += emit("response.function_call_arguments.done",
                    {{"item_id", item_id}, {"output_index", index()}, {"name", name}, {"arguments", text}});
        json item = function_item(item_id, call_id, name, text, "completed");
        out += emit("response.output_item.done", {{"output_index", index()}, {"item", item}});
        output.push_back(std::move(item));
        break;
      }
    }
    open = kind::none;
    text.clear();
    return out;
  }

  std::string open_message() {
    std::string out = close();
    open = kind::message;
    item_id = random_id("msg_");
    json item = {{"type", "message"}, {"id", item_id}, {"status", "in_progress"}, {"role", "assistant"}, {"content", json::array()}};
    out += emit("response.output_item.added", {{"output_index", index()}, {"item", item}});
    out += emit("response.content_part.added", {{"item_id", item_id}, {"output_index", index()}, {"content_index", 0},
                                                {"part", {{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}}}});
    return out;
  }

  std::string open_reasoning() {
    std::string out = close();
    open = kind::reasoning;
    item_id = random_id("rs_");
    out += emit("response.output_item.added",
                {{"output_index", index()}, {"item", {{"type", "reasoning"}, {"id", item_id}, {"summary", json::array()}}}});
    out += emit("response.reasoning_summary_part.added", {{"item_id", item_id}, {"output_index", index()}, {"summary_index", 0},
                                                          {"part", {{"type", "summary_text"}, {"text", ""}}}});
    return out;
  }

  std::string open_function(std::string cid, std::string fname) {
    std::string out = close();
    open = kind::function;
    item_id = random_id("fc_");
    call_id = std::move(cid);
    name = std::move(fname);
    out += emit("response.output_item.added", {{"output_index", index()}, {"item", function_item(item_id, call_id, name, "", "in_progress")}});
    return out;
  }
};

chat_stream_to_responses::chat_stream_to_responses(std::string_view request_body, std::string model)
    : s_(std::make_unique<state>()) {
  s_->request = echoed_settings(request_body);
  s_->model = std::move(model);
}

chat_stream_to_responses::~chat_stream_to_responses() = default;

std::string chat_stream_to_responses::event(std::string_view sse) {
  state& s = *s_;
  if (s.ended) return {};
  const sse_fields fields = parse_sse_event(sse);
  // The commonest chunk, a piece of text, is read and written without a tree; the bytes are
  // those the tree would give (keys in its order, strings as it writes them).
  if (fields.data) {
    if (const auto d = read_chat_text_delta(*fields.data)) {
      std::string out;
      if (!s.started) out += s.start();
      // head: the members before "delta"; tail: those between "item_id" and "sequence_number".
      const auto delta = [&](std::string_view type, std::string_view head, std::string_view literal, std::string_view tail) {
        if (literal.find('\\') == std::string_view::npos) s.text.append(literal.substr(1, literal.size() - 2));
        else s.text += json_string_text(literal);
        std::string data;
        data.reserve(literal.size() + 160);
        data.append("{").append(head).append(R"("delta":)");
        append_literal_as_quoted(data, literal);
        data.append(R"(,"item_id":)").append(json_quote(s.item_id)).append(R"(,)").append(tail);
        data.append(R"("output_index":)").append(std::to_string(s.index()));
        data.append(R"(,"sequence_number":)").append(std::to_string(s.seq++));
        if (type == "response.reasoning_summary_text.delta") data.append(R"(,"summary_index":0)");
        data.append(R"(,"type":")").append(type).append(R"("})");
        out += sse_event(type, data);
      };
      if (!d->reasoning.empty()) {
        if (s.open != state::kind::reasoning) out += s.open_reasoning();
        delta("response.reasoning_summary_text.delta", "", d->reasoning, "");
      }
      if (!d->content.empty()) {
        if (s.open != state::kind::message) out += s.open_message();
        delta("response.output_text.delta", R"("content_index":0,)", d->content, R"("logprobs":[],)");
      }
      return out;
    }
  }
  const chat_stream_chunk read = read_chat_stream_data(fields.data);
  if (read.failed) return error(502, read.error);
  if (read.chunk.is_null()) return {};
  const json& chunk = read.chunk;
  std::string out;
  if (!s.started) out += s.start();
  if (const json* u = member(chunk, "usage"); u != nullptr && u->is_object()) s.usage = response_usage(u);
  const json* choices = member(chunk, "choices");
  if (choices == nullptr || !choices->is_array() || choices->empty() || !(*choices)[0].is_object()) return out;
  const json& choice = (*choices)[0];
  if (const json* delta = member(choice, "delta"); delta != nullptr && delta->is_object()) {
    if (const json* r = member(*delta, "reasoning_content"); r != nullptr && r->is_string() && !r->get<std::string>().empty()) {
      if (s.open != state::kind::reasoning) out += s.open_reasoning();
      s.text += r->get<std::string>();
      out += s.emit("response.reasoning_summary_text.delta",
                    {{"item_id", s.item_id}, {"output_index", s.index()}, {"summary_index", 0}, {"delta", *r}});
    }
    if (const json* c = member(*delta, "content"); c != nullptr && c->is_string() && !c->get<std::string>().empty()) {
      if (s.open != state::kind::message) out += s.open_message();
      s.text += c->get<std::string>();
      out += s.emit("response.output_text.delta", {{"item_id", s.item_id}, {"output_index", s.index()}, {"content_index", 0},
                                                   {"delta", *c}, {"logprobs", json::array()}});
    }
    if (const json* calls = member(*delta, "tool_calls"); calls != nullptr && calls->is_array()) {
      for (const json& call : *calls) {
        const std::int64_t k = int_member(call, "index");
        if (k > 1024) continue;
        if (s.call_items.size() <= static_cast<std::size_t>(k)) s.call_items.resize(static_cast<std::size_t>(k) + 1, 0);
        const json* fn = member(call, "function");
        if (s.call_items[static_cast<std::size_t>(k)] == 0) {
          s.call_items[static_cast<std::size_t>(k)] = 1;
          const json* id = member(call, "id");
          const json* name = fn != nullptr ? member(*fn, "name") : nullptr;
          out += s.open_function(id != nullptr && id->is_string() ? id->get<std::string>() : random_id("call_"),
                                 name != nullptr && name->is_string() ? name->get<std::string>() : std::string());
        }
        if (const json* args = fn != nullptr ? member(*fn, "arguments") : nullptr;
            args != nullptr && args->is_string() && !args->get<std::string>().empty() && s.open == state::kind::function) {
          s.text += args->get<std::string>();
          out += s.emit("response.function_call_arguments.delta", {{"item_id", s.item_id}, {"output_index", s.index()}, {"delta", *args}});
        }
      }
    }
  }
  if (const json* fr = member(choice, "finish_reason"); fr != nullptr && fr->is_string()) s.finish = fr->get<std::string>();
  return out;
}

std::string chat_stream_to_responses::end() {
  state& s = *s_;
  if (s.ended) return {};
  std::string out;
  if (!s.started) out += s.start();
  out += s.close();
  s.ended = true;
  json r = s.response("completed");
  set_status(r, s.finish);
  r["usage"] = s.usage.is_null() ? response_usage(nullptr) : s.usage;
  const std::string type = r["status"] == "completed" ? "response.completed" : "response.incomplete";
  out += s.emit(type, {{"response", std::move(r)}});
  return out;
}

std::string chat_stream_to_responses::error(int status, std::string_view message) {
  state& s = *s_;
  s.ended = true;
  std::string out;
  const std::string code = status == 504 ? "gateway_timeout" : status == 429 ? "rate_limit_exceeded" : "server_error";
  out += s.emit("error", {{"code", code}, {"message", message}, {"param", nullptr}});
  json r = s.response("failed");
  r["error"] = {{"code", code}, {"message", message}};
  out += s.emit("response.failed", {{"response", std::move(r)}});
  return out;
}

}  // namespace tollgate::protocol
