#pragma once
// Everything kernel code may call: thread indices, barriers, warp collectives, atomics,
// shared memory, tensor-core MMA, ldmatrix, cp.async, CUB-style block primitives, launch.

#include "moekit/arch/atomic.hpp"
#include "moekit/arch/barrier.hpp"
#include "moekit/arch/block_radix_sort.hpp"
#include "moekit/arch/block_reduce.hpp"
#include "moekit/arch/block_scan.hpp"
#include "moekit/arch/cp_async.hpp"
#include "moekit/arch/launch.hpp"
#include "moekit/arch/ldmatrix.hpp"
#include "moekit/arch/mma.hpp"
#include "moekit/arch/shared_memory.hpp"
#include "moekit/arch/thread_index.hpp"
#include "moekit/arch/warp.hpp"
