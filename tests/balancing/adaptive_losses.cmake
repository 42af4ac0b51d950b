# DynMoLE and LoRA-Mixer losses, ProMoE's routing contrastive loss, aux-loss-free expert bias.
foreach(family dynmole_loss lora_mixer_loss expert_bias contrastive_loss)
  moekit_add_test(balancing_${family}_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/${family}_test.cpp LABELS emu balancing EMU)
endforeach()
