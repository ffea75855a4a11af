// What reading a chat request's body costs a byte, by the language of its text: the one pass that
// checks the JSON and finds the fields routing needs (parse_request_body), over a body of about
// `--kb` KB whose user message is one kind of text. Prints the thread's CPU time a body (median of
// `--rounds` rounds; CPU time, so that a loaded machine stretches it little), ns a byte and GB/s.
//
//   tollgate-bench-scan [--kb 1024] [--rounds 7] [--text NAME] [--cache hot|cold|copied|received]
//     (NAME: one of the texts below)
//
// Where the body is when the scan starts (`--cache`): `hot`, the same body every time, so in the
// caches after the first parse; `cold`, one of copies filling 512 MB in turn, so read from memory;
// `copied`, one of those copies written into the parsed buffer just before (not timed);
// `received`, one of those copies sent by another thread over a loopback TCP connection and read
// into the parsed buffer just before (not timed), as the gateway reads a body from its client.
// The last two differ where the kernel's copy to user memory leaves the bytes elsewhere in the
// caches than a copy in user space does.
//   valgrind --tool=callgrind tollgate-bench-scan --calls 10 --text NAME
//     (exactly that many parses and no timing, for instruction counts)
//
// The texts: English; Chinese (three bytes a character); Russian (two bytes a letter, ASCII
// spaces); French (ASCII with an accented letter every few words); English with a Chinese term
// and a dash in each sentence; English in lines (an escaped newline every 60 bytes); Chinese
// written as \u escapes, as Python's json.dumps writes it by default.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "protocol/json_body.hpp"

namespace {

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct text_kind {
  const char* name;
  std::string_view unit;  // repeated to the body's size
};

/// A chat request whose user message is `unit` repeated to about `bytes`, after a few words (as
/// tests/perf/bench.sh's prompts have: so the text does not begin where a step does).
std::string body_of(std::string_view unit, std::size_t bytes) {
  std::string text = "hello, how are you today?";
  while (text.size() < bytes) text += unit;
  return R"({"model":"m","max_tokens":512,"stream":false,"messages":[{"role":"system","content":"You are brief."},)"
         R"({"role":"user","content":")" +
         text + R"("}]})";
}

/// A loopback TCP connection: {the sending end, the receiving end}.
std::pair<int, int> loopback_pair() {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (listener < 0 || bind(listener, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("listen");
    std::exit(1);
  }
  const int out = socket(AF_INET, SOCK_STREAM, 0);
  if (out < 0 || connect(out, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    std::perror("connect");
    std::exit(1);
  }
  const int in = accept(listener, nullptr, nullptr);
  close(listener);
  return {out, in};
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t kb = 1024;
  int rounds = 7;
  std::string_view only;
  int calls = 0;
  std::string_view cache = "hot";
  std::string_view vectors;
  const auto usage = [] {
    std::fprintf(stderr,
                 "usage: tollgate-bench-scan [--kb 1024] [--rounds 7] [--text NAME] [--cache hot|cold|copied|received] "
                 "[--calls N] [--vectors sse2,avx2,avx512]\n");
    return 2;
  };
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view flag = argv[i];
    if (flag == "--kb") {
      kb = std::strtoul(argv[i + 1], nullptr, 10);
    } else if (flag == "--rounds") {
      rounds = std::atoi(argv[i + 1]);
    } else if (flag == "--text") {
      only = argv[i + 1];
    } else if (flag == "--cache") {
      cache = argv[i + 1];
    } else if (flag == "--calls") {
      calls = std::atoi(argv[i + 1]);
    } else if (flag == "--vectors") {
      vectors = argv[i + 1];
    } else {
      return usage();
    }
  }
  if (kb == 0 || rounds < 1 || (cache != "hot" && cache != "cold" && cache != "copied" && cache != "received")) {
    return usage();
  }
  // The scan's loops to time, each round taking each in turn: by default the widest the CPU has.
  using tollgate::protocol::scan_vectors;
  std::vector<scan_vectors> levels;
  for (std::string_view rest = vectors; !rest.empty();) {
    const std::string_view name = rest.substr(0, rest.find(','));
    rest.remove_prefix(std::min(rest.size(), name.size() + 1));
    const scan_vectors v = name == "sse2" ? scan_vectors::sse2 : name == "avx2" ? scan_vectors::avx2 : scan_vectors::avx512;
    if ((name != "sse2" && name != "avx2" && name != "avx512") || tollgate::protocol::use_scan_vectors(v) != v) {
      std::fprintf(stderr, "--vectors: '%.*s' is not one this CPU has\n", static_cast<int>(name.size()), name.data());
      return 2;
    }
    levels.push_back(v);
  }
  if (levels.empty()) levels.push_back(tollgate::protocol::widest_scan_vectors());
  const auto level_name = [](scan_vectors v) { return v == scan_vectors::sse2 ? "sse2" : v == scan_vectors::avx2 ? "avx2" : "avx512"; };
  const std::vector<text_kind> kinds = {
      {"english", "lorem ipsum dolor sit amet, consectetur adipiscing elit. "},
      {"chinese", "\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\xe7\xac\xa6\xef\xbc\x8c\xe6\xb5\x8b\xe8\xaf\x95\xe3\x80\x82"},
      {"russian", "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82, \xd0\xba\xd0\xb0\xd0\xba \xd0\xb4\xd0\xb5\xd0\xbb"
                  "\xd0\xb0? \xd0\xad\xd1\x82\xd0\xbe \xd1\x82\xd0\xb5\xd1\x81\xd1\x82. "},
      {"french", "Le caf\xc3\xa9 est tr\xc3\xa8s bon \xc3\xa0 Paris, o\xc3\xb9 l'\xc3\xa9t\xc3\xa9 dure. "},
      {"mixed", "Use the \xe4\xb8\xad\xe6\x96\x87 model for this \xe2\x80\x94 ok? lorem ipsum dolor sit amet, "
                "consectetur adipiscing elit sed do. "},
      {"lines", "lorem ipsum dolor sit amet, consectetur adipiscing elit sed\\n"},
      {"escaped", "\\u4e2d\\u6587\\u5b57\\u7b26\\uff0c\\u6d4b\\u8bd5\\u3002"},
  };
  std::printf("%-8s %10s %10s %8s %8s   (cache: %.*s)\n", "text", "bytes", "us/body", "ns/byte", "GB/s",
              static_cast<int>(cache.size()), cache.data());
  for (const auto& kind : kinds) {
    if (!only.empty() && only != kind.name) continue;
    const std::string body = body_of(kind.unit, kb * 1024);
    if (!tollgate::protocol::parse_request_body(body).fields) {
      std::fprintf(stderr, "the %s body was refused\n", kind.name);
      return 1;
    }
    if (calls > 0) {
      tollgate::protocol::use_scan_vectors(levels.front());
      for (int k = 0; k < calls; ++k) {
        if (!tollgate::protocol::parse_request_body(body).fields) std::abort();
      }
      std::printf("%-8s %10zu %d parses\n", kind.name, body.size(), calls + 1);
      continue;
    }
    // Copies to read from memory: more than any last-level cache holds.
    std::vector<std::string> copies;
    if (cache != "hot") copies.assign(std::max<std::size_t>(2, (std::size_t{512} << 20) / body.size()), body);
    std::string into(body.size(), ' ');
    std::size_t next = 0;
    // `received`: another thread sends the copies in turn, whole, until the connection closes.
    int receiving = -1;
    std::thread sender;
    if (cache == "received") {
      const auto [out, in] = loopback_pair();
      receiving = in;
      sender = std::thread([out = out, &copies] {
        for (std::size_t k = 0;; ++k) {
          const std::string& copy = copies[k % copies.size()];
          for (std::size_t sent = 0; sent < copy.size();) {
            const ssize_t n = send(out, copy.data() + sent, copy.size() - sent, MSG_NOSIGNAL);
            if (n <= 0) {
              close(out);
              return;
            }
            sent += static_cast<std::size_t>(n);
          }
        }
      });
    }
    std::vector<std::vector<double>> seconds(levels.size());
    for (int r = 0; r < rounds * static_cast<int>(levels.size()); ++r) {
      const std::size_t level = static_cast<std::size_t>(r) % levels.size();
      tollgate::protocol::use_scan_vectors(levels[level]);
      int n = 0;
      const double t0 = thread_cpu_seconds();
      double s = 0;
      double untimed = 0;
      do {
        std::string_view parsed_body = body;
        if (!copies.empty()) {
          const std::string& copy = copies[next++ % copies.size()];
          parsed_body = copy;
          if (cache != "cold") {  // the copy written into `into` (copied) or read into it (received), untimed
            const double c0 = thread_cpu_seconds();
            if (cache == "copied") {
              std::memcpy(into.data(), copy.data(), copy.size());
            } else {
              for (std::size_t got = 0; got < into.size();) {
                const ssize_t read = recv(receiving, into.data() + got, into.size() - got, 0);
                if (read <= 0) std::abort();
                got += static_cast<std::size_t>(read);
              }
            }
            parsed_body = into;
            untimed += thread_cpu_seconds() - c0;
          }
        }
        const auto parsed = tollgate::protocol::parse_request_body(parsed_body);
        if (!parsed.fields) std::abort();
        ++n;
        s = thread_cpu_seconds() - t0;
      } while (s - untimed < 0.2);
      seconds[level].push_back((s - untimed) / n);
    }
    if (sender.joinable()) {
      close(receiving);  // the sender's next send fails, and it ends
      sender.join();
    }
    for (std::size_t level = 0; level < levels.size(); ++level) {
      std::sort(seconds[level].begin(), seconds[level].end());
      const double t = seconds[level][seconds[level].size() / 2];
      const auto bytes = static_cast<double>(body.size());
      std::printf("%-8s %10zu %10.1f %8.3f %8.2f  %s\n", kind.name, body.size(), t * 1e6, t * 1e9 / bytes, bytes / t * 1e-9,
                  level_name(levels[level]));
    }
  }
  return 0;
}
