// One proxied request: parse the body, check the key's model permission, resolve the route, pass
// the limiter, then run the attempts (attempt_runner) and relay the answer that wins. The
// exchange is the runner's world (timers on the worker's loop, the backends, the client watch)
// and its sink (the client). It lives for one request and owns that request's proxy state.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <memory>
#include <string>

#include "adapters/loop_clock.hpp"
#include "protocol/json_body.hpp"
#include "gateway/proxy/attempt_runner.hpp"
#include "gateway/server/request.hpp"

namespace tollgate::gateway {

class exchange final : public attempt_env, public attempt_sink {
 public:
  /// fields: the parsed body of ctx.req; stream_options: what every attempt sends instead of the
  /// client's (empty: as sent); strip_usage: drop the usage-only chunk asked for on the client's
  /// behalf.
  exchange(request_context& ctx, proxy_result& result, const protocol::request_fields& fields, std::string&& stream_options,
           bool strip_usage)
      : ctx_(ctx), res_(result), fields_(fields), stream_options_(std::move(stream_options)), strip_usage_(strip_usage) {}

  // attempt_env
  steady_clock::time_point now() override { return adapters::loop_clock::now(); }
  std::uint64_t random() override;
  void plan(const routing::route& r, steady_clock::time_point now, std::vector<std::size_t>& out) override;
  std::unique_ptr<adapters::call> start(const routing::target& t) override;
  boost::asio::awaitable<void> sleep(steady_clock::duration d) override;
  boost::asio::awaitable<bool> wait_ready(adapters::call& a, adapters::call* b, steady_clock::duration timeout) override;
  boost::asio::awaitable<bool> wait_for_slot(const routing::target& t) override;
  std::shared_ptr<client_watch> watch(adapters::call& call, bool stream) override;
  void unwatch(const std::shared_ptr<client_watch>& w) override;

  // attempt_sink
  void on_attempt(const routing::target& t) override;
  boost::asio::awaitable<delivery> deliver_stream(adapters::call& call, const adapters::response_head& head) override;
  bool deliver_whole(buffered_response& res, bool& keep) override;
  boost::asio::awaitable<bool> deliver_whole_rest() override;
  void on_attempt_end(const routing::target& t, const char* outcome, double first_byte_seconds) override;

 private:
  class stream_writer;  // a stream's events and write (exchange.cpp)

  /// counted reached the client: the first token's time, and the bytes kept for counting (its
  /// storage taken where it is large: a stream's write of many events). counted is left empty.
  void note_delivered(std::string&& counted);
  /// Notes the usage an SSE event carries (the last one seen wins: usage is cumulative). true
  /// when the event is the usage-only chunk we asked for on the client's behalf: it is dropped.
  bool take_usage(std::string_view event);
  /// Whether answers are renamed to the model the client asked for; prepares the literals.
  bool renames_model();
  /// Points the literals below at that upstream name and the client's, quoted (the connection keeps them).
  void quote_names(const std::string& upstream_model);

  request_context& ctx_;
  proxy_result& res_;
  const protocol::request_fields& fields_;
  std::string stream_options_;
  bool strip_usage_ = false;
  // The upstream name and the client's as JSON literals (the connection's, set by quote_names).
  std::string_view rename_from_, rename_to_;
  std::string anthropic_beta_;  // the client's anthropic-beta fields as one list, when it sent several
};

}  // namespace tollgate::gateway
