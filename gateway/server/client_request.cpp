#include "gateway/server/client_request.hpp"

#include <array>
#include <memory>

namespace tollgate::gateway {

namespace http = boost::beast::http;

namespace {

/// Storage past these is given back between requests, so that an idle connection holds no more
/// than a short request's: a large prompt or an unusual head is not kept while it waits.
constexpr std::size_t kept_body_bytes = 4096;
constexpr std::size_t kept_head_bytes = 8192;
constexpr std::size_t kept_fields = 64;

/// Large bodies' storage, kept by the thread that let go of it for its next large body. A fresh
/// block of a megabyte is pages the process does not have (glibc maps a block that large, or
/// grows a heap it gave back), and the kernel's faults on them cost as much as reading the body
/// (tests/perf/README.md, "Large bodies' storage kept"). Blocks from shelved_from up are kept, at
/// most shelf_blocks of them and shelf_bytes in all a thread; others are given back as before.
constexpr std::size_t shelved_from = 64 * 1024;  // smaller: malloc's own free lists serve them
constexpr std::size_t shelf_blocks = 4;
constexpr std::size_t shelf_bytes = 16 * 1024 * 1024;
constexpr std::size_t block_unit = 64 * 1024;  // large blocks' sizes rounded up: near sizes share

struct body_shelf {
  std::array<std::unique_ptr<char[]>, shelf_blocks> blocks;
  std::array<std::size_t, shelf_blocks> sizes{};
  std::size_t count = 0;
  std::size_t bytes = 0;

  /// The smallest kept block of at least n bytes, and its size; null if none is.
  std::unique_ptr<char[]> take(std::size_t n, std::size_t& size) {
    std::size_t best = count;
    for (std::size_t i = 0; i < count; ++i) {
      if (sizes[i] >= n && (best == count || sizes[i] < sizes[best])) best = i;
    }
    if (best == count) return nullptr;
    std::unique_ptr<char[]> out = std::move(blocks[best]);
    size = sizes[best];
    bytes -= size;
    --count;
    blocks[best] = std::move(blocks[count]);
    sizes[best] = sizes[count];
    return out;
  }

  /// Keeps the block where there is room; else leaves it to its owner, which frees it.
  void put(std::unique_ptr<char[]>& block, std::size_t size) {
    if (size < shelved_from || count == shelf_blocks || bytes + size > shelf_bytes) return;
    blocks[count] = std::move(block);
    sizes[count] = size;
    ++count;
    bytes += size;
  }
};

constinit thread_local body_shelf shelf;

}  // namespace

std::size_t request_body::shelved_bytes() { return shelf.bytes; }

void request_body::release_raw() {
  shelf.put(raw_, raw_capacity_);
  raw_.reset();
  raw_capacity_ = 0;
}

char* request_body::overwrite(std::size_t n) {
  if (n > raw_capacity_) {
    release_raw();  // given back before the larger block is taken
    std::size_t size = 0;
    raw_ = shelf.take(n, size);
    if (!raw_) {
      size = n < shelved_from ? n : (n + block_unit - 1) / block_unit * block_unit;
      raw_ = std::make_unique_for_overwrite<char[]>(size);
    }
    raw_capacity_ = size;
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
  if (raw_capacity_ > kept) release_raw();
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
