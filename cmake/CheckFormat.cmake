# cmake -DSOURCE_DIR=<repo> -DCLANG_FORMAT=<exe> -P CheckFormat.cmake
# Fails when a C++/CUDA source of the repository differs from what .clang-format makes of it.
file(GLOB_RECURSE sources LIST_DIRECTORIES false
     "${SOURCE_DIR}/include/*.hpp" "${SOURCE_DIR}/tests/*.hpp" "${SOURCE_DIR}/tests/*.cpp" "${SOURCE_DIR}/tests/*.cu"
     "${SOURCE_DIR}/bench/*.cpp" "${SOURCE_DIR}/bench/*.cu" "${SOURCE_DIR}/examples/*.hpp"
     "${SOURCE_DIR}/examples/*.cpp" "${SOURCE_DIR}/examples/*.cu" "${SOURCE_DIR}/tools/*.cpp")
set(bad)
foreach(f IN LISTS sources)
  execute_process(COMMAND "${CLANG_FORMAT}" --dry-run --Werror "${f}" RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(NOT rc EQUAL 0)
    list(APPEND bad "${f}")
  endif()
endforeach()
if(bad)
  list(JOIN bad "\n  " listed)
  message(FATAL_ERROR "not formatted (run clang-format -i on them, in a commit of its own):\n  ${listed}")
endif()
list(LENGTH sources n)
message(STATUS "${n} files formatted as .clang-format says")
