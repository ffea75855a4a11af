// The one interface every backend kind implements: one internal call type in, one event stream
// out. The HTTP layer never sees libcurl or an engine; it sees these events.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/container/small_vector.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tollgate::adapters {

class curl_multi;
class upstream_pool;
class mailbox_waiters;

/// Per-thread machinery a call runs on. Calls never cross threads.
struct io_refs {
  boost::asio::io_context& io;
  curl_multi& curl;
  upstream_pool& pool;  ///< idle connections of the built-in HTTP/1.1 client
  /// io's list of mailboxes (mailbox_list(io)), kept by its owner so that a call's mailbox is
  /// made without looking it up among io's services; null: looked up.
  mailbox_waiters* mailboxes = nullptr;
};

/// A piece of a request body: bytes that outlive the call (borrowed: the client's request, which
/// the gateway keeps until its answer is written), or bytes of its own (text: an edited value).
struct body_part {
  std::string_view borrowed;
  std::string text;
  std::string_view bytes() const { return text.empty() ? borrowed : std::string_view(text); }
};

/// A body's parts: the usual request (the client's bytes around an edited model name: three)
/// holds them without an allocation.
using body_parts = boost::container::small_vector<body_part, 4>;

/// One request for a backend. path, request_id, query and the client's header values are read
/// only during backend::start(); a call keeps what it needs of them.
struct upstream_request {
  std::string_view path;  ///< relative to the backend's base URL, e.g. "/chat/completions"
  std::string body;       ///< JSON, with the model already rewritten; empty when parts is not
  bool stream = false;
  std::string_view request_id;
  /// The body as parts to send one after another, when not empty (body is then empty): the
  /// client's bytes are not copied for a transport that sends parts as they are (the built-in
  /// HTTP/1.1 client writes them in one gathered write). Others call join_body() first.
  body_parts parts;

  /// Makes body the whole body: parts joined (and cleared), when there are any.
  void join_body() {
    if (parts.empty()) return;
    std::size_t size = 0;
    for (const body_part& p : parts) size += p.bytes().size();
    body.clear();
    body.reserve(size);
    for (const body_part& p : parts) body.append(p.bytes());
    parts.clear();
  }
  /// The request's priority (0 low .. 9; 1 normal): the local engine's queue and preemption
  /// follow it; remote upstreams never see it.
  int priority = 1;
  /// POST with a JSON body, the usual; GET and DELETE (no body) for the calls that read or
  /// remove what an upstream keeps (a stored response of the Responses API).
  enum class verb { post, get, del };
  verb method = verb::post;
  std::string_view query;  ///< sent after path with a '?' when not empty (percent-encoded as given)
  /// Header fields sent with this request only, after the backend's own (which must not name
  /// them: the backend decides which wins). Names and values satisfy valid_field_name() and
  /// valid_field_value().
  std::vector<std::pair<std::string, std::string>> headers;
  /// The client's anthropic-version and anthropic-beta values (empty: not sent). Only kind
  /// anthropic backends use them (see anthropic_backend.hpp); other kinds never send them.
  std::string_view anthropic_version;
  std::string_view anthropic_beta;
};

/// "POST", "GET" or "DELETE".
inline const char* verb_name(upstream_request::verb v) {
  return v == upstream_request::verb::get ? "GET" : v == upstream_request::verb::del ? "DELETE" : "POST";
}

/// A header field name is an RFC 9110 token: visible ASCII save the delimiters.
inline bool valid_field_name(std::string_view name) {
  if (name.empty()) return false;
  for (unsigned char c : name) {
    const bool token = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       (c > 32 && c < 127 && std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) !=
                                                 std::string_view::npos);
    if (!token) return false;
  }
  return true;
}

/// A header field value holds no control character but HTAB (a CR, LF or NUL in one would let an
/// upstream write headers of its own into the client's answer). Bytes past 127 pass (obs-text).
inline bool valid_field_value(std::string_view value) {
  for (unsigned char c : value) {
    if ((c < 0x20 && c != '\t') || c == 0x7F) return false;
  }
  return true;
}

/// A head's fields, in order, in one string: each field its two lengths, then its name and its
/// value. A head of a few fields costs one allocation, not one for the list and one for each
/// value past 15 bytes (a date, a content type); moving it moves one string.
class header_fields {
 public:
  using field = std::pair<std::string_view, std::string_view>;  ///< name and value

  class iterator {
   public:
    using value_type = field;
    using difference_type = std::ptrdiff_t;
    using reference = field;
    using iterator_category = std::forward_iterator_tag;
    iterator() = default;
    explicit iterator(const char* at) : at_(at) {}
    field operator*() const {
      const auto [name, value] = lengths();
      return {std::string_view(at_ + prefix, name), std::string_view(at_ + prefix + name, value)};
    }
    iterator& operator++() {
      const auto [name, value] = lengths();
      at_ += prefix + name + value;
      return *this;
    }
    iterator operator++(int) {
      iterator was = *this;
      ++*this;
      return was;
    }
    bool operator==(const iterator&) const = default;

   private:
    std::pair<std::uint32_t, std::uint32_t> lengths() const {
      std::uint32_t n[2];
      std::memcpy(n, at_, sizeof n);
      return {n[0], n[1]};
    }
    const char* at_ = nullptr;
  };

  header_fields() = default;
  header_fields(const header_fields&) = default;
  header_fields& operator=(const header_fields&) = default;
  // An empty head (a data event's) moves nothing: a string's move copies its inline buffer.
  header_fields(header_fields&& other) noexcept : count_(std::exchange(other.count_, 0)) {
    if (!other.text_.empty()) text_ = std::move(other.text_);
    other.text_.clear();
  }
  header_fields& operator=(header_fields&& other) noexcept {
    if (this == &other) return *this;
    count_ = std::exchange(other.count_, 0);
    if (other.text_.empty()) {
      text_.clear();
    } else {
      text_ = std::move(other.text_);
    }
    other.text_.clear();
    return *this;
  }
  /// From name and value pairs, in order (names as given).
  header_fields(const std::vector<std::pair<std::string, std::string>>& fields) {  // NOLINT: implicit, as the list was
    for (const auto& [name, value] : fields) emplace_back(name, value);
  }

  iterator begin() const { return iterator(text_.data()); }
  iterator end() const { return iterator(text_.data() + text_.size()); }
  bool empty() const { return text_.empty(); }
  std::size_t size() const { return count_; }
  /// Room for fields whose names and values take about `bytes` in all.
  void reserve(std::size_t bytes) { text_.reserve(bytes); }
  void clear() {
    text_.clear();
    count_ = 0;
  }

  /// Appends a field (the name as given).
  void emplace_back(std::string_view name, std::string_view value) {
    std::memcpy(append(name.size(), value), name.data(), name.size());
  }
  /// Appends a field with its name in ASCII lower case (a field name is a token: ASCII only).
  void emplace_back_lower(std::string_view name, std::string_view value) {
    char* const to = append(name.size(), value);
    const char* const from = name.data();
    const std::size_t n = name.size();
    // Eight bytes at a time (four for a short name), the last step ending at the name's end:
    // it may lower bytes the one before it lowered already, to the same bytes.
    const auto lower = [&]<class word>(std::size_t at, word) {
      word w;
      std::memcpy(&w, from + at, sizeof w);
      w |= static_cast<word>(upper_case_bits(w));
      std::memcpy(to + at, &w, sizeof w);
    };
    if (n >= 8) {
      for (std::size_t at = 0; at + 8 < n; at += 8) lower(at, std::uint64_t{});
      lower(n - 8, std::uint64_t{});
    } else if (n >= 4) {
      lower(0, std::uint32_t{});
      lower(n - 4, std::uint32_t{});
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        to[i] = (from[i] >= 'A' && from[i] <= 'Z') ? static_cast<char>(from[i] + ('a' - 'A')) : from[i];
      }
    }
  }

  /// The value of the first field of that name (compared as it is), if any; valid until the
  /// fields change.
  std::optional<std::string_view> find(std::string_view name) const {
    for (const auto& [k, v] : *this)
      if (k == name) return v;
    return std::nullopt;
  }

  /// The value of the first field of that name, or an empty string; the value takes the fields'
  /// storage (no allocation), and the fields are left empty.
  std::string release_value(std::string_view name) {
    std::string out;
    if (const auto v = find(name)) {
      const std::size_t at = static_cast<std::size_t>(v->data() - text_.data());
      const std::size_t size = v->size();
      out = std::move(text_);
      out.erase(0, at);
      out.resize(size);
    }
    clear();
    return out;
  }

  /// The same fields in the same order.
  friend bool operator==(const header_fields& a, const header_fields& b) { return a.text_ == b.text_; }
  friend bool operator==(const header_fields& a, const std::vector<std::pair<std::string, std::string>>& b) {
    std::size_t i = 0;
    for (const auto& [name, value] : a) {
      if (i == b.size() || name != b[i].first || value != b[i].second) return false;
      ++i;
    }
    return i == b.size();
  }

 private:
  static constexpr std::size_t prefix = 2 * sizeof(std::uint32_t);

  /// 0x20 in each byte of w from 'A' to 'Z', 0 in every other: the case bit those bytes lack.
  static std::uint64_t upper_case_bits(std::uint64_t w) {
    constexpr std::uint64_t ones = 0x0101010101010101ull;
    // No sum below carries into the next byte: a byte's low seven bits plus 0x3f or 0x25 stay
    // under 0x100. Bit 7 of each sum tells whether those bits reach 'A', or pass 'Z'.
    const std::uint64_t low7 = w & (0x7f * ones);
    const std::uint64_t from_a = low7 + (0x80 - 'A') * ones;
    const std::uint64_t past_z = low7 + (0x7f - 'Z') * ones;
    return (from_a & ~past_z & ~w & (0x80 * ones)) >> 2;  // ~w: bytes past 127 are no letters
  }

  /// Appends a field's lengths and value, with room for its name before the value; returns where
  /// the name goes.
  char* append(std::size_t name_size, std::string_view value) {
    const std::uint32_t n[2] = {static_cast<std::uint32_t>(name_size), static_cast<std::uint32_t>(value.size())};
    const std::size_t at = text_.size();
    text_.resize(at + prefix + name_size + value.size());
    char* p = text_.data() + at;
    std::memcpy(p, n, prefix);
    std::memcpy(p + prefix + name_size, value.data(), value.size());
    ++count_;
    return p + prefix;
  }

  std::string text_;
  std::size_t count_ = 0;
};

struct response_head {
  int status = 0;
  header_fields headers;  ///< names lower-cased
  std::optional<std::string_view> find(std::string_view name) const { return headers.find(name); }
};

enum class failure {
  none,
  connect,    ///< no connection could be made (refused, DNS, TLS handshake)
  timeout,    ///< a deadline passed (connect, first token, idle, total)
  broken,     ///< the connection broke or the response was malformed
  cancelled,  ///< the call was cancelled
};

struct call_event {
  enum class kind { head, data, end, failed };
  kind type = kind::end;
  response_head head;   ///< with kind::head
  std::string data;     ///< with kind::data: the bytes that arrived since the last event
  failure error = failure::none;  ///< with kind::failed
  std::string message;  ///< with kind::failed
};

/// A reader of a call's data events that takes them where they come, inside the producer's
/// handler, instead of being resumed for them while it waits in next(): a stream's relay, whose
/// usual event is split, renamed and written at once. Used on the call's thread.
class data_sink {
 public:
  /// Bytes of the answer as the producer's handler gets them, while the reader waits with nothing
  /// queued: a view of the producer's buffer, valid during the call only, handled now (no event is
  /// made for them, no byte copied). coming: at most how many more the same handler may add.
  virtual void add(std::string_view bytes, std::size_t coming) = 0;
  /// The handler that added bytes is done: false when the reader must run (to finish a write, or
  /// to end the stream); its waiting next() then returns a data event with no bytes. Not called
  /// when something else came after the bytes (an event, the end): the reader, resumed with a
  /// data event with no bytes first, finishes what the sink holds.
  virtual bool flush() = 0;

 protected:
  ~data_sink() = default;
};

/// One request in flight to a backend. Destroying it cancels the request at once.
/// Not thread-safe: used only on the thread that started it.
class call {
 public:
  virtual ~call() = default;
  /// Events in order: head, zero or more data, then end or failed (failed may also come first).
  /// After end or failed, further calls return the same terminal event.
  virtual boost::asio::awaitable<call_event> next() = 0;
  /// Takes into ev the event next() would return at once, without a coroutine (a reader's fast
  /// path when events are queued). false: next() would wait, or the call has no such path.
  virtual bool try_next(call_event& /*ev*/) { return false; }
  /// Stops the request now (the client went away); a waiting next() returns failed/cancelled.
  virtual void cancel() = 0;
  /// Whether next() would return at once.
  virtual bool ready() const = 0;
  /// Bytes of data events that next() would return at once (0 where the call does not say): room
  /// for them is made once, not grown as they come.
  virtual std::size_t queued_bytes() const { return 0; }
  /// Called (on this thread) whenever an event becomes available, so one waiter can watch
  /// several calls at once (hedging). Replaces any earlier hook; empty to remove.
  virtual void on_ready(std::function<void()> hook) = 0;
  /// Storage the reader is done with (a data event's string, emptied), for the call to fill with
  /// the next data event's bytes instead of allocating; a call may drop it.
  virtual void recycle(std::string&&) {}
  /// Data events that come while the reader waits in next() go to sink, when the call can hand
  /// them over inline (others leave them to next()); null stops it. sink outlives its use here.
  virtual void set_sink(data_sink* /*sink*/) {}
};

/// What a backend that runs a model itself (kind local_engine) reports to /metrics.
struct engine_stats {
  std::uint64_t running = 0;           ///< sequences admitted to the batch (holding KV blocks)
  std::uint64_t queued = 0;            ///< requests waiting for a place in the batch
  std::uint64_t batch_sequences = 0;   ///< sequences in the engine's last forward
  std::uint64_t batch_tokens = 0;      ///< tokens in the engine's last forward
  double tokens_per_s = 0;             ///< tokens forwarded per second lately (prefill and decode)
  std::uint64_t kv_blocks_used = 0;
  std::uint64_t kv_blocks_free = 0;    ///< free, or cached and held by no sequence (reclaimable)
  std::uint64_t kv_blocks_cached = 0;  ///< of the free ones, those holding a cached prompt prefix
  std::uint64_t prefix_cache_lookup_tokens = 0;  ///< prompt tokens looked up in the prefix cache
  std::uint64_t prefix_cache_hit_tokens = 0;     ///< of them, tokens found cached (not computed again)
  std::uint64_t preemptions = 0;       ///< sequences the engine sent back to its queue to free KV blocks
  std::uint64_t steps = 0;             ///< forwards the engine has run
  std::uint64_t prompt_tokens = 0;     ///< tokens prefilled, since this backend was configured
  std::uint64_t generated_tokens = 0;  ///< tokens sampled (end-of-sentence included)
  std::uint64_t finished = 0;          ///< sequences that reached a stop or max_tokens
  std::uint64_t cancelled = 0;         ///< sequences dropped because their client left
  std::uint64_t failed = 0;            ///< sequences the engine could not finish
  /// Requests refused with 503 overloaded: the queue was full (at once, or displaced later by a
  /// request of higher priority), or they waited past queue_timeout.
  std::uint64_t overloaded = 0;
  /// By priority (0 to 9): requests waiting now, and requests refused overloaded by why: [0] at
  /// once (the queue full), [1] displaced by a higher priority, [2] past queue_timeout.
  std::array<std::uint64_t, 10> queued_by_priority{};
  std::array<std::array<std::uint64_t, 3>, 10> shed_by_priority{};
};

/// A configured backend. Immutable and shared between threads; start() is thread-safe.
class backend {
 public:
  virtual ~backend() = default;
  virtual const std::string& name() const = 0;
  virtual std::unique_ptr<call> start(upstream_request request, io_refs refs) const = 0;
  /// False when the backend cannot answer at all (a local model that failed to load); /readyz
  /// reports it down. Health checks cover remote backends.
  virtual bool serving() const { return true; }
  /// Counters of a backend that runs a model in this process; nullopt for remote ones.
  virtual std::optional<engine_stats> stats() const { return std::nullopt; }
};

}  // namespace tollgate::adapters
