// GGUF headers: the tensor layout of llama.cpp model files, strictly validated, and chunk plans
// along it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "tests/codec/gguf_writer.h"
#include "tests/codec/test_util.h"

namespace zipnn {
namespace {

using test::Bytes;
using test::GgufWriter;

// A small model: a vocabulary, norms in F32, matrices in BF16 and F16, a quantized tensor.
GgufWriter SmallModel() {
  GgufWriter w;
  w.AddKvString("general.architecture", "llama");
  w.AddKvStrings("tokenizer.ggml.tokens", 3000);
  w.AddKvNested("test.nested");
  w.AddKvF32("llama.rope.freq_base");
  w.tensors.push_back(
      {"blk.0.attn_norm.weight", {512}, 0, test::GaussianWeights(DType::kF32, 512, 0.1, 1)});
  w.tensors.push_back({"blk.0.attn_q.weight",
                       {512, 300},
                       30,
                       test::GaussianWeights(DType::kBF16, 512 * 300, 0.02, 2)});
  w.tensors.push_back(
      {"blk.0.ffn_up.weight", {4, 3}, 2, test::RandomBytes(3 * 18 * 4 / 32 * 8, 3)});
  w.tensors.push_back({"blk.0.ffn_down.weight",
                       {700, 200},
                       1,
                       test::GaussianWeights(DType::kF16, 700 * 200, 0.02, 4)});
  w.tensors.push_back(
      {"output_norm.weight", {512}, 0, test::GaussianWeights(DType::kF32, 512, 0.1, 5)});
  return w;
}

Result<TensorLayout> Parse(const Bytes& f) {
  return ParseGgufHeader(test::MemoryReader(f), f.size());
}

TEST(GgufTest, ParsesTheTensorLayout) {
  GgufWriter w = SmallModel();
  uint64_t start = 0;
  const Bytes f = w.Build(&start);
  Result<TensorLayout> h = Parse(f);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->data_start, start);
  ASSERT_EQ(h->tensors.size(), 5u);
  const DType want[] = {DType::kF32, DType::kBF16, DType::kBytes, DType::kF16, DType::kF32};
  for (size_t i = 0; i < 5; ++i) {
    const TensorInfo& t = h->tensors[i];
    EXPECT_EQ(t.name, w.tensors[i].name);
    EXPECT_EQ(t.dtype, want[i]) << t.name;
    EXPECT_EQ(t.begin, start + w.tensors[i].offset) << t.name;
    if (t.dtype != DType::kBytes) {
      EXPECT_EQ(t.end, t.begin + w.tensors[i].data.size()) << t.name;
    }
  }
  // A quantized tensor runs to the next one; shapes are row-major (the innermost dim last).
  EXPECT_EQ(h->tensors[2].end, h->tensors[3].begin);
  EXPECT_EQ(h->tensors[1].shape, (std::vector<uint64_t>{300, 512}));
  // ParseTensorLayout tells it apart from safetensors.
  Result<TensorLayout> any = ParseTensorLayout(test::MemoryReader(f), f.size());
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(any->tensors.size(), 5u);
  // Without general.alignment, the default of 32 holds: the same layout, 32-aligned.
  w.write_alignment = false;
  const Bytes plain = w.Build(&start);
  h = Parse(plain);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->data_start, start);
  EXPECT_EQ(h->tensors[3].begin, start + w.tensors[3].offset);
  // The default is 32, not less: a tensor 16 bytes past a multiple of 32 is misaligned.
  w.tensors[1].force_offset = true;
  w.tensors[1].offset += 16;
  EXPECT_FALSE(Parse(w.Build()).ok());
}

// A file of neither format is told from one read of its first bytes; models still parse.
TEST(GgufTest, OtherFilesAreToldFromOneSmallRead) {
  int reads = 0;
  size_t bytes = 0;
  auto counting = [&](const Bytes& f) -> ReadAtFn {
    return [&, reader = test::MemoryReader(f)](uint64_t offset, std::span<uint8_t> out) {
      reads++;
      bytes += out.size();
      return reader(offset, out);
    };
  };
  const Bytes text(1000, 'x');
  EXPECT_EQ(ParseTensorLayout(counting(text), text.size()).status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(reads, 1);
  EXPECT_LE(bytes, 16u);
  const Bytes gguf = SmallModel().Build();
  EXPECT_TRUE(ParseTensorLayout(counting(gguf), gguf.size()).ok());
}

TEST(GgufTest, PlansChunksAlongTensorsAndRoundTrips) {
  const Bytes f = SmallModel().Build();
  const Result<TensorLayout> h = Parse(f);
  ASSERT_TRUE(h.ok());
  PlanOptions o;
  o.chunk_size = 64u << 10;
  Result<std::vector<ChunkSpec>> plan = PlanChunks(test::MemoryReader(f), f.size(), o);
  ASSERT_TRUE(plan.ok());
  uint64_t pos = 0;
  size_t typed = 0;
  for (const ChunkSpec& c : *plan) {
    EXPECT_EQ(c.offset, pos);
    pos += c.size;
    if (c.dtype == DType::kBytes) continue;
    ++typed;
    bool inside = false;  // within one tensor of its dtype
    for (const TensorInfo& t : h->tensors)
      inside |= t.dtype == c.dtype && t.begin <= c.offset && c.offset + c.size <= t.end;
    EXPECT_TRUE(inside) << "chunk at " << c.offset;
  }
  EXPECT_EQ(pos, f.size());
  EXPECT_GE(typed, 4u);
  // The BF16 matrix starts its own chunk, with its columns (ne[0]) as the grid.
  bool bf16_start = false;
  for (const ChunkSpec& c : *plan)
    bf16_start |=
        c.offset == h->tensors[1].begin && c.dtype == DType::kBF16 && c.grid.columns == 512;
  EXPECT_TRUE(bf16_start);
  FrameEncoder enc;
  FrameDecoder dec;
  uint64_t stored = 0;
  for (const ChunkSpec& c : *plan) {
    const std::span<const uint8_t> chunk(f.data() + c.offset, c.size);
    std::vector<uint8_t> frame;
    ASSERT_TRUE(enc.Encode(chunk, c.dtype, frame, c.segments, nullptr, c.grid).ok());
    Bytes back(c.size);
    ASSERT_TRUE(dec.Decode(frame, back).ok());
    ASSERT_TRUE(std::equal(back.begin(), back.end(), chunk.begin()));
    stored += frame.size();
  }
  EXPECT_LT(stored, f.size() * 85 / 100);
}

TEST(GgufTest, HostileHeadersAreRejectedAndPlanAsBytes) {
  auto rejected = [](const Bytes& f, const std::string& what) {
    Result<TensorLayout> h = Parse(f);
    EXPECT_FALSE(h.ok()) << what;
    if (!h.ok()) {
      EXPECT_EQ(h.status().code(), StatusCode::kCorrupt) << what;
    }
    PlanOptions o;
    o.chunk_size = 4096;
    Result<std::vector<ChunkSpec>> plan = PlanChunks(test::MemoryReader(f), f.size(), o);
    ASSERT_TRUE(plan.ok()) << what;
    for (const ChunkSpec& c : *plan) EXPECT_EQ(c.dtype, DType::kBytes) << what;
  };
  const Bytes good = SmallModel().Build();
  // Every truncation of the header and tensor infos.
  const uint64_t start = Parse(good)->data_start;
  for (size_t n = 0; n < start; n += (n < 200 ? 1 : 97))
    rejected(Bytes(good.begin(), good.begin() + n), "cut at " + std::to_string(n));
  Bytes f = good;
  f[4] = 1;  // version 1 (u32 counts) is not read
  rejected(f, "version 1");
  {
    GgufWriter w = SmallModel();
    w.alignment = 24;
    rejected(w.Build(), "alignment not a power of two");
  }
  {
    GgufWriter w = SmallModel();
    (void)w.Build();                                // (sets the offsets)
    w.tensors[3].offset = w.tensors[2].offset + 4;  // not aligned
    w.tensors[3].force_offset = true;
    rejected(w.Build(), "misaligned tensor");
  }
  {
    GgufWriter w = SmallModel();
    (void)w.Build();
    w.tensors[4].offset = w.tensors[3].offset;  // on top of the F16 matrix
    w.tensors[4].force_offset = true;
    rejected(w.Build(), "overlapping tensors");
  }
  {
    GgufWriter w = SmallModel();
    w.tensors[1].ne = {512, 300, 1, 1, 1};
    rejected(w.Build(), "5 dims");
  }
  {
    GgufWriter w = SmallModel();
    w.tensors[1].ne = {512, 300000};  // larger than the file
    rejected(w.Build(), "tensor past the end");
  }
  {
    GgufWriter w = SmallModel();
    w.tensors[1].ne = {uint64_t{1} << 40, uint64_t{1} << 40};
    rejected(w.Build(), "element count overflows");
    w.tensors[1].ne = {uint64_t{1} << 31, uint64_t{1} << 31};  // 2^62 F64s: 2^65 bytes
    w.tensors[1].type = 28;
    rejected(w.Build(), "byte count overflows");
  }
  // Counts and lengths far beyond the file: refused before any allocation or long loop.
  for (size_t at : {size_t{8}, size_t{16}}) {  // tensor count, metadata count
    f = good;
    for (int i = 0; i < 8; ++i) f[at + i] = 0xff;
    rejected(f, "huge count at " + std::to_string(at));
  }
  f = good;
  for (int i = 0; i < 8; ++i) f[24 + i] = 0x7f;  // the first key's length
  rejected(f, "huge string");
  {
    GgufWriter w;
    GgufWriter::Str(w.kv, "a"), GgufWriter::U32(w.kv, 9), GgufWriter::U32(w.kv, 9);
    GgufWriter::U64(w.kv, uint64_t{1} << 40);  // an array of arrays, far too many
    w.kv_count = 1;
    rejected(w.Build(), "huge nested array");
    w.kv.clear();
    GgufWriter::Str(w.kv, "a"), GgufWriter::U32(w.kv, 13);  // no such value type
    rejected(w.Build(), "unknown value type");
  }
  {
    // More tensor infos than any model has, all real (so the count fits the file): each costs
    // more memory than file, so a header of 1 GiB of them took 5 GB. Planned as bytes instead.
    GgufWriter w;
    w.tensors.assign((size_t{1} << 18) + 1, {"", {0}, 0, {}});
    rejected(w.Build(), "2^18 + 1 tensors");
  }
  // Not GGUF at all: other magic.
  f = good;
  f[0] = 'X';
  rejected(f, "magic");
}

// Blocks of quantized weights as llama.cpp writes them: a scale d (F16, max |w| / 127 of the block)
// then the quants (int8 w / d) for Q8_0; K-quant blocks with plausible F16 scales and random
// packed fields around them.
Bytes Q8_0Blocks(size_t blocks, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> w(0, 0.02);
  Bytes out;
  for (size_t b = 0; b < blocks; ++b) {
    double v[32], max = 1e-9;
    for (double& x : v) max = std::max(max, std::abs(x = w(rng)));
    const double d = max / 127;
    const uint64_t h = test::FloatBits(d, DType::kF16);
    out.push_back(static_cast<uint8_t>(h));
    out.push_back(static_cast<uint8_t>(h >> 8));
    for (double x : v) out.push_back(static_cast<uint8_t>(static_cast<int8_t>(std::lround(x / d))));
  }
  return out;
}
Bytes KQuantBlocks(size_t blocks, size_t block_size, std::initializer_list<size_t> f16_at,
                   uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> scale(0.0005, 0.0001);
  Bytes out = test::RandomBytes(blocks * block_size, seed);
  for (size_t b = 0; b < blocks; ++b)
    for (size_t at : f16_at) {
      const uint64_t h = test::FloatBits(std::abs(scale(rng)), DType::kF16);
      out[b * block_size + at] = static_cast<uint8_t>(h);
      out[b * block_size + at + 1] = static_cast<uint8_t>(h >> 8);
    }
  return out;
}

// The common block-quantized types are typed (a block an element, chunks of whole blocks), so that
// their F16 scales are coded apart from the quants; every chunk round-trips, and Q8_0 comes out
// smaller than the same bytes untyped, where scales and quants mix in one byte stream (by 1.6%:
// the quants themselves are nearly incompressible).
TEST(GgufTest, QuantizedTensorsAreCodedByField) {
  GgufWriter w;
  w.AddKvString("general.architecture", "llama");
  w.tensors.push_back({"blk.0.attn_q.weight", {512, 256}, 8, Q8_0Blocks(512 * 256 / 32, 1)});
  w.tensors.push_back({"blk.0.ffn_up.weight", {256, 64}, 12, KQuantBlocks(64, 144, {0, 2}, 2)});
  w.tensors.push_back({"blk.0.ffn_down.weight", {256, 64}, 14, KQuantBlocks(64, 210, {208}, 3)});
  const Bytes f = w.Build();
  const Result<TensorLayout> h = Parse(f);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  const DType want[] = {DType::kQ8_0, DType::kQ4_K, DType::kQ6_K};
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(h->tensors[i].dtype, want[i]) << h->tensors[i].name;
    EXPECT_EQ(h->tensors[i].end - h->tensors[i].begin, w.tensors[i].data.size());
  }
  PlanOptions o;
  o.chunk_size = 64u << 10;
  Result<std::vector<ChunkSpec>> plan = PlanChunks(test::MemoryReader(f), f.size(), o);
  ASSERT_TRUE(plan.ok());
  FrameEncoder enc;
  FrameDecoder dec;
  uint64_t typed = 0, untyped = 0;
  for (const ChunkSpec& c : *plan) {
    if (c.dtype != DType::kBytes) {
      EXPECT_EQ(c.size % DTypeSize(c.dtype), 0u) << "a chunk cuts a block at " << c.offset;
    }
    const std::span<const uint8_t> chunk(f.data() + c.offset, c.size);
    std::vector<uint8_t> frame, as_bytes;
    ASSERT_TRUE(enc.Encode(chunk, c.dtype, frame, c.segments, nullptr, c.grid).ok());
    Bytes back(c.size);
    ASSERT_TRUE(dec.Decode(frame, back).ok());
    ASSERT_TRUE(std::equal(back.begin(), back.end(), chunk.begin())) << "at " << c.offset;
    if (c.dtype != DType::kQ8_0) continue;
    ASSERT_TRUE(enc.Encode(chunk, DType::kBytes, as_bytes).ok());
    typed += frame.size();
    untyped += as_bytes.size();
  }
  EXPECT_GT(typed, 0u);
  EXPECT_LT(typed, untyped * 99 / 100) << "Q8_0 by field: " << typed << ", untyped: " << untyped;
  // Cut short (a partial download): the last tensor is bytes to the end, the others stay typed
  // (the whole file was planned as bytes).
  const Bytes cut(f.begin(), f.end() - 1000);
  const Result<TensorLayout> partial = Parse(cut);
  ASSERT_TRUE(partial.ok()) << partial.status().ToString();
  EXPECT_EQ(partial->tensors[0].dtype, DType::kQ8_0);
  EXPECT_EQ(partial->tensors[1].dtype, DType::kQ4_K);
  EXPECT_EQ(partial->tensors[2].dtype, DType::kBytes);
  EXPECT_EQ(partial->tensors[2].end, cut.size());
}

}  // namespace
}  // namespace zipnn
