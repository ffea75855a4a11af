#include "adapters/openai_backend.hpp"

#include "adapters/curl_multi.hpp"
#include "adapters/event_mailbox.hpp"


#include <algorithm>
#include <cctype>
#include <string>
#include <vector>

namespace tollgate::adapters {

namespace net = boost::asio;

namespace {

constexpr std::size_t pause_above_bytes = 1 << 20;  // stop reading the upstream past this

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

failure classify(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
      return failure::connect;
    case CURLE_OPERATION_TIMEDOUT:
      return failure::timeout;
    default:
      return failure::broken;
  }
}

/// One transfer. curl's callbacks only append to the queue and wake the reader; the reader (a
/// coroutine on the same thread) turns the queue into events.
class openai_call final : public call, mailbox_producer {
 public:
  openai_call(io_refs refs, const config::timeouts_config& timeouts)
      : refs_(refs), mailbox_(refs.io, timeouts, refs.mailboxes) {}

  ~openai_call() override {
    if (easy_ == nullptr) return;
    if (running_) refs_.curl.remove(easy_);
    refs_.curl.release(easy_);
  }

  /// shared_headers outlives the call (it belongs to the backend, which the request's runtime
  /// snapshot keeps alive). The request's own header fields and its id are linked in front of
  /// it in nodes the call owns.
  void begin(CURL* easy, curl_slist* shared_headers, upstream_request& request) {
    easy_ = easy;
    body_ = std::move(request.body);
    lines_.reserve(request.headers.size() + 1);
    for (const auto& [name, value] : request.headers) lines_.push_back(name + ": " + value);
    if (!request.request_id.empty()) lines_.push_back("X-Request-Id: " + std::string(request.request_id));
    nodes_.resize(lines_.size());
    curl_slist* headers = shared_headers;
    for (std::size_t i = lines_.size(); i-- > 0;) {
      nodes_[i].data = lines_[i].data();
      nodes_[i].next = headers;
      headers = &nodes_[i];
    }
    // Handles are reused: each call sets its method whole.
    if (request.method == upstream_request::verb::post) {
      curl_easy_setopt(easy_, CURLOPT_CUSTOMREQUEST, nullptr);
      curl_easy_setopt(easy_, CURLOPT_POSTFIELDS, body_.data());
      curl_easy_setopt(easy_, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body_.size()));
    } else {
      curl_easy_setopt(easy_, CURLOPT_HTTPGET, 1L);
      curl_easy_setopt(easy_, CURLOPT_CUSTOMREQUEST,
                       request.method == upstream_request::verb::del ? "DELETE" : nullptr);
    }
    curl_easy_setopt(easy_, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(easy_, CURLOPT_HEADERFUNCTION, &openai_call::on_header);
    curl_easy_setopt(easy_, CURLOPT_HEADERDATA, this);
    curl_easy_setopt(easy_, CURLOPT_WRITEFUNCTION, &openai_call::on_write);
    curl_easy_setopt(easy_, CURLOPT_WRITEDATA, this);
    running_ = true;
    refs_.curl.add(easy_, [this](CURLcode code) { on_done(code); });
  }

  bool ready() const override { return mailbox_.ready(); }
  void on_ready(std::function<void()> hook) override { mailbox_.on_ready(std::move(hook)); }
  void recycle(std::string&& s) override { mailbox_.recycle(std::move(s)); }

  void cancel() override {
    if (mailbox_.ended()) return;
    stop(failure::cancelled, "the client went away");
    mailbox_.wake();
  }

  net::awaitable<call_event> next() override { return mailbox_.next(*this); }
  bool try_next(call_event& ev) override { return mailbox_.try_next(*this, ev); }

 private:
  // Waited for curl to produce something past the first-token or idle deadline.
  void on_silence(bool seen_head) override {
    stop(failure::timeout, seen_head ? "upstream sent nothing within the idle timeout"
                                     : "upstream did not answer within the first-token timeout");
  }
  void on_taken() override { resume_if_drained(); }

  static std::size_t on_header(char* data, std::size_t size, std::size_t count, void* self_ptr) {
    auto* self = static_cast<openai_call*>(self_ptr);
    const std::size_t n = size * count;
    std::string_view line(data, n);
    if (line.starts_with("HTTP/")) {
      self->head_ = response_head{};
      const auto space = line.find(' ');
      if (space != std::string_view::npos) self->head_.status = std::atoi(std::string(line.substr(space + 1, 3)).c_str());
      return n;
    }
    if (trim(line).empty()) {
      // End of one header block; 1xx blocks are followed by the real one.
      if (self->head_.status >= 200 && !self->mailbox_.seen_head()) {
        call_event ev;
        ev.type = call_event::kind::head;
        ev.head = std::move(self->head_);
        self->mailbox_.push(std::move(ev));
      }
      return n;
    }
    // curl splits header lines at LF only: a bare CR, a NUL or a folded line reaches us inside
    // one. Such a head is refused whole (502, as the built-in client does), never relayed.
    if (line.ends_with('\n')) line.remove_suffix(1);
    if (line.ends_with('\r')) line.remove_suffix(1);
    const auto colon = line.find(':');
    const std::string_view name = colon == std::string_view::npos ? std::string_view() : line.substr(0, colon);
    const std::string_view value = colon == std::string_view::npos ? std::string_view() : trim(line.substr(colon + 1));
    if (!valid_field_name(name) || !valid_field_value(value)) {
      self->bad_head_ = true;
      return 0;  // curl ends the transfer with CURLE_WRITE_ERROR
    }
    self->head_.headers.emplace_back_lower(name, value);
    return n;
  }

  static std::size_t on_write(char* data, std::size_t size, std::size_t count, void* self_ptr) {
    auto* self = static_cast<openai_call*>(self_ptr);
    const std::size_t n = size * count;
    if (self->mailbox_.queued_bytes() >= pause_above_bytes) {
      self->paused_ = true;
      return CURL_WRITEFUNC_PAUSE;  // curl keeps the bytes and offers them again on resume
    }
    self->mailbox_.add_data(std::string_view(data, n));
    return n;
  }

  void on_done(CURLcode code) {
    running_ = false;
    if (code == CURLE_OK) {
      call_event ev;
      ev.type = call_event::kind::end;
      mailbox_.end(std::move(ev));
    } else {
      call_event ev;
      ev.type = call_event::kind::failed;
      ev.error = bad_head_ ? failure::broken : classify(code);
      ev.message = bad_head_ ? "malformed response: an invalid header field" : curl_easy_strerror(code);
      mailbox_.end(std::move(ev));
    }
  }

  void stop(failure why, std::string message) {
    if (running_) {
      refs_.curl.remove(easy_);
      running_ = false;
    }
    call_event ev;
    ev.type = call_event::kind::failed;
    ev.error = why;
    ev.message = std::move(message);
    mailbox_.stop(std::move(ev));
  }

  void resume_if_drained() {
    if (paused_ && running_ && mailbox_.queued_bytes() < pause_above_bytes / 2) {
      paused_ = false;
      curl_easy_pause(easy_, CURLPAUSE_CONT);
    }
  }

  io_refs refs_;
  event_mailbox mailbox_;
  CURL* easy_ = nullptr;
  std::vector<std::string> lines_;  // the request's own header lines, its id last
  std::vector<curl_slist> nodes_;   // one per line, linked in front of the backend's list
  std::string body_;
  bool running_ = false;
  bool paused_ = false;
  bool bad_head_ = false;  // a header line failed validation
  response_head head_;
};

}  // namespace

openai_backend::openai_backend(config::backend_config cfg) : cfg_(std::move(cfg)) {
  if (cfg_.remote()->transport == "native") {
    native_ = http1_origin::from(cfg_);
    return;
  }
  for (bool stream : {true, false}) {
    curl_slist* list = curl_slist_append(nullptr, "Expect:");  // no 100-continue round trip for large bodies
    for (const auto& [name, value] : upstream_headers(cfg_, stream)) {
      list = curl_slist_append(list, (name + ": " + value).c_str());
    }
    (stream ? stream_headers_ : plain_headers_) = list;
  }
}

openai_backend::~openai_backend() {
  curl_slist_free_all(stream_headers_);
  curl_slist_free_all(plain_headers_);
}

std::unique_ptr<call> openai_backend::start(upstream_request request, io_refs refs) const {
  if (native_) return start_http1_call(*native_, std::move(request), refs);
  auto result = std::make_unique<openai_call>(refs, cfg_.timeouts);
  CURL* easy = refs.curl.acquire();
  std::string url = cfg_.remote()->base_url + std::string(request.path);
  if (!request.query.empty()) url.append("?").append(request.query);
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2TLS);
  curl_easy_setopt(easy, CURLOPT_PIPEWAIT, 1L);  // prefer multiplexing on an h2 connection
  curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(cfg_.timeouts.connect.count()));
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, static_cast<long>(cfg_.timeouts.total.count()));
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(easy, CURLOPT_PRIVATE, result.get());
  request.join_body();  // libcurl is given the body as one buffer
  result->begin(easy, request.stream ? stream_headers_ : plain_headers_, request);
  return result;
}

}  // namespace tollgate::adapters
