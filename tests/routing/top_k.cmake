# TopK (softmax / sigmoid / gpt-oss) and GroupedTopK (DeepSeek-V2/V3) routers.
moekit_add_test(routing_top_k_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/top_k_test.cpp LABELS emu routing EMU)
if(MOEKIT_ENABLE_CUDA)
  moekit_add_nvcc_report(routing_top_k SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvcc_top_k.cu LAUNCH "route_tokens_kernel=128" "route_backward_kernel=128")
endif()
moekit_add_test(routing_top_k_backward_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/top_k_backward_test.cpp
  LABELS emu routing EMU)
