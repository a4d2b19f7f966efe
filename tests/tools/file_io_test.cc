// ExtentReader: extents of a file read on the spot or ahead on a thread of its own.
// AtomicOutputFile: synced as it grows, committed whole under its name.
#include "tools/file_io.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/tools/cli_util.h"

namespace zipnn::tool {
namespace {

class ExtentReaderTest : public test::TempDirTest {
 protected:
  // A file of `size` bytes, byte k = k * 131 + 7 (mod 256), open for reading.
  UniqueFd MakeFile(size_t size) {
    const std::string path = Path("in");
    std::string bytes(size, '\0');
    for (size_t k = 0; k < size; ++k) bytes[k] = static_cast<char>(k * 131 + 7);
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(size));
    return UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  }
  static bool Holds(const ByteBuffer& buf, ExtentReader::Extent e) {
    if (buf.size() != e.size) return false;
    for (size_t k = 0; k < e.size; ++k)
      if (buf[k] != static_cast<uint8_t>((e.offset + k) * 131 + 7)) return false;
    return true;
  }
  // Extents of odd sizes at odd offsets, out of file order and overlapping.
  static std::vector<ExtentReader::Extent> Extents(size_t n) {
    std::vector<ExtentReader::Extent> v;
    for (size_t i = 0; i < n; ++i) v.push_back({(i * 7919) % 50000, 1 + (i * 104729) % 9000});
    return v;
  }
};

// Read ahead through a few slots, every extent comes out whole and in order, into one buffer the
// reader swaps with its own (so buffers of every size pass through every slot).
TEST_F(ExtentReaderTest, ReadAheadHandsOutEveryExtentInOrder) {
  UniqueFd fd = MakeFile(60000);
  ASSERT_TRUE(fd.valid());
  const std::vector<ExtentReader::Extent> extents = Extents(500);
  for (size_t ahead : {1, 2, 3, 8}) {
    ExtentReader reader(fd.get(), extents, ahead);
    ByteBuffer buf;
    for (size_t i = 0; i < extents.size(); ++i) {
      ASSERT_TRUE(reader.Read(i, buf).ok()) << "extent " << i << ", ahead " << ahead;
      ASSERT_TRUE(Holds(buf, extents[i])) << "extent " << i << ", ahead " << ahead;
    }
  }
}

// On the spot, any number of threads read any extents at once.
TEST_F(ExtentReaderTest, ReadsOnTheSpotFromManyThreads) {
  UniqueFd fd = MakeFile(60000);
  ASSERT_TRUE(fd.valid());
  const std::vector<ExtentReader::Extent> extents = Extents(400);
  ExtentReader reader(fd.get(), extents, 0);
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (size_t t = 0; t < bad.size(); ++t) {
    threads.emplace_back([&, t] {
      ByteBuffer buf;
      for (size_t i = extents.size() - 1 - t; i < extents.size(); i -= bad.size())
        bad[t] += !reader.Read(i, buf).ok() || !Holds(buf, extents[i]);
    });
  }
  for (std::thread& th : threads) th.join();
  for (int b : bad) EXPECT_EQ(b, 0);
}

// A read that fails (an extent past the end of the file) fails for that extent only; extents read
// ahead must be taken in order; and a reader dropped with extents untaken does not hang.
TEST_F(ExtentReaderTest, ErrorsStayWithTheirExtent) {
  UniqueFd fd = MakeFile(1000);
  ASSERT_TRUE(fd.valid());
  const std::vector<ExtentReader::Extent> extents = {{0, 10}, {995, 10}, {20, 30}, {0, 1}, {5, 5}};
  for (size_t ahead : {0, 2}) {
    ExtentReader reader(fd.get(), extents, ahead);
    ByteBuffer buf;
    ASSERT_TRUE(reader.Read(0, buf).ok());
    EXPECT_TRUE(Holds(buf, extents[0]));
    EXPECT_EQ(reader.Read(1, buf).code(), StatusCode::kIo) << "ahead " << ahead;
    ASSERT_TRUE(reader.Read(2, buf).ok());
    EXPECT_TRUE(Holds(buf, extents[2]));
    EXPECT_EQ(reader.Read(9, buf).code(), StatusCode::kInvalidArgument);
    if (ahead) {
      EXPECT_EQ(reader.Read(4, buf).code(), StatusCode::kInvalidArgument);
    }
  }
}

// Writers on several threads report what they wrote (background syncs run meanwhile); the file
// appears under its name only at Commit, whole, and a second Commit is refused.
class AtomicOutputFileTest : public test::TempDirTest {};

TEST_F(AtomicOutputFileTest, SyncsAsItGrowsAndCommitsWhole) {
  const std::string path = Path("big.out");
  Result<AtomicOutputFile> out = AtomicOutputFile::Create(path, false, 0644);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  constexpr size_t kPiece = 1u << 20, kPieces = 40;
  std::vector<std::thread> workers;
  std::vector<Status> status(2);
  for (size_t w = 0; w < status.size(); ++w) {
    workers.emplace_back([&, w] {
      ByteBuffer buf;
      for (size_t i = w; i < kPieces && status[w].ok(); i += status.size()) {
        buf.assign(kPiece, static_cast<uint8_t>(i + 1));
        status[w] = PwriteFull(out->fd(), i * kPiece, buf);
        out->Wrote(kPiece);
      }
    });
  }
  for (std::thread& t : workers) t.join();
  for (const Status& s : status) ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(PathExists(path)) << "visible before Commit";
  ASSERT_TRUE(out->Commit().ok());
  const std::string got = test::ReadAll(path);
  ASSERT_EQ(got.size(), kPiece * kPieces);
  for (size_t i = 0; i < kPieces; ++i) {
    ASSERT_EQ(static_cast<uint8_t>(got[i * kPiece]), i + 1) << "piece " << i;
    ASSERT_EQ(static_cast<uint8_t>(got[(i + 1) * kPiece - 1]), i + 1) << "piece " << i;
  }
  EXPECT_FALSE(out->Commit().ok());
}

// A descriptor named as /dev/fd/N is written through, in order from its offset (the shell's
// `>>` or a prefix written before), not replaced by a temporary file renamed over the name.
TEST_F(AtomicOutputFileTest, NamedDescriptorIsWrittenInOrderFromItsOffset) {
  const std::string path = Path("redirected");
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd.valid());
  ASSERT_TRUE(WriteFull(fd.get(), std::vector<uint8_t>{'h', 'i'}).ok());
  for (const std::string& name :
       {"/dev/fd/" + std::to_string(fd.get()), "/proc/self/fd/" + std::to_string(fd.get())}) {
    Result<AtomicOutputFile> out = AtomicOutputFile::Create(name, false, 0644);
    ASSERT_TRUE(out.ok()) << name << ": " << out.status().ToString();
    EXPECT_FALSE(out->seekable()) << "positional writes would ignore the offset";
    ASSERT_TRUE(WriteFull(out->fd(), std::vector<uint8_t>{'!'}).ok());
    ASSERT_TRUE(out->Commit().ok());
  }
  EXPECT_EQ(test::ReadAll(path), "hi!!");
}

// A name of NAME_MAX bytes is a valid output: its temporary file's name is cut to fit.
TEST_F(AtomicOutputFileTest, NameOfNameMaxBytes) {
  const std::string path = Path(std::string(NAME_MAX, 'n'));
  Result<AtomicOutputFile> out = AtomicOutputFile::Create(path, false, 0644);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_TRUE(WriteFull(out->fd(), std::vector<uint8_t>{'x'}).ok());
  ASSERT_TRUE(out->Commit().ok());
  EXPECT_EQ(test::ReadAll(path), "x");
}

}  // namespace
}  // namespace zipnn::tool
