// An OpenAI-compatible upstream for tests, demos and benchmarks: a real HTTP/1.1 server on a
// loopback port, scripted per request. Runs on its own threads; every method is thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tollgate::test {

/// What the fake does with one request.
struct response_script {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;  ///< extra response headers
  std::chrono::milliseconds header_delay{0};  ///< wait before sending anything
  bool reset_before_headers = false;          ///< close the connection without answering
  bool hang = false;                          ///< read the request, then never answer
  std::string content_type = "application/json";
  std::string body;                  ///< sent with Content-Length when chunks is empty
  std::vector<std::string> chunks;   ///< when non-empty: chunked transfer, one write per chunk
  std::chrono::milliseconds chunk_delay{0};  ///< before each chunk after the first
  std::optional<std::size_t> reset_after_chunks;  ///< close abruptly after this many chunks
  /// Answer as if keeping the connection alive, then close it at once (a server whose
  /// keep-alive timeout ran out between two requests).
  bool close_after_answer = false;
  /// Called (on the connection's thread) before chunk i is written; tests block here to prove
  /// that the gateway relays earlier chunks before later ones exist.
  std::function<void(std::size_t)> before_chunk;
};

struct recorded_request {
  std::string method;
  std::string target;  ///< path and query, e.g. "/v1/chat/completions"
  std::map<std::string, std::string> headers;  ///< names lower-cased
  std::string body;
};

class fake_upstream {
 public:
  /// Starts listening on host:port (0 picks a free port) before returning.
  explicit fake_upstream(std::string host = "127.0.0.1", std::uint16_t port = 0);
  ~fake_upstream();  ///< stops and joins every thread; open connections are closed
  fake_upstream(const fake_upstream&) = delete;
  fake_upstream& operator=(const fake_upstream&) = delete;

  std::uint16_t port() const;
  std::string base_url() const;  ///< "http://127.0.0.1:PORT/v1"

  /// Queues a script for the next request (FIFO). With none queued, the default handler answers.
  void push(response_script script);
  /// Replaces the default handler.
  void set_default(std::function<response_script(const recorded_request&)> handler);

  std::vector<recorded_request> requests() const;
  std::size_t request_count() const;
  /// Number of connections that were closed by the peer before the response was complete.
  std::size_t client_aborts() const;
  /// Number of connections accepted so far.
  std::size_t connection_count() const;

  /// The built-in OpenAI-like answer: /v1/chat/completions and /v1/completions echo the last
  /// message (streamed as SSE with a final usage chunk when "stream": true, usage included only
  /// when stream_options.include_usage is true), /v1/embeddings returns one small vector per
  /// input (a string, strings, or token ids; as floats or, with encoding_format base64, base64),
  /// /v1/models lists "fake-model", anything else 404 in OpenAI error shape. With tools and a
  /// user turn last, chat answers with a call of the first tool (arguments {"text": prompt}); a
  /// tool turn last is answered "tool said: ..."; a json_schema response_format gets
  /// {"echo": prompt}. POST /v1/messages speaks Anthropic's Messages API the same way (see
  /// anthropic_messages in the source), and POST /v1/responses the Responses API (see
  /// responses_api); on both, the text "!request" is answered with the request body as the
  /// upstream got it. The model "fake-overloaded" is answered 503 overloaded (529 on
  /// /v1/messages).
  static response_script openai_default(const recorded_request& request);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace tollgate::test
