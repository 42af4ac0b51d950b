# bench/cpu/experts_bench.cpp: the CPU executor's expert stage (included from bench/CMakeLists.txt).
add_executable(experts_bench ${CMAKE_CURRENT_LIST_DIR}/experts_bench.cpp)
target_link_libraries(experts_bench PRIVATE moekit::moekit benchmark::benchmark moekit_dev_flags)
if(MOEKIT_BUILD_TESTS)
  add_test(NAME bench_experts_smoke COMMAND experts_bench --benchmark_min_time=0.001 --benchmark_filter=experts/T:1/)
  set_tests_properties(bench_experts_smoke PROPERTIES LABELS "bench")
endif()
