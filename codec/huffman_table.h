// Huffman tables: code lengths, canonical codes and their serialized form (internal to codec/).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "codec/bytes.h"
#include "codec/huffman.h"

namespace zipnn::internal {

inline constexpr int kL = kHufMaxBits;
inline constexpr int kTableSize = 1 << kL;

// Fills `len` with complete, length-limited code lengths for `h`. Returns the number of symbols
// used; with fewer than two, `len` stays all zero.
int BuildLengths(const Histogram& h, std::array<uint8_t, 256>& len);
// Canonical codes, MSB first, as deflate assigns them.
void AssignCodes(const std::array<uint8_t, 256>& len, std::array<uint32_t, 256>& code);
// Appends a block's serialized table (format in docs/format.md).
void WriteTable(const HufBlockPlan& b, std::vector<uint8_t>& out);
// Code lengths as a table gives them: only symbols in [lo, hi] have codes, which lets a decoder
// skip the rest of the alphabet (exponent tables use a few dozen symbols of 256).
struct CodeLengths {
  std::array<uint8_t, 256> len;
  int lo = 0, hi = 0;
  int min_len = kL;  // the shortest code's length
};
// Parses a mode-1 or mode-2 table (after its mode byte); checks the code is complete.
bool ReadTable(ByteReader& r, uint8_t mode, CodeLengths& c);

}  // namespace zipnn::internal
