# Helpers for moekit's own tests, benchmarks, examples and tools (not installed).

option(MOEKIT_WERROR "Treat warnings as errors in moekit's own targets" OFF)

# The host ISA of moekit's own tests, benchmarks and tools. The CPU path's fp32 exp/log/sigmoid
# (core/fp32_math.hpp) need hardware FMA to be fast; results are identical without it. Used
# only when this machine can run it (checked by running a program built with it); "" = the
# compiler's default. The sanitizer build keeps the default so that the portable path is tested.
set(MOEKIT_HOST_ARCH "x86-64-v3" CACHE STRING "-march for moekit's own host targets (empty: compiler default)")
set(moekit_host_arch_flags)
if(MOEKIT_HOST_ARCH AND NOT MOEKIT_SANITIZE)
  include(CheckCXXSourceRuns)
  set(CMAKE_REQUIRED_FLAGS "-march=${MOEKIT_HOST_ARCH}")
  check_cxx_source_runs("#include <cmath>
    int main(int argc, char**) { volatile float a = 1.5f; return std::fma(a, a, float(argc)) == 3.25f ? 0 : 1; }"
    MOEKIT_HOST_ARCH_RUNS)
  unset(CMAKE_REQUIRED_FLAGS)
  if(MOEKIT_HOST_ARCH_RUNS)
    set(moekit_host_arch_flags -march=${MOEKIT_HOST_ARCH})
  else()
    message(STATUS "moekit: this machine cannot run -march=${MOEKIT_HOST_ARCH}; host targets use the default ISA")
  endif()
endif()

# Flags for every target the tree builds on top of the library.
add_library(moekit_dev_flags INTERFACE)
# No silent fma contraction: fp32 results must not depend on what the optimiser fuses.
target_compile_options(moekit_dev_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${moekit_host_arch_flags} -ffp-contract=off>)
target_compile_options(moekit_dev_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${MOEKIT_WERROR}>>:-Werror>)
if(MOEKIT_SANITIZE)
  target_compile_options(moekit_dev_flags INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${MOEKIT_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all>)
  target_link_options(moekit_dev_flags INTERFACE -fsanitize=${MOEKIT_SANITIZE})
endif()

# moekit_add_test(<name> SOURCES <files>... [LABELS <labels>...] [EMU] [CUDA_INCLUDES])
#   A Catch2 test executable registered with ctest. EMU links the CUDA emulator; CUDA_INCLUDES
#   puts the CUDA toolkit's headers on the include path (host code using cuda_bf16.h etc.).
function(moekit_add_test name)
  cmake_parse_arguments(arg "EMU;CUDA_INCLUDES" "" "SOURCES;LABELS" ${ARGN})
  add_executable(${name} ${arg_SOURCES})
  target_link_libraries(${name} PRIVATE moekit::moekit moekit_catch_main moekit_dev_flags)
  if(arg_EMU)
    target_link_libraries(${name} PRIVATE moekit::emu)
  endif()
  if(arg_CUDA_INCLUDES AND MOEKIT_CUDA_INCLUDE_DIRS)
    target_include_directories(${name} SYSTEM PRIVATE ${MOEKIT_CUDA_INCLUDE_DIRS})
    target_compile_definitions(${name} PRIVATE MOEKIT_TEST_HAVE_CUDA_HEADERS=1)
  endif()
  add_test(NAME ${name} COMMAND ${name} --order rand --rng-seed 20261124 --warn NoAssertions)
  set_tests_properties(${name} PROPERTIES LABELS "${arg_LABELS}" TIMEOUT 600)
endfunction()

# The CUDA toolkit's headers, for host code that interoperates with __nv_bfloat16 & co.
find_package(CUDAToolkit QUIET)
if(CUDAToolkit_FOUND)
  set(MOEKIT_CUDA_INCLUDE_DIRS ${CUDAToolkit_INCLUDE_DIRS})
endif()
include(${CMAKE_CURRENT_LIST_DIR}/MoekitCuda.cmake)
