// tollgate-engine: the local engine's command line. generate, tokenize, make-tiny, bench.
// Bad arguments print a message and exit with 2; failures at run time exit with 1.
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "local_engine/bench.hpp"
#include "local_engine/engine.hpp"
#include "local_engine/tiny_checkpoint.hpp"
#include "local_engine/tokenizer.hpp"

namespace eng = tollgate::engine;
using json = nlohmann::json;

namespace {

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* main_help =
    "usage: tollgate-engine COMMAND [OPTIONS]\n"
    "\n"
    "The Tollgate local inference engine (DeepSeek-V2/V3-style MoE; cpu reference backend, cuda:N in CUDA builds).\n"
    "\n"
    "commands:\n"
    "  generate   run a prompt through a checkpoint and print the continuation\n"
    "  tokenize   encode a JSON array of strings read from stdin\n"
    "  make-tiny  write a small random checkpoint from a recipe\n"
    "  bench      measure prefill and batched decode speed\n"
    "\n"
    "Run 'tollgate-engine COMMAND --help' for a command's options.\n";

const char* generate_help =
    "usage: tollgate-engine generate --checkpoint DIR (--prompt TEXT | --prompt-tokens 1,2,3) [options]\n"
    "\n"
    "  --checkpoint DIR      Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json)\n"
    "  --prompt TEXT         prompt text, encoded with the checkpoint's tokenizer\n"
    "  --prompt-tokens IDS   prompt as comma-separated token ids (needs no tokenizer)\n"
    "  --chat                wrap --prompt as one user message in the DeepSeek chat template\n"
    "  --max-tokens N        tokens to generate at most (default 64)\n"
    "  --temperature T       0 is greedy (default 0)\n"
    "  --top-p P             nucleus sampling mass in (0, 1] (default 1)\n"
    "  --top-k K             keep the K most likely tokens; 0 keeps all (default 0)\n"
    "  --seed S              sampling seed (default 0)\n"
    "  --stop STR            stop before this text (repeatable; needs a tokenizer)\n"
    "  --ignore-eos          keep going past the end-of-sentence token\n"
    "  --device DEV          cpu (default) or cuda:N (needs a CUDA build)\n"
    "  --dtype T             float32 or bfloat16 (default: float32 on cpu, bfloat16 on cuda)\n"
    "  --kv-cache-memory M   KV pool: bytes when > 1, else a fraction (default: 256 MiB on cpu, 0.9 of free GPU memory)\n"
    "  --json                print {\"tokens\": [...], \"text\": \"...\", \"finish_reason\": ...}\n";

const char* tokenize_help =
    "usage: tollgate-engine tokenize --tokenizer FILE < strings.json\n"
    "\n"
    "Reads a JSON array of strings on stdin and prints a JSON array of token-id arrays.\n"
    "Special tokens written in the text are matched; none are added.\n";

const char* make_tiny_help =
    "usage: tollgate-engine make-tiny --recipe FILE.json --out DIR\n"
    "\n"
    "Writes config.json and model.safetensors (and tokenizer.json when the recipe asks) into DIR,\n"
    "with weights drawn from the recipe's seed. See tests/engine/recipes/ for examples.\n";

const char* bench_help =
    "usage: tollgate-engine bench [--checkpoint DIR] [--v2-lite-layer] [options]\n"
    "\n"
    "Times the backend's batched forward directly: the prefill of one prompt, then decode steps of\n"
    "one forward over B sequences that each hold --context positions.\n"
    "\n"
    "  --checkpoint DIR      prefill and decode tokens/s of this checkpoint\n"
    "  --v2-lite-layer       time one MoE layer at DeepSeek-V2-Lite's shapes (random weights, ~2.3 GB, cpu)\n"
    "  --device DEV          cpu (default) or cuda:N\n"
    "  --dtype T             float32 or bfloat16 (default: the device's)\n"
    "  --kv-cache-memory M   KV pool: bytes when > 1, else a fraction\n"
    "  --prompt-len N        prefill length for --checkpoint (default 64)\n"
    "  --batch B[,B...]      decode batch sizes (default 1)\n"
    "  --context N           positions each sequence holds before the timed decode (default 256)\n"
    "  --decode N            timed decode steps per batch size (default 32)\n"
    "  --prefill-chunk N     chunk size that fills the decode contexts (default 2048)\n"
    "  --runs N              prefill runs; medians are reported (default 5)\n"
    "  --shared-prefix N     with --checkpoint: time to first token through the scheduler of prompts of\n"
    "                        one shared N-token prefix plus --prompt-len fresh tokens, prefix caching\n"
    "                        off and on (one line each) instead of the forward timings\n"
    "  --random-weights-seed S  cuda: weights drawn on the GPU from S (the folder needs only config.json)\n"
    "Threads: TOLLGATE_ENGINE_THREADS (default: all cores). Prints one JSON line for the prefill and\n"
    "one per decode batch size.\n";

bool is_help(std::string_view a) { return a == "-h" || a == "--help" || a == "help"; }

class args {
 public:
  args(int argc, char** argv, int first) : v_(argv + first, argv + argc) {}
  bool empty() const { return i_ >= v_.size(); }
  std::string_view next() { return v_[i_++]; }
  std::string value(std::string_view flag) {
    if (empty()) throw usage_error(std::string(flag) + " needs a value");
    return std::string(next());
  }

 private:
  std::vector<std::string_view> v_;
  size_t i_ = 0;
};

template <typename T>
T parse_number(std::string_view flag, const std::string& s) {
  T v{};
  const char* b = s.data();
  const char* e = s.data() + s.size();
  std::from_chars_result r;
  if constexpr (std::is_floating_point_v<T>) {
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size()) throw usage_error(std::string(flag) + ": not a number: " + s);
    return static_cast<T>(d);
  } else {
    r = std::from_chars(b, e, v);
    if (r.ec != std::errc() || r.ptr != e) throw usage_error(std::string(flag) + ": not a valid integer: " + s);
    return v;
  }
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::string_view rest = s;
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    std::string part(rest.substr(0, comma));
    while (!part.empty() && part.front() == ' ') part.erase(part.begin());
    while (!part.empty() && part.back() == ' ') part.pop_back();
    ids.push_back(parse_number<int32_t>("--prompt-tokens", part));
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  if (ids.empty()) throw usage_error("--prompt-tokens: no ids");
  return ids;
}

double parse_kv_memory(std::string_view flag, const std::string& v) {
  const double d = parse_number<double>(flag, v);
  if (!(d >= 0)) throw usage_error(std::string(flag) + " must be >= 0 (bytes, or a fraction)");
  return d;
}

int cmd_generate(args& a) {
  std::string checkpoint;
  eng::backend_options bo;
  std::optional<std::string> prompt, prompt_tokens;
  bool chat = false, as_json = false;
  eng::sampling s;
  eng::generate_options go;
  go.max_tokens = 64;
  while (!a.empty()) {
    const auto f = a.next();
    if (is_help(f)) {
      std::cout << generate_help;
      return 0;
    } else if (f == "--checkpoint") checkpoint = a.value(f);
    else if (f == "--prompt") prompt = a.value(f);
    else if (f == "--prompt-tokens") prompt_tokens = a.value(f);
    else if (f == "--chat") chat = true;
    else if (f == "--json") as_json = true;
    else if (f == "--ignore-eos") go.stop_at_eos = false;
    else if (f == "--device") bo.device = a.value(f);
    else if (f == "--dtype") bo.dtype = a.value(f);
    else if (f == "--kv-cache-memory") bo.kv_cache_memory = parse_kv_memory(f, a.value(f));
    else if (f == "--max-tokens") {
      const auto n = parse_number<long long>(f, a.value(f));
      if (n < 0) throw usage_error("--max-tokens must be >= 0");
      go.max_tokens = static_cast<size_t>(n);
    } else if (f == "--temperature") s.temperature = parse_number<float>(f, a.value(f));
    else if (f == "--top-p") s.top_p = parse_number<float>(f, a.value(f));
    else if (f == "--top-k") s.top_k = parse_number<int>(f, a.value(f));
    else if (f == "--seed") s.seed = parse_number<uint64_t>(f, a.value(f));
    else if (f == "--stop") {
      auto v = a.value(f);
      if (v.empty()) throw usage_error("--stop needs a non-empty string");
      go.stop.push_back(std::move(v));
    } else throw usage_error("generate: unknown option " + std::string(f));
  }
  if (checkpoint.empty()) throw usage_error("generate: --checkpoint DIR is required");
  if (prompt.has_value() == prompt_tokens.has_value()) throw usage_error("generate: give one of --prompt or --prompt-tokens");
  if (chat && !prompt) throw usage_error("generate: --chat needs --prompt");
  if (!(s.temperature >= 0)) throw usage_error("--temperature must be >= 0");
  if (!(s.top_p > 0 && s.top_p <= 1)) throw usage_error("--top-p must be in (0, 1]");
  if (s.top_k < 0) throw usage_error("--top-k must be >= 0");
  std::vector<int32_t> ids;
  if (prompt_tokens) ids = parse_ids(*prompt_tokens);

  auto m = eng::load_model(checkpoint, bo);
  const auto tok = eng::model_tokenizer(*m);
  if (prompt) {
    if (!tok) throw std::runtime_error(checkpoint + ": no tokenizer.json; use --prompt-tokens");
    ids = chat ? eng::apply_chat_template(*m, {{"user", *prompt}}, true) : tok->encode(*prompt);
    if (ids.empty()) throw usage_error("generate: the prompt encodes to no tokens");
  }
  if (!go.stop.empty() && !tok) throw std::runtime_error(checkpoint + ": no tokenizer.json; --stop needs one");
  const auto r = eng::generate(m, ids, s, go);
  if (as_json) {
    json j = {{"tokens", r.tokens}, {"text", r.text}, {"finish_reason", r.finish_reason}, {"prompt_tokens", ids.size()}};
    std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  } else if (tok) {
    std::cout << r.text << "\n";
  } else {
    for (size_t i = 0; i < r.tokens.size(); ++i) std::cout << (i ? "," : "") << r.tokens[i];
    std::cout << "\n";
  }
  return 0;
}

int cmd_tokenize(args& a) {
  std::string path;
  while (!a.empty()) {
    const auto f = a.next();
    if (is_help(f)) {
      std::cout << tokenize_help;
      return 0;
    } else if (f == "--tokenizer") path = a.value(f);
    else throw usage_error("tokenize: unknown option " + std::string(f));
  }
  if (path.empty()) throw usage_error("tokenize: --tokenizer FILE is required");
  const std::string input(std::istreambuf_iterator<char>(std::cin), {});
  json in;
  try {
    in = json::parse(input);
  } catch (const json::exception& e) {
    throw usage_error(std::string("tokenize: stdin is not valid JSON: ") + e.what());
  }
  if (!in.is_array()) throw usage_error("tokenize: stdin must hold a JSON array of strings");
  for (const auto& x : in)
    if (!x.is_string()) throw usage_error("tokenize: every element of the array must be a string");
  const auto tok = eng::tokenizer::load(path);
  json out = json::array();
  for (const auto& x : in) out.push_back(tok->encode(x.get_ref<const std::string&>()));
  std::cout << out.dump() << "\n";
  return 0;
}

int cmd_make_tiny(args& a) {
  std::string recipe, out;
  while (!a.empty()) {
    const auto f = a.next();
    if (is_help(f)) {
      std::cout << make_tiny_help;
      return 0;
    } else if (f == "--recipe") recipe = a.value(f);
    else if (f == "--out") out = a.value(f);
    else throw usage_error("make-tiny: unknown option " + std::string(f));
  }
  if (recipe.empty() || out.empty()) throw usage_error("make-tiny: --recipe FILE and --out DIR are required");
  std::ifstream in(recipe, std::ios::binary);
  if (!in) throw usage_error("make-tiny: cannot read " + recipe);
  const std::string text(std::istreambuf_iterator<char>(in), {});
  eng::make_tiny_checkpoint(text, out);
  std::cerr << "wrote " << out << "\n";
  return 0;
}

int cmd_bench(args& a) {
  eng::bench_options o;
  auto positive = [](std::string_view f, const std::string& v) {
    const int n = parse_number<int>(f, v);
    if (n <= 0) throw usage_error(std::string(f) + " must be positive");
    return n;
  };
  while (!a.empty()) {
    const auto f = a.next();
    if (is_help(f)) {
      std::cout << bench_help;
      return 0;
    } else if (f == "--checkpoint") o.checkpoint = a.value(f);
    else if (f == "--v2-lite-layer") o.v2_lite_layer = true;
    else if (f == "--prompt-len") o.prompt_len = positive(f, a.value(f));
    else if (f == "--decode") o.decode_tokens = positive(f, a.value(f));
    else if (f == "--context") o.context = positive(f, a.value(f));
    else if (f == "--runs") o.runs = positive(f, a.value(f));
    else if (f == "--shared-prefix") o.shared_prefix = positive(f, a.value(f));
    else if (f == "--random-weights-seed") o.backend.random_weights_seed = parse_number<uint64_t>(f, a.value(f));
    else if (f == "--prefill-chunk") o.prefill_chunk = positive(f, a.value(f));
    else if (f == "--device") o.backend.device = a.value(f);
    else if (f == "--dtype") o.backend.dtype = a.value(f);
    else if (f == "--kv-cache-memory") o.backend.kv_cache_memory = parse_kv_memory(f, a.value(f));
    else if (f == "--batch") {
      o.batches.clear();
      const std::string all = a.value(f);
      std::string_view rest = all;
      while (!rest.empty()) {
        const size_t comma = rest.find(',');
        o.batches.push_back(positive(f, std::string(rest.substr(0, comma))));
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
      }
      if (o.batches.empty()) throw usage_error("--batch needs sizes, e.g. 1,16,64: got '" + all + "'");
    }
    else throw usage_error("bench: unknown option " + std::string(f));
  }
  if (o.checkpoint.empty() && !o.v2_lite_layer) throw usage_error("bench: give --checkpoint DIR and/or --v2-lite-layer");
  if (o.shared_prefix > 0 && o.checkpoint.empty()) throw usage_error("bench: --shared-prefix needs --checkpoint DIR");
  eng::run_bench(o, std::cout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << main_help;
    return 2;
  }
  const std::string_view cmd = argv[1];
  args a(argc, argv, 2);
  try {
    if (is_help(cmd)) {
      std::cout << main_help;
      return 0;
    }
    if (cmd == "generate") return cmd_generate(a);
    if (cmd == "tokenize") return cmd_tokenize(a);
    if (cmd == "make-tiny") return cmd_make_tiny(a);
    if (cmd == "bench") return cmd_bench(a);
    std::cerr << "tollgate-engine: unknown command '" << cmd << "'\n\n" << main_help;
    return 2;
  } catch (const usage_error& e) {
    std::cerr << "tollgate-engine: " << e.what() << "\n";
    return 2;
  } catch (const std::invalid_argument& e) {
    std::cerr << "tollgate-engine: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "tollgate-engine: " << e.what() << "\n";
    return 1;
  }
}
