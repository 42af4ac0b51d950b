# Batch-scope routers: expert choice (ALGORITHMS.md 1.8), Sinkhorn (2.9) and Selective Sinkhorn
# Routing (2.10), with the Sinkhorn balancers.
moekit_add_test(routing_expert_choice_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/expert_choice_test.cpp
                LABELS emu routing EMU)
moekit_add_test(routing_sinkhorn_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/sinkhorn_test.cpp LABELS emu routing EMU)
if(MOEKIT_ENABLE_CUDA)
  moekit_add_nvcc_report(routing_batch_routers SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvcc_batch_routers.cu
    LAUNCH "expert_choice_scores_kernel=256" "expert_choice_select_kernel<1>=256:9280"
           "expert_choice_select_kernel<4>=256:9280" "expert_choice_select_kernel<16>=256:33792"
           "expert_choice_token_slots_kernel=256" "sinkhorn_kernel=256" "ssr_kernel=256"
           "ssr_softmax_top_k_kernel=256")
endif()
