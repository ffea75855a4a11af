// The demo upstream's /v1/embeddings answers what the openai SDKs and LangChain send by default:
// several inputs at once, and encoding_format base64.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cstring>

#include "tests/integration/gateway_fixture.hpp"

using namespace tollgate::test;
using json = nlohmann::json;

namespace {

/// Decodes standard base64 (with padding); the test's own, apart from the fake's encoder.
std::vector<unsigned char> unbase64(const std::string& text) {
  std::vector<unsigned char> out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = -1;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else if (c == '=') break;
    REQUIRE(v >= 0);
    acc = acc << 6 | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<unsigned char>(acc >> bits & 0xff));
    }
  }
  return out;
}

std::vector<float> floats_of(const std::string& b64) {
  const auto bytes = unbase64(b64);
  REQUIRE(bytes.size() % 4 == 0);
  std::vector<float> v(bytes.size() / 4);
  for (std::size_t i = 0; i < v.size(); ++i) {
    std::uint32_t bits = 0;
    for (int b = 0; b < 4; ++b) bits |= std::uint32_t(bytes[i * 4 + b]) << (8 * b);
    std::memcpy(&v[i], &bits, 4);
  }
  return v;
}

json post(const std::string& url, const std::string& body, long status = 200) {
  http_client c;
  auto r = c.post(url, body, gateway_fixture::auth());
  INFO(r.body);
  REQUIRE(r.status == status);
  return json::parse(r.body);
}

}  // namespace

TEST_CASE("fake upstream embeddings: lists of inputs, floats and base64", "[integration][fake]") {
  gateway_fixture f;
  const std::string url = f.a.base_url() + "/embeddings";

  const json floats = post(url, R"({"model":"m","input":["first text","second text","first text"]})");
  REQUIRE(floats["data"].size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(floats["data"][i]["index"] == i);
    CHECK(floats["data"][i]["object"] == "embedding");
    REQUIRE(floats["data"][i]["embedding"].size() == 3);
  }
  CHECK(floats["data"][0]["embedding"] == floats["data"][2]["embedding"]);  // same input, same vector
  CHECK(floats["data"][0]["embedding"] != floats["data"][1]["embedding"]);
  CHECK(floats["usage"]["prompt_tokens"].get<int>() > 0);

  const json b64 =
      post(url, R"({"model":"m","input":["first text","second text"],"encoding_format":"base64","dimensions":5})");
  REQUIRE(b64["data"].size() == 2);
  const auto v0 = floats_of(b64["data"][0]["embedding"].get<std::string>());
  REQUIRE(v0.size() == 5);
  // The first values of a longer vector are those of the shorter one: the same input's floats.
  for (std::size_t k = 0; k < 3; ++k) CHECK(v0[k] == floats["data"][0]["embedding"][k].get<float>());
  CHECK(floats_of(b64["data"][1]["embedding"].get<std::string>()).size() == 5);

  // Token ids: one list is one input, a list of lists is several.
  CHECK(post(url, R"({"model":"m","input":[1,2,3]})")["data"].size() == 1);
  CHECK(post(url, R"({"model":"m","input":[[1,2],[3],[4,5]]})")["data"].size() == 3);
  // What OpenAI refuses, the fake refuses.
  CHECK(post(url, R"({"model":"m","input":[]})", 400)["error"]["message"].is_string());
  CHECK(post(url, R"({"model":"m","input":"x","encoding_format":"int8"})", 400)["error"].is_object());
}

TEST_CASE("embeddings in base64 pass through the gateway unchanged", "[integration][fake]") {
  gateway_fixture f;
  const json direct = post(f.b.base_url() + "/embeddings",
                           R"({"model":"fam-embed","input":["a","b"],"encoding_format":"base64"})");
  const json via = post(f.base + "/v1/embeddings", R"({"model":"fam-embed","input":["a","b"],"encoding_format":"base64"})");
  CHECK(via["data"] == direct["data"]);
  REQUIRE(f.b.requests().size() == 2);
  CHECK(json::parse(f.b.requests()[1].body)["encoding_format"] == "base64");
}
