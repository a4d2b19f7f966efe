// BackgroundSyncer (codec/container.h): syncs run on its thread every 8 MB reported, and a failed
// one is reported once, by the next Drain.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "codec/container.h"

namespace zipnn {
namespace {

TEST(BackgroundSyncerTest, BackgroundSyncFailureIsReportedOnce) {
  // fdatasync fails on a pipe (EINVAL): the failure must not vanish in the background thread.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  {
    std::unique_ptr<BackgroundSyncer> s = BackgroundSyncer::Start(p[1], "the pipe");
    ASSERT_NE(s, nullptr);
    EXPECT_TRUE(s->Drain().ok()) << "nothing asked, nothing failed";
    s->Request();
    const Status st = s->Drain();
    ASSERT_FALSE(st.ok()) << "a failed background fdatasync is reported";
    EXPECT_NE(st.message().find("the pipe: background fdatasync"), std::string::npos)
        << st.ToString();
    EXPECT_TRUE(s->Drain().ok()) << "and reported once";
  }
  ::close(p[0]);
  ::close(p[1]);
}

TEST(BackgroundSyncerTest, SyncsOnceEightMegabytesAreReported) {
  // On a pipe every sync fails, which makes each one that ran visible to Drain.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  {
    std::unique_ptr<BackgroundSyncer> s = BackgroundSyncer::Start(p[1], "the pipe");
    ASSERT_NE(s, nullptr);
    constexpr uint64_t kStep = 8u << 20;
    s->Wrote(kStep / 2);
    s->Wrote(kStep / 2 - 1);
    EXPECT_TRUE(s->Drain().ok()) << "no sync below 8 MB";
    s->Wrote(1);
    EXPECT_TRUE(s->Drain().ok()) << "a Drain (the caller syncs) starts the count again";
    s->Wrote(kStep / 2);
    s->Wrote(kStep / 2);
    EXPECT_FALSE(s->Drain().ok()) << "a sync at 8 MB, counted from the last Drain";
  }
  ::close(p[0]);
  ::close(p[1]);
}

TEST(BackgroundSyncerTest, BackgroundSyncOfAFileSucceeds) {
  UniqueFd fd(
      ::open(std::filesystem::temp_directory_path().c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(::write(fd.get(), "data", 4), 4);
  std::unique_ptr<BackgroundSyncer> s = BackgroundSyncer::Start(fd.get(), "tmp");
  ASSERT_NE(s, nullptr);
  for (int i = 0; i < 20; ++i) s->Request();
  EXPECT_TRUE(s->Drain().ok());
  fd.Reset();  // the syncer keeps its own descriptor: closing ours is safe while it lives
  s->Request();
  EXPECT_TRUE(s->Drain().ok());
}

}  // namespace
}  // namespace zipnn
