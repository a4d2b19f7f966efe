// Hostile index values: stores damaged through LMDB directly (tests/index/index_damage.h), as a
// review did (commit e28f642). Directory entries with invalid names, directory cycles, a chunk
// record pointing at another chunk's sound frame and a lowered next-inode counter must give
// errors, fsck findings and repairs, never endless listings, wrong bytes or overwritten files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "index/index.h"
#include "tests/index/index_damage.h"
#include "tests/index/store_test_util.h"

namespace zipnn::index {
namespace {

using test::Bytes;

class HostileIndexTest : public test::StoreDirTest {
 protected:
  // Adds `data` as file `name` of directory `parent`; its inode, or 0.
  static uint64_t Add(Store& store, uint64_t parent, const std::string& name, const Bytes& data) {
    const int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
    EXPECT_GE(fd, 0);
    if (fd < 0) return 0;
    EXPECT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    Result<AddResult> r = store.AddFile(parent, name, fd, NewAttr{});
    ::close(fd);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->attr.ino : 0;
  }

  // File `ino` reads back as exactly `want`.
  static ::testing::AssertionResult ReadsAs(Store& store, uint64_t ino, const Bytes& want) {
    Bytes got(want.size() + 1);
    Result<size_t> n = store.Read(ino, 0, got);
    if (!n.ok()) return ::testing::AssertionFailure() << n.status().ToString();
    got.resize(*n);
    if (got != want) return ::testing::AssertionFailure() << "other bytes (" << *n << ")";
    return ::testing::AssertionSuccess();
  }

  static std::vector<std::string> Names(Store& store, uint64_t dir) {
    std::vector<std::string> names;
    Status st = ForEachDirEntry(store, dir, [&](const DirEntry& e) {
      names.push_back(e.name);  // (a listing that never ends is cut short)
      return names.size() < 1000 ? Status::Ok() : Status::Io("endless listing");
    });
    EXPECT_TRUE(st.ok()) << st.ToString();
    return names;
  }

  static std::string Problems(const CheckReport& r) {
    std::string s;
    for (const CheckProblem& p : r.problems) {
      s += "\n  inode " + std::to_string(p.ino) + ": " + p.what;
    }
    return s.empty() ? " (none)" : s;
  }
  static bool HasProblem(const CheckReport& r, const std::string& text) {
    for (const CheckProblem& p : r.problems) {
      if (p.what.find(text) != std::string::npos) return true;
    }
    return false;
  }
  // fsck's finding for an entry with a bad name (an empty one leaves a key too short to hold
  // an entry: a malformed record).
  static bool FlagsBadEntry(const CheckReport& r) {
    return HasProblem(r, "invalid name") || HasProblem(r, "dirents: malformed record");
  }
};

// An entry whose name is empty (its key the directory's 8-byte prefix alone), in an otherwise
// empty directory: the next page of a listing starts after the last name, "", which is the
// beginning again, so paging through it went on forever (`zipnnfs fsck`, `stats` and `ls` hung).
TEST_F(HostileIndexTest, EmptyNameInEmptyDirectoryIsCorruptNotAnEndlessListing) {
  const Bytes a = test::RandomBytes(1000, 1);
  uint64_t dir = 0, a_ino = 0;
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    Result<InodeAttr> d = store->Mkdir(kRootInode, "empty", {});
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    dir = d->ino;
    a_ino = Add(*store, kRootInode, "a", a);
    ASSERT_NE(a_ino, 0u);
  }
  {
    test::IndexEditor ed(store_dir_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    ASSERT_TRUE(test::PutDirent(ed, dir, "", a_ino, InodeKind::kFile));
  }
  auto store = OpenStore(false);
  ASSERT_TRUE(store);
  std::vector<DirEntry> page;
  Status st = store->ReadDir(dir, "", 1024, page);
  EXPECT_EQ(st.code(), StatusCode::kCorrupt) << st.ToString() << "; " << page.size() << " entries";
  int calls = 0;
  st = ForEachDirEntry(*store, dir, [&](const DirEntry&) {
    return ++calls < 100 ? Status::Ok() : Status::Io("still listing after 100 entries");
  });
  EXPECT_EQ(st.code(), StatusCode::kCorrupt) << st.ToString();
  EXPECT_EQ(calls, 0);
  // The rest of the tree lists and reads as before.
  EXPECT_EQ(Names(*store, kRootInode), (std::vector<std::string>{"a", "empty"}));
  EXPECT_TRUE(ReadsAs(*store, a_ino, a));
  Result<CheckReport> check = store->Check(false);
  ASSERT_TRUE(check.ok()) << check.status().ToString();
  EXPECT_TRUE(FlagsBadEntry(*check)) << Problems(*check);
  // Repair deletes the entry: the directory is empty again.
  store.reset();
  store = OpenStore(true);
  ASSERT_TRUE(store);
  Result<RepairReport> r = store->Repair(true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << Problems(r->after);
  EXPECT_TRUE(Names(*store, dir).empty());
  EXPECT_TRUE(ReadsAs(*store, a_ino, a));
}

// A symlink target whose length differs from its inode's size, or that holds a NUL: fsck said
// clean, and export wrote a different target (symlink(2) stops at the NUL; cat of the length
// read past it). fsck must report it and repair remove the link.
TEST_F(HostileIndexTest, SymlinkTargetNotMatchingItsInodeIsReportedAndRepaired) {
  const std::string bad[] = {"target-and-more", std::string("tar\0et", 6)};
  uint64_t ino[2] = {};
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    for (int i = 0; i < 2; ++i) {
      Result<InodeAttr> l = store->Symlink(kRootInode, i ? "l1" : "l0", "target", {});
      ASSERT_TRUE(l.ok()) << l.status().ToString();
      ino[i] = l->ino;
    }
  }
  {
    test::IndexEditor ed(store_dir_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    for (int i = 0; i < 2; ++i)
      ASSERT_TRUE(ed.Put("symlinks", test::AsString(rec::InodeKey(ino[i]).bytes()), bad[i]));
  }
  auto store = OpenStore(true);
  ASSERT_TRUE(store);
  Result<CheckReport> check = store->Check(false);
  ASSERT_TRUE(check.ok()) << check.status().ToString();
  EXPECT_TRUE(HasProblem(*check, "symlink target of 15 bytes")) << Problems(*check);
  EXPECT_TRUE(HasProblem(*check, "holding a NUL")) << Problems(*check);
  Result<RepairReport> r = store->Repair(true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << Problems(r->after);
  EXPECT_TRUE(Names(*store, kRootInode).empty());
}

// A directory entry with a name no directory may hold ("..", "a/b", ...), naming a file of the
// root: ReadDir refuses the directory (a caller joining the name to a path would leave its tree),
// fsck reports the entry and repair deletes it, leaving the file under its real name.
struct BadName {
  const char* label;
  std::string name;
};
void PrintTo(const BadName& b, std::ostream* os) { *os << b.label; }
class HostileNameTest : public HostileIndexTest, public ::testing::WithParamInterface<BadName> {};

TEST_P(HostileNameTest, InvalidNameIsRefusedReportedAndRepaired) {
  const Bytes a = test::RandomBytes(5000, 2);
  uint64_t a_ino = 0;
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    a_ino = Add(*store, kRootInode, "a", a);
    ASSERT_NE(a_ino, 0u);
  }
  {
    test::IndexEditor ed(store_dir_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    ASSERT_TRUE(test::PutDirent(ed, kRootInode, GetParam().name, a_ino, InodeKind::kFile));
  }
  {
    auto store = OpenStore(false);
    ASSERT_TRUE(store);
    std::vector<DirEntry> page;
    Status st = store->ReadDir(kRootInode, "", 1024, page);
    EXPECT_EQ(st.code(), StatusCode::kCorrupt)
        << st.ToString() << "; " << page.size() << " entries";
    Result<CheckReport> check = store->Check(false);
    ASSERT_TRUE(check.ok()) << check.status().ToString();
    EXPECT_TRUE(FlagsBadEntry(*check)) << Problems(*check);
  }
  auto store = OpenStore(true);
  ASSERT_TRUE(store);
  Result<RepairReport> r = store->Repair(true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << Problems(r->after);
  EXPECT_EQ(Names(*store, kRootInode), std::vector<std::string>{"a"});
  EXPECT_TRUE(ReadsAs(*store, a_ino, a));
}

INSTANTIATE_TEST_SUITE_P(Names, HostileNameTest,
                         ::testing::Values(BadName{"Empty", ""}, BadName{"Dot", "."},
                                           BadName{"DotDot", ".."}, BadName{"Slash", "a/b"},
                                           BadName{"Traversal", "../../escaped"},
                                           BadName{"Nul", std::string("a\0b", 3)},
                                           BadName{"TooLong", std::string(256, 'x')}),
                         [](const ::testing::TestParamInfo<BadName>& info) {
                           return std::string(info.param.label);
                         });

// Directory cycles: an entry of a subdirectory naming the root, or a directory naming itself.
// Walking the tree recursed until the stack overflowed (fsck and stats crashed); fsck must
// report the entry and repair delete it.
enum class Cycle { kToRoot, kToItself };
void PrintTo(Cycle c, std::ostream* os) { *os << (c == Cycle::kToRoot ? "ToRoot" : "ToItself"); }
class HostileCycleTest : public HostileIndexTest, public ::testing::WithParamInterface<Cycle> {};

TEST_P(HostileCycleTest, CycleIsReportedAndRepaired) {
  const Bytes a = test::RandomBytes(3000, 3);
  uint64_t d = 0, e = 0, a_ino = 0;
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    Result<InodeAttr> dd = store->Mkdir(kRootInode, "d", {});
    ASSERT_TRUE(dd.ok()) << dd.status().ToString();
    d = dd->ino;
    Result<InodeAttr> ee = store->Mkdir(d, "e", {});
    ASSERT_TRUE(ee.ok()) << ee.status().ToString();
    e = ee->ino;
    a_ino = Add(*store, e, "a", a);
    ASSERT_NE(a_ino, 0u);
  }
  {
    test::IndexEditor ed(store_dir_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    if (GetParam() == Cycle::kToRoot) {
      ASSERT_TRUE(test::PutDirent(ed, e, "up", kRootInode, InodeKind::kDirectory));
    } else {
      ASSERT_TRUE(test::PutDirent(ed, e, "self", e, InodeKind::kDirectory));
    }
  }
  {
    auto store = OpenStore(false);
    ASSERT_TRUE(store);
    Result<CheckReport> check = store->Check(true);
    ASSERT_TRUE(check.ok()) << check.status().ToString();
    EXPECT_FALSE(check->clean());
    EXPECT_TRUE(HasProblem(*check, "directory")) << Problems(*check);
  }
  auto store = OpenStore(true);
  ASSERT_TRUE(store);
  Result<RepairReport> r = store->Repair(true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << Problems(r->after);
  // Only the looping entry went: the tree is as it was built.
  EXPECT_EQ(Names(*store, kRootInode), std::vector<std::string>{"d"});
  EXPECT_EQ(Names(*store, d), std::vector<std::string>{"e"});
  EXPECT_EQ(Names(*store, e), std::vector<std::string>{"a"});
  EXPECT_TRUE(ReadsAs(*store, a_ino, a));
  Result<InodeAttr> found = store->LookupPath("/d/e/a");
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  EXPECT_EQ(found->ino, a_ino);
}

INSTANTIATE_TEST_SUITE_P(Cycles, HostileCycleTest,
                         ::testing::Values(Cycle::kToRoot, Cycle::kToItself),
                         [](const ::testing::TestParamInfo<Cycle>& info) {
                           return std::string(info.param == Cycle::kToRoot ? "ToRoot" : "ToItself");
                         });

// A chunk record pointed at another chunk's frame (same pack, that record's offset, frame size,
// raw size, method and dtype): the frame is sound and decodes, but to the other chunk's bytes,
// which reads returned as this file's. Above 240 bytes ReadFrame matches the frame checksum to
// the key; at or below, the decoded bytes are hashed. Both sizes are tested.
class HostileFrameTest : public HostileIndexTest, public ::testing::WithParamInterface<size_t> {};

TEST_P(HostileFrameTest, ChunkRecordPointingAtAnotherChunksFrameIsCorrupt) {
  const size_t n = GetParam();
  const Bytes a = test::RandomBytes(n, 4, 7), b = test::RandomBytes(n, 5, 7);
  ASSERT_NE(a, b);
  uint64_t a_ino = 0, b_ino = 0;
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    a_ino = Add(*store, kRootInode, "a", a);
    b_ino = Add(*store, kRootInode, "b", b);
    ASSERT_NE(a_ino, 0u);
    ASSERT_NE(b_ino, 0u);
    Result<std::vector<ChunkLocation>> ca = store->ChunksInRange(a_ino, 0, n);
    Result<std::vector<ChunkLocation>> cb = store->ChunksInRange(b_ino, 0, n);
    ASSERT_TRUE(ca.ok() && cb.ok());
    ASSERT_EQ(ca->size(), 1u);
    ASSERT_EQ(cb->size(), 1u);
    ASSERT_EQ((*ca)[0].method, (*cb)[0].method) << "the frames must look alike";
    ASSERT_EQ((*ca)[0].pack_id, (*cb)[0].pack_id);
  }
  {
    test::IndexEditor ed(store_dir_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    const std::string ka = test::ChunkKeyAt(ed, a_ino, 0), kb = test::ChunkKeyAt(ed, b_ino, 0);
    ASSERT_EQ(ka.size(), 16u);
    ASSERT_EQ(kb.size(), 16u);
    ASSERT_TRUE(test::PointChunkAtOthersFrame(ed, ka, kb));
  }
  auto store = OpenStore(false);
  ASSERT_TRUE(store);
  Bytes got(n);
  Result<size_t> whole = store->Read(a_ino, 0, got);
  EXPECT_EQ(whole.status().code(), StatusCode::kCorrupt)
      << whole.status().ToString() << (whole.ok() && got == b ? " (gave b's bytes)" : "");
  Bytes part(n / 2);
  Result<size_t> piece = store->Read(a_ino, n / 4, part);
  EXPECT_EQ(piece.status().code(), StatusCode::kCorrupt) << piece.status().ToString();
  // The frame's own chunk reads as ever.
  EXPECT_TRUE(ReadsAs(*store, b_ino, b));
  Result<CheckReport> check = store->Check(true);
  ASSERT_TRUE(check.ok()) << check.status().ToString();
  bool names_a = false;
  for (const CheckProblem& p : check->problems) names_a |= p.ino == a_ino;
  EXPECT_TRUE(names_a) << Problems(*check);
}

INSTANTIATE_TEST_SUITE_P(Sizes, HostileFrameTest, ::testing::Values(size_t{100000}, size_t{200}),
                         [](const ::testing::TestParamInfo<size_t>& info) {
                           return std::string(info.param > 240 ? "Large" : "Small") + "Chunk";
                         });

// The meta counter of the next inode lowered to a file's inode: new files and directories must
// fail, not take that inode over (which replaced the old file's attributes and bytes).
TEST_F(HostileIndexTest, LoweredNextInodeCounterOverwritesNoInode) {
  const Bytes a = test::RandomBytes(70000, 6, 7), b = test::RandomBytes(3000, 7);
  const Bytes c = test::RandomBytes(50000, 8, 7);
  uint64_t a_ino = 0, b_ino = 0;
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    a_ino = Add(*store, kRootInode, "a", a);
    b_ino = Add(*store, kRootInode, "b", b);
    ASSERT_NE(a_ino, 0u);
    ASSERT_NE(b_ino, 0u);
  }
  {
    test::IndexEditor ed(store_dir_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    ASSERT_TRUE(test::SetNextInode(ed, a_ino));
  }
  auto store = OpenStore(true);
  ASSERT_TRUE(store);
  const int fd = ::memfd_create("c", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, c.data(), c.size()), static_cast<ssize_t>(c.size()));
  Result<AddResult> added = store->AddFile(kRootInode, "c", fd, NewAttr{});
  EXPECT_FALSE(added.ok()) << "took inode " << added->attr.ino;
  Result<InodeAttr> made = store->Mkdir(kRootInode, "dir", {});
  EXPECT_FALSE(made.ok()) << "took inode " << made->ino;
  // The same through a bulk add (what `zipnnfs import` uses).
  Result<std::unique_ptr<BulkAdd>> bulk = store->BeginBulkAdd();
  ASSERT_TRUE(bulk.ok()) << bulk.status().ToString();
  Status queued = (*bulk)->AddFileFd({}, "c2", fd, NewAttr{});
  Result<BulkSummary> done = (*bulk)->Finish();
  EXPECT_FALSE(queued.ok() && done.ok()) << "bulk add of c2 succeeded";
  ::close(fd);

  Result<InodeAttr> attr = store->GetAttr(a_ino);
  ASSERT_TRUE(attr.ok()) << attr.status().ToString();
  EXPECT_EQ(attr->kind, InodeKind::kFile);
  EXPECT_EQ(attr->size, a.size());
  EXPECT_TRUE(ReadsAs(*store, a_ino, a));
  EXPECT_TRUE(ReadsAs(*store, b_ino, b));
  EXPECT_EQ(Names(*store, kRootInode), (std::vector<std::string>{"a", "b"}));
  Result<InodeAttr> a_found = store->LookupPath("a");
  ASSERT_TRUE(a_found.ok());
  EXPECT_EQ(a_found->ino, a_ino);
}

}  // namespace
}  // namespace zipnn::index
