// Where a plain-http backend is and the header fields every request to a backend sends.
#include "adapters/http1_call.hpp"

#include <boost/beast/core/string.hpp>

#include <string_view>

namespace tollgate::adapters {

namespace beast = boost::beast;

http1_origin http1_origin::from(const config::backend_config& cfg) {
  http1_origin o;
  std::string_view rest = cfg.remote()->base_url;
  rest.remove_prefix(std::string_view("http://").size());
  const auto slash = rest.find('/');
  const std::string_view authority = rest.substr(0, slash);
  o.base_path = slash == std::string_view::npos ? std::string() : std::string(rest.substr(slash));
  while (!o.base_path.empty() && o.base_path.back() == '/') o.base_path.pop_back();
  std::string_view host = authority;
  std::string_view port;
  if (authority.starts_with('[')) {
    const auto close = authority.find(']');
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) port = authority.substr(close + 2);
  } else if (const auto colon = authority.find(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  o.host = std::string(host);
  if (!port.empty()) o.port = static_cast<std::uint16_t>(std::stoi(std::string(port)));
  o.pool_key = std::string(authority.starts_with('[') ? authority.substr(0, authority.find(']') + 1) : host) + ":" +
               std::to_string(o.port);
  o.timeouts = cfg.timeouts;
  for (bool stream : {true, false}) {
    std::string text;
    bool host_given = false;
    for (const auto& [name, value] : upstream_headers(cfg, stream)) {
      host_given = host_given || beast::iequals(name, "host");
      text.append(name).append(": ").append(value).append("\r\n");
    }
    if (!host_given) text = "Host: " + std::string(authority) + "\r\n" + text;
    (stream ? o.stream_headers : o.plain_headers) = std::move(text);
  }
  return o;
}

std::vector<std::pair<std::string, std::string>> upstream_headers(const config::backend_config& cfg, bool stream) {
  std::vector<std::pair<std::string, std::string>> out = {
      {"Content-Type", "application/json"},
      {"Accept", stream ? "text/event-stream" : "application/json"},
      {"User-Agent", "tollgate/" TOLLGATE_VERSION},
      // Answers are metered from their text and relayed with framing of our own: an encoded body
      // is refused (see the gateway's relay), so none is asked for.
      {"Accept-Encoding", "identity"},
  };
  const config::remote_backend_config& remote = *cfg.remote();
  if (!remote.api_key.empty()) out.emplace_back("Authorization", "Bearer " + remote.api_key);
  for (const auto& [name, value] : remote.headers) {
    std::erase_if(out, [&](const auto& h) { return beast::iequals(h.first, name); });
  }
  for (const auto& [name, value] : remote.headers) out.emplace_back(name, value);
  return out;
}

}  // namespace tollgate::adapters
