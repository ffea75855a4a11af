#include "tests/perf/kernel_trace.hpp"

#include <algorithm>
#include <stdexcept>

#ifdef TOLLGATE_BENCH_CUPTI
#include <cuda_runtime.h>
#include <cupti.h>
#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#endif

namespace tollgate::perf {

#ifdef TOLLGATE_BENCH_CUPTI
namespace {

std::mutex mu;
std::vector<kernel_span> spans;

void check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* s = nullptr;
  cuptiGetResultString(r, &s);
  throw std::runtime_error(std::string("CUPTI ") + what + ": " + (s ? s : "error"));
}

std::string short_name(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  std::string n = status == 0 && d ? d.get() : mangled;
  // Drop the arguments and the return type; keep templates' names short.
  if (const auto paren = n.find('('); paren != std::string::npos) n.resize(paren);
  if (const auto space = n.rfind(' ', n.find('<')); space != std::string::npos && n.find('<') != std::string::npos)
    n = n.substr(space + 1);
  for (const char* ns : {"tollgate::engine::cuda::device::", "void "})
    for (auto at = n.find(ns); at != std::string::npos; at = n.find(ns)) n.erase(at, std::string(ns).size());
  if (n.size() > 90) n = n.substr(0, 87) + "...";
  return n;
}

void CUPTIAPI requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  constexpr size_t bytes = size_t{8} << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, bytes));
  *size = bytes;
  *max_records = 0;
}

void CUPTIAPI completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  std::lock_guard lock(mu);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && record->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
    spans.push_back({short_name(k->name), k->start, k->end, k->streamId});
  }
  std::free(buffer);
}

}  // namespace

bool kernel_trace_available() { return true; }

void kernel_trace_begin() {
  static const bool registered = [] {
    check(cuptiActivityRegisterCallbacks(requested, completed), "register");
    return true;
  }();
  (void)registered;
  {
    std::lock_guard lock(mu);
    spans.clear();
  }
  if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("kernel trace: the device failed");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable");
}

std::vector<kernel_span> kernel_trace_end() {
  if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("kernel trace: the device failed");
  check(cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "disable");
  check(cuptiActivityFlushAll(1), "flush");
  std::lock_guard lock(mu);
  std::vector<kernel_span> out = std::move(spans);
  spans.clear();
  std::sort(out.begin(), out.end(), [](const kernel_span& a, const kernel_span& b) { return a.start < b.start; });
  return out;
}

#else

bool kernel_trace_available() { return false; }
void kernel_trace_begin() { throw std::runtime_error("this build has no kernel trace (CUPTI was not found)"); }
std::vector<kernel_span> kernel_trace_end() { return {}; }

#endif

}  // namespace tollgate::perf
