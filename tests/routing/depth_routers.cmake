# Depth and token routers: Mixture-of-Depths, γ-MoD, FTP token skip, Dr.LLM layer router
# (ALGORITHMS.md §4.3-§4.6).
moekit_add_test(routing_depth_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/depth_test.cpp LABELS emu routing EMU)
moekit_add_test(routing_token_skip_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/token_skip_test.cpp LABELS emu routing EMU)
moekit_add_test(routing_layer_router_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/layer_router_test.cpp LABELS emu routing EMU)
