# The device expert stage (kernels/expert_stage.hpp: plan → up GEMM → down GEMM → shared expert
# → combine) under the emulator, and its nvcc resource report.
moekit_add_test(experts_expert_stage_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/expert_stage_test.cpp
  LABELS emu experts EMU)
if(MOEKIT_ENABLE_CUDA)
  # Dynamic shared memory per kernel (sizeof GemmStorage), matched on mangled-name substrings,
  # first match wins: the plain MLP's up GEMM streams one weight matrix, gated ones two.
  moekit_add_nvcc_report(experts_expert_stage
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvcc_expert_stage.cu ${CMAKE_CURRENT_LIST_DIR}/nvcc_fused_layer.cu
    TENSOR_CORE_KERNELS "expert_up_kernel" "expert_down_kernel" "fused_layer_kernel"
    LAUNCH "fused_layer_kernelINS1_12KernelConfigILi64=128:46848" "fused_layer_kernelINS1_12KernelConfigILi16=128:62464"
           "expert_up_kernelINS1_12KernelConfigILi64ELi64ELi32ELi2ELi2ELi3EEENS0_7experts8PlainMlp=128:31488"
           "expert_up_kernelINS1_12KernelConfigILi64=128:46848"
           "expert_up_kernelINS1_12KernelConfigILi16=128:62464"
           "expert_down_kernelINS1_12KernelConfigILi64=128:31488"
           "expert_down_kernelINS1_12KernelConfigILi16=128:34816"
           "combine_kernel=128")
endif()
moekit_add_test(experts_quantized_stage_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/quantized_stage_test.cpp
  LABELS emu experts EMU)
