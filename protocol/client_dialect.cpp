#include "protocol/client_dialect.hpp"

#include <nlohmann/json.hpp>

#include "protocol/anthropic_messages.hpp"
#include "protocol/errors.hpp"
#include "protocol/json_util.hpp"
#include "protocol/responses_api.hpp"

namespace tollgate::protocol {

namespace {

/// The model the client asked for: answers name it, whatever the upstream calls it.
std::string requested_model(std::string_view body) {
  const auto j = nlohmann::json::parse(body, nullptr, false);
  const nlohmann::json* m = member(j, "model");
  return m != nullptr && m->is_string() ? m->get<std::string>() : std::string();
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

}  // namespace

std::unique_ptr<client_dialect> anthropic_client(std::string request_body) {
  return std::make_unique<anthropic_dialect>(std::move(request_body));
}

std::unique_ptr<client_dialect> responses_client(std::string request_body) {
  return std::make_unique<responses_dialect>(std::move(request_body));
}

}  // namespace tollgate::protocol
