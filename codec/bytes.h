// Little helpers for reading and writing integers in byte buffers, and the choice among SIMD
// versions of a routine. Internal to codec/.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "codec/page_buffer.h"

namespace zipnn::internal {

// The widest vector instructions a routine with several versions may use: kBest (what the CPU
// has) but in tests, which ask for each narrower one in turn so that every path runs anywhere.
enum class Simd { kBaseline, kAvx2, kAvx512, kBest = kAvx512 };

// Whether `simd` allows AVX2 (AVX-512 with byte and word operations) and the CPU has it. AVX-512
// only from the generation with VBMI2 on (Ice Lake, Zen 4): on the first ones (Skylake-SP,
// Cascade Lake) 512-bit work lowers the core's clock, and the scalar Huffman loops would pay.
inline bool UseAvx2(Simd simd) {
#ifdef __x86_64__
  return simd >= Simd::kAvx2 && __builtin_cpu_supports("avx2");
#else
  return (void)simd, false;
#endif
}
inline bool UseAvx512(Simd simd) {
#ifdef __x86_64__
  return simd >= Simd::kAvx512 && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vbmi2");
#else
  return (void)simd, false;
#endif
}

// Around AVX-512 kernels: GCC 12's intrinsics start from _mm512_undefined_*, which its
// -Wmaybe-uninitialized flags (clang has no such warning, and -Werror rejects unknown ones).
#if defined(__GNUC__) && !defined(__clang__)
#define ZIPNN_AVX512_KERNELS_BEGIN \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define ZIPNN_AVX512_KERNELS_END _Pragma("GCC diagnostic pop")
#else
#define ZIPNN_AVX512_KERNELS_BEGIN
#define ZIPNN_AVX512_KERNELS_END
#endif

inline uint16_t Load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline void Store16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline void Store32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void Store64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline uint64_t LoadBE64(const uint8_t* p) { return __builtin_bswap64(Load64(p)); }

// LEB128 at p (at most 10 bytes); returns the end.
inline uint8_t* PutVarint(uint8_t* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<uint8_t>(v);
  return p;
}
inline void PutVarint(std::vector<uint8_t>& out, uint64_t v) {
  uint8_t buf[10];
  out.insert(out.end(), buf, PutVarint(buf, v));
}

// The first `n` bytes of `v`, a scratch buffer that only grows: resizing it to each use's size
// would zero-fill the difference every time sizes alternate.
// New memory is prefaulted first (see PrefaultPages): cheaper than the zero-fill's page traps.
inline std::span<uint8_t> GrowTo(std::vector<uint8_t>& v, size_t n) {
  if (v.capacity() < n) {
    v.reserve(std::max(n, 2 * v.capacity()));  // (geometric, as resize would grow it)
    PrefaultPages(v.data(), n);
  }
  if (v.size() < n) v.resize(n);
  return {v.data(), n};
}

// A bounds-checked reader over a byte span: every read fails cleanly past the end.
class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> s) : p_(s.data()), end_(s.data() + s.size()) {}
  bool GetU8(uint8_t* v) {
    if (p_ >= end_) return false;
    *v = *p_++;
    return true;
  }
  bool GetVarint(uint64_t* v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!GetU8(&b)) return false;
      r |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) {
        *v = r;
        return true;
      }
    }
    return false;
  }
  bool GetBytes(size_t n, std::span<const uint8_t>* out) {
    if (static_cast<size_t>(end_ - p_) < n) return false;
    *out = {p_, n};
    p_ += n;
    return true;
  }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }
  const uint8_t* pos() const { return p_; }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

}  // namespace zipnn::internal
