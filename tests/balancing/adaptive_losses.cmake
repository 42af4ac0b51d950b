# DynMoLE and LoRA-Mixer losses, ProMoE's routing contrastive loss, aux-loss-free expert bias.
foreach(family dynmole_loss lora_mixer_loss expert_bias contrastive_loss)
  moekit_add_test(balancing_${family}_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/${family}_test.cpp LABELS emu balancing EMU)
endforeach()
if(MOEKIT_ENABLE_CUDA)
  moekit_add_nvcc_report(balancing_adaptive_losses SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvcc_adaptive_losses.cu
    LAUNCH "token_loss_partials_kernel=128" "token_loss_finalize_kernel=256" "token_loss_grad_kernel=128"
           "rcl_=256" "accumulate_loads_kernel=256" "update_bias_kernel=256")
endif()
