# io/npy.hpp: NumPy .npy reader and writer.
moekit_add_test(io_npy_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/npy_test.cpp LABELS io)
