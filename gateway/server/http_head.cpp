#include "gateway/server/http_head.hpp"

#include <boost/beast/http/status.hpp>

#include <algorithm>
#include <charconv>
#include <cstring>

#include "protocol/http1_head.hpp"

namespace tollgate::gateway {

namespace http = boost::beast::http;

response_head_text::response_head_text(int status, std::string& storage) : text_(storage) {
  text_.clear();
  if (text_.capacity() > 4096) text_.shrink_to_fit();  // a connection keeps no large head
  text_.reserve(256);
  text_.append("HTTP/1.1 ");
  char code[8];
  const auto end = std::to_chars(code, code + sizeof code, status).ptr;
  text_.append(code, end);
  text_.push_back(' ');
  const auto reason = http::obsolete_reason(http::int_to_status(static_cast<unsigned>(status)));
  text_.append(reason == "<unknown-status>" ? std::string_view("Unknown") : std::string_view(reason.data(), reason.size()));
  text_.append("\r\n");
}

response_head_text& response_head_text::field(std::string_view name, std::string_view value) {
  // Grown once, then the pieces copied: four appends would each check for room.
  const std::size_t at = text_.size();
  text_.resize(at + name.size() + value.size() + 4);
  char* p = text_.data() + at;
  if (!name.empty()) std::memcpy(p, name.data(), name.size());
  p += name.size();
  *p++ = ':';
  *p++ = ' ';
  if (!value.empty()) std::memcpy(p, value.data(), value.size());
  p += value.size();
  *p++ = '\r';
  *p = '\n';
  return *this;
}

const std::string& response_head_text::finish(std::optional<std::size_t> content_length, bool keep_alive) {
  if (content_length) {
    char digits[24];
    const auto end = std::to_chars(digits, digits + sizeof digits, *content_length).ptr;
    text_.append("Content-Length: ").append(digits, end).append("\r\n");
  } else {
    text_.append("Transfer-Encoding: chunked\r\n");
  }
  if (!keep_alive) text_.append("Connection: close\r\n");
  text_.append("\r\n");
  return text_;
}

void transfer_codings::add(std::string_view list) {
  seen_ = true;
  while (!list.empty()) {
    const auto comma = list.find(',');
    std::string_view coding = list.substr(0, comma);
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    while (!coding.empty() && (coding.front() == ' ' || coding.front() == '\t')) coding.remove_prefix(1);
    while (!coding.empty() && (coding.back() == ' ' || coding.back() == '\t')) coding.remove_suffix(1);
    if (coding.empty()) continue;  // empty list elements are allowed and mean nothing
    ++codings_;
    chunked_ = coding.size() == 7 && std::equal(coding.begin(), coding.end(), "chunked", [](char a, char b) {
      return (a | 0x20) == b;
    });
  }
}

std::optional<fast_request> read_request_head(std::string_view buffered, std::uint64_t body_limit,
                                              client_request& req) {
  const std::size_t length = protocol::complete_head_length(buffered);
  if (length == 0) return std::nullopt;
  req.clear();
  // Read over the request's own copy: the fields are views into it, not into the buffer.
  const std::string_view copy = req.keep_head(buffered.substr(0, length));
  protocol::http1_head head;
  const bool taken = protocol::read_head(copy, true, head,
                                         [&](const protocol::head_field& f) { req.add_field(f.name, f.value); });
  if (!taken || head.chunked || head.content_length.value_or(0) > body_limit) return std::nullopt;
  req.set_start(head.method, head.target, static_cast<unsigned>(head.version), head.persistent());
  return fast_request{length, head.content_length.value_or(0)};
}

}  // namespace tollgate::gateway
