#pragma once
// The host reference (the oracle every test checks against): plain code, double accumulation
// where the algorithm allows, independent of kernels/ and cpu/. One header per policy family;
// this one includes them all. Every per-token router has an overload
// `Status host::reference_route(router, routing::RouteBuffers<MemorySpace::host> const&)`.

#include "moekit/host/adaptive_loss_reference.hpp"
#include "moekit/host/balance_loss_reference.hpp"
#include "moekit/host/batch_router_reference.hpp"
#include "moekit/host/depth_router_reference.hpp"
#include "moekit/host/expert_reference.hpp"
#include "moekit/host/gate_projection_reference.hpp"
#include "moekit/host/plan_reference.hpp"
#include "moekit/host/research_router_reference.hpp"
#include "moekit/host/top_k_reference.hpp"
