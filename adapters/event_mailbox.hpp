// The one wait loop of every backend's call: a producer (a transfer's parser, curl's callbacks,
// the engine's callbacks posted to the worker) puts events in, the call's next() takes them out,
// waiting between them under the first-token or idle deadline.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/impl/use_awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>

#include "adapters/backend.hpp"
#include "adapters/event_queue.hpp"
#include "adapters/loop_deadlines.hpp"
#include "config/config.hpp"

namespace tollgate::adapters {

class mailbox_waiters;

/// The list of io's mailboxes (an io_context service, made on first use). Looking it up takes
/// the io_context's service registry lock: a loop that makes many mailboxes keeps the pointer.
mailbox_waiters& mailbox_list(boost::asio::io_context& io);
/// The deadlines of the calls on list's io_context (kept with its mailboxes).
loop_deadlines& deadlines_of(mailbox_waiters& list);

/// What a mailbox asks of the call that fills it.
class mailbox_producer {
 public:
  /// The consumer took a data event (queued_bytes() went down): a paused producer may resume.
  virtual void on_taken() {}
  /// Nothing came within the deadline (first token before a head was put, idle after). Ends the
  /// call with a timeout (end() or stop()); otherwise the consumer waits once more.
  virtual void on_silence(bool seen_head) = 0;

 protected:
  ~mailbox_producer() = default;
};

/// Events a call has produced and its reader has not taken, its terminal event, and the wait
/// between them. Not thread-safe: used on the call's worker thread only (a producer on another
/// thread posts to it), and the mailboxes of one io_context are used by one thread at a time.
///
/// The deadline is lazy: a wait notes when its silence would come, and the loop's deadline list
/// (loop_deadlines) is told only when it does not hold one for that moment or earlier. A wake
/// resumes the reader without touching it; a deadline that passes before the current wait's (set
/// for an earlier wait) is set again for the rest. So a stream's events cost no deadline changes.
class event_mailbox {
 public:
  /// Made, used and destroyed on the io_context's thread (see the class comment). list:
  /// mailbox_list(io), or null to look it up.
  event_mailbox(boost::asio::io_context& io, const config::timeouts_config& timeouts, mailbox_waiters* list = nullptr);
  ~event_mailbox();
  event_mailbox(const event_mailbox&) = delete;
  event_mailbox& operator=(const event_mailbox&) = delete;

  // The producer's side.

  /// Appends an event and wakes the reader.
  void push(call_event&& ev);
  /// Appends response bytes: to the sink (see set_sink), to the last event when it is data the
  /// reader has not taken yet and has room, or can grow to max_spare (no wake is needed then), else
  /// as a new data event. coming: at most how many more bytes the producer's handler may add
  /// (what is left of its read), for the sink to make room for them at once.
  void add_data(std::string_view bytes, std::size_t coming = 0);
  /// Sets the terminal event (end or failed) without waking the reader: for a producer that
  /// wakes it later, or whose reader is gone.
  void stop(call_event&& terminal) {
    terminal_ = std::move(terminal);
    if (!waiter_) disarm();  // no wait comes after the terminal event
  }
  /// Sets the terminal event and wakes the reader.
  void end(call_event&& terminal) {
    stop(std::move(terminal));
    wake();
  }
  /// Wakes a waiting reader (its wait's deadline starts again if it finds nothing), and the hook
  /// of one that watches several calls. Between hold_wakes() and resume_held(), the reader's
  /// wake is noted instead.
  void wake() {
    if (waiter_) {
      if (holding_) {
        wake_held_ = true;
      } else {
        resume_reader();
      }
    }
    if (hook_) hook_();
  }
  /// For a producer's completion handler that may put several events in (a read's bytes): the
  /// reader is not resumed through the loop's queue at each wake, but once, inline, by
  /// resume_held() at the handler's end, after the producer has done all it does there (issued its
  /// next read). That saves a trip through the queue an event. The producer must outlive the
  /// resumption (its handler holds it) and touch nothing after it: the reader may cancel or drop
  /// the call. held_wakes below makes the pair exception-safe.
  void hold_wakes() { holding_ = true; }
  void resume_held();
  /// Ends a hold without resuming inline: a held wake goes through the queue.
  void release_held() noexcept;
  /// Keeps s's storage for the next data event that add_data() makes (the larger of it and the
  /// one kept already, up to max_spare bytes: a held stream keeps no large buffer).
  void recycle(std::string&& s) {
    if (s.capacity() > spare_.capacity() && s.capacity() <= max_spare) spare_ = std::move(s);
  }
  static constexpr std::size_t max_spare = 16 * 1024;
  /// Drops events not taken yet (a cancelled call's reader wants none of them).
  void clear() {
    events_.clear();
    queued_bytes_ = 0;
  }

  bool ended() const { return terminal_.has_value(); }
  bool seen_head() const { return seen_head_; }
  /// Bytes of data events not taken yet.
  std::size_t queued_bytes() const { return queued_bytes_; }

  // The consumer's side (call's interface).

  bool ready() const { return !events_.empty() || terminal_.has_value(); }
  /// While the reader waits in next() with nothing queued, the bytes add_data() gets under a held
  /// wake go to sink as they come (data_sink::add, no event made, no byte copied), and the sink
  /// is flushed at resume_held(): the reader stays suspended, its deadline starting again, unless
  /// the sink asks for it, or an event, the terminal one or a hook came after the bytes (then the
  /// reader gets a data event with no bytes first, and finishes what the sink holds). Null stops it.
  void set_sink(data_sink* sink) { sink_ = sink; }
  void on_ready(std::function<void()> hook) { hook_ = std::move(hook); }
  /// The next event: those put in, in order, then the terminal one (again on every later call).
  /// Waits while there is none, calling producer.on_silence() when the deadline passes.
  /// The mailbox and producer outlive the wait.
  boost::asio::awaitable<call_event> next(mailbox_producer& producer);
  /// Takes into ev what next() would return without waiting; false when it would wait.
  bool try_next(mailbox_producer& producer, call_event& ev);

 private:
  friend class mailbox_waiters;
  /// The handler that resumes a reader suspended in next() (use_awaitable's, for void()).
  using waiter = boost::asio::detail::awaitable_handler<boost::asio::any_io_executor>;
  using clock = boost::asio::steady_timer::clock_type;

  void resume_reader();
  /// The current wait's silence counted from now: the head's timeout, or the idle one after it.
  void restart_deadline();
  /// The current wait's silence: the head's timeout, or the idle one after it.
  config::duration silence_after() const { return seen_head_ ? idle_ : first_token_; }
  void arm(clock::time_point deadline);
  void disarm();
  void on_deadline();

  boost::asio::io_context::executor_type io_;
  mailbox_waiters* list_;             // the io_context's mailboxes (for a shutdown with readers waiting)
  event_queue events_;
  std::optional<call_event> terminal_;
  // Set for the current wait's deadline or earlier.
  loop_deadlines::member_entry<event_mailbox, &event_mailbox::on_deadline> silence_{*this};
  config::duration first_token_;
  config::duration idle_;
  std::function<void()> hook_;
  std::string spare_;                 // storage given back by the reader, for add_data()
  std::optional<waiter> waiter_;     // the reader, while it waits
  mailbox_producer* producer_ = nullptr;  // the waiting reader's producer
  data_sink* sink_ = nullptr;
  event_mailbox* prev_listed_ = nullptr;
  event_mailbox* next_listed_ = nullptr;
  clock::time_point deadline_{};     // when the current wait's silence comes
  std::size_t queued_bytes_ = 0;
  bool seen_head_ = false;
  bool silent_ = false;              // the current wait ended at its deadline
  bool holding_ = false;             // between hold_wakes() and resume_held()
  bool wake_held_ = false;           // a wake came while holding_
  bool sink_fed_ = false;            // the sink got bytes under the current hold
  bool handoff_ = false;             // the sink asked for the reader: next() returns empty data
};

/// Holds a mailbox's wakes for a producer's completion handler: done() resumes the reader inline
/// (event_mailbox::resume_held); leaving the scope without it (an exception) posts a held wake.
class held_wakes {
 public:
  explicit held_wakes(event_mailbox& m) : m_(&m) { m.hold_wakes(); }
  ~held_wakes() {
    if (m_) m_->release_held();
  }
  held_wakes(const held_wakes&) = delete;
  held_wakes& operator=(const held_wakes&) = delete;
  /// The handler's last act: resumes the reader if a wake came.
  void done() { std::exchange(m_, nullptr)->resume_held(); }

 private:
  event_mailbox* m_;
};

}  // namespace tollgate::adapters
