// A libFuzzer target run without libFuzzer, in the ordinary build, so that CI exercises every
// target on each change: each file of its seed corpus, then random mutations of them (bit flips,
// byte changes, inserted syntax, deleted, repeated and spliced ranges) for a bounded time from a
// fixed seed. Not coverage-guided (tests/fuzz/run.sh is the real fuzzer); it keeps the targets
// building and their invariants holding on every change.
//
// usage: fuzz_replay_TARGET CORPUS_DIR [SECONDS=3] [SEED=1]
// A target that aborts or crashes leaves the input in ./fuzz-crash-TARGET and the test fails.
#include <fcntl.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) __attribute__((weak));

namespace {

std::vector<std::uint8_t> current;  // the input being run, written out if it crashes the target
std::string crash_path;

void on_crash(int sig) {
  const int fd = ::open(crash_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    ssize_t ignored = ::write(fd, current.data(), current.size());
    (void)ignored;
    ::close(fd);
  }
  const char msg[] = "fuzz replay: the target crashed; its input is in fuzz-crash-*\n";
  ssize_t ignored = ::write(2, msg, sizeof msg - 1);
  (void)ignored;
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void run(const std::vector<std::uint8_t>& input) {
  current = input;
  LLVMFuzzerTestOneInput(current.data(), current.size());
}

// Pieces of the formats the targets read, so that mutations reach past the first syntax check.
const char* const dictionary[] = {"{", "}", "[", "]", "\"", ":", ",", "\\", "\\u0000", "\r\n", "\n\n", "\r\n\r\n",
                                  "data: ", "[DONE]", "event: ", "0", "-1", "1e308", "9223372036854775807",
                                  "\"usage\":", "\"messages\":", "\"model\":", "true", "null",
                                  "Transfer-Encoding: chunked", "Content-Length: ", "key: ${NL}", "<｜User｜>"};

std::vector<std::uint8_t> mutate(std::vector<std::uint8_t> x, const std::vector<std::vector<std::uint8_t>>& corpus,
                                 std::mt19937_64& rng) {
  auto pick = [&](std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(rng() % n); };
  const int edits = 1 + static_cast<int>(rng() % 8);
  for (int e = 0; e < edits; ++e) {
    switch (rng() % 7) {
      case 0:  // flip a bit
        if (!x.empty()) x[pick(x.size())] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // set a byte
        if (!x.empty()) x[pick(x.size())] = static_cast<std::uint8_t>(rng());
        break;
      case 2: {  // insert a piece of syntax
        const std::string d = dictionary[pick(std::size(dictionary))];
        x.insert(x.begin() + static_cast<std::ptrdiff_t>(pick(x.size() + 1)), d.begin(), d.end());
        break;
      }
      case 3: {  // delete a range
        if (x.empty()) break;
        const std::size_t at = pick(x.size()), n = 1 + pick(std::min<std::size_t>(x.size() - at, 64));
        x.erase(x.begin() + static_cast<std::ptrdiff_t>(at), x.begin() + static_cast<std::ptrdiff_t>(at + n));
        break;
      }
      case 4: {  // repeat a range (deep nesting, long runs)
        if (x.empty()) break;
        const std::size_t at = pick(x.size()), n = 1 + pick(std::min<std::size_t>(x.size() - at, 16));
        const std::vector<std::uint8_t> r(x.begin() + static_cast<std::ptrdiff_t>(at),
                                          x.begin() + static_cast<std::ptrdiff_t>(at + n));
        const std::size_t times = 1 + pick(200);
        for (std::size_t i = 0; i < times && x.size() < 65536; ++i)
          x.insert(x.begin() + static_cast<std::ptrdiff_t>(at), r.begin(), r.end());
        break;
      }
      case 5: {  // splice in a range of another corpus input
        const auto& o = corpus[pick(corpus.size())];
        if (o.empty()) break;
        const std::size_t at = pick(o.size()), n = 1 + pick(o.size() - at);
        x.insert(x.begin() + static_cast<std::ptrdiff_t>(pick(x.size() + 1)), o.begin() + static_cast<std::ptrdiff_t>(at),
                 o.begin() + static_cast<std::ptrdiff_t>(at + n));
        break;
      }
      default:  // truncate
        if (!x.empty()) x.resize(pick(x.size()));
        break;
    }
  }
  if (x.size() > 65536) x.resize(65536);
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [SECONDS=3] [SEED=1]\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  const double seconds = argc > 2 ? std::atof(argv[2]) : 3.0;
  const std::uint64_t seed = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1;
  crash_path = "fuzz-crash-" + std::filesystem::path(argv[0]).filename().string();
  std::signal(SIGABRT, on_crash);
  std::signal(SIGSEGV, on_crash);
  std::signal(SIGBUS, on_crash);
  std::signal(SIGFPE, on_crash);
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);

  std::vector<std::vector<std::uint8_t>> corpus;
  std::error_code ec;
  for (const auto& f : std::filesystem::directory_iterator(dir, ec)) {
    std::ifstream in(f.path(), std::ios::binary);
    corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (ec || corpus.empty()) {
    std::fprintf(stderr, "fuzz replay: no corpus in %s\n", dir.c_str());
    return 2;
  }
  for (const auto& c : corpus) run(c);
  run({});
  std::mt19937_64 rng(seed);
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::uint64_t runs = corpus.size() + 1;
  while (std::chrono::steady_clock::now() < end) {
    for (int i = 0; i < 64; ++i, ++runs) run(mutate(corpus[rng() % corpus.size()], corpus, rng));
  }
  std::printf("fuzz replay: %zu corpus inputs and %llu runs in %.1f s, no failure\n", corpus.size(),
              static_cast<unsigned long long>(runs), seconds);
  return 0;
}
