// The bit-plane layout of joint BF16 coding's raw part, and the x86 SIMD kernels that split and
// merge whole 128-element groups. Internal to joint_bf16.cc, its only includer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "codec/bytes.h"
#include "codec/joint_bf16.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#ifdef __x86_64__
#include <immintrin.h>  // AVX2 and AVX-512 kernels, chosen at run time
#endif

namespace zipnn::internal {

// Bit planes of the raw part r = sign << L | low L mantissa bits (W = L + 1 bits, L = 7 - k):
// bits 0-3 in a 4-bit plane, then bits 4-5 in a 2-bit plane (k = 1, 2), then the last bit in a
// 1-bit plane (k = 1, 3). In a b-bit plane, the elements of 16-element step s sit in the 16
// bytes of group s / (8 / b), at bit b * (s % (8 / b)): one load and a shift unpack a step.
struct Planes {
  bool crumb = false, bit = false;
  int bit_pos = 0;  // r's bit held in the 1-bit plane
  explicit Planes(int k) : crumb(k <= 2), bit(k != 2), bit_pos(k == 1 ? 6 : 4) {}
};

inline size_t PlaneBytes(size_t n, int b) {
  const size_t steps = (n + 15) / 16, per_group = 8 / b;
  return (steps + per_group - 1) / per_group * 16;
}

struct PlanePtrs {
  uint8_t *nib, *crumb, *bit;
};

inline PlanePtrs Locate(uint8_t* rest, size_t n, const Planes& pl) {
  PlanePtrs p;
  p.nib = rest;
  p.crumb = p.nib + PlaneBytes(n, 4);
  p.bit = p.crumb + (pl.crumb ? PlaneBytes(n, 2) : 0);
  return p;
}

#ifdef __SSE2__
// A shift count in a register, for shifts whose count the loops' unrolling decides.
inline __m128i Shift(int s) { return _mm_cvtsi32_si128(s); }
#endif

#ifdef __x86_64__
// The split of `groups` whole 128-element groups with AVX2: 32 elements (two 16-element steps, one
// per 128-bit lane) at a time, the planes assembled as the SSE2 loop of joint_bf16.cc does. No
// lambdas inside: GCC does not give them this function's target.
template <int K>
__attribute__((target("avx2"))) void SplitGroupsAvx2(const uint8_t* in, size_t groups,
                                                     uint32_t base, uint8_t* syms,
                                                     const PlanePtrs& pp,
                                                     std::vector<uint8_t>& escapes) {
  constexpr int L = 7 - K;
  constexpr uint32_t kJMask = (1u << (8 + K)) - 1;
  const Planes pl(K);
  const __m256i vjmask = _mm256_set1_epi16(static_cast<int16_t>(kJMask));
  const __m256i vbase = _mm256_set1_epi16(static_cast<int16_t>(base));
  const __m256i v254 = _mm256_set1_epi16(254), v255 = _mm256_set1_epi16(255);
  const __m256i vlow = _mm256_set1_epi16(static_cast<int16_t>((1u << L) - 1));
  const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
  for (size_t g = 0; g < groups; g++) {
    const size_t i = g * 128;
    __m256i r[4];  // raw parts r of steps 2q (low lane) and 2q + 1 (high lane), a byte each
    for (int q = 0; q < 4; q++) {
      const size_t at = i + 32 * q;
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 2 * at));
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 2 * at + 32));
      const __m256i da = _mm256_sub_epi16(_mm256_and_si256(_mm256_srli_epi16(a, L), vjmask), vbase);
      const __m256i db = _mm256_sub_epi16(_mm256_and_si256(_mm256_srli_epi16(b, L), vjmask), vbase);
      const __m256i ea = _mm256_or_si256(_mm256_cmpgt_epi16(da, v254), _mm256_srai_epi16(da, 15));
      const __m256i eb = _mm256_or_si256(_mm256_cmpgt_epi16(db, v254), _mm256_srai_epi16(db, 15));
      const __m256i sa = _mm256_blendv_epi8(da, v255, ea), sb = _mm256_blendv_epi8(db, v255, eb);
      // Packing works per 128-bit lane: the permute puts the elements back in order.
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(syms + at),
                          _mm256_permute4x64_epi64(_mm256_packus_epi16(sa, sb), 0xd8));
      const __m256i e = _mm256_permute4x64_epi64(_mm256_packs_epi16(ea, eb), 0xd8);
      for (uint32_t mask = static_cast<uint32_t>(_mm256_movemask_epi8(e)); mask; mask &= mask - 1) {
        const uint32_t j = Load16(in + 2 * (at + __builtin_ctz(mask))) >> L & kJMask;
        escapes.push_back(static_cast<uint8_t>(j));
        escapes.push_back(static_cast<uint8_t>(j >> 8));
      }
      const __m256i ra = _mm256_or_si256(_mm256_slli_epi16(_mm256_srli_epi16(a, 15), L),
                                         _mm256_and_si256(a, vlow));
      const __m256i rb = _mm256_or_si256(_mm256_slli_epi16(_mm256_srli_epi16(b, 15), L),
                                         _mm256_and_si256(b, vlow));
      r[q] = _mm256_permute4x64_epi64(_mm256_packus_epi16(ra, rb), 0xd8);  // < 128 each
    }
    for (int q = 0; q < 4; q++) {
      const __m256i x = _mm256_and_si256(r[q], m4);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(pp.nib + i / 2 + 16 * q),
                       _mm_or_si128(_mm256_castsi256_si128(x),
                                    _mm_slli_epi16(_mm256_extracti128_si256(x, 1), 4)));
    }
    if constexpr (K <= 2) {
      for (int q = 0; q < 2; q++) {  // steps 4q + t at bits 2t
        const __m256i x0 = _mm256_and_si256(_mm256_srli_epi16(r[2 * q], 4), m2);
        const __m256i x1 = _mm256_and_si256(_mm256_srli_epi16(r[2 * q + 1], 4), m2);
        const __m256i y = _mm256_or_si256(x0, _mm256_slli_epi16(x1, 4));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(pp.crumb + i / 4 + 16 * q),
                         _mm_or_si128(_mm256_castsi256_si128(y),
                                      _mm_slli_epi16(_mm256_extracti128_si256(y, 1), 2)));
      }
    }
    if constexpr (K != 2) {  // step t at bit t
      __m256i y = _mm256_setzero_si256();
      for (int q = 0; q < 4; q++)
        y = _mm256_or_si256(
            y, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(r[q], pl.bit_pos), m1), 2 * q));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(pp.bit + i / 8),
                       _mm_or_si128(_mm256_castsi256_si128(y),
                                    _mm_slli_epi16(_mm256_extracti128_si256(y, 1), 1)));
    }
  }
}

// The merge of whole 128-element groups with AVX2: two 16-element steps at a time, whose 4-bit
// fields share one nibble-plane load (low and high nibbles). `patch(i)` fixes escape i in order.
// No lambdas inside: GCC does not give them this function's target.
template <int K, class Patch>
__attribute__((target("avx2"))) bool MergeGroupsAvx2(const uint8_t* syms, const PlanePtrs& pp,
                                                     size_t groups, uint32_t base, uint8_t* out,
                                                     Patch& patch) {
  constexpr int L = 7 - K;
  const Planes pl(K);
  const __m128i zero = _mm_setzero_si128();
  const __m256i vbase = _mm256_set1_epi16(static_cast<int16_t>(base));
  const __m256i vlow = _mm256_set1_epi16(static_cast<int16_t>((1u << L) - 1));
  const __m256i vesc = _mm256_set1_epi8(static_cast<char>(kJointEscape));
  const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
  for (size_t g = 0; g < groups; g++) {
    const size_t i = g * 128;
    const __m128i crumbs[2] = {
        K <= 2 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(pp.crumb + i / 4)) : zero,
        K <= 2 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(pp.crumb + i / 4 + 16)) : zero};
    const __m128i bit =
        K != 2 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(pp.bit + i / 8)) : zero;
#pragma GCC unroll 4
    for (int t = 0; t < 8; t += 2) {  // steps t (low 128-bit lane) and t + 1 (high lane)
      const __m128i nib = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pp.nib + i / 2 + t * 8));
      __m256i r = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nib, 4), nib), m4);
      if constexpr (K <= 2) {
        const __m128i c = crumbs[t / 4];
        const __m256i cr = _mm256_set_m128i(_mm_srl_epi16(c, Shift(2 * (t % 4) + 2)),
                                            _mm_srl_epi16(c, Shift(2 * (t % 4))));
        r = _mm256_or_si256(r, _mm256_slli_epi16(_mm256_and_si256(cr, m2), 4));
      }
      if constexpr (K != 2) {
        const __m256i b =
            _mm256_set_m128i(_mm_srl_epi16(bit, Shift(t + 1)), _mm_srl_epi16(bit, Shift(t)));
        r = _mm256_or_si256(r, _mm256_sll_epi16(_mm256_and_si256(b, m1), Shift(pl.bit_pos)));
      }
      const __m256i s = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(syms + i + 16 * t));
      for (int h = 0; h < 2; h++) {
        const __m128i sh = h ? _mm256_extracti128_si256(s, 1) : _mm256_castsi256_si128(s);
        const __m128i rh = h ? _mm256_extracti128_si256(r, 1) : _mm256_castsi256_si128(r);
        const __m256i sym = _mm256_cvtepu8_epi16(sh), rr = _mm256_cvtepu8_epi16(rh);
        const __m256i v =
            _mm256_or_si256(_mm256_slli_epi16(_mm256_add_epi16(sym, vbase), L),
                            _mm256_or_si256(_mm256_and_si256(rr, vlow),
                                            _mm256_slli_epi16(_mm256_srli_epi16(rr, L), 15)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * (i + 16 * t) + 32 * h), v);
      }
      for (uint32_t mask = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(s, vesc)));
           mask; mask &= mask - 1)
        if (!patch(i + 16 * t + __builtin_ctz(mask))) return false;
    }
  }
  return true;
}

ZIPNN_AVX512_KERNELS_BEGIN
// The merge with AVX-512 (BW): a 128-element group per pass, 64 elements to a register. Each
// plane's bytes for a half-group are spread over the four 128-bit lanes, one lane per 16-element
// step, and shifted per lane by the step's field position. (On CPUs with full-width AVX-512 units
// this halves the instructions per element of the AVX2 merge.)
template <int K, class Patch>
__attribute__((target("avx512f,avx512bw"))) bool MergeGroupsAvx512(const uint8_t* syms,
                                                                   const PlanePtrs& pp,
                                                                   size_t groups, uint32_t base,
                                                                   uint8_t* out, Patch& patch) {
  constexpr int L = 7 - K;
  const Planes pl(K);
  const __m512i vbase = _mm512_set1_epi16(static_cast<int16_t>(base));
  const __m512i vlow = _mm512_set1_epi16(static_cast<int16_t>((1u << L) - 1));
  const __m512i vsign = _mm512_set1_epi16(static_cast<int16_t>(0x8000));
  const __m512i vesc = _mm512_set1_epi8(static_cast<char>(kJointEscape));
  const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(3), m1 = _mm512_set1_epi8(1);
  // Shift counts per 16-bit word, by 128-bit lane: nibbles of steps 2q, 2q + 1; crumbs of steps
  // 4q + t; bits of step t.
  constexpr int64_t w = 0x0001000100010001;
  const __m512i nsh = _mm512_set_epi64(4 * w, 4 * w, 0, 0, 4 * w, 4 * w, 0, 0);
  const __m512i csh = _mm512_set_epi64(6 * w, 6 * w, 4 * w, 4 * w, 2 * w, 2 * w, 0, 0);
  const __m512i bsh[2] = {_mm512_set_epi64(3 * w, 3 * w, 2 * w, 2 * w, w, w, 0, 0),
                          _mm512_set_epi64(7 * w, 7 * w, 6 * w, 6 * w, 5 * w, 5 * w, 4 * w, 4 * w)};
  // (In locals: the output stores could alias `pp`, so its fields would be reloaded every pass.)
  const uint8_t *nib_plane = pp.nib, *crumb_plane = pp.crumb, *bit_plane = pp.bit;
  for (size_t g = 0; g < groups; g++) {
    const size_t i = g * 128;
    for (int h = 0; h < 2; h++) {  // elements 64h .. 64h + 63: steps 4h .. 4h + 3
      // Nibble bytes 32h .. 32h + 31: the first 16 in lanes 0 and 1, the others in 2 and 3.
      const __m512i nib = _mm512_castsi256_si512(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib_plane + i / 2 + 32 * h)));
      __m512i r =
          _mm512_and_si512(_mm512_srlv_epi16(_mm512_shuffle_i64x2(nib, nib, 0x50), nsh), m4);
      if constexpr (K <= 2) {
        const __m128i c =
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(crumb_plane + i / 4 + 16 * h));
        r = _mm512_or_si512(
            r, _mm512_slli_epi16(
                   _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i32x4(c), csh), m2), 4));
      }
      if constexpr (K != 2) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bit_plane + i / 8));
        r = _mm512_or_si512(
            r, _mm512_slli_epi16(
                   _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i32x4(b), bsh[h]), m1),
                   pl.bit_pos));
      }
      const __m512i s = _mm512_loadu_si512(syms + i + 64 * h);
      for (int q = 0; q < 2; q++) {
        const __m256i sq = q ? _mm512_extracti64x4_epi64(s, 1) : _mm512_castsi512_si256(s);
        const __m256i rq = q ? _mm512_extracti64x4_epi64(r, 1) : _mm512_castsi512_si256(r);
        const __m512i sym = _mm512_cvtepu8_epi16(sq), rr = _mm512_cvtepu8_epi16(rq);
        const __m512i hi = _mm512_slli_epi16(_mm512_add_epi16(sym, vbase), L);
        // hi | (rr & vlow) | (rr << (15 - L) & 0x8000)
        const __m512i v = _mm512_ternarylogic_epi32(_mm512_or_si512(hi, _mm512_and_si512(rr, vlow)),
                                                    _mm512_slli_epi16(rr, 15 - L), vsign, 0xf8);
        _mm512_storeu_si512(out + 2 * (i + 64 * h) + 64 * q, v);
      }
      for (uint64_t mask = _mm512_cmpeq_epi8_mask(s, vesc); mask; mask &= mask - 1)
        if (!patch(i + 64 * h + __builtin_ctzll(mask))) return false;
    }
  }
  return true;
}

ZIPNN_AVX512_KERNELS_END
#endif  // __x86_64__

}  // namespace zipnn::internal
