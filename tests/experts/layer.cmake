# MoeLayer (layer.hpp) end to end: gate projection → router → expert stage, on the emulated
# device and on the CPU executor, for the production families' layer shapes.
moekit_add_test(experts_layer_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/layer_test.cpp LABELS emu experts EMU)
