#pragma once
// The ranking rule of ALGORITHMS.md §0 (core/ranking.hpp), under the names routers use.

#include "moekit/config.hpp"
#include "moekit/core/ranking.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {
using moekit::ranks_before;
using moekit::top_k;
}  // namespace routing
MOEKIT_NAMESPACE_END
