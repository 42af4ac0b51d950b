# cpu/experts.hpp with Quantized<Base> experts (codes dequantised to fp32 per work item) against
# the host reference on the dequantised weights, and MoeLayer's CPU path against the emulated device.
moekit_add_test(cpu_experts_quantized_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/experts_quantized_test.cpp
                LABELS core cpu EMU)
