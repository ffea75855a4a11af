// The mailbox between a call's producer and its reader, on a real io_context: events in order,
// the first-token and idle deadlines (which it arms lazily, once for many waits), and a reader
// left waiting when the loop is torn down.
#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "adapters/event_mailbox.hpp"

using namespace tollgate::adapters;
namespace net = boost::asio;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

tollgate::config::timeouts_config timeouts(steady::duration first_token, steady::duration idle) {
  tollgate::config::timeouts_config t;
  t.first_token = std::chrono::duration_cast<tollgate::config::duration>(first_token);
  t.idle = std::chrono::duration_cast<tollgate::config::duration>(idle);
  return t;
}

/// Ends the call with a timeout at the first silence, or lets the reader wait again.
struct producer final : mailbox_producer {
  explicit producer(event_mailbox& b) : box(b) {}
  event_mailbox& box;
  std::vector<steady::time_point> silences;
  std::vector<bool> silences_seen_head;
  int waits_before_ending = 0;  // silences to let pass before ending the call
  int taken = 0;

  void on_taken() override { ++taken; }
  void on_silence(bool seen_head) override {
    silences.push_back(steady::now());
    silences_seen_head.push_back(seen_head);
    if (waits_before_ending-- > 0) return;
    call_event ev;
    ev.type = call_event::kind::failed;
    ev.error = failure::timeout;
    ev.message = seen_head ? "idle" : "first-token";
    box.end(std::move(ev));
  }
};

call_event event_of(call_event::kind k, std::string data = {}) {
  call_event ev;
  ev.type = k;
  ev.data = std::move(data);
  if (k == call_event::kind::head) ev.head.status = 200;
  return ev;
}

/// Reads until the terminal event, noting what came.
struct reader {
  std::vector<call_event::kind> kinds;
  std::string data;
  failure error = failure::none;
  std::string message;
  bool done = false;
};

net::awaitable<void> read_all(event_mailbox& box, producer& p, reader& r) {
  for (;;) {
    call_event ev = co_await box.next(p);
    r.kinds.push_back(ev.type);
    if (ev.type == call_event::kind::data) r.data += ev.data;
    if (ev.type == call_event::kind::end || ev.type == call_event::kind::failed) {
      r.error = ev.error;
      r.message = ev.message;
      r.done = true;
      co_return;
    }
  }
}

net::awaitable<void> sleep(net::io_context& io, steady::duration d) {
  net::steady_timer t(io);
  t.expires_after(d);
  co_await t.async_wait(net::use_awaitable);
}

}  // namespace

TEST_CASE("event mailbox: events come in order, coalesced while untaken, and the terminal one repeats",
          "[adapters][mailbox]") {
  net::io_context io;
  event_mailbox box(io, timeouts(1s, 1s));
  producer p(box);
  reader r;
  box.push(event_of(call_event::kind::head));
  box.add_data("a");
  box.add_data("b");  // joins the untaken "a"
  CHECK(box.queued_bytes() == 2);
  net::co_spawn(io, read_all(box, p, r), net::detached);
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        co_await sleep(io, 20ms);
        box.add_data("c");  // the reader waits: a new event, and a wake
        co_await sleep(io, 20ms);
        box.end(event_of(call_event::kind::end));
      },
      net::detached);
  io.run();  // returns: no timer is left armed once the reader has its terminal event
  CHECK(r.done);
  CHECK(r.kinds == std::vector<call_event::kind>{call_event::kind::head, call_event::kind::data, call_event::kind::data,
                                                 call_event::kind::end});
  CHECK(r.data == "abc");
  CHECK(p.taken == 2);
  CHECK(box.queued_bytes() == 0);
  CHECK(p.silences.empty());
  // The terminal event again, at once.
  io.restart();
  reader again;
  net::co_spawn(io, read_all(box, p, again), net::detached);
  io.run();
  CHECK(again.kinds == std::vector<call_event::kind>{call_event::kind::end});
}

TEST_CASE("event mailbox: a data event is made in the storage its reader gave back", "[adapters][mailbox]") {
  net::io_context io;
  event_mailbox box(io, timeouts(1s, 1s));
  producer p(box);
  std::string given(300, 'x');
  const char* const storage = given.data();
  box.recycle(std::move(given));
  box.add_data("an event's bytes, longer than a short string's own room");
  std::string small;  // a smaller storage is not kept over the larger one
  small.reserve(40);
  box.recycle(std::move(small));
  std::string huge;   // nor one past max_spare (a held stream keeps no large buffer)
  huge.reserve(event_mailbox::max_spare + 1);
  box.recycle(std::move(huge));
  call_event got;
  net::co_spawn(
      io, [&]() -> net::awaitable<void> { got = co_await box.next(p); }, net::detached);
  io.run();
  CHECK(got.type == call_event::kind::data);
  CHECK(got.data == "an event's bytes, longer than a short string's own room");
  CHECK(got.data.data() == storage);  // no allocation: the recycled string's storage
  // With nothing given back, the next event allocates its own (and recycling is optional).
  box.add_data("next");
  io.restart();
  net::co_spawn(
      io, [&]() -> net::awaitable<void> { got = co_await box.next(p); }, net::detached);
  io.run();
  CHECK(got.data == "next");
}

TEST_CASE("event mailbox: a backlog is coalesced up to max_spare an event, then starts another",
          "[adapters][mailbox]") {
  net::io_context io;
  event_mailbox box(io, timeouts(1s, 1s));
  producer p(box);
  // 40 reads of 1,000 bytes while the reader is busy: 40,000 bytes in events of at most
  // max_spare (an event grown once to it, then a new one: nothing queued is copied again).
  std::string expected;
  box.add_data(std::string(1000, 'a'));
  for (int i = 0; i < 40; ++i) {
    const std::string part(1000, static_cast<char>('a' + i % 26));
    if (i > 0) box.add_data(part);
    expected += part;
  }
  CHECK(box.queued_bytes() == 40000);
  reader r;
  std::vector<std::size_t> sizes;
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        while (box.ready() && box.queued_bytes() > 0) {
          call_event ev = co_await box.next(p);
          REQUIRE(ev.type == call_event::kind::data);
          sizes.push_back(ev.data.size());
          CHECK(ev.data.capacity() <= event_mailbox::max_spare);
          r.data += ev.data;
        }
      },
      net::detached);
  io.run();
  CHECK(r.data == expected);
  // 16 reads (16,000 bytes) fit an event of max_spare (16,384): three events of 16, 16 and 8.
  CHECK(sizes == std::vector<std::size_t>{16000, 16000, 8000});
  // A read larger than max_spare is an event of its own, as it came.
  box.add_data("x");
  box.add_data(std::string(event_mailbox::max_spare + 10, 'y'));
  CHECK(box.queued_bytes() == event_mailbox::max_spare + 11);
  std::vector<std::size_t> later;
  io.restart();
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        while (box.queued_bytes() > 0) later.push_back((co_await box.next(p)).data.size());
      },
      net::detached);
  io.run();
  CHECK(later == std::vector<std::size_t>{1, event_mailbox::max_spare + 10});
}

TEST_CASE("event mailbox: wakes held by a producer's handler resume the reader once, inline, at its end",
          "[adapters][mailbox]") {
  net::io_context io;
  event_mailbox box(io, timeouts(1s, 1s));
  producer p(box);
  reader r;
  net::co_spawn(io, read_all(box, p, r), net::detached);
  io.poll();  // the reader waits
  REQUIRE(r.kinds.empty());
  {
    held_wakes wakes(box);
    box.push(event_of(call_event::kind::head));
    box.add_data("a");
    CHECK(r.kinds.empty());  // not resumed while the handler runs
    wakes.done();
    // Resumed inside done(), with no turn of the loop: it took both events and waits again.
    CHECK(r.kinds == std::vector<call_event::kind>{call_event::kind::head, call_event::kind::data});
    CHECK(r.data == "a");
  }
  {
    held_wakes wakes(box);  // a handler that puts nothing in: done() resumes no one
    wakes.done();
  }
  CHECK(r.kinds.size() == 2);
  try {
    held_wakes wakes(box);
    box.add_data("b");
    throw std::runtime_error("the handler failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(r.kinds.size() == 2);  // left without done(): the wake goes through the loop's queue
  io.poll();
  CHECK(r.kinds.size() == 3);
  CHECK(r.data == "ab");
  box.add_data("c");  // no hold: through the queue, as before
  CHECK(r.kinds.size() == 3);
  io.poll();
  CHECK(r.data == "abc");
  {
    held_wakes wakes(box);
    box.end(event_of(call_event::kind::end));
    wakes.done();
  }
  CHECK(r.done);
  io.run();  // returns: the reader has its terminal event and no timer is armed
  CHECK(p.silences.empty());
}

namespace {

/// A reader's sink that notes the bytes each handler added when it is flushed (adding: those
/// added since), and asks for the reader at the flush numbered hand_over_at (0: never).
struct noting_sink final : data_sink {
  std::vector<std::string> taken;
  std::string adding;
  std::size_t coming = 0;  // the last add's
  std::size_t hand_over_at = 0;
  void add(std::string_view bytes, std::size_t more) override {
    adding += bytes;
    coming = more;
  }
  bool flush() override {
    taken.push_back(std::exchange(adding, std::string()));
    return taken.size() != hand_over_at;
  }
};

}  // namespace

TEST_CASE("event mailbox: a sink takes the data of a held wake as it comes while the reader waits on, is flushed at the "
          "handler's end, and hands over when it asks",
          "[adapters][mailbox]") {
  net::io_context io;
  event_mailbox box(io, timeouts(1s, 1s));
  producer p(box);
  reader r;
  net::co_spawn(io, read_all(box, p, r), net::detached);
  io.poll();
  box.push(event_of(call_event::kind::head));
  io.poll();
  REQUIRE(r.kinds == std::vector<call_event::kind>{call_event::kind::head});
  noting_sink sink;
  box.set_sink(&sink);
  {
    held_wakes wakes(box);
    box.add_data("a", 1000);
    CHECK(sink.adding == "a");  // at once, not queued
    CHECK(sink.coming == 1000);
    box.add_data(std::string(1000, 'b'));  // one handler's bytes: one flush
    CHECK(box.queued_bytes() == 0);
    CHECK_FALSE(box.ready());
    CHECK(sink.taken.empty());
    wakes.done();
  }
  CHECK(sink.taken == std::vector<std::string>{"a" + std::string(1000, 'b')});
  CHECK(r.kinds.size() == 1);  // still waiting: the sink took them
  CHECK(p.taken == 1);
  CHECK(box.queued_bytes() == 0);
  CHECK_FALSE(box.ready());
  {
    // The sink asks for the reader: it gets a data event with no bytes.
    sink.hand_over_at = 2;
    held_wakes wakes(box);
    box.add_data("z");
    wakes.done();
  }
  CHECK(sink.taken.size() == 2);
  REQUIRE(r.kinds.size() == 2);
  CHECK(r.kinds[1] == call_event::kind::data);
  CHECK(r.data.empty());
  {
    // More than max_spare in one handler: the sink takes them too, as they come.
    held_wakes wakes(box);
    box.add_data(std::string(event_mailbox::max_spare - 10, 'x'));
    box.add_data(std::string(100, 'y'));
    wakes.done();
  }
  REQUIRE(sink.taken.size() == 3);
  CHECK(sink.taken[2] == std::string(event_mailbox::max_spare - 10, 'x') + std::string(100, 'y'));
  CHECK(r.kinds.size() == 2);
  {
    // Bytes, then an event put in: the sink has the bytes, unflushed; the reader gets a data event
    // with no bytes (to finish what the sink holds), then the event.
    held_wakes wakes(box);
    box.add_data("c");
    box.push(event_of(call_event::kind::data, "d"));  // now queued: bytes after it too
    box.add_data("e");
    wakes.done();
  }
  CHECK(sink.taken.size() == 3);
  CHECK(sink.adding == "c");
  REQUIRE(r.kinds.size() == 4);
  CHECK(r.data == "de");
  sink.adding.clear();
  try {
    // Bytes added by a handler that threw: the sink has them, and the reader is resumed through
    // the queue with a data event with no bytes.
    held_wakes wakes(box);
    box.add_data("t");
    throw std::runtime_error("the handler failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(sink.adding == "t");
  CHECK(r.kinds.size() == 4);
  io.poll();
  REQUIRE(r.kinds.size() == 5);
  CHECK(r.kinds[4] == call_event::kind::data);
  CHECK(r.data == "de");
  sink.adding.clear();
  {
    // Bytes then the end: the sink has the bytes, the reader a data event with no bytes, then the end.
    held_wakes wakes(box);
    box.add_data("v");
    box.end(event_of(call_event::kind::end));
    wakes.done();
  }
  CHECK(sink.taken.size() == 3);
  CHECK(sink.adding == "v");
  CHECK(r.data == "de");
  CHECK(r.kinds.size() == 7);
  CHECK(r.done);
  io.run();
}

namespace {

/// Twenty data events 50 ms apart under an idle timeout of 150 ms: the stream outlasts it many
/// times and times out one idle timeout after its last event. sink_takes_them: each is put in
/// under a held wake while a sink is set (the sink takes it, the reader waits on), then one more
/// without a hold, which resumes the reader.
void check_idle_after_events(bool sink_takes_them) {
  net::io_context io;
  event_mailbox box(io, timeouts(2s, 150ms));
  producer p(box);
  reader r;
  noting_sink sink;
  steady::time_point last_event;
  net::co_spawn(io, read_all(box, p, r), net::detached);
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        box.push(event_of(call_event::kind::head));
        if (sink_takes_them) {
          co_await sleep(io, 10ms);
          box.set_sink(&sink);
        }
        for (int i = 0; i < 20; ++i) {  // 1 s of events, 50 ms apart
          co_await sleep(io, 50ms);
          if (sink_takes_them) {
            held_wakes wakes(box);
            box.add_data("x");
            wakes.done();
          } else {
            box.add_data("x");
          }
          last_event = steady::now();
        }
        if (sink_takes_them) box.add_data("y");  // not held: through the queue
      },
      net::detached);
  const auto start = steady::now();
  io.run();
  REQUIRE(r.done);
  CHECK(sink.taken.size() == (sink_takes_them ? 20u : 0u));
  CHECK(r.data == (sink_takes_them ? std::string("y") : std::string(20, 'x')));
  CHECK(r.error == failure::timeout);
  CHECK(r.message == "idle");
  REQUIRE(p.silences.size() == 1);
  CHECK(p.silences_seen_head[0]);
  CHECK(last_event - start >= 1000ms);
  // Never before its deadline; after it by no more than a loaded machine's delay.
  CHECK(p.silences[0] - last_event >= 150ms);
  CHECK(p.silences[0] - last_event < 1000ms);
}

}  // namespace

TEST_CASE("event mailbox: a sink that takes a stream's events keeps its idle deadline counting from the last one, "
          "and a wake that is not held still resumes the reader",
          "[adapters][mailbox]") {
  check_idle_after_events(true);
}

TEST_CASE("event mailbox: a stream whose events come closer together than the idle timeout outlasts it many times, "
          "and times out one idle timeout after its last event",
          "[adapters][mailbox]") {
  check_idle_after_events(false);
}

TEST_CASE("event mailbox: the first-token deadline counts until the head, then the idle one, whichever is shorter",
          "[adapters][mailbox]") {
  SECTION("a long first-token timeout, a short idle one: the idle one is kept after the head") {
    net::io_context io;
    event_mailbox box(io, timeouts(10s, 150ms));
    producer p(box);
    reader r;
    net::co_spawn(io, read_all(box, p, r), net::detached);
    steady::time_point head_at;
    net::co_spawn(
        io,
        [&]() -> net::awaitable<void> {
          co_await sleep(io, 30ms);  // the reader waits under the first-token deadline first
          head_at = steady::now();
          box.push(event_of(call_event::kind::head));
        },
        net::detached);
    io.run();
    REQUIRE(p.silences.size() == 1);
    CHECK(p.silences_seen_head[0]);
    CHECK(r.message == "idle");
    CHECK(p.silences[0] - head_at >= 150ms);
    CHECK(p.silences[0] - head_at < 5s);
  }
  SECTION("no head: the first-token timeout") {
    net::io_context io;
    event_mailbox box(io, timeouts(150ms, 10s));
    producer p(box);
    reader r;
    const auto start = steady::now();
    net::co_spawn(io, read_all(box, p, r), net::detached);
    io.run();
    REQUIRE(p.silences.size() == 1);
    CHECK_FALSE(p.silences_seen_head[0]);
    CHECK(r.message == "first-token");
    CHECK(p.silences[0] - start >= 150ms);
    CHECK(p.silences[0] - start < 5s);
  }
}

TEST_CASE("event mailbox: a wake with no event starts the wait again, and a producer that lets a silence pass is "
          "asked again one timeout later",
          "[adapters][mailbox]") {
  net::io_context io;
  event_mailbox box(io, timeouts(2s, 150ms));
  producer p(box);
  p.waits_before_ending = 1;
  reader r;
  steady::time_point last_wake;
  net::co_spawn(io, read_all(box, p, r), net::detached);
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        box.push(event_of(call_event::kind::head));
        for (int i = 0; i < 10; ++i) {  // bytes that make no event yet, as a body read in parts
          co_await sleep(io, 50ms);
          box.wake();
          last_wake = steady::now();
        }
      },
      net::detached);
  io.run();
  REQUIRE(p.silences.size() == 2);
  CHECK(r.kinds == std::vector<call_event::kind>{call_event::kind::head, call_event::kind::failed});
  CHECK(p.silences[0] - last_wake >= 150ms);
  CHECK(p.silences[1] - p.silences[0] >= 150ms);
  CHECK(p.silences[1] - last_wake < 2s);
}

namespace {

struct on_destroy {
  bool& destroyed;
  ~on_destroy() { destroyed = true; }
};

net::awaitable<void> wait_forever(std::shared_ptr<event_mailbox> box, bool& destroyed) {
  on_destroy guard{destroyed};
  struct silent final : mailbox_producer {
    void on_silence(bool) override {}
  } p;
  for (;;) co_await box->next(p);
}

}  // namespace

TEST_CASE("event mailbox: a reader still waiting when its loop is torn down is unwound, with its mailbox",
          "[adapters][mailbox]") {
  // Waiting, or woken with its resumption queued but not run.
  const bool woken = GENERATE(false, true);
  bool destroyed = false;
  std::weak_ptr<event_mailbox> watch;
  {
    auto io = std::make_unique<net::io_context>();
    auto box = std::make_shared<event_mailbox>(*io, timeouts(10s, 10s));
    watch = box;
    net::co_spawn(*io, wait_forever(std::move(box), destroyed), net::detached);
    io->run_for(30ms);
    CHECK_FALSE(destroyed);
    REQUIRE_FALSE(watch.expired());
    if (woken) watch.lock()->push(event_of(call_event::kind::head));
  }
  CHECK(destroyed);
  CHECK(watch.expired());
}
