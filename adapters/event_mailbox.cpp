#include "adapters/event_mailbox.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace tollgate::adapters {

namespace net = boost::asio;

void event_mailbox::push(call_event ev) {
  if (ev.type == call_event::kind::head) seen_head_ = true;
  if (ev.type == call_event::kind::data) queued_bytes_ += ev.data.size();
  events_.push_back(std::move(ev));
  wake();
}

void event_mailbox::add_data(std::string_view bytes) {
  if (!events_.empty() && events_.back().type == call_event::kind::data) {
    events_.back().data.append(bytes);  // coalesce what the reader has not taken yet
    queued_bytes_ += bytes.size();
    return;
  }
  call_event ev;
  ev.type = call_event::kind::data;
  ev.data.assign(bytes);
  push(std::move(ev));
}

net::awaitable<call_event> event_mailbox::next(mailbox_producer& producer) {
  for (;;) {
    if (!events_.empty()) {
      call_event ev = events_.pop_front();
      if (ev.type == call_event::kind::data) {
        queued_bytes_ -= ev.data.size();
        producer.on_taken();
      }
      co_return ev;
    }
    if (terminal_) co_return *terminal_;
    timer_.expires_after(seen_head_ ? idle_ : first_token_);
    auto [ec] = co_await timer_.async_wait(net::as_tuple(net::use_awaitable));
    if (!ec && events_.empty() && !terminal_) producer.on_silence(seen_head_);
  }
}

}  // namespace tollgate::adapters
