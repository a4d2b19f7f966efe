// Joint BF16 coding: the exponent and the top mantissa bits as one entropy-coded symbol
// (internal to codec/).
//
// Within one power of two, weights are not uniform: for bell-shaped distributions the density
// falls across the octave, so the top mantissa bits depend on the exponent. Coding the exponent
// alone leaves that skew in the raw bytes. Here the symbol is J = exponent << k | top k mantissa
// bits (k = 1..3) minus a per-chunk base, so that the 255 most used values of J fit a byte and
// the Huffman coder is unchanged; rarer values take the escape symbol 255 and are listed as
// u16s. The sign and the 7 - k low mantissa bits are kept raw, as bit planes (4-, 2- and 1-bit
// fields, laid out so that SIMD unpacks 16 elements per load).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "codec/bytes.h"

namespace zipnn::internal {

struct JointParams {
  int k = 0;          // top mantissa bits in the symbol; 0: do not code jointly
  uint32_t base = 0;  // symbol = J - base, where that is < 255
};

inline constexpr uint8_t kJointEscape = 255;

// The raw part of BF16 value `v` beside a symbol of k = 7 - L mantissa bits: the sign above the
// low L mantissa bits.
inline uint32_t JointRestOf(uint16_t v, int L) {
  return static_cast<uint32_t>(v >> 15) << L | (v & ((1u << L) - 1));
}

// Chooses k and base for `n` BF16 values at `in` from the statistics of (a sample of) them, by
// estimated size against exponent-only coding; k = 0 where joint coding does not pay.
// `segments` (element offsets of tensor starts) tell how many Huffman tables the symbols will
// need. With force_k, plans that k.
JointParams PlanJoint(const uint8_t* in, size_t n, std::span<const uint32_t> segments,
                      int force_k = 0);

// Bytes of the raw bit planes for n elements.
size_t JointRestBytes(size_t n, int k);

// Splits n values into n symbols, the bit planes (JointRestBytes) and escapes (u16 LE each,
// appended to `escapes`). `simd`: the widest vectors to use where the CPU has them (tests).
void SplitJoint(const uint8_t* in, size_t n, JointParams p, uint8_t* syms, uint8_t* rest,
                std::vector<uint8_t>& escapes, Simd simd = Simd::kBest);

// Inverse of SplitJoint. False when the escapes do not match the escape symbols (in number, or
// in value: within J's range and outside the symbols' window), or bits past the last element in
// the planes are not zero. `simd`: the widest vectors to use where the CPU has them (tests).
bool MergeJoint(const uint8_t* syms, const uint8_t* rest, std::span<const uint8_t> escapes,
                size_t n, JointParams p, uint8_t* out, Simd simd = Simd::kBest);

}  // namespace zipnn::internal
