// How fast a client that goes away cancels its upstream call: a client reads the first SSE chunk
// of a stream through the gateway and closes its socket; a raw upstream blocked in poll() notes
// when its connection from the gateway closes. Prints the distribution of that delay.
//
// Usage: build/tollgate-bench-cancel [ROUNDS]   (default 200; loopback only)
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "gateway/server/runtime.hpp"
#include "gateway/server/server.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

int listen_any(std::uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::listen(fd, 128);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  port = ntohs(addr.sin_port);
  return fd;
}

int connect_to(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return -1;
  return fd;
}

/// Reads until `marker` has been seen; false on EOF or error.
bool read_until(int fd, const char* marker) {
  std::string got;
  char buf[4096];
  while (got.find(marker) == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    got.append(buf, static_cast<std::size_t>(n));
  }
  return true;
}

void write_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<std::size_t>(n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 200;
  std::uint16_t up_port = 0;
  const int up_listener = listen_any(up_port);

  std::atomic<long long> detected_ns{0};
  std::atomic<int> served{0};
  std::thread upstream([&] {
    for (int i = 0; i < rounds; ++i) {
      const int c = ::accept(up_listener, nullptr, nullptr);
      if (c < 0) return;
      if (!read_until(c, "\r\n\r\n")) {
        ::close(c);
        continue;
      }
      write_all(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
      write_all(c, "d\r\ndata: first\n\n\r\n");
      served++;
      // Wait for the gateway to close this connection, and note when it does.
      pollfd p{c, POLLIN | POLLRDHUP, 0};
      while (::poll(&p, 1, 10000) > 0) {
        char buf[256];
        if (::recv(c, buf, sizeof buf, 0) <= 0) break;
      }
      detected_ns = clock_type::now().time_since_epoch().count();
      ::close(c);
    }
  });

  const std::string yaml = "server: {listen: \"127.0.0.1:0\", threads: 1, access_log: \"off\"}\n"
                           "keys: [{name: b, key: tg-bench}]\n"
                           "backends: [{name: raw, kind: openai, base_url: \"http://127.0.0.1:" +
                           std::to_string(up_port) +
                           "/v1\"}]\n"
                           "routes: [{model: m, targets: [{backend: raw}]}]\n";
  auto loaded = tollgate::config::load_string(yaml, "bench.yaml");
  tollgate::gateway::lasting_state lasting;
  auto rt = std::make_shared<const tollgate::gateway::runtime>(std::move(*loaded.value), lasting, 1);
  tollgate::gateway::server gw(rt);
  gw.start();

  const std::string body = R"({"model":"m","stream":true,"messages":[]})";
  const std::string request = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tg-bench\r\n"
                              "Content-Type: application/json\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body;
  std::vector<double> delays_us;
  for (int i = 0; i < rounds; ++i) {
    const int fd = connect_to(gw.port());
    write_all(fd, request);
    if (!read_until(fd, "data: first")) {
      std::fprintf(stderr, "round %d: no first chunk\n", i);
      return 1;
    }
    detected_ns = 0;
    const auto closed = clock_type::now();
    ::close(fd);
    while (detected_ns == 0) std::this_thread::sleep_for(std::chrono::microseconds(20));
    delays_us.push_back(static_cast<double>(detected_ns - closed.time_since_epoch().count()) / 1000.0);
  }
  gw.shutdown(std::chrono::seconds(1));
  ::shutdown(up_listener, SHUT_RDWR);
  ::close(up_listener);
  upstream.join();

  std::sort(delays_us.begin(), delays_us.end());
  auto pct = [&](double p) { return delays_us[static_cast<std::size_t>(p * (delays_us.size() - 1))]; };
  std::printf("client close -> upstream connection closed, %zu rounds: p50 %.0f us, p90 %.0f us, p99 %.0f us, max %.0f us\n",
              delays_us.size(), pct(0.5), pct(0.9), pct(0.99), delays_us.back());
  return 0;
}
