#include "adapters/anthropic_backend.hpp"

#include <boost/beast/core/string.hpp>

#include <algorithm>
#include <optional>

#include "adapters/event_queue.hpp"
#include "adapters/openai_backend.hpp"
#include "protocol/anthropic_upstream.hpp"
#include "protocol/errors.hpp"
#include "protocol/sse.hpp"

namespace tollgate::adapters {

namespace net = boost::asio;

namespace {

constexpr std::size_t max_whole_answer = 64 * 1024 * 1024;  // as the gateway buffers at most

call_event head_event(int status, std::string_view content_type = "application/json") {
  call_event ev;
  ev.type = call_event::kind::head;
  ev.head.status = status;
  ev.head.headers.emplace_back("content-type", content_type);
  return ev;
}

call_event data_event(std::string data) {
  call_event ev;
  ev.type = call_event::kind::data;
  ev.data = std::move(data);
  return ev;
}

/// An answer made here, without a call upstream: a request the translation refused.
class local_answer_call final : public call {
 public:
  local_answer_call(int status, std::string body) {
    events_.push_back(head_event(status));
    events_.push_back(data_event(std::move(body)));
  }
  net::awaitable<call_event> next() override {
    if (!events_.empty()) co_return events_.pop_front();
    co_return call_event{};  // end
  }
  void cancel() override {}
  bool ready() const override { return true; }
  void on_ready(std::function<void()>) override {}

 private:
  event_queue events_;
};

/// Wraps the HTTP call to /messages and translates what comes back: the head (529 becomes a
/// retryable 503), a stream event by event, a whole answer or an error once it is complete.
class anthropic_call final : public call {
 public:
  anthropic_call(std::unique_ptr<call> inner, bool stream, bool include_usage)
      : inner_(std::move(inner)), stream_(stream), events_(include_usage) {}

  net::awaitable<call_event> next() override {
    for (;;) {
      if (!pending_.empty()) co_return pending_.pop_front();
      if (terminal_) co_return *terminal_;
      call_event ev = co_await inner_->next();
      switch (ev.type) {
        case call_event::kind::head: {
          status_ = ev.head.status;
          const auto type = ev.head.find("content-type");
          streaming_ = stream_ && status_ >= 200 && status_ < 300 && type &&
                       type->find("text/event-stream") != std::string_view::npos;
          call_event head = head_event(status_ == 529 ? 503 : status_, streaming_ ? "text/event-stream" : "application/json");
          for (const auto& [name, value] : ev.head.headers) {
            if (name == "retry-after" || name.starts_with("x-ratelimit-") || name == "request-id") {
              head.head.headers.emplace_back(name == "request-id" ? "x-upstream-request-id" : name, value);
            }
          }
          co_return head;
        }
        case call_event::kind::data:
          if (streaming_) {
            splitter_.feed(ev.data);
            std::string out;
            while (auto e = splitter_.next_event()) out += events_.event(*e);
            if (!out.empty()) co_return data_event(std::move(out));
            continue;
          }
          body_ += ev.data;
          if (body_.size() > max_whole_answer) {
            inner_->cancel();
            co_return fail("upstream answer exceeds " + std::to_string(max_whole_answer) + " bytes");
          }
          continue;
        case call_event::kind::end: {
          call_event end;
          end.type = call_event::kind::end;
          terminal_ = end;
          if (streaming_) {
            if (auto rest = splitter_.take_rest(); !rest.empty()) {
              std::string out = events_.event(rest + "\n\n");
              if (!out.empty()) co_return data_event(std::move(out));
            }
            co_return end;
          }
          if (status_ >= 200 && status_ < 300) {
            auto t = protocol::message_to_chat_answer(body_);
            if (!t.ok()) co_return fail(t.error);
            co_return data_event(std::move(t.body));
          }
          co_return data_event(protocol::messages_error_to_chat(status_, body_).body);
        }
        case call_event::kind::failed:
          terminal_ = ev;
          co_return ev;
      }
    }
  }

  void cancel() override { inner_->cancel(); }
  bool ready() const override { return !pending_.empty() || terminal_.has_value() || inner_->ready(); }
  void on_ready(std::function<void()> hook) override { inner_->on_ready(std::move(hook)); }

 private:
  call_event fail(std::string message) {
    call_event ev;
    ev.type = call_event::kind::failed;
    ev.error = failure::broken;
    ev.message = std::move(message);
    terminal_ = ev;
    return ev;
  }

  std::unique_ptr<call> inner_;
  bool stream_;
  bool streaming_ = false;
  int status_ = 0;
  std::string body_;
  protocol::sse_splitter splitter_;
  protocol::messages_stream_to_chat events_;
  event_queue pending_;
  std::optional<call_event> terminal_;
};

std::string refusal_body(const protocol::translated& t) {
  // OpenAI's error shape: the gateway relays it, or turns it into the client's own dialect.
  return protocol::api_error{400, "invalid_request_error", "unsupported_by_backend",
                             "this backend speaks Anthropic's Messages API, which cannot carry " + t.error, t.param}
      .body();
}

}  // namespace

std::map<std::string, std::string> anthropic_headers(const config::backend_config& cfg) {
  const config::remote_backend_config& remote = *cfg.remote();
  std::map<std::string, std::string> headers = remote.headers;
  auto named = [&](std::string_view name) {
    for (const auto& [k, v] : headers)
      if (boost::beast::iequals(k, name)) return true;
    return false;
  };
  if (!remote.api_key.empty() && !named("x-api-key")) headers["x-api-key"] = remote.api_key;
  if (!named("anthropic-version")) headers["anthropic-version"] = anthropic_version;
  return headers;
}

std::vector<std::pair<std::string, std::string>> anthropic_request_headers(std::string_view backend_version,
                                                                           std::string_view backend_beta,
                                                                           std::string_view client_version,
                                                                           std::string_view client_beta) {
  const auto trim = [](std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    return v;
  };
  std::vector<std::pair<std::string, std::string>> out;
  client_version = trim(client_version);
  out.emplace_back("anthropic-version", std::string(client_version.empty() ? backend_version : client_version));
  std::vector<std::string_view> betas;
  for (std::string_view list : {backend_beta, client_beta}) {
    while (!list.empty()) {
      const auto comma = list.find(',');
      const std::string_view name = trim(list.substr(0, comma));
      list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
      if (!name.empty() && std::find(betas.begin(), betas.end(), name) == betas.end()) betas.push_back(name);
    }
  }
  if (!betas.empty()) {
    std::string joined;
    for (const std::string_view b : betas) joined.append(joined.empty() ? "" : ",").append(b);
    out.emplace_back("anthropic-beta", std::move(joined));
  }
  return out;
}

anthropic_backend::anthropic_backend(config::backend_config cfg) : cfg_(std::move(cfg)) {
  config::backend_config transport = cfg_;
  transport.remote()->headers = anthropic_headers(cfg_);
  // anthropic-version and anthropic-beta go with each request, the client's merged in.
  std::erase_if(transport.remote()->headers, [this](const auto& h) {
    if (boost::beast::iequals(h.first, "anthropic-version")) {
      version_ = h.second;
      return true;
    }
    if (boost::beast::iequals(h.first, "anthropic-beta")) {
      beta_ = h.second;
      return true;
    }
    return false;
  });
  transport.remote()->api_key.clear();  // Anthropic takes x-api-key, not Authorization: Bearer
  transport_ = std::make_unique<openai_backend>(std::move(transport));
}

anthropic_backend::~anthropic_backend() = default;

std::unique_ptr<call> anthropic_backend::start(upstream_request request, io_refs refs) const {
  request.headers = anthropic_request_headers(version_, beta_, request.anthropic_version, request.anthropic_beta);
  // A Messages request relayed as it is: the answer comes back as it is too.
  if (request.path == "/messages") return transport_->start(std::move(request), refs);
  if (request.path != "/chat/completions") {
    protocol::translated t;
    t.error = "the endpoint " + std::string(request.path) + " (only chat completions are translated)";
    return std::make_unique<local_answer_call>(400, refusal_body(t));
  }
  bool include_usage = false;
  request.join_body();
  auto t = protocol::chat_request_to_messages(request.body, &include_usage);
  if (!t.ok()) return std::make_unique<local_answer_call>(400, refusal_body(t));
  upstream_request up;
  up.path = "/messages";
  up.body = std::move(t.body);
  up.stream = request.stream;
  up.request_id = request.request_id;
  up.headers = std::move(request.headers);
  return std::make_unique<anthropic_call>(transport_->start(std::move(up), refs), request.stream, include_usage);
}

}  // namespace tollgate::adapters
