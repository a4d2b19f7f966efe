// Bulk adds of odd sources and re-imports: a path that is a fifo by the time it is opened, and
// trees imported again after a chmod, chown or a symlink pointing elsewhere (cp -a semantics).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "index/index.h"
#include "index/tree.h"
#include "tests/index/store_test_util.h"

namespace zipnn::index {
namespace {

namespace fs = std::filesystem;

class BulkEdgeTest : public test::StoreDirTest {};

std::string Str(const Result<std::string>& r) { return r.ok() ? *r : r.status().ToString(); }

// A file queued by path that is a fifo when its turn comes (replaced after it was listed) is
// refused; opening it must not wait for a writer that never comes.
TEST_F(BulkEdgeTest, FifoQueuedAsFileIsRefusedNotWaitedOn) {
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  auto store = OpenStore(true);
  ASSERT_TRUE(store);
  Result<std::unique_ptr<BulkAdd>> bulk = store->BeginBulkAdd();
  ASSERT_TRUE(bulk.ok());
  ASSERT_TRUE((*bulk)->AddFile(BulkDir{}, "f", {nullptr, fifo, fifo}, NewAttr{}).ok());
  Result<BulkSummary> done = (*bulk)->Finish();
  ASSERT_FALSE(done.ok());
  EXPECT_NE(done.status().message().find("not a regular file"), std::string::npos)
      << done.status().ToString();
  EXPECT_EQ(store->LookupPath("/f").status().code(), StatusCode::kNotFound);
  ExpectClean(*store);
}

// Importing a tree again after its directory was chmod-ed, chown-ed and given other xattrs, and a
// symlink was pointed elsewhere: the store follows, as cp -a does, keeping inode numbers.
TEST_F(BulkEdgeTest, ReimportUpdatesDirectoriesAndSymlinks) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src + "/sub");
  fs::create_symlink("a", src + "/link");
  const bool have_xattr = ::setxattr((src + "/sub").c_str(), "user.kept", "k", 1, 0) == 0 &&
                          ::setxattr((src + "/sub").c_str(), "user.zipnn", "old", 3, 0) == 0;
  auto store = OpenStore(true);
  ASSERT_TRUE(store);
  TreeSummary summary;
  ASSERT_TRUE(ImportTree(*store, src, kRootInode, "src", {}, summary).ok());
  if (have_xattr) {
    ASSERT_EQ(::removexattr((src + "/sub").c_str(), "user.kept"), 0);
  }
  Result<InodeAttr> sub0 = store->LookupPath("/src/sub");
  Result<InodeAttr> link0 = store->LookupPath("/src/link");
  ASSERT_TRUE(sub0.ok() && link0.ok());

  ASSERT_EQ(::chmod((src + "/sub").c_str(), 0710), 0);
  const bool root = ::geteuid() == 0;
  if (root) {
    ASSERT_EQ(::lchown((src + "/sub").c_str(), 123, 456), 0);
  }
  if (have_xattr) {
    ASSERT_EQ(::setxattr((src + "/sub").c_str(), "user.zipnn", "v", 1, 0), 0);
  }
  fs::remove(src + "/link");
  fs::create_symlink("sub", src + "/link");
  Status st = ImportTree(*store, src, kRootInode, "src", {}, summary);
  ASSERT_TRUE(st.ok()) << st.ToString();

  Result<InodeAttr> sub = store->LookupPath("/src/sub");
  ASSERT_TRUE(sub.ok());
  EXPECT_EQ(sub->ino, sub0->ino);
  EXPECT_EQ(sub->mode, S_IFDIR | 0710u);
  if (root) {
    EXPECT_EQ(std::make_pair(sub->uid, sub->gid), std::make_pair(123u, 456u));
  }
  if (have_xattr) {  // set anew; one the source no longer has stays, as cp -a leaves it
    EXPECT_EQ(Str(store->GetXattr(sub->ino, "user.zipnn")), "v");
    EXPECT_EQ(Str(store->GetXattr(sub->ino, "user.kept")), "k");
  }
  Result<InodeAttr> link = store->LookupPath("/src/link");
  ASSERT_TRUE(link.ok());
  EXPECT_EQ(link->ino, link0->ino);
  EXPECT_EQ(link->size, 3u);
  EXPECT_EQ(Str(store->ReadLink(link->ino)), "sub");
  ExpectClean(*store);
}

}  // namespace
}  // namespace zipnn::index
