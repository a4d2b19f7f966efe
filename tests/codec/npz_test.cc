// NumPy .npz archives: the arrays' layout, read strictly from the zip structure and .npy headers,
// and chunk plans along it.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "tests/codec/npz_writer.h"
#include "tests/codec/test_util.h"

namespace zipnn {
namespace {

using test::Bytes;
using test::NpzWriter;

// np.savez(w=np.arange(6, dtype=np.float32).reshape(2, 3), ids=np.array([1, -2], np.int8),
//          f=np.asfortranarray(np.ones((2, 3), np.float16))), as numpy 1.24 wrote it.
Bytes RealNumpyFile() {
  const std::string hex =
      "504b0304140000000000000021004fe9002a980000009800000005001400772e6e707901001000980000000000"
      "00009800000000000000934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e"
      "5f6f72646572273a2046616c73652c20277368617065273a2028322c2033292c207d2020202020202020202020"
      "202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020"
      "20200a000000000000803f0000004000004040000080400000a040504b030414000000000000002100f99bf312"
      "8200000082000000070014006964732e6e70790100100082000000000000008200000000000000934e554d5059"
      "010076007b276465736372273a20277c6931272c2027666f727472616e5f6f72646572273a2046616c73652c20"
      "277368617065273a2028322c292c207d2020202020202020202020202020202020202020202020202020202020"
      "202020202020202020202020202020202020202020202020202020202020200a01fe504b030414000000000000"
      "0021005cc196508c0000008c00000005001400662e6e7079010010008c000000000000008c0000000000000093"
      "4e554d5059010076007b276465736372273a20273c6632272c2027666f727472616e5f6f72646572273a205472"
      "75652c20277368617065273a2028322c2033292c207d2020202020202020202020202020202020202020202020"
      "2020202020202020202020202020202020202020202020202020202020202020202020200a003c003c003c003c"
      "003c003c504b01021403140000000000000021004fe9002a980000009800000005000000000000000000000080"
      "0100000000772e6e7079504b0102140314000000000000002100f99bf312820000008200000007000000000000"
      "00000000008001cf0000006964732e6e7079504b01021403140000000000000021005cc196508c0000008c0000"
      "0005000000000000000000000080018a010000662e6e7079504b050600000000030003009b0000004d02000000"
      "00";
  Bytes b;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    b.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return b;
}

Result<TensorLayout> Parse(const Bytes& f) {
  return ParseNpzLayout(test::MemoryReader(f), f.size());
}

NpzWriter::Member Array(const std::string& name, const std::string& descr, const std::string& shape,
                        Bytes data) {
  return {name, "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }",
          std::move(data)};
}

// Arrays whose data start at every residue modulo 4, larger than a chunk and small, of several
// dtypes.
NpzWriter SmallModel() {
  NpzWriter w;
  w.members.push_back(
      Array("a.npy", "<f4", "(300, 400)", test::ColumnScaled(DType::kF32, 300, 400, 1)));
  w.members.push_back(
      Array("b.npy", "<f2", "(700,)", test::GaussianWeights(DType::kF16, 700, 1, 2)));
  w.members.push_back(
      Array("c.npy", "<f2", "(1000, 240)", test::ColumnScaled(DType::kF16, 1000, 240, 3)));
  w.members.push_back(
      Array("d.npy", "|i1", "(3000,)", test::SmallInts(DType::kI8, 3000, -3, 3, 4)));
  w.members.push_back(Array("e.npy", "<i8", "()", test::SmallInts(DType::kI64, 1, 0, 9, 5)));
  return w;
}

TEST(NpzTest, ReadsTheArraysNumpyWrites) {
  const Bytes f = RealNumpyFile();
  ASSERT_EQ(f.size(), 766u);
  const Result<TensorLayout> h = Parse(f);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), 3u);
  const TensorInfo &w = h->tensors[0], &ids = h->tensors[1], &fo = h->tensors[2];
  EXPECT_EQ(w.name, "w.npy");
  EXPECT_EQ(w.dtype, DType::kF32);
  EXPECT_EQ(w.shape, (std::vector<uint64_t>{2, 3}));
  ASSERT_EQ(w.end - w.begin, 24u);
  for (int i = 0; i < 6; i++) {
    float v;
    std::memcpy(&v, &f[w.begin + 4 * i], 4);
    EXPECT_EQ(v, static_cast<float>(i));
  }
  EXPECT_EQ(ids.dtype, DType::kI8);
  EXPECT_EQ(ids.shape, (std::vector<uint64_t>{2}));
  ASSERT_EQ(ids.end - ids.begin, 2u);
  EXPECT_EQ(f[ids.begin], 0x01);
  EXPECT_EQ(f[ids.begin + 1], 0xfe);
  // Column-major: the bytes lie as the row-major array of the reversed shape.
  EXPECT_EQ(fo.dtype, DType::kF16);
  EXPECT_EQ(fo.shape, (std::vector<uint64_t>{3, 2}));
  EXPECT_EQ(fo.end, 0x24du);
  // Not a layout for the callers that want a header at the file's start (the mount's prefetcher).
  EXPECT_EQ(ParseTensorLayout(test::MemoryReader(f), f.size()).status().code(),
            StatusCode::kCorrupt);
}

TEST(NpzTest, PlansEachArrayAsTypedChunksAndCodesSmallerThanBytes) {
  for (bool zip64 : {false, true}) {
    NpzWriter w = SmallModel();
    w.zip64 = zip64;
    const Bytes f = w.Build();
    const Result<TensorLayout> h = Parse(f);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    ASSERT_EQ(h->tensors.size(), 5u);
    std::vector<uint64_t> residues;
    for (const TensorInfo& t : h->tensors) residues.push_back(t.begin % 4);
    EXPECT_EQ(residues, (std::vector<uint64_t>{3, 2, 1, 0, 3}));  // (the test needs each)
    PlanOptions o;
    o.chunk_size = 64u << 10;
    const Result<std::vector<ChunkSpec>> plan = PlanChunks(test::MemoryReader(f), f.size(), o);
    ASSERT_TRUE(plan.ok());
    uint64_t pos = 0;
    for (const ChunkSpec& c : *plan) {
      EXPECT_EQ(c.offset, pos);
      pos += c.size;
    }
    EXPECT_EQ(pos, f.size());
    // Each array starts a chunk of its dtype, with the matrices' columns as the grid.
    for (const TensorInfo& t : h->tensors) {
      bool starts = false;
      for (const ChunkSpec& c : *plan) {
        if (c.offset != t.begin) continue;
        starts = c.dtype == t.dtype;
        if (t.shape.size() == 2) {
          EXPECT_EQ(c.grid.columns, t.shape[1]);
        }
      }
      EXPECT_TRUE(starts) << t.name;
    }
    // Typed chunks code smaller than the same file planned as bytes, and round-trip.
    auto stored = [&](const std::vector<ChunkSpec>& p) {
      FrameEncoder enc;
      FrameDecoder dec;
      uint64_t total = 0;
      for (const ChunkSpec& c : p) {
        const std::span<const uint8_t> chunk(f.data() + c.offset, c.size);
        std::vector<uint8_t> frame;
        EXPECT_TRUE(enc.Encode(chunk, c.dtype, frame, c.segments, nullptr, c.grid).ok());
        Bytes back(c.size);
        EXPECT_TRUE(dec.Decode(frame, back).ok());
        EXPECT_TRUE(std::equal(back.begin(), back.end(), chunk.begin()));
        total += frame.size();
      }
      return total;
    };
    std::vector<ChunkSpec> bytes;
    PlanUntyped(0, f.size(), o.chunk_size, bytes);
    const uint64_t typed = stored(*plan), untyped = stored(bytes);
    EXPECT_LT(typed, untyped * 97 / 100) << typed << " vs " << untyped;
  }
}

TEST(NpzTest, MembersThatAreNotPlainArraysAreLeftAsBytes) {
  NpzWriter w;
  const Bytes floats = test::GaussianWeights(DType::kF32, 1000, 0.02, 1);
  w.members.push_back(Array("big_endian.npy", ">f4", "(1000,)", floats));
  NpzWriter::Member structured = Array("s.npy", "<f4", "(1000,)", floats);
  structured.header = "{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (1000,), }";
  w.members.push_back(structured);
  NpzWriter::Member deflated = Array("deflated.npy", "<f4", "(1000,)", floats);
  deflated.method = 8;
  w.members.push_back(deflated);
  w.members.push_back(Array("short.npy", "<f4", "(1001,)", floats));  // data does not fill it
  w.members.push_back(Array("not_npy.bin", "<f4", "(1000,)", floats));
  NpzWriter::Member no_magic = Array("raw.npy", "<f4", "(1000,)", floats);
  no_magic.raw = true;
  w.members.push_back(no_magic);
  w.members.push_back(Array("complex.npy", "<c8", "(500,)", floats));
  w.members.push_back(Array("ok.npy", "<f4", "(10, 100)", floats));
  const Bytes f = w.Build();
  const Result<TensorLayout> h = Parse(f);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), 1u);
  EXPECT_EQ(h->tensors[0].name, "ok.npy");
  // With no array at all, the archive is not a layout (the file plans as bytes).
  w.members.pop_back();
  EXPECT_EQ(Parse(w.Build()).status().code(), StatusCode::kCorrupt);
}

TEST(NpzTest, MalformedArchivesAreRejectedAndPlanAsBytes) {
  auto rejected = [](const Bytes& f, const std::string& what) {
    const Result<TensorLayout> h = Parse(f);
    EXPECT_FALSE(h.ok()) << what;
    if (!h.ok()) {
      EXPECT_EQ(h.status().code(), StatusCode::kCorrupt) << what;
    }
    PlanOptions o;
    o.chunk_size = 4096;
    const Result<std::vector<ChunkSpec>> plan = PlanChunks(test::MemoryReader(f), f.size(), o);
    ASSERT_TRUE(plan.ok()) << what;
    for (const ChunkSpec& c : *plan) EXPECT_EQ(c.dtype, DType::kBytes) << what;
  };
  const Bytes good = RealNumpyFile();
  ASSERT_TRUE(Parse(good).ok());
  // Every truncation: the end record is gone, or the directory points past the end.
  for (size_t n = 0; n < good.size(); n++)
    rejected(Bytes(good.begin(), good.begin() + n), "cut at " + std::to_string(n));
  const size_t end = good.size() - 22, cd = 0x24d;
  auto patched = [&](size_t at, std::initializer_list<uint8_t> bytes) {
    Bytes f = good;
    std::copy(bytes.begin(), bytes.end(), f.begin() + at);
    return f;
  };
  rejected(patched(end + 20, {1}), "comment length past the end");
  rejected(patched(end + 4, {1}), "multi-disk");
  rejected(patched(end + 16, {0x4e}), "directory offset off by one");
  rejected(patched(end + 12, {0xa0}), "directory size past the end record");
  rejected(patched(end + 10, {9}), "more entries than the directory holds");
  rejected(patched(cd, {0}), "bad directory signature");
  rejected(patched(cd + 42, {0x10}), "local header offset not at a local header");
  rejected(patched(cd + 42, {0xff, 0xff, 0xff, 0xff}), "zip64 offset without its extra field");
  rejected(patched(cd + 28, {0xff}), "name past the directory");
  // Two directory entries naming one member: the arrays would overlap.
  {  // two directory entries naming one member: the arrays would overlap
    NpzWriter w;
    w.members.push_back(Array("x.npy", "<f4", "(8,)", Bytes(32, 1)));
    w.members.push_back(Array("y.npy", "<f4", "(8,)", Bytes(32, 2)));
    Bytes f = w.Build();
    ASSERT_TRUE(Parse(f).ok());
    const size_t second = test::ReadLE(&f[f.size() - 6], 4) + 46 + 5;  // its directory entry
    std::fill_n(f.begin() + static_cast<ptrdiff_t>(second + 42), 4, 0);
    rejected(f, "overlapping members");
  }
  // Every single bit flip of the archive: a layout or an error, and always a plan.
  for (size_t i = 0; i < good.size(); i++) {
    for (int bit = 0; bit < 8; bit += 3) {
      Bytes f = good;
      f[i] ^= static_cast<uint8_t>(1 << bit);
      const Result<TensorLayout> h = Parse(f);
      if (h.ok()) {
        for (const TensorInfo& t : h->tensors) EXPECT_LE(t.end, f.size());
      }
      PlanOptions o;
      o.chunk_size = 4096;
      EXPECT_TRUE(PlanChunks(test::MemoryReader(f), f.size(), o).ok());
    }
  }
}

}  // namespace
}  // namespace zipnn
