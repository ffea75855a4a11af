#include "bench/bench_cli.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iostream>

#include "bench/options.hpp"
#include "bench/report.hpp"
#include "bench/runner.hpp"
#include "bench/workload.hpp"
#include "config/config.hpp"
#include "gateway/server/runtime.hpp"
#include "tokenizer/tokenizer.hpp"

namespace tollgate::bench {

namespace {

/// The price of `model`: the command line's, else the gateway config's route, else the catalogue.
std::optional<price> price_for(const bench_options& o, const std::optional<config::config>& cfg, const std::string& model) {
  if (o.price_in) return price{*o.price_in, *o.price_out, o.currency.empty() ? "CNY" : o.currency, "--price-in/--price-out"};
  if (cfg) {
    for (const auto& r : cfg->routes) {
      const bool named = r.model == model || std::find(r.aliases.begin(), r.aliases.end(), model) != r.aliases.end();
      if (!named) continue;
      for (const auto& t : r.targets)
        if (!t.price_source.empty())
          return price{t.price.input, t.price.output, cfg->currency,
                       "route " + r.model + " in " + o.config + " (" + t.price_source + ")"};
      return std::nullopt;
    }
  }
  const std::string currency = o.currency.empty() ? "CNY" : o.currency;
  if (auto p = config::catalogue_price(o.base_url, model, currency))
    return price{p->input, p->output, currency, "catalogue of " + config::price_catalogue_date()};
  return std::nullopt;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

bool write_file(const std::string& path, const std::function<void(std::ostream&)>& body) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (out) body(out);
  out.close();
  if (!out) {
    std::cerr << "tollgate bench: cannot write " << path << "\n";
    return false;
  }
  std::cerr << "tollgate bench: wrote " << path << "\n";
  return true;
}

}  // namespace

int bench_command(const std::vector<std::string_view>& args) {
  const parse_result parsed = parse_options(args);
  if (parsed.help) {
    std::cout << bench_help;
    return 0;
  }
  if (!parsed.options) {
    std::cerr << "tollgate bench: " << parsed.error << "\n(tollgate bench --help lists the options)\n";
    return 2;
  }
  const bench_options& o = *parsed.options;
  // A report that cannot be written is refused now, not after the runs.
  for (const std::string* path : {&o.json_path, &o.csv_path, &o.html_path}) {
    if (path->empty()) continue;
    const std::filesystem::path parent = std::filesystem::path(*path).parent_path();
    std::error_code ec;
    if (!parent.empty() && !std::filesystem::is_directory(parent, ec)) {
      std::cerr << "tollgate bench: cannot write " << *path << ": no folder " << parent.string() << "\n";
      return 2;
    }
  }

  std::optional<config::config> cfg;
  if (!o.config.empty()) {
    auto loaded = config::load_file(o.config);
    if (!loaded.value) {
      for (const auto& p : loaded.problems) std::cerr << p.to_string() << "\n";
      std::cerr << "tollgate bench: --config " << o.config << " is not a valid config\n";
      return 2;
    }
    cfg = std::move(loaded.value);
  }

  std::shared_ptr<const tokenizer::tokenizer> tok;
  const std::string tok_path = !o.tokenizer.empty() ? o.tokenizer : gateway::tokenizer_path_for(cfg ? *cfg : config::config{});
  if (!tok_path.empty()) {
    try {
      tok = tokenizer::tokenizer::load(tok_path);
    } catch (const std::exception& e) {
      std::cerr << "tollgate bench: " << e.what() << "\n";
      if (!o.tokenizer.empty()) return 2;
    }
  }
  if (!tok)
    std::cerr << "tollgate bench: no tokenizer (deploy/setup.sh fetches one; or --tokenizer FILE): prompt lengths are "
                 "counted in words, an estimate\n";

  std::vector<prompt> prompts;
  try {
    const std::size_t wanted = o.requests ? std::min<std::size_t>(*o.requests, 1000) : 1000;
    prompts = make_prompts(o, tok.get(), wanted);
  } catch (const std::exception& e) {
    std::cerr << "tollgate bench: " << e.what() << "\n";
    return 2;
  }

  std::unique_ptr<runner> r;
  try {
    r = std::make_unique<runner>(o, std::move(prompts), tok.get());
  } catch (const std::exception& e) {
    std::cerr << "tollgate bench: " << e.what() << "\n";
    return 2;
  }

  const bool tty = !o.quiet && isatty(STDERR_FILENO) == 1;
  double last_line = -1e9;
  auto on_progress = [&](const progress& p) {
    if (o.quiet) return;
    if (!tty && p.elapsed_s - last_line < 5) return;
    last_line = p.elapsed_s;
    const double rate = p.elapsed_s > 0 ? static_cast<double>(p.done - p.errors) / p.elapsed_s : 0;
    const double toks = p.elapsed_s > 0 ? static_cast<double>(p.output_tokens) / p.elapsed_s : 0;
    std::string line = "bench " + p.model + (p.open_loop ? " rate " + fixed(p.level, 2) + "/s" : " c=" + fixed(p.level, 0)) +
                       ": " + std::to_string(p.done) + (o.requests ? "/" + std::to_string(*o.requests) : "") + " done, " +
                       std::to_string(p.errors) + " errors, " + std::to_string(p.in_flight) + " in flight, " +
                       fixed(rate, 1) + " req/s, " + fixed(toks, 0) + " tok/s, " + fixed(p.elapsed_s, 1) + " s";
    if (tty) std::cerr << "\r\033[K" << line << std::flush;
    else std::cerr << line << "\n";
  };

  std::vector<summary> rows;
  std::vector<run_result> runs;
  const std::vector<double> levels = o.rates.empty() ? std::vector<double>(o.concurrency.begin(), o.concurrency.end()) : o.rates;
  for (const auto& model : o.models) {
    const auto p = price_for(o, cfg, model);
    for (double level : levels) {
      run_result result = r->run(model, level, on_progress);
      if (tty) std::cerr << "\r\033[K";
      summary s = summarize(result, p);
      if (!o.quiet)
        std::cerr << "bench " << model << (s.open_loop ? " rate " + fixed(level, 2) + "/s" : " c=" + fixed(level, 0)) << ": "
                  << s.succeeded << "/" << s.requests << " ok in " << fixed(s.duration_s, 2) << " s\n";
      rows.push_back(std::move(s));
      runs.push_back(std::move(result));
    }
  }

  write_table(std::cout, rows, o.stream);
  for (const auto& model : o.models) {
    if (!rows.empty() && std::none_of(rows.begin(), rows.end(), [&](const summary& s) { return s.model == model && s.unit_price; }))
      std::cout << "(no price known for " << model << ": --price-in/--price-out, or --config with the gateway's config)\n";
  }
  std::cout.flush();
  bool ok = true;
  if (!o.json_path.empty()) ok = write_file(o.json_path, [&](std::ostream& out) { write_json(out, o, rows); }) && ok;
  if (!o.csv_path.empty()) ok = write_file(o.csv_path, [&](std::ostream& out) { write_csv(out, rows); }) && ok;
  if (!o.html_path.empty()) ok = write_file(o.html_path, [&](std::ostream& out) { write_html(out, o, rows, runs); }) && ok;
  return ok ? 0 : 1;
}

}  // namespace tollgate::bench
