// Helpers shared by the codec tests: deterministic data generators, frame round trips, header
// forging and in-memory safetensors files.
#pragma once

#include <gtest/gtest.h>
#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "codec/bytes.h"
#include "codec/codec.h"

namespace zipnn::test {

using Bytes = std::vector<uint8_t>;

inline constexpr DType kAllDTypes[] = {DType::kBytes, DType::kBF16,   DType::kF16,    DType::kF32,
                                       DType::kF64,   DType::kF8E4M3, DType::kF8E5M2, DType::kI8,
                                       DType::kI16,   DType::kI32,    DType::kI64,    DType::kU8,
                                       DType::kU16,   DType::kU32,    DType::kU64,    DType::kBool};

// Every SIMD level of the routines that have several; levels the CPU lacks fall back to the next.
inline constexpr internal::Simd kAllSimd[] = {internal::Simd::kAvx512, internal::Simd::kAvx2,
                                              internal::Simd::kBaseline};

// Says which of kAllSimd this CPU runs as a narrower level, so that a log shows which kernels a
// run did not reach.
inline void NoteSimdFallbacks() {
  if (!internal::UseAvx512(internal::Simd::kBest))
    std::printf("note: no AVX-512 (BW, VBMI2) here: level kAvx512 runs the AVX2 kernels\n");
  if (!internal::UseAvx2(internal::Simd::kBest))
    std::printf("note: no AVX2 here: levels kAvx512 and kAvx2 run the baseline code\n");
}

// Name usable in a gtest parameter name.
inline std::string ParamName(DType t) {
  std::string s(DTypeName(t));
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

inline Bytes RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes b(n);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(b.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return b;
}

// Exponent and mantissa widths of a float type.
struct FloatFormat {
  int exp_bits;
  int man_bits;
};
inline FloatFormat FormatOf(DType t) {
  switch (t) {
    case DType::kBF16:
      return {8, 7};
    case DType::kF16:
      return {5, 10};
    case DType::kF32:
      return {8, 23};
    case DType::kF64:
      return {11, 52};
    case DType::kF8E4M3:
      return {4, 3};
    case DType::kF8E5M2:
      return {5, 2};
    default:
      return {0, 0};
  }
}

// The bits of `v` in a float format (mantissa truncated, finite values clamped). Good enough for
// realistic test weights in every format, without depending on compiler half-float support.
inline uint64_t PackFloat(double v, FloatFormat f) {
  const uint64_t sign = std::signbit(v) ? 1 : 0;
  v = std::fabs(v);
  const int bias = (1 << (f.exp_bits - 1)) - 1;
  const uint64_t man_max = (uint64_t{1} << f.man_bits) - 1;
  uint64_t exp = 0, man = 0;
  if (v != 0) {
    int e;
    const double m = std::frexp(v, &e);  // v = m * 2^e, m in [0.5, 1)
    const int biased = e - 1 + bias;
    if (biased >= (1 << f.exp_bits) - 1) {
      exp = (uint64_t{1} << f.exp_bits) - 2;
      man = man_max;
    } else if (biased <= 0) {
      man = static_cast<uint64_t>(std::ldexp(v, f.man_bits + bias - 1));
    } else {
      exp = static_cast<uint64_t>(biased);
      man = static_cast<uint64_t>(std::ldexp(2 * m - 1, f.man_bits));
    }
  }
  return sign << (f.exp_bits + f.man_bits) | exp << f.man_bits | std::min(man, man_max);
}

inline void StoreElement(uint8_t* p, uint64_t bits, size_t size) {
  for (size_t i = 0; i < size; i++) p[i] = static_cast<uint8_t>(bits >> (8 * i));  // little-endian
}

// The bits of `v` in float type `t` (rounded to nearest even).
inline uint64_t FloatBits(double v, DType t) {
  uint64_t bits;
  if (t == DType::kF32) {
    const float f = static_cast<float>(v);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bits = u;
  } else if (t == DType::kF64) {
    std::memcpy(&bits, &v, 8);
  } else {
    bits = PackFloat(v, FormatOf(t));
  }
  return bits;
}

// Float weights (BF16, F16 or F32) of `rows` x `columns`, Gaussian with a scale per column
// (2^-8 to 2^0, as output channels of a trained layer differ).
inline Bytes ColumnScaled(DType t, size_t rows, size_t columns, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  const size_t es = DTypeSize(t);
  Bytes b(es * rows * columns);
  for (size_t i = 0; i < rows * columns; i++) {
    const double v = std::ldexp(dist(rng), -static_cast<int>((i % columns * 5) % 9)) * 0.05;
    StoreElement(b.data() + es * i, FloatBits(v, t), es);
  }
  return b;
}
inline Bytes ColumnScaledBF16(size_t rows, size_t columns, uint64_t seed) {
  return ColumnScaled(DType::kBF16, rows, columns, seed);
}

// `n` elements of Gaussian weights N(0, stddev^2) in float type `t`.
inline Bytes GaussianWeights(DType t, size_t n, double stddev, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, stddev);
  const size_t es = DTypeSize(t);
  Bytes b(n * es);
  for (size_t i = 0; i < n; i++) StoreElement(b.data() + i * es, FloatBits(dist(rng), t), es);
  return b;
}

// `n` integers of type `t` uniform in [lo, hi] (two's complement for signed types).
inline Bytes SmallInts(DType t, size_t n, int64_t lo, int64_t hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> dist(lo, hi);
  const size_t es = DTypeSize(t);
  Bytes b(n * es);
  for (size_t i = 0; i < n; i++)
    StoreElement(b.data() + i * es, static_cast<uint64_t>(dist(rng)), es);
  return b;
}

// Data a codec should find compressible for type `t`, `n` bytes (a trailing partial element is
// random).
inline Bytes TypicalData(DType t, size_t n, uint64_t seed) {
  const size_t es = DTypeSize(t), elems = n / es;
  Bytes b;
  if (IsFloat(t)) {
    b = GaussianWeights(t, elems, t == DType::kF8E4M3 || t == DType::kF8E5M2 ? 0.5 : 0.02, seed);
  } else if (t == DType::kBool) {
    b = SmallInts(t, elems, 0, 1, seed);
  } else if (t == DType::kBytes) {
    const std::string words[] = {"tensor ", "weight ", "bias ", "layer.", "0", "1", "attn ", "\n"};
    std::mt19937_64 rng(seed);
    while (b.size() < n) {
      const std::string& w = words[rng() % std::size(words)];
      b.insert(b.end(), w.begin(), w.end());
    }
    b.resize(n);
    return b;
  } else if (t == DType::kI8 || t == DType::kI16 || t == DType::kI32 || t == DType::kI64) {
    b = SmallInts(t, elems, -8, 8, seed);
  } else {
    b = SmallInts(t, elems, 0, 15, seed);
  }
  const Bytes tail = RandomBytes(n - b.size(), seed ^ 0x5eed);
  b.insert(b.end(), tail.begin(), tail.end());
  return b;
}

// Special bit patterns of a float format: zeros, infinities, quiet and signalling NaNs with
// payloads, denormals, extremes; both signs.
inline std::vector<uint64_t> SpecialPatterns(FloatFormat f) {
  const uint64_t man_max = (uint64_t{1} << f.man_bits) - 1;
  const uint64_t exp_max = (uint64_t{1} << f.exp_bits) - 1;
  const uint64_t quiet = uint64_t{1} << (f.man_bits - 1);
  const uint64_t inf = exp_max << f.man_bits;
  std::vector<uint64_t> p = {
      0,                                        // +0
      inf,                                      // +inf (a NaN for F8 E4M3FN)
      inf | quiet,                              // canonical quiet NaN
      inf | quiet | 1,                          // quiet NaN with payload
      inf | man_max,                            // quiet NaN, all payload bits
      inf | 1,                                  // signalling NaN
      inf | (man_max >> 1),                     // signalling NaN, widest payload
      1,                                        // smallest denormal
      man_max,                                  // largest denormal
      uint64_t{1} << f.man_bits,                // smallest normal
      ((exp_max - 1) << f.man_bits) | man_max,  // largest finite
  };
  const uint64_t sign = uint64_t{1} << (f.exp_bits + f.man_bits);
  const size_t n = p.size();
  for (size_t i = 0; i < n; i++) p.push_back(p[i] | sign);  // -0, -inf, negative NaNs, ...
  return p;
}

inline uint64_t ReadLE(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v |= uint64_t{p[i]} << (8 * i);
  return v;
}
inline void WriteLE(uint8_t* p, uint64_t v, size_t n) { StoreElement(p, v, n); }

// ---- Frames ----------------------------------------------------------------------------------

// Encodes `data` into one frame, checks what every frame must satisfy (header agrees with the
// input, size bound), decodes it with a fresh decoder and compares. `frame` receives the frame.
inline ::testing::AssertionResult RoundTrip(std::span<const uint8_t> data, DType dtype,
                                            const EncodeOptions& opts = {},
                                            std::span<const uint32_t> segments = {},
                                            Bytes* frame_out = nullptr,
                                            const TensorGrid& grid = {}) {
  FrameEncoder enc(opts);
  Bytes frame = {0xAA, 0xBB};  // Encode appends: keep a prefix to check it is left alone
  Status st = enc.Encode(data, dtype, frame, segments, nullptr, grid);
  if (!st.ok()) return ::testing::AssertionFailure() << "encode: " << st.ToString();
  if (frame[0] != 0xAA || frame[1] != 0xBB)
    return ::testing::AssertionFailure() << "Encode changed bytes before the frame";
  frame.erase(frame.begin(), frame.begin() + 2);
  Result<FrameInfo> info = ParseFrameHeader(frame);
  if (!info.ok()) return ::testing::AssertionFailure() << "parse: " << info.status().ToString();
  if (info->raw_size != data.size())
    return ::testing::AssertionFailure() << "raw_size " << info->raw_size << " != " << data.size();
  if (info->frame_size() != frame.size())
    return ::testing::AssertionFailure()
           << "frame_size " << info->frame_size() << " != encoded " << frame.size();
  if (frame.size() > MaxFrameSize(data.size()))
    return ::testing::AssertionFailure() << "frame of " << frame.size() << " bytes for "
                                         << data.size() << " raw bytes exceeds MaxFrameSize";
  if (info->checksum != Checksum(data))
    return ::testing::AssertionFailure() << "header checksum is not XXH3-64 of the data";
  if (dtype != DType::kBytes && info->dtype != dtype)
    return ::testing::AssertionFailure()
           << "frame dtype " << DTypeName(info->dtype) << " != " << DTypeName(dtype);
  FrameDecoder dec;
  Bytes out(data.size(), 0x5A);
  st = dec.Decode(frame, out);
  if (!st.ok())
    return ::testing::AssertionFailure()
           << "decode (" << MethodName(info->method) << "): " << st.ToString();
  if (!std::equal(out.begin(), out.end(), data.begin(), data.end())) {
    size_t i = 0;
    while (out[i] == data[i]) i++;
    return ::testing::AssertionFailure() << "decoded bytes differ (" << MethodName(info->method)
                                         << ", " << data.size() << " bytes), first at " << i;
  }
  if (frame_out) *frame_out = std::move(frame);
  return ::testing::AssertionSuccess();
}

inline FrameInfo InfoOf(std::span<const uint8_t> frame) {
  Result<FrameInfo> info = ParseFrameHeader(frame);
  EXPECT_TRUE(info.ok()) << info.status().ToString();
  return info.ok() ? *info : FrameInfo{};
}

// The frame header layout (codec/frame_format.h):
//   "ZNF" version u8 | method u8 | dtype u8 | flags u8 | 0 u8 | raw_size u32 | payload_size u32 |
//   checksum u64 | 0 u32 | check u32 = low 32 bits of XXH3-64 of bytes [0, 28).
// Tests that forge headers rely on it; HeaderLayoutIsAsDocumented checks it.
namespace hdr {
inline constexpr size_t kMethod = 4, kDType = 5, kFlags = 6, kPad = 7, kRawSize = 8,
                        kPayloadSize = 12, kChecksum = 16, kReserved = 24, kCheck = 28;
}  // namespace hdr

inline void FixHeaderCheck(uint8_t* frame) {
  WriteLE(frame + hdr::kCheck, static_cast<uint32_t>(XXH3_64bits(frame, hdr::kCheck)), 4);
}

inline Bytes ForgeHeader(uint8_t method, uint8_t dtype, uint32_t raw_size, uint32_t payload_size,
                         uint64_t checksum) {
  Bytes h(kFrameHeaderSize, 0);
  h[0] = 'Z', h[1] = 'N', h[2] = 'F', h[3] = 2;  // the version written
  h[hdr::kMethod] = method;
  h[hdr::kDType] = dtype;
  WriteLE(h.data() + hdr::kRawSize, raw_size, 4);
  WriteLE(h.data() + hdr::kPayloadSize, payload_size, 4);
  WriteLE(h.data() + hdr::kChecksum, checksum, 8);
  FixHeaderCheck(h.data());
  return h;
}

// ---- Files -------------------------------------------------------------------------------------

inline ReadAtFn MemoryReader(const Bytes& file) {
  return [&file](uint64_t offset, std::span<uint8_t> out) -> Status {
    if (offset > file.size() || out.size() > file.size() - offset)
      return Status::Io("read past the end of the test file");
    if (!out.empty()) std::memcpy(out.data(), file.data() + offset, out.size());
    return Status::Ok();
  };
}

// A safetensors file: 8-byte little-endian header length, the JSON header as given, the data.
inline Bytes MakeSafetensors(const std::string& json, const Bytes& data) {
  Bytes f(8 + json.size() + data.size());
  WriteLE(f.data(), json.size(), 8);
  std::copy(json.begin(), json.end(), f.begin() + 8);
  std::copy(data.begin(), data.end(), f.begin() + 8 + static_cast<ptrdiff_t>(json.size()));
  return f;
}

// The real-weights corpus: $ZIPNN_CORPUS, else the directory beside the checkout.
inline std::filesystem::path CorpusDir() {
  if (const char* env = std::getenv("ZIPNN_CORPUS"); env && *env) return env;
#ifdef ZIPNN_CORPUS_DIR
  return ZIPNN_CORPUS_DIR;
#else
  return {};
#endif
}

}  // namespace zipnn::test
