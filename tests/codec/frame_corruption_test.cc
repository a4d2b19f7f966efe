// Damaged, truncated, forged and random frames: every one must give an error, never wrong bytes
// reported as OK and never a crash. Also the header validation of ParseFrameHeader.
#include <gtest/gtest.h>

#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "tests/codec/test_util.h"

namespace zipnn {
namespace {

using test::Bytes;

struct Sample {
  std::string name;
  DType dtype;
  Bytes data;
  Bytes frame;
  Method method;
};

Sample Make(std::string name, DType t, Bytes data, Method expect, EncodeOptions opts = {},
            std::vector<uint32_t> segments = {}, TensorGrid grid = {}) {
  Sample s{std::move(name), t, std::move(data), {}, expect};
  EXPECT_TRUE(test::RoundTrip(s.data, t, opts, segments, &s.frame, grid)) << s.name;
  EXPECT_EQ(test::InfoOf(s.frame).method, expect) << s.name;
  return s;
}

// Frames of every method and of the grouped payload's variants (Huffman with the one- and the
// multi-symbol decoder, several blocks, zero and zstd streams, sign streams, tails, per-column
// exponent shifts).
const std::vector<Sample>& Samples() {
  static const std::vector<Sample> samples = [] {
    std::vector<Sample> v;
    EncodeOptions zstd;
    zstd.force_method = Method::kZstd;
    EncodeOptions grouped;
    grouped.force_method = Method::kGrouped;
    v.push_back(Make("raw", DType::kF32, test::RandomBytes(3001, 1), Method::kRaw));
    v.push_back(Make("zero", DType::kBF16, Bytes(4096, 0), Method::kZero));
    v.push_back(Make("zstd", DType::kBytes, test::TypicalData(DType::kBytes, 20000, 2),
                     Method::kZstd, zstd));
    v.push_back(Make("bf16_small", DType::kBF16, test::GaussianWeights(DType::kBF16, 2000, 0.02, 3),
                     Method::kGrouped));
    v.push_back(Make("bf16_large", DType::kBF16,
                     test::GaussianWeights(DType::kBF16, 40000, 0.02, 4), Method::kGrouped));
    Bytes clean = test::GaussianWeights(DType::kF32, 10000, 0.02, 5);
    for (size_t i = 0; i < clean.size(); i += 4) clean[i] = clean[i + 1] = 0;
    v.push_back(Make("f32_clean", DType::kF32, clean, Method::kGrouped));
    v.push_back(Make("i32_tail", DType::kI32, test::TypicalData(DType::kI32, 4 * 3001 + 3, 6),
                     Method::kGrouped));
    Bytes halves = test::GaussianWeights(DType::kBF16, 8000, 1e-3, 7);
    const Bytes second = test::GaussianWeights(DType::kBF16, 8000, 100, 8);
    halves.insert(halves.end(), second.begin(), second.end());
    v.push_back(Make("bf16_segments", DType::kBF16, halves, Method::kGrouped, {}, {8000}));
    Bytes periodic(2 * 30000);
    for (size_t i = 0; i < 30000; i++) test::StoreElement(periodic.data() + 2 * i, i % 50, 2);
    v.push_back(Make("u16_periodic", DType::kU16, periodic, Method::kGrouped));
    v.push_back(Make("f16", DType::kF16, test::GaussianWeights(DType::kF16, 6000, 0.02, 9),
                     Method::kGrouped));
    v.push_back(Make("f8", DType::kF8E4M3, test::GaussianWeights(DType::kF8E4M3, 9000, 0.5, 10),
                     Method::kGrouped));
    v.push_back(Make("bytes_grouped", DType::kBytes, test::TypicalData(DType::kBytes, 5000, 11),
                     Method::kGrouped, grouped));
    v.push_back(Make("bf16_columns", DType::kBF16, test::ColumnScaledBF16(100, 64, 12),
                     Method::kGrouped, {}, {}, {3, 64}));
    EXPECT_TRUE(test::InfoOf(v.back().frame).shifted);
    return v;
  }();
  return samples;
}

TEST(FrameCorruptionSamplesTest, SampleCountMatchesTheParameterRange) {
  EXPECT_EQ(Samples().size(), 13u);
}

class FrameCorruptionTest : public ::testing::TestWithParam<size_t> {
 protected:
  // A sample whose encoding failed has no frame to damage: fail here, not out of bounds below.
  void SetUp() override { ASSERT_GE(S().frame.size(), kFrameHeaderSize) << S().name; }
  const Sample& S() const { return Samples()[GetParam()]; }

  // Decodes `frame` into a buffer of the sample's size: true if the decoder accepted it. Wrong
  // bytes with an OK status fail the test.
  bool Accepts(std::span<const uint8_t> frame, const std::string& what) {
    Bytes out(S().data.size());
    const Status st = dec_.Decode(frame, out);
    if (!st.ok()) {
      EXPECT_TRUE(st.code() == StatusCode::kCorrupt || st.code() == StatusCode::kChecksum ||
                  st.code() == StatusCode::kUnsupported ||
                  st.code() == StatusCode::kInvalidArgument)
          << what << ": unexpected " << st.ToString();
      return false;
    }
    EXPECT_EQ(out, S().data) << what << ": damaged frame decoded to wrong bytes with an OK status";
    return true;
  }

  FrameDecoder dec_;  // one decoder through all damage: its caches must not be poisoned
};

INSTANTIATE_TEST_SUITE_P(Samples, FrameCorruptionTest, ::testing::Range<size_t>(0, 13),
                         [](const auto& info) { return Samples()[info.param].name; });

TEST_P(FrameCorruptionTest, EveryHeaderBitFlipIsRejected) {
  Bytes f = S().frame;
  for (size_t bit = 0; bit < 8 * kFrameHeaderSize; bit++) {
    f[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_FALSE(ParseFrameHeader(f).ok()) << "header bit " << bit;
    EXPECT_FALSE(Accepts(f, "header bit " + std::to_string(bit)));
    f[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  }
  EXPECT_TRUE(Accepts(f, "restored frame"));
}

TEST_P(FrameCorruptionTest, PayloadBitFlipsNeverYieldWrongBytes) {
  Bytes f = S().frame;
  const size_t payload_bits = 8 * (f.size() - kFrameHeaderSize);
  std::vector<size_t> bits;
  if (payload_bits <= 8 * 2048) {
    for (size_t b = 0; b < payload_bits; b++) bits.push_back(b);
  } else {
    for (size_t b = 0; b < 8 * 64; b++) bits.push_back(b);  // stream headers and tables
    std::mt19937_64 rng(GetParam());
    for (int k = 0; k < 3000; k++) bits.push_back(rng() % payload_bits);
  }
  size_t accepted = 0;
  for (size_t b : bits) {
    const size_t byte = kFrameHeaderSize + b / 8;
    f[byte] ^= static_cast<uint8_t>(1u << (b % 8));
    accepted += Accepts(f, "payload bit " + std::to_string(b));
    f[byte] ^= static_cast<uint8_t>(1u << (b % 8));
  }
  // A flip may leave the decoded bytes intact (padding bits, unused zstd header bits); it is then
  // harmless. Raw payloads have no such bits.
  if (S().method == Method::kRaw) {
    EXPECT_EQ(accepted, 0u);
  }
  EXPECT_LT(accepted, bits.size() / 20 + 1) << "most flips should be detected";
  std::cout << "[ flips ] " << S().name << ": " << bits.size() << " payload bit flips, " << accepted
            << " harmless\n";
  EXPECT_TRUE(Accepts(f, "restored frame"));
}

TEST_P(FrameCorruptionTest, PayloadByteOverwritesNeverYieldWrongBytes) {
  Bytes f = S().frame;
  const size_t n = std::min<size_t>(f.size() - kFrameHeaderSize, 96);
  for (size_t i = kFrameHeaderSize; i < kFrameHeaderSize + n; i++) {
    const uint8_t keep = f[i];
    for (uint8_t v : {uint8_t{0x00}, uint8_t{0xFF}, uint8_t{0x80}, uint8_t{0x7F}}) {
      f[i] = v;
      if (v != keep) Accepts(f, "payload byte " + std::to_string(i) + " = " + std::to_string(v));
    }
    f[i] = keep;
  }
}

TEST_P(FrameCorruptionTest, TruncationAtEveryLengthIsRejected) {
  const Bytes& f = S().frame;
  for (size_t len = 0; len < f.size(); len++)
    EXPECT_FALSE(Accepts(std::span(f).first(len), "truncated to " + std::to_string(len)));
  EXPECT_TRUE(Accepts(f, "whole frame"));
}

// Shorter or longer payloads behind a header made consistent with them: the damage reaches the
// payload decoders instead of stopping at the header.
TEST_P(FrameCorruptionTest, ResizedPayloadWithValidHeaderIsRejected) {
  const Bytes& f = S().frame;
  const size_t payload = f.size() - kFrameHeaderSize;
  std::vector<size_t> sizes;
  for (size_t k = 0; k<payload; k += payload> 4096 ? 1 + payload / 2000 : 1) sizes.push_back(k);
  sizes.push_back(payload + 1);
  sizes.push_back(payload + 17);
  for (size_t k : sizes) {
    Bytes g(f.begin(), f.begin() + kFrameHeaderSize + std::min(k, payload));
    g.resize(kFrameHeaderSize + k, 0);
    test::WriteLE(g.data() + test::hdr::kPayloadSize, k, 4);
    test::FixHeaderCheck(g.data());
    EXPECT_FALSE(Accepts(g, "payload resized to " + std::to_string(k)));
  }
}

TEST_P(FrameCorruptionTest, ForgedHeaderFieldsAreRejected) {
  const Bytes& f = S().frame;
  const FrameInfo info = test::InfoOf(f);
  // Another element type of the same or another width, another method.
  for (int t = 0; t < kNumDTypes; t++) {
    if (t == static_cast<int>(info.dtype)) continue;
    Bytes g = f;
    g[test::hdr::kDType] = static_cast<uint8_t>(t);
    test::FixHeaderCheck(g.data());
    // Types grouped alike (BF16 and F16, U8 and BOOL) may decode to the same bytes, which is
    // harmless; wrong bytes with an OK status are not.
    Accepts(g, "dtype " + std::string(DTypeName(static_cast<DType>(t))));
  }
  for (int m = 0; m < kNumMethods; m++) {
    if (m == static_cast<int>(info.method)) continue;
    Bytes g = f;
    g[test::hdr::kMethod] = static_cast<uint8_t>(m);
    test::FixHeaderCheck(g.data());
    EXPECT_FALSE(Accepts(g, "method " + std::string(MethodName(static_cast<Method>(m)))));
  }
  // A checksum that does not match the bytes.
  Bytes g = f;
  g[test::hdr::kChecksum] ^= 1;
  test::FixHeaderCheck(g.data());
  EXPECT_FALSE(Accepts(g, "checksum"));
  // Another raw size, decoded into a buffer of that size.
  for (int64_t delta :
       {int64_t{-1}, int64_t{1}, int64_t{7}, -static_cast<int64_t>(info.raw_size) / 2}) {
    const int64_t raw = static_cast<int64_t>(info.raw_size) + delta;
    if (raw < 0) continue;
    Bytes h = f;
    test::WriteLE(h.data() + test::hdr::kRawSize, static_cast<uint64_t>(raw), 4);
    test::FixHeaderCheck(h.data());
    Bytes out(static_cast<size_t>(raw));
    EXPECT_FALSE(dec_.Decode(h, out).ok()) << "raw size changed by " << delta;
  }
}

TEST_P(FrameCorruptionTest, WrongOutputSizeIsAnInvalidArgument) {
  const Bytes& f = S().frame;
  const size_t raw = S().data.size();
  for (size_t n : {raw - 1, raw + 1, size_t{0}, 2 * raw}) {
    Bytes out(n, 0x11);
    const Status st = dec_.Decode(f, out);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << n << ": " << st.ToString();
  }
}

TEST_P(FrameCorruptionTest, TrailingBytesAfterTheFrameAreIgnored) {
  Bytes f = S().frame;
  const Bytes junk = test::RandomBytes(100, 3);
  f.insert(f.end(), junk.begin(), junk.end());
  EXPECT_TRUE(Accepts(f, "frame followed by other bytes"));
}

// ---- Garbage ------------------------------------------------------------------------------------

TEST(FrameGarbageTest, RandomBuffersAreRejected) {
  std::mt19937_64 rng(42);
  FrameDecoder dec;
  for (int i = 0; i < 3000; i++) {
    Bytes g = test::RandomBytes(rng() % 300, rng());
    if (i % 2 && g.size() >= 4) g[0] = 'Z', g[1] = 'N', g[2] = 'F', g[3] = 1;  // past the magic
    EXPECT_FALSE(ParseFrameHeader(g).ok());
    Bytes out(rng() % 512);
    EXPECT_FALSE(dec.Decode(g, out).ok()) << "garbage " << i;
  }
}

// Valid headers of every method and type over random payloads: the payload decoders see garbage.
TEST(FrameGarbageTest, RandomPayloadsBehindValidHeadersAreRejected) {
  std::mt19937_64 rng(43);
  FrameDecoder dec;
  for (int i = 0; i < 4000; i++) {
    const auto method = static_cast<uint8_t>(i % kNumMethods);
    const auto dtype = static_cast<uint8_t>((i / kNumMethods) % kNumDTypes);
    const uint32_t raw = static_cast<uint32_t>(1 + rng() % 5000);
    uint32_t payload = method == 0 ? raw : method == 1 ? 0 : static_cast<uint32_t>(rng() % raw);
    Bytes f = test::ForgeHeader(method, dtype, raw, payload, rng());
    Bytes body = test::RandomBytes(payload, rng());
    // Grouped payloads start with a stream count: make it plausible half of the time.
    if (method == 3 && payload > 0 && i % 2) body[0] = static_cast<uint8_t>(1 + rng() % 9);
    f.insert(f.end(), body.begin(), body.end());
    ASSERT_TRUE(ParseFrameHeader(f).ok()) << "forged header " << i;
    Bytes out(raw);
    const Status st = dec.Decode(f, out);
    EXPECT_FALSE(st.ok()) << "random payload accepted: method " << int{method} << " dtype "
                          << int{dtype} << " raw " << raw;
  }
}

TEST(FrameGarbageTest, DecoderRecoversAfterErrors) {
  const Bytes data = test::GaussianWeights(DType::kBF16, 30000, 0.02, 44);
  Bytes frame;
  ASSERT_TRUE(test::RoundTrip(data, DType::kBF16, {}, {}, &frame));
  FrameDecoder dec;
  Bytes out(data.size());
  for (size_t i = kFrameHeaderSize; i < frame.size(); i += 97) {
    Bytes bad = frame;
    bad[i] ^= 0x10;
    (void)dec.Decode(bad, out);
    std::fill(out.begin(), out.end(), 0);
    ASSERT_TRUE(dec.Decode(frame, out).ok()) << "after damage at " << i;
    ASSERT_EQ(out, data);
  }
}

// One decoder over frames with many different tables (more than any small cache holds),
// interleaved and repeated: cached tables must never be confused.
TEST(FrameGarbageTest, DecoderTableCacheNeverMixesTables) {
  std::vector<Bytes> data, frames;
  for (int i = 0; i < 24; i++) {
    data.push_back(test::GaussianWeights(DType::kBF16, 6000 + 1000 * (i % 3), 1e-4 * (1 << i), i));
    frames.emplace_back();
    ASSERT_TRUE(test::RoundTrip(data.back(), DType::kBF16, {}, {}, &frames.back()));
  }
  FrameDecoder dec;
  std::mt19937_64 rng(45);
  for (int k = 0; k < 500; k++) {
    const size_t i = k < 48 ? k % 24 : rng() % 24;
    Bytes out(data[i].size());
    ASSERT_TRUE(dec.Decode(frames[i], out).ok()) << k;
    ASSERT_EQ(out, data[i]) << "frame " << i << " at step " << k;
  }
}

// ---- ParseFrameHeader
// -----------------------------------------------------------------------------

TEST(FrameHeaderTest, HeaderLayoutIsAsDocumented) {
  const Bytes data = test::GaussianWeights(DType::kF16, 5000, 0.02, 50);
  Bytes f;
  ASSERT_TRUE(test::RoundTrip(data, DType::kF16, {}, {}, &f));
  const FrameInfo info = test::InfoOf(f);
  EXPECT_EQ(f[0], 'Z');
  EXPECT_EQ(f[1], 'N');
  EXPECT_EQ(f[2], 'F');
  EXPECT_EQ(f[3], 2);
  EXPECT_EQ(f[test::hdr::kMethod], static_cast<uint8_t>(info.method));
  EXPECT_EQ(f[test::hdr::kDType], static_cast<uint8_t>(DType::kF16));
  EXPECT_EQ(test::ReadLE(f.data() + test::hdr::kRawSize, 4), data.size());
  EXPECT_EQ(test::ReadLE(f.data() + test::hdr::kPayloadSize, 4), f.size() - kFrameHeaderSize);
  EXPECT_EQ(test::ReadLE(f.data() + test::hdr::kChecksum, 8), Checksum(data));
  EXPECT_EQ(test::ReadLE(f.data() + test::hdr::kCheck, 4),
            static_cast<uint32_t>(XXH3_64bits(f.data(), test::hdr::kCheck)));
  const Bytes forged = test::ForgeHeader(static_cast<uint8_t>(info.method), 2, info.raw_size,
                                         info.payload_size, info.checksum);
  EXPECT_EQ(forged, Bytes(f.begin(), f.begin() + kFrameHeaderSize));
}

TEST(FrameHeaderTest, AcceptsValidHeaders) {
  struct Case {
    uint8_t method, dtype;
    uint32_t raw, payload;
  };
  const Case ok[] = {{0, 0, 0, 0},
                     {0, 15, 100, 100},
                     {1, 3, 0, 0},
                     {1, 1, kMaxChunkSize, 0},
                     {2, 0, 100, 99},
                     {3, 1, 100, 1},
                     {3, 4, kMaxChunkSize, kMaxChunkSize - 1},
                     {0, 2, kMaxChunkSize, kMaxChunkSize}};
  for (const Case& c : ok) {
    const Bytes h = test::ForgeHeader(c.method, c.dtype, c.raw, c.payload, 0x123456789abcdefULL);
    Result<FrameInfo> info = ParseFrameHeader(h);
    ASSERT_TRUE(info.ok()) << int{c.method} << "/" << int{c.dtype} << ": "
                           << info.status().ToString();
    EXPECT_EQ(static_cast<uint8_t>(info->method), c.method);
    EXPECT_EQ(static_cast<uint8_t>(info->dtype), c.dtype);
    EXPECT_EQ(info->raw_size, c.raw);
    EXPECT_EQ(info->payload_size, c.payload);
    EXPECT_EQ(info->checksum, 0x123456789abcdefULL);
    EXPECT_EQ(info->frame_size(), kFrameHeaderSize + c.payload);
  }
}

TEST(FrameHeaderTest, RejectsInvalidHeaders) {
  struct Case {
    const char* what;
    uint8_t method, dtype;
    uint32_t raw, payload;
  };
  const Case bad[] = {
      {"unknown method", kNumMethods, 1, 100, 50},
      {"method 255", 255, 1, 100, 50},
      {"unknown dtype", 3, kNumDTypes, 100, 50},
      {"dtype 255", 0, 255, 100, 100},
      {"chunk over 64 MiB", 1, 1, kMaxChunkSize + 1, 0},
      {"raw chunk over 64 MiB", 0, 0, kMaxChunkSize + 1, kMaxChunkSize + 1},
      {"raw with a short payload", 0, 1, 100, 99},
      {"raw with a long payload", 0, 1, 100, 101},
      {"zero with a payload", 1, 1, 100, 1},
      {"zstd not smaller", 2, 0, 100, 100},
      {"grouped not smaller", 3, 1, 100, 100},
      {"grouped of nothing", 3, 1, 0, 0},
      {"zstd of nothing", 2, 0, 0, 0},
      {"huge payload", 3, 1, 100, 0xFFFFFFFF},
  };
  for (const Case& c : bad) {
    const Bytes h = test::ForgeHeader(c.method, c.dtype, c.raw, c.payload, 0);
    Result<FrameInfo> info = ParseFrameHeader(h);
    EXPECT_FALSE(info.ok()) << c.what;
    if (!info.ok()) {
      EXPECT_EQ(info.status().code(), StatusCode::kCorrupt) << c.what;
    }
  }
  // Nonzero flags, padding and reserved bytes (with a recomputed check).
  for (size_t pos :
       {test::hdr::kFlags, test::hdr::kPad, test::hdr::kReserved, test::hdr::kReserved + 3}) {
    Bytes h = test::ForgeHeader(0, 1, 10, 10, 0);
    h[pos] = 1;
    test::FixHeaderCheck(h.data());
    EXPECT_FALSE(ParseFrameHeader(h).ok()) << "byte " << pos;
  }
  // Bad magic, and a future version (which is "unsupported", not "corrupt").
  Bytes h = test::ForgeHeader(0, 1, 10, 10, 0);
  h[0] = 'X';
  test::FixHeaderCheck(h.data());
  EXPECT_EQ(ParseFrameHeader(h).status().code(), StatusCode::kCorrupt);
  for (uint8_t version : {0, 3}) {
    h = test::ForgeHeader(0, 1, 10, 10, 0);
    h[3] = version;
    test::FixHeaderCheck(h.data());
    EXPECT_EQ(ParseFrameHeader(h).status().code(), StatusCode::kUnsupported) << int{version};
  }
  // Short inputs.
  const Bytes good = test::ForgeHeader(1, 1, 10, 0, 0);
  for (size_t len = 0; len < kFrameHeaderSize; len++)
    EXPECT_FALSE(ParseFrameHeader(std::span(good).first(len)).ok()) << len;
  EXPECT_TRUE(ParseFrameHeader(good).ok());
}

}  // namespace
}  // namespace zipnn
