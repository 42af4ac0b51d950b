# The research per-token routers: AdaMoE null experts, DynMoLE, top-any (MC-MoE/MC#), ProMoE
# prototype routing, the similarity/retrieval router (SALOVA), and the cosine score kernel.
moekit_add_test(routing_research_routers_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/null_experts_test.cpp ${CMAKE_CURRENT_LIST_DIR}/dynmole_test.cpp
          ${CMAKE_CURRENT_LIST_DIR}/top_any_test.cpp
  LABELS emu routing EMU)
