# io/hf_checkpoint.hpp: the MoE block of one layer of a Hugging Face checkpoint, on synthetic
# checkpoints of every family (tests/io/hf_checkpoint_support.hpp); needs nlohmann-json.
find_package(nlohmann_json 3 QUIET)
if(nlohmann_json_FOUND)
  moekit_add_test(io_hf_checkpoint_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/hf_checkpoint_test.cpp LABELS io core)
  target_link_libraries(io_hf_checkpoint_test PRIVATE nlohmann_json::nlohmann_json)
else()
  message(STATUS "io_hf_checkpoint_test skipped: nlohmann_json not found (Debian: nlohmann-json3-dev)")
endif()
