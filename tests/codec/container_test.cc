// Tests of the .znn container: round trips, ranges, and rejection of damaged or hostile files.
#include "codec/container.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "codec/codec.h"

namespace zipnn {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "zipnn-container-test-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, std::span<const uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// Original bytes of mixed kinds: BF16 weights, zeros, random bytes, text.
std::vector<uint8_t> MakeOriginal(size_t bf16_elems, size_t zeros, size_t random, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0, 0.02f);
  std::vector<uint8_t> data;
  for (size_t i = 0; i < bf16_elems; ++i) {
    uint32_t u = std::bit_cast<uint32_t>(normal(rng));
    data.push_back(static_cast<uint8_t>(u >> 16));
    data.push_back(static_cast<uint8_t>(u >> 24));
  }
  data.resize(data.size() + zeros, 0);
  for (size_t i = 0; i < random; ++i) data.push_back(static_cast<uint8_t>(rng()));
  for (int i = 0; i < 200; ++i) data.push_back(static_cast<uint8_t>("tensor data "[i % 12]));
  return data;
}

struct Chunk {
  size_t size;
  DType dtype;
};

// Writes `original` cut into `chunks` (sizes cycle; last chunk takes the rest) to `path`.
std::vector<uint8_t> WriteContainer(const std::string& path, std::span<const uint8_t> original,
                                    const std::vector<Chunk>& chunks) {
  FrameEncoder encoder;
  Result<ContainerWriter> writer = ContainerWriter::Create(path);
  EXPECT_TRUE(writer.ok()) << writer.status().ToString();
  std::vector<uint8_t> frame;
  size_t pos = 0;
  for (size_t k = 0; pos < original.size(); ++k) {
    const Chunk& c = chunks[k % chunks.size()];
    const size_t n = std::min(c.size, original.size() - pos);
    frame.clear();
    EXPECT_TRUE(
        encoder.Encode(original.subspan(pos, n), n % 2 ? DType::kBytes : c.dtype, frame).ok());
    EXPECT_TRUE(writer->Append(frame).ok());
    pos += n;
  }
  Status s = writer->Finish();
  EXPECT_TRUE(s.ok()) << s.ToString();
  return ReadAll(path);
}

// Decodes every frame of a parsed container, appending to `decoded`: the full check a reader
// does over time.
Status DecodeEverything(std::span<const uint8_t> file, std::vector<uint8_t>* decoded = nullptr) {
  Result<ContainerIndex> index = ParseContainer(file);
  if (!index.ok()) return index.status();
  FrameDecoder decoder;
  std::vector<uint8_t> out;
  for (const ContainerEntry& e : index->entries) {
    out.resize(e.raw_size);
    ZIPNN_RETURN_IF_ERROR(decoder.Decode(file.subspan(e.offset, e.frame_size), out));
    if (decoded) decoded->insert(decoded->end(), out.begin(), out.end());
  }
  return Status::Ok();
}

// Footer fields, for tests that forge containers.
uint64_t Get64(std::span<const uint8_t> b, size_t at) {
  uint64_t v;
  std::memcpy(&v, b.data() + at, 8);
  return v;
}
void Put64(std::vector<uint8_t>& b, size_t at, uint64_t v) { std::memcpy(b.data() + at, &v, 8); }
void Put32(std::vector<uint8_t>& b, size_t at, uint32_t v) { std::memcpy(b.data() + at, &v, 4); }

// Recomputes the table checksum and the footer check, as a forger would.
void Reseal(std::vector<uint8_t>& file) {
  const size_t footer = file.size() - kContainerFooterSize;
  const uint64_t count = Get64(file, footer);
  const uint64_t table = Get64(file, footer + 8);
  if (table <= footer && count * kContainerEntrySize <= footer - table) {
    Put64(file, footer + 24, Checksum(std::span(file).subspan(table, count * kContainerEntrySize)));
  }
  Put32(file, footer + 40, static_cast<uint32_t>(Checksum(std::span(file).subspan(footer, 40))));
}

class ContainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    original_ = MakeOriginal(300000, 70000, 50000, 7);
    // Odd sizes, a tiny chunk, and a chunk larger than the others.
    chunks_ = {{65536, DType::kBF16},
               {1000, DType::kBF16},
               {4097, DType::kBytes},
               {131072, DType::kBF16},
               {1, DType::kBytes}};
    path_ = dir_.File("a.znn");
    file_ = WriteContainer(path_, original_, chunks_);
  }

  TempDir dir_;
  std::vector<uint8_t> original_;
  std::vector<Chunk> chunks_;
  std::string path_;
  std::vector<uint8_t> file_;
};

TEST_F(ContainerTest, RoundTripEveryFrame) {
  Result<ContainerReader> reader = ContainerReader::Open(path_);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ(reader->total_raw_size(), original_.size());
  EXPECT_EQ(reader->file_size(), file_.size());
  ASSERT_GT(reader->entries().size(), 5u);
  uint64_t stored = 0;
  for (size_t i = 0; i < reader->entries().size(); ++i) {
    const ContainerEntry& e = reader->entries()[i];
    std::vector<uint8_t> out(e.raw_size);
    ASSERT_TRUE(reader->DecodeFrame(i, out).ok());
    ASSERT_EQ(0, std::memcmp(out.data(), original_.data() + e.raw_offset, e.raw_size)) << i;
    EXPECT_EQ(reader->FrameAt(e.raw_offset), i);
    stored += e.frame_size;
  }
  EXPECT_EQ(file_.size(), stored + ContainerOverhead(reader->entries().size()));

  Result<ContainerIndex> parsed = ParseContainer(file_);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->entries.size(), reader->entries().size());
  EXPECT_EQ(parsed->entries.back().checksum, reader->entries().back().checksum);
  EXPECT_TRUE(DecodeEverything(file_).ok());
}

TEST_F(ContainerTest, RandomRangesMatchOriginal) {
  Result<ContainerReader> reader = ContainerReader::Open(path_);
  ASSERT_TRUE(reader.ok());
  std::mt19937_64 rng(42);
  std::vector<uint8_t> out;
  for (int i = 0; i < 400; ++i) {
    const uint64_t offset = rng() % (original_.size() + 1);
    const uint64_t length = i % 4 == 0 ? rng() % 300000 : rng() % 3000;
    ASSERT_TRUE(reader->ReadRange(offset, length, out).ok());
    const uint64_t expect = std::min<uint64_t>(length, original_.size() - offset);
    ASSERT_EQ(out.size(), expect);
    ASSERT_EQ(0, std::memcmp(out.data(), original_.data() + offset, expect))
        << "offset " << offset << " length " << length;
  }
  ASSERT_TRUE(reader->ReadRange(0, UINT64_MAX, out).ok());  // clamped, whole file
  EXPECT_EQ(out, original_);
  ASSERT_TRUE(reader->ReadRange(original_.size() + 10, 5, out).ok());
  EXPECT_TRUE(out.empty());
  std::vector<uint8_t> two(2);
  EXPECT_FALSE(reader->ReadRangeInto(original_.size() - 1, two).ok());
  EXPECT_FALSE(reader->ReadRangeInto(UINT64_MAX, two).ok());
}

TEST_F(ContainerTest, EmptyContainer) {
  const std::string path = dir_.File("empty.znn");
  std::vector<uint8_t> file = WriteContainer(path, {}, chunks_);
  EXPECT_EQ(file.size(), ContainerOverhead(0));
  Result<ContainerReader> reader = ContainerReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ(reader->total_raw_size(), 0u);
  std::vector<uint8_t> out;
  EXPECT_TRUE(reader->ReadRange(0, 100, out).ok());
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(ParseContainer(file).ok());
}

TEST_F(ContainerTest, WriterRejectsMisuse) {
  Result<ContainerWriter> writer = ContainerWriter::Create(dir_.File("w.znn"));
  ASSERT_TRUE(writer.ok());
  std::vector<uint8_t> garbage(100, 0xAB);
  EXPECT_FALSE(writer->Append(garbage).ok());
  EXPECT_FALSE(writer->Finish().ok()) << "a failed writer stays failed";

  Result<ContainerWriter> w2 = ContainerWriter::Create(dir_.File("w2.znn"));
  ASSERT_TRUE(w2.ok());
  FrameEncoder encoder;
  std::vector<uint8_t> frame;
  ASSERT_TRUE(encoder.Encode(std::span(original_).first(1000), DType::kBytes, frame).ok());
  Result<FrameInfo> info = ParseFrameHeader(frame);
  ASSERT_TRUE(info.ok());
  FrameInfo wrong = *info;
  wrong.checksum ^= 1;
  EXPECT_FALSE(w2->Append(frame, wrong).ok());
  Result<ContainerWriter> w3 = ContainerWriter::Create(dir_.File("w3.znn"));
  ASSERT_TRUE(w3->Append(frame, *info).ok());
  EXPECT_FALSE(w3->Append(std::span(frame).first(frame.size() - 1)).ok()) << "short frame";
  Result<ContainerWriter> w4 = ContainerWriter::Create(dir_.File("w4.znn"));
  ASSERT_TRUE(w4->Append(frame).ok());
  ASSERT_TRUE(w4->Finish().ok());
  EXPECT_FALSE(w4->Append(frame).ok());
  EXPECT_FALSE(ContainerWriter::Create(dir_.File("no/such/dir.znn")).ok());
}

TEST_F(ContainerTest, EveryTruncationRejected) {
  for (size_t n = 0; n < file_.size(); n += (n < 4096 || file_.size() - n < 4096) ? 1 : 97) {
    ASSERT_FALSE(ParseContainer(std::span(file_).first(n)).ok()) << "length " << n;
  }
  // And through the file reader, for lengths around the header, table and footer.
  for (size_t n : {size_t{0}, size_t{3}, size_t{8}, size_t{55}, size_t{56}, file_.size() / 2,
                   file_.size() - 49, file_.size() - 1}) {
    const std::string path = dir_.File("t.znn");
    WriteAll(path, std::span(file_).first(n));
    EXPECT_FALSE(ContainerReader::Open(path).ok()) << "length " << n;
  }
  std::vector<uint8_t> appended = file_;
  appended.push_back(0);
  EXPECT_FALSE(ParseContainer(appended).ok()) << "a byte after the footer";
}

TEST_F(ContainerTest, EveryBitFlipDetected) {
  // A small container, so that every flip can be followed by a full decode.
  const std::vector<uint8_t> original = MakeOriginal(3000, 2000, 1500, 11);
  const std::vector<uint8_t> file = WriteContainer(dir_.File("small.znn"), original,
                                                   {{2048, DType::kBF16}, {777, DType::kBytes}});
  Result<ContainerIndex> index = ParseContainer(file);
  ASSERT_TRUE(index.ok());
  ASSERT_GT(index->entries.size(), 4u);
  const uint64_t table = index->entries.back().offset + index->entries.back().frame_size;
  std::vector<uint8_t> damaged = file;
  int flips = 0, unread_bits = 0;
  for (size_t pos = 0; pos < file.size(); ++pos) {
    // Every bit of the structure and frame headers; one bit per byte of frame payloads.
    bool structure = pos < kContainerHeaderSize || pos >= table;
    for (const ContainerEntry& e : index->entries) {
      if (pos >= e.offset && pos < e.offset + kFrameHeaderSize) structure = true;
    }
    for (int bit = 0; bit < 8; ++bit) {
      if (!structure && bit != static_cast<int>(pos % 8)) continue;
      damaged[pos] ^= static_cast<uint8_t>(1u << bit);
      std::vector<uint8_t> decoded;
      Status s = DecodeEverything(damaged, &decoded);
      if (structure) {
        ASSERT_FALSE(s.ok()) << "byte " << pos << " bit " << bit;
      } else if (s.ok()) {
        // A payload bit the decoder never reads (such as a bitstream's padding) changes
        // nothing; what it decodes has passed the checksum.
        ASSERT_TRUE(decoded == original) << "byte " << pos << " bit " << bit;
        ++unread_bits;
      }
      damaged[pos] = file[pos];
      ++flips;
    }
  }
  EXPECT_GT(flips, 1000);
  EXPECT_LT(unread_bits, flips / 100) << "a payload bit flip must almost always be an error";
}

TEST_F(ContainerTest, GarbageRejected) {
  std::mt19937_64 rng(3);
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> junk(rng() % 512);
    for (auto& b : junk) b = static_cast<uint8_t>(rng());
    if (i % 2 && junk.size() >= 8) std::memcpy(junk.data(), file_.data(), 8);  // a real header
    if (i % 4 == 3 && junk.size() >= 56) {  // and a real footer magic
      std::memcpy(junk.data() + junk.size() - 4, file_.data(), 4);
    }
    ASSERT_FALSE(ParseContainer(junk).ok()) << i;
  }
  const std::string path = dir_.File("junk.znn");
  WriteAll(path, std::vector<uint8_t>(4096, 'x'));
  Result<ContainerReader> r = ContainerReader::Open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "not a zipnn container");
  EXPECT_EQ(ContainerReader::Open(dir_.File("missing.znn")).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(ContainerReader::Open(dir_.File("")).ok()) << "a directory";
}

// Forged containers whose checksums are right but whose contents lie.
TEST_F(ContainerTest, ForgedTablesRejected) {
  const size_t footer = file_.size() - kContainerFooterSize;
  const uint64_t table = Get64(file_, footer + 8);
  auto expect_rejected = [&](std::vector<uint8_t> forged, const char* what) {
    Reseal(forged);
    EXPECT_FALSE(ParseContainer(forged).ok()) << what;
    const std::string path = dir_.File("forged.znn");
    WriteAll(path, forged);
    EXPECT_FALSE(ContainerReader::Open(path).ok()) << what;
  };
  {
    std::vector<uint8_t> f = file_;
    Put64(f, footer, uint64_t{1} << 60);  // a huge entry count must not be allocated
    expect_rejected(f, "huge count");
  }
  {
    std::vector<uint8_t> f = file_;
    Put64(f, footer, Get64(f, footer) - 1);
    expect_rejected(f, "count one short");
  }
  {
    std::vector<uint8_t> f = file_;
    Put64(f, footer + 16, Get64(f, footer + 16) + 1);
    expect_rejected(f, "total raw size");
  }
  {
    std::vector<uint8_t> f = file_;
    Put64(f, table + kContainerEntrySize, Get64(f, table + kContainerEntrySize) + 1);
    expect_rejected(f, "frame offset gap");
  }
  {
    std::vector<uint8_t> f = file_;
    f[table + 25] = 200;  // method
    expect_rejected(f, "bad method");
  }
  {
    std::vector<uint8_t> f = file_;
    f[table + 30] = 1;  // padding
    expect_rejected(f, "padding");
  }
  {
    std::vector<uint8_t> f = file_;
    Put32(f, table + 12, kMaxChunkSize + 1);  // raw size
    expect_rejected(f, "raw size");
  }
  {
    // The entry's checksum disagrees with its frame header: Open cannot see it, reads must.
    std::vector<uint8_t> f = file_;
    Put64(f, table + 16, Get64(f, table + 16) ^ 1);
    Reseal(f);
    EXPECT_FALSE(ParseContainer(f).ok());
    const std::string path = dir_.File("lying.znn");
    WriteAll(path, f);
    Result<ContainerReader> r = ContainerReader::Open(path);
    ASSERT_TRUE(r.ok());
    std::vector<uint8_t> frame, out;
    EXPECT_FALSE(r->ReadFrame(0, frame).ok());
    EXPECT_FALSE(r->ReadRange(0, 10, out).ok());
    EXPECT_TRUE(r->ReadFrame(1, frame).ok());
  }
}

// Sizes given on command lines: every 64-bit value, with binary suffixes; nothing past 2^64 - 1
// (values from 2^64 - 6 up were refused as "not a size").
TEST(ParseSizeTest, AcceptsEveryUint64AndRefusesOverflow) {
  EXPECT_EQ(ParseSize("0"), 0u);
  EXPECT_EQ(ParseSize("256K"), 256u << 10);
  EXPECT_EQ(ParseSize("1MiB"), 1u << 20);
  EXPECT_EQ(ParseSize("2g"), 2ull << 30);
  EXPECT_EQ(ParseSize("18446744073709551609"), UINT64_MAX - 6);
  EXPECT_EQ(ParseSize("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(ParseSize("18446744073709551616"), std::nullopt);
  EXPECT_EQ(ParseSize("99999999999999999999"), std::nullopt);
  EXPECT_EQ(ParseSize("17179869184G"), std::nullopt);  // 2^64
  EXPECT_EQ(ParseSize("17179869183G"), UINT64_MAX - (1ull << 30) + 1);
  for (const char* bad : {"", "K", "-1", "1.5M", "1X", "1KB2", " 1"})
    EXPECT_EQ(ParseSize(bad), std::nullopt) << bad;
}

}  // namespace
}  // namespace zipnn
