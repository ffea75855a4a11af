// A request's result, handed once, when the request ends, to a fixed list of consumers: the
// limiter's settlement, the access log, the usage ledger and the metrics. Before them, metering
// completes the result: usage the upstream did not report is counted with the tokenizer, and the
// cost is priced. Each consumer reads the same result; none copies usage for another.
#pragma once

#include <string_view>

#include "gateway/server/request.hpp"

namespace tollgate::gateway {

/// body: the request's body (to count its prompt when no usage came back).
void publish(request_result& result, worker& w, std::string_view body);

}  // namespace tollgate::gateway
