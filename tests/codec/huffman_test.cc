// The Huffman coder's building blocks (codec/huffman.h): exact symbol counts, and decode tables
// built one after another in one decoder.
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

// Symbols whose shortest code is about `bits` long: 2^bits equally likely ones, and a few rare.
std::vector<uint8_t> StreamWithShortestCode(int bits, size_t n, std::mt19937& rng) {
  std::vector<uint8_t> s(n);
  for (uint8_t& b : s) {
    b = rng() % 64 == 0 ? static_cast<uint8_t>(200 + rng() % 6)
                        : static_cast<uint8_t>(rng() % (1u << bits));
  }
  return s;
}

TEST(HuffmanDecoderTest, TablesBuiltInTurnDecodeExactly) {
  // One decoder, so every table is built in the scratch the one before left: each build must
  // compute every window width it reads (the widths it skips hold another table's entries).
  std::mt19937 rng(11);
  HuffmanDecoder decoder;
  for (int round = 0; round < 3; round++) {
    for (int bits : {1, 5, 2, 4, 3, 1, 3, 5, 2, 4, 6, 1}) {
      const std::vector<uint8_t> syms = StreamWithShortestCode(bits, 40000 + round * 997, rng);
      HufPlan plan;
      PlanHuffman(syms, {}, plan);
      std::vector<uint8_t> coded;
      EncodeHuffman(syms, plan, coded);
      std::vector<uint8_t> out(syms.size());
      ASSERT_TRUE(decoder.Decode(coded, out)) << "shortest code ~" << bits << " bits";
      ASSERT_EQ(out, syms) << "shortest code ~" << bits << " bits, round " << round;
    }
  }
}

TEST(HuffmanDecoderTest, LanesThatRunOutAtDifferentTimesDecodeExactly) {
  // One block (no cut below 32K symbols) whose four lanes (quarters) code at very different
  // rates: the first, of the most frequent symbol, several symbols per lookup and the others one
  // or two. The lanes left once one is done go on three, then two, then one at a time; each of
  // those steps must write its own lanes, and stop.
  std::mt19937 rng(5);
  HuffmanDecoder decoder;
  for (size_t quarter : {size_t{2100}, size_t{6000}, size_t{7999}}) {
    std::vector<uint8_t> syms;
    for (size_t i = 0; i < quarter; i++) syms.push_back(rng() % 50 == 0 ? 1 : 0);
    for (size_t i = 0; i < quarter; i++) syms.push_back(static_cast<uint8_t>(rng() % 64));
    for (size_t i = 0; i < quarter; i++) syms.push_back(static_cast<uint8_t>(rng() % 16));
    for (size_t i = 0; i < quarter; i++) syms.push_back(static_cast<uint8_t>(rng() % 200));
    for (int extra = 0; extra < 3; extra++) {  // lanes of unequal lengths too
      HufPlan plan;
      PlanHuffman(syms, {}, plan);
      ASSERT_EQ(plan.blocks.size(), 1u);
      std::vector<uint8_t> coded;
      EncodeHuffman(syms, plan, coded);
      std::vector<uint8_t> out(syms.size());
      ASSERT_TRUE(decoder.Decode(coded, out)) << syms.size() << " symbols";
      ASSERT_EQ(out, syms) << syms.size() << " symbols";
      syms.push_back(static_cast<uint8_t>(rng() % 200));
    }
  }
}

}  // namespace
}  // namespace zipnn::internal
