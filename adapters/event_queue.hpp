// The events a call has produced and its reader has not taken yet. A vector read from the front:
// a call seldom holds more than a few, and unlike a deque it allocates once, not twice. The first
// two are held in place (a whole answer's head and body, queued before the reader wakes), so the
// usual call allocates nothing for them.
#pragma once

#include <boost/container/small_vector.hpp>

#include <cstddef>
#include <utility>

#include "adapters/backend.hpp"

namespace tollgate::adapters {

class event_queue {
 public:
  bool empty() const { return front_ == events_.size(); }
  call_event& back() { return events_.back(); }
  void push_back(call_event&& ev) { events_.push_back(std::move(ev)); }
  void clear() {
    events_.clear();
    front_ = 0;
  }
  /// Precondition: !empty().
  call_event pop_front() {
    call_event ev;
    pop_front_into(ev);
    return ev;
  }
  /// pop_front() moved straight into ev (no event in between). Precondition: !empty().
  void pop_front_into(call_event& ev) {
    ev = std::move(events_[front_++]);
    if (front_ == events_.size()) {  // drained: reuse the storage from its start
      events_.clear();
      front_ = 0;
    }
  }

 private:
  boost::container::small_vector<call_event, 2> events_;
  std::size_t front_ = 0;
};

}  // namespace tollgate::adapters
