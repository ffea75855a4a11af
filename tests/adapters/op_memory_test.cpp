// op_memory: an object's memory for its one operation in flight. Its own rules, and a real read on
// a loopback socket whose state Asio makes there (so the memory is large enough for the read that
// a transfer issues; if Asio's operation grows past it, this fails rather than silently
// falling back to the heap).
#include <catch2/catch.hpp>

#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <memory>

#include "adapters/op_memory.hpp"

using namespace tollgate::adapters;
namespace net = boost::asio;

TEST_CASE("op memory: one operation at a time in the object's memory, others on the heap", "[adapters][op_memory]") {
  op_memory m;
  CHECK_FALSE(m.in_use());
  void* first = m.allocate(200);
  CHECK(m.in_use());
  void* second = m.allocate(200);  // while the first is alive
  CHECK(second != first);
  void* large = op_allocator<char>(m).allocate(4096);  // larger than the memory
  CHECK(large != first);
  m.deallocate(second);
  CHECK(m.in_use());
  op_allocator<char>(m).deallocate(static_cast<char*>(large), 4096);
  m.deallocate(first);
  CHECK_FALSE(m.in_use());
  CHECK(m.allocate(320) == first);  // the memory again, its whole size
  m.deallocate(first);
  CHECK(op_allocator<int>(m) == op_allocator<char>(m));
}

TEST_CASE("op memory: a socket read's state is made there and given back before its handler runs",
          "[adapters][op_memory]") {
  net::io_context io;
  net::ip::tcp::acceptor acceptor(io, {net::ip::make_address("127.0.0.1"), 0});
  net::ip::tcp::socket client(io), server(io);
  client.connect(acceptor.local_endpoint());
  acceptor.accept(server);

  op_memory m;
  std::array<char, 16> buf{};
  std::size_t got = 0;
  bool in_use_in_handler = true;
  // A handler like a transfer's: two shared pointers.
  auto a = std::make_shared<int>(1), b = std::make_shared<int>(2);
  server.async_read_some(net::buffer(buf), net::bind_allocator(op_allocator<void>(m), [&, a, b](boost::system::error_code ec,
                                                                                               std::size_t n) {
                           REQUIRE_FALSE(ec);
                           got = n;
                           in_use_in_handler = m.in_use();
                         }));
  CHECK(m.in_use());  // the pending read lives in the memory
  net::write(client, net::buffer("hello", 5));
  io.run();
  CHECK(got == 5);
  CHECK_FALSE(in_use_in_handler);  // freed before the handler ran: the handler may read again
  CHECK_FALSE(m.in_use());
}
