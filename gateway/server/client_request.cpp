#include "gateway/server/client_request.hpp"

namespace tollgate::gateway {

namespace http = boost::beast::http;

namespace {

/// Storage past these is given back between requests, so that an idle connection holds no more
/// than a short request's: a large prompt or an unusual head is not kept while it waits.
constexpr std::size_t kept_body_bytes = 4096;
constexpr std::size_t kept_head_bytes = 8192;
constexpr std::size_t kept_fields = 64;

}  // namespace

char* request_body::overwrite(std::size_t n) {
  if (n > raw_capacity_) {
    raw_.reset();  // given back before the larger block is taken
    raw_capacity_ = 0;
    raw_ = std::make_unique_for_overwrite<char[]>(n);
    raw_capacity_ = n;
  }
  data_ = raw_ ? raw_.get() : "";
  size_ = n;
  return raw_.get();
}

request_body& request_body::operator=(std::string&& s) {
  moved_ = std::move(s);
  data_ = moved_.data();
  size_ = moved_.size();
  return *this;
}

void request_body::clear(std::size_t kept) {
  if (raw_capacity_ > kept) {
    raw_.reset();
    raw_capacity_ = 0;
  }
  if (moved_.capacity() > kept) {
    std::string().swap(moved_);
  } else {
    moved_.clear();
  }
  data_ = "";
  size_ = 0;
}

bool client_request::same_letters(const char* a, const char* b, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const char x = a[i], y = b[i];
    if (x == y) continue;
    const char lx = (x >= 'A' && x <= 'Z') ? static_cast<char>(x + ('a' - 'A')) : x;
    const char ly = (y >= 'A' && y <= 'Z') ? static_cast<char>(y + ('a' - 'A')) : y;
    if (lx != ly) return false;
  }
  return true;
}

client_request::const_iterator client_request::find(std::string_view name) const {
  for (const field& f : fields_) {
    if (same_name(f.name_, name)) return &f;
  }
  return end();
}

void client_request::clear() {
  if (fields_.capacity() > kept_fields) {
    std::vector<field>().swap(fields_);
  } else {
    fields_.clear();
  }
  if (head_.capacity() > kept_head_bytes) std::string().swap(head_);
  method_string_ = {};
  target_ = {};
  method_ = http::verb::unknown;
  version_ = 11;
  keep_alive_ = true;
  body_.clear(kept_body_bytes);
}

void client_request::set_start(std::string_view method, std::string_view target, unsigned version, bool keep_alive) {
  method_string_ = method;
  method_ = http::string_to_verb(method);
  target_ = target;
  version_ = version;
  keep_alive_ = keep_alive;
}

void client_request::assign(http::request<http::string_body>&& msg) {
  clear();
  const auto method = msg.method_string();
  const auto target = msg.target();
  std::size_t size = method.size() + target.size();
  for (const auto& f : msg) size += f.name_string().size() + f.value().size();
  head_.clear();
  head_.reserve(size);  // the appends below do not move what the views point into
  const auto keep = [this](auto s) {
    const std::size_t at = head_.size();
    head_.append(s.data(), s.size());
    return std::string_view(head_.data() + at, s.size());
  };
  const std::string_view m = keep(method);
  const std::string_view t = keep(target);
  for (const auto& f : msg) {
    const std::string_view name = keep(f.name_string());
    add_field(name, keep(f.value()));
  }
  method_string_ = m;
  method_ = msg.method();
  target_ = t;
  version_ = msg.version();
  keep_alive_ = msg.keep_alive();
  body_ = std::move(msg.body());
}

}  // namespace tollgate::gateway
