#include "adapters/local_engine_request.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <random>

namespace tollgate::adapters {

using json = nlohmann::json;

parse_result parse_job(const upstream_request& req, const engine_port& engine) {
  auto bad = [](std::string message, std::string param = {}, std::string code = "invalid_request") {
    return parse_result{std::nullopt, protocol::bad_request(std::move(message), std::move(param), std::move(code))};
  };
  const bool chat = req.path == "/chat/completions";
  if (!chat && req.path != "/completions") {
    return parse_result{std::nullopt,
                        protocol::not_found("The local engine serves /chat/completions and /completions, not " +
                                                std::string(req.path) + ".",
                                            "unsupported_endpoint")};
  }
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) return bad("We could not parse the JSON body of your request.");
  job_spec spec;
  spec.chat = chat;
  spec.model = body.value("model", engine.model_name());
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean()) return bad("'stream' must be a boolean", "stream");
    spec.stream = body["stream"].get<bool>();
  }
  if (body.contains("stream_options") && body["stream_options"].is_object()) {
    spec.include_usage = body["stream_options"].value("include_usage", false);
  }
  if (body.contains("n") && !body["n"].is_null() && body["n"] != 1) return bad("The local engine supports only n = 1.", "n");
  if (body.value("logprobs", json(false)) == json(true)) return bad("The local engine does not return logprobs.", "logprobs");
  // What the engine cannot honour is refused, never silently ignored.
  if (body.contains("tools") && body["tools"].is_array() && !body["tools"].empty()) {
    return bad("The local engine does not call tools.", "tools");
  }
  if (body.contains("response_format") && body["response_format"].is_object() &&
      body["response_format"].value("type", "text") != "text") {
    return bad("The local engine answers only in plain text (response_format type 'text').", "response_format");
  }

  auto number = [&](const char* name, double lo, double hi, double& out) -> std::optional<parse_result> {
    if (!body.contains(name) || body[name].is_null()) return std::nullopt;
    if (!body[name].is_number()) return bad(std::string("'") + name + "' must be a number", name);
    const double v = body[name].get<double>();
    if (!(v >= lo && v <= hi)) {
      return bad(std::string("'") + name + "' must be between " + json(lo).dump() + " and " + json(hi).dump(), name);
    }
    out = v;
    return std::nullopt;
  };
  double temperature = 1, top_p = 1, top_k = 0, max_tokens = -1, seed = -1;
  if (auto e = number("temperature", 0, 2, temperature)) return *e;
  if (auto e = number("top_p", 1e-9, 1, top_p)) return *e;
  if (auto e = number("top_k", 0, 1e9, top_k)) return *e;
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    if (auto e = number(name, 1, 1e9, max_tokens)) return *e;
  }
  if (auto e = number("seed", 0, 9.2e18, seed)) return *e;
  spec.sampling.temperature = static_cast<float>(temperature);
  spec.sampling.top_p = static_cast<float>(top_p);
  spec.sampling.top_k = static_cast<int>(top_k);
  spec.sampling.seed = seed >= 0 ? static_cast<std::uint64_t>(seed) : std::random_device{}();

  if (body.contains("ignore_eos") && !body["ignore_eos"].is_null()) {
    if (!body["ignore_eos"].is_boolean()) return bad("'ignore_eos' must be true or false", "ignore_eos");
    spec.ignore_eos = body["ignore_eos"].get<bool>();
  }

  if (body.contains("stop") && !body["stop"].is_null()) {
    const json& s = body["stop"];
    if (s.is_string()) {
      spec.stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= 4) {
      for (const auto& x : s) {
        if (!x.is_string()) return bad("'stop' must be a string or up to 4 strings", "stop");
        spec.stop.push_back(x.get<std::string>());
      }
    } else {
      return bad("'stop' must be a string or up to 4 strings", "stop");
    }
    std::erase_if(spec.stop, [](const std::string& x) { return x.empty(); });
  }

  if (chat) {
    if (!engine.has_tokenizer()) return bad("This checkpoint has no tokenizer.json: use /completions with token ids.");
    if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) {
      return bad("'messages' must be a non-empty list", "messages");
    }
    std::vector<std::pair<std::string, std::string>> messages;
    for (const auto& m : body["messages"]) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
        return bad("each message needs a 'role'", "messages");
      }
      if (const auto role = m["role"].get<std::string>();
          role != "system" && role != "developer" && role != "user" && role != "assistant") {
        return bad("The local engine takes system, developer, user and assistant messages, not '" + role + "'.",
                   "messages");
      }
      std::string text;
      const json content = m.value("content", json());
      if (content.is_string()) {
        text = content.get<std::string>();
      } else if (content.is_array()) {
        for (const auto& part : content) {
          if (part.is_object() && part.value("type", "") == "text" && part.contains("text") && part["text"].is_string()) {
            text += part["text"].get<std::string>();
          } else {
            return bad("the local engine reads only text content parts", "messages");
          }
        }
      } else if (!content.is_null()) {
        return bad("a message's 'content' must be a string or a list of text parts", "messages");
      }
      messages.emplace_back(m["role"].get<std::string>(), std::move(text));
    }
    spec.prompt = engine.chat_prompt(messages);
  } else {
    const json p = body.value("prompt", json());
    if (p.is_string()) {
      if (!engine.has_tokenizer()) return bad("This checkpoint has no tokenizer.json: send the prompt as token ids.", "prompt");
      spec.prompt = engine.encode(p.get<std::string>());
    } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
      for (const auto& t : p) {
        if (!t.is_number_integer() || t.get<std::int64_t>() < 0 ||
            t.get<std::int64_t>() >= static_cast<std::int64_t>(engine.vocab_size())) {
          return bad("prompt token ids must be integers from 0 to " + std::to_string(engine.vocab_size() - 1), "prompt");
        }
        spec.prompt.push_back(t.get<std::int32_t>());
      }
    } else {
      return bad("'prompt' must be a string or a list of token ids", "prompt");
    }
  }
  if (spec.prompt.empty()) return bad("the prompt is empty", chat ? "messages" : "prompt");
  const std::size_t limit = engine.max_positions();
  if (spec.prompt.size() >= limit) {
    return bad("This model's maximum context length is " + std::to_string(limit) + " tokens. However, your prompt has " +
                   std::to_string(spec.prompt.size()) + " tokens.",
               chat ? "messages" : "prompt", "context_length_exceeded");
  }
  const std::size_t room = limit - spec.prompt.size();
  spec.max_tokens = max_tokens > 0 ? std::min<std::size_t>(static_cast<std::size_t>(max_tokens), room) : room;
  return parse_result{std::move(spec), {}};
}

}  // namespace tollgate::adapters
