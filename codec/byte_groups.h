// Byte grouping: how a chunk of elements becomes separate byte streams and back (internal).
//
// Floats are rotated left by one bit, so the sign travels with the low mantissa bits and the top
// byte holds the exponent (all 8 bits for BF16/F32, the 5 exponent bits and 3 mantissa bits for
// F16), then split into one stream per byte, most significant first: stream 0 is the exponent
// stream. Signed integers wider than a byte become a sign bitmap (stream 0) and magnitudes split by
// byte, so small magnitudes give all-zero high streams. FP8 becomes a sign bitmap and the other
// seven bits, a byte each (stream 1, the exponent stream): its sign is random, and inside the
// symbol would double the alphabet. Unsigned integers split by byte. Other one-byte types, I8
// included, are one stream: the bytes themselves (a byte's order-0 entropy is at most its
// magnitude's plus a sign bit, and a sign bitmap pays that bit even for zero: int8 weights coded
// 1% larger, and decoded at 0.6 x the speed, split). Frames written before this have the reverse
// for FP8 and I8 (FP8 one stream, I8 split); decoders take both, told by the stream count.
// Block-quantized types (GGUF's Q4_0 ... Q6_K) put each field of their blocks in streams of its
// own: an F16 scale as F16 elements are (its exponent stream, then its low bytes), other fields
// (quants, packed scales) one stream each, the field's bytes block after block.
#pragma once

#include <cstddef>
#include <cstdint>

#include "codec/bytes.h"
#include "codec/codec.h"

namespace zipnn::internal {

inline constexpr int kMaxStreams = 9;

struct GroupLayout {
  int streams = 1;           // number of byte streams
  size_t elem = 1;           // element size in bytes
  size_t elements = 0;       // whole elements in the chunk
  size_t tail = 0;           // trailing bytes that are not a whole element (stored raw)
  bool sign_stream = false;  // stream 0 is a sign bitmap of ceil(elements / 8) bytes
  unsigned exponents = 0;    // bit s: stream s is a float exponent stream
  uint8_t per_element[kMaxStreams] = {1, 1, 1, 1, 1, 1, 1, 1, 1};  // bytes each element gives
  bool Exponent(int s) const { return (exponents >> s) & 1; }
  size_t StreamSize(int s) const {
    return sign_stream && s == 0 ? (elements + 7) / 8 : elements * per_element[s];
  }
};

// `old_one_byte`: FP8 and I8 as frames written before their current layout have them.
GroupLayout LayoutFor(DType t, size_t raw_size, bool old_one_byte = false);

// Splits the whole elements of `in` into layout.streams buffers of StreamSize() bytes.
void SplitStreams(DType t, const GroupLayout& layout, const uint8_t* in, uint8_t* const* streams);
// Inverse of SplitStreams. False when the streams are not as SplitStreams writes them (FP8: a
// sign bit among the other bits, or past the last element): each frame has one encoding. `simd`:
// the widest vectors to use where the CPU has them (tests).
bool MergeStreams(DType t, const GroupLayout& layout, const uint8_t* const* streams, uint8_t* out,
                  Simd simd = Simd::kBest);

}  // namespace zipnn::internal
