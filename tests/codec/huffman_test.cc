// The Huffman coder's building blocks (codec/huffman.h): exact symbol counts.
#include "codec/huffman.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace zipnn::internal {
namespace {

Histogram NaiveCount(const std::vector<uint8_t>& s, size_t begin, size_t n) {
  Histogram h{};
  for (size_t i = begin; i < begin + n; i++) h[s[i]]++;
  return h;
}

TEST(CountSymbolsTest, ExactForEveryLengthAndSkew) {
  // Lengths around the small-input cutoff, the 16-byte step and the 16-bit counters' piece
  // (8 * 65535 bytes); one symbol alone is what fills a counter fastest; odd start offsets.
  std::mt19937 rng(3);
  const size_t piece = 8 * 65535;
  for (size_t n :
       {size_t{0}, size_t{1}, size_t{15}, size_t{2047}, size_t{2048}, size_t{2049}, size_t{4099},
        piece - 17, piece - 16, piece, piece + 1, piece + 16, 2 * piece + 5, size_t{3} << 20}) {
    for (int kind = 0; kind < 3; kind++) {
      std::vector<uint8_t> s(n + 3);
      for (uint8_t& b : s) {
        b = kind == 0   ? 0xab
            : kind == 1 ? static_cast<uint8_t>(rng())
                        : static_cast<uint8_t>(120 + (rng() % 16 == 0 ? rng() % 9 : 0));
      }
      Histogram h;
      CountSymbols(std::span(s.data() + 3, n), h);
      EXPECT_EQ(h, NaiveCount(s, 3, n)) << "n " << n << " kind " << kind;
    }
  }
}

}  // namespace
}  // namespace zipnn::internal
