# The dispatch plan: host reference, CPU builder, device kernels.
moekit_add_test(plan_dispatch_plan_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/dispatch_plan_test.cpp LABELS emu plan EMU)
if(MOEKIT_ENABLE_CUDA)
  moekit_add_nvcc_report(plan_dispatch_plan SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvcc_dispatch_plan.cu
    LAUNCH "plan_count_kernel=128" "plan_scan_kernel=256:4096" "plan_scatter_kernel=128")
endif()
