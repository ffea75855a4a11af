// A request's result, handed once, when the request ends, to a fixed list of consumers: the
// limiter's settlement, the access log, the usage ledger and the metrics. Before them, metering
// completes the result: usage the upstream did not report is counted with the tokenizer, and the
// cost is priced. Each consumer reads the same result; none copies usage for another.
#pragma once

#include <memory>
#include <string_view>

#include "gateway/server/request.hpp"

namespace tollgate::gateway {

/// Completes result and hands it to the consumers, then ends the request's count in flight
/// (server_shared::in_flight). Called on w's thread. The latency recorded is taken now: it is
/// the request's time to its last byte, and never includes counting.
///
/// When the upstream reported no usage and the tokenizer must count it, the count runs on the
/// server's token_counter threads (at most metering.max_count_bytes of each text tokenized),
/// and the consumers run afterwards on w's loop: what they read is moved out of result first,
/// and rt (the snapshot the request ran on) is kept until they ran. When the counting threads
/// are all busy and their queue is full, the tokens are estimated at once from the text's bytes.
///
/// body: the request's body (to count its prompt when no usage came back).
void publish(request_result& result, worker& w, std::string_view body, std::shared_ptr<const runtime> rt = nullptr);

}  // namespace tollgate::gateway
