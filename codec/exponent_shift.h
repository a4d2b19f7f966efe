// Exponent shift: an exponent offset per column of a float tensor (internal to codec/).
//
// Trained weights have a scale per output channel. Where channels are the tensor's last
// dimension (TensorFlow/Keras kernels, [in, out] matrices) consecutive elements belong to
// different channels, so no table per block of the chunk can follow them, and order-0 coding of
// the exponents pays for the mixture of all channels. Subtracting each column's mean exponent
// first concentrates the distribution, for a few bits per column. (Per row, measured on the
// corpus, never paid: the coder's tables per block of the chunk already follow rows.) The shift
// is cyclic on the finite non-zero exponents (1..254 for BF16 and F32, 1..30 for F16) and leaves
// zeros, denormals, Inf and NaN alone: a bijection, so every value comes back exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "codec/bytes.h"
#include "codec/codec.h"

namespace zipnn::internal {

// Element i of a chunk is in column (first + i) % shift.size() and takes that column's shift.
struct ShiftPlan {
  uint64_t first = 0;  // column of the chunk's first element
  std::vector<int8_t> shift;
};

// The types whose exponents shift: BF16, F16 and F32.
bool ShiftsExponents(DType t);

// Plans per-column shifts for the n values of type t at `in`, placed by `grid`, where the
// estimated saving pays for them; else (or for another type) leaves plan.shift empty.
void PlanShift(DType t, const uint8_t* in, size_t n, const TensorGrid& grid, ShiftPlan& plan);

// Writes the n values of type t at `src` to `dst` (which may be `src`) with their exponents
// shifted, or (inverse) shifted back. `simd`: the widest vectors to use where the CPU has them
// (tests).
void ApplyShift(DType t, const uint8_t* src, uint8_t* dst, size_t n, const ShiftPlan& plan,
                bool inverse, Simd simd = Simd::kBest);

// Whether a decoded plan suits n values: at least one and at most n columns, `first` among them.
inline bool ValidShift(uint64_t columns, uint64_t first, size_t n) {
  return columns >= 1 && columns <= n && first < columns;
}

}  // namespace zipnn::internal
