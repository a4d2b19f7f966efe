// OffsetWriter: many workers writing one file at their own offsets. AtomicOutputFile: synced as it
// grows, committed whole under its name.
#include "tools/file_io.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "tests/tools/cli_util.h"

namespace zipnn::tool {
namespace {

class OffsetWriterTest : public test::TempDirTest {};

// Every buffer lands at its offset exactly once, whoever writes it, with a queue so short that
// workers also wait for room; buffers handed back are reused as they would be.
TEST_F(OffsetWriterTest, EveryBufferLandsAtItsOffset) {
  constexpr size_t kPieces = 2000, kPiece = 4096 + 3;  // odd size: offsets not page-aligned
  const std::string path = Path("out");
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd.valid());
  OffsetWriter writer(fd.get(), 2);
  std::vector<std::thread> workers;
  std::vector<Status> status(4);
  for (size_t w = 0; w < status.size(); ++w) {
    workers.emplace_back([&, w] {
      std::vector<uint8_t> buf;
      for (size_t i = w; i < kPieces && status[w].ok(); i += status.size()) {
        buf.assign(kPiece, static_cast<uint8_t>(i * 7 + 1));
        status[w] = writer.Write(i * kPiece, buf);
      }
    });
  }
  for (std::thread& t : workers) t.join();
  for (const Status& s : status) ASSERT_TRUE(s.ok()) << s.ToString();
  const std::string got = test::ReadAll(path);
  ASSERT_EQ(got.size(), kPieces * kPiece);
  for (size_t i = 0; i < kPieces; ++i) {
    const std::string want(kPiece, static_cast<char>(i * 7 + 1));
    ASSERT_EQ(got.compare(i * kPiece, kPiece, want), 0) << "piece " << i;
  }
}

// A failed write is reported and sticks: later writes, which would succeed, are refused, and no
// worker hangs.
TEST_F(OffsetWriterTest, AFailedWriteSticks) {
  const std::string path = Path("out");
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd.valid());
  OffsetWriter writer(fd.get(), 1);
  std::vector<uint8_t> buf(100, 1);
  const Status first = writer.Write(uint64_t{1} << 63, buf);  // a negative off_t: EINVAL
  EXPECT_FALSE(first.ok());
  EXPECT_NE(first.message().find("Invalid argument"), std::string::npos) << first.ToString();
  std::vector<std::thread> workers;
  std::vector<Status> later(4);
  for (size_t w = 0; w < later.size(); ++w) {
    workers.emplace_back([&, w] {
      std::vector<uint8_t> b(10, 2);
      later[w] = writer.Write(10 * w, b);
    });
  }
  for (std::thread& t : workers) t.join();
  for (const Status& s : later) EXPECT_EQ(s.code(), first.code()) << s.ToString();
  EXPECT_EQ(test::ReadAll(path), "") << "written after the failure";
}

// Writers on several threads report what they wrote (background syncs run meanwhile); the file
// appears under its name only at Commit, whole, and a second Commit is refused.
TEST_F(OffsetWriterTest, AtomicOutputFileSyncsAsItGrowsAndCommitsWhole) {
  const std::string path = Path("big.out");
  Result<AtomicOutputFile> out = AtomicOutputFile::Create(path, false, 0644);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  constexpr size_t kPiece = 1u << 20, kPieces = 40;
  OffsetWriter writer(out->fd(), 4);
  std::vector<std::thread> workers;
  std::vector<Status> status(2);
  for (size_t w = 0; w < status.size(); ++w) {
    workers.emplace_back([&, w] {
      std::vector<uint8_t> buf;
      for (size_t i = w; i < kPieces && status[w].ok(); i += status.size()) {
        buf.assign(kPiece, static_cast<uint8_t>(i + 1));
        status[w] = writer.Write(i * kPiece, buf);
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

}  // namespace
}  // namespace zipnn::tool
