#include "tests/support/fake_upstream.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <mutex>
#include <sstream>
#include <thread>

namespace tollgate::test {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using json = nlohmann::json;

struct fake_upstream::impl {
  net::io_context io;
  tcp::acceptor acceptor{io};
  std::string host;
  std::uint16_t port = 0;
  std::thread accept_thread;

  mutable std::mutex mutex;
  std::condition_variable stopping_cv;
  bool stopping = false;
  std::deque<response_script> scripts;
  std::function<response_script(const recorded_request&)> fallback = &fake_upstream::openai_default;
  std::vector<recorded_request> seen;
  std::size_t aborts = 0;
  std::size_t accepted = 0;

  struct connection {
    std::shared_ptr<tcp::socket> socket;
    std::thread thread;
    bool finished = false;
  };
  std::list<connection> connections;

  /// Sleeps for d unless the fake is stopping; false when stopping.
  bool pause(std::chrono::milliseconds d) {
    std::unique_lock lock(mutex);
    return !stopping_cv.wait_for(lock, d, [this] { return stopping; });
  }

  void accept_loop() {
    for (;;) {
      auto socket = std::make_shared<tcp::socket>(io);
      boost::system::error_code ec;
      acceptor.accept(*socket, ec);
      std::lock_guard lock(mutex);
      if (stopping) return;
      if (ec) continue;
      ++accepted;
      socket->set_option(tcp::no_delay(true), ec);
      // Reap finished connection threads so long load tests do not pile them up.
      for (auto it = connections.begin(); it != connections.end();) {
        if (it->finished) {
          it->thread.join();
          it = connections.erase(it);
        } else {
          ++it;
        }
      }
      connections.push_back(connection{socket, {}, false});
      auto self = std::prev(connections.end());
      self->thread = std::thread([this, socket, self] {
        serve(*socket);
        std::lock_guard done(mutex);
        self->finished = true;
      });
    }
  }

  void serve(tcp::socket& socket) {
    beast::flat_buffer buffer;
    for (;;) {
      // Beast's default body limit for requests is 1 MiB; tests send prompts of many megabytes.
      http::request_parser<http::string_body> parser;
      parser.body_limit(std::uint64_t(1) << 30);
      boost::system::error_code ec;
      http::read(socket, buffer, parser, ec);
      if (ec) return;
      http::request<http::string_body> req = parser.release();
      recorded_request rec;
      rec.method = std::string(req.method_string());
      rec.target = std::string(req.target());
      rec.body = req.body();
      for (const auto& f : req) {
        std::string name(f.name_string());
        std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
        // A field sent twice is recorded as one list, as HTTP reads it: a duplicate shows.
        auto [it, fresh] = rec.headers.emplace(name, std::string(f.value()));
        if (!fresh) it->second.append(", ").append(f.value());
      }
      response_script script;
      {
        std::lock_guard lock(mutex);
        seen.push_back(rec);
        if (!scripts.empty()) {
          script = std::move(scripts.front());
          scripts.pop_front();
        } else {
          script = fallback(rec);
        }
      }
      if (!answer(socket, script, req.keep_alive())) return;
      if (script.close_after_answer) {
        socket.close(ec);
        return;
      }
    }
  }

  static void reset(tcp::socket& socket) {
    boost::system::error_code ec;
    socket.set_option(net::socket_base::linger(true, 0), ec);  // close with RST
    socket.close(ec);
  }

  void count_abort() {
    std::lock_guard lock(mutex);
    ++aborts;
  }

  /// Writes one response. false: the connection is done (closed, reset or failed).
  bool answer(tcp::socket& socket, const response_script& s, bool keep_alive) {
    if (s.header_delay.count() > 0 && !pause(s.header_delay)) return false;
    if (s.reset_before_headers) {
      reset(socket);
      return false;
    }
    if (s.hang) {
      std::unique_lock lock(mutex);
      stopping_cv.wait(lock, [this] { return stopping; });
      return false;
    }
    boost::system::error_code ec;
    if (s.chunks.empty()) {
      http::response<http::string_body> res{static_cast<http::status>(s.status), 11};
      res.set(http::field::content_type, s.content_type);
      for (const auto& [k, v] : s.headers) res.set(k, v);
      res.body() = s.body;
      res.keep_alive(keep_alive);
      res.prepare_payload();
      http::write(socket, res, ec);
      if (ec) {
        count_abort();
        return false;
      }
      return keep_alive;
    }
    http::response<http::empty_body> res{static_cast<http::status>(s.status), 11};
    res.set(http::field::content_type, s.content_type);
    for (const auto& [k, v] : s.headers) res.set(k, v);
    res.chunked(true);
    res.keep_alive(keep_alive);
    http::response_serializer<http::empty_body> sr{res};
    http::write_header(socket, sr, ec);
    if (ec) {
      count_abort();
      return false;
    }
    for (std::size_t i = 0; i < s.chunks.size(); ++i) {
      if (s.reset_after_chunks && i == *s.reset_after_chunks) {
        reset(socket);
        return false;
      }
      if (s.before_chunk) s.before_chunk(i);
      if (i > 0 && s.chunk_delay.count() > 0 && !pause(s.chunk_delay)) return false;
      net::write(socket, http::make_chunk(net::buffer(s.chunks[i])), ec);
      if (ec) {
        count_abort();
        return false;
      }
    }
    net::write(socket, http::make_chunk_last(), ec);
    if (ec) {
      count_abort();
      return false;
    }
    return keep_alive;
  }
};

fake_upstream::fake_upstream(std::string host, std::uint16_t port) : impl_(std::make_unique<impl>()) {
  impl_->host = host;
  tcp::endpoint endpoint(net::ip::make_address(host), port);
  impl_->acceptor.open(endpoint.protocol());
  impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
  impl_->acceptor.bind(endpoint);
  impl_->acceptor.listen(net::socket_base::max_listen_connections);
  impl_->port = impl_->acceptor.local_endpoint().port();
  impl_->accept_thread = std::thread([this] { impl_->accept_loop(); });
}

fake_upstream::~fake_upstream() {
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
    boost::system::error_code ec;
    // shutdown() wakes a thread blocked in accept() or read(); close() alone may not.
    ::shutdown(impl_->acceptor.native_handle(), SHUT_RDWR);
    for (auto& c : impl_->connections) c.socket->shutdown(tcp::socket::shutdown_both, ec);
  }
  impl_->stopping_cv.notify_all();
  impl_->accept_thread.join();
  for (auto& c : impl_->connections) c.thread.join();
  boost::system::error_code ec;
  impl_->acceptor.close(ec);
}

std::uint16_t fake_upstream::port() const { return impl_->port; }

std::string fake_upstream::base_url() const {
  const bool v6 = impl_->host.find(':') != std::string::npos;
  return "http://" + (v6 ? "[" + impl_->host + "]" : impl_->host) + ":" + std::to_string(impl_->port) + "/v1";
}

void fake_upstream::push(response_script script) {
  std::lock_guard lock(impl_->mutex);
  impl_->scripts.push_back(std::move(script));
}

void fake_upstream::set_default(std::function<response_script(const recorded_request&)> handler) {
  std::lock_guard lock(impl_->mutex);
  impl_->fallback = std::move(handler);
}

std::vector<recorded_request> fake_upstream::requests() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->seen;
}

std::size_t fake_upstream::request_count() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->seen.size();
}

std::size_t fake_upstream::connection_count() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->accepted;
}

std::size_t fake_upstream::client_aborts() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->aborts;
}

namespace {

response_script error_script(int status, const std::string& message, const std::string& code) {
  response_script s;
  s.status = status;
  s.body = json{{"error", {{"message", message}, {"type", "invalid_request_error"}, {"param", nullptr}, {"code", code}}}}.dump();
  return s;
}

std::vector<std::string> words(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

/// The text of the last message: a string, or the text parts of a content array.
std::string last_message_text(const json& body) {
  if (body.contains("prompt")) {
    const auto& p = body["prompt"];
    return p.is_string() ? p.get<std::string>() : p.dump();
  }
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) return "";
  const auto& content = body["messages"].back().value("content", json());
  if (content.is_string()) return content.get<std::string>();
  std::string text;
  if (content.is_array()) {
    for (const auto& part : content) {
      if (part.value("type", "") == "text") text += part.value("text", "");
    }
  }
  return text;
}

/// Standard base64 (with padding) of raw bytes.
std::string base64(const unsigned char* data, std::size_t size) {
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((size + 2) / 3 * 4);
  for (std::size_t i = 0; i < size; i += 3) {
    const std::uint32_t n = std::uint32_t(data[i]) << 16 | (i + 1 < size ? std::uint32_t(data[i + 1]) << 8 : 0) |
                            (i + 2 < size ? std::uint32_t(data[i + 2]) : 0);
    out += alphabet[n >> 18 & 63];
    out += alphabet[n >> 12 & 63];
    out += i + 1 < size ? alphabet[n >> 6 & 63] : '=';
    out += i + 2 < size ? alphabet[n & 63] : '=';
  }
  return out;
}

/// /v1/embeddings as OpenAI answers it: `input` is a string, a list of strings, a list of token
/// ids, or a list of such lists, and each gets one vector, in order. The vector depends only on
/// its input (`dimensions` long, default 3). `encoding_format: base64` sends each vector as the
/// base64 of its little-endian float32 values, which the openai SDKs ask for by default.
response_script embeddings_script(const json& body, const std::string& model) {
  const json input = body.contains("input") ? body["input"] : json();
  std::vector<json> items;
  if (input.is_string()) {
    items.push_back(input);
  } else if (input.is_array() && !input.empty() && input[0].is_number_integer()) {
    items.push_back(input);  // one input given as token ids
  } else if (input.is_array()) {
    for (const auto& item : input) items.push_back(item);
  }
  const bool valid = !items.empty() && std::all_of(items.begin(), items.end(), [](const json& item) {
    return item.is_string() || (item.is_array() && !item.empty() &&
                                std::all_of(item.begin(), item.end(), [](const json& t) { return t.is_number_integer(); }));
  });
  if (!valid) {
    return error_script(400, "'input' must be a string, a list of strings, or token ids, and not empty",
                        "invalid_request_error");
  }
  const std::string format = body.value("encoding_format", "float");
  if (format != "float" && format != "base64") {
    return error_script(400, "'encoding_format' must be float or base64", "invalid_request_error");
  }
  const int dimensions = body.contains("dimensions") && body["dimensions"].is_number_integer()
                             ? std::clamp(body["dimensions"].get<int>(), 1, 4096)
                             : 3;
  json data = json::array();
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string text = items[i].is_string() ? items[i].get<std::string>() : items[i].dump();
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the input, then one value per step
    for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
    std::vector<float> v(static_cast<std::size_t>(dimensions));
    for (auto& x : v) {
      h = h * 6364136223846793005ull + 1442695040888963407ull;
      x = static_cast<float>(static_cast<double>(h >> 40) / double(1 << 24) - 0.5);
    }
    json embedding;
    if (format == "base64") {
      std::vector<unsigned char> bytes(v.size() * 4);
      for (std::size_t k = 0; k < v.size(); ++k) {
        std::uint32_t bits = 0;
        std::memcpy(&bits, &v[k], 4);
        for (int b = 0; b < 4; ++b) bytes[k * 4 + b] = static_cast<unsigned char>(bits >> (8 * b));
      }
      embedding = base64(bytes.data(), bytes.size());
    } else {
      embedding = v;
    }
    data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", std::move(embedding)}});
  }
  const int tokens = static_cast<int>(words(input.dump()).size());
  response_script s;
  s.body = json{{"object", "list"},
                {"data", std::move(data)},
                {"model", model},
                {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}}
               .dump();
  return s;
}


response_script anthropic_error(int status, const std::string& type, const std::string& message) {
  response_script s;
  s.status = status;
  s.body = json{{"type", "error"}, {"error", {{"type", type}, {"message", message}}}}.dump();
  return s;
}

std::string anthropic_event(const json& data) {
  return "event: " + data["type"].get<std::string>() + "\ndata: " + data.dump() + "\n\n";
}

/// POST /v1/messages as Anthropic documents it: x-api-key and anthropic-version required,
/// unknown fields and misplaced roles refused, the last user text echoed, a tool_use of the first
/// tool when tools are given (and the last turn holds no tool_result), stop_sequences honoured,
/// usage with cache reads and writes; streams as message_start ... message_stop with a ping.
response_script anthropic_messages(const recorded_request& request) {
  const auto key = request.headers.find("x-api-key");
  if (key == request.headers.end() || key->second.empty()) {
    return anthropic_error(401, "authentication_error", "x-api-key header is required");
  }
  if (request.headers.find("anthropic-version") == request.headers.end()) {
    return anthropic_error(400, "invalid_request_error", "anthropic-version: header is required");
  }
  const json body = json::parse(request.body, nullptr, false);
  if (!body.is_object()) return anthropic_error(400, "invalid_request_error", "invalid JSON body");
  for (auto it = body.begin(); it != body.end(); ++it) {
    static const std::vector<std::string> allowed = {"model", "messages", "max_tokens", "system", "stop_sequences", "stream",
                                                     "temperature", "top_p", "top_k", "metadata", "tools", "tool_choice",
                                                     "thinking", "service_tier"};
    if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end()) {
      return anthropic_error(400, "invalid_request_error", it.key() + ": Extra inputs are not permitted");
    }
  }
  if (!body.contains("max_tokens") || !body["max_tokens"].is_number_integer()) {
    return anthropic_error(400, "invalid_request_error", "max_tokens: Field required");
  }
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) {
    return anthropic_error(400, "invalid_request_error", "messages: Field required");
  }
  for (const auto& m : body["messages"]) {
    const std::string role = m.value("role", "");
    if (role != "user" && role != "assistant") {
      return anthropic_error(400, "invalid_request_error", "messages: Unexpected role \"" + role + "\"");
    }
  }
  const std::string model = body.value("model", "");
  if (model == "fake-overloaded") return anthropic_error(529, "overloaded_error", "Overloaded");
  const json& last = body["messages"].back();
  std::string prompt, tool_result;
  bool has_tool_result = false;
  if (last["content"].is_string()) {
    prompt = last["content"].get<std::string>();
  } else if (last["content"].is_array()) {
    for (const auto& b : last["content"]) {
      if (b.value("type", "") == "text") prompt += b.value("text", "");
      if (b.value("type", "") == "tool_result") {
        has_tool_result = true;
        tool_result += b["content"].is_string() ? b["content"].get<std::string>() : b["content"].dump();
      }
    }
  }
  std::string text = has_tool_result ? "tool said: " + tool_result : "echo: " + prompt;
  if (prompt == "!request") text = request.body;  // what reached the upstream, for relay tests
  if (prompt == "!headers") text = json(request.headers).dump();  // the header fields it came with
  std::string stop_reason = "end_turn";
  json stop_sequence = nullptr;
  if (body.contains("stop_sequences")) {
    for (const auto& seq : body["stop_sequences"]) {
      const auto at = text.find(seq.get<std::string>());
      if (at != std::string::npos) {
        text = text.substr(0, at);
        stop_reason = "stop_sequence";
        stop_sequence = seq;
        break;
      }
    }
  }
  const bool tool = !has_tool_result && body.contains("tools") && body["tools"].is_array() && !body["tools"].empty();
  json input = {{"text", prompt}};
  if (tool) stop_reason = "tool_use";
  const auto pieces = words(text);
  const int output_tokens = static_cast<int>(pieces.size()) + (tool ? 5 : 0);
  const json usage = {{"input_tokens", static_cast<int>(words(prompt).size()) + 1},
                      {"cache_creation_input_tokens", 1},
                      {"cache_read_input_tokens", 2},
                      {"output_tokens", output_tokens}};
  const std::string tool_name = tool ? body["tools"][0].value("name", "") : "";
  if (!body.value("stream", false)) {
    json content = json::array({{{"type", "text"}, {"text", text}}});
    if (tool) content.push_back({{"type", "tool_use"}, {"id", "toolu_fake1"}, {"name", tool_name}, {"input", input}});
    response_script s;
    s.headers.emplace_back("request-id", "req_fake1");
    s.body = json{{"id", "msg_fake1"}, {"type", "message"}, {"role", "assistant"}, {"model", model}, {"content", content},
                  {"stop_reason", stop_reason}, {"stop_sequence", stop_sequence}, {"usage", usage}}
                 .dump();
    return s;
  }
  response_script s;
  s.content_type = "text/event-stream";
  json start_usage = usage;
  start_usage["output_tokens"] = 1;
  s.chunks.push_back(anthropic_event({{"type", "message_start"},
                                      {"message", {{"id", "msg_fake1"}, {"type", "message"}, {"role", "assistant"}, {"model", model},
                                                   {"content", json::array()}, {"stop_reason", nullptr}, {"stop_sequence", nullptr},
                                                   {"usage", start_usage}}}}));
  s.chunks.push_back(anthropic_event({{"type", "content_block_start"}, {"index", 0}, {"content_block", {{"type", "text"}, {"text", ""}}}}));
  s.chunks.push_back("event: ping\ndata: {\"type\": \"ping\"}\n\n");
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    s.chunks.push_back(anthropic_event({{"type", "content_block_delta"}, {"index", 0},
                                        {"delta", {{"type", "text_delta"}, {"text", (i == 0 ? "" : " ") + pieces[i]}}}}));
  }
  s.chunks.push_back(anthropic_event({{"type", "content_block_stop"}, {"index", 0}}));
  if (tool) {
    s.chunks.push_back(anthropic_event({{"type", "content_block_start"}, {"index", 1},
                                        {"content_block", {{"type", "tool_use"}, {"id", "toolu_fake1"}, {"name", tool_name}, {"input", json::object()}}}}));
    const std::string args = input.dump();
    const std::size_t half = args.size() / 2;
    for (const std::string& part : {std::string(), args.substr(0, half), args.substr(half)}) {
      s.chunks.push_back(anthropic_event({{"type", "content_block_delta"}, {"index", 1},
                                          {"delta", {{"type", "input_json_delta"}, {"partial_json", part}}}}));
    }
    s.chunks.push_back(anthropic_event({{"type", "content_block_stop"}, {"index", 1}}));
  }
  s.chunks.push_back(anthropic_event({{"type", "message_delta"},
                                      {"delta", {{"stop_reason", stop_reason}, {"stop_sequence", stop_sequence}}},
                                      {"usage", {{"output_tokens", output_tokens}}}}));
  s.chunks.push_back(anthropic_event({{"type", "message_stop"}}));
  return s;
}

/// Responses the fake stored (POST /v1/responses without "store": false), for GET, DELETE,
/// input_items and cancel. Keyed by the Host the request came to and the id, so that fakes in one
/// process never answer for each other.
struct stored_response {
  json response;
  json input_items;
};
std::mutex stored_mutex;
std::map<std::string, stored_response> stored;
std::atomic<std::uint64_t> next_response{1};

std::string stored_key(const recorded_request& r, const std::string& id) {
  const auto host = r.headers.find("host");
  return (host == r.headers.end() ? std::string() : host->second) + " " + id;
}

/// input as items, each with an id, as GET /v1/responses/{id}/input_items lists them.
json input_items(const json& input) {
  json items = json::array();
  auto text_item = [](const std::string& role, const json& content) {
    json parts = json::array();
    if (content.is_string()) parts.push_back({{"type", "input_text"}, {"text", content}});
    else if (content.is_array()) parts = content;
    return json{{"type", "message"}, {"role", role}, {"content", parts}};
  };
  if (input.is_string()) items.push_back(text_item("user", input));
  if (input.is_array()) {
    for (const json& item : input) {
      items.push_back(item.contains("role") && !item.contains("type") ? text_item(item.value("role", "user"), item["content"]) : item);
    }
  }
  for (std::size_t i = 0; i < items.size(); ++i) items[i]["id"] = "msg_in" + std::to_string(i);
  return items;
}

/// GET/DELETE /v1/responses/{id}, GET .../input_items, POST .../cancel, as OpenAI answers them;
/// nullopt when the path is none of these.
std::optional<response_script> stored_responses(const recorded_request& request, const std::string& path) {
  static const std::string prefix = "/v1/responses/";
  if (!path.starts_with(prefix)) return std::nullopt;
  std::string id = path.substr(prefix.size());
  std::string suffix;
  if (const auto slash = id.find('/'); slash != std::string::npos) {
    suffix = id.substr(slash);
    id.resize(slash);
  }
  const std::string key = stored_key(request, id);
  std::lock_guard lock(stored_mutex);
  const auto it = stored.find(key);
  if (it == stored.end()) {
    response_script s = error_script(404, "Response with id '" + id + "' not found.", "not_found");
    return s;
  }
  response_script s;
  if (request.method == "GET" && suffix.empty()) {
    s.body = it->second.response.dump();
  } else if (request.method == "DELETE" && suffix.empty()) {
    s.body = json{{"id", id}, {"object", "response"}, {"deleted", true}}.dump();
    stored.erase(it);
  } else if (request.method == "GET" && suffix == "/input_items") {
    json data = it->second.input_items;
    if (request.target.find("order=desc") != std::string::npos) std::reverse(data.begin(), data.end());
    if (const auto at = request.target.find("limit="); at != std::string::npos) {
      const std::size_t limit = std::stoul(request.target.substr(at + 6));
      if (data.size() > limit) data.erase(data.begin() + static_cast<std::ptrdiff_t>(limit), data.end());
    }
    const bool more = data.size() < it->second.input_items.size();
    s.body = json{{"object", "list"}, {"data", data}, {"first_id", data.empty() ? json() : data.front()["id"]},
                  {"last_id", data.empty() ? json() : data.back()["id"]}, {"has_more", more}}
                 .dump();
  } else if (request.method == "POST" && suffix == "/cancel") {
    json& response = it->second.response;
    if (response["status"] != "queued" && response["status"] != "in_progress") {
      return error_script(400, "Only responses created with background: true that have not finished can be cancelled.",
                          "invalid_request");
    }
    response["status"] = "cancelled";
    s.body = response.dump();
  } else {
    return error_script(404, "Unknown request URL: " + request.method + " " + path, "not_found");
  }
  return s;
}

/// POST /v1/responses as OpenAI serves it (for backends with `responses: native`): `input` is a
/// string or items; the last user text is echoed ("!request": the request body itself), a call
/// of the first function tool is made when tools are given and the last item is no
/// function_call_output ("tool said: ..." after one); usage with cached tokens; streams as
/// response.created ... response.completed, each event numbered.
response_script responses_api(const recorded_request& request) {
  const json body = json::parse(request.body, nullptr, false);
  if (!body.is_object()) return error_script(400, "invalid JSON body", "invalid_json");
  if (!body.contains("model") || !body["model"].is_string()) return error_script(400, "Missing required parameter: 'model'.", "missing_required_parameter");
  if (!body.contains("input")) return error_script(400, "Missing required parameter: 'input'.", "missing_required_parameter");
  const std::string model = body["model"].get<std::string>();
  if (model == "fake-overloaded") {
    response_script s = error_script(503, "The server is overloaded", "overloaded");
    s.headers.emplace_back("Retry-After", "0");
    return s;
  }
  const json& input = body["input"];
  std::string prompt, tool_output;
  bool after_tool = false;
  if (input.is_string()) {
    prompt = input.get<std::string>();
  } else if (input.is_array() && !input.empty()) {
    const json& last = input.back();
    if (last.value("type", "") == "function_call_output") {
      after_tool = true;
      tool_output = last.value("output", "");
    } else if (last.contains("content") && last["content"].is_string()) {
      prompt = last["content"].get<std::string>();
    } else if (last.contains("content") && last["content"].is_array()) {
      for (const auto& part : last["content"]) prompt += part.value("text", "");
    }
  }
  std::string text = after_tool ? "tool said: " + tool_output : "echo: " + prompt;
  if (prompt == "!request") text = request.body;
  const bool call_tool = !after_tool && body.contains("tools") && body["tools"].is_array() && !body["tools"].empty() &&
                         body["tools"][0].value("type", "") == "function";
  const std::string tool_name = call_tool ? body["tools"][0].value("name", "") : "";
  const std::string tool_args = json{{"text", prompt}}.dump();
  const int input_tokens = static_cast<int>(words(prompt).size()) + 2;
  const int output_tokens = static_cast<int>(words(text).size()) + (call_tool ? 5 : 0);
  const json usage = {{"input_tokens", input_tokens},
                      {"input_tokens_details", {{"cached_tokens", 1}}},
                      {"output_tokens", output_tokens},
                      {"output_tokens_details", {{"reasoning_tokens", 0}}},
                      {"total_tokens", input_tokens + output_tokens}};
  const json message = {{"id", "msg_fake1"}, {"type", "message"}, {"status", "completed"}, {"role", "assistant"},
                        {"content", json::array({{{"type", "output_text"}, {"text", text}, {"annotations", json::array()}}})}};
  const json call = {{"id", "fc_fake1"}, {"type", "function_call"}, {"status", "completed"}, {"call_id", "call_fake1"},
                     {"name", tool_name}, {"arguments", tool_args}};
  // Each response gets an id of its own, and is stored unless "store": false says not to.
  const std::string id = "resp_fake" + std::to_string(next_response++);
  auto response = [&](const std::string& status, json output, json used) {
    return json{{"id", id}, {"object", "response"}, {"created_at", 1}, {"status", status}, {"error", nullptr},
                {"incomplete_details", nullptr}, {"instructions", body.value("instructions", json())}, {"model", model},
                {"output", std::move(output)}, {"parallel_tool_calls", true}, {"tool_choice", "auto"},
                {"tools", body.value("tools", json::array())}, {"store", body.value("store", true)},
                {"previous_response_id", body.value("previous_response_id", json())},
                {"metadata", body.value("metadata", json::object())}, {"usage", std::move(used)}};
  };
  const json output = call_tool ? json::array({call}) : json::array({message});
  const bool keep = body.value("store", true) != false;
  const bool background = body.value("background", false) == true;
  if (keep) {
    std::lock_guard lock(stored_mutex);
    stored[stored_key(request, id)] = {background ? response("queued", json::array(), nullptr) : response("completed", output, usage),
                                       input_items(input)};
  }
  if (background) {  // queued: it stays so until cancelled
    response_script s;
    s.body = response("queued", json::array(), nullptr).dump();
    return s;
  }
  if (!body.value("stream", false)) {
    response_script s;
    s.body = response("completed", output, usage).dump();
    return s;
  }
  response_script s;
  s.content_type = "text/event-stream";
  int sequence = 0;
  auto emit = [&](const std::string& type, json data) {
    data["type"] = type;
    data["sequence_number"] = sequence++;
    s.chunks.push_back("event: " + type + "\ndata: " + data.dump() + "\n\n");
  };
  emit("response.created", {{"response", response("in_progress", json::array(), nullptr)}});
  emit("response.in_progress", {{"response", response("in_progress", json::array(), nullptr)}});
  if (call_tool) {
    json added = call;
    added["status"] = "in_progress";
    added["arguments"] = "";
    emit("response.output_item.added", {{"output_index", 0}, {"item", added}});
    const std::size_t half = tool_args.size() / 2;
    for (const std::string& part : {tool_args.substr(0, half), tool_args.substr(half)}) {
      emit("response.function_call_arguments.delta", {{"item_id", "fc_fake1"}, {"output_index", 0}, {"delta", part}});
    }
    emit("response.function_call_arguments.done", {{"item_id", "fc_fake1"}, {"output_index", 0}, {"arguments", tool_args}});
    emit("response.output_item.done", {{"output_index", 0}, {"item", call}});
  } else {
    json added = message;
    added["status"] = "in_progress";
    added["content"] = json::array();
    emit("response.output_item.added", {{"output_index", 0}, {"item", added}});
    const json empty_part = {{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}};
    emit("response.content_part.added", {{"item_id", "msg_fake1"}, {"output_index", 0}, {"content_index", 0}, {"part", empty_part}});
    const auto pieces = words(text);
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      emit("response.output_text.delta", {{"item_id", "msg_fake1"}, {"output_index", 0}, {"content_index", 0},
                                           {"delta", (i == 0 ? "" : " ") + pieces[i]}, {"logprobs", json::array()}});
    }
    emit("response.output_text.done", {{"item_id", "msg_fake1"}, {"output_index", 0}, {"content_index", 0}, {"text", text},
                                        {"logprobs", json::array()}});
    emit("response.content_part.done", {{"item_id", "msg_fake1"}, {"output_index", 0}, {"content_index", 0},
                                         {"part", message["content"][0]}});
    emit("response.output_item.done", {{"output_index", 0}, {"item", message}});
  }
  emit("response.completed", {{"response", response("completed", output, usage)}});
  return s;
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
  if (request.method == "POST" && path == "/v1/messages") return anthropic_messages(request);
  if (request.method == "POST" && path == "/v1/responses") return responses_api(request);
  if (auto s = stored_responses(request, path)) return *s;
  const bool chat = path == "/v1/chat/completions";
  const bool completion = path == "/v1/completions";
  const bool embeddings = path == "/v1/embeddings";
  if (request.method != "POST" || !(chat || completion || embeddings)) {
    return error_script(404, "Unknown request URL: " + request.method + " " + path, "not_found");
  }
  json body = json::parse(request.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) return error_script(400, "invalid JSON body", "invalid_json");
  const std::string model = body.value("model", "");
  if (model == "fake-overloaded") {  // a provider out of capacity
    response_script s = error_script(503, "The server is overloaded", "overloaded");
    s.headers.emplace_back("Retry-After", "0");
    return s;
  }

  if (embeddings) return embeddings_script(body, model);

  const std::string prompt = last_message_text(body);
  std::string content = "echo: " + prompt;
  // Tools and structured output, for clients that use them: a call of the first tool when the
  // last turn is the user's, the tool's answer echoed after it, {"echo": ...} for a json_schema.
  const std::string last_role = chat && body.contains("messages") && body["messages"].is_array() && !body["messages"].empty()
                                    ? body["messages"].back().value("role", "")
                                    : "";
  const bool call_tool = last_role == "user" && body.contains("tools") && body["tools"].is_array() && !body["tools"].empty() &&
                         body["tools"][0].is_object() && body["tools"][0].contains("function");
  const std::string tool_name = call_tool ? body["tools"][0]["function"].value("name", "") : "";
  const std::string tool_args = json{{"text", prompt}}.dump();
  if (last_role == "tool") content = "tool said: " + prompt;
  if (chat && body.contains("response_format") && body["response_format"].is_object() &&
      body["response_format"].value("type", "") == "json_schema") {
    content = json{{"echo", prompt}}.dump();
  }
  const int prompt_tokens = static_cast<int>(words(prompt).size()) + 1;
  const auto pieces = words(content);
  const int completion_tokens = static_cast<int>(pieces.size());
  const json usage = {{"prompt_tokens", prompt_tokens},
                      {"completion_tokens", completion_tokens},
                      {"total_tokens", prompt_tokens + completion_tokens}};
  const std::string object = chat ? "chat.completion" : "text_completion";

  if (!body.value("stream", false)) {
    json choice = chat ? json{{"index", 0},
                              {"message", {{"role", "assistant"}, {"content", content}}},
                              {"finish_reason", "stop"}}
                       : json{{"index", 0}, {"text", content}, {"finish_reason", "stop"}};
    if (call_tool) {
      choice["message"]["content"] = nullptr;
      choice["message"]["tool_calls"] = json::array(
          {{{"id", "call_fake1"}, {"type", "function"}, {"function", {{"name", tool_name}, {"arguments", tool_args}}}}});
      choice["finish_reason"] = "tool_calls";
    }
    response_script s;
    s.body = json{{"id", "fake-1"}, {"object", object}, {"created", 1}, {"model", model},
                  {"choices", json::array({choice})}, {"usage", usage}}
                 .dump();
    return s;
  }

  const bool include_usage = body.contains("stream_options") && body["stream_options"].is_object() &&
                             body["stream_options"].value("include_usage", false);
  const std::string chunk_object = chat ? "chat.completion.chunk" : "text_completion";
  auto event = [&](json choices, bool with_usage) {
    json chunk = {{"id", "fake-1"}, {"object", chunk_object}, {"created", 1}, {"model", model}, {"choices", choices}};
    // As OpenAI streams when usage is asked for: a usage member in every chunk, null but in the last.
    if (include_usage) chunk["usage"] = with_usage ? usage : json(nullptr);
    return "data: " + chunk.dump() + "\n\n";
  };
  response_script s;
  s.content_type = "text/event-stream";
  if (call_tool) {
    const std::size_t half = tool_args.size() / 2;
    s.chunks.push_back(event(json::array({{{"index", 0},
                                           {"delta", {{"role", "assistant"},
                                                      {"tool_calls", json::array({{{"index", 0}, {"id", "call_fake1"}, {"type", "function"},
                                                                                   {"function", {{"name", tool_name}, {"arguments", ""}}}}})}}},
                                           {"finish_reason", nullptr}}}),
                             false));
    for (const std::string& part : {tool_args.substr(0, half), tool_args.substr(half)}) {
      s.chunks.push_back(event(json::array({{{"index", 0},
                                             {"delta", {{"tool_calls", json::array({{{"index", 0}, {"function", {{"arguments", part}}}}})}}},
                                             {"finish_reason", nullptr}}}),
                               false));
    }
    s.chunks.push_back(event(json::array({{{"index", 0}, {"delta", json::object()}, {"finish_reason", "tool_calls"}}}), false));
    if (include_usage) s.chunks.push_back(event(json::array(), true));
    s.chunks.push_back("data: [DONE]\n\n");
    return s;
  }
  for (std::size_t i = 0; i < pieces.size(); ++i) {
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
  json last = chat ? json{{"index", 0}, {"delta", json::object()}, {"finish_reason", "stop"}}
                   : json{{"index", 0}, {"text", ""}, {"finish_reason", "stop"}};
  s.chunks.push_back(event(json::array({last}), false));
  if (include_usage) s.chunks.push_back(event(json::array(), true));
  s.chunks.push_back("data: [DONE]\n\n");
  return s;
}

}  // namespace tollgate::test
