#include "tests/support/http_client.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>

namespace tollgate::test {

namespace {

struct transfer {
  http_result* result;
  const http_options* options;
};

std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
  auto* t = static_cast<transfer*>(user);
  std::string line(data, size * count);
  const auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ')) value.erase(0, 1);
    while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) value.pop_back();
    t->result->headers[name] = value;
  }
  return size * count;
}

std::size_t on_write(char* data, std::size_t size, std::size_t count, void* user) {
  auto* t = static_cast<transfer*>(user);
  std::string piece(data, size * count);
  t->result->body += piece;
  if (t->options->on_data && !t->options->on_data(piece)) return 0;  // abort
  return size * count;
}

}  // namespace

http_client::http_client() : easy_(curl_easy_init()) {}
http_client::~http_client() { curl_easy_cleanup(static_cast<CURL*>(easy_)); }

http_result http_client::get(const std::string& url, const http_options& options) {
  return perform(url, nullptr, options);
}

http_result http_client::post(const std::string& url, const std::string& body, const http_options& options) {
  return perform(url, &body, options);
}

http_result http_client::perform(const std::string& url, const std::string* body, const http_options& options) {
  CURL* easy = static_cast<CURL*>(easy_);
  http_result result;
  transfer t{&result, &options};
  curl_easy_reset(easy);
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, options.timeout_ms);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &on_header);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &on_write);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &t);
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Expect:");
  for (const auto& h : options.headers) headers = curl_slist_append(headers, h.c_str());
  if (body != nullptr) {
    headers = curl_slist_append(headers, "Content-Type: application/json");
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body->data());
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
  }
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
  if (!options.method.empty()) curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, options.method.c_str());
  const CURLcode code = curl_easy_perform(easy);
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &result.status);
  curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &result.new_connections);
  if (code != CURLE_OK) result.error = curl_easy_strerror(code);
  curl_slist_free_all(headers);
  return result;
}

}  // namespace tollgate::test
