// The Responses API's objects, as both of its translators build them (the whole answer in
// responses_api.cpp, which defines these, and the stream in responses_stream.cpp). Internal to
// protocol/.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace tollgate::protocol::responses_detail {

std::int64_t unix_now();

/// The request's top-level settings that a response echoes (base_response), read without
/// building a tree of the rest. An object; empty when the body is not a JSON object.
nlohmann::json echoed_settings(std::string_view request_body);

/// The response object around an output, echoing the request's settings as OpenAI does.
nlohmann::json base_response(const nlohmann::json& req, const std::string& id, const std::string& model,
                             std::int64_t created, const std::string& status);

/// A response's usage from a chat answer's (null: zeros).
nlohmann::json response_usage(const nlohmann::json* u);

/// status and incomplete_details for a chat finish_reason.
void set_status(nlohmann::json& response, const std::string& finish);

nlohmann::json message_item(const std::string& id, const std::string& text, const char* status);
nlohmann::json reasoning_item(const std::string& id, const std::string& text);
nlohmann::json function_item(const std::string& id, const std::string& call_id, const std::string& name,
                             const std::string& args, const char* status);

}  // namespace tollgate::protocol::responses_detail
