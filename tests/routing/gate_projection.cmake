# The gate projection logits = x·Wgᵀ (+ b): device kernel, CPU path, host reference.
moekit_add_test(routing_gate_projection_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/gate_projection_test.cpp
  LABELS emu routing EMU)
if(MOEKIT_ENABLE_CUDA)
  moekit_add_nvcc_report(routing_gate_projection SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvcc_gate_projection.cu
    LAUNCH "gate_projection_kernel=128:6336")
endif()
