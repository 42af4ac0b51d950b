# The device expert stage (kernels/expert_stage.hpp: plan → up GEMM → down GEMM → shared expert
# → combine) under the emulator, and its nvcc resource report.
moekit_add_test(experts_expert_stage_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/expert_stage_test.cpp
  LABELS emu experts EMU)
