// async_read_edge on real loopback sockets: what it reads; that a read after one that drained the
// socket waits for the next edge instead of trying recv first (the tries that found nothing are
// counted), while bytes that came in between are still read at once; that bytes followed at once
// by the peer's FIN end in eof without waiting (the kernel's count of what is left says a FIN is
// there), and bytes followed by a reset in the reset (the edge's events say it); a socket without
// TCP_INQ read as Asio reads; cancel(), close(), a loop torn down with a read pending, and the
// operation's memory.
#include <catch2/catch.hpp>

#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "adapters/edge_read.hpp"
#include "adapters/loop_clock.hpp"
#include "adapters/op_memory.hpp"

using namespace tollgate::adapters;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

/// A connected pair on loopback: `ours` is read with async_read_edge (TCP_INQ on unless asked
/// not to), `peer` writes.
struct socket_pair {
  explicit socket_pair(net::io_context& io, bool inq = true) : ours(io), peer(io) {
    tcp::acceptor acceptor(io, {net::ip::make_address("127.0.0.1"), 0});
    peer.connect(acceptor.local_endpoint());
    acceptor.accept(ours);
    if (inq) REQUIRE(enable_edge_reads(ours));
  }
  tcp::socket ours;
  tcp::socket peer;
};

struct result {
  std::optional<boost::system::error_code> ec;
  std::string bytes;
};

std::uint64_t empty_tries() { return edge_reads_found_nothing.load(); }

/// Runs io until done() or 5 s pass; whether done() held.
bool run_until(net::io_context& io, const std::function<bool()>& done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  io.restart();
  while (!done() && std::chrono::steady_clock::now() < until) io.run_for(std::chrono::milliseconds(20));
  return done();
}

/// Reads `ours` with async_read_edge, `size` bytes at a time, until a read ends in an error (eof
/// included): what came is in `got`, the error in `end`.
struct read_to_end {
  read_to_end(net::io_context& io, tcp::socket& ours, std::size_t size) : reactor(edge_reactor(io)), socket(ours), size(size) {}
  void start() {
    async_read_edge(reactor, socket, net::buffer(buf.data(), size), [this](boost::system::error_code ec, std::size_t n) {
      got.append(buf.data(), n);
      if (ec) {
        end = ec;
      } else {
        start();
      }
    });
  }
  net::detail::reactor& reactor;
  tcp::socket& socket;
  std::size_t size;
  std::array<char, 64> buf{};
  std::string got;
  std::optional<boost::system::error_code> end;
};

}  // namespace

TEST_CASE("edge read: after a read that drains the socket, the next waits for the edge without trying, and bytes "
          "that came in between are read at once",
          "[adapters][edge_read]") {
  net::io_context io;
  auto& reactor = edge_reactor(io);
  socket_pair s(io);
  std::array<char, 64> buf{};
  result first, second, third;

  // A first read on a fresh socket tries at once, finds nothing, and waits: one empty try.
  const auto before = empty_tries();
  async_read_edge(reactor, s.ours, net::buffer(buf), [&](boost::system::error_code ec, std::size_t n) {
    first.ec = ec;
    first.bytes.assign(buf.data(), n);
    // 5 bytes, none left: the socket is drained. The next read waits for the edge: no try.
    async_read_edge(reactor, s.ours, net::buffer(buf), [&](boost::system::error_code ec2, std::size_t n2) {
      second.ec = ec2;
      second.bytes.assign(buf.data(), n2);
    });
  });
  CHECK(empty_tries() == before + 1);
  io.poll();
  CHECK_FALSE(first.ec);
  net::write(s.peer, net::buffer("hello", 5));
  REQUIRE(run_until(io, [&] { return first.ec.has_value(); }));
  CHECK_FALSE(*first.ec);
  CHECK(first.bytes == "hello");
  io.poll();
  CHECK_FALSE(second.ec);
  CHECK(empty_tries() == before + 1);  // the second read did not try the drained socket
  net::write(s.peer, net::buffer("world", 5));
  REQUIRE(run_until(io, [&] { return second.ec.has_value(); }));
  CHECK_FALSE(*second.ec);
  CHECK(second.bytes == "world");
  CHECK(empty_tries() == before + 1);

  // Bytes that come after a drained read and before the next one starts: the edge was seen, so
  // the next read takes them at once.
  net::write(s.peer, net::buffer("again", 5));
  io.restart();
  {
    const auto work = net::make_work_guard(io);  // so that poll() runs the reactor
    io.poll();  // the reactor sees the edge with no read waiting
  }
  io.restart();  // the guard's end stopped the loop (no work left)
  async_read_edge(reactor, s.ours, net::buffer(buf), [&](boost::system::error_code ec, std::size_t n) {
    third.ec = ec;
    third.bytes.assign(buf.data(), n);
  });
  io.poll();
  REQUIRE(third.ec);
  CHECK_FALSE(*third.ec);
  CHECK(third.bytes == "again");
  CHECK(empty_tries() == before + 1);
}

TEST_CASE("edge read: bytes and the peer's FIN that come together end in eof at once", "[adapters][edge_read]") {
  // Both reach the socket before the reactor collects their edge: one edge for both. The read that
  // takes the bytes is told a FIN is left, so the next one tries and finds the end, instead of
  // waiting for an edge that never comes.
  for (const std::size_t size : {std::size_t{64}, std::size_t{4}}) {
    net::io_context io;
    socket_pair s(io);
    read_to_end r(io, s.ours, size);
    r.start();
    io.poll();  // the read waits: the reactor will collect one edge for what follows
    REQUIRE(r.got.empty());
    net::write(s.peer, net::buffer("last", 4));
    s.peer.shutdown(tcp::socket::shutdown_send);
    CHECK(run_until(io, [&] { return r.end.has_value(); }));
    CHECK(r.got == "last");
    REQUIRE(r.end);
    CHECK(*r.end == net::error::eof);
  }
}

TEST_CASE("edge read: bytes and a reset that come together end in the reset at once, not in a wait",
          "[adapters][edge_read]") {
  // A reset leaves no bytes and no FIN for the kernel's count, so the read that takes the bytes sees
  // "nothing left"; the edge's own events (EPOLLHUP, EPOLLERR) are what tell it to let the next
  // read try. Two orders: the read already waiting when both come (the edge performs it), and the
  // edge collected by the reactor with no read waiting (the read is tried when it starts).
  for (const bool waiting : {true, false}) {
    CAPTURE(waiting);
    net::io_context io;
    socket_pair s(io);
    read_to_end r(io, s.ours, 64);
    if (waiting) {
      r.start();
      io.poll();  // the read waits for the edge
      REQUIRE(r.got.empty());
    }
    net::write(s.peer, net::buffer("last", 4));
    s.peer.set_option(net::socket_base::linger(true, 0));
    s.peer.close();  // a reset, right behind the bytes
    if (!waiting) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // both in before the reactor looks
      io.restart();
      {
        const auto work = net::make_work_guard(io);
        io.poll();  // the reactor collects the edge: no read waits for it
      }
      io.restart();
      r.start();
    }
    CHECK(run_until(io, [&] { return r.end.has_value(); }));
    CHECK(r.got == "last");
    REQUIRE(r.end);
    CHECK(*r.end == net::error::connection_reset);
  }
}

TEST_CASE("edge read: without TCP_INQ every read tries at once, as Asio's do", "[adapters][edge_read]") {
  net::io_context io;
  auto& reactor = edge_reactor(io);
  socket_pair s(io, false);
  std::array<char, 64> buf{};
  result first, second;
  net::write(s.peer, net::buffer("hello", 5));
  async_read_edge(reactor, s.ours, net::buffer(buf), [&](boost::system::error_code ec, std::size_t n) {
    first.ec = ec;
    first.bytes.assign(buf.data(), n);
  });
  REQUIRE(run_until(io, [&] { return first.ec.has_value(); }));
  CHECK(first.bytes == "hello");
  const auto before = empty_tries();
  async_read_edge(reactor, s.ours, net::buffer(buf), [&](boost::system::error_code ec, std::size_t) { second.ec = ec; });
  CHECK(empty_tries() == before + 1);  // tried, found nothing
  s.peer.close();
  REQUIRE(run_until(io, [&] { return second.ec.has_value(); }));
  CHECK(*second.ec == net::error::eof);
}

TEST_CASE("edge read: a read that fills its buffer leaves the socket to the next read's try, which takes the rest",
          "[adapters][edge_read]") {
  net::io_context io;
  auto& reactor = edge_reactor(io);
  socket_pair s(io);
  net::write(s.peer, net::buffer("12345678", 8));
  std::array<char, 4> buf{};
  std::string got;
  int reads = 0;
  std::function<void()> read_next = [&] {
    async_read_edge(reactor, s.ours, net::buffer(buf), [&](boost::system::error_code ec, std::size_t n) {
      REQUIRE_FALSE(ec);
      got.append(buf.data(), n);
      if (++reads < 2) read_next();
    });
  };
  read_next();
  CHECK(run_until(io, [&] { return reads == 2; }));
  CHECK(got == "12345678");
}

TEST_CASE("edge read: end of stream, cancel(), close(), and a loop torn down with a read pending",
          "[adapters][edge_read]") {
  std::array<char, 16> buf{};
  SECTION("the peer closes: eof") {
    net::io_context io;
    socket_pair s(io);
    result r;
    async_read_edge(edge_reactor(io), s.ours, net::buffer(buf), [&](boost::system::error_code ec, std::size_t n) {
      r.ec = ec;
      r.bytes.assign(buf.data(), n);
    });
    s.peer.close();
    io.run();
    REQUIRE(r.ec);
    CHECK(*r.ec == net::error::eof);
    CHECK(r.bytes.empty());
  }
  SECTION("cancel() and close() abort a waiting read") {
    for (const bool close : {false, true}) {
      net::io_context io;
      socket_pair s(io);
      result r;
      async_read_edge(edge_reactor(io), s.ours, net::buffer(buf),
                      [&](boost::system::error_code ec, std::size_t) { r.ec = ec; });
      io.poll();
      CHECK_FALSE(r.ec);
      if (close) {
        s.ours.close();
      } else {
        s.ours.cancel();
      }
      io.run();
      REQUIRE(r.ec);
      CHECK(*r.ec == net::error::operation_aborted);
    }
  }
  SECTION("a read on a closed socket fails at once") {
    net::io_context io;
    socket_pair s(io);
    s.ours.close();
    result r;
    async_read_edge(edge_reactor(io), s.ours, net::buffer(buf), [&](boost::system::error_code ec, std::size_t) { r.ec = ec; });
    io.run();
    REQUIRE(r.ec);
    CHECK(*r.ec);
  }
  SECTION("a loop torn down with a read pending destroys its handler unrun") {
    auto held = std::make_shared<int>(0);
    bool ran = false;
    {
      net::io_context io;
      socket_pair s(io);
      async_read_edge(edge_reactor(io), s.ours, net::buffer(buf),
                      [&ran, held](boost::system::error_code, std::size_t) { ran = true; });
      io.poll();
      CHECK(held.use_count() == 2);
    }
    CHECK(held.use_count() == 1);
    CHECK_FALSE(ran);
  }
}

TEST_CASE("edge read: the read's state is made in the handler's memory and given back before the handler runs",
          "[adapters][edge_read][op_memory]") {
  net::io_context io;
  socket_pair s(io);
  op_memory m;
  std::array<char, 16> buf{};
  std::size_t got = 0;
  bool in_use_in_handler = true;
  // A handler like a transfer's: two shared pointers.
  auto a = std::make_shared<int>(1), b = std::make_shared<int>(2);
  async_read_edge(edge_reactor(io), s.ours, net::buffer(buf),
                  net::bind_allocator(op_allocator<void>(m), [&, a, b](boost::system::error_code ec, std::size_t n) {
                    REQUIRE_FALSE(ec);
                    got = n;
                    in_use_in_handler = m.in_use();
                  }));
  CHECK(m.in_use());  // the pending read lives in the memory
  net::write(s.peer, net::buffer("hello", 5));
  io.run();
  CHECK(got == 5);
  CHECK_FALSE(in_use_in_handler);
  CHECK_FALSE(m.in_use());
}

TEST_CASE("edge read: the handler runs with one clock reading kept, and what runs after it reads the clock anew",
          "[adapters][edge_read][loop_clock]") {
  net::io_context io;
  socket_pair s(io);
  net::write(s.peer, net::buffer(std::string("x")));
  std::array<char, 8> buf{};
  std::optional<std::chrono::steady_clock::time_point> first, second;
  async_read_edge(edge_reactor(io), s.ours, net::buffer(buf), [&](boost::system::error_code ec, std::size_t) {
    REQUIRE_FALSE(ec);
    first = loop_clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    second = loop_clock::now();
  });
  REQUIRE(run_until(io, [&] { return second.has_value(); }));
  CHECK(*first == *second);
  const auto after = loop_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  CHECK(loop_clock::now() - after >= std::chrono::milliseconds(2));
  CHECK(after - *first >= std::chrono::milliseconds(2));
}
