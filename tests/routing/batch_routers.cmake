# Batch-scope routers: expert choice (ALGORITHMS.md 1.8), Sinkhorn (2.9) and Selective Sinkhorn
# Routing (2.10), with the Sinkhorn balancers.
moekit_add_test(routing_expert_choice_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/expert_choice_test.cpp
                LABELS emu routing EMU)
moekit_add_test(routing_sinkhorn_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/sinkhorn_test.cpp LABELS emu routing EMU)
