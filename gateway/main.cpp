// tollgate: the command line. serve, check-config, keys, bench, --help, --version.
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <boost/asio/steady_timer.hpp>

#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "bench/bench_cli.hpp"
#include "config/config.hpp"
#include "embedded_config.hpp"
#include "gateway/observability/health_prober.hpp"
#include "gateway/keys/keys_cli.hpp"
#include "gateway/server/runtime.hpp"
#include "gateway/server/server.hpp"

namespace {

namespace net = boost::asio;
using tollgate::config::load_result;

constexpr std::string_view usage_text =
    "usage: tollgate <command> [options]\n"
    "\n"
    "An OpenAI-compatible gateway that routes model names to LLM backends.\n"
    "\n"
    "commands:\n"
    "  serve [--config FILE]    run the gateway (without --config: the embedded demo config)\n"
    "  check-config FILE        check a config file; print every problem with file, line and key\n"
    "  keys create|list|update|revoke\n"
    "                           manage API keys in the config's store (tollgate keys --help)\n"
    "  bench --base-url URL --model M ...\n"
    "                           load-test an OpenAI- or Anthropic-style endpoint (tollgate bench --help)\n"
    "\n"
    "options:\n"
    "  -h, --help               show help (also after a command: tollgate serve --help)\n"
    "  -V, --version            show the version\n";

constexpr std::string_view serve_help =
    "usage: tollgate serve [--config FILE]\n"
    "\n"
    "Runs the gateway until SIGTERM or SIGINT, then stops accepting, lets in-flight requests\n"
    "finish for up to server.shutdown_timeout, and exits. ${VAR} in the config expands from the\n"
    "environment.\n"
    "\n"
    "With --config FILE, SIGHUP or any change to FILE reloads it: an invalid file is refused with\n"
    "its problems logged and the running config kept; requests in flight finish on the config they\n"
    "started with.\n"
    "\n"
    "Without --config the embedded demo config is used: a copy of config/examples/demo.yaml taken\n"
    "when tollgate was built. It has no file, so it never reloads, and no store. To edit a config\n"
    "and watch it reload, serve a file: deploy/demo.sh serves data/demo.yaml.\n";

constexpr std::string_view check_help =
    "usage: tollgate check-config FILE\n"
    "\n"
    "Loads and checks FILE as `serve` would. Exit 0 when it is valid; otherwise prints every\n"
    "problem as file:line:column: key: message and exits 1.\n";

bool is_help(std::string_view a) { return a == "-h" || a == "--help" || a == "help"; }

/// Loads a config file (or the embedded one) and runs every check, the runtime's included.
load_result load_checked(const std::string& path) {
  load_result r = path.empty() ? tollgate::config::load_string(tollgate::gateway::embedded_config, "<embedded>")
                               : tollgate::config::load_file(path);
  if (r.value) {
    auto more = tollgate::gateway::runtime_problems(*r.value);
    if (!more.empty()) {
      r.problems = std::move(more);
      r.value.reset();
    }
  }
  return r;
}

int print_problems(const load_result& r) {
  for (const auto& p : r.problems) std::cerr << p.to_string() << "\n";
  std::cerr << r.problems.size() << (r.problems.size() == 1 ? " problem" : " problems") << " found\n";
  return 1;
}

/// Warnings (a disabled backend, a route that will answer 503) do not stop a config loading.
void print_warnings(const load_result& r) {
  for (const auto& w : r.warnings) std::cerr << "warning: " << w.to_string() << "\n";
}

int check_config(const std::vector<std::string_view>& args) {
  if (!args.empty() && is_help(args[0])) {
    std::cout << check_help;
    return 0;
  }
  if (args.size() != 1) {
    std::cerr << check_help;
    return 2;
  }
  const auto result = load_checked(std::string(args[0]));
  if (!result.value) return print_problems(result);
  print_warnings(result);
  for (const auto& w : result.unpriced) std::cerr << "warning: " << w.to_string() << "\n";
  const auto& c = *result.value;
  std::size_t from_catalogue = 0;
  for (const auto& r : c.routes) {
    for (const auto& t : r.targets) from_catalogue += t.price_source == "catalogue" ? 1 : 0;
  }
  if (from_catalogue > 0) {
    std::cerr << "note: " << from_catalogue << (from_catalogue == 1 ? " target is" : " targets are")
              << " priced from the built-in catalogue (config/prices.yaml: list prices as of "
              << tollgate::config::price_catalogue_date() << "; check them against your provider)\n";
  }
  std::cout << args[0] << ": ok (" << c.backends.size() << " backends, " << c.routes.size() << " routes, "
            << c.keys.size() << " keys";
  if (!c.disabled_backends.empty()) std::cout << "; " << c.disabled_backends.size() << " backends disabled";
  std::cout << ")\n";
  return 0;
}

/// Large bodies (prompts and answers of a megabyte or more) are made and freed with each request.
/// glibc's default thresholds move: a freed mapped block raises the size above which blocks are
/// mapped to its own, and the heap's free top is given back to the kernel past twice that. Under
/// load a freed answer at the top of the heap is given back, and the next one faults its pages in
/// again: up to 256 faults a megabyte, and up to half of a 1 MB answer's CPU. Fixed thresholds keep
/// blocks up to 32 MB (glibc's largest) in the heap and up to 128 MB free at its top, which the
/// next large bodies reuse. GLIBC_TUNABLES naming a malloc setting leaves glibc's choice alone.
void keep_large_blocks() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && std::string_view(tunables).find("glibc.malloc.") != std::string_view::npos) return;
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024);
}

int serve(const std::vector<std::string_view>& args) {
  std::string path;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (is_help(args[i])) {
      std::cout << serve_help;
      return 0;
    }
    if (args[i] == "--config" && i + 1 < args.size()) {
      path = args[++i];
    } else if (args[i].starts_with("--config=")) {
      path = args[i].substr(9);
    } else {
      std::cerr << "tollgate serve: unexpected argument '" << args[i] << "'\n" << serve_help;
      return 2;
    }
  }
  load_result loaded = load_checked(path);
  if (!loaded.value) return print_problems(loaded);
  print_warnings(loaded);

  std::signal(SIGPIPE, SIG_IGN);
  net::io_context signals_io;
  net::signal_set signals(signals_io, SIGINT, SIGTERM, SIGHUP);
  const auto shutdown_timeout = loaded.value->server.shutdown_timeout;
  const auto workers = tollgate::gateway::worker_count(loaded.value->server);
  tollgate::gateway::lasting_state lasting;
  auto rt = std::make_shared<const tollgate::gateway::runtime>(std::move(*loaded.value), lasting, workers);
  std::unique_ptr<tollgate::gateway::server> srv;
  try {
    srv = std::make_unique<tollgate::gateway::server>(rt);
  } catch (const std::exception& e) {
    std::cerr << "tollgate: cannot start on " << rt->cfg.server.listen_host << ":" << rt->cfg.server.listen_port
              << ": " << e.what() << "\n";
    return 1;
  }
  keep_large_blocks();  // after the startup's own large blocks (the config's, the tokenizer's) went back
  srv->start();
  auto prober = std::make_unique<tollgate::gateway::health_prober>(srv->shared(), lasting.health);
  prober->start();
  std::cerr << "tollgate " TOLLGATE_VERSION " listening on http://" << rt->cfg.server.listen_host << ":" << srv->port()
            << " (" << rt->cfg.source << ", " << rt->routes.public_models().size() << " models)" << std::endl;

  auto refresh_keys = [&](bool only_if_changed = false) {
    try {
      if (only_if_changed) srv->shared().refresh_keys_if_changed();
      else srv->shared().refresh_keys();
    } catch (const std::exception& e) {
      std::cerr << "tollgate: keys not refreshed: " << e.what() << std::endl;
    }
  };

  // Reload: a new snapshot for new requests; requests in flight finish on the one they hold.
  auto reload = [&](const char* why) {
    load_result next = load_checked(path);
    if (!next.value) {
      std::cerr << "tollgate: reload (" << why << ") refused, keeping the running config:\n";
      print_problems(next);
      return;
    }
    print_warnings(next);
    const auto& old = srv->shared().current.load()->cfg.server;
    const auto& now = next.value->server;
    if (old.listen_host != now.listen_host || old.listen_port != now.listen_port || old.threads != now.threads ||
        old.access_log != now.access_log || old.access_log_skip != now.access_log_skip) {
      std::cerr << "tollgate: server.listen, server.threads and server.access_log(_skip) change only on restart"
                << std::endl;
    }
    auto fresh = std::make_shared<const tollgate::gateway::runtime>(std::move(*next.value), lasting, workers);
    std::cerr << "tollgate: reloaded " << fresh->cfg.source << " (" << why << ", " << fresh->routes.public_models().size()
              << " models)" << std::endl;
    srv->shared().current.store(std::move(fresh));
    refresh_keys();
  };

  // The file is watched by polling its modification time and size: cheap, and it also sees
  // editors that replace the file instead of writing it in place.
  namespace fs = std::filesystem;
  auto stamp = [&]() -> std::pair<fs::file_time_type, std::uintmax_t> {
    std::error_code ec;
    auto t = fs::last_write_time(path, ec);
    auto size = fs::file_size(path, ec);
    return {t, ec ? 0 : size};
  };
  auto last_stamp = path.empty() ? std::pair<fs::file_time_type, std::uintmax_t>{} : stamp();
  net::steady_timer watch(signals_io);
  // Each second: the config file, and the store's keys (`tollgate keys` may have changed them).
  std::function<void(boost::system::error_code)> on_watch = [&](boost::system::error_code ec) {
    if (ec) return;
    if (!path.empty()) {
      if (auto s = stamp(); s != last_stamp) {
        last_stamp = s;
        reload("file changed");
      }
    }
    refresh_keys(true);
    watch.expires_after(std::chrono::seconds(1));
    watch.async_wait(on_watch);
  };
  watch.expires_after(std::chrono::seconds(1));
  watch.async_wait(on_watch);

  std::function<void(boost::system::error_code, int)> on_signal = [&](boost::system::error_code ec, int sig) {
    if (ec) return;
    if (sig == SIGHUP) {
      if (path.empty()) {
        std::cerr << "tollgate: SIGHUP: the embedded config has no file to reload" << std::endl;
      } else {
        last_stamp = stamp();
        reload("SIGHUP");
      }
      signals.async_wait(on_signal);
      return;
    }
    watch.cancel();
    std::cerr << "tollgate: " << (sig == SIGTERM ? "SIGTERM" : "SIGINT") << ", draining for up to "
              << shutdown_timeout.count() << " ms" << std::endl;
  };
  signals.async_wait(on_signal);
  signals_io.run();

  prober.reset();
  const auto cut = srv->shutdown(shutdown_timeout);
  srv.reset();
  std::cerr << "tollgate: stopped" << (cut > 0 ? " (" + std::to_string(cut) + " requests cut off)" : "") << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string_view> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::cerr << usage_text;
    return 2;
  }
  const std::string_view command = args[0];
  args.erase(args.begin());
  if (is_help(command)) {
    std::cout << usage_text;
    return 0;
  }
  if (command == "-V" || command == "--version" || command == "version") {
    std::cout << "tollgate " TOLLGATE_VERSION "\n";
    return 0;
  }
  if (command == "serve") return serve(args);
  if (command == "check-config") return check_config(args);
  if (command == "keys") return tollgate::gateway::keys_command(args);
  if (command == "bench") return tollgate::bench::bench_command(args);
  std::cerr << "tollgate: unknown command '" << command << "'\n" << usage_text;
  return 2;
}
