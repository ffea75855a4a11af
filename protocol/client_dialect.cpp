#include "protocol/client_dialect.hpp"

#include <nlohmann/json.hpp>

#include <array>
#include <charconv>

#include "protocol/anthropic_messages.hpp"
#include "protocol/errors.hpp"
#include "protocol/json_body.hpp"
#include "protocol/json_util.hpp"
#include "protocol/responses_api.hpp"

namespace tollgate::protocol {

namespace {

/// The model the client asked for: answers name it, whatever the upstream calls it. Read with the
/// body scanner: a tree of a large request would cost more than its translation.
std::string requested_model(std::string_view body) {
  static constexpr std::array<std::string_view, 1> keys{"model"};
  std::array<std::string_view, 1> value{};
  if (!top_level_values(body, keys, value) || value[0].empty() || value[0].front() != '"') return {};
  const auto m = nlohmann::json::parse(value[0], nullptr, false);
  return m.is_string() ? m.get<std::string>() : std::string();
}

answer bad_upstream(std::string_view why) {
  return {502, bad_gateway("the upstream answer could not be translated: " + std::string(why)).body()};
}

class anthropic_dialect final : public client_dialect {
 public:
  explicit anthropic_dialect(std::string body) : body_(std::move(body)), stream_(requested_model(body_)) {}
  translated chat_request() const override { return messages_request_to_chat(body_); }
  answer whole(int status, std::string_view body) override {
    if (status < 200 || status >= 300) return error(status, body);
    auto t = chat_answer_to_message(body, requested_model(body_));
    if (!t.ok()) return error(502, bad_upstream(t.error).body);
    return {status, std::move(t.body)};
  }
  answer error(int status, std::string_view openai_body) override { return chat_error_to_anthropic(status, openai_body); }
  std::string event(std::string_view e) override { return stream_.event(e); }
  std::string end() override { return stream_.end(); }
  std::string stream_error(int status, std::string_view message) override { return stream_.error(status, message); }

 private:
  std::string body_;
  chat_stream_to_messages stream_;
};

class responses_dialect final : public client_dialect {
 public:
  explicit responses_dialect(std::string body) : body_(std::move(body)), stream_(body_, requested_model(body_)) {}
  translated chat_request() const override { return responses_request_to_chat(body_); }
  answer whole(int status, std::string_view body) override {
    if (status < 200 || status >= 300) return {status, std::string(body)};  // OpenAI's error shape already
    auto t = chat_answer_to_response(body, body_, requested_model(body_));
    if (!t.ok()) return bad_upstream(t.error);
    return {status, std::move(t.body)};
  }
  answer error(int status, std::string_view openai_body) override { return {status, std::string(openai_body)}; }
  std::string event(std::string_view e) override { return stream_.event(e); }
  std::string end() override { return stream_.end(); }
  std::string stream_error(int status, std::string_view message) override { return stream_.error(status, message); }

 private:
  std::string body_;
  chat_stream_to_responses stream_;
};

/// One relayed SSE event: its type (the event: name, else the data's "type") and data.
struct relayed_event {
  std::string type;
  std::string data;
  std::int64_t sequence_number = -1;  ///< the Responses API numbers its events
};

relayed_event read_event(std::string_view e) {
  sse_fields f = parse_sse_event(e);
  relayed_event out;
  out.type = std::move(f.name);
  if (f.data) out.data = std::move(*f.data);
  static constexpr std::array<std::string_view, 2> keys{"type", "sequence_number"};
  std::array<std::string_view, 2> v{};
  if (!out.data.empty() && out.data.front() == '{' && top_level_values(out.data, keys, v)) {
    if (out.type.empty() && v[0].size() >= 2 && v[0].front() == '"') out.type = v[0].substr(1, v[0].size() - 2);
    std::int64_t n = 0;
    const auto [end, ec] = std::from_chars(v[1].data(), v[1].data() + v[1].size(), n);
    if (ec == std::errc() && end == v[1].data() + v[1].size()) out.sequence_number = n;
  }
  return out;
}

/// The id of a response object the upstream stored: empty when it has none, or says "store": false.
std::string stored_id(std::string_view response) {
  static constexpr std::array<std::string_view, 2> keys{"id", "store"};
  std::array<std::string_view, 2> v{};
  if (!top_level_values(response, keys, v) || v[1] == "false" || v[0].size() < 2 || v[0].front() != '"') return {};
  const auto id = nlohmann::json::parse(v[0], nullptr, false);
  return id.is_string() ? id.get<std::string>() : std::string();
}

translated not_translated() {
  translated t;
  t.error = "a relayed request is sent as it is";
  return t;
}

/// Anthropic Messages relayed to a kind anthropic upstream: its answers pass as they are; a
/// stream is whole once message_stop (or Anthropic's error event) has come.
class anthropic_relay_dialect final : public client_dialect {
 public:
  translated chat_request() const override { return not_translated(); }
  answer whole(int status, std::string_view body) override { return {status, std::string(body)}; }
  answer error(int status, std::string_view openai_body) override { return chat_error_to_anthropic(status, openai_body); }
  std::string event(std::string_view e) override {
    if (complete_) return {};
    const relayed_event ev = read_event(e);
    usage_.take(ev.data);
    if (ev.type == "message_stop" || ev.type == "error") complete_ = true;
    return std::string(e);
  }
  std::string end() override {
    if (complete_) return {};
    return stream_error(502, "upstream ended the stream before message_stop");
  }
  std::string stream_error(int status, std::string_view message) override {
    complete_ = true;
    return sse_event("error", anthropic_error_body(status, message));
  }
  bool relays() const override { return true; }
  std::optional<usage> stream_usage() const override { return usage_.get(); }
  bool complete() const override { return complete_; }

 private:
  messages_stream_usage usage_;
  bool complete_ = false;
};

/// The Responses API relayed to an upstream that serves it: its answers pass as they are; a
/// stream is whole once response.completed, response.incomplete, response.failed or an error
/// event has come.
class responses_relay_dialect final : public client_dialect {
 public:
  explicit responses_relay_dialect(std::function<void(const std::string&)> on_stored) : on_stored_(std::move(on_stored)) {}
  translated chat_request() const override { return not_translated(); }
  answer whole(int status, std::string_view body) override {
    if (status >= 200 && status < 300) stored(stored_id(body));
    return {status, std::string(body)};
  }
  answer error(int status, std::string_view openai_body) override { return {status, std::string(openai_body)}; }
  std::string event(std::string_view e) override {
    if (complete_) return {};
    const relayed_event ev = read_event(e);
    if (ev.type == "response.created" && id_.empty()) {
      static constexpr std::array<std::string_view, 1> keys{"response"};
      std::array<std::string_view, 1> response{};
      if (top_level_values(ev.data, keys, response)) stored(stored_id(response[0]));
    }
    next_sequence_ = ev.sequence_number >= 0 ? ev.sequence_number + 1 : next_sequence_ + 1;
    bool refused = false;
    if (auto u = responses_event_usage(ev.data, &refused)) used_ = u;
    refused_ = refused_ || refused;
    if (ev.type == "response.completed" || ev.type == "response.incomplete" || ev.type == "response.failed" ||
        ev.type == "error") {
      complete_ = true;
    }
    return std::string(e);
  }
  std::string end() override {
    if (complete_) return {};
    return stream_error(502, "upstream ended the stream before response.completed");
  }
  std::string stream_error(int status, std::string_view message) override {
    complete_ = true;
    const std::string code = status == 504 ? "gateway_timeout" : status == 429 ? "rate_limit_exceeded" : "server_error";
    const nlohmann::json e = {{"type", "error"}, {"code", code}, {"message", message}, {"param", nullptr},
                              {"sequence_number", next_sequence_}};
    return sse_event("error", e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }
  bool relays() const override { return true; }
  std::optional<usage> stream_usage() const override { return refused_ ? std::nullopt : used_; }
  bool complete() const override { return complete_; }
  const std::string& stored_response_id() const override { return id_; }

 private:
  void stored(std::string id) {
    id_ = std::move(id);
    if (!id_.empty() && on_stored_) on_stored_(id_);
  }

  std::function<void(const std::string&)> on_stored_;
  std::string id_;
  std::optional<usage> used_;
  bool refused_ = false;
  bool complete_ = false;
  std::int64_t next_sequence_ = 0;
};

}  // namespace

std::unique_ptr<client_dialect> anthropic_relay() { return std::make_unique<anthropic_relay_dialect>(); }

std::unique_ptr<client_dialect> responses_relay(std::function<void(const std::string&)> on_stored) {
  return std::make_unique<responses_relay_dialect>(std::move(on_stored));
}

std::unique_ptr<client_dialect> anthropic_client(std::string request_body) {
  return std::make_unique<anthropic_dialect>(std::move(request_body));
}

std::unique_ptr<client_dialect> responses_client(std::string request_body) {
  return std::make_unique<responses_dialect>(std::move(request_body));
}

}  // namespace tollgate::protocol
