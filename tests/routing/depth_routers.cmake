# Depth and token routers: Mixture-of-Depths, γ-MoD, FTP token skip, Dr.LLM layer router
# (ALGORITHMS.md §4.3-§4.6).
moekit_add_test(routing_depth_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/depth_test.cpp LABELS emu routing EMU)
moekit_add_test(routing_token_skip_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/token_skip_test.cpp LABELS emu routing EMU)
moekit_add_test(routing_layer_router_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/layer_router_test.cpp LABELS emu routing EMU)
if(MOEKIT_ENABLE_CUDA)
  moekit_add_nvcc_report(routing_depth_routers SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvcc_depth_routers.cu
    LAUNCH "depth_ordered_mean_kernel=256" "mod_route_kernel=256" "depth_combine_kernel=256"
           "gamma_mod_route_kernel=256" "token_skip_kernel=256" "token_skip_decode_kernel=256"
           "layer_router_kernel=256")
endif()
