// The deadlines of one io_context's calls, kept on one timer. A call's deadline is set when it
// starts and taken off when it ends, usually long before it would pass: with a timer of its own,
// each call paid a timer's arming and cancelling (the reactor's lock and its heap, twice) and a
// trip through the loop's queue for the cancelled wait's handler. Here setting and taking off a
// deadline are list operations, and the one timer is armed for the earliest deadline; a timer that
// finds the deadline it was armed for taken off is armed again for the earliest one left. So the
// timer moves about once a timeout's length, not once a call.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <vector>

#include "adapters/loop_clock.hpp"

namespace tollgate::adapters {

/// Not thread-safe: used on the io_context's thread only.
class loop_deadlines {
 public:
  using clock = boost::asio::steady_timer::clock_type;

  /// What has a deadline: on_deadline() runs on the loop's thread once it has passed, taken off
  /// the list first (it may set a new one). Destroying an entry takes its deadline off.
  class entry {
   public:
    entry() = default;
    entry(const entry&) = delete;
    entry& operator=(const entry&) = delete;
    bool set() const { return list_ != nullptr; }
    /// The deadline, while set.
    clock::time_point at() const { return at_; }

   protected:
    ~entry();

   private:
    friend class loop_deadlines;
    virtual void on_deadline() = 0;

    loop_deadlines* list_ = nullptr;  // while set
    entry* prev_ = nullptr;
    entry* next_ = nullptr;
    std::size_t lane_ = 0;
    clock::time_point at_{};
  };

  /// An entry that calls a member function of its owner: `member_entry<T, &T::f> e{*this};` in T.
  template <typename Owner, void (Owner::*On)()>
  class member_entry final : public entry {
   public:
    explicit member_entry(Owner& owner) : owner_(owner) {}

   private:
    void on_deadline() override { (owner_.*On)(); }
    Owner& owner_;
  };

  explicit loop_deadlines(boost::asio::io_context& io);
  ~loop_deadlines();
  loop_deadlines(const loop_deadlines&) = delete;
  loop_deadlines& operator=(const loop_deadlines&) = delete;

  /// e's deadline becomes now + after (an earlier one is taken off).
  void set(entry& e, clock::duration after) { set_at(e, loop_clock::now() + after, after); }
  /// e's deadline becomes at, which a caller took as some recent time + after.
  void set_at(entry& e, clock::time_point at, clock::duration after);
  /// Takes e's deadline off, if it has one.
  void cancel(entry& e);
  /// The lists kept, one a duration in use (an empty one serves the next new duration).
  std::size_t lanes() const { return lanes_.size(); }
  /// The io_context is shutting down: the timer goes (before the timer service does), and no
  /// deadline is kept from now on.
  void shutdown();

 private:
  /// The entries of one `after`, in deadline order: each is set at now + after, so that it
  /// usually goes at the end.
  struct lane {
    clock::duration after{};
    entry* head = nullptr;
    entry* tail = nullptr;
  };

  void arm(clock::time_point at);
  void on_timer();
  void unlink(entry& e);

  boost::asio::io_context& io_;
  std::vector<lane> lanes_;
  std::unique_ptr<boost::asio::steady_timer> timer_;
  clock::time_point armed_for_ = clock::time_point::max();  // max: no wait pending
  bool shut_ = false;
};

}  // namespace tollgate::adapters
