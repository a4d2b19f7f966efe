// Writes seed inputs for the fuzz targets: small valid frames of every method and several element
// types, chunks for the round-trip target and (when built with ZIPNN_FUZZ_CONTAINER) containers.
// Usage: make_seeds OUT_DIR   (creates OUT_DIR/frame, OUT_DIR/roundtrip, OUT_DIR/container and
// OUT_DIR/plan: small safetensors, GGUF and .npz files)
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "tests/codec/gguf_writer.h"
#include "tests/codec/npz_writer.h"
#ifdef ZIPNN_FUZZ_CONTAINER
#include "codec/container.h"
#endif

namespace {

using Bytes = std::vector<uint8_t>;
namespace fs = std::filesystem;

void Write(const fs::path& path, const Bytes& b) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// Small chunks of a few kinds: weights-like floats, small ints, zeros, text, random.
std::vector<std::pair<zipnn::DType, Bytes>> Chunks() {
  using zipnn::DType;
  std::mt19937_64 rng(1);
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  std::vector<std::pair<DType, Bytes>> v;
  Bytes f32(4 * 600), bf16(2 * 5000), f16(2 * 700), i32(4 * 300 + 3), text, random(500);
  for (size_t i = 0; i < f32.size(); i += 4) {
    const float f = gauss(rng);
    std::memcpy(&f32[i], &f, 4);
  }
  for (size_t i = 0; i < bf16.size(); i += 2) {
    const float f = gauss(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bf16[i] = static_cast<uint8_t>(u >> 16), bf16[i + 1] = static_cast<uint8_t>(u >> 24);
  }
  for (size_t i = 0; i < bf16.size(); i += 2 * 997) bf16[i] = bf16[i + 1] = 0;  // escapes if joint
  for (size_t i = 0; i < f16.size(); i += 2) {  // exponent around 2^-6, random mantissa
    const uint16_t h = static_cast<uint16_t>((rng() & 0x83ff) | (0x2000 + (rng() % 3) * 0x400));
    f16[i] = static_cast<uint8_t>(h), f16[i + 1] = static_cast<uint8_t>(h >> 8);
  }
  for (size_t i = 0; i + 4 <= i32.size(); i += 4) {
    const int32_t x = static_cast<int32_t>(rng() % 17) - 8;
    std::memcpy(&i32[i], &x, 4);
  }
  for (int i = 0; i < 80; i++) text.insert(text.end(), {'l', 'a', 'y', 'e', 'r', '.', '0', ' '});
  for (auto& b : random) b = static_cast<uint8_t>(rng());
  v.push_back({DType::kF32, f32});
  v.push_back({DType::kBF16, bf16});
  v.push_back({DType::kF16, f16});
  v.push_back({DType::kI32, i32});
  v.push_back({DType::kBytes, text});
  v.push_back({DType::kF8E4M3, random});
  v.push_back({DType::kBF16, Bytes(1000, 0)});
  v.push_back({DType::kU8, Bytes{}});
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace zipnn;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const fs::path out = argv[1];
  for (const char* d : {"frame", "roundtrip", "container", "plan"}) fs::create_directories(out / d);
  int n = 0;
  std::vector<Bytes> frames;
  for (const auto& [dtype, chunk] : Chunks()) {
    for (std::optional<Method> m : {std::optional<Method>{}, std::optional<Method>{Method::kZstd},
                                    std::optional<Method>{Method::kRaw}}) {
      EncodeOptions opts;
      opts.force_method = m;
      Bytes frame;
      if (!FrameEncoder(opts).Encode(chunk, dtype, frame).ok()) return 1;
      frames.push_back(frame);
      for (uint8_t mode : {uint8_t{0}, uint8_t{1}}) {
        Bytes seed{mode};
        seed.insert(seed.end(), frame.begin(), frame.end());
        Write(out / "frame" / ("seed" + std::to_string(n++)), seed);
      }
    }
    Bytes rt{static_cast<uint8_t>(dtype), 0x07};  // no forced method, no segments
    rt.insert(rt.end(), chunk.begin(), chunk.end());
    Write(out / "roundtrip" / ("seed" + std::to_string(n++)), rt);
    if (dtype == DType::kBF16) {  // joint coding forced, k = 1..3
      for (int k = 1; k <= 3; k++) {
        rt[0] = static_cast<uint8_t>(static_cast<int>(dtype) + kNumDTypes * (k + 1));
        Write(out / "roundtrip" / ("seed" + std::to_string(n++)), rt);
      }
    }
  }
  {  // BF16 with a scale per column, coded with its grid: a frame with exponent shifts
    std::mt19937_64 rng(2);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    const size_t columns = 64, rows = 128;
    Bytes chunk(2 * columns * rows);
    for (size_t i = 0; i < columns * rows; i++) {
      const float f = std::ldexp(gauss(rng), -static_cast<int>((i % columns) * 5 % 9));
      uint32_t u;
      std::memcpy(&u, &f, 4);
      chunk[2 * i] = static_cast<uint8_t>(u >> 16),
                chunk[2 * i + 1] = static_cast<uint8_t>(u >> 24);
    }
    Bytes frame;
    if (!FrameEncoder().Encode(chunk, DType::kBF16, frame, {}, nullptr, {0, columns}).ok())
      return 1;
    frames.push_back(frame);
    Bytes seed{0};
    seed.insert(seed.end(), frame.begin(), frame.end());
    Write(out / "frame" / ("seed" + std::to_string(n++)), seed);
    Bytes rt{static_cast<uint8_t>(DType::kBF16), 0x07 | 2 << 3, columns, 0, 0, 0};  // the grid
    rt.insert(rt.end(), chunk.begin(), chunk.end());
    Write(out / "roundtrip" / ("seed" + std::to_string(n++)), rt);
  }
  {  // safetensors files: every dtype spelling, matrices, small tensors sharing a chunk, padding
    const std::string headers[] = {
        R"({"w":{"dtype":"BF16","shape":[64,40],"data_offsets":[0,5120]},)"
        R"("b":{"dtype":"BF16","shape":[40],"data_offsets":[5120,5200]},)"
        R"("s":{"dtype":"F8_E8M0","shape":[64,1],"data_offsets":[5200,5264]},)"
        R"("q":{"dtype":"F4","shape":[16,16],"data_offsets":[5264,5392]},)"
        R"("c":{"dtype":"C64","shape":[4,2],"data_offsets":[5392,5456]},)"
        R"("__metadata__":{"format":"pt"}})",
        R"({"a":{"dtype":"F32","shape":[3,1,7],"data_offsets":[0,84]},)"
        R"("i":{"dtype":"I64","shape":[2],"data_offsets":[88,104]},)"
        R"("e":{"dtype":"F8_E4M3","shape":[0],"data_offsets":[104,104]},)"
        R"("h":{"dtype":"F16","shape":[],"data_offsets":[104,106]}})",
    };
    for (const std::string& j : headers) {
      Bytes f(8);
      const uint64_t len = j.size();
      for (int i = 0; i < 8; i++) f[i] = static_cast<uint8_t>(len >> (8 * i));
      f.insert(f.end(), j.begin(), j.end());
      for (int i = 0; i < 5456; i++) f.push_back(static_cast<uint8_t>(0x3c + i % 7));
      Write(out / "plan" / ("seed" + std::to_string(n++)), f);
    }
  }
  {  // a GGUF file: metadata of every value kind, an F32, a BF16 matrix, a quantized tensor
    zipnn::test::GgufWriter w;
    w.AddKvString("general.name", "seed");
    w.AddKvStrings("tokens", 2);
    w.AddKvNested("nested");
    w.AddKvF32("scale");
    auto data = [](size_t n) {
      Bytes d(n);
      for (size_t i = 0; i < n; i++) d[i] = static_cast<uint8_t>(0x3c + i % 7);
      return d;
    };
    w.tensors.push_back({"norm", {16}, 0, data(64)});
    w.tensors.push_back({"w", {32, 8}, 30, data(512)});
    w.tensors.push_back({"q", {64}, 2, data(36)});
    Write(out / "plan" / ("seed" + std::to_string(n++)), w.Build());
  }
  for (bool zip64 : {false, true}) {  // .npz archives: an F32 matrix, an I8 vector, a non-array
    zipnn::test::NpzWriter w;
    w.zip64 = zip64;
    const std::string plain = "'fortran_order': False, ";
    w.members.push_back(
        {"w.npy", "{'descr': '<f4', " + plain + "'shape': (16, 8), }", Bytes(512, 0x3c)});
    w.members.push_back(
        {"ids.npy", "{'descr': '|i1', " + plain + "'shape': (40,), }", Bytes(40, 1)});
    w.members.push_back({"notes.txt", "", Bytes(30, 'x'), 0, true});
    Write(out / "plan" / ("seed" + std::to_string(n++)), w.Build());
  }
#ifdef ZIPNN_FUZZ_CONTAINER
  for (size_t count : {size_t{0}, size_t{1}, size_t{3}, frames.size()}) {
    const fs::path path = out / "container" / ("seed" + std::to_string(n++));
    Result<ContainerWriter> w = ContainerWriter::Create(path.string());
    if (!w.ok()) return 1;
    for (size_t i = 0; i < count; i++)
      if (!w->Append(frames[i]).ok()) return 1;
    if (!w->Finish().ok()) return 1;
  }
#endif
  std::printf("wrote %d seeds to %s\n", n, out.c_str());
  return 0;
}
