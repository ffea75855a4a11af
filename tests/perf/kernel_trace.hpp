// Every kernel's start and end on the GPU while a trace is open (CUPTI's activity records, graph
// replays included): where a decode step's time goes, kernel by kernel, gaps between them too,
// which a profiler that replays each kernel alone (ncu) does not show.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tollgate::perf {

struct kernel_span {
  std::string name;  ///< demangled, without arguments
  uint64_t start = 0, end = 0;  ///< ns, GPU clock
  uint32_t stream = 0;
};

/// Whether this build traces (CUPTI found at configure time).
bool kernel_trace_available();
/// Starts recording kernels (throws where the build or the machine cannot).
void kernel_trace_begin();
/// Waits for the device, stops recording, and returns the kernels seen, by start time.
std::vector<kernel_span> kernel_trace_end();

}  // namespace tollgate::perf
