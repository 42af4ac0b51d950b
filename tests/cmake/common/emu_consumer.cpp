// A consumer of moekit::emu: the emulator target must bring moekit's headers and Boost.Context
// (headers and library), so a fiber switch compiles, links and runs here.
// TODO(emu): also include the emulator's public entry header once it settles, e.g. run a
// one-block kernel, so this test covers what the emulator itself needs from its consumers.
#include <boost/context/fiber.hpp>
#include <cstdio>
#include <utility>

#include "moekit/core/status.hpp"

int main() {
  int steps = 0;
  namespace ctx = boost::context;
  ctx::fiber f{[&steps](ctx::fiber&& caller) {
    ++steps;
    caller = std::move(caller).resume();
    ++steps;
    return std::move(caller);
  }};
  f = std::move(f).resume();
  f = std::move(f).resume();
  moekit::Status s = steps == 2 ? moekit::Status::ok : moekit::Status::internal_error;
  std::printf("moekit::emu consumer: Boost.Context fiber ran %d steps: %s\n", steps, moekit::to_string(s));
  return moekit::is_ok(s) ? 0 : 1;
}
