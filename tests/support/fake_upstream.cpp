// The fake upstream: synchronous Beast, one acceptor thread and one thread per connection, so a
// test that blocks inside one response's before_chunk hook never stalls another connection.
//
// Socket ownership: a connection's thread is the only one that reads, writes or closes its socket;
// the destructor only shuts sockets down (which wakes a blocked read or write). Both close and
// shutdown happen under the mutex, so the destructor never touches a descriptor number that the
// kernel has already handed to someone else.
#include "tests/support/fake_upstream.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <exception>
#include <list>
#include <mutex>
#include <sstream>
#include <thread>

namespace tollgate::test {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using json = nlohmann::json;

namespace {

using handler = std::function<response_script(const recorded_request&)>;

// How often a wait looks for a peer that hung up: tests expect an upstream call the gateway gave
// up on to count as an abort well before the scripted delay ends.
constexpr std::chrono::milliseconds peer_poll_interval{5};

// Generous limits: load tests send large prompts, and a 413 from the fake would read as a
// gateway bug.
constexpr std::uint32_t header_limit = 64 * 1024;
constexpr std::uint64_t body_limit = 64ull * 1024 * 1024;

response_script error_script(int status, const std::string& message, const std::string& code) {
  response_script s;
  s.status = status;
  s.body = json{{"error", {{"message", message}, {"type", "invalid_request_error"}, {"param", nullptr}, {"code", code}}}}
               .dump();
  return s;
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

/// obj[key] when it is a string, else "": request bodies are the client's, any shape may come.
std::string string_at(const json& obj, const char* key) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool true_at(const json& obj, const char* key) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_boolean() && it->get<bool>();
}

/// True when the peer has closed or reset the connection; never blocks.
bool peer_gone(tcp::socket& socket) {
  pollfd p{socket.native_handle(), POLLRDHUP, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

}  // namespace

struct fake_upstream::impl {
  struct connection {
    explicit connection(tcp::socket s) : socket(std::move(s)) {}
    tcp::socket socket;
    std::thread thread;
    bool finished = false;  ///< guarded by mutex_; the thread may be joined at once
  };

  net::io_context io_;  // owns no work: the sockets below are used synchronously
  tcp::acceptor acceptor_{io_};
  std::string host_;
  std::uint16_t port_ = 0;
  std::thread accept_thread_;

  mutable std::mutex mutex_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::deque<response_script> scripts_;
  handler fallback_ = &fake_upstream::openai_default;
  std::vector<recorded_request> seen_;
  std::size_t aborts_ = 0;
  std::list<connection> connections_;  // a list: each thread holds a reference to its node

  void accept_loop() {
    for (;;) {
      tcp::socket socket(io_);
      boost::system::error_code ec;
      acceptor_.accept(socket, ec);
      std::unique_lock lock(mutex_);
      if (stopping_) return;
      if (ec) {
        // Out of descriptors and the like: back off instead of spinning on the same error.
        stop_cv_.wait_for(lock, std::chrono::milliseconds(10), [this] { return stopping_; });
        continue;
      }
      socket.set_option(tcp::no_delay(true), ec);  // each SSE chunk must leave at once
      // Reap finished connections here so a long load test does not pile up threads.
      for (auto it = connections_.begin(); it != connections_.end();) {
        if (it->finished) {
          it->thread.join();
          it = connections_.erase(it);
        } else {
          ++it;
        }
      }
      connection& c = connections_.emplace_back(std::move(socket));
      c.thread = std::thread([this, &c] { serve(c); });
    }
  }

  void serve(connection& c) {
    beast::flat_buffer buffer;
    try {
      for (;;) {
        auto req = read_request(c.socket, buffer);
        if (!req) break;
        const connection_mode mode{req->keep_alive(), req->version() == 10};
        const response_script script = choose(record(*req));
        if (!answer(c, script, mode) || !mode.keep_alive) break;
      }
    } catch (...) {
      // A test's before_chunk hook threw: end this connection, not the test process.
    }
    std::lock_guard lock(mutex_);
    if (c.socket.is_open()) {
      boost::system::error_code ec;
      c.socket.shutdown(tcp::socket::shutdown_send, ec);
      c.socket.close(ec);
    }
    c.finished = true;
  }

  static std::optional<http::request<http::string_body>> read_request(tcp::socket& socket,
                                                                      beast::flat_buffer& buffer) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(header_limit);
    parser.body_limit(body_limit);
    boost::system::error_code ec;
    http::read_header(socket, buffer, parser, ec);
    if (ec) return std::nullopt;
    // libcurl sends "Expect: 100-continue" with larger bodies and waits a second for this
    // answer before sending the body; without it every large request would stall.
    if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
      http::response<http::empty_body> go_on{http::status::continue_, 11};
      http::write(socket, go_on, ec);
      if (ec) return std::nullopt;
    }
    http::read(socket, buffer, parser, ec);
    if (ec) return std::nullopt;
    return parser.release();
  }

  recorded_request record(const http::request<http::string_body>& req) {
    recorded_request rec;
    rec.method = std::string(req.method_string());
    rec.target = std::string(req.target());
    rec.body = req.body();
    for (const auto& field : req) {
      auto [it, fresh] = rec.headers.try_emplace(lower(std::string(field.name_string())), field.value());
      if (!fresh) it->second += ", " + std::string(field.value());  // HTTP's rule for repeated fields
    }
    std::lock_guard lock(mutex_);
    seen_.push_back(rec);
    return rec;
  }

  response_script choose(const recorded_request& rec) {
    handler fallback;
    {
      std::lock_guard lock(mutex_);
      if (!scripts_.empty()) {
        response_script script = std::move(scripts_.front());
        scripts_.pop_front();
        return script;
      }
      fallback = fallback_;
    }
    // Outside the lock: a test's handler may call requests() or push().
    try {
      return fallback(rec);
    } catch (const std::exception& e) {
      response_script s = error_script(500, std::string("fake upstream handler threw: ") + e.what(), "fake_error");
      s.headers.emplace_back("x-fake-upstream-error", "handler");
      return s;
    }
  }

  /// Waits for d (forever when d is empty), returning early when the fake stops or the peer
  /// hangs up; the latter counts as a client abort. false: the response must not go on.
  bool wait(connection& c, std::optional<std::chrono::milliseconds> d) {
    const auto deadline = std::chrono::steady_clock::now() + d.value_or(std::chrono::milliseconds(0));
    std::unique_lock lock(mutex_);
    for (;;) {
      if (stopping_) return false;
      if (peer_gone(c.socket)) {
        ++aborts_;
        return false;
      }
      const auto now = std::chrono::steady_clock::now();
      if (d && now >= deadline) return true;
      auto slice = std::chrono::steady_clock::duration(peer_poll_interval);
      if (d) slice = std::min(slice, deadline - now);
      stop_cv_.wait_for(lock, slice, [this] { return stopping_; });
    }
  }

  void reset(connection& c) {
    std::lock_guard lock(mutex_);
    boost::system::error_code ec;
    c.socket.set_option(net::socket_base::linger(true, 0), ec);  // close() then sends RST, not FIN
    c.socket.close(ec);
  }

  void count_abort() {
    std::lock_guard lock(mutex_);
    if (!stopping_) ++aborts_;  // a write cut by our own shutdown is no client's doing
  }

  struct connection_mode {
    bool keep_alive = true;
    bool http10 = false;
  };

  template <class Message>
  static void set_headers(Message& res, const response_script& s, connection_mode mode) {
    res.set(http::field::content_type, s.content_type);
    res.keep_alive(mode.keep_alive);
    // An HTTP/1.0 client (ab -k) closes after the response unless it is told otherwise.
    if (mode.keep_alive && mode.http10) res.set(http::field::connection, "keep-alive");
    for (const auto& [name, value] : s.headers) res.set(name, value);
  }

  /// Writes one response. false: the connection is done (closed, reset, failed or stopping).
  bool answer(connection& c, const response_script& s, connection_mode mode) {
    if (s.header_delay.count() > 0 && !wait(c, s.header_delay)) return false;
    if (s.reset_before_headers) {
      reset(c);
      return false;
    }
    if (s.hang) {
      wait(c, std::nullopt);
      return false;
    }
    boost::system::error_code ec;
    const auto status = static_cast<http::status>(s.status);
    if (s.chunks.empty() && !s.reset_after_chunks) {
      http::response<http::string_body> res{status, 11};
      set_headers(res, s, mode);
      res.body() = s.body;
      res.prepare_payload();
      http::write(c.socket, res, ec);
      if (ec) count_abort();
      return !ec;
    }

    http::response<http::empty_body> res{status, 11};
    set_headers(res, s, mode);
    res.chunked(true);
    http::response_serializer<http::empty_body> serializer{res};
    http::write_header(c.socket, serializer, ec);
    if (ec) {
      count_abort();
      return false;
    }
    for (std::size_t i = 0; i < s.chunks.size(); ++i) {
      if (s.reset_after_chunks && i == *s.reset_after_chunks) {
        reset(c);
        return false;
      }
      if (s.before_chunk) s.before_chunk(i);
      // Even with no delay, look for a departed peer: a write into a closed connection can
      // still succeed once, and the abort would go unseen.
      if (!wait(c, i > 0 ? s.chunk_delay : std::chrono::milliseconds(0))) return false;
      net::write(c.socket, http::make_chunk(net::buffer(s.chunks[i])), ec);
      if (ec) {
        count_abort();
        return false;
      }
    }
    if (s.reset_after_chunks) {  // at or past the number of chunks: all sent, still no clean end
      reset(c);
      return false;
    }
    net::write(c.socket, http::make_chunk_last(), ec);
    if (ec) count_abort();
    return !ec;
  }
};

fake_upstream::fake_upstream(std::string host, std::uint16_t port) : impl_(std::make_unique<impl>()) {
  impl_->host_ = std::move(host);
  tcp::resolver resolver(impl_->io_);
  const auto endpoint = resolver.resolve(impl_->host_, std::to_string(port))->endpoint();
  impl_->acceptor_.open(endpoint.protocol());
  impl_->acceptor_.set_option(tcp::acceptor::reuse_address(true));
  impl_->acceptor_.bind(endpoint);
  impl_->acceptor_.listen(net::socket_base::max_listen_connections);
  impl_->port_ = impl_->acceptor_.local_endpoint().port();
  impl_->accept_thread_ = std::thread([this] { impl_->accept_loop(); });
}

fake_upstream::~fake_upstream() {
  impl& m = *impl_;
  {
    std::lock_guard lock(m.mutex_);
    m.stopping_ = true;
    // shutdown() wakes a thread blocked in accept(), read() or write(); close() from this thread
    // would not, and would race with the connection thread's own use of the descriptor.
    ::shutdown(m.acceptor_.native_handle(), SHUT_RDWR);
    for (auto& c : m.connections_) {
      if (c.socket.is_open()) ::shutdown(c.socket.native_handle(), SHUT_RDWR);
    }
  }
  m.stop_cv_.notify_all();  // releases hang, header_delay and chunk_delay
  m.accept_thread_.join();
  // The accept thread is gone, so nothing adds to the list any more.
  for (auto& c : m.connections_) c.thread.join();
  boost::system::error_code ec;
  m.acceptor_.close(ec);
}

std::uint16_t fake_upstream::port() const { return impl_->port_; }

std::string fake_upstream::base_url() const {
  const bool ipv6 = impl_->host_.find(':') != std::string::npos;
  const std::string host = ipv6 ? "[" + impl_->host_ + "]" : impl_->host_;
  return "http://" + host + ":" + std::to_string(impl_->port_) + "/v1";
}

void fake_upstream::push(response_script script) {
  std::lock_guard lock(impl_->mutex_);
  impl_->scripts_.push_back(std::move(script));
}

void fake_upstream::set_default(std::function<response_script(const recorded_request&)> handler) {
  std::lock_guard lock(impl_->mutex_);
  impl_->fallback_ = std::move(handler);
}

std::vector<recorded_request> fake_upstream::requests() const {
  std::lock_guard lock(impl_->mutex_);
  return impl_->seen_;
}

std::size_t fake_upstream::request_count() const {
  std::lock_guard lock(impl_->mutex_);
  return impl_->seen_.size();
}

std::size_t fake_upstream::client_aborts() const {
  std::lock_guard lock(impl_->mutex_);
  return impl_->aborts_;
}

namespace {

std::vector<std::string> words(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

/// What the answer echoes: the prompt of a completion (the last one of a list), or the text of
/// the last chat message (a string, or the text parts of a content array).
std::string last_message_text(const json& body) {
  if (body.contains("prompt")) {
    const json& p = body["prompt"];
    if (p.is_string()) return p.get<std::string>();
    if (p.is_array() && !p.empty() && p.back().is_string()) return p.back().get<std::string>();
    return p.dump();
  }
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) return "";
  const json& last = body["messages"].back();
  if (!last.is_object() || !last.contains("content")) return "";
  const json& content = last["content"];
  if (content.is_string()) return content.get<std::string>();
  std::string text;
  if (content.is_array()) {
    for (const auto& part : content) {
      if (part.is_object() && string_at(part, "type") == "text") text += string_at(part, "text");
    }
  }
  return text;
}

}  // namespace

response_script fake_upstream::openai_default(const recorded_request& request) {
  const std::string path = request.target.substr(0, request.target.find('?'));
  if (request.method == "GET" && path == "/v1/models") {
    response_script s;
    s.body = json{{"object", "list"},
                  {"data", json::array({{{"id", "fake-model"}, {"object", "model"}, {"created", 0}, {"owned_by", "fake"}}})}}
                 .dump();
    return s;
  }
  const bool chat = path == "/v1/chat/completions";
  const bool completion = path == "/v1/completions";
  const bool embeddings = path == "/v1/embeddings";
  if (request.method != "POST" || !(chat || completion || embeddings)) {
    return error_script(404, "Unknown request URL: " + request.method + " " + path, "not_found");
  }
  const json body = json::parse(request.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) return error_script(400, "invalid JSON body", "invalid_json");
  const std::string model = string_at(body, "model");

  if (embeddings) {
    const std::string input = body.contains("input") ? body["input"].dump() : "";
    const int tokens = static_cast<int>(words(input).size());
    response_script s;
    s.body = json{{"object", "list"},
                  {"data", json::array({{{"object", "embedding"}, {"index", 0}, {"embedding", {0.1, 0.2, 0.3}}}})},
                  {"model", model},
                  {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}}
                 .dump();
    return s;
  }

  // Token counts are words, so tests can predict them: the prompt's words plus one (a stand-in
  // for the chat template), and the words of the answer.
  const std::string prompt = last_message_text(body);
  const std::string content = "echo: " + prompt;
  const int prompt_tokens = static_cast<int>(words(prompt).size()) + 1;
  const auto pieces = words(content);
  const int completion_tokens = static_cast<int>(pieces.size());
  const json usage = {{"prompt_tokens", prompt_tokens},
                      {"completion_tokens", completion_tokens},
                      {"total_tokens", prompt_tokens + completion_tokens}};

  if (!true_at(body, "stream")) {
    const json choice = chat ? json{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", content}}},
                                    {"finish_reason", "stop"}}
                             : json{{"index", 0}, {"text", content}, {"finish_reason", "stop"}};
    response_script s;
    s.body = json{{"id", "fake-1"},
                  {"object", chat ? "chat.completion" : "text_completion"},
                  {"created", 1},
                  {"model", model},
                  {"choices", json::array({choice})},
                  {"usage", usage}}
                 .dump();
    return s;
  }

  const auto options = body.find("stream_options");
  const bool include_usage = options != body.end() && options->is_object() && true_at(*options, "include_usage");
  const std::string chunk_object = chat ? "chat.completion.chunk" : "text_completion";
  auto event = [&](json choices, bool with_usage) {
    json chunk = {{"id", "fake-1"}, {"object", chunk_object}, {"created", 1}, {"model", model}, {"choices", choices}};
    if (with_usage) chunk["usage"] = usage;
    return "data: " + chunk.dump() + "\n\n";
  };
  response_script s;
  s.content_type = "text/event-stream";
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    // The spaces ride on the words so that the deltas concatenate back to the whole answer.
    const std::string text = (i == 0 ? "" : " ") + pieces[i];
    json choice;
    if (chat) {
      json delta = {{"content", text}};
      if (i == 0) delta["role"] = "assistant";
      choice = {{"index", 0}, {"delta", delta}, {"finish_reason", nullptr}};
    } else {
      choice = {{"index", 0}, {"text", text}, {"finish_reason", nullptr}};
    }
    s.chunks.push_back(event(json::array({choice}), false));
  }
  const json last = chat ? json{{"index", 0}, {"delta", json::object()}, {"finish_reason", "stop"}}
                         : json{{"index", 0}, {"text", ""}, {"finish_reason", "stop"}};
  s.chunks.push_back(event(json::array({last}), false));
  if (include_usage) s.chunks.push_back(event(json::array(), true));
  s.chunks.push_back("data: [DONE]\n\n");
  return s;
}

}  // namespace tollgate::test
