# The research per-token routers: AdaMoE null experts, DynMoLE, top-any (MC-MoE/MC#), ProMoE
# prototype routing, the similarity/retrieval router (SALOVA), and the cosine score kernel.
moekit_add_test(routing_research_routers_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/null_experts_test.cpp ${CMAKE_CURRENT_LIST_DIR}/dynmole_test.cpp
          ${CMAKE_CURRENT_LIST_DIR}/top_any_test.cpp ${CMAKE_CURRENT_LIST_DIR}/prototype_test.cpp
          ${CMAKE_CURRENT_LIST_DIR}/similarity_test.cpp
  LABELS emu routing EMU)
if(MOEKIT_ENABLE_CUDA)
  moekit_add_nvcc_report(routing_research_routers SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvcc_research_routers.cu
    LAUNCH "route_tokens_kernel=128" "cosine_scores_kernel=128")
endif()
