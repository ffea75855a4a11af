// tollgate-fake-upstream: the test fake as a server of its own, for demos, e2e and benchmarks.
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>

#include "tests/support/fake_upstream.hpp"

int main(int argc, char** argv) {
  std::string host = "127.0.0.1";
  int port = 9001;
  int delay_ms = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if ((a == "--host") && i + 1 < argc) {
      host = argv[++i];
    } else if (a == "--port" && i + 1 < argc) {
      port = std::atoi(argv[++i]);
    } else if (a == "--delay-ms" && i + 1 < argc) {
      delay_ms = std::atoi(argv[++i]);
    } else {
      std::cerr << "usage: tollgate-fake-upstream [--host H] [--port N] [--delay-ms N]\n"
                   "An OpenAI-compatible echo server: chat, completions (stream or not), embeddings, models.\n";
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts: only sigwait sees them
  tollgate::test::fake_upstream fake(host, static_cast<std::uint16_t>(port));
  if (delay_ms > 0) {  // every answer waits this long before its first byte
    fake.set_default([delay_ms](const tollgate::test::recorded_request& r) {
      auto s = tollgate::test::fake_upstream::openai_default(r);
      s.header_delay = std::chrono::milliseconds(delay_ms);
      return s;
    });
  }
  std::cout << "listening on http://" << host << ":" << fake.port() << std::endl;
  int sig = 0;
  sigwait(&signals, &sig);
  return 0;
}
