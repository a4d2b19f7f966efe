// Byte grouping: how a chunk of elements becomes separate byte streams and back (internal).
//
// Floats are rotated left by one bit, so the sign travels with the low mantissa bits and the top
// byte holds the exponent (all 8 bits for BF16/F32, the 5 exponent bits and 3 mantissa bits for
// F16), then split into one stream per byte, most significant first: stream 0 is the exponent
// stream. Signed integers become a sign bitmap (stream 0) and magnitudes split by byte, so small
// magnitudes give all-zero high streams. Unsigned integers split by byte. One-byte types other
// than I8 are one stream: the bytes themselves.
#pragma once

#include <cstddef>
#include <cstdint>

#include "codec/codec.h"

namespace zipnn::internal {

struct GroupLayout {
  int streams = 1;               // number of byte streams
  size_t elem = 1;               // element size in bytes
  size_t elements = 0;           // whole elements in the chunk
  size_t tail = 0;               // trailing bytes that are not a whole element (stored raw)
  bool sign_stream = false;      // stream 0 is a sign bitmap of ceil(elements / 8) bytes
  bool exponent_stream = false;  // stream 0 is a float exponent stream
  size_t StreamSize(int s) const { return sign_stream && s == 0 ? (elements + 7) / 8 : elements; }
};

GroupLayout LayoutFor(DType t, size_t raw_size);

// Splits the whole elements of `in` into layout.streams buffers of StreamSize() bytes.
void SplitStreams(DType t, const GroupLayout& layout, const uint8_t* in, uint8_t* const* streams);
// Inverse of SplitStreams.
void MergeStreams(DType t, const GroupLayout& layout, const uint8_t* const* streams, uint8_t* out);

}  // namespace zipnn::internal
