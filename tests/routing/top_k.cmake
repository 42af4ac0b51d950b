# TopK (softmax / sigmoid / gpt-oss) and GroupedTopK (DeepSeek-V2/V3) routers.
moekit_add_test(routing_top_k_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/top_k_test.cpp LABELS emu routing EMU)
