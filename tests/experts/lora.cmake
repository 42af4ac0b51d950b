# LoRA experts (experts/lora.hpp): LoraExpert through the device expert stage (emulated) and the
# CPU executor against host::reference_lora_delta, merge_lora, bad parameters.
moekit_add_test(experts_lora_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/lora_test.cpp LABELS emu experts EMU)
