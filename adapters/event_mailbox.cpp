#include "adapters/event_mailbox.hpp"

#include "adapters/loop_clock.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <type_traits>
#include <utility>
#include <vector>

namespace tollgate::adapters {

namespace net = boost::asio;

/// The mailboxes of one io_context, for the readers waiting in them. A waiting reader's handler is
/// held by its mailbox, outside Asio's queues: when the io_context shuts down with readers still
/// waiting, this service destroys their handlers, so that their coroutines unwind as a reader
/// waiting on a timer or a socket would (no leak). A mailbox is listed for its whole life, not at
/// each wait, so that a wait touches no other stream's memory. No lock: a mailbox is made, waited
/// on and destroyed on its io_context's one thread (the engine holds its calls' mailboxes weakly
/// and touches them in handlers posted there), and shutdown runs once that thread is done.
class mailbox_waiters final : public net::execution_context::service {
 public:
  inline static net::execution_context::id id;

  explicit mailbox_waiters(net::io_context& io) : service(io), deadlines_(io) {}

  loop_deadlines& deadlines() { return deadlines_; }

  void add(event_mailbox* m) {
    m->prev_listed_ = nullptr;
    m->next_listed_ = head_;
    if (head_) head_->prev_listed_ = m;
    head_ = m;
  }

  void remove(event_mailbox* m) {
    if (m->prev_listed_) {
      m->prev_listed_->next_listed_ = m->next_listed_;
    } else {
      head_ = m->next_listed_;
    }
    if (m->next_listed_) m->next_listed_->prev_listed_ = m->prev_listed_;
  }

 private:
  void shutdown() override {
    // Destroyed while the timer service is there: it may have been made after this service,
    // and then goes first.
    deadlines_.shutdown();
    // Taken out first, then destroyed: their coroutines' frames own mailboxes, which remove
    // themselves from the list as they go.
    std::vector<event_mailbox::waiter> waiting;
    for (event_mailbox* m = head_; m != nullptr; m = m->next_listed_) {
      if (!m->waiter_) continue;
      waiting.push_back(std::move(*m->waiter_));
      m->waiter_.reset();
    }
    waiting.clear();
  }

  event_mailbox* head_ = nullptr;
  loop_deadlines deadlines_;
};

mailbox_waiters& mailbox_list(net::io_context& io) { return net::use_service<mailbox_waiters>(io); }

loop_deadlines& deadlines_of(mailbox_waiters& list) { return list.deadlines(); }

event_mailbox::event_mailbox(net::io_context& io, const config::timeouts_config& timeouts, mailbox_waiters* list)
    : io_(io.get_executor()),
      list_(list != nullptr ? list : &mailbox_list(io)),
      first_token_(timeouts.first_token),
      idle_(timeouts.idle) {
  list_->add(this);
}

event_mailbox::~event_mailbox() { list_->remove(this); }

void event_mailbox::push(call_event&& ev) {
  if (ev.type == call_event::kind::head) seen_head_ = true;
  if (ev.type == call_event::kind::data) queued_bytes_ += ev.data.size();
  events_.push_back(std::move(ev));
  wake();
}

void event_mailbox::add_data(std::string_view bytes, std::size_t coming) {
  if (sink_ != nullptr && holding_ && waiter_ && events_.empty() && !terminal_ && !hook_) {
    // The sink handles them now, from the producer's buffer, and is flushed at resume_held().
    sink_fed_ = true;
    sink_->add(bytes, coming);
    wake();
    return;
  }
  if (!events_.empty() && events_.back().type == call_event::kind::data) {
    // Coalesce what the reader has not taken yet, up to max_spare (a size the reader's recycle()
    // gives back). A short burst grows the string as strings grow (a short buffer stays short);
    // past 4 KB it is grown once to max_spare, and past that the bytes start an event of their
    // own, so that a growing backlog is not copied again and again (the reader takes the events
    // that are ready together).
    std::string& last = events_.back().data;
    const std::size_t need = last.size() + bytes.size();
    if (need <= last.capacity() || need <= max_spare) {
      if (need > last.capacity() && need > 4096) last.reserve(max_spare);
      last.append(bytes);
      queued_bytes_ += bytes.size();
      return;
    }
  }
  call_event ev;
  ev.type = call_event::kind::data;
  ev.data = std::move(spare_);  // the reader's last string, when it gave one back
  spare_ = std::string();
  ev.data.assign(bytes);
  push(std::move(ev));
}

void event_mailbox::resume_reader() {
  waiter w = std::move(*waiter_);
  waiter_.reset();
  // Through the queue, as a cancelled timer's wait completed: never inside the producer's call.
  // Posted to the loop's own executor and called there (the reader's executor is that loop):
  // not dispatched again through the type-erased one, which costs more than the rest of a wake.
  net::post(io_, [w = std::move(w)]() mutable { w(); });
}

void event_mailbox::resume_held() {
  holding_ = false;
  const bool woke = std::exchange(wake_held_, false);
  const bool fed = std::exchange(sink_fed_, false);
  if (!woke || !waiter_) {
    if (fed) handoff_ = true;  // the reader, when it comes, finishes what the sink holds
    return;
  }
  if (fed) {
    if (!terminal_ && !hook_ && events_.empty() && sink_ != nullptr) {
      producer_->on_taken();
      if (sink_->flush()) {
        restart_deadline();  // as the reader's next wait would: its silence counts from now
        return;
      }
    }
    handoff_ = true;  // next() returns a data event with no bytes, before what else came
  }
  waiter w = std::move(*waiter_);
  waiter_.reset();
  w();  // resumes the reader, which may end the call: nothing after it
}

void event_mailbox::restart_deadline() { deadline_ = loop_clock::now() + silence_after(); }

void event_mailbox::release_held() noexcept {
  holding_ = false;
  if (std::exchange(sink_fed_, false)) handoff_ = true;  // the reader finishes what the sink holds
  if (!std::exchange(wake_held_, false) || !waiter_) return;
  try {
    resume_reader();
  } catch (...) {
    // No memory for the post: the reader's deadline still ends its wait.
  }
}

void event_mailbox::arm(clock::time_point deadline) {
  deadlines_of(*list_).set_at(silence_, deadline, silence_after());
}

void event_mailbox::disarm() { deadlines_of(*list_).cancel(silence_); }

void event_mailbox::on_deadline() {
  if (!waiter_) return;  // the reader is busy: its next wait sets the deadline again
  if (clock::now() < deadline_) {
    arm(deadline_);  // set for an earlier wait: the rest of this one's
    return;
  }
  silent_ = true;
  waiter w = std::move(*waiter_);
  waiter_.reset();
  w();  // resumes the reader, which may destroy this mailbox: nothing after it
}

bool event_mailbox::try_next(mailbox_producer& producer, call_event& ev) {
  if (std::exchange(handoff_, false)) {
    ev = call_event{};
    ev.type = call_event::kind::data;
    return true;
  }
  if (!events_.empty()) {
    events_.pop_front_into(ev);
    if (ev.type == call_event::kind::data) {
      queued_bytes_ -= ev.data.size();
      producer.on_taken();
    }
    return true;
  }
  if (terminal_) {
    disarm();
    ev = *terminal_;
    return true;
  }
  return false;
}

net::awaitable<call_event> event_mailbox::next(mailbox_producer& producer) {
  for (;;) {
    if (call_event ev; try_next(producer, ev)) co_return ev;
    restart_deadline();
    if (!silence_.set() || silence_.at() > deadline_) arm(deadline_);
    silent_ = false;
    producer_ = &producer;
    co_await net::async_initiate<const net::use_awaitable_t<>&, void()>(
        [this](auto handler) {
          static_assert(std::is_same_v<decltype(handler), waiter>, "use_awaitable's handler changed type");
          waiter_.emplace(std::move(handler));
        },
        net::use_awaitable);
    if (silent_ && events_.empty() && !terminal_) producer.on_silence(seen_head_);
  }
}

}  // namespace tollgate::adapters
