# Quantised experts: the packed format, dequantisation, the quantiser, the Quantized policy.
moekit_add_test(experts_quantized_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/quantized_test.cpp LABELS core experts)
if(MOEKIT_ENABLE_CUDA)
  moekit_add_nvcc_report(experts_quantized SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvcc_quantized.cu
    LAUNCH "dequantize_rows_kernel=128" "dequantize_chunk_kernel=128")
endif()
