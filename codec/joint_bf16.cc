// Joint BF16 coding: the split of values into symbols, bit planes and escapes, and the merge
// back (PlanJoint, which chooses k, is in joint_plan.cc).
#include "codec/joint_bf16.h"

#include <algorithm>
#include <cstring>

#include "codec/bytes.h"
#include "codec/joint_planes.h"

#ifdef __SSE2__
#include <emmintrin.h>  // every x86-64 has it; elsewhere the scalar loops do all
#endif

namespace zipnn::internal {
namespace {

// Where element i's field lives in a b-bit plane: byte offset and shift.
inline size_t FieldByte(size_t i, int b) { return (i / 16) / (8 / b) * 16 + i % 16; }
inline int FieldShift(size_t i, int b) { return b * static_cast<int>((i / 16) % (8 / b)); }

// The value of J and raw part r: the inverse of J and JointRestOf.
inline uint16_t ValueOf(uint32_t j, uint32_t r, int L) {
  return static_cast<uint16_t>(j << L | (r & ((1u << L) - 1)) | (r >> L) << 15);
}

void PutRest(const PlanePtrs& p, const Planes& pl, size_t i, uint32_t r) {
  p.nib[FieldByte(i, 4)] |= static_cast<uint8_t>((r & 15) << FieldShift(i, 4));
  if (pl.crumb) p.crumb[FieldByte(i, 2)] |= static_cast<uint8_t>((r >> 4 & 3) << FieldShift(i, 2));
  if (pl.bit)
    p.bit[FieldByte(i, 1)] |= static_cast<uint8_t>((r >> pl.bit_pos & 1) << FieldShift(i, 1));
}

uint32_t GetRest(const PlanePtrs& p, const Planes& pl, size_t i) {
  uint32_t r = p.nib[FieldByte(i, 4)] >> FieldShift(i, 4) & 15;
  if (pl.crumb) r |= (p.crumb[FieldByte(i, 2)] >> FieldShift(i, 2) & 3u) << 4;
  if (pl.bit) r |= (p.bit[FieldByte(i, 1)] >> FieldShift(i, 1) & 1u) << pl.bit_pos;
  return r;
}

}  // namespace

size_t JointRestBytes(size_t n, int k) {
  const Planes pl(k);
  return PlaneBytes(n, 4) + (pl.crumb ? PlaneBytes(n, 2) : 0) + (pl.bit ? PlaneBytes(n, 1) : 0);
}

namespace {

// The split proper, for one k: a 128-element group (one group of every plane) at a time, each
// plane's 16 bytes assembled in registers and stored once.
template <int K>
void SplitJointK(const uint8_t* in, size_t n, uint32_t base, uint8_t* syms, uint8_t* rest,
                 std::vector<uint8_t>& escapes, [[maybe_unused]] Simd simd) {
  const Planes pl(K);
  constexpr int L = 7 - K;
  constexpr uint32_t kJMask = (1u << (8 + K)) - 1;
  const PlanePtrs pp = Locate(rest, n, pl);
  auto escape = [&](uint32_t j) {
    escapes.push_back(static_cast<uint8_t>(j));
    escapes.push_back(static_cast<uint8_t>(j >> 8));
  };
  size_t i = 0;
#ifdef __x86_64__
  if (UseAvx2(simd)) {
    SplitGroupsAvx2<K>(in, n / 128, base, syms, pp, escapes);
    i = n / 128 * 128;
  }
#endif
#ifdef __SSE2__
  const __m128i vjmask = _mm_set1_epi16(static_cast<int16_t>(kJMask));
  const __m128i vbase = _mm_set1_epi16(static_cast<int16_t>(base));
  const __m128i v254 = _mm_set1_epi16(254), v255 = _mm_set1_epi16(255);
  const __m128i vlow = _mm_set1_epi16(static_cast<int16_t>((1u << L) - 1));
  const __m128i m4 = _mm_set1_epi8(15), m2 = _mm_set1_epi8(3), m1 = _mm_set1_epi8(1);
  auto store = [](uint8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); };
  // Symbols and escapes of 16 elements; returns their raw parts r, a byte each.
  auto step = [&](size_t at) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * at));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * at + 16));
    const __m128i da = _mm_sub_epi16(_mm_and_si128(_mm_srli_epi16(a, L), vjmask), vbase);
    const __m128i db = _mm_sub_epi16(_mm_and_si128(_mm_srli_epi16(b, L), vjmask), vbase);
    const __m128i ea = _mm_or_si128(_mm_cmpgt_epi16(da, v254), _mm_srai_epi16(da, 15));
    const __m128i eb = _mm_or_si128(_mm_cmpgt_epi16(db, v254), _mm_srai_epi16(db, 15));
    const __m128i sa = _mm_or_si128(_mm_andnot_si128(ea, da), _mm_and_si128(ea, v255));
    const __m128i sb = _mm_or_si128(_mm_andnot_si128(eb, db), _mm_and_si128(eb, v255));
    store(syms + at, _mm_packus_epi16(sa, sb));
    if (int mask = _mm_movemask_epi8(_mm_packs_epi16(ea, eb))) {
      for (; mask; mask &= mask - 1)
        escape(Load16(in + 2 * (at + __builtin_ctz(mask))) >> L & kJMask);
    }
    const __m128i ra =
        _mm_or_si128(_mm_slli_epi16(_mm_srli_epi16(a, 15), L), _mm_and_si128(a, vlow));
    const __m128i rb =
        _mm_or_si128(_mm_slli_epi16(_mm_srli_epi16(b, 15), L), _mm_and_si128(b, vlow));
    return _mm_packus_epi16(ra, rb);  // < 128 each
  };
  for (; i + 128 <= n; i += 128) {
    __m128i r[8];
    for (int t = 0; t < 8; t++) r[t] = step(i + 16 * t);
    for (int q = 0; q < 4; q++)
      store(pp.nib + i / 2 + 16 * q,
            _mm_or_si128(_mm_and_si128(r[2 * q], m4),
                         _mm_slli_epi16(_mm_and_si128(r[2 * q + 1], m4), 4)));
    if constexpr (K <= 2) {
      for (int q = 0; q < 2; q++) {
        __m128i c = _mm_setzero_si128();
        for (int t = 0; t < 4; t++)
          c = _mm_or_si128(
              c, _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(r[4 * q + t], 4), m2), 2 * t));
        store(pp.crumb + i / 4 + 16 * q, c);
      }
    }
    if constexpr (K != 2) {
      __m128i c = _mm_setzero_si128();
      for (int t = 0; t < 8; t++)
        c = _mm_or_si128(c, _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(r[t], pl.bit_pos), m1), t));
      store(pp.bit + i / 8, c);
    }
  }
#endif
  // The last, partial group: planes cleared from it on, then element by element.
  std::memset(pp.nib + i / 2, 0, PlaneBytes(n, 4) - i / 2);
  if (pl.crumb) std::memset(pp.crumb + i / 4, 0, PlaneBytes(n, 2) - i / 4);
  if (pl.bit) std::memset(pp.bit + i / 8, 0, PlaneBytes(n, 1) - i / 8);
  for (; i < n; i++) {
    const uint16_t v = Load16(in + 2 * i);
    const uint32_t j = v >> L & kJMask, d = j - base;
    syms[i] = d < 255 ? static_cast<uint8_t>(d) : kJointEscape;
    if (d >= 255) escape(j);
    PutRest(pp, pl, i, JointRestOf(v, L));
  }
}

}  // namespace

void SplitJoint(const uint8_t* in, size_t n, JointParams p, uint8_t* syms, uint8_t* rest,
                std::vector<uint8_t>& escapes, Simd simd) {
  if (n == 0) return;  // (empty buffers may have no storage at all)
  switch (p.k) {
    case 1:
      return SplitJointK<1>(in, n, p.base, syms, rest, escapes, simd);
    case 2:
      return SplitJointK<2>(in, n, p.base, syms, rest, escapes, simd);
    default:
      return SplitJointK<3>(in, n, p.base, syms, rest, escapes, simd);
  }
}

namespace {

// The merge proper, for one k: shifts become immediates, and eight 16-element steps (one group of
// every plane) unroll so that the plane shifts do too.
template <int K>
bool MergeJointK(const uint8_t* syms, const uint8_t* rest, std::span<const uint8_t> escapes,
                 size_t n, uint32_t base, uint8_t* out, [[maybe_unused]] Simd simd) {
  const Planes pl(K);
  constexpr int L = 7 - K;
  constexpr uint32_t kJMask = (1u << (8 + K)) - 1;
  const PlanePtrs pp = Locate(const_cast<uint8_t*>(rest), n, pl);
  const size_t nesc = escapes.size() / 2;
  size_t e = 0;
  auto patch = [&](size_t at) {
    if (e == nesc) return false;
    const uint32_t j = Load16(escapes.data() + 2 * e++);
    if (j > kJMask || j - base < 255) return false;  // (a symbol's value needs no escape)
    // From the planes again: the escape symbol plus base may have run into the sign bit.
    Store16(out + 2 * at, ValueOf(j, GetRest(pp, pl, at), L));
    return true;
  };
  size_t i = 0;
#ifdef __x86_64__
  if (UseAvx512(simd)) {
    if (!MergeGroupsAvx512<K>(syms, pp, n / 128, base, out, patch)) return false;
    i = n / 128 * 128;
  } else if (UseAvx2(simd)) {
    if (!MergeGroupsAvx2<K>(syms, pp, n / 128, base, out, patch)) return false;
    i = n / 128 * 128;
  }
#endif
#ifdef __SSE2__
  const __m128i zero = _mm_setzero_si128(), vbase = _mm_set1_epi16(static_cast<int16_t>(base));
  const __m128i vlow = _mm_set1_epi16(static_cast<int16_t>((1u << L) - 1));
  const __m128i vesc = _mm_set1_epi8(static_cast<char>(kJointEscape));
  const __m128i m4 = _mm_set1_epi8(15), m2 = _mm_set1_epi8(3), m1 = _mm_set1_epi8(1);
  auto load = [](const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); };
  // One 16-element step; t = the step's index within its 128-element group.
  auto step = [&](size_t at, int t, __m128i nib, __m128i crumb, __m128i bit) {
    __m128i r = _mm_and_si128(_mm_srl_epi16(nib, Shift(4 * (t % 2))), m4);
    if constexpr (K <= 2)
      r = _mm_or_si128(
          r, _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(crumb, Shift(2 * (t % 4))), m2), 4));
    if constexpr (K != 2)
      r = _mm_or_si128(r,
                       _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(bit, Shift(t)), m1), pl.bit_pos));
    const __m128i s = load(syms + at);
    const __m128i sym[2] = {_mm_unpacklo_epi8(s, zero), _mm_unpackhi_epi8(s, zero)};
    const __m128i rr[2] = {_mm_unpacklo_epi8(r, zero), _mm_unpackhi_epi8(r, zero)};
    for (int h = 0; h < 2; h++) {
      const __m128i v = _mm_or_si128(
          _mm_slli_epi16(_mm_add_epi16(sym[h], vbase), L),
          _mm_or_si128(_mm_and_si128(rr[h], vlow), _mm_slli_epi16(_mm_srli_epi16(rr[h], L), 15)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * at + 16 * h), v);
    }
    int mask = _mm_movemask_epi8(_mm_cmpeq_epi8(s, vesc));
    for (; mask; mask &= mask - 1)
      if (!patch(at + __builtin_ctz(mask))) return false;
    return true;
  };
  for (; i + 128 <= n; i += 128) {
    const __m128i crumb0 = K <= 2 ? load(pp.crumb + i / 4) : zero;
    const __m128i crumb1 = K <= 2 ? load(pp.crumb + i / 4 + 16) : zero;
    const __m128i bit = K != 2 ? load(pp.bit + i / 8) : zero;
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++) {
      if (!step(i + 16 * t, t, load(pp.nib + i / 2 + t / 2 * 16), t < 4 ? crumb0 : crumb1, bit))
        return false;
    }
  }
  for (; i + 16 <= n; i += 16) {  // the last, partial group
    const size_t st = i / 16;
    const int t = static_cast<int>(st % 8);
    if (!step(i, t, load(pp.nib + st / 2 * 16), K <= 2 ? load(pp.crumb + st / 4 * 16) : zero,
              K != 2 ? load(pp.bit + st / 8 * 16) : zero))
      return false;
  }
#endif
  for (; i < n; i++) {
    Store16(out + 2 * i, ValueOf(syms[i] + base, GetRest(pp, pl, i), L));
    if (syms[i] == kJointEscape && !patch(i)) return false;
  }
  return e == nesc;
}

// Whether the plane bits past the last element are zero, as written: no bit of a frame goes
// unchecked, so each frame has one encoding.
bool PaddingIsZero(const uint8_t* rest, size_t n, int k) {
  const Planes pl(k);
  const PlanePtrs pp = Locate(const_cast<uint8_t*>(rest), n, pl);
  auto clean = [n](const uint8_t* plane, int b) {
    const size_t end = PlaneBytes(n, b) / 16 * (128 / b);  // elements the plane has room for
    for (size_t i = n; i < end; i++)
      if (plane[FieldByte(i, b)] >> FieldShift(i, b) & ((1u << b) - 1)) return false;
    return true;
  };
  return clean(pp.nib, 4) && (!pl.crumb || clean(pp.crumb, 2)) && (!pl.bit || clean(pp.bit, 1));
}

}  // namespace

bool MergeJoint(const uint8_t* syms, const uint8_t* rest, std::span<const uint8_t> escapes,
                size_t n, JointParams p, uint8_t* out, Simd simd) {
  if (n == 0) return escapes.empty();
  if (p.k < 1 || p.k > 3 || !PaddingIsZero(rest, n, p.k)) return false;
  switch (p.k) {
    case 1:
      return MergeJointK<1>(syms, rest, escapes, n, p.base, out, simd);
    case 2:
      return MergeJointK<2>(syms, rest, escapes, n, p.base, out, simd);
    default:
      return MergeJointK<3>(syms, rest, escapes, n, p.base, out, simd);
  }
}

}  // namespace zipnn::internal
