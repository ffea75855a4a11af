# The local inference engine: library, CLI (tollgate-engine) and its tests.
# Included by local_engine/CMakeLists.txt; the tokenizer target is tokenizer/CMakeLists.txt's.

add_library(tollgate_engine STATIC
  ${CMAKE_CURRENT_LIST_DIR}/model_config.cpp
  ${CMAKE_CURRENT_LIST_DIR}/safetensors.cpp
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint_layout.cpp
  ${CMAKE_CURRENT_LIST_DIR}/thread_pool.cpp
  ${CMAKE_CURRENT_LIST_DIR}/cpu_forward.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kv_blocks.cpp
  ${CMAKE_CURRENT_LIST_DIR}/scheduler.cpp
  ${CMAKE_CURRENT_LIST_DIR}/backend_factory.cpp
  ${CMAKE_CURRENT_LIST_DIR}/sampler.cpp
  ${CMAKE_CURRENT_LIST_DIR}/engine.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tiny_checkpoint.cpp
  ${CMAKE_CURRENT_LIST_DIR}/bench.cpp)
target_include_directories(tollgate_engine PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(tollgate_engine PUBLIC tollgate_tokenizer Threads::Threads
  PRIVATE nlohmann_json::nlohmann_json)
# The arithmetic wants the vectoriser even in RelWithDebInfo and Debug builds.
target_compile_options(tollgate_engine PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-O3>)
if(TOLLGATE_CUDA)
  # The CUDA backend: one kernel family per .cu file under cuda/, the host side in cuda_forward.cpp.
  target_sources(tollgate_engine PRIVATE
    ${CMAKE_CURRENT_LIST_DIR}/cuda/dense.cu
    ${CMAKE_CURRENT_LIST_DIR}/cuda/elementwise.cu
    ${CMAKE_CURRENT_LIST_DIR}/cuda/mla.cu
    ${CMAKE_CURRENT_LIST_DIR}/cuda/mla_prefill.cu
    ${CMAKE_CURRENT_LIST_DIR}/cuda/moe.cu
    ${CMAKE_CURRENT_LIST_DIR}/cuda/sampling.cu
    ${CMAKE_CURRENT_LIST_DIR}/cuda_forward.cpp)
  target_compile_definitions(tollgate_engine PRIVATE TOLLGATE_CUDA=1)
  # cuBLAS is opened by cuda_forward.cpp when a CUDA backend is made (dlopen), not linked.
  target_link_libraries(tollgate_engine PUBLIC CUDA::cudart PRIVATE ${CMAKE_DL_LIBS})
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/cuda_forward.cpp PROPERTIES
    COMPILE_DEFINITIONS TOLLGATE_CUDA_LIBRARY_DIR="${CUDAToolkit_LIBRARY_DIR}")
endif()

add_executable(tollgate-engine ${CMAKE_CURRENT_LIST_DIR}/cli.cpp)
target_link_libraries(tollgate-engine PRIVATE tollgate_engine nlohmann_json::nlohmann_json)

if(TOLLGATE_TESTS)
  find_package(Catch2 2 REQUIRED)
  include(Catch)
  file(GLOB TOLLGATE_ENGINE_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/engine/*_test.cpp)
  add_executable(tollgate-engine-tests ${CMAKE_SOURCE_DIR}/tests/engine/main.cpp ${TOLLGATE_ENGINE_TEST_SOURCES})
  target_link_libraries(tollgate-engine-tests PRIVATE tollgate_engine nlohmann_json::nlohmann_json Catch2::Catch2)
  target_compile_definitions(tollgate-engine-tests PRIVATE
    TOLLGATE_SOURCE_DIR="${CMAKE_SOURCE_DIR}" TOLLGATE_ENGINE_BIN="$<TARGET_FILE:tollgate-engine>")
  add_dependencies(tollgate-engine-tests tollgate-engine)
  catch_discover_tests(tollgate-engine-tests PROPERTIES TIMEOUT 300)
endif()

# The GPU tests: one CTest entry that reports "Skipped" (exit 77) where no CUDA device is usable.
if(TOLLGATE_CUDA AND TOLLGATE_TESTS)
  file(GLOB TOLLGATE_ENGINE_GPU_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/engine/gpu/*_test.cpp)
  add_executable(tollgate-engine-gpu-tests ${CMAKE_SOURCE_DIR}/tests/engine/gpu/main.cpp ${TOLLGATE_ENGINE_GPU_TEST_SOURCES})
  target_link_libraries(tollgate-engine-gpu-tests PRIVATE tollgate_engine nlohmann_json::nlohmann_json Catch2::Catch2)
  target_compile_definitions(tollgate-engine-gpu-tests PRIVATE TOLLGATE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  add_test(NAME engine_gpu COMMAND tollgate-engine-gpu-tests)
  set_tests_properties(engine_gpu PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600)
endif()
if(TOLLGATE_CUDA)
  # Decode and prefill speed at a real model's shapes against the measured roofline (tests/perf/).
  add_executable(tollgate-engine-gpu-bench ${CMAKE_SOURCE_DIR}/tests/perf/engine_gpu_bench.cpp
    ${CMAKE_SOURCE_DIR}/tests/perf/kernel_trace.cpp)
  target_link_libraries(tollgate-engine-gpu-bench PRIVATE tollgate_engine nlohmann_json::nlohmann_json CUDA::cublas)
  # TOLLGATE_BENCH_TRACE=1 (each kernel's start and end in a decode step) where CUPTI is installed.
  if(TARGET CUDA::cupti)
    target_link_libraries(tollgate-engine-gpu-bench PRIVATE CUDA::cupti)
    target_compile_definitions(tollgate-engine-gpu-bench PRIVATE TOLLGATE_BENCH_CUPTI=1)
  endif()
  # What a kernel boundary costs against a grid-wide barrier in one kernel (tests/perf/).
  add_executable(tollgate-kernel-boundary-bench ${CMAKE_SOURCE_DIR}/tests/perf/kernel_boundary_bench.cu)
  target_link_libraries(tollgate-kernel-boundary-bench PRIVATE CUDA::cudart)
  # In what order a lone token's expert product should read its weights (tests/perf/).
  add_executable(tollgate-weight-read-bench ${CMAKE_SOURCE_DIR}/tests/perf/weight_read_bench.cu)
  target_link_libraries(tollgate-weight-read-bench PRIVATE CUDA::cudart)
endif()
