# cmake -P script: configures moekit's source tree with everything but the library off and
# installs it into a fresh prefix. The setup step of the consumer tests (tests/cmake/CMakeLists.txt).
#   SOURCE_DIR BINARY_DIR PREFIX GENERATOR [MAKE_PROGRAM] [CXX_COMPILER]
foreach(var IN ITEMS SOURCE_DIR BINARY_DIR PREFIX GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install.cmake: -D${var}=... is required")
  endif()
endforeach()

# A stale prefix could hide a file the install no longer puts there; a stale cache, an option
# that changed.
file(REMOVE_RECURSE "${PREFIX}" "${BINARY_DIR}")

set(options -DMOEKIT_BUILD_TESTS=OFF -DMOEKIT_BUILD_BENCHMARKS=OFF -DMOEKIT_BUILD_EXAMPLES=OFF
  -DMOEKIT_BUILD_TOOLS=OFF -DMOEKIT_ENABLE_CUDA=OFF "-DCMAKE_INSTALL_PREFIX=${PREFIX}")
if(MAKE_PROGRAM)
  list(APPEND options "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_COMPILER)
  list(APPEND options "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()

function(run)
  list(JOIN ARGN " " line)
  message(STATUS "+ ${line}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${line}")
  endif()
endfunction()

run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${BINARY_DIR}" -G "${GENERATOR}" ${options})
run(${CMAKE_COMMAND} --build "${BINARY_DIR}")
run(${CMAKE_COMMAND} --install "${BINARY_DIR}")

foreach(f IN ITEMS include/moekit/version.hpp include/moekit/config.hpp include/moekit/core/status.hpp
    share/cmake/moekit/moekitConfig.cmake share/cmake/moekit/moekitConfigVersion.cmake
    share/cmake/moekit/moekitTargets.cmake)
  if(NOT EXISTS "${PREFIX}/${f}")
    message(FATAL_ERROR "install.cmake: ${PREFIX}/${f} was not installed")
  endif()
endforeach()
message(STATUS "moekit installed into ${PREFIX}")
