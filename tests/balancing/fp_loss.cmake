# The fP balance losses (Switch, GShard, HF, Megatron aux/seq/global, DeepSeek-V3 sequence-wise,
# DiT-MoE, AdaMoE) and the router z-loss.
moekit_add_test(balancing_fp_loss_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/fp_loss_test.cpp LABELS emu balancing EMU)
moekit_add_test(balancing_z_loss_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/z_loss_test.cpp LABELS emu balancing EMU)
if(MOEKIT_ENABLE_CUDA)
  moekit_add_nvcc_report(balancing_fp_loss SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvcc_fp_loss.cu
    LAUNCH "fp_loss_stats_kernel=256:5120" "fp_loss_combine_kernel=256" "fp_loss_grad_kernel=128"
           "fill_kernel=128" "z_loss_stats_kernel=256:2048" "z_loss_combine_kernel=32" "z_loss_grad_kernel=128")
endif()
