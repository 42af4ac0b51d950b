# io/hf_config.hpp: Hugging Face config.json → router parameters (needs nlohmann-json).
find_package(nlohmann_json 3 QUIET)
if(nlohmann_json_FOUND)
  moekit_add_test(io_hf_config_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/hf_config_test.cpp LABELS io)
  target_link_libraries(io_hf_config_test PRIVATE nlohmann_json::nlohmann_json)
else()
  message(STATUS "io_hf_config_test skipped: nlohmann_json not found (Debian: nlohmann-json3-dev)")
endif()
