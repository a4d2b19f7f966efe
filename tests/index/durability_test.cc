// Durability across a power cut: what a commit references must be on disk before the commit,
// names included. A power cut cannot be staged here, so the syncs themselves are watched: this
// program's fsync and fdatasync (liblmdb's too, through symbol interposition) record the path
// they sync, and the tests check the order against the LMDB commit (an fdatasync of data.mdb).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "index/index.h"
#include "tests/index/store_test_util.h"

namespace {

std::atomic<bool> recording{false};
std::mutex events_mutex;
std::vector<std::string> events;  // the canonical path of each synced file or directory

void Record(int fd) {
  if (!recording.load()) return;
  char link[64], target[PATH_MAX];
  std::snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  const ssize_t n = ::readlink(link, target, sizeof(target) - 1);
  std::lock_guard lock(events_mutex);
  events.emplace_back(n > 0 ? std::string(target, static_cast<size_t>(n)) : "?");
}

}  // namespace

// fsync's interposer: record, then make the real system call. fdatasync's is pack_test.cc's,
// which tells its observer.
extern "C" int fsync(int fd) {
  Record(fd);
  return static_cast<int>(::syscall(SYS_fsync, fd));
}

extern std::atomic<void (*)(int)> g_fdatasync_observer;  // pack_test.cc

namespace zipnn::index {
namespace {

namespace fs = std::filesystem;
using test::Bytes;
using test::WriteAll;

class DurabilityTest : public test::StoreDirTest {
 protected:
  void TearDown() override {
    recording = false;
    test::StoreDirTest::TearDown();
  }

  static void StartRecording() {
    std::lock_guard lock(events_mutex);
    events.clear();
    g_fdatasync_observer = Record;
    recording = true;
  }

  static std::vector<std::string> StopRecording() {
    recording = false;
    std::lock_guard lock(events_mutex);
    return events;
  }

  std::string Canonical(const std::string& path) const { return fs::canonical(path).string(); }

  // Position of the first event syncing `path`, or -1.
  static long First(const std::vector<std::string>& ev, const std::string& path) {
    for (size_t i = 0; i < ev.size(); ++i)
      if (ev[i] == path) return static_cast<long>(i);
    return -1;
  }

  // Position of the last event syncing `path`, or -1.
  static long Last(const std::vector<std::string>& ev, const std::string& path) {
    for (size_t i = ev.size(); i-- > 0;)
      if (ev[i] == path) return static_cast<long>(i);
    return -1;
  }

  void AddFile(Store& store, const std::string& name, const Bytes& bytes) {
    WriteAll(dir_ + "/in", bytes);
    const int fd = ::open((dir_ + "/in").c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    Result<AddResult> r = store.AddFile(kRootInode, name, fd, {});
    ::close(fd);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
};

// A store's FORMAT line and the names of its directories and index are durable once Init
// returns: a power cut after the first commit must not leave a store that no longer opens.
TEST_F(DurabilityTest, InitSyncsFormatAndDirectories) {
  const std::string fresh = dir_ + "/fresh";
  StartRecording();
  ASSERT_TRUE(Store::Init(fresh).ok());
  const std::vector<std::string> ev = StopRecording();
  EXPECT_GE(First(ev, Canonical(fresh + "/FORMAT")), 0) << "FORMAT not fsynced";
  EXPECT_GE(First(ev, Canonical(fresh + "/index")), 0) << "index/ (data.mdb's name) not fsynced";
  EXPECT_GE(First(ev, Canonical(fresh)), 0) << "the store directory not fsynced";
  EXPECT_GE(First(ev, Canonical(dir_)), 0) << "the store's parent directory not fsynced";
}

// The first pack is created by the first writer; its name must be durable before the commit
// that references it.
TEST_F(DurabilityTest, NewPackNameSyncedBeforeItsFirstCommit) {
  StartRecording();
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    AddFile(*store, "f", test::RandomBytes(200000, 1, 11));
  }
  const std::vector<std::string> ev = StopRecording();
  const long dir_sync = First(ev, Canonical(store_dir_ + "/packs"));
  const long commit = Last(ev, Canonical(store_dir_ + "/index/data.mdb"));
  ASSERT_GE(commit, 0) << "no LMDB commit seen";
  EXPECT_GE(dir_sync, 0) << "packs/ never fsynced after pack-000001.znp was created";
  EXPECT_LT(dir_sync, commit) << "packs/ fsynced only after the commit that references its pack";
}

// gc writes its live frames to a new pack and commits the switch to it: the new pack's name must
// be durable before that commit, or a power cut leaves an index whose files are all in a pack
// that is gone.
TEST_F(DurabilityTest, GcPackNameSyncedBeforeItsCommit) {
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    for (int i = 0; i < 4; ++i)
      AddFile(*store, test::Cat({"f", std::to_string(i)}), test::RandomBytes(150000, 10 + i, 11));
    for (int i = 0; i < 4; ++i)
      AddFile(*store, test::Cat({"f", std::to_string(i)}), test::RandomBytes(150000, 20 + i, 11));
  }
  auto store = OpenStore(true);
  ASSERT_TRUE(store);
  StartRecording();
  Result<GcReport> gc = store->Gc(0.9);
  const std::vector<std::string> ev = StopRecording();
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  ASSERT_GT(gc->frames_moved, 0u);
  const long dir_sync = First(ev, Canonical(store_dir_ + "/packs"));
  const long commit = First(ev, Canonical(store_dir_ + "/index/data.mdb"));
  ASSERT_GE(commit, 0) << "no LMDB commit seen";
  ASSERT_GE(dir_sync, 0);
  EXPECT_LT(dir_sync, commit) << "packs/ fsynced only after gc committed its new pack";
}

}  // namespace
}  // namespace zipnn::index
