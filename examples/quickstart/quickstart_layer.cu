// The quickstart's layer in a real CUDA build: MoeLayer::run on a stream with device Arguments,
// instantiated for nvcc (sm_80, sm_90a). It pulls in every kernel the layer launches — the
// fused single-launch kernel (the default), and for the multi-launch path the gate projection,
// the router, the dispatch plan, the up/down GEMMs and the combine, each with both tile
// configurations (decode for T ≤ 64, prefill above) — and the nvcc report
// (registers, spills, shared memory, tensor-core instructions) comes from here.
#include "moekit/balancing/concept.hpp"
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/layer.hpp"
#include "moekit/routing/top_k.hpp"

namespace quickstart {
using Layer =
    moekit::MoeLayer<moekit::routing::TopK<8>, moekit::balancing::None, moekit::experts::SwiGlu<moekit::bf16_t>>;
}  // namespace quickstart

// What an application's .cu file holds: one call of the layer on its stream (this instantiates
// MoeLayer::run with the device Arguments, hence all of the kernels above).
moekit::Status
run_quickstart_layer(quickstart::Layer::Problem const& p,
                     quickstart::Layer::Arguments<moekit::bf16_t, float, moekit::MemorySpace::device> const& a,
                     moekit::Workspace& workspace, moekit::arch::Stream stream) {
  return quickstart::Layer::run(moekit::routing::mixtral_router(8, 2), {}, {}, p, a, workspace, stream);
}
