# cpu/experts.hpp + cpu/thread_pool.hpp: the CPU executor's expert stage against the host reference.
moekit_add_test(cpu_experts_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/experts_test.cpp LABELS core cpu)
