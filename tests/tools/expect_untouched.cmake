# A moekit-route failure test: the command must fail as cmake/ExpectFailure.cmake checks (exit
# status and message), AND leave the output folder as it was.
#   cmake -DOUT_DIR=<dir> -DMODE=existing|fresh -DEXPECT=<regex> [-DEXPECT_STATUS=<n>]
#         -P expect_untouched.cmake -- <command> <args>...
# MODE existing: OUT_DIR is created holding one file, keep.txt, and must hold exactly that after.
# MODE fresh:    OUT_DIR is removed first and must still not exist after.
foreach(var IN ITEMS OUT_DIR MODE EXPECT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "expect_untouched.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT DEFINED EXPECT_STATUS)
  set(EXPECT_STATUS 1)
endif()
set(cmd)
set(seen_separator FALSE)
foreach(i RANGE 1 ${CMAKE_ARGC})
  if(i EQUAL CMAKE_ARGC)
    break()
  endif()
  if(seen_separator)
    list(APPEND cmd "${CMAKE_ARGV${i}}")
  elseif("${CMAKE_ARGV${i}}" STREQUAL "--")
    set(seen_separator TRUE)
  endif()
endforeach()

file(REMOVE_RECURSE "${OUT_DIR}")
if(MODE STREQUAL "existing")
  file(WRITE "${OUT_DIR}/keep.txt" "written by the test before the run\n")
elseif(NOT MODE STREQUAL "fresh")
  message(FATAL_ERROR "expect_untouched.cmake: MODE must be existing or fresh, not '${MODE}'")
endif()

get_filename_component(here "${CMAKE_CURRENT_LIST_FILE}" DIRECTORY)
execute_process(COMMAND ${CMAKE_COMMAND} "-DEXPECT=${EXPECT}" "-DEXPECT_STATUS=${EXPECT_STATUS}"
                        -P "${here}/../../cmake/ExpectFailure.cmake" -- ${cmd}
                RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE out)
message("${out}")
if(NOT status EQUAL 0)
  message(FATAL_ERROR "the command did not fail as expected")
endif()

if(MODE STREQUAL "existing")
  file(GLOB left RELATIVE "${OUT_DIR}" LIST_DIRECTORIES true "${OUT_DIR}/*" "${OUT_DIR}/.*")
  if(NOT left STREQUAL "keep.txt")
    message(FATAL_ERROR "the output folder changed: it holds '${left}', expected only keep.txt")
  endif()
  file(READ "${OUT_DIR}/keep.txt" kept)
  if(NOT kept STREQUAL "written by the test before the run\n")
    message(FATAL_ERROR "keep.txt was modified")
  endif()
elseif(EXISTS "${OUT_DIR}")
  message(FATAL_ERROR "the output folder '${OUT_DIR}' was created by a failing run")
endif()
file(REMOVE_RECURSE "${OUT_DIR}")
message("output folder untouched (${MODE})")
