// safetensors headers and chunk planning: strict parsing, and plans that never mix dtypes.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "codec/codec.h"
#include "tests/codec/test_util.h"

namespace zipnn {
namespace {

using test::Bytes;

// A tensor as a test writes it: offsets relative to the data section, as in the file.
struct T {
  std::string name;
  std::string dtype;  // safetensors spelling
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;
};

std::string Json(const std::vector<T>& ts, const std::string& extra = "") {
  std::ostringstream j;
  j << "{";
  bool first = true;
  if (!extra.empty()) {
    j << extra;
    first = false;
  }
  for (const T& t : ts) {
    if (!first) j << ",";
    first = false;
    j << "\"" << t.name << "\":{\"dtype\":\"" << t.dtype << "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); i++) j << (i ? "," : "") << t.shape[i];
    j << "],\"data_offsets\":[" << t.begin << "," << t.end << "]}";
  }
  j << "}";
  return j.str();
}

// Lays tensors out back to back in the given order (element-aligned) with `data` filled with
// typical values of each dtype; returns the file.
Bytes Layout(std::vector<T>& ts, uint64_t seed, const std::string& extra = "") {
  Bytes data;
  for (T& t : ts) {
    const DType d = *DTypeFromSafetensors(t.dtype);
    uint64_t elems = 1;
    for (uint64_t s : t.shape) elems *= s;
    t.begin = data.size();
    const Bytes b = test::TypicalData(d, elems * DTypeSize(d), seed++);
    data.insert(data.end(), b.begin(), b.end());
    t.end = data.size();
  }
  return test::MakeSafetensors(Json(ts, extra), data);
}

uint64_t DataStart(const Bytes& file) { return 8 + test::ReadLE(file.data(), 8); }

// Checks everything a plan of a valid safetensors file must satisfy. `ts` offsets are relative.
void ExpectValidPlan(const std::vector<ChunkSpec>& plan, const std::vector<T>& ts,
                     uint64_t data_start, uint64_t file_size, uint32_t chunk_size) {
  SCOPED_TRACE("chunk size " + std::to_string(chunk_size));
  // Contiguous cover of [0, file_size), in order, bounded sizes.
  uint64_t pos = 0;
  for (size_t i = 0; i < plan.size(); i++) {
    ASSERT_EQ(plan[i].offset, pos) << "chunk " << i;
    ASSERT_GT(plan[i].size, 0u) << "chunk " << i;
    ASSERT_LE(plan[i].size, chunk_size) << "chunk " << i;
    pos += plan[i].size;
  }
  ASSERT_EQ(pos, file_size);
  auto chunk_at = [&](uint64_t off) {
    return std::upper_bound(plan.begin(), plan.end(), off,
                            [](uint64_t o, const ChunkSpec& c) { return o < c.offset; }) -
           plan.begin() - 1;
  };
  // The header is untyped and ends on a chunk boundary.
  for (const ChunkSpec& c : plan)
    if (c.offset < data_start) {
      EXPECT_EQ(c.dtype, DType::kBytes) << "header chunk " << c.offset;
    }
  if (data_start < file_size) {
    EXPECT_EQ(plan[chunk_at(data_start)].offset, data_start);
  }
  // Each byte's type: a tensor's dtype, or untyped outside tensors.
  std::vector<std::pair<uint64_t, const T*>> by_begin;
  for (const T& t : ts)
    if (t.end > t.begin) by_begin.push_back({data_start + t.begin, &t});
  std::sort(by_begin.begin(), by_begin.end());
  for (size_t ci = 0; ci < plan.size(); ci++) {
    const ChunkSpec& c = plan[ci];
    const uint64_t cb = c.offset, ce = c.offset + c.size;
    uint64_t covered = 0;
    std::vector<uint32_t> starts;  // tensor starts strictly inside the chunk
    // Expected: the grid of the chunk's first tensor, when it has 2+ dimensions (its last one
    // other than 1 gives the columns), for the whole chunk.
    TensorGrid grid;
    bool first_tensor = true;
    std::set<DType> mixed;  // dtypes of the tensors an untyped chunk holds
    for (const auto& [tb, t] : by_begin) {
      const uint64_t te = data_start + t->end;
      if (te <= cb || tb >= ce) continue;
      if (std::exchange(first_tensor, false) && t->shape.size() >= 2) {
        const uint64_t elem = DTypeSize(*DTypeFromSafetensors(t->dtype));
        uint64_t columns = 0;
        for (uint64_t d : t->shape)
          if (d != 1) columns = d;
        grid = {(cb - tb) / elem, columns};
      }
      const DType d = *DTypeFromSafetensors(t->dtype);
      if (c.dtype == DType::kBytes) {  // a mixed chunk: whole tiny tensors of several dtypes
        EXPECT_TRUE(tb >= cb && te <= ce && te - tb < 1024 && c.size <= chunk_size / 8)
            << "untyped chunk " << ci << " holds bytes of " << t->name;
        mixed.insert(d);
        continue;
      }
      EXPECT_EQ(c.dtype, d) << "chunk " << ci << " holds bytes of " << t->name;
      covered += std::min(ce, te) - std::max(cb, tb);
      if (tb > cb) starts.push_back(static_cast<uint32_t>((tb - cb) / DTypeSize(d)));
      if (tb < cb) {
        EXPECT_EQ((cb - tb) % DTypeSize(d), 0u) << "chunk " << ci << " splits an element";
      }
      if (tb >= cb && tb < ce && t->end - t->begin >= chunk_size) {
        EXPECT_EQ(tb, cb) << "large tensor " << t->name << " does not start a chunk";
      }
    }
    if (c.dtype != DType::kBytes) {
      EXPECT_EQ(covered, c.size) << "typed chunk " << ci << " holds untyped bytes";
      EXPECT_EQ(c.grid.first, grid.first) << "chunk " << ci;
      EXPECT_EQ(c.grid.columns, grid.columns) << "chunk " << ci;
      EXPECT_EQ(c.size % DTypeSize(c.dtype), 0u) << "chunk " << ci;
      EXPECT_EQ(c.segments, starts) << "chunk " << ci << ": segments must be its tensor starts";
    } else {
      EXPECT_NE(mixed.size(), 1u) << "untyped chunk " << ci << " holds tensors of one dtype";
      EXPECT_TRUE(c.segments.empty());
    }
  }
}

Result<std::vector<ChunkSpec>> Plan(const Bytes& f, uint32_t cs) {
  PlanOptions o;
  o.chunk_size = cs;
  return PlanChunks(test::MemoryReader(f), f.size(), o);
}

constexpr uint32_t kChunkSizes[] = {4096, 8192, 64u << 10, 256u << 10, 1u << 20};

TEST(SafetensorsPlanTest, MixedFileIsPlannedAlongTensors) {
  std::vector<T> ts = {{"f", "F16", {100000}},   {"b", "F32", {10}}, {"a", "BF16", {300, 1000}},
                       {"c", "F32", {4, 5}},     {"d", "I64", {5}},  {"e", "BF16", {64}},
                       {"g", "U8", {3}},         {"h", "BF16", {0}}, {"i", "BOOL", {7}},
                       {"j", "F8_E4M3", {5000}}, {"k", "F64", {}},   {"l", "I32", {9000}}};
  const Bytes f = Layout(ts, 1, "\"__metadata__\":{\"format\":\"pt\"}");
  for (uint32_t cs : kChunkSizes) {
    auto plan = Plan(f, cs);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    ExpectValidPlan(*plan, ts, DataStart(f), f.size(), cs);
  }
}

TEST(SafetensorsPlanTest, SmallTensorsOfOneTypeShareChunksAsSegments) {
  std::vector<T> ts;
  for (int i = 0; i < 20; i++)
    ts.push_back({std::string("t").append(std::to_string(i)), "BF16", {50}});
  const Bytes f = Layout(ts, 2);
  auto plan = Plan(f, 64u << 10);
  ASSERT_TRUE(plan.ok());
  ExpectValidPlan(*plan, ts, DataStart(f), f.size(), 64u << 10);
  size_t segments = 0;
  for (const ChunkSpec& c : *plan) segments += c.segments.size();
  EXPECT_GT(segments, 0u) << "20 tiny tensors of one dtype should share a chunk";
}

// Tiny tensors of alternating dtypes (1-63 elements each) share untyped chunks instead of making
// a frame each; a tiny tensor after a larger typed chunk does not make that chunk untyped.
TEST(SafetensorsPlanTest, TinyTensorsOfMixedTypesShareUntypedChunks) {
  std::vector<T> ts = {{"big", "BF16", {4096}}};
  const char* types[] = {"F32", "BF16", "I64", "F16", "U8"};
  for (int i = 0; i < 400; i++)
    ts.push_back({std::string("t").append(std::to_string(i)),
                  types[i % 5],
                  {static_cast<uint64_t>(1 + i % 63)}});
  const Bytes f = Layout(ts, 3);
  auto plan = Plan(f, 256u << 10);
  ASSERT_TRUE(plan.ok());
  ExpectValidPlan(*plan, ts, DataStart(f), f.size(), 256u << 10);
  EXPECT_LT(plan->size(), 20u) << "a chunk per tiny tensor";
  EXPECT_EQ((*plan)[1].dtype, DType::kBF16) << "the large tensor's chunk stays typed";
  EXPECT_EQ((*plan)[1].size, 8192u);
}

// A file of no known layout whose floats start at an odd offset (legacy torch.save files put
// storages there) is cut where its elements start, so each chunk is grouped as BF16: it came out
// coded as F32, 0.9% larger than the same weights at an even offset. Text keeps plain cuts.
TEST(SafetensorsPlanTest, UntypedFilesAreCutWhereElementsStart) {
  const Bytes weights = test::GaussianWeights(DType::kBF16, 1u << 20, 0.02, 7);
  auto stored = [&](size_t header) {
    Bytes f(header, 'x');
    f.insert(f.end(), weights.begin(), weights.end());
    auto plan = Plan(f, 256u << 10);
    EXPECT_TRUE(plan.ok());
    uint64_t total = 0;
    FrameEncoder enc;
    for (const ChunkSpec& c : *plan) {
      if (c.offset > 0) {
        EXPECT_EQ((c.offset - header) % 2, 0u) << "a chunk cuts an element";
      }
      std::vector<uint8_t> frame;
      EXPECT_TRUE(enc.Encode({f.data() + c.offset, c.size}, c.dtype, frame).ok());
      total += frame.size();
    }
    return total;
  };
  const uint64_t odd = stored(2865), even = stored(2864);
  EXPECT_LE(odd, even + even / 500) << "odd " << odd << ", even " << even;
  Bytes text;
  for (int i = 0; text.size() < (1u << 20); ++i) text.push_back(static_cast<uint8_t>('a' + i % 26));
  // Nor do zeros, a few bytes among them (a sparse file) or not: holes stay chunk-aligned.
  Bytes sparse(1u << 20);
  for (const Bytes& f : {text, sparse, (sparse[600001] = 7, sparse)}) {
    auto plan = Plan(f, 256u << 10);
    ASSERT_TRUE(plan.ok());
    for (const ChunkSpec& c : *plan) EXPECT_EQ(c.offset % (256u << 10), 0u);
  }
}

// The first cut of such a file lies a chunk in: for a file shorter than a chunk it lay past the
// end, and the plan read beyond it ("did it shrink?" from `zipnn compress --chunk-size 1M`).
TEST(SafetensorsPlanTest, UntypedFilesShorterThanAChunkArePlannedWithinThem) {
  Bytes f(3, 'x');
  const Bytes weights = test::GaussianWeights(DType::kF32, 1u << 17, 0.02, 7);
  f.insert(f.end(), weights.begin(), weights.end());
  for (uint32_t cs : {1u << 20, 64u << 20}) {
    auto plan = Plan(f, cs);
    ASSERT_TRUE(plan.ok());
    uint64_t pos = 0;
    for (const ChunkSpec& c : *plan) {
      EXPECT_EQ(c.offset, pos);
      EXPECT_GT(c.size, 0u);
      pos = c.offset + c.size;
    }
    EXPECT_EQ(pos, f.size()) << "chunk size " << cs;
  }
}

TEST(SafetensorsPlanTest, RandomFilesGiveValidPlansAndRoundTrip) {
  const char* dtypes[] = {"BF16", "F16", "F32", "F64", "F8_E4M3", "F8_E5M2", "I8",  "I16",
                          "I32",  "I64", "U8",  "U16", "U32",     "U64",     "BOOL"};
  std::mt19937_64 rng(3);
  ParallelCodec codec(2);
  for (int file = 0; file < 25; file++) {
    std::vector<T> ts;
    const int n = 1 + static_cast<int>(rng() % 30);
    for (int i = 0; i < n; i++) {
      // Mostly small tensors, some larger than a chunk; vectors, matrices and depthwise-like
      // kernels [h, w, c, 1].
      const uint64_t elems = rng() % 4 == 0 ? rng() % 150000 : rng() % 3000;
      const uint64_t c = 1 + rng() % 64;
      std::vector<uint64_t> shape = {elems};
      if (rng() % 3 == 0) shape = {elems / c, c};
      if (rng() % 5 == 0) shape = {1 + elems / c / 9 % 3, 3, c, 1};
      ts.push_back(
          {std::string("w.").append(std::to_string(i)), dtypes[rng() % std::size(dtypes)], shape});
    }
    const Bytes f = Layout(ts, rng());  // JSON key order ("w.10" < "w.2") is not offset order
    for (uint32_t cs : {4096u, 65536u}) {
      auto plan = Plan(f, cs);
      ASSERT_TRUE(plan.ok()) << plan.status().ToString();
      ExpectValidPlan(*plan, ts, DataStart(f), f.size(), cs);
      std::vector<Bytes> frames;
      ASSERT_TRUE(codec.EncodeAll(f, 0, *plan, frames).ok());
      Bytes out(f.size());
      std::vector<std::span<const uint8_t>> in(frames.begin(), frames.end());
      std::vector<std::span<uint8_t>> outs;
      for (const ChunkSpec& c : *plan) outs.push_back(std::span(out).subspan(c.offset, c.size));
      ASSERT_TRUE(codec.DecodeAll(in, outs).ok());
      ASSERT_EQ(out, f) << "file " << file;
    }
  }
}

TEST(SafetensorsPlanTest, PaddingAndTrailingBytesAreUntyped) {
  std::vector<T> ts = {{"a", "F32", {1000}}, {"b", "BF16", {3000}}};
  Bytes data = test::GaussianWeights(DType::kF32, 1000, 0.02, 4);
  ts[0].begin = 0, ts[0].end = 4000;
  data.resize(4064, 0);  // 64 bytes of alignment padding
  const Bytes b = test::GaussianWeights(DType::kBF16, 3000, 0.02, 5);
  ts[1].begin = data.size(), ts[1].end = data.size() + b.size();
  data.insert(data.end(), b.begin(), b.end());
  data.resize(data.size() + 100, 7);  // trailing bytes
  const Bytes f = test::MakeSafetensors(Json(ts), data);
  if (!ParseSafetensorsHeader(test::MemoryReader(f), f.size()).ok())
    GTEST_SKIP() << "gaps between tensors are rejected, which is also acceptable";
  for (uint32_t cs : {4096u, 65536u}) {
    auto plan = Plan(f, cs);
    ASSERT_TRUE(plan.ok());
    ExpectValidPlan(*plan, ts, DataStart(f), f.size(), cs);
  }
}

TEST(SafetensorsPlanTest, ContentNotNameMakesAFileSafetensors) {
  std::vector<T> ts = {{"a", "BF16", {50000}}};
  const Bytes st = Layout(ts, 6);
  // Whole, it is safetensors whatever its name (PlanChunks takes none: the Hugging Face cache
  // names its blobs by hash).
  auto plan = Plan(st, 4096);
  ASSERT_TRUE(plan.ok());
  ExpectValidPlan(*plan, ts, DataStart(st), st.size(), 4096);
  EXPECT_EQ(plan->back().dtype, DType::kBF16);
  // Cut short, or with the JSON not starting with '{', it is plain bytes in fixed-size chunks.
  Bytes no_brace = st;
  no_brace[8] = ' ';
  std::vector<Bytes> others = {no_brace};
  for (size_t size :
       {size_t{0}, size_t{1}, size_t{9}, size_t{4095}, size_t{4096}, size_t{4097}, st.size() - 1})
    others.emplace_back(st.begin(), st.begin() + size);
  for (const Bytes& f : others) {
    const size_t size = f.size();
    plan = Plan(f, 4096);
    ASSERT_TRUE(plan.ok()) << size;
    ASSERT_EQ(plan->size(), (size + 4095) / 4096) << size;
    for (size_t i = 0; i < plan->size(); i++) {
      EXPECT_EQ((*plan)[i].offset, 4096 * i);
      EXPECT_EQ((*plan)[i].size, std::min<size_t>(4096, size - 4096 * i));
      EXPECT_EQ((*plan)[i].dtype, DType::kBytes);
    }
  }
}

TEST(SafetensorsPlanTest, InvalidSafetensorsAreUntypedChunks) {
  std::vector<T> ts = {{"a", "BF16", {50000}}};
  Bytes f = Layout(ts, 7);
  f[8] = '#';  // breaks the JSON
  auto plan = Plan(f, 8192);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->size(), (f.size() + 8191) / 8192);
  for (const ChunkSpec& c : *plan) {
    EXPECT_EQ(c.dtype, DType::kBytes);
  }
  ASSERT_TRUE(Plan({}, 8192).ok());
  EXPECT_TRUE(Plan({}, 8192)->empty());
}

TEST(SafetensorsPlanTest, ReadErrorsArePropagated) {
  std::vector<T> ts = {{"a", "BF16", {5000}}};
  const Bytes f = Layout(ts, 8);
  const ReadAtFn failing = [](uint64_t, std::span<uint8_t>) { return Status::Io("disk on fire"); };
  auto plan = PlanChunks(failing, f.size(), {});
  EXPECT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kIo);
  EXPECT_EQ(ParseSafetensorsHeader(failing, f.size()).status().code(), StatusCode::kIo);
}

TEST(SafetensorsPlanTest, BadChunkSizesAreRefused) {
  std::vector<T> ts = {{"a", "BF16", {5000}}};
  const Bytes f = Layout(ts, 9);
  EXPECT_FALSE(Plan(f, 0).ok());
  EXPECT_FALSE(Plan(f, 0).ok());
  for (uint32_t cs : {uint32_t{1}, uint32_t{4097}, kMaxChunkSize + 8, UINT32_MAX}) {
    auto plan = Plan(f, cs);
    if (!plan.ok()) continue;  // refusing is fine; a plan must still fit in frames
    for (const ChunkSpec& c : *plan) {
      EXPECT_LE(c.size, kMaxChunkSize);
    }
  }
}

TEST(SafetensorsPlanTest, PlanUntypedSplitsARange) {
  std::vector<ChunkSpec> out;
  PlanUntyped(100, 100 + 10000, 4096, out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].offset, 100u);
  EXPECT_EQ(out[2].offset, 100u + 8192);
  EXPECT_EQ(out[2].size, 10000u - 8192);
  PlanUntyped(5, 5, 4096, out);
  EXPECT_EQ(out.size(), 3u) << "an empty range adds nothing";
}

// ---- Header parsing ----------------------------------------------------------------------------

TEST(SafetensorsHeaderTest, ParsesAValidHeader) {
  std::vector<T> ts = {
      {"z", "F32", {2, 3}}, {"a", "BF16", {4}}, {"e", "I64", {0}}, {"s", "F16", {}}};
  const Bytes f = Layout(ts, 10, "\"__metadata__\":{\"source\":\"test\"}");
  auto h = ParseSafetensorsHeader(test::MemoryReader(f), f.size());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->data_start, DataStart(f));
  ASSERT_EQ(h->tensors.size(), 4u);
  for (size_t i = 1; i < h->tensors.size(); i++)
    EXPECT_LE(h->tensors[i - 1].begin, h->tensors[i].begin) << "tensors ordered by begin";
  for (const TensorInfo& ti : h->tensors) {
    const auto it =
        std::find_if(ts.begin(), ts.end(), [&](const T& t) { return t.name == ti.name; });
    ASSERT_NE(it, ts.end()) << ti.name;
    EXPECT_EQ(ti.dtype, *DTypeFromSafetensors(it->dtype));
    EXPECT_EQ(ti.shape, it->shape);
    EXPECT_EQ(ti.begin, h->data_start + it->begin) << "offsets are absolute";
    EXPECT_EQ(ti.end, h->data_start + it->end);
  }
}

// Dtypes safetensors gained after DType was fixed (MX scales, FNUZ floats, packed FP4/FP6,
// complex64) are coded as the type of the same bit layout, with their packed sizes checked: one
// such tensor must not make the whole file untyped.
TEST(SafetensorsHeaderTest, AcceptsNewerDTypesAsTheirCodedType) {
  const std::vector<T> ts = {
      {"scale", "F8_E8M0", {4}, 0, 4},    {"fp4", "F4", {2, 3}, 4, 7},
      {"fp6", "F6_E2M3", {4}, 7, 10},     {"fp6b", "F6_E3M2", {8}, 10, 16},
      {"z", "C64", {2, 3}, 16, 64},       {"e4", "F8_E4M3FNUZ", {2}, 64, 66},
      {"e5", "F8_E5M2FNUZ", {2}, 66, 68}, {"zs", "C64", {}, 68, 76},
      {"w", "BF16", {8}, 76, 92},
  };
  const Bytes f = test::MakeSafetensors(Json(ts), Bytes(92, 1));
  auto h = ParseSafetensorsHeader(test::MemoryReader(f), f.size());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), ts.size());
  const std::pair<DType, std::vector<uint64_t>> want[] = {
      {DType::kU8, {4}},     {DType::kBytes, {2, 3}}, {DType::kBytes, {4}},
      {DType::kBytes, {8}},  {DType::kF32, {2, 6}},   {DType::kF8E4M3, {2}},
      {DType::kF8E5M2, {2}}, {DType::kF32, {2}},      {DType::kBF16, {8}},
  };
  for (size_t i = 0; i < ts.size(); i++) {
    EXPECT_EQ(h->tensors[i].name, ts[i].name);
    EXPECT_EQ(h->tensors[i].dtype, want[i].first) << ts[i].name;
    EXPECT_EQ(h->tensors[i].shape, want[i].second) << ts[i].name << ": shape in coded elements";
  }
  // Packed sizes are checked in bits: 3 FP4 values are 12 bits, not a whole number of bytes.
  for (const T& bad : {T{"a", "F4", {3}, 0, 2}, T{"a", "F4", {3}, 0, 1}, T{"a", "F4", {4}, 0, 1},
                       T{"a", "F6_E2M3", {4}, 0, 4}, T{"a", "C64", {2}, 0, 8},
                       T{"a", "F8_E8M0", {4}, 0, 3}, T{"a", "f4", {2}, 0, 1},
                       // 2^58 F64 values are 2^64 bits: a 64-bit product would wrap to 0
                       T{"a", "F64", {uint64_t{1} << 58}, 0, 0},
                       // after a zero dimension the product no longer bounds the others
                       T{"a", "C64", {0, uint64_t{1} << 63}, 0, 0}}) {
    const Bytes b = test::MakeSafetensors(Json({bad}), Bytes(4, 0));
    EXPECT_FALSE(ParseSafetensorsHeader(test::MemoryReader(b), b.size()).ok())
        << bad.dtype << " [" << bad.shape.back() << "] in " << bad.end << " bytes";
  }
}

TEST(SafetensorsPlanTest, NewerDTypesKeepTheFileTyped) {
  // An FP8 checkpoint with E8M0 block scales and a packed FP4 expert, as MX models ship.
  const uint32_t cs = 4096;
  const std::vector<T> ts = {{"w", "F8_E4M3", {64, 100}, 0, 6400},
                             {"w.scale", "F8_E8M0", {64, 1}, 6400, 6464},
                             {"expert", "F4", {100, 100}, 6464, 11464},
                             {"tiny", "F4", {8}, 11464, 11468},
                             {"norm", "BF16", {64}, 11468, 11596}};
  const Bytes f = test::MakeSafetensors(Json(ts), Bytes(11596, 0x38));
  const uint64_t ds = DataStart(f);
  auto plan = Plan(f, cs);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  uint64_t pos = 0;
  for (const ChunkSpec& c : *plan) {
    ASSERT_EQ(c.offset, pos);
    pos += c.size;
    const uint64_t rel = c.offset - std::min(c.offset, ds);
    if (c.offset < ds) {
      EXPECT_EQ(c.dtype, DType::kBytes) << "header";
    } else if (rel < 6400) {
      EXPECT_EQ(c.dtype, DType::kF8E4M3) << rel;
      EXPECT_EQ(c.grid.columns, 100u) << rel;
    } else if (rel < 6464) {
      EXPECT_EQ(c.dtype, DType::kU8) << rel;
    } else if (rel < 11468) {
      EXPECT_EQ(c.dtype, DType::kBytes) << rel;
      EXPECT_TRUE(c.segments.empty()) << "packed FP4 shares no chunk";
      EXPECT_LE(c.offset + c.size, ds + (rel < 11464 ? 11464 : 11468)) << "nor spills over";
    } else {
      EXPECT_EQ(c.dtype, DType::kBF16) << rel;
    }
  }
  EXPECT_EQ(pos, f.size());
  EXPECT_TRUE(std::any_of(plan->begin(), plan->end(), [&](const ChunkSpec& c) {
    return c.offset == ds + 6464;
  })) << "the FP4 tensor starts a chunk";
  EXPECT_TRUE(std::any_of(plan->begin(), plan->end(), [&](const ChunkSpec& c) {
    return c.offset == ds + 11464;
  })) << "so does the small one after it";
}

TEST(SafetensorsHeaderTest, AcceptsUnorderedPaddedAndEmptyHeaders) {
  // Listed out of order but not overlapping; header padded with spaces as writers do.
  const Bytes data(48, 1);
  const std::string j = Json({{"late", "F32", {4}, 32, 48}, {"early", "U8", {32}, 0, 32}});
  auto h = ParseSafetensorsHeader(test::MemoryReader(test::MakeSafetensors(j + "      ", data)),
                                  8 + j.size() + 6 + data.size());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->tensors[0].name, "early");
  const Bytes empty = test::MakeSafetensors("{}", {});
  auto e = ParseSafetensorsHeader(test::MemoryReader(empty), empty.size());
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_TRUE(e->tensors.empty());
  EXPECT_EQ(e->data_start, 10u);
  // Empty tensors may share an offset with others.
  const std::string z =
      Json({{"a", "F32", {2}, 0, 8}, {"b", "F32", {0}, 4, 4}, {"c", "U8", {0}, 8, 8}});
  const Bytes zf = test::MakeSafetensors(z, Bytes(8, 0));
  EXPECT_TRUE(ParseSafetensorsHeader(test::MemoryReader(zf), zf.size()).ok());
}

TEST(SafetensorsHeaderTest, SkipsMetadataAndUnknownFieldsWhateverTheyHold) {
  // Fields a tensor does not need, and metadata, may nest objects and arrays that look like
  // tensor fields; none of it is taken for the tensor's own.
  const std::string j =
      "{\"__metadata__\":{\"format\":\"pt\",\"x\":{\"dtype\":\"F64\",\"shape\":[9],"
      "\"data_offsets\":[0,72]},\"y\":[[1],{\"shape\":[2]}]},"
      "\"w\":{\"extra\":{\"shape\":[5],\"dtype\":\"U8\",\"data_offsets\":[1,2]},"
      "\"dtype\":\"F32\",\"more\":[[3,4],{\"a\":null}],\"shape\":[2,2],\"note\":\"x\","
      "\"data_offsets\":[0,16],\"tail\":[\"shape\",1.5,-1,true]}}";
  const Bytes f = test::MakeSafetensors(j, Bytes(16, 0));
  auto h = ParseSafetensorsHeader(test::MemoryReader(f), f.size());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), 1u);
  EXPECT_EQ(h->tensors[0].name, "w");
  EXPECT_EQ(h->tensors[0].dtype, DType::kF32);
  EXPECT_EQ(h->tensors[0].shape, (std::vector<uint64_t>{2, 2}));
  EXPECT_EQ(h->tensors[0].begin, DataStart(f));
  EXPECT_EQ(h->tensors[0].end, DataStart(f) + 16);
}

struct BadHeader {
  const char* what;
  std::string json;
  size_t data_size;
};

TEST(SafetensorsHeaderTest, RejectsMalformedHeaders) {
  const BadHeader cases[] = {
      {"truncated JSON", "{\"a\":", 0},
      {"array", "[]", 0},
      {"string", "\"hello\"", 0},
      {"null", "null", 0},
      {"not UTF-8 JSON", "\xff\xfe{}", 0},
      {"NUL bytes", std::string("\0\0\0\0", 4), 0},
      {"tensor not an object", "{\"a\":1}", 0},
      {"empty tensor object", "{\"a\":{}}", 0},
      {"no dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
      {"no shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4},
      {"no offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4},
      {"unknown dtype", Json({{"a", "F128", {1}, 0, 16}}), 16},
      {"lower-case dtype", Json({{"a", "bf16", {1}, 0, 2}}), 2},
      {"numeric dtype", "{\"a\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
      {"shape not an array", "{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4},
      {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4},
      {"fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4},
      {"string dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4},
      {"one offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4},
      {"three offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8},
      {"negative offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[-4,0]}}", 4},
      {"fractional offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4.0]}}", 4},
      {"begin after end", Json({{"a", "U8", {0}, 8, 4}}), 8},
      {"end beyond data", Json({{"a", "F32", {4}, 0, 16}}), 15},
      {"offsets beyond 2^64",
       "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[18446744073709551616,"
       "18446744073709551616]}}",
       0},
      {"size smaller than shape", Json({{"a", "F32", {4}, 0, 12}}), 16},
      {"size larger than shape", Json({{"a", "F32", {4}, 0, 20}}), 20},
      {"shape overflows 64 bits", Json({{"a", "U8", {4294967296ull, 4294967296ull}, 0, 0}}), 0},
      {"element bytes overflow", Json({{"a", "F32", {4611686018427387904ull}, 0, 0}}), 0},
      {"overlapping tensors", Json({{"a", "F32", {4}, 0, 16}, {"b", "F32", {2}, 8, 16}}), 16},
      {"nested overlap", Json({{"a", "U8", {16}, 0, 16}, {"b", "U8", {4}, 4, 8}}), 16},
      {"same range twice", Json({{"a", "U8", {8}, 0, 8}, {"b", "U8", {8}, 0, 8}}), 8},
      {"overlap behind an empty tensor",
       Json({{"a", "U8", {16}, 0, 16}, {"e", "U8", {0}, 4, 4}, {"b", "U8", {4}, 8, 12}}), 16},
      {"overlap behind an empty tensor at the same start",
       Json({{"a", "U8", {16}, 0, 16}, {"e", "U8", {0}, 0, 0}, {"b", "U8", {4}, 8, 12}}), 16},
      {"metadata not an object", "{\"__metadata__\":\"x\"}", 0},
  };
  for (const BadHeader& c : cases) {
    const Bytes f = test::MakeSafetensors(c.json, Bytes(c.data_size, 0));
    auto h = ParseSafetensorsHeader(test::MemoryReader(f), f.size());
    EXPECT_FALSE(h.ok()) << c.what << ": " << c.json;
    if (!h.ok()) {
      EXPECT_EQ(h.status().code(), StatusCode::kCorrupt) << c.what;
    }
    // PlanChunks treats it as plain bytes.
    auto plan = Plan(f, 4096);
    ASSERT_TRUE(plan.ok()) << c.what;
    for (const ChunkSpec& ch : *plan) {
      EXPECT_EQ(ch.dtype, DType::kBytes) << c.what;
    }
  }
}

// A reader over a virtual file: the 8-byte length, then `fill` bytes, serving at most
// `max_read` bytes per call and recording the largest request.
struct VirtualFile {
  uint64_t header_len;
  uint64_t size;
  char fill = ' ';
  char first = '{';  // the JSON's first byte
  size_t largest_read = 0;
  ReadAtFn Reader() {
    return [this](uint64_t off, std::span<uint8_t> out) -> Status {
      largest_read = std::max(largest_read, out.size());
      if (off + out.size() > size) return Status::Io("past the end");
      for (size_t i = 0; i < out.size(); i++) {
        const uint64_t p = off + i;
        out[i] = p < 8                     ? static_cast<uint8_t>(header_len >> (8 * p))
                 : p == 8                  ? static_cast<uint8_t>(first)
                 : p == 8 + header_len - 1 ? '}'
                                           : static_cast<uint8_t>(fill);
      }
      return Status::Ok();
    };
  }
};

TEST(SafetensorsHeaderTest, RejectsBadLengthsWithoutReadingThem) {
  const uint64_t lengths[] = {0,
                              1,
                              kMaxSafetensorsHeader + 1,
                              uint64_t{1} << 40,
                              uint64_t{1} << 63,
                              UINT64_MAX,
                              UINT64_MAX - 7};
  for (uint64_t len : lengths) {
    VirtualFile vf{len, 300u << 20};
    auto h = ParseSafetensorsHeader(vf.Reader(), vf.size);
    EXPECT_FALSE(h.ok()) << len;
    if (!h.ok()) {
      EXPECT_EQ(h.status().code(), StatusCode::kCorrupt) << len;
    }
    EXPECT_LE(vf.largest_read, 9u) << "read a header of length " << len;
  }
  // Longer than the file.
  for (uint64_t len : {uint64_t{100}, uint64_t{93}}) {
    VirtualFile vf{len, 8 + 92};
    EXPECT_FALSE(ParseSafetensorsHeader(vf.Reader(), vf.size).ok()) << len;
    EXPECT_LE(vf.largest_read, 9u);
  }
  // A header that does not start with '{' (a file that is not safetensors): told from the first
  // 9 bytes.
  VirtualFile text{50u << 20, 60u << 20, 'x', 'x'};
  EXPECT_EQ(ParseSafetensorsHeader(text.Reader(), text.size).status().code(), StatusCode::kCorrupt);
  EXPECT_LE(text.largest_read, 9u);
  // Files shorter than the length field and "{}".
  for (uint64_t size = 0; size < 10; size++) {
    VirtualFile vf{2, size};
    EXPECT_FALSE(ParseSafetensorsHeader(vf.Reader(), size).ok()) << size;
  }
}

TEST(SafetensorsHeaderTest, AcceptsAHeaderOfExactlyTheCap) {
  VirtualFile vf{kMaxSafetensorsHeader, 8 + kMaxSafetensorsHeader};
  auto h = ParseSafetensorsHeader(vf.Reader(), vf.size);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->data_start, 8 + kMaxSafetensorsHeader);
  EXPECT_TRUE(h->tensors.empty());
}

}  // namespace
}  // namespace zipnn
