#include "protocol/wire.hpp"

#include <random>

namespace tollgate::protocol {

std::string sse_event(std::string_view name, std::string_view data) {
  std::string out;
  out.reserve(name.size() + data.size() + 16);
  if (!name.empty()) out.append("event: ").append(name).append("\n");
  out.append("data: ").append(data).append("\n\n");
  return out;
}

sse_fields parse_sse_event(std::string_view event) {
  sse_fields out;
  while (!event.empty()) {
    const std::size_t line_end = std::min(event.find_first_of("\r\n"), event.size());
    std::string_view line = event.substr(0, line_end);
    std::size_t next = line_end;
    if (next < event.size()) next += event.substr(next, 2) == "\r\n" ? 2 : 1;
    event.remove_prefix(next);
    const std::size_t colon = std::min(line.find(':'), line.size());
    const std::string_view field = line.substr(0, colon);
    std::string_view value = line.substr(std::min(colon + 1, line.size()));
    if (value.starts_with(' ')) value.remove_prefix(1);
    if (field == "event") {
      out.name.assign(value);
    } else if (field == "data") {
      if (out.data) out.data->append("\n").append(value);
      else out.data.emplace(value);
    }
  }
  return out;
}

std::string random_id(std::string_view prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char hex[] = "0123456789abcdef";
  std::string out(prefix);
  for (int half = 0; half < 2; ++half) {
    std::uint64_t v = rng();
    for (int i = 0; i < 12; ++i, v >>= 4) out.push_back(hex[v & 15]);
  }
  return out;
}

}  // namespace tollgate::protocol
