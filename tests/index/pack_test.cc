// Tests of pack files (index/pack.h): appends reach the file whole and in order, with background
// syncs meanwhile; rollbacks and reopening drop what was not committed.
#include "index/pack.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/index/store_test_util.h"

// Fault injection for this test executable: while g_fail_background_syncs is set, fdatasync fails
// with EIO on every thread but g_test_thread (a pack's background syncer runs on its own).
// Otherwise it is the C library's.
namespace {
std::atomic<bool> g_fail_background_syncs{false};
std::atomic<pid_t> g_test_thread{0};
std::atomic<int> g_failed_background_syncs{0};
}  // namespace

// Told of every fdatasync of this executable, when set (durability_test.cc watches the order of
// syncs through it: a program has one fdatasync).
std::atomic<void (*)(int)> g_fdatasync_observer{nullptr};

extern "C" int fdatasync(int fd) {
  using Fn = int (*)(int);
  static const Fn real = reinterpret_cast<Fn>(::dlsym(RTLD_NEXT, "fdatasync"));
  if (void (*observe)(int) = g_fdatasync_observer.load()) observe(fd);
  if (g_fail_background_syncs.load() && ::gettid() != g_test_thread.load()) {
    ++g_failed_background_syncs;
    errno = EIO;
    return -1;
  }
  return real(fd);
}

namespace zipnn::index {
namespace {

// A temporary directory (dir_) that holds the packs.
class PackTest : public test::StoreDirTest {
 protected:
  std::vector<uint8_t> FileBytes(uint32_t id) const { return test::ReadAll(PackPath(dir_, id)); }
};

TEST_F(PackTest, AppendsOfEverySizeLandInOrderAcrossBackgroundSyncs) {
  Result<PackWriter> w = PackWriter::Open(dir_, 1, 0);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  // Small frames (buffered) and large ones (written directly), 40 MB in all: several background
  // syncs run while appending.
  std::mt19937 rng(7);
  std::vector<uint8_t> expected;
  while (expected.size() < (40u << 20)) {
    const size_t n = rng() % 3 == 0 ? (300u << 10) + rng() % (2u << 20) : 1 + rng() % 70000;
    std::vector<uint8_t> frame(n, static_cast<uint8_t>(rng()));
    frame.front() = static_cast<uint8_t>(expected.size());
    ASSERT_EQ(w->end(), expected.size());
    ASSERT_TRUE(w->Append(frame).ok());
    expected.insert(expected.end(), frame.begin(), frame.end());
  }
  ASSERT_TRUE(w->Sync().ok());
  w->MarkCommitted();
  EXPECT_EQ(w->committed(), expected.size());
  EXPECT_EQ(FileBytes(1), expected);
  // Uncommitted appends are dropped by a rollback, and by the next writer to open the pack.
  ASSERT_TRUE(w->Append(std::vector<uint8_t>(9u << 20, 1)).ok());
  ASSERT_TRUE(w->Rollback().ok());
  EXPECT_EQ(FileBytes(1), expected);
  ASSERT_TRUE(w->Append(std::vector<uint8_t>(1000, 2)).ok());
  ASSERT_TRUE(w->Sync().ok());
  Result<PackWriter> again = PackWriter::Open(dir_, 1, expected.size());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(FileBytes(1), expected);
}

// Syncs, truncations, rollbacks and reopenings at unaligned ends, in random order: with O_DIRECT,
// the partial last block is kept (or read back) and written again whole, so every byte before
// end() must survive each of them.
TEST_F(PackTest, PartialBlocksSurviveSyncTruncateRollbackAndReopen) {
  Result<PackWriter> w = PackWriter::Open(dir_, 1, 0);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  if (!w->direct())
    std::printf("note: %s refuses O_DIRECT; testing buffered writes\n", dir_.c_str());
  std::mt19937 rng(11);
  std::vector<uint8_t> model;  // what the pack holds up to end()
  for (int op = 0; op < 300; ++op) {
    const uint32_t r = rng() % 16;
    if (r < 8) {  // appends of every size, most not a multiple of 4 KiB
      const size_t n = r == 0 && rng() % 2 ? (1u << 20) + rng() % (4u << 20) : 1 + rng() % 9000;
      std::vector<uint8_t> frame(n);
      const uint32_t seed = rng();
      for (size_t i = 0; i < n; ++i) frame[i] = static_cast<uint8_t>(seed + i * (seed | 1) / 7);
      ASSERT_TRUE(w->Append(frame).ok());
      model.insert(model.end(), frame.begin(), frame.end());
    } else if (r < 11) {
      ASSERT_TRUE(w->Sync().ok());
      w->MarkCommitted();
      ASSERT_EQ(FileBytes(1), model) << "after a sync, op " << op;
    } else if (r < 13) {  // a failed file's frames: cut anywhere after the commit
      const uint64_t to = w->committed() + rng() % (w->end() - w->committed() + 1);
      ASSERT_TRUE(w->Truncate(to).ok());
      model.resize(to);
    } else if (r < 14) {
      ASSERT_TRUE(w->Rollback().ok());
      model.resize(w->committed());
    } else if (r < 15) {  // another writer takes over at the commit (uncommitted bytes cut)
      const uint64_t committed = w->committed();
      ASSERT_TRUE(w->Sync().ok());
      w = PackWriter::Open(dir_, 1, committed);
      ASSERT_TRUE(w.ok()) << w.status().ToString();
      model.resize(committed);
      ASSERT_EQ(FileBytes(1), model) << "after reopening, op " << op;
    } else {
      ASSERT_EQ(w->end(), model.size());
    }
  }
  ASSERT_TRUE(w->Sync().ok());
  EXPECT_EQ(FileBytes(1), model);
}

// A write that failed part way (the disk full) can leave bytes past what the writer counts as
// written; dropping the failed frames must cut them too, or the next sync leaves them in the pack.
TEST_F(PackTest, TruncateCutsBytesAFailedWriteLeftBehind) {
  Result<PackWriter> w = PackWriter::Open(dir_, 1, 0);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const std::vector<uint8_t> kept(10000, 7);
  ASSERT_TRUE(w->Append(kept).ok());
  ASSERT_TRUE(w->Sync().ok());
  w->MarkCommitted();
  {  // what a short write leaves: bytes past the end
    std::FILE* f = std::fopen(PackPath(dir_, 1).c_str(), "ab");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite("stray bytes", 1, 11, f), 11u);
    std::fclose(f);
  }
  ASSERT_TRUE(w->Truncate(w->end()).ok());
  ASSERT_TRUE(w->Sync().ok());
  EXPECT_EQ(FileBytes(1), kept);
}

// A failed file's frames are cut back to the commit: a background sync that failed on them must
// not fail the next group, while one that failed on frames still there must fail the next Sync.
TEST_F(PackTest, ABackgroundSyncFailureCountsOnlyWhileItsBytesRemain) {
  Result<PackWriter> w = PackWriter::Open(dir_, 1, 0);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const std::vector<uint8_t> kept(10000, 7);
  ASSERT_TRUE(w->Append(kept).ok());
  ASSERT_TRUE(w->Sync().ok());
  w->MarkCommitted();
  g_test_thread = ::gettid();
  // Appends enough for a background sync (one per 8 MB), fails it, and waits until it has.
  auto append_with_failed_sync = [&] {
    const int before = g_failed_background_syncs.load();
    g_fail_background_syncs = true;
    Status st = w->Append(std::vector<uint8_t>(9u << 20, 1));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (g_failed_background_syncs.load() == before &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::yield();
    g_fail_background_syncs = false;
    return st.ok() && g_failed_background_syncs.load() > before;
  };
  ASSERT_TRUE(append_with_failed_sync());
  ASSERT_TRUE(w->Truncate(w->committed()).ok());  // the failed file is dropped
  ASSERT_TRUE(w->Append(kept).ok());
  EXPECT_TRUE(w->Sync().ok());  // the next group
  w->MarkCommitted();
  ASSERT_TRUE(append_with_failed_sync());
  ASSERT_TRUE(w->Truncate(w->end() - 1000).ok());  // most of the bytes it covered remain
  EXPECT_EQ(w->Sync().code(), StatusCode::kIo);
}

}  // namespace
}  // namespace zipnn::index
