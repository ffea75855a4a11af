// A client's request as the handlers read it: its start line, its header fields in order and its
// body. A head read in one pass (protocol/http1_head.hpp) is copied once, and its method, target
// and fields are views into that copy: no allocation and no index insertion a field, as Beast's
// basic_fields makes. Every other head is read by Beast's parser and copied in the same form.
// A connection keeps one and fills it again for each request, so its storage is reused.
#pragma once

#include <boost/beast/http/field.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/verb.hpp>

#include <cstddef>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tollgate::gateway {

/// A request's body. Read from the client, its bytes go straight into storage that nothing fills
/// first: sizing a std::string writes zeros over all of it (resize_and_overwrite is C++23), a
/// memset as long as the prompt. A body made elsewhere (Beast's parser, a translation) is moved
/// in as a string instead.
class request_body {
 public:
  request_body() = default;
  // Not copied or moved: data_ may point into moved_'s own (short string) storage.
  request_body(const request_body&) = delete;
  request_body& operator=(const request_body&) = delete;

  std::string_view view() const { return {data_, size_}; }
  operator std::string_view() const { return view(); }
  const char* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  /// Sizes it to n bytes that the caller writes, all of them, through the pointer returned
  /// (storage this body already holds when it is large enough, else new storage, unfilled).
  char* overwrite(std::size_t n);
  /// Takes s as the body.
  request_body& operator=(std::string&& s);
  /// Empties it; storage past kept bytes is given back (a large block to this thread's shelf,
  /// where the next large body written on this thread finds it).
  void clear(std::size_t kept);
  /// Bytes this thread's shelf holds for large bodies.
  static std::size_t shelved_bytes();

 private:
  void release_raw();

  std::unique_ptr<char[]> raw_;  // what overwrite() sizes
  std::size_t raw_capacity_ = 0;
  std::string moved_;            // what operator= took
  const char* data_ = "";        // into one of the two
  std::size_t size_ = 0;
};

class client_request {
 public:
  /// One header field, as sent (the name's case kept, the value without its surrounding spaces).
  class field {
   public:
    std::string_view name_string() const { return name_; }
    std::string_view value() const { return value_; }
    /// The known field this name is (http::field::unknown for others), looked up on each call.
    boost::beast::http::field name() const { return boost::beast::http::string_to_field(name_); }

   private:
    friend class client_request;
    std::string_view name_;
    std::string_view value_;
  };
  using const_iterator = const field*;

  /// The fields of one name (any case), in order: a forward iterator over them.
  class named_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = field;
    using difference_type = std::ptrdiff_t;
    using pointer = const field*;
    using reference = const field&;
    named_iterator() = default;
    named_iterator(const field* at, const field* end, std::string_view name) : at_(at), end_(end), name_(name) {
      skip();
    }
    reference operator*() const { return *at_; }
    pointer operator->() const { return at_; }
    named_iterator& operator++() {
      ++at_;
      skip();
      return *this;
    }
    named_iterator operator++(int) {
      named_iterator was = *this;
      ++*this;
      return was;
    }
    bool operator==(const named_iterator& o) const { return at_ == o.at_; }

   private:
    void skip() {
      while (at_ != end_ && !same_name(at_->name_, name_)) ++at_;
    }
    const field* at_ = nullptr;
    const field* end_ = nullptr;
    std::string_view name_;
  };

  // Reading (what the handlers use; the names follow Beast's message).

  boost::beast::http::verb method() const { return method_; }
  std::string_view method_string() const { return method_string_; }
  std::string_view target() const { return target_; }
  unsigned version() const { return version_; }
  /// Whether the connection stays open after this request (Beast's keep_alive() of the head).
  bool keep_alive() const { return keep_alive_; }
  request_body& body() { return body_; }
  const request_body& body() const { return body_; }

  const_iterator begin() const { return fields_.data(); }
  const_iterator end() const { return fields_.data() + fields_.size(); }
  /// The first field of that name (any case), or end().
  const_iterator find(std::string_view name) const;
  const_iterator find(boost::beast::http::field name) const {
    const auto s = boost::beast::http::to_string(name);
    return find(std::string_view(s.data(), s.size()));
  }
  std::pair<named_iterator, named_iterator> equal_range(std::string_view name) const {
    return {named_iterator(begin(), end(), name), named_iterator(end(), end(), name)};
  }

  // Filling (the session's).

  /// Empties it for the next request; its storage is kept, up to a short request's size (a
  /// large body's or head's is given back).
  void clear();
  /// Keeps a copy of a whole head's bytes and returns it: read_head() over the copy gives the
  /// views that set_start() and add_field() take.
  std::string_view keep_head(std::string_view head) {
    head_.assign(head);
    return head_;
  }
  /// method and target: views into keep_head()'s copy.
  void set_start(std::string_view method, std::string_view target, unsigned version, bool keep_alive);
  /// name and value: views into keep_head()'s copy.
  void add_field(std::string_view name, std::string_view value) {
    field& f = fields_.emplace_back();
    f.name_ = name;
    f.value_ = value;
  }
  /// Takes a request read by Beast's parser: its head copied, its body moved.
  void assign(boost::beast::http::request<boost::beast::http::string_body>&& msg);

 private:
  /// ASCII letters compared without case (field names are tokens: ASCII only). Inline: most
  /// names a lookup meets differ in length.
  static bool same_name(std::string_view a, std::string_view b) {
    return a.size() == b.size() && same_letters(a.data(), b.data(), a.size());
  }
  static bool same_letters(const char* a, const char* b, std::size_t n);

  std::string head_;  // the bytes the views point into
  std::vector<field> fields_;
  std::string_view method_string_;
  std::string_view target_;
  boost::beast::http::verb method_ = boost::beast::http::verb::unknown;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  request_body body_;
};

}  // namespace tollgate::gateway
