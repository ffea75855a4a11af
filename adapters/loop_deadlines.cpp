#include "adapters/loop_deadlines.hpp"

namespace tollgate::adapters {

namespace net = boost::asio;

loop_deadlines::entry::~entry() {
  if (list_ != nullptr) list_->cancel(*this);
}

loop_deadlines::loop_deadlines(net::io_context& io) : io_(io) {}

loop_deadlines::~loop_deadlines() {
  // Entries outliving the list forget it.
  for (lane& l : lanes_) {
    for (entry* e = l.head; e != nullptr; e = e->next_) e->list_ = nullptr;
  }
}

void loop_deadlines::set_at(entry& e, clock::time_point at, clock::duration after) {
  if (e.list_ != nullptr) unlink(e);
  if (shut_) return;
  std::size_t i = 0, empty = lanes_.size();
  for (; i < lanes_.size() && lanes_[i].after != after; ++i) {
    if (empty == lanes_.size() && lanes_[i].head == nullptr) empty = i;
  }
  if (i == lanes_.size()) {
    // A duration not seen before (a reload's new timeouts): an empty lane serves it, so that the
    // lanes stay as many as the durations in use.
    if (empty == lanes_.size()) lanes_.emplace_back();
    i = empty;
    lanes_[i].after = after;
  }
  lane& l = lanes_[i];
  // From the end: the usual place, since the lane's entries were set at earlier times.
  entry* before = l.tail;
  while (before != nullptr && before->at_ > at) before = before->prev_;
  e.prev_ = before;
  e.next_ = before != nullptr ? before->next_ : l.head;
  if (e.next_ != nullptr) {
    e.next_->prev_ = &e;
  } else {
    l.tail = &e;
  }
  if (before != nullptr) {
    before->next_ = &e;
  } else {
    l.head = &e;
  }
  e.list_ = this;
  e.lane_ = i;
  e.at_ = at;
  if (at < armed_for_) arm(at);
}

void loop_deadlines::cancel(entry& e) {
  // The timer stays as it is: if it was armed for this deadline, it finds it gone and is armed
  // for the next one.
  if (e.list_ == this) unlink(e);
}

void loop_deadlines::unlink(entry& e) {
  lane& l = lanes_[e.lane_];
  if (e.prev_ != nullptr) {
    e.prev_->next_ = e.next_;
  } else {
    l.head = e.next_;
  }
  if (e.next_ != nullptr) {
    e.next_->prev_ = e.prev_;
  } else {
    l.tail = e.prev_;
  }
  e.prev_ = e.next_ = nullptr;
  e.list_ = nullptr;
}

void loop_deadlines::shutdown() {
  shut_ = true;
  timer_.reset();
  armed_for_ = clock::time_point::max();
}

void loop_deadlines::arm(clock::time_point at) {
  if (!timer_) timer_ = std::make_unique<net::steady_timer>(io_);
  armed_for_ = at;
  timer_->expires_at(at);  // cancels a wait still pending: its handler touches nothing
  timer_->async_wait([this](boost::system::error_code ec) {
    if (!ec) on_timer();  // aborted: armed again, or shut down
  });
}

void loop_deadlines::on_timer() {
  armed_for_ = clock::time_point::max();
  const clock::time_point now = clock::now();
  for (;;) {
    // The earliest deadline is at the head of some lane. Looked for again after each call: an
    // entry's on_deadline() may set or take off others.
    entry* first = nullptr;
    for (const lane& l : lanes_) {
      if (l.head != nullptr && (first == nullptr || l.head->at_ < first->at_)) first = l.head;
    }
    if (first == nullptr) return;
    if (first->at_ > now) {
      if (first->at_ < armed_for_) arm(first->at_);
      return;
    }
    unlink(*first);
    first->on_deadline();
  }
}

}  // namespace tollgate::adapters
