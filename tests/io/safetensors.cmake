# io/safetensors.hpp: .safetensors reader and writer (needs nlohmann-json).
find_package(nlohmann_json 3 QUIET)
if(nlohmann_json_FOUND)
  moekit_add_test(io_safetensors_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/safetensors_test.cpp LABELS io)
  target_link_libraries(io_safetensors_test PRIVATE nlohmann_json::nlohmann_json)
else()
  message(STATUS "io_safetensors_test skipped: nlohmann_json not found (Debian: nlohmann-json3-dev)")
endif()
