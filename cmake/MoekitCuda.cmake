# nvcc resource reports: compile kernels for every CUDA architecture at build time, collect
# `ptxas -v` and `cuobjdump -sass` facts into JSON, and check them with ctest.
# See docs/nvcc_report.md. Included from cmake/MoekitDev.cmake; needs CMake 3.25.
#
# moekit_add_nvcc_report(<name>
#     SOURCES <a.cu>...                          kernels to compile (relative: to the current source dir)
#     [TENSOR_CORE_KERNELS <substr>[@<arch>,...]...]  kernels (demangled-name substrings) that must
#                                                contain tensor-core instructions (on the listed archs,
#                                                default every arch); each must match a kernel
#     [LAUNCH <substr>=<threads>[:<dynamic smem bytes>]...]  block size hints for the occupancy figures
#                                                (default: the kernel's __launch_bounds__, if any)
#     [INCLUDES <dirs>...]                       include dirs in addition to moekit's include/
#     [DEFINES <X[=V]>...]                       macro definitions
#     [ALLOW_SPILLS <substr>...]                 kernels allowed to spill (warned, not failed)
#     [NVCC_FLAGS <flags>...]                    extra nvcc flags (keep them rare)
#     [EXCLUDE_FROM_SUMMARY])                    keep it out of ${CMAKE_BINARY_DIR}/nvcc_report.json
#                                                (for the checker's own test fixtures)
#
# With MOEKIT_ENABLE_CUDA ON it adds
#   - build-time commands compiling each source once per architecture in CMAKE_CUDA_ARCHITECTURES
#     (default 80;90a; "-real"/"-virtual" suffixes are ignored): a compile error fails the build;
#   - the custom target nvcc_report_<name> (in ALL) producing ${CMAKE_BINARY_DIR}/nvcc_report/<name>.json;
#   - the test nvcc_resources_<name> (label nvcc) running `nvcc_report.py check` on it;
#   - the custom target nvcc_report (in ALL) merging every <name>.json into
#     ${CMAKE_BINARY_DIR}/nvcc_report.json.
# With MOEKIT_ENABLE_CUDA OFF it does nothing.

include_guard(GLOBAL)

set(MOEKIT_NVCC_REPORT_TOOL "${CMAKE_CURRENT_LIST_DIR}/../tools/nvcc_report.py")
cmake_path(NORMAL_PATH MOEKIT_NVCC_REPORT_TOOL)
set(_moekit_nvcc_report_include "${CMAKE_CURRENT_LIST_DIR}/../include")
cmake_path(NORMAL_PATH _moekit_nvcc_report_include)

# The nvcc to run: the project's CUDA compiler, else the toolkit's, else nvcc on PATH.
function(_moekit_nvcc_report_nvcc out)
  if(CMAKE_CUDA_COMPILER)
    set(nvcc "${CMAKE_CUDA_COMPILER}")
  elseif(CUDAToolkit_NVCC_EXECUTABLE)
    set(nvcc "${CUDAToolkit_NVCC_EXECUTABLE}")
  else()
    find_program(MOEKIT_NVCC_EXECUTABLE nvcc)
    set(nvcc "${MOEKIT_NVCC_EXECUTABLE}")
  endif()
  if(NOT nvcc)
    message(FATAL_ERROR "moekit_add_nvcc_report: MOEKIT_ENABLE_CUDA is ON but no nvcc was found")
  endif()
  set(${out} "${nvcc}" PARENT_SCOPE)
endfunction()

# CMAKE_CUDA_ARCHITECTURES -> plain arch names for nvcc_report.py (80, 90a, ...).
function(_moekit_nvcc_report_archs out)
  set(archs)
  if(DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT "${CMAKE_CUDA_ARCHITECTURES}" STREQUAL "")
    foreach(a IN LISTS CMAKE_CUDA_ARCHITECTURES)
      string(REGEX REPLACE "-(real|virtual)$" "" a "${a}")
      if(a MATCHES "^[0-9]+[af]?$")
        list(APPEND archs "${a}")
      else()
        message(WARNING "moekit_add_nvcc_report: CMAKE_CUDA_ARCHITECTURES entry '${a}' is not a "
                        "number (80, 90a, ...); it is left out of the nvcc report")
      endif()
    endforeach()
  endif()
  if(NOT archs)
    set(archs 80 90a)
  endif()
  list(REMOVE_DUPLICATES archs)
  set(${out} "${archs}" PARENT_SCOPE)
endfunction()

# Once per configure: say early when SASS cannot be read (the checks would fail later).
function(_moekit_nvcc_report_check_tools nvcc)
  get_property(done GLOBAL PROPERTY _MOEKIT_NVCC_REPORT_TOOLS_CHECKED)
  if(done)
    return()
  endif()
  set_property(GLOBAL PROPERTY _MOEKIT_NVCC_REPORT_TOOLS_CHECKED TRUE)
  execute_process(COMMAND "${Python3_EXECUTABLE}" "${MOEKIT_NVCC_REPORT_TOOL}" tools --nvcc "${nvcc}"
                  RESULT_VARIABLE status OUTPUT_VARIABLE found OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(status EQUAL 0)
    message(STATUS "nvcc report tools: ${found}")
  else()
    message(WARNING "nvcc report: cuobjdump and/or nvdisasm not found (${found}); the tensor-core "
                    "checks (nvcc_resources_* tests) will fail. They ship with the CUDA toolkit, or: "
                    "${Python3_EXECUTABLE} -m pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
  endif()
endfunction()

function(moekit_add_nvcc_report name)
  if(NOT MOEKIT_ENABLE_CUDA)
    return()
  endif()
  cmake_parse_arguments(PARSE_ARGV 1 arg "EXCLUDE_FROM_SUMMARY"
    "" "SOURCES;TENSOR_CORE_KERNELS;LAUNCH;INCLUDES;DEFINES;ALLOW_SPILLS;NVCC_FLAGS")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "moekit_add_nvcc_report(${name}): unknown arguments ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT arg_SOURCES)
    message(FATAL_ERROR "moekit_add_nvcc_report(${name}): no SOURCES")
  endif()
  if(TARGET nvcc_report_${name})
    message(FATAL_ERROR "moekit_add_nvcc_report(${name}): a report of that name already exists")
  endif()

  find_package(Python3 COMPONENTS Interpreter REQUIRED)
  _moekit_nvcc_report_nvcc(nvcc)
  _moekit_nvcc_report_archs(archs)
  _moekit_nvcc_report_check_tools("${nvcc}")

  set(report_dir "${CMAKE_BINARY_DIR}/nvcc_report")
  set(unit_dir "${report_dir}/${name}")
  set(summary "${report_dir}/${name}.json")

  set(common_args --nvcc "${nvcc}" --std c++20 --include "${_moekit_nvcc_report_include}")
  if(CMAKE_CUDA_HOST_COMPILER)
    list(APPEND common_args --ccbin "${CMAKE_CUDA_HOST_COMPILER}")
  endif()
  foreach(dir IN LISTS arg_INCLUDES)
    cmake_path(ABSOLUTE_PATH dir BASE_DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" NORMALIZE)
    list(APPEND common_args --include "${dir}")
  endforeach()
  foreach(def IN LISTS arg_DEFINES)
    list(APPEND common_args --define "${def}")
  endforeach()
  foreach(hint IN LISTS arg_LAUNCH)
    list(APPEND common_args --launch "${hint}")
  endforeach()
  foreach(flag IN LISTS arg_NVCC_FLAGS)
    list(APPEND common_args "--nvcc-flag=${flag}")
  endforeach()

  # One command per (source, arch), so that the build runs them in parallel; each writes a
  # report and a depfile (headers), and fails the build when nvcc fails.
  set(unit_reports)
  foreach(src IN LISTS arg_SOURCES)
    cmake_path(ABSOLUTE_PATH src BASE_DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" NORMALIZE)
    file(RELATIVE_PATH rel "${CMAKE_SOURCE_DIR}" "${src}")
    if(rel MATCHES "^\\.\\./")
      set(rel "${src}")
    endif()
    string(MAKE_C_IDENTIFIER "${rel}" unit)
    foreach(arch IN LISTS archs)
      set(out "${unit_dir}/${unit}.sm_${arch}.json")
      add_custom_command(
        OUTPUT "${out}"
        COMMAND "${Python3_EXECUTABLE}" "${MOEKIT_NVCC_REPORT_TOOL}" compile ${common_args}
                --arch "${arch}" --source "${src}" --out "${out}" --workdir "${unit_dir}/scratch/${unit}"
                --depfile "${out}.d"
        DEPENDS "${src}" "${MOEKIT_NVCC_REPORT_TOOL}"
        DEPFILE "${out}.d"
        COMMENT "nvcc report ${name}: ${rel} for sm_${arch}"
        VERBATIM)
      list(APPEND unit_reports "${out}")
    endforeach()
  endforeach()

  add_custom_command(
    OUTPUT "${summary}"
    COMMAND "${Python3_EXECUTABLE}" "${MOEKIT_NVCC_REPORT_TOOL}" merge ${unit_reports} --out "${summary}"
    DEPENDS ${unit_reports} "${MOEKIT_NVCC_REPORT_TOOL}"
    COMMENT "nvcc report ${name}: ${summary}"
    VERBATIM)
  add_custom_target(nvcc_report_${name} ALL DEPENDS "${summary}")

  set(check_args)
  foreach(k IN LISTS arg_TENSOR_CORE_KERNELS)
    list(APPEND check_args --tensor-core "${k}")
  endforeach()
  foreach(k IN LISTS arg_ALLOW_SPILLS)
    list(APPEND check_args --allow-spills "${k}")
  endforeach()
  add_test(NAME nvcc_resources_${name}
           COMMAND "${Python3_EXECUTABLE}" "${MOEKIT_NVCC_REPORT_TOOL}" check "${summary}" ${check_args})
  set_tests_properties(nvcc_resources_${name} PROPERTIES LABELS nvcc TIMEOUT 120)

  # The tree-wide summary: one target, created with the first report, that every report joins.
  if(NOT TARGET nvcc_report)
    set(all "${CMAKE_BINARY_DIR}/nvcc_report.json")
    set(files "$<TARGET_PROPERTY:nvcc_report,MOEKIT_NVCC_REPORT_FILES>")
    add_custom_command(
      OUTPUT "${all}"
      COMMAND "${Python3_EXECUTABLE}" "${MOEKIT_NVCC_REPORT_TOOL}" merge "${files}" --out "${all}"
      DEPENDS "${files}" "${MOEKIT_NVCC_REPORT_TOOL}"
      COMMENT "nvcc report: ${all}"
      COMMAND_EXPAND_LISTS
      VERBATIM)
    add_custom_target(nvcc_report ALL DEPENDS "${all}")
  endif()
  if(NOT arg_EXCLUDE_FROM_SUMMARY)
    set_property(TARGET nvcc_report APPEND PROPERTY MOEKIT_NVCC_REPORT_FILES "${summary}")
    add_dependencies(nvcc_report nvcc_report_${name})
  endif()
endfunction()
