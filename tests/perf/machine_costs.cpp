// What the machine charges for the few things every proxied request does, so that proxy figures
// from different machines can be read side by side: a fine and a coarse clock reading, a system
// call that does nothing, an atomic add and a mutex taken and released (one thread, uncontended),
// and a 300-byte request and answer over a loopback TCP connection between two threads.
//
// A request through tollgate or nginx makes about four socket calls and, in tollgate, ten clock
// readings; on a VM whose kernel isolates its page tables (pti) a system call alone can cost
// 900 ns, against about 120 ns elsewhere, and that decides how much the proxies' user-space work
// weighs in a comparison (tests/perf/README.md, "A quiet 16-core machine").
//
//   tollgate-bench-machine                 (built with the tests)
//   g++ -O2 -static -pthread tests/perf/machine_costs.cpp -o DIR/machine_costs   (to carry it)
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <thread>

namespace {

using steady = std::chrono::steady_clock;

template <class F>
double ns_each(int n, F f) {
  const auto start = steady::now();
  for (int i = 0; i < n; ++i) f();
  return std::chrono::duration<double, std::nano>(steady::now() - start).count() / n;
}

bool full_io(int fd, char* data, std::size_t size, bool sending) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = sending ? ::send(fd, data + done, size - done, MSG_NOSIGNAL) : ::recv(fd, data + done, size - done, 0);
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

double cpu_us(const rusage& u, bool user) {
  const timeval& t = user ? u.ru_utime : u.ru_stime;
  return static_cast<double>(t.tv_sec) * 1e6 + static_cast<double>(t.tv_usec);
}

/// Round trips of a 300-byte message over loopback TCP, echoed by a second thread: the wall time
/// and the process's user and system CPU time (both threads) for each. False if the socket setup
/// failed.
bool loopback_round_trips(int n, double& wall_us, double& user_us, double& system_us) {
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return false;
  }
  const int client = ::socket(AF_INET, SOCK_STREAM, 0);
  if (client < 0 || ::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return false;
  const int server = ::accept(listener, nullptr, nullptr);
  if (server < 0) return false;
  const int one = 1;
  ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  constexpr std::size_t size = 300;
  std::thread echo([server, n] {
    char buffer[size];
    for (int i = 0; i < n; ++i) {
      if (!full_io(server, buffer, size, false) || !full_io(server, buffer, size, true)) return;
    }
  });
  char message[size];
  std::memset(message, 'x', size);
  rusage before{}, after{};
  ::getrusage(RUSAGE_SELF, &before);
  const auto start = steady::now();
  bool ok = true;
  for (int i = 0; i < n && ok; ++i) ok = full_io(client, message, size, true) && full_io(client, message, size, false);
  wall_us = std::chrono::duration<double, std::micro>(steady::now() - start).count() / n;
  ::getrusage(RUSAGE_SELF, &after);
  echo.join();
  user_us = (cpu_us(after, true) - cpu_us(before, true)) / n;
  system_us = (cpu_us(after, false) - cpu_us(before, false)) / n;
  ::close(client);
  ::close(server);
  ::close(listener);
  return ok;
}

}  // namespace

int main() {
  // As in the gateway, more than one thread: glibc takes a mutex without an atomic operation
  // until a process has started its second thread.
  std::thread([] {}).join();
  timespec ts{};
  long sink = 0;
  std::atomic<long> counter{0};
  std::mutex mutex;
  std::printf("| round | fine clock ns | coarse clock ns | system call ns | atomic add ns | mutex ns | loopback round trip us (user, system CPU) |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (int round = 1; round <= 3; ++round) {
    const double fine = ns_each(1'000'000, [&] {
      ::clock_gettime(CLOCK_MONOTONIC, &ts);
      sink += ts.tv_nsec;
    });
    const double coarse = ns_each(1'000'000, [&] {
      ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
      sink += ts.tv_nsec;
    });
    const double call = ns_each(200'000, [&] { sink += ::syscall(SYS_getppid); });
    const double atomic = ns_each(5'000'000, [&] { counter.fetch_add(1); });
    const double locked = ns_each(5'000'000, [&] {
      mutex.lock();
      mutex.unlock();
    });
    double wall = 0, user = 0, system = 0;
    if (!loopback_round_trips(20'000, wall, user, system)) {
      std::fprintf(stderr, "machine_costs: loopback TCP setup failed: %s\n", std::strerror(errno));
      return 1;
    }
    std::printf("| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f (%.1f, %.1f) |\n", round, fine, coarse, call, atomic, locked,
                wall, user, system);
  }
  return sink == 42 ? 2 : 0;  // keeps the readings from being optimised away
}
