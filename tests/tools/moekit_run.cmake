# Tests of tools/moekit-run (included from tools/moekit-run/CMakeLists.txt, so that they exist
# exactly when the tool does):
#   tools_moekit_run_test   Catch2: writes a synthetic checkpoint of every family
#                           (tests/io/hf_checkpoint_support.hpp) and x.npy, runs the tool, and
#                           compares y.npy (and --router-out) with the host-reference block; then
#                           each error: exit status, one-line message naming the file, no output.
set(moekit_run_work ${CMAKE_CURRENT_BINARY_DIR}/moekit_run_test_work)
moekit_add_test(tools_moekit_run_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/moekit_run_test.cpp LABELS tools io)
target_link_libraries(tools_moekit_run_test PRIVATE nlohmann_json::nlohmann_json)
target_include_directories(tools_moekit_run_test PRIVATE ${PROJECT_SOURCE_DIR}/tests/io ${PROJECT_SOURCE_DIR}/tests/experts)
target_compile_definitions(tools_moekit_run_test PRIVATE "MOEKIT_RUN_EXE=\"$<TARGET_FILE:moekit-run>\""
                                                         "MOEKIT_RUN_WORK_DIR=\"${moekit_run_work}\"")
add_dependencies(tools_moekit_run_test moekit-run)
