// The tollgate-engine command line: generate (ids and text), tokenize, make-tiny, make-tokenizer,
// logits, --help, and
// exit code 2 with a message for bad arguments.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "local_engine/forward_backend.hpp"
#include "tokenizer/tokenizer.hpp"
#include "tests/engine/test_support.hpp"

namespace t = tollgate::engine::test;
using Catch::Matchers::Contains;

namespace {

struct result {
  int code;
  std::string out;
};

// Runs the CLI through the shell with stderr folded into the output.
result cli(const std::string& args, const std::string& stdin_file = "") {
  std::string cmd = std::string("'") + TOLLGATE_ENGINE_BIN + "' " + args + " 2>&1";
  if (!stdin_file.empty()) cmd += " < '" + stdin_file + "'";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace

TEST_CASE("cli: make-tiny then generate reproduces the golden greedy tokens", "[engine][cli]") {
  t::temp_dir dir;
  const auto ck = (dir.path() / "ck").string();
  auto r = cli("make-tiny --recipe '" + t::recipe_path("v2_greedy").string() + "' --out '" + ck + "'");
  REQUIRE(r.code == 0);
  const auto golden = nlohmann::json::parse(t::read_text(std::string(TOLLGATE_SOURCE_DIR) + "/tests/engine/goldens/v2_greedy.json"));
  std::string ids;
  for (const auto& x : golden["greedy"]["prompt"]) ids += (ids.empty() ? "" : ",") + std::to_string(x.get<int>());
  r = cli("generate --checkpoint '" + ck + "' --prompt-tokens " + ids + " --max-tokens 10 --ignore-eos --json");
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  std::vector<int> expect(golden["greedy"]["tokens"].begin(), golden["greedy"]["tokens"].begin() + 10);
  CHECK(j["tokens"].get<std::vector<int>>() == expect);
  CHECK(j["finish_reason"] == "length");
  CHECK(j.contains("text"));

  r = cli("generate --checkpoint '" + ck + "' --prompt 'Hi there' --chat --max-tokens 4 --temperature 0.8 --top-p 0.9 "
          "--top-k 20 --seed 3 --stop zzz --json");
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out)["tokens"].size() <= 4);

  // tokenize: special tokens in the text are matched, nothing is added.
  const auto in = dir.path() / "in.json";
  t::write_text(in, R"(["Hi <｜User｜>", ""])");
  r = cli("tokenize --tokenizer '" + ck + "/tokenizer.json'", in.string());
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out) == nlohmann::json::parse("[[75,108,35,259],[]]"));
  t::write_text(in, R"({"not": "an array"})");
  r = cli("tokenize --tokenizer '" + ck + "/tokenizer.json'", in.string());
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("JSON array of strings"));
}

TEST_CASE("cli: bad arguments exit with 2 and say why", "[engine][cli]") {
  t::temp_dir dir;
  const auto ck = (dir.path() / "ck").string();
  REQUIRE(cli("make-tiny --recipe '" + t::recipe_path("v3_bf16").string() + "' --out '" + ck + "'").code == 0);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "usage"},
      {"frobnicate", "unknown command"},
      {"generate --prompt-tokens 1", "--checkpoint DIR is required"},
      {"generate --checkpoint " + ck, "one of --prompt or --prompt-tokens"},
      {"generate --checkpoint " + ck + " --prompt-tokens 1,x", "not a valid integer"},
      {"generate --checkpoint " + ck + " --prompt-tokens 1 --max-tokens", "needs a value"},
      {"generate --checkpoint " + ck + " --prompt-tokens 1 --top-p 2", "--top-p"},
      {"generate --checkpoint " + ck + " --prompt-tokens 1 --temperature -1", "--temperature"},
      {"generate --checkpoint " + ck + " --prompt-tokens 99999", "outside the vocabulary"},
      {"generate --checkpoint " + ck + " --prompt-tokens 1 --bogus", "unknown option --bogus"},
      {"make-tiny --recipe x.json", "--out DIR are required"},
      {"bench", "--checkpoint DIR and/or --v2-lite-layer"},
      {"bench --runs 0 --v2-lite-layer", "--runs must be positive"},
      {"tokenize", "--tokenizer FILE is required"},
  };
  for (const auto& [args, msg] : cases) {
    const auto r = cli(args);
    INFO(args << "\n" << r.out);
    CHECK(r.code == 2);
    CHECK_THAT(r.out, Contains(msg));
  }
  // Failures that are not usage errors exit with 1.
  auto r = cli("generate --checkpoint '" + dir.str() + "/absent' --prompt-tokens 1");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("not a checkpoint folder"));
  if (!tollgate::engine::built_with_cuda()) {
    r = cli("generate --checkpoint " + ck + " --prompt-tokens 1 --device cuda:0");
    CHECK(r.code == 1);
    CHECK_THAT(r.out, Contains("device 'cuda:0': this build has no CUDA backend"));
  }
  r = cli("generate --checkpoint " + ck + " --prompt-tokens 1 --dtype bfloat16");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("float32 only"));
  r = cli("generate --checkpoint " + ck + " --prompt-tokens 1 --kv-cache-memory -3");
  CHECK(r.code == 2);
  r = cli("bench --checkpoint " + ck + " --batch 1,x");
  CHECK(r.code == 2);
  const auto bad = dir.path() / "bad.json";
  t::write_text(bad, R"({"seed": 1, "config": {"model_type": "deepseek_v3", "hidden_size": -4}})");
  r = cli("make-tiny --recipe '" + bad.string() + "' --out '" + dir.str() + "/b'");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("hidden_size"));
  for (const char* c : {"--help", "generate --help", "tokenize --help", "make-tiny --help", "bench --help", "logits --help", "make-tokenizer --help"}) {
    r = cli(c);
    INFO(c);
    CHECK(r.code == 0);
    CHECK_THAT(r.out, Contains("usage: tollgate-engine"));
  }
}

TEST_CASE("cli: bench times prefill and batched decode as JSON lines", "[engine][cli]") {
  t::temp_dir dir;
  const auto ck = (dir.path() / "ck").string();
  REQUIRE(cli("make-tiny --recipe '" + t::recipe_path("v2_greedy").string() + "' --out '" + ck + "'").code == 0);
  auto r = cli("bench --checkpoint '" + ck + "' --device cpu --dtype float32 --kv-cache-memory 4000000 --prompt-len 20 "
               "--batch 1,3 --context 30 --decode 4 --runs 2 --prefill-chunk 8 2>/dev/null");
  REQUIRE(r.code == 0);
  std::vector<nlohmann::json> lines;
  std::stringstream in(r.out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line[0] == '{') lines.push_back(nlohmann::json::parse(line));
  REQUIRE(lines.size() == 3);
  CHECK(lines[0]["bench"] == "checkpoint");
  CHECK(lines[0]["prefill_tokens"] == 20);
  CHECK(lines[0]["prefill_tokens_per_s"].get<double>() > 0);
  CHECK(lines[0]["device"] == "cpu");
  for (int i : {1, 2}) {
    CHECK(lines[i]["bench"] == "checkpoint_decode");
    CHECK(lines[i]["context"] == 30);
    CHECK(lines[i]["decode_step_ms_runs"].size() == 4);
    CHECK(lines[i]["decode_tokens_per_s"].get<double>() > 0);
  }
  CHECK(lines[1]["batch"] == 1);
  CHECK(lines[2]["batch"] == 3);
  // A pool too small for the batch is a clear error.
  r = cli("bench --checkpoint '" + ck + "' --kv-cache-memory 50000 --batch 64 --context 200 --runs 1");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("raise --kv-cache-memory"));

  // Time to first token behind a shared prefix, prefix caching off and on.
  r = cli("bench --checkpoint '" + ck + "' --shared-prefix 100 --prompt-len 5 --runs 3 2>/dev/null");
  REQUIRE(r.code == 0);
  lines.clear();
  std::stringstream in2(r.out);
  for (std::string line; std::getline(in2, line);)
    if (!line.empty() && line[0] == '{') lines.push_back(nlohmann::json::parse(line));
  REQUIRE(lines.size() == 2);
  for (int i : {0, 1}) {
    CHECK(lines[i]["bench"] == "shared_prefix_ttft");
    CHECK(lines[i]["prefix_caching"] == (i == 1));
    CHECK(lines[i]["ttft_ms_runs"].size() == 3);
    CHECK(lines[i]["ttft_ms_median"].get<double>() > 0);
  }
  CHECK(lines[0]["hit_rate"] == 0.0);
  // The prefix's one full block of 64 positions is found: 64 of each 105-token prompt.
  CHECK(lines[1]["hit_rate"].get<double>() == Approx(64.0 / 105));
  CHECK(cli("bench --v2-lite-layer --shared-prefix 10").code == 2);
}

TEST_CASE("cli: logits are the goldens' teacher-forced logits, through prefill and decode alike", "[engine][cli]") {
  t::temp_dir dir;
  const auto ck = (dir.path() / "ck").string();
  REQUIRE(cli("make-tiny --recipe '" + t::recipe_path("v2_greedy").string() + "' --out '" + ck + "'").code == 0);
  const auto golden = nlohmann::json::parse(t::read_text(std::string(TOLLGATE_SOURCE_DIR) + "/tests/engine/goldens/v2_greedy.json"));
  const auto& p = golden["prompts"].back();
  const auto tokens = p["tokens"].get<std::vector<int>>();
  const auto tokens_path = dir.path() / "tokens.json";
  {
    std::ofstream(tokens_path) << nlohmann::json(tokens).dump();
  }
  // All positions in one prefill chunk, and the first 3 in a chunk then one decode step each.
  for (int prefill : {static_cast<int>(tokens.size()), 3}) {
    const auto out = (dir.path() / ("l" + std::to_string(prefill) + ".f32")).string();
    const auto r = cli("logits --checkpoint '" + ck + "' --tokens '" + tokens_path.string() + "' --out '" + out +
                       "' --prefill " + std::to_string(prefill));
    REQUIRE(r.code == 0);
    const std::string bytes = t::read_text(out);
    const size_t V = p["logits"][0].size();
    REQUIRE(bytes.size() == tokens.size() * V * sizeof(float));
    const float* got = reinterpret_cast<const float*>(bytes.data());
    for (size_t pos = 0; pos < tokens.size(); ++pos) {
      double num = 0, den = 0;
      for (size_t i = 0; i < V; ++i) {
        const double ref = p["logits"][pos][i].get<double>(), d = got[pos * V + i] - ref;
        num += d * d;
        den += ref * ref;
      }
      INFO("prefill " << prefill << ", position " << pos);
      CHECK(std::sqrt(num / den) < 1e-4);
    }
  }
  auto r = cli("logits --checkpoint '" + ck + "' --out x.f32");
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("--tokens FILE"));
  {
    std::ofstream(tokens_path) << "[1, 99999]";
  }
  r = cli("logits --checkpoint '" + ck + "' --tokens '" + tokens_path.string() + "' --out '" + (dir.path() / "x").string() + "'");
  CHECK(r.code == 2);  // bad input, like a bad argument
  CHECK_THAT(r.out, Contains("outside the vocabulary"));
}

TEST_CASE("cli: make-tokenizer covers the whole vocabulary with text", "[engine][cli]") {
  t::temp_dir dir;
  const auto path = (dir.path() / "tokenizer.json").string();
  REQUIRE(cli("make-tokenizer --vocab-size 20000 --out '" + path + "'").code == 0);
  const auto tok = tollgate::tokenizer::tokenizer::load(path);
  REQUIRE(tok->vocab_size() == 20000);
  for (int32_t id = 0; id < 20000; ++id) {
    const int32_t one[] = {id};
    INFO("id " << id);
    REQUIRE_FALSE(tok->decode(one).empty());
  }
  // Words of three lowercase letters after a space are two tokens each, and decode back.
  const std::string text = "abc xyz qqq";
  const auto ids = tok->encode(text);
  CHECK(ids.size() == 5);  // "abc" is one token; " xyz" and " qqq" two each
  CHECK(tok->decode(ids) == text);
  CHECK(cli("make-tokenizer --vocab-size 100 --out '" + path + "'").code == 1);
  CHECK(cli("make-tokenizer --out '" + path + "'").code == 2);
}

TEST_CASE("processes of the project map no cuBLAS until a CUDA backend is made", "[cli]") {
  // cuBLAS and cuBLASLt are some 700 MB: linked, every start (gateway, engine, each test) spent
  // about half a second and 200 MB mapping them. The CUDA backend opens them when it is made.
  std::ifstream maps("/proc/self/maps");
  REQUIRE(maps);
  std::string line;
  int lines = 0;
  while (std::getline(maps, line)) {
    ++lines;
    INFO(line);
    CHECK(line.find("libcublas") == std::string::npos);
  }
  CHECK(lines > 0);
}
