// Frame round trips for every element type: lengths, special values, method choice and forcing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iostream>
#include <numeric>
#include <random>
#include <vector>

#include "codec/bytes.h"
#include "codec/codec.h"
#include "codec/frame_format.h"
#include "codec/huffman.h"
#include "tests/codec/test_util.h"

namespace zipnn {
namespace {

using test::Bytes;
using test::RoundTrip;

class FrameTypeTest : public ::testing::TestWithParam<DType> {};

INSTANTIATE_TEST_SUITE_P(AllTypes, FrameTypeTest, ::testing::ValuesIn(test::kAllDTypes),
                         [](const auto& info) { return test::ParamName(info.param); });

// Lengths around element and Huffman-lane boundaries, including 0, 1 and partial elements.
constexpr size_t kEdgeLengths[] = {0,   1,   2,    3,    4,    5,    7,    8,     9,        15,
                                   16,  17,  31,   33,   63,   64,   65,   127,   255,      256,
                                   257, 999, 1000, 4095, 4096, 4097, 8191, 20001, 65536 + 3};

TEST_P(FrameTypeTest, RoundTripsEdgeLengths) {
  const DType t = GetParam();
  for (size_t n : kEdgeLengths) {
    SCOPED_TRACE("length " + std::to_string(n));
    EXPECT_TRUE(RoundTrip(test::TypicalData(t, n, n), t));
    EXPECT_TRUE(RoundTrip(test::RandomBytes(n, n + 1), t));
    EXPECT_TRUE(RoundTrip(Bytes(n, 0), t));
    EXPECT_TRUE(RoundTrip(Bytes(n, 0x3C), t));
  }
}

TEST_P(FrameTypeTest, EmptyChunkIsAHeaderOnlyFrame) {
  Bytes frame;
  ASSERT_TRUE(RoundTrip({}, GetParam(), {}, {}, &frame));
  EXPECT_EQ(frame.size(), kFrameHeaderSize);
  EXPECT_EQ(test::InfoOf(frame).raw_size, 0u);
  // Decoding into an empty span whose data() is null must work as well.
  FrameDecoder dec;
  EXPECT_TRUE(dec.Decode(frame, std::span<uint8_t>{}).ok());
}

TEST_P(FrameTypeTest, RoundTripsOneMiB) {
  const DType t = GetParam();
  for (size_t n : {size_t{1} << 20, (size_t{1} << 20) + DTypeSize(t) - 1}) {
    SCOPED_TRACE("length " + std::to_string(n));
    Bytes frame;
    ASSERT_TRUE(RoundTrip(test::TypicalData(t, n, 7), t, {}, {}, &frame));
    EXPECT_NE(test::InfoOf(frame).method, Method::kRaw) << "typical data did not compress";
  }
}

TEST_P(FrameTypeTest, AllZeroChunksUseZeroMethod) {
  for (size_t n : {size_t{1}, size_t{1000}, size_t{1} << 20}) {
    Bytes frame;
    ASSERT_TRUE(RoundTrip(Bytes(n, 0), GetParam(), {}, {}, &frame));
    EXPECT_EQ(test::InfoOf(frame).method, Method::kZero) << n;
    EXPECT_EQ(frame.size(), kFrameHeaderSize) << n;
  }
}

TEST_P(FrameTypeTest, RandomBytesAreStoredRaw) {
  for (size_t n : {size_t{100}, size_t{65536}, size_t{1} << 20}) {
    Bytes frame;
    ASSERT_TRUE(RoundTrip(test::RandomBytes(n, n), GetParam(), {}, {}, &frame));
    EXPECT_EQ(test::InfoOf(frame).method, Method::kRaw) << n;
    EXPECT_EQ(frame.size(), MaxFrameSize(n)) << n;
  }
}

TEST_P(FrameTypeTest, EveryForcedMethodRoundTrips) {
  const DType t = GetParam();
  for (Method m : {Method::kRaw, Method::kZstd, Method::kGrouped}) {
    EncodeOptions opts;
    opts.force_method = m;
    for (size_t n : {size_t{0}, size_t{1}, size_t{13}, size_t{4096}, size_t{100003}}) {
      SCOPED_TRACE(std::string(MethodName(m)) + " length " + std::to_string(n));
      EXPECT_TRUE(RoundTrip(test::TypicalData(t, n, 3), t, opts));
      EXPECT_TRUE(RoundTrip(test::RandomBytes(n, 4), t, opts));
      EXPECT_TRUE(RoundTrip(Bytes(n, 0), t, opts));
    }
  }
}

TEST_P(FrameTypeTest, ForcedMethodIsUsedWhenItSaves) {
  const DType t = GetParam();
  const Bytes data = test::TypicalData(t, 1 << 16, 11);
  for (Method m : {Method::kRaw, Method::kZstd, Method::kGrouped}) {
    EncodeOptions opts;
    opts.force_method = m;
    Bytes frame;
    ASSERT_TRUE(RoundTrip(data, t, opts, {}, &frame)) << MethodName(m);
    EXPECT_EQ(test::InfoOf(frame).method, m) << MethodName(m);
  }
  EncodeOptions zero;
  zero.force_method = Method::kZero;
  Bytes frame;
  ASSERT_TRUE(RoundTrip(Bytes(4096, 0), t, zero, {}, &frame));
  EXPECT_EQ(test::InfoOf(frame).method, Method::kZero);
}

TEST_P(FrameTypeTest, ForcedZeroOnNonZeroDataIsAnError) {
  EncodeOptions opts;
  opts.force_method = Method::kZero;
  FrameEncoder enc(opts);
  Bytes data(4096, 0), frame;
  data[4000] = 1;
  const Status st = enc.Encode(data, GetParam(), frame);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
}

// Every bit pattern of 8- and 16-bit types, sorted and shuffled: all NaN payloads, denormals,
// infinities and signed zeros.
class FrameNarrowTypeTest : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(NarrowTypes, FrameNarrowTypeTest,
                         ::testing::Values(DType::kBytes, DType::kBF16, DType::kF16, DType::kF8E4M3,
                                           DType::kF8E5M2, DType::kI8, DType::kI16, DType::kU8,
                                           DType::kU16, DType::kBool),
                         [](const auto& info) { return test::ParamName(info.param); });

TEST_P(FrameNarrowTypeTest, RoundTripsEveryBitPattern) {
  const DType t = GetParam();
  const size_t es = DTypeSize(t);
  ASSERT_LE(es, 2u);
  const size_t count = size_t{1} << (8 * es);
  Bytes data(count * es * 2);
  for (size_t i = 0; i < count; i++) test::StoreElement(data.data() + i * es, i, es);
  std::vector<uint32_t> perm(count);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(5));
  for (size_t i = 0; i < count; i++)
    test::StoreElement(data.data() + (count + i) * es, perm[i], es);
  for (std::optional<Method> m : {std::optional<Method>{}, std::optional<Method>{Method::kGrouped},
                                  std::optional<Method>{Method::kZstd}}) {
    EncodeOptions opts;
    opts.force_method = m;
    EXPECT_TRUE(RoundTrip(data, t, opts));
  }
}

// `symbols` Huffman-coded as a stream.
Bytes HuffmanCoded(const Bytes& symbols) {
  internal::HufPlan plan;
  internal::PlanHuffman(symbols, {}, plan);
  Bytes coded;
  internal::EncodeHuffman(symbols, plan, coded);
  return coded;
}

// A grouped payload of the given streams, each its coding and its coded bytes.
Bytes GroupedPayload(const std::vector<std::pair<internal::StreamCoding, Bytes>>& streams) {
  Bytes p = {static_cast<uint8_t>(streams.size())};
  size_t size = 1;
  for (const auto& [coding, bytes] : streams) {
    p.push_back(static_cast<uint8_t>(coding));
    internal::PutVarint(p, bytes.size());
    size += bytes.size();
  }
  p.reserve(p.size() + size);
  for (const auto& [coding, bytes] : streams) p.insert(p.end(), bytes.begin(), bytes.end());
  return p;
}

// Whether a grouped frame of `payload` decodes to exactly `data`, as `t`.
bool DecodesTo(DType t, const Bytes& payload, const Bytes& data) {
  Bytes f = test::ForgeHeader(static_cast<uint8_t>(Method::kGrouped), static_cast<uint8_t>(t),
                              static_cast<uint32_t>(data.size()),
                              static_cast<uint32_t>(payload.size()), Checksum(data));
  f.reserve(f.size() + payload.size());
  f.insert(f.end(), payload.begin(), payload.end());
  Bytes out(data.size());
  FrameDecoder dec;
  return dec.Decode(f, out).ok() && out == data;
}

// FP8 codes its sign bits apart, eight to a byte, from the other seven bits. Frames written before
// that (one stream, the bytes themselves) still decode; a sign bit in the other bytes' top bit,
// or a bitmap bit past the last element, is refused although the bytes would come out right.
TEST(FrameF8Test, SignBitsApartAndOneStreamFramesOfOldDecode) {
  using internal::StreamCoding;
  constexpr size_t kN = 10001;  // (a partial last byte of sign bits)
  for (DType t : {DType::kF8E4M3, DType::kF8E5M2}) {
    const Bytes data = test::GaussianWeights(t, kN, 0.5, 7);
    Bytes frame;
    ASSERT_TRUE(RoundTrip(data, t, {}, {}, &frame));
    const Bytes payload(frame.begin() + kFrameHeaderSize, frame.end());
    ASSERT_EQ(test::InfoOf(frame).method, Method::kGrouped);
    ASSERT_EQ(payload[0], 2) << "two streams: signs and the rest";
    // The signs of Gaussian weights are random: stored raw, right after the stream headers.
    ASSERT_EQ(payload[1], 0);
    ASSERT_EQ((payload[2] & 0x7f) | payload[3] << 7, (kN + 7) / 8);  // (a two-byte varint)
    ASSERT_TRUE(DecodesTo(t, payload, data));
    // As frames were before: one stream, the bytes Huffman-coded as they are.
    EXPECT_TRUE(DecodesTo(t, GroupedPayload({{StreamCoding::kHuffman, HuffmanCoded(data)}}), data));
    // Signs raw and the rest Huffman-coded, as split here, then each way of moving a bit that
    // leaves the output unchanged.
    Bytes signs((kN + 7) / 8, 0), rest(kN);
    for (size_t i = 0; i < kN; i++) {
      signs[i / 8] = static_cast<uint8_t>(signs[i / 8] | (data[i] >> 7) << (i % 8));
      rest[i] = data[i] & 0x7f;
    }
    auto split = [](const Bytes& sg, const Bytes& r) {
      return GroupedPayload({{StreamCoding::kRaw, sg}, {StreamCoding::kHuffman, HuffmanCoded(r)}});
    };
    ASSERT_TRUE(DecodesTo(t, split(signs, rest), data));
    size_t neg = 0;
    while (!(data[neg] & 0x80)) neg++;
    Bytes moved_signs = signs, moved_rest = rest;
    moved_signs[neg / 8] = static_cast<uint8_t>(moved_signs[neg / 8] & ~(1u << (neg % 8)));
    moved_rest[neg] |= 0x80;
    EXPECT_FALSE(DecodesTo(t, split(moved_signs, moved_rest), data))
        << "a sign bit among the other bits";
    Bytes padded = signs;
    padded.back() |= 0x80;  // element 10007 of 10001
    EXPECT_FALSE(DecodesTo(t, split(padded, rest), data)) << "a bit past the last element";
  }
}

// I8 is one stream, the bytes themselves: a sign bitmap would pay a bit even for zero. Frames
// written before (a sign bitmap, then the magnitudes) still decode.
TEST(FrameI8Test, OneStreamAndSignSplitFramesOfOldDecode) {
  using internal::StreamCoding;
  constexpr size_t kN = 5003;
  const Bytes data = test::SmallInts(DType::kI8, kN, -40, 40, 3);
  Bytes frame;
  ASSERT_TRUE(RoundTrip(data, DType::kI8, {}, {}, &frame));
  ASSERT_EQ(test::InfoOf(frame).method, Method::kGrouped);
  EXPECT_EQ(frame[kFrameHeaderSize], 1) << "one stream";
  Bytes signs((kN + 7) / 8, 0), magnitudes(kN);
  for (size_t i = 0; i < kN; i++) {
    const int v = static_cast<int8_t>(data[i]);
    signs[i / 8] = static_cast<uint8_t>(signs[i / 8] | (v < 0) << (i % 8));
    magnitudes[i] = static_cast<uint8_t>(v < 0 ? -v : v);
  }
  EXPECT_TRUE(DecodesTo(DType::kI8,
                        GroupedPayload({{StreamCoding::kRaw, signs},
                                        {StreamCoding::kHuffman, HuffmanCoded(magnitudes)}}),
                        data));
}

// Signed integers split into a sign bit per element (eight to a byte) and the magnitude: every
// count of elements up to 17 (a partial last sign byte) and a long run, with the extremes (the
// most negative value is its own magnitude), -1, 0 and random values mixed.
TEST(FrameSignedTest, RoundTripsExtremesAtEveryTailLength) {
  std::mt19937_64 rng(11);
  for (DType t : {DType::kI8, DType::kI16, DType::kI32, DType::kI64}) {
    const size_t es = DTypeSize(t);
    const uint64_t top = uint64_t{1} << (8 * es - 1), all = top | (top - 1);
    const uint64_t pick[] = {top, top - 1, all, 0, 1};
    for (size_t n : {1, 2, 7, 8, 9, 15, 16, 17, 100003}) {
      Bytes data(n * es);
      for (size_t i = 0; i < n; i++)
        test::StoreElement(data.data() + i * es, i % 3 ? pick[rng() % 5] : rng() & all, es);
      EncodeOptions opts;
      opts.force_method = Method::kGrouped;
      EXPECT_TRUE(RoundTrip(data, t, opts)) << DTypeName(t) << " x " << n;
    }
  }
}

// Block-quantized types split each block's fields into streams: every type round-trips whole
// blocks plus a partial one (stored raw), at several block counts.
TEST(FrameBlockTypeTest, RoundTripsWholeAndPartialBlocks) {
  for (DType t : {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                  DType::kQ2_K, DType::kQ3_K, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    for (size_t blocks : {1, 7, 300}) {
      Bytes data = test::RandomBytes(blocks * DTypeSize(t) + 5, blocks);
      for (size_t i = 0; i < data.size(); i += 3) data[i] = 0;  // compressible: grouped wins
      EncodeOptions opts;
      opts.force_method = Method::kGrouped;
      EXPECT_TRUE(RoundTrip(data, t, opts)) << DTypeName(t) << " x " << blocks;
      EXPECT_TRUE(RoundTrip(data, t)) << DTypeName(t) << " x " << blocks;
    }
  }
}

class FrameFloatTypeTest : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(FloatTypes, FrameFloatTypeTest,
                         ::testing::Values(DType::kBF16, DType::kF16, DType::kF32, DType::kF64,
                                           DType::kF8E4M3, DType::kF8E5M2),
                         [](const auto& info) { return test::ParamName(info.param); });

TEST_P(FrameFloatTypeTest, RoundTripsSpecialValues) {
  const DType t = GetParam();
  ASSERT_TRUE(IsFloat(t));
  const size_t es = DTypeSize(t);
  const std::vector<uint64_t> specials = test::SpecialPatterns(test::FormatOf(t));
  // A chunk of nothing but specials, and weights with specials sprinkled in.
  Bytes only(specials.size() * 37 * es);
  for (size_t i = 0; i < only.size() / es; i++)
    test::StoreElement(only.data() + i * es, specials[i % specials.size()], es);
  Bytes mixed = test::GaussianWeights(t, 50000, 0.05, 9);
  std::mt19937_64 rng(10);
  for (size_t k = 0; k < 500; k++)
    test::StoreElement(mixed.data() + (rng() % 50000) * es, specials[k % specials.size()], es);
  for (std::optional<Method> m : {std::optional<Method>{}, std::optional<Method>{Method::kGrouped},
                                  std::optional<Method>{Method::kZstd}}) {
    EncodeOptions opts;
    opts.force_method = m;
    EXPECT_TRUE(RoundTrip(only, t, opts));
    Bytes frame;
    EXPECT_TRUE(RoundTrip(mixed, t, opts, {}, &frame));
    if (!m) {
      EXPECT_EQ(test::InfoOf(frame).method, Method::kGrouped);
    }
  }
}

TEST_P(FrameTypeTest, EncoderIsDeterministicAndReusable) {
  const DType t = GetParam();
  FrameEncoder enc;
  Bytes first, again;
  std::vector<Bytes> inputs;
  for (uint64_t seed = 0; seed < 6; seed++)
    inputs.push_back(seed % 2 ? test::RandomBytes(3000 + seed, seed)
                              : test::TypicalData(t, 70000 + seed, seed));
  for (const Bytes& in : inputs) {
    ASSERT_TRUE(enc.Encode(in, t, first).ok());
  }
  for (const Bytes& in : inputs) {
    ASSERT_TRUE(FrameEncoder().Encode(in, t, again).ok());
  }
  EXPECT_EQ(first, again) << "one encoder for many chunks must equal fresh encoders";
  // The frames sit back to back: decode them in order with one decoder.
  FrameDecoder dec;
  size_t pos = 0;
  for (const Bytes& in : inputs) {
    const std::span<const uint8_t> rest(first.data() + pos, first.size() - pos);
    const FrameInfo info = test::InfoOf(rest);
    Bytes out(info.raw_size);
    ASSERT_TRUE(dec.Decode(rest, out).ok());  // trailing frames after this one are ignored
    EXPECT_EQ(out, in);
    pos += info.frame_size();
  }
  EXPECT_EQ(pos, first.size());
}

// A frame must depend only on its chunk and the options, not on what the encoder coded before:
// otherwise a multi-threaded encoder's output depends on scheduling. Here the earlier chunk's
// Huffman table costs exactly as much as the later chunk's own (symbols 1 and 2 tie).
TEST(FrameEncoderHistoryTest, OutputDoesNotDependOnEarlierChunks) {
  auto chunk = [](std::initializer_list<int> counts, unsigned seed) {
    Bytes b;
    int s = 0;
    for (int c : counts) b.insert(b.end(), static_cast<size_t>(c), static_cast<uint8_t>(s++));
    std::shuffle(b.begin(), b.end(), std::mt19937(seed));
    return b;
  };
  const Bytes a = chunk({454, 900, 874, 880, 924, 904, 882, 918, 958}, 1);  // 2 rarer than 1
  const Bytes b = chunk({454, 874, 874, 880, 924, 904, 882, 918, 958}, 2);  // 1 and 2 tie
  Bytes alone, first, after;
  ASSERT_TRUE(FrameEncoder().Encode(b, DType::kU8, alone).ok());
  FrameEncoder enc;
  ASSERT_TRUE(enc.Encode(a, DType::kU8, first).ok());
  ASSERT_TRUE(enc.Encode(b, DType::kU8, after).ok());
  EXPECT_EQ(after, alone) << "the frame of B depends on the chunk coded before it";
}

// ---- What compresses, and how much ------------------------------------------------------------

double Ratio(const Bytes& data, DType t, Method* method = nullptr) {
  Bytes frame;
  EXPECT_TRUE(RoundTrip(data, t, {}, {}, &frame));
  if (method) *method = frame.empty() ? Method::kRaw : test::InfoOf(frame).method;
  return static_cast<double>(frame.size()) / static_cast<double>(data.size());
}

TEST(FrameCompressionTest, GaussianFloatWeightsCompressGrouped) {
  // Order-0 bounds for N(0, 0.02^2): the exponent carries ~2.7 of its 8 bits.
  const struct {
    DType t;
    double max_ratio;
  } cases[] = {{DType::kBF16, 0.70}, {DType::kF16, 0.88},    {DType::kF32, 0.86},
               {DType::kF64, 0.92},  {DType::kF8E4M3, 0.86}, {DType::kF8E5M2, 0.75}};
  for (const auto& c : cases) {
    const size_t n = (256u << 10) / DTypeSize(c.t);
    const double stddev = DTypeSize(c.t) == 1 ? 0.5 : 0.02;
    Method m;
    const double r = Ratio(test::GaussianWeights(c.t, n, stddev, 1), c.t, &m);
    EXPECT_EQ(m, Method::kGrouped) << DTypeName(c.t);
    EXPECT_LT(r, c.max_ratio) << DTypeName(c.t);
    std::cout << "[ ratio ] gaussian " << DTypeName(c.t) << ": " << r << "\n";
  }
}

TEST(FrameCompressionTest, CleanF32CompressesBeyondTheExponent) {
  // BF16 values stored as F32: the two low bytes are zero.
  Bytes data = test::GaussianWeights(DType::kF32, 65536, 0.02, 2);
  for (size_t i = 0; i < data.size(); i += 4) data[i] = data[i + 1] = 0;
  EXPECT_LT(Ratio(data, DType::kF32), 0.40);
}

TEST(FrameCompressionTest, SmallIntegersCompress) {
  const struct {
    DType t;
    int64_t lo, hi;
    double max_ratio;
  } cases[] = {{DType::kI8, -8, 8, 0.70},      {DType::kI16, -100, 100, 0.60},
               {DType::kI32, -100, 100, 0.32}, {DType::kI64, -100, 100, 0.17},
               {DType::kU8, 0, 15, 0.60},      {DType::kU16, 0, 200, 0.55},
               {DType::kU32, 0, 200, 0.28},    {DType::kU64, 0, 200, 0.15},
               {DType::kBool, 0, 1, 0.20},     {DType::kI64, -1, 0, 0.05}};
  for (const auto& c : cases) {
    const Bytes data = test::SmallInts(c.t, (128u << 10) / DTypeSize(c.t), c.lo, c.hi, 3);
    Method m;
    const double r = Ratio(data, c.t, &m);
    EXPECT_NE(m, Method::kRaw) << DTypeName(c.t);
    EXPECT_LT(r, c.max_ratio) << DTypeName(c.t) << " in [" << c.lo << ", " << c.hi << "]";
  }
}

TEST(FrameCompressionTest, MonotonicIntegersCompress) {
  // Offsets or token ids: the high bytes barely change (the low byte is as random as it gets
  // for an order-0 coder).
  const struct {
    DType t;
    double max_ratio;
  } cases[] = {{DType::kU32, 0.55}, {DType::kI64, 0.3}, {DType::kU64, 0.3}};
  for (const auto& c : cases) {
    const size_t es = DTypeSize(c.t), n = 32768;
    Bytes data(n * es);
    for (size_t i = 0; i < n; i++) test::StoreElement(data.data() + i * es, 100000 + 3 * i, es);
    EXPECT_LT(Ratio(data, c.t), c.max_ratio) << DTypeName(c.t);
  }
}

TEST(FrameCompressionTest, UntypedBytesCompress) {
  Method m;
  EXPECT_LT(Ratio(test::TypicalData(DType::kBytes, 1 << 18, 4), DType::kBytes, &m), 0.5);
  EXPECT_NE(m, Method::kRaw);
  // Float weights handed over as untyped bytes: detection by sampling should still find them.
  const Bytes w = test::GaussianWeights(DType::kBF16, 1 << 17, 0.02, 5);
  EXPECT_LT(Ratio(w, DType::kBytes, &m), 0.85);
  EXPECT_NE(m, Method::kRaw);
}

// Sparse tensors: a Huffman code spends at least one bit per element on the exponent stream, zstd
// does not. The method (../shared/zipnn-method.md, step 5) uses zstd when a chunk holds many zeros.
TEST(FrameCompressionTest, SparseChunksCompressAboutAsWellAsZstd) {
  EncodeOptions zstd;
  zstd.force_method = Method::kZstd;
  for (int per_mille : {100, 10, 1}) {
    Bytes w = test::GaussianWeights(DType::kBF16, 131072, 0.02, 17);
    std::mt19937_64 rng(18);
    for (size_t i = 0; i < w.size(); i += 2)
      if (static_cast<int>(rng() % 1000) >= per_mille) w[i] = w[i + 1] = 0;
    Bytes chosen, by_zstd;
    ASSERT_TRUE(RoundTrip(w, DType::kBF16, {}, {}, &chosen));
    ASSERT_TRUE(RoundTrip(w, DType::kBF16, zstd, {}, &by_zstd));
    EXPECT_LE(chosen.size(), by_zstd.size() * 5 / 4 + 64)
        << per_mille << " per mille non-zero: " << MethodName(test::InfoOf(chosen).method) << " "
        << chosen.size() << " bytes, zstd " << by_zstd.size();
  }
}

// The frame the coder chooses for `data` is no larger than zstd's.
void ExpectNoLargerThanZstd(const Bytes& data, DType t) {
  EncodeOptions zstd;
  zstd.force_method = Method::kZstd;
  Bytes chosen, by_zstd;
  ASSERT_TRUE(RoundTrip(data, t, {}, {}, &chosen));
  ASSERT_TRUE(RoundTrip(data, t, zstd, {}, &by_zstd));
  EXPECT_LE(chosen.size(), by_zstd.size()) << MethodName(test::InfoOf(chosen).method);
}

// Weights quantized to 16 levels and stored as F32: each byte stream alone holds ~4 bits per
// element, while the element has 4 bits in all, which zstd finds across the streams. The coder
// must try zstd there (and keep grouping for ordinary weights, where the check is cheap).
TEST(FrameCompressionTest, FewDistinctValuesTryZstd) {
  std::mt19937_64 rng(31);
  Bytes q(4 * 65536);
  for (size_t i = 0; i < q.size(); i += 4) {
    const float v = (static_cast<int>(rng() % 16) - 8) * 0.013f;
    std::memcpy(q.data() + i, &v, 4);
  }
  ExpectNoLargerThanZstd(q, DType::kF32);
  Bytes gauss;
  ASSERT_TRUE(
      RoundTrip(test::GaussianWeights(DType::kF32, 65536, 0.02, 32), DType::kF32, {}, {}, &gauss));
  EXPECT_EQ(test::InfoOf(gauss).method, Method::kGrouped);
}

// Runs of equal values, here every third row of a BF16 matrix all zero (pruned or padding rows)
// but for the first rows, which a sample of the chunk's start alone would see: the mantissa
// stream codes each zero raw, zstd codes a row of them in a few bytes.
TEST(FrameCompressionTest, RunsTryZstd) {
  Bytes w = test::GaussianWeights(DType::kBF16, 128 * 1024, 0.02, 33);
  for (size_t row = 9; row < 128; row += 3) std::fill_n(w.begin() + row * 2048, 2048, 0);
  ExpectNoLargerThanZstd(w, DType::kBF16);
}

// Weights pruned to 90% zeros at random: grouping codes the zeros' positions in every stream and
// lands near a sixth of the chunk, where zstd codes them once and does better; a sample of pieces
// overestimates zstd on such data, so the coder must try it on the whole chunk.
TEST(FrameCompressionTest, HeavilyPrunedWeightsTryZstd) {
  for (DType t : {DType::kBF16, DType::kF32}) {
    Bytes w = test::GaussianWeights(t, 65536, 0.02, 34);
    std::mt19937_64 rng(35);
    const size_t es = DTypeSize(t);
    for (size_t i = 0; i < w.size() / es; i++)
      if (rng() % 10) std::fill_n(w.begin() + i * es, es, 0);
    ExpectNoLargerThanZstd(w, t);
  }
}

// Position ids (0, 1, 2, ... as I64): the low byte stream looks random to order-0 coding, but
// repeats every 256 elements, which zstd finds.
TEST(FrameCompressionTest, IntegerSequencesTryZstd) {
  Bytes ids(8 * 32768);
  for (size_t i = 0; i < ids.size() / 8; i++) test::StoreElement(ids.data() + 8 * i, i, 8);
  ExpectNoLargerThanZstd(ids, DType::kI64);
}

TEST(FrameCompressionTest, UntypedBf16WeightsAreDetectedAsBf16) {
  // Real BF16 tensor bytes with no type given (as in a .bin file): grouped as BF16, not as F32,
  // whose grouping splits every other exponent across two streams.
  const std::string path =
      (test::CorpusDir() / "bf16/human-handskeleton.bf16.safetensors").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) GTEST_SKIP() << "corpus absent: " << path;
  const Bytes file{std::istreambuf_iterator<char>(in), {}};
  uint64_t header = 0;
  std::memcpy(&header, file.data(), 8);
  ASSERT_GT(file.size(), 8 + header + (256u << 10));
  const Bytes chunk(file.begin() + 8 + header, file.begin() + 8 + header + (256u << 10));
  Bytes frame;
  ASSERT_TRUE(RoundTrip(chunk, DType::kBytes, {}, {}, &frame));
  EXPECT_EQ(test::InfoOf(frame).method, Method::kGrouped);
  EXPECT_EQ(test::InfoOf(frame).dtype, DType::kBF16);
}

TEST(FrameCompressionTest, MinSavingKeepsMarginalChunksRaw) {
  // Only a few repeated bytes in random data: saves well under 50%.
  Bytes data = test::RandomBytes(65536, 6);
  std::fill(data.begin(), data.begin() + 4096, 0);
  EncodeOptions opts;
  opts.min_saving = 0.5;
  Bytes frame;
  ASSERT_TRUE(RoundTrip(data, DType::kBytes, opts, {}, &frame));
  EXPECT_EQ(test::InfoOf(frame).method, Method::kRaw);
  ASSERT_TRUE(RoundTrip(data, DType::kBytes, {}, {}, &frame));
  EXPECT_NE(test::InfoOf(frame).method, Method::kRaw);
}

TEST(FrameCompressionTest, ZstdLevelIsHonoured) {
  const Bytes data = test::TypicalData(DType::kBytes, 1 << 18, 8);
  EncodeOptions fast, strong;
  fast.force_method = strong.force_method = Method::kZstd;
  fast.zstd_level = 1;
  strong.zstd_level = 19;
  Bytes a, b;
  ASSERT_TRUE(RoundTrip(data, DType::kBytes, fast, {}, &a));
  ASSERT_TRUE(RoundTrip(data, DType::kBytes, strong, {}, &b));
  EXPECT_LE(b.size(), a.size());
}

TEST(FrameCompressionTest, EncodeStatsReportEntropy) {
  const Bytes data = test::GaussianWeights(DType::kBF16, 65536, 0.02, 12);
  FrameEncoder enc;
  Bytes frame;
  EncodeStats stats;
  ASSERT_TRUE(enc.Encode(data, DType::kBF16, frame, {}, &stats).ok());
  // Mantissa ~8 bits, exponent ~2.7 bits per element: well inside (8, 16) bits per element.
  EXPECT_GT(stats.entropy_bits, 65536u * 9);
  EXPECT_LT(stats.entropy_bits, 65536u * 12);
  EXPECT_LE(stats.entropy_bits / 8, frame.size());
}

// ---- Segments (tensor starts) -------------------------------------------------------------------

// n BF16 elements: two halves whose exponents do not overlap, as two tensors of different scale.
Bytes TwoTensors(size_t n) {
  Bytes data = test::GaussianWeights(DType::kBF16, n / 2, 1e-3, 13);
  const Bytes second = test::GaussianWeights(DType::kBF16, n / 2, 100.0, 14);
  data.insert(data.end(), second.begin(), second.end());
  return data;
}

TEST(FrameSegmentsTest, SegmentsSeparateDifferentStatistics) {
  // Two "tensors" whose exponents do not overlap: one table each saves ~1 bit per element. Short
  // enough that the encoder does not cut the stream into sub-blocks on its own.
  const size_t n = 32768;
  const Bytes data = TwoTensors(n);
  const uint32_t seg[] = {static_cast<uint32_t>(n / 2)};
  Bytes with, without;
  ASSERT_TRUE(RoundTrip(data, DType::kBF16, {}, seg, &with));
  ASSERT_TRUE(RoundTrip(data, DType::kBF16, {}, {}, &without));
  EXPECT_LT(with.size() + n / 16, without.size())
      << "segments did not give the two halves their own statistics";
}

TEST(FrameSegmentsTest, LongStreamsFindStatisticsChangesWithoutHints) {
  // The same two "tensors", long: the encoder's own sub-blocks must find the change, so hints
  // add (almost) nothing.
  const size_t n = 131072;
  const Bytes data = TwoTensors(n);
  const uint32_t seg[] = {static_cast<uint32_t>(n / 2)};
  Bytes with, without;
  ASSERT_TRUE(RoundTrip(data, DType::kBF16, {}, seg, &with));
  ASSERT_TRUE(RoundTrip(data, DType::kBF16, {}, {}, &without));
  EXPECT_LT(without.size(), with.size() + with.size() / 100)
      << "without hints, the encoder kept one table for both halves";
}

TEST(FrameSegmentsTest, ManyAndOddSegmentsRoundTrip) {
  const size_t n = 40000;
  const Bytes data = test::GaussianWeights(DType::kF32, n, 0.02, 15);
  std::vector<std::vector<uint32_t>> cases = {
      {0},          {1},     {39999}, {40000},     {12345, 20000, 30000},
      {0, 0, 5, 5}, {10, 9}, {50000}, {UINT32_MAX}};
  std::vector<uint32_t> every;
  for (uint32_t i = 0; i < n; i += 37) every.push_back(i);
  cases.push_back(every);
  for (const auto& seg : cases) {
    FrameEncoder enc;
    Bytes frame;
    const Status st = enc.Encode(data, DType::kF32, frame, seg);
    if (!st.ok()) {
      // Out-of-range or unsorted segments may be refused, as a caller error.
      EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
      continue;
    }
    FrameDecoder dec;
    Bytes out(data.size());
    ASSERT_TRUE(dec.Decode(frame, out).ok()) << "segments of size " << seg.size();
    EXPECT_EQ(out, data);
  }
  // Sorted in-range segments must be accepted.
  EXPECT_TRUE(RoundTrip(data, DType::kF32, {}, every));
}

// ---- Limits
// --------------------------------------------------------------------------------------

TEST(FrameLimitsTest, LargestChunkRoundTripsAndLargerIsRefused) {
  Bytes big(kMaxChunkSize, 0);
  const Bytes w = test::GaussianWeights(DType::kBF16, 1 << 20, 0.02, 16);
  std::copy(w.begin(), w.end(), big.begin() + (big.size() - w.size()) / 2);
  Bytes frame;
  ASSERT_TRUE(RoundTrip(big, DType::kBF16, {}, {}, &frame));
  EXPECT_LT(frame.size(), big.size() / 10);
  big.push_back(0);
  FrameEncoder enc;
  frame.clear();
  const Status st = enc.Encode(big, DType::kBF16, frame);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
}

// ---- Names and sizes ---------------------------------------------------------------------------

TEST(DTypeTest, NamesSizesAndSafetensorsSpellings) {
  for (DType t : test::kAllDTypes) {
    EXPECT_EQ(DTypeFromName(DTypeName(t)), t) << DTypeName(t);
    EXPECT_TRUE(DTypeSize(t) == 1 || DTypeSize(t) == 2 || DTypeSize(t) == 4 || DTypeSize(t) == 8);
  }
  const std::pair<const char*, DType> spellings[] = {
      {"BOOL", DType::kBool}, {"U8", DType::kU8},          {"I8", DType::kI8},
      {"I16", DType::kI16},   {"U16", DType::kU16},        {"F16", DType::kF16},
      {"BF16", DType::kBF16}, {"I32", DType::kI32},        {"U32", DType::kU32},
      {"F32", DType::kF32},   {"F64", DType::kF64},        {"I64", DType::kI64},
      {"U64", DType::kU64},   {"F8_E4M3", DType::kF8E4M3}, {"F8_E5M2", DType::kF8E5M2}};
  for (const auto& [name, t] : spellings) {
    EXPECT_EQ(DTypeFromSafetensors(name), t) << name;
  }
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF64), 8u);
  EXPECT_EQ(DTypeSize(DType::kBool), 1u);
  EXPECT_EQ(DTypeSize(DType::kBytes), 1u);
  EXPECT_EQ(DTypeFromSafetensors("F8_E4M3FN"), DType::kF8E4M3);
  EXPECT_EQ(DTypeFromSafetensors("F8_E5M2"), DType::kF8E5M2);
  EXPECT_FALSE(DTypeFromSafetensors("bf16").has_value());
  EXPECT_FALSE(DTypeFromSafetensors("").has_value());
  EXPECT_FALSE(DTypeFromSafetensors("F128").has_value());
  EXPECT_TRUE(IsFloat(DType::kF8E5M2));
  EXPECT_FALSE(IsFloat(DType::kI32));
  EXPECT_FALSE(IsFloat(DType::kBytes));
  for (int m = 0; m < kNumMethods; m++) {
    EXPECT_NE(MethodName(static_cast<Method>(m)), "?");
  }
}

TEST(ChecksumTest, IsXxh3Of64Bits) {
  const Bytes data = test::RandomBytes(1000, 1);
  EXPECT_EQ(Checksum(data), XXH3_64bits(data.data(), data.size()));
  EXPECT_EQ(Checksum({}), XXH3_64bits(nullptr, 0));
}

}  // namespace
}  // namespace zipnn
