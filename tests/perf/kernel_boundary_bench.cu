// What it costs to order two phases of GPU work one after the other: a kernel boundary (a plain
// launch, or a programmatic dependent launch as the engine's launch_early makes), against a
// grid-wide barrier inside one kernel that keeps running. A decode step at batch 1 is a chain of
// about 270 small kernels (tests/perf/README.md, "Local engine on the GPU"), so this is the price
// a persistent kernel for a layer would save or not.
//
// Each mode runs K phases of `blocks` blocks of 256 threads. In a phase, each block reads the word
// that the next block wrote in the phase before and writes its own, plus 1, so no phase can begin
// before the one before has ended everywhere; with --kb N each block also streams N KB of a 1 GiB
// buffer (another part each phase, so the reads come from memory, not L2). Modes:
//   plain    K kernels in a CUDA graph, each launched plainly
//   early    K kernels in a CUDA graph with programmatic dependent launch: each lets the next be
//            placed at its start, then waits for the one before (the engine's enter_in_order)
//   barrier  one kernel, K grid-wide barriers: a block's thread 0 counts itself in and polls a
//            generation word until the last block of the phase advances it
// Every mode's words are checked at the end (each must equal K). Timed with CUDA events after
// warm-up launches; the median of the runs, divided by K, is printed a phase.
//
//   tollgate-kernel-boundary-bench [--phases 1000] [--blocks 132,264] [--kb 0,32] [--runs 11]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

constexpr int threads = 256;

/// Streams `kb` KB of `src` from block b's part of phase p's window (its sum decides nothing but
/// may reach `sink`, so that the loads are kept).
__device__ void stream_read(const uint4* src, size_t src_units, int kb, int phase, unsigned* sink) {
  if (kb == 0) return;
  const size_t per_block = static_cast<size_t>(kb) * 1024 / sizeof(uint4);
  const size_t base = (static_cast<size_t>(phase) * gridDim.x + blockIdx.x) * per_block % (src_units - per_block);
  unsigned acc = 0;
  for (size_t i = threadIdx.x; i < per_block; i += blockDim.x) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(src + base + i));
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) atomicAdd(sink, 1u);  // almost never: keeps the loads
}

/// One phase as a kernel: words[phase % 2][b] = words[(phase + 1) % 2][(b + 1) % blocks] + 1.
__global__ void phase_kernel(unsigned* words, int phase, const uint4* src, size_t src_units, int kb, unsigned* sink) {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  stream_read(src, src_units, kb, phase, sink);
  if (threadIdx.x == 0) {
    const unsigned* before = words + ((phase + 1) % 2) * gridDim.x;
    words[(phase % 2) * gridDim.x + blockIdx.x] = before[(blockIdx.x + 1) % gridDim.x] + 1;
  }
}

/// All K phases in one kernel, a grid-wide barrier between two: `count` (at 0) counts the blocks
/// in; the last one sets it back to 0 and advances `generation`, which the others poll.
__global__ void barrier_kernel(unsigned* words, int phases, unsigned* count, unsigned* generation, const uint4* src,
                               size_t src_units, int kb, unsigned* sink) {
  for (int phase = 0; phase < phases; ++phase) {
    stream_read(src, src_units, kb, phase, sink);
    if (threadIdx.x == 0) {
      const unsigned* before = words + ((phase + 1) % 2) * gridDim.x;
      const unsigned v = *reinterpret_cast<const volatile unsigned*>(before + (blockIdx.x + 1) % gridDim.x);
      words[(phase % 2) * gridDim.x + blockIdx.x] = v + 1;
      const unsigned g = *reinterpret_cast<volatile unsigned*>(generation);
      __threadfence();
      if (atomicAdd(count, 1u) == gridDim.x - 1) {
        *count = 0;
        __threadfence();
        atomicExch(generation, g + 1);
      } else {
        while (*reinterpret_cast<volatile unsigned*>(generation) == g) {
        }
      }
      __threadfence();
    }
    __syncthreads();
  }
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoi(item));
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) try {
  int phases = 1000, runs = 11;
  std::vector<int> block_counts{132, 264}, kbs{0, 32};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--phases") phases = std::stoi(v);
    else if (k == "--blocks") block_counts = parse_list(v);
    else if (k == "--kb") kbs = parse_list(v);
    else if (k == "--runs") runs = std::stoi(v);
    else throw std::invalid_argument("unknown option " + k);
  }
  if (phases < 2 || runs < 1 || (phases % 2) != 0) throw std::invalid_argument("--phases: an even count of 2 or more");
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "attribute");
  const size_t src_bytes = size_t{1} << 30;
  uint4* src = nullptr;
  unsigned *words = nullptr, *count = nullptr, *generation = nullptr, *sink = nullptr;
  check(cudaMalloc(&src, src_bytes), "malloc");
  check(cudaMemset(src, 1, src_bytes), "memset");
  const int max_blocks = *std::max_element(block_counts.begin(), block_counts.end());
  check(cudaMalloc(&words, 2 * sizeof(unsigned) * max_blocks), "malloc");
  check(cudaMalloc(&count, sizeof(unsigned)), "malloc");
  check(cudaMalloc(&generation, sizeof(unsigned)), "malloc");
  check(cudaMalloc(&sink, sizeof(unsigned)), "malloc");
  cudaStream_t s;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  const size_t src_units = src_bytes / sizeof(uint4);
  std::printf("%d multiprocessors, %d phases a run, median of %d runs after 3 warm-up runs\n", sms, phases, runs);
  std::printf("%-8s %-6s %-6s %-12s %s\n", "mode", "blocks", "KB", "us a phase", "words");
  for (const int kb : kbs) {
    for (const int blocks : block_counts) {
      for (const std::string mode : {"plain", "early", "barrier"}) {
        if (mode == "barrier") {
          int per_sm = 0;
          check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, barrier_kernel, threads, 0), "occupancy");
          if (blocks > per_sm * sms) {
            std::printf("%-8s %-6d %-6d (more blocks than fit at once: a barrier would never open)\n", mode.c_str(),
                        blocks, kb);
            continue;
          }
        }
        check(cudaMemset(words, 0, 2 * sizeof(unsigned) * max_blocks), "memset");
        check(cudaMemset(count, 0, sizeof(unsigned)), "memset");
        cudaGraphExec_t exec = nullptr;
        if (mode != "barrier") {
          cudaGraph_t graph;
          check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "capture");
          for (int p = 0; p < phases; ++p) {
            cudaLaunchConfig_t cfg{};
            cfg.gridDim = dim3(blocks);
            cfg.blockDim = dim3(threads);
            cfg.stream = s;
            cudaLaunchAttribute attr[1];
            attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
            attr[0].val.programmaticStreamSerializationAllowed = 1;
            cfg.attrs = attr;
            cfg.numAttrs = mode == "early" ? 1 : 0;
            check(cudaLaunchKernelEx(&cfg, phase_kernel, words, p, static_cast<const uint4*>(src), src_units, kb, sink),
                  "launch");
          }
          check(cudaStreamEndCapture(s, &graph), "capture");
          check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
          check(cudaGraphDestroy(graph), "graph");
        }
        auto once = [&] {
          if (exec) check(cudaGraphLaunch(exec, s), "graph launch");
          else
            barrier_kernel<<<blocks, threads, 0, s>>>(words, phases, count, generation, src, src_units, kb, sink);
          check(cudaGetLastError(), "launch");
        };
        std::vector<double> t;
        for (int r = 0; r < 3 + runs; ++r) {
          // Each run starts from zeros, so that every word ends at `phases`.
          check(cudaMemsetAsync(words, 0, 2 * sizeof(unsigned) * max_blocks, s), "memset");
          check(cudaEventRecord(a, s), "record");
          once();
          check(cudaEventRecord(b, s), "record");
          check(cudaEventSynchronize(b), "sync");
          float ms = 0;
          check(cudaEventElapsedTime(&ms, a, b), "elapsed");
          if (r >= 3) t.push_back(ms * 1e3 / phases);
        }
        std::vector<unsigned> got(static_cast<size_t>(blocks));
        check(cudaMemcpy(got.data(), words + ((phases - 1) % 2) * blocks, sizeof(unsigned) * blocks,
                         cudaMemcpyDeviceToHost),
              "copy");
        const bool ok = std::all_of(got.begin(), got.end(), [&](unsigned v) { return v == static_cast<unsigned>(phases); });
        std::printf("%-8s %-6d %-6d %-12.2f %s\n", mode.c_str(), blocks, kb, median(t), ok ? "ok" : "WRONG");
        if (exec) check(cudaGraphExecDestroy(exec), "destroy");
        if (!ok) return 1;
      }
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "tollgate-kernel-boundary-bench: %s\n", e.what());
  return 1;
}
