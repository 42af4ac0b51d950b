# io/allocation.hpp: the MC# bit-allocation file (needs nlohmann-json).
find_package(nlohmann_json 3 QUIET)
if(nlohmann_json_FOUND)
  moekit_add_test(io_allocation_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/allocation_test.cpp LABELS core io)
  target_link_libraries(io_allocation_test PRIVATE nlohmann_json::nlohmann_json)
else()
  message(STATUS "io_allocation_test skipped: nlohmann_json not found (Debian: nlohmann-json3-dev)")
endif()
