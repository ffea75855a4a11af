// Helpers the translations share to read JSON defensively (private to protocol/).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "protocol/wire.hpp"

namespace tollgate::protocol {

/// Thrown inside a translation and caught at its top: the field it cannot carry over.
struct refusal {
  std::string param;
  std::string message;
};

/// A translation that a refusal stopped: the error names the field.
inline translated refused(const refusal& r) {
  return {{}, r.param.empty() ? r.message : r.param + ": " + r.message, r.param};
}

/// The member named key of an object, or nullptr.
inline const nlohmann::json* member(const nlohmann::json& j, std::string_view key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

/// A required string member; a refusal naming path when it is missing or not a string.
inline std::string string_member(const nlohmann::json& j, std::string_view key, const std::string& path) {
  const nlohmann::json* v = member(j, key);
  if (v == nullptr || v->is_null()) throw refusal{path, "Field required"};
  if (!v->is_string()) throw refusal{path, "must be a string"};
  return v->get<std::string>();
}

/// An integer member, 0 when absent or not a non-negative integer.
inline std::int64_t int_member(const nlohmann::json& j, std::string_view key) {
  const nlohmann::json* v = member(j, key);
  if (v == nullptr || !v->is_number_integer()) return 0;
  const auto n = v->get<std::int64_t>();
  return n < 0 ? 0 : n;
}

/// Refuses any member not in allowed, naming it.
inline void only_keys(const nlohmann::json& j, const std::string& path, std::initializer_list<std::string_view> allowed) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool ok = false;
    for (auto a : allowed) ok = ok || it.key() == a;
    if (!ok) {
      const std::string name = path.empty() ? it.key() : path + "." + it.key();
      throw refusal{name, "not supported by this translation (unknown or without an equivalent)"};
    }
  }
}

/// A client's "stream": true carried over to a chat request, which then asks for the usage chunk
/// (the gateway meters from it).
inline void stream_with_usage(const nlohmann::json& in, nlohmann::json& chat) {
  if (const nlohmann::json* s = member(in, "stream"); s != nullptr && s->is_boolean() && s->get<bool>()) {
    chat["stream"] = true;
    chat["stream_options"] = {{"include_usage", true}};
  }
}

/// Compact JSON; invalid UTF-8 from an upstream is replaced, never thrown about.
inline std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

/// A chat completions stream event as the stream translators read it: `chunk` holds its object
/// (null for [DONE], a comment, or data that is not an object), or `error` the message of an error
/// chunk (the error object itself when it has no message).
struct chat_stream_chunk {
  nlohmann::json chunk;
  std::string error;
  bool failed = false;
};
/// The same, for an event's data (nullopt: an event without data).
inline chat_stream_chunk read_chat_stream_data(const std::optional<std::string>& data) {
  chat_stream_chunk r;
  if (!data || *data == "[DONE]") return r;
  nlohmann::json chunk = nlohmann::json::parse(*data, nullptr, false);
  if (!chunk.is_object()) return r;
  if (const nlohmann::json* e = member(chunk, "error"); e != nullptr && !e->is_null()) {
    const nlohmann::json* m = e->is_object() ? member(*e, "message") : nullptr;
    r.error = m != nullptr && m->is_string() ? m->get<std::string>() : dump(*e);
    r.failed = true;
    return r;
  }
  r.chunk = std::move(chunk);
  return r;
}
inline chat_stream_chunk read_chat_stream_chunk(std::string_view sse) { return read_chat_stream_data(parse_sse_event(sse).data); }

}  // namespace tollgate::protocol
