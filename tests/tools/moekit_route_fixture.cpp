// Writes the input files of the moekit-route failure tests (tests/tools/moekit_route.cmake) into
// the folder given as the only argument: good inputs (ALGORITHMS.md §1.11 logits, configs) that the
// failure cases combine with bad parameters, and bad inputs (malformed, non-finite, mis-shaped).
// A tiny C++ program, so that the tests need no Python.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "moekit/core/error_message.hpp"
#include "moekit/io/npy.hpp"

namespace {

namespace fs = std::filesystem;
using moekit::Status;

bool ok = true;

template <class T>
void npy(fs::path const& dir, char const* name, std::vector<T> const& v, std::vector<std::int64_t> shape) {
  if (moekit::io::write_npy(dir / name, v.data(), std::move(shape)) != Status::ok) {
    std::fprintf(stderr, "moekit_route_fixture: %s\n", moekit::last_error_message());
    ok = false;
  }
}

void text(fs::path const& dir, char const* name, std::string const& content) {
  std::ofstream f(dir / name, std::ios::binary);
  f << content;
  ok = ok && static_cast<bool>(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: moekit_route_fixture DIR\n");
    return 2;
  }
  fs::path const dir = argv[1];
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);

  std::vector<float> const z = {1.2f,  -0.3f, 2.5f, 0.8f, -1.1f, 2.1f,  0.0f, 1.7f,
                                -0.5f, 0.9f,  0.3f, 1.6f, 2.2f,  -0.8f, 1.1f, 0.4f};
  npy(dir, "logits.npy", z, {2, 8});
  npy(dir, "logits_1d.npy", z, {16});
  npy(dir, "logits_e64.npy", std::vector<float>(64, 0.5f), {1, 64});
  npy(dir, "logits_e6.npy", std::vector<float>(z.begin(), z.begin() + 12), {2, 6});
  std::vector<double> const z64(z.begin(), z.end());
  npy(dir, "logits_f64.npy", z64, {2, 8});
  auto with = [&](std::int64_t t, int e, float v) {
    auto c = z;
    c[static_cast<std::size_t>(t * 8 + e)] = v;
    return c;
  };
  npy(dir, "logits_nan.npy", with(1, 3, std::numeric_limits<float>::quiet_NaN()), {2, 8});
  npy(dir, "logits_inf.npy", with(0, 5, std::numeric_limits<float>::infinity()), {2, 8});

  std::vector<float> identity(64, 0.f);
  for (int e = 0; e < 8; ++e) {
    identity[static_cast<std::size_t>(e * 9)] = 1.f;
  }
  npy(dir, "hidden.npy", z, {2, 8});
  npy(dir, "hidden_nan.npy", with(0, 2, std::numeric_limits<float>::quiet_NaN()), {2, 8});
  npy(dir, "gate_weight.npy", identity, {8, 8});
  npy(dir, "gate_weight_h5.npy", std::vector<float>(40, 0.5f), {8, 5});

  npy(dir, "bias_v3.npy", std::vector<float>{0.05f, -0.05f, -0.10f, 0.f, 0.20f, 0.f, 0.15f, -0.15f}, {8});
  npy(dir, "bias_7.npy", std::vector<float>(7, 0.f), {7});

  // Malformed files.
  text(dir, "bad_magic.npy", "PK\x03\x04 this is a zip file, not an npy file");
  {
    moekit::io::NpyArray a = moekit::io::make_npy_array(z.data(), {2, 8});
    std::vector<std::byte> image;
    if (moekit::io::encode_npy(a, image) != Status::ok) {
      return 1;
    }
    image.resize(image.size() - 4);  // the data ends early
    std::ofstream f(dir / "truncated.npy", std::ios::binary);
    f.write(reinterpret_cast<char const*>(image.data()), static_cast<std::streamsize>(image.size()));
  }
  {
    std::string header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 8), }";
    header += std::string(128 - 10 - header.size() - 1, ' ') + "\n";
    std::string file = std::string("\x93NUMPY\x01\x00", 8);
    file += char(header.size() & 0xFF);
    file += char(header.size() >> 8);
    file += header;
    file.append(reinterpret_cast<char const*>(z.data()), z.size() * sizeof(float));
    text(dir, "fortran.npy", file);
  }

  // Configs.
  text(dir, "mixtral.json", R"({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2})");
  text(dir, "deepseek_v3.json", R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2,
    "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
    "routed_scaling_factor": 2.5})");
  text(dir, "malformed.json", R"({"model_type": "mixtral", "num_local_experts": 8,)");
  text(dir, "array.json", "[1, 2, 3]");
  text(dir, "not_a_folder", "a file where --out wants a folder\n");
  if (!ok) {
    return 1;
  }
  std::printf("moekit_route_fixture: inputs written to %s\n", dir.string().c_str());
  return 0;
}
