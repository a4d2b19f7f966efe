#include "codec/byte_groups.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <span>

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#ifdef __x86_64__
#include <immintrin.h>  // AVX-512 merge, chosen at run time
#endif

#include "codec/bytes.h"

namespace zipnn::internal {
namespace {

enum class Kind { kFloat, kSigned, kUnsigned };

Kind KindOf(DType t) {
  if (IsFloat(t)) return Kind::kFloat;
  switch (t) {
    case DType::kI8:
    case DType::kI16:
    case DType::kI32:
    case DType::kI64:
      return Kind::kSigned;
    default:
      return Kind::kUnsigned;
  }
}

template <class U>
inline U Rotl1(U v) {
  constexpr int kBits = sizeof(U) * 8;
  return static_cast<U>(static_cast<U>(v << 1) | static_cast<U>(v >> (kBits - 1)));
}
template <class U>
inline U Rotr1(U v) {
  constexpr int kBits = sizeof(U) * 8;
  return static_cast<U>(static_cast<U>(v >> 1) | static_cast<U>(v << (kBits - 1)));
}

// The 16- and 32-bit float kernels carry most of the bytes: give them AVX2 clones.
#define ZIPNN_SIMD __attribute__((target_clones("avx2", "default")))

// FP8: the sign bits, eight to a byte (element i at bit i % 8 of byte i / 8), and the other seven
// bits, a byte each. In weights the sign is a coin toss: inside the symbol it costs a bit all the
// same, doubles the alphabet and lengthens every code, so a table lookup decodes fewer symbols
// (measured on the corpus's FP8 tensors: the symbol stream decodes at 2042 MB/s against 1435 for
// whole bytes, and codes 0.3% smaller, sign bits included).
void SplitF8(const uint8_t* in, size_t n, uint8_t* signs, uint8_t* rest) {
  size_t i = 0;
#ifdef __SSE2__
  const __m128i low7 = _mm_set1_epi8(0x7f);
  for (; i + 16 <= n; i += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    const int m = _mm_movemask_epi8(v);  // bit j: the top bit of byte j
    signs[i / 8] = static_cast<uint8_t>(m);
    signs[i / 8 + 1] = static_cast<uint8_t>(m >> 8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(rest + i), _mm_and_si128(v, low7));
  }
#endif
  for (; i < n; i += 8) {  // (i is a multiple of 8)
    uint8_t bits = 0;
    for (size_t j = 0; j < 8 && i + j < n; j++) {
      bits = static_cast<uint8_t>(bits | (in[i + j] >> 7) << j);
      rest[i + j] = in[i + j] & 0x7f;
    }
    signs[i / 8] = bits;
  }
}

// Byte b's bits as the top bits of eight bytes (little-endian): bit j to bit 8j + 7.
constexpr std::array<uint64_t, 256> kSignSpread = [] {
  std::array<uint64_t, 256> t{};
  for (int b = 0; b < 256; b++)
    for (int j = 0; j < 8; j++)
      if (b >> j & 1) t[b] |= uint64_t{0x80} << (8 * j);
  return t;
}();

// False when the streams are not as SplitF8 writes them: a sign bit among the other bits, or one
// past the last element (each frame has one encoding). Checked here, where the bytes are read
// anyway: a pass of its own cost 5% of decoding FP8.
bool MergeF8(const uint8_t* signs, const uint8_t* rest, size_t n, uint8_t* out) {
  uint64_t any = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t r = Load64(rest + i);
    any |= r;
    Store64(out + i, r | kSignSpread[signs[i / 8]]);
  }
  for (; i < n; i++) {
    any |= rest[i];
    out[i] = static_cast<uint8_t>(rest[i] | (signs[i / 8] >> (i % 8) & 1) << 7);
  }
  return (any & 0x8080808080808080ull) == 0 && (n % 8 == 0 || signs[n / 8] >> (n % 8) == 0);
}

// 16-bit floats are most of what we serve: SSE2 (every x86-64 has it) does 16 at a time.
void SplitF16(const uint8_t* in, size_t n, uint8_t* s0, uint8_t* s1) {
  size_t i = 0;
#ifdef __SSE2__
  const __m128i low = _mm_set1_epi16(0xff);
  for (; i + 16 <= n; i += 16) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i + 16));
    a = _mm_or_si128(_mm_slli_epi16(a, 1), _mm_srli_epi16(a, 15));
    b = _mm_or_si128(_mm_slli_epi16(b, 1), _mm_srli_epi16(b, 15));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(s0 + i),
                     _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(s1 + i),
                     _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low)));
  }
#endif
  for (; i < n; i++) {
    const uint16_t r = Rotl1(Load16(in + 2 * i));
    s0[i] = static_cast<uint8_t>(r >> 8);
    s1[i] = static_cast<uint8_t>(r);
  }
}

#ifdef __x86_64__
// MergeF16's loop with AVX-512 (BW), 64 elements at a time: the byte interleave works per 128-bit
// lane, so two permutes put the lanes' halves back in order.
ZIPNN_AVX512_KERNELS_BEGIN
__attribute__((target("avx512f,avx512bw"))) size_t MergeF16Avx512(const uint8_t* s0,
                                                                  const uint8_t* s1, size_t n,
                                                                  uint8_t* out) {
  const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
  const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512i e = _mm512_loadu_si512(s0 + i), m = _mm512_loadu_si512(s1 + i);
    const __m512i lo = _mm512_unpacklo_epi8(m, e), hi = _mm512_unpackhi_epi8(m, e);
    __m512i a = _mm512_permutex2var_epi64(lo, first, hi);
    __m512i b = _mm512_permutex2var_epi64(lo, second, hi);
    a = _mm512_or_si512(_mm512_srli_epi16(a, 1), _mm512_slli_epi16(a, 15));
    b = _mm512_or_si512(_mm512_srli_epi16(b, 1), _mm512_slli_epi16(b, 15));
    _mm512_storeu_si512(out + 2 * i, a);
    _mm512_storeu_si512(out + 2 * i + 64, b);
  }
  return i;
}
ZIPNN_AVX512_KERNELS_END
#endif

void MergeF16(const uint8_t* s0, const uint8_t* s1, size_t n, uint8_t* out,
              [[maybe_unused]] Simd simd) {
  size_t i = 0;
#ifdef __x86_64__
  if (UseAvx512(simd)) i = MergeF16Avx512(s0, s1, n, out);
#endif
#ifdef __SSE2__
  for (; i + 16 <= n; i += 16) {
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s0 + i));
    const __m128i m = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s1 + i));
    __m128i a = _mm_unpacklo_epi8(m, e), b = _mm_unpackhi_epi8(m, e);
    a = _mm_or_si128(_mm_srli_epi16(a, 1), _mm_slli_epi16(a, 15));
    b = _mm_or_si128(_mm_srli_epi16(b, 1), _mm_slli_epi16(b, 15));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i), a);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i + 16), b);
  }
#endif
  for (; i < n; i++) {
    const uint16_t r = static_cast<uint16_t>(s0[i] << 8 | s1[i]);
    Store16(out + 2 * i, Rotr1(r));
  }
}

ZIPNN_SIMD void SplitF32(const uint8_t* in, size_t n, uint8_t* s0, uint8_t* s1, uint8_t* s2,
                         uint8_t* s3) {
  for (size_t i = 0; i < n; i++) {
    const uint32_t r = Rotl1(Load32(in + 4 * i));
    s0[i] = static_cast<uint8_t>(r >> 24);
    s1[i] = static_cast<uint8_t>(r >> 16);
    s2[i] = static_cast<uint8_t>(r >> 8);
    s3[i] = static_cast<uint8_t>(r);
  }
}

ZIPNN_SIMD void MergeF32(const uint8_t* s0, const uint8_t* s1, const uint8_t* s2, const uint8_t* s3,
                         size_t n, uint8_t* out) {
  for (size_t i = 0; i < n; i++) {
    const uint32_t r = uint32_t{s0[i]} << 24 | uint32_t{s1[i]} << 16 | uint32_t{s2[i]} << 8 | s3[i];
    Store32(out + 4 * i, Rotr1(r));
  }
}

template <class U>
U LoadElem(const uint8_t* p) {
  U v;
  std::memcpy(&v, p, sizeof(U));
  return v;
}
template <class U>
void StoreElem(uint8_t* p, U v) {
  std::memcpy(p, &v, sizeof(U));
}

// Generic split: value transform, then bytes MSB first into streams[first..]. Signed integers
// put a sign bit per element, eight to a byte, in stream 0 and code the magnitude; without a
// branch per element (random signs were mispredicted: I8 split at 255 MB/s).
template <class U>
void SplitGeneric(Kind kind, size_t n, const uint8_t* in, uint8_t* const* streams) {
  constexpr int E = sizeof(U);
  auto put = [streams](int first, size_t i, U v) {
    for (int b = 0; b < E; b++)
      streams[first + b][i] = static_cast<uint8_t>(v >> (8 * (E - 1 - b)));
  };
  if (kind != Kind::kSigned) {
    for (size_t i = 0; i < n; i++) {
      const U v = LoadElem<U>(in + E * i);
      put(0, i, kind == Kind::kFloat ? Rotl1(v) : v);
    }
    return;
  }
  for (size_t i = 0; i < n; i += 8) {
    const size_t m = std::min<size_t>(8, n - i);
    uint8_t bits = 0;
    for (size_t j = 0; j < m; j++) {
      const U v = LoadElem<U>(in + E * (i + j));
      const U neg = static_cast<U>(v >> (E * 8 - 1));
      bits = static_cast<uint8_t>(bits | neg << j);
      // The magnitude: v negated where negative (INT_MIN maps to itself, as unsigned).
      put(1, i + j, static_cast<U>((v ^ static_cast<U>(U{0} - neg)) + neg));
    }
    streams[0][i >> 3] = bits;
  }
}

template <class U>
void MergeGeneric(Kind kind, size_t n, const uint8_t* const* streams, uint8_t* out) {
  constexpr int E = sizeof(U);
  const int first = kind == Kind::kSigned ? 1 : 0;
  auto get = [streams, first](size_t i) {
    U v = 0;
    for (int b = 0; b < E; b++)
      v = static_cast<U>(v | U{streams[first + b][i]} << (8 * (E - 1 - b)));
    return v;
  };
  if (kind != Kind::kSigned) {
    for (size_t i = 0; i < n; i++)
      StoreElem<U>(out + E * i, kind == Kind::kFloat ? Rotr1(get(i)) : get(i));
    return;
  }
  for (size_t i = 0; i < n; i += 8) {
    const size_t m = std::min<size_t>(8, n - i);
    const unsigned bits = streams[0][i >> 3];
    for (size_t j = 0; j < m; j++) {
      const U neg = static_cast<U>(bits >> j & 1);
      StoreElem<U>(out + E * (i + j),
                   static_cast<U>((get(i + j) ^ static_cast<U>(U{0} - neg)) + neg));
    }
  }
}

// The fields of a block-quantized type's blocks, in order (ggml's block_q* structs); empty for
// other types. `f16`: a half-precision scale.
struct BlockField {
  uint8_t offset, size;
  bool f16;
};
std::span<const BlockField> BlockFields(DType t) {
  static constexpr BlockField kQ4_0[] = {{0, 2, true}, {2, 16, false}};
  static constexpr BlockField kQ4_1[] = {{0, 2, true}, {2, 2, true}, {4, 16, false}};
  static constexpr BlockField kQ5_0[] = {{0, 2, true}, {2, 4, false}, {6, 16, false}};
  static constexpr BlockField kQ5_1[] = {{0, 2, true}, {2, 2, true}, {4, 4, false}, {8, 16, false}};
  static constexpr BlockField kQ8_0[] = {{0, 2, true}, {2, 32, false}};
  static constexpr BlockField kQ2_K[] = {
      {0, 16, false}, {16, 64, false}, {80, 2, true}, {82, 2, true}};
  static constexpr BlockField kQ3_K[] = {
      {0, 32, false}, {32, 64, false}, {96, 12, false}, {108, 2, true}};
  static constexpr BlockField kQ4_K[] = {
      {0, 2, true}, {2, 2, true}, {4, 12, false}, {16, 128, false}};
  static constexpr BlockField kQ5_K[] = {
      {0, 2, true}, {2, 2, true}, {4, 12, false}, {16, 32, false}, {48, 128, false}};
  static constexpr BlockField kQ6_K[] = {
      {0, 128, false}, {128, 64, false}, {192, 16, false}, {208, 2, true}};
  switch (t) {
    case DType::kQ4_0:
      return kQ4_0;
    case DType::kQ4_1:
      return kQ4_1;
    case DType::kQ5_0:
      return kQ5_0;
    case DType::kQ5_1:
      return kQ5_1;
    case DType::kQ8_0:
      return kQ8_0;
    case DType::kQ2_K:
      return kQ2_K;
    case DType::kQ3_K:
      return kQ3_K;
    case DType::kQ4_K:
      return kQ4_K;
    case DType::kQ5_K:
      return kQ5_K;
    case DType::kQ6_K:
      return kQ6_K;
    default:
      return {};
  }
}

// Copies a field of `size` bytes out of (gather) or into (scatter) each of `blocks` blocks of
// `block` bytes: a loop per field size, so that each copy is a few vector moves, not a call.
template <size_t kSize>
void CopyFields(const uint8_t* from, size_t from_step, uint8_t* to, size_t to_step, size_t blocks) {
  for (size_t b = 0; b < blocks; b++) std::memcpy(to + b * to_step, from + b * from_step, kSize);
}
void CopyFields(size_t size, const uint8_t* from, size_t from_step, uint8_t* to, size_t to_step,
                size_t blocks) {
  switch (size) {
    case 4:
      return CopyFields<4>(from, from_step, to, to_step, blocks);
    case 12:
      return CopyFields<12>(from, from_step, to, to_step, blocks);
    case 16:
      return CopyFields<16>(from, from_step, to, to_step, blocks);
    case 32:
      return CopyFields<32>(from, from_step, to, to_step, blocks);
    case 64:
      return CopyFields<64>(from, from_step, to, to_step, blocks);
    case 128:
      return CopyFields<128>(from, from_step, to, to_step, blocks);
    default:
      for (size_t b = 0; b < blocks; b++) std::memcpy(to + b * to_step, from + b * from_step, size);
  }
}

void SplitBlocks(std::span<const BlockField> fields, const GroupLayout& l, const uint8_t* in,
                 uint8_t* const* streams) {
  int s = 0;
  for (const BlockField& f : fields) {
    if (f.f16) {
      uint8_t *hi = streams[s++], *lo = streams[s++];
      for (size_t b = 0; b < l.elements; b++) {
        const uint16_t r = Rotl1(Load16(in + b * l.elem + f.offset));
        hi[b] = static_cast<uint8_t>(r >> 8);
        lo[b] = static_cast<uint8_t>(r);
      }
    } else {
      CopyFields(f.size, in + f.offset, l.elem, streams[s++], f.size, l.elements);
    }
  }
}

void MergeBlocks(std::span<const BlockField> fields, const GroupLayout& l,
                 const uint8_t* const* streams, uint8_t* out) {
  int s = 0;
  for (const BlockField& f : fields) {
    if (f.f16) {
      const uint8_t *hi = streams[s++], *lo = streams[s++];
      for (size_t b = 0; b < l.elements; b++)
        Store16(out + b * l.elem + f.offset, Rotr1(static_cast<uint16_t>(hi[b] << 8 | lo[b])));
    } else {
      CopyFields(f.size, streams[s++], f.size, out + f.offset, l.elem, l.elements);
    }
  }
}

}  // namespace

GroupLayout LayoutFor(DType t, size_t raw_size, bool old_one_byte) {
  GroupLayout l;
  l.elem = DTypeSize(t);
  l.elements = raw_size / l.elem;
  l.tail = raw_size % l.elem;
  const Kind kind = KindOf(t);
  // One-byte types: FP8 splits its sign off, I8 does not (see byte_groups.h); before, the reverse.
  const bool one_byte_signs = (kind == Kind::kFloat) != old_one_byte;
  l.sign_stream = t != DType::kBytes &&
                  (l.elem == 1 ? kind != Kind::kUnsigned && one_byte_signs : kind == Kind::kSigned);
  l.exponents = kind != Kind::kFloat ? 0 : l.sign_stream ? 2 : 1;
  l.streams = static_cast<int>(l.elem) + (l.sign_stream ? 1 : 0);
  const std::span<const BlockField> fields = BlockFields(t);
  if (!fields.empty()) {
    l.streams = 0;
    for (const BlockField& f : fields) {
      if (f.f16) l.exponents |= 1u << l.streams;
      l.per_element[l.streams++] = f.f16 ? 1 : f.size;
      if (f.f16) l.per_element[l.streams++] = 1;
    }
  }
  return l;
}

void SplitStreams(DType t, const GroupLayout& l, const uint8_t* in, uint8_t* const* s) {
  const Kind kind = KindOf(t);
  const size_t n = l.elements;
  if (n == 0) return;    // (empty streams may have no buffer at all)
  if (l.streams == 1) {  // one byte per element: the bytes themselves (a rotation gains nothing)
    if (s[0] != in) std::memcpy(s[0], in, n);
    return;
  }
  if (const std::span<const BlockField> f = BlockFields(t); !f.empty())
    return SplitBlocks(f, l, in, s);
  if (kind == Kind::kFloat && l.elem == 1) return SplitF8(in, n, s[0], s[1]);
  if (kind == Kind::kFloat && l.elem == 2) return SplitF16(in, n, s[0], s[1]);
  if (kind == Kind::kFloat && l.elem == 4) return SplitF32(in, n, s[0], s[1], s[2], s[3]);
  switch (l.elem) {
    case 1:
      return SplitGeneric<uint8_t>(kind, n, in, s);
    case 2:
      return SplitGeneric<uint16_t>(kind, n, in, s);
    case 4:
      return SplitGeneric<uint32_t>(kind, n, in, s);
    default:
      return SplitGeneric<uint64_t>(kind, n, in, s);
  }
}

bool MergeStreams(DType t, const GroupLayout& l, const uint8_t* const* s, uint8_t* out, Simd simd) {
  const Kind kind = KindOf(t);
  const size_t n = l.elements;
  if (n == 0) return true;
  if (l.streams == 1) {
    if (s[0] != out) std::memcpy(out, s[0], n);
  } else if (const std::span<const BlockField> f = BlockFields(t); !f.empty()) {
    MergeBlocks(f, l, s, out);
  } else if (kind == Kind::kFloat && l.elem == 1) {
    return MergeF8(s[0], s[1], n, out);
  } else if (kind == Kind::kFloat && l.elem == 2) {
    MergeF16(s[0], s[1], n, out, simd);
  } else if (kind == Kind::kFloat && l.elem == 4) {
    MergeF32(s[0], s[1], s[2], s[3], n, out);
  } else if (l.elem == 1) {
    MergeGeneric<uint8_t>(kind, n, s, out);
  } else if (l.elem == 2) {
    MergeGeneric<uint16_t>(kind, n, s, out);
  } else if (l.elem == 4) {
    MergeGeneric<uint32_t>(kind, n, s, out);
  } else {
    MergeGeneric<uint64_t>(kind, n, s, out);
  }
  return true;
}

}  // namespace zipnn::internal
