#include "bench/options.hpp"

#include <charconv>
#include <cmath>

namespace tollgate::bench {

const std::string_view bench_help =
    "usage: tollgate bench --base-url URL --model M [--model M2 ...] [options]\n"
    "\n"
    "Sends chat requests to an OpenAI- or Anthropic-style endpoint (the gateway, a provider, a\n"
    "vLLM or SGLang server) and reports, per model and load level: success rate and errors by\n"
    "kind, TTFT p50/p90/p99, TPOT p50/p99, output tokens/s, requests/s, end-to-end latency, and\n"
    "cost when a price is known.\n"
    "\n"
    "target:\n"
    "  --base-url URL        the API's base, e.g. http://127.0.0.1:8080/v1 (requests go to\n"
    "                        URL/chat/completions, or URL/messages with --api anthropic)\n"
    "  --api-key KEY         sent as Authorization: Bearer (openai) or x-api-key (anthropic)\n"
    "  --api openai|anthropic  the protocol (default openai)\n"
    "  --model M             a model name; repeat for several, each is run in turn\n"
    "load (one run per model and level):\n"
    "  --concurrency LIST    closed loop: requests in flight at once, e.g. 1,8,32 (default 1)\n"
    "  --rate LIST           open loop: Poisson arrivals per second, e.g. 5,20 (instead of\n"
    "                        --concurrency); --max-in-flight N caps requests in flight\n"
    "  --requests N          requests per run (default 100)\n"
    "  --duration S          or: seconds per run; requests in flight at the end are awaited\n"
    "  --timeout S           per request (default 600)\n"
    "requests:\n"
    "  --prompt-tokens DIST  synthetic prompt lengths in tokens (default 256)\n"
    "  --max-tokens DIST     max_tokens of each request (default 128; with --dataset: the\n"
    "                        length of the dataset's own answer)\n"
    "  --dataset FILE        prompts from a ShareGPT-style JSON file instead of synthetic ones\n"
    "  --stream              stream the answers (needed for TTFT and TPOT)\n"
    "  --ignore-eos          add \"ignore_eos\": true (vLLM, SGLang) so answers reach max_tokens\n"
    "  --tokenizer FILE      tokenizer.json that counts prompt tokens (default: the gateway's)\n"
    "  --seed N              for prompts, lengths and arrivals (default 1)\n"
    "cost:\n"
    "  --price-in X --price-out Y  per million tokens\n"
    "  --currency C          of those prices, or the catalogue currency to look up (default CNY)\n"
    "  --config FILE         a gateway config: the price of the route serving each model\n"
    "                        (otherwise the built-in price catalogue, by base URL host and model)\n"
    "output:\n"
    "  --json FILE --csv FILE --html FILE   write the results there too\n"
    "  --quiet               no progress line on stderr\n"
    "\n"
    "DIST is N (always N), LO-HI (uniform over LO..HI) or normal:MEAN,SD (rounded, at least 1).\n"
    "Exit status: 0 when the runs completed (whatever the requests' outcome), 2 on bad usage.\n";

namespace {

template <class T>
std::optional<T> parse_number(std::string_view s) {
  T v{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  if constexpr (std::is_floating_point_v<T>) {
    if (!std::isfinite(v)) return std::nullopt;
  }
  return v;
}

template <class T>
std::optional<std::vector<T>> parse_list(std::string_view s) {
  std::vector<T> out;
  while (true) {
    const auto comma = s.find(',');
    const auto v = parse_number<T>(s.substr(0, comma));
    if (!v || *v <= 0) return std::nullopt;
    out.push_back(*v);
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
  return out;
}

}  // namespace

parse_result parse_options(const std::vector<std::string_view>& args) {
  parse_result r;
  bench_options o;
  auto fail = [&](std::string message) {
    r.error = std::move(message);
    return r;
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string_view a = args[i];
    if (a == "-h" || a == "--help") {
      r.help = true;
      return r;
    }
    if (a == "--stream") { o.stream = true; continue; }
    if (a == "--ignore-eos") { o.ignore_eos = true; continue; }
    if (a == "--quiet") { o.quiet = true; continue; }
    if (!a.starts_with("--")) return fail("unexpected argument '" + std::string(a) + "'");
    if (i + 1 >= args.size()) return fail(std::string(a) + " needs a value");
    const std::string_view v = args[++i];
    const std::string value(v);
    auto bad = [&](std::string_view what) { return fail(std::string(a) + ": '" + value + "' is not " + std::string(what)); };
    if (a == "--base-url") {
      if (!v.starts_with("http://") && !v.starts_with("https://")) return bad("an http:// or https:// URL");
      o.base_url = value;
      while (o.base_url.ends_with('/')) o.base_url.pop_back();
    } else if (a == "--api-key") {
      o.api_key = value;
    } else if (a == "--api") {
      if (v == "openai") o.api = api_kind::openai;
      else if (v == "anthropic") o.api = api_kind::anthropic;
      else return bad("openai or anthropic");
    } else if (a == "--model") {
      if (v.empty()) return bad("a model name");
      o.models.push_back(value);
    } else if (a == "--concurrency") {
      const auto l = parse_list<unsigned>(v);
      if (!l) return bad("a list of positive integers such as 1,8,32");
      o.concurrency = *l;
    } else if (a == "--rate") {
      const auto l = parse_list<double>(v);
      if (!l) return bad("a list of positive request rates such as 2,10");
      o.rates = *l;
    } else if (a == "--max-in-flight") {
      const auto n = parse_number<unsigned>(v);
      if (!n) return bad("a whole number");
      o.max_in_flight = *n;
    } else if (a == "--requests") {
      const auto n = parse_number<unsigned long>(v);
      if (!n || *n == 0) return bad("a positive whole number");
      o.requests = *n;
    } else if (a == "--duration") {
      const auto s = parse_number<double>(v);
      if (!s || *s <= 0) return bad("a positive number of seconds");
      o.duration_s = *s;
    } else if (a == "--timeout") {
      const auto s = parse_number<double>(v);
      if (!s || *s <= 0) return bad("a positive number of seconds");
      o.timeout_s = *s;
    } else if (a == "--prompt-tokens" || a == "--max-tokens") {
      const auto d = dist::parse(v);
      if (!d) return bad("a distribution: N, LO-HI or normal:MEAN,SD");
      (a == "--prompt-tokens" ? o.prompt_tokens : o.max_tokens.emplace()) = *d;
    } else if (a == "--dataset") {
      o.dataset = value;
    } else if (a == "--tokenizer") {
      o.tokenizer = value;
    } else if (a == "--seed") {
      const auto n = parse_number<unsigned long>(v);
      if (!n) return bad("a whole number");
      o.seed = *n;
    } else if (a == "--price-in" || a == "--price-out") {
      const auto p = parse_number<double>(v);
      if (!p || *p < 0) return bad("a price per million tokens");
      (a == "--price-in" ? o.price_in : o.price_out) = *p;
    } else if (a == "--currency") {
      o.currency = value;
    } else if (a == "--config") {
      o.config = value;
    } else if (a == "--json") {
      o.json_path = value;
    } else if (a == "--csv") {
      o.csv_path = value;
    } else if (a == "--html") {
      o.html_path = value;
    } else {
      return fail("unknown option '" + std::string(a) + "'");
    }
  }
  if (o.base_url.empty()) return fail("--base-url is required");
  if (o.models.empty()) return fail("--model is required");
  if (!o.rates.empty() && !o.concurrency.empty()) return fail("--rate and --concurrency exclude each other");
  if (o.max_in_flight != 0 && o.rates.empty()) return fail("--max-in-flight goes with --rate");
  if (o.requests && o.duration_s) return fail("--requests and --duration exclude each other");
  if (o.price_in.has_value() != o.price_out.has_value()) return fail("--price-in and --price-out go together");
  if (o.rates.empty() && o.concurrency.empty()) o.concurrency = {1};
  if (!o.requests && !o.duration_s) o.requests = 100;
  r.options = std::move(o);
  return r;
}

}  // namespace tollgate::bench
