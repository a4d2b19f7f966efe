// Tests of Store::Repair (zipnnfs fsck --repair) on damaged packs and a damaged index, and of gc
// interrupted at each of its steps. Real LMDB in temp dirs; the index is damaged through LMDB
// directly (white box: index/store_impl.h names the databases).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "index/index.h"
#include "index/records.h"
#include "index/store_impl.h"
#include "tests/index/store_test_util.h"
#include "tests/tools/cli_util.h"

namespace zipnn::index {
namespace {

namespace fs = std::filesystem;
using test::Bytes;

Bytes Compressible(size_t n, uint64_t seed) { return test::RandomBytes(n, seed, 7); }

class RepairTest : public test::StoreDirTest {
 protected:
  std::unique_ptr<Store> Open() {
    StoreOptions opts;
    opts.chunk_size = 64u << 10;
    return OpenStore(true, opts);
  }

  // Adds `data` as file `name` in the root; how that went.
  Status TryAdd(Store& store, const std::string& name, const Bytes& data) {
    const std::string path = dir_ + "/" + name;
    test::WriteAll(path, data);
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return Status::FromErrno(errno, path);
    Result<AddResult> r = store.AddFile(kRootInode, name, fd, {});
    ::close(fd);
    return r.status();
  }
  void Add(Store& store, const std::string& name, const Bytes& data) {
    const Status st = TryAdd(store, name, data);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }

  void ExpectFile(Store& store, const std::string& name, const Bytes& data) {
    Result<InodeAttr> a = store.LookupPath(name);
    ASSERT_TRUE(a.ok()) << name;
    Bytes got(data.size());
    Result<size_t> n = store.Read(a->ino, 0, got);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    EXPECT_TRUE(*n == data.size() && got == data) << name;
  }

  // Adds `data` to the store as file `name` in one opening of it (new packs and files come in
  // the order of the calls); the file's inode.
  uint64_t AddClosed(const std::string& name, const Bytes& data) {
    auto store = Open();
    EXPECT_TRUE(store);
    if (!store) return 0;
    Add(*store, name, data);
    Result<InodeAttr> a = store->LookupPath(name);
    EXPECT_TRUE(a.ok());
    return a.ok() ? a->ino : 0;
  }

  // Opens the store, which the check must find damaged, and repairs it: the repair succeeds and
  // leaves it clean. Null (after a failure) if it does not open.
  std::unique_ptr<Store> OpenDamagedAndRepair(bool verify_frames) {
    auto store = Open();
    EXPECT_TRUE(store);
    if (!store) return nullptr;
    EXPECT_FALSE(store->Check(false)->clean());
    Result<RepairReport> r = store->Repair(verify_frames);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (r.ok()) {
      EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
    }
    return store;
  }

  // Rewrites inode `ino`'s record after `fn` has changed it (store closed).
  void EditInode(uint64_t ino, const std::function<void(InodeAttr&)>& fn) {
    EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
      const rec::InodeKey key(ino);
      MDB_val v;
      ASSERT_TRUE(txn.Get(env.dbi(kInodes), lmdb::Val(key.bytes()), v).ok());
      std::optional<InodeAttr> attr = rec::DecodeInode(ino, lmdb::Bytes(v));
      ASSERT_TRUE(attr);
      fn(*attr);
      uint8_t enc[rec::kInodeSize];
      rec::EncodeInode(*attr, enc);
      ASSERT_TRUE(txn.Put(env.dbi(kInodes), lmdb::Val(key.bytes()), lmdb::Val(enc)).ok());
    });
  }

  // Runs `fn` on the store's LMDB environment, in one write transaction (store closed).
  void EditIndex(const std::function<void(lmdb::Env&, lmdb::Txn&)>& fn) {
    Result<std::unique_ptr<lmdb::Env>> env = lmdb::Env::Open(store_dir_ + "/index", true, kDbNames);
    ASSERT_TRUE(env.ok()) << env.status().ToString();
    Status st = (*env)->Update([&](lmdb::Txn& txn) {
      fn(**env, txn);
      return Status::Ok();
    });
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
};

// A flipped bit in a pack: fsck names the file and range, repair removes that file only, and the
// store is clean and takes the file again.
// A repair killed between its renames leaves no index/ but its complete copy, index.rebuilt/:
// the next writer adopts it. An unfinished copy (index.rebuild/) is never taken for the index.
TEST_F(RepairTest, CopyLeftBetweenTheRenamesIsAdopted) {
  const Bytes data = Compressible(100000, 1);
  AddClosed("a", data);
  fs::rename(store_dir_ + "/index", store_dir_ + "/index.rebuild");
  {
    StoreOptions opts;
    opts.writable = true;
    EXPECT_FALSE(Store::Open(store_dir_, opts).ok()) << "an unfinished copy is not the index";
  }
  EXPECT_FALSE(fs::exists(store_dir_ + "/index/data.mdb"));
  fs::rename(store_dir_ + "/index.rebuild", store_dir_ + "/index.rebuilt");
  auto store = Open();
  ASSERT_TRUE(store);
  ExpectFile(*store, "a", data);
  EXPECT_FALSE(fs::exists(store_dir_ + "/index.rebuilt"));
  ExpectClean(*store);
}

// A damaged frame of a chunk no file uses any more (its file was replaced): fsck checked only the
// frames files use and said clean, and an import of the old content reused the chunk, storing a
// file that did not read back. fsck reports it, repair drops the record, and the re-import codes
// the chunk anew.
TEST_F(RepairTest, DamagedUnreferencedFrameIsFoundAndNotReused) {
  const Bytes a = Compressible(300000, 1), a2 = Compressible(1000, 3);
  AddClosed("a", a);
  AddClosed("a", a2);  // a's first chunks are unreferenced now, at the start of the pack
  zipnn::test::FlipByte(store_dir_ + "/packs/pack-000001.znp", 100);
  auto store = Open();
  ASSERT_TRUE(store);
  Result<CheckReport> check = store->Check(true);
  ASSERT_TRUE(check.ok());
  ASSERT_EQ(check->problems.size(), 1u);
  EXPECT_NE(check->problems[0].what.find("unreferenced chunk"), std::string::npos)
      << check->problems[0].what;
  Result<RepairReport> r = store->Repair(true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  Add(*store, "b", a);
  ExpectFile(*store, "b", a);
  ExpectFile(*store, "a", a2);
  EXPECT_TRUE(store->Check(true)->clean());
}

TEST_F(RepairTest, DamagedFrameRemovesOnlyItsFile) {
  const Bytes a = Compressible(300000, 1), b = Compressible(200000, 2);
  const uint64_t a_ino = AddClosed("a", a);
  AddClosed("b", b);
  // Flip a byte in the middle of a's first frame (a was added first: it starts the pack).
  zipnn::test::FlipByte(store_dir_ + "/packs/pack-000001.znp", 100);
  auto store = Open();
  ASSERT_TRUE(store);
  Result<RepairReport> r = store->Repair(true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_FALSE(r->found.clean());
  for (const CheckProblem& p : r->found.problems) {
    EXPECT_EQ(p.ino, a_ino) << p.what;
    EXPECT_EQ(p.begin, 0u) << "the first chunk";
    EXPECT_GT(p.end, p.begin);
  }
  ASSERT_FALSE(r->actions.empty());
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  EXPECT_EQ(store->LookupPath("a").status().code(), StatusCode::kNotFound);
  ExpectFile(*store, "b", b);
  Add(*store, "a", a);  // re-import: its damaged chunk is written anew
  ExpectFile(*store, "a", a);
  Result<CheckReport> check = store->Check(true);
  ASSERT_TRUE(check.ok());
  EXPECT_TRUE(check->clean());
}

// Damage in the index: a wrong refcount, an entry naming no inode, a file with a hole in its
// extents, a pack shorter than the index says. Repair fixes all of it in one go.
TEST_F(RepairTest, DamagedIndexIsMadeConsistent) {
  const Bytes a = Compressible(300000, 3), b = Compressible(300000, 4), c = Compressible(5000, 5);
  AddClosed("a", a);
  const uint64_t b_ino = AddClosed("b", b);
  AddClosed("c", c);
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    // b loses its second extent.
    rec::ExtentKey key(b_ino, 64u << 10);
    ASSERT_TRUE(txn.Del(env.dbi(kExtents), lmdb::Val(key.bytes())).ok());
    // An entry for inode 999, which does not exist.
    uint8_t dirent[rec::kDirentSize];
    rec::EncodeDirent(999, InodeKind::kFile, dirent);
    ASSERT_TRUE(
        txn.Put(env.dbi(kDirents), lmdb::Val(rec::NamedKey(kRootInode, "ghost")), lmdb::Val(dirent))
            .ok());
    // Every chunk's refcount is off by 5.
    std::vector<std::pair<ChunkHash, rec::Chunk>> all;
    {
      Result<lmdb::Cursor> cur = lmdb::Cursor::Open(txn, env.dbi(kChunks));
      ASSERT_TRUE(cur.ok());
      MDB_val k, v;
      Status st;
      for (bool have = cur->Get(k, v, MDB_FIRST, st); have; have = cur->Get(k, v, MDB_NEXT, st)) {
        ChunkHash h;
        std::memcpy(h.data(), k.mv_data, 16);
        all.emplace_back(h, *rec::DecodeChunk(lmdb::Bytes(v)));
      }
    }
    for (auto& [h, chunk] : all) {
      chunk.refcount += 5;
      uint8_t cv[rec::kChunkSize];
      rec::EncodeChunk(chunk, cv);
      ASSERT_TRUE(txn.Put(env.dbi(kChunks), lmdb::Val(h), lmdb::Val(cv)).ok());
    }
  });
  auto store = Open();
  ASSERT_TRUE(store);
  Result<CheckReport> before = store->Check(false);
  ASSERT_TRUE(before.ok());
  EXPECT_FALSE(before->clean());
  Result<RepairReport> r = store->Repair(false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GE(r->actions.size(), 3u);
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  EXPECT_EQ(store->LookupPath("b").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->LookupPath("ghost").status().code(), StatusCode::kNotFound);
  ExpectFile(*store, "a", a);
  ExpectFile(*store, "c", c);
  Result<CheckReport> full = store->Check(true);
  ASSERT_TRUE(full.ok());
  EXPECT_TRUE(full->clean());
  // b's chunks are unreferenced now: gc reclaims them and the store stays clean.
  ASSERT_TRUE(store->Gc(0.9).ok());
  ExpectFile(*store, "a", a);
  EXPECT_TRUE(store->Check(true)->clean());
}

// A pack cut short (lost writes): the store still opens for writing (new frames go to a fresh
// pack), files whose frames are gone are removed and the pack's length is cut to what it holds.
// Writers wait for the repair.
TEST_F(RepairTest, TruncatedPack) {
  const Bytes a = Compressible(100000, 6), b = Compressible(300000, 7);
  AddClosed("a", a);
  AddClosed("b", b);
  const std::string pack = store_dir_ + "/packs/pack-000001.znp";
  fs::resize_file(pack, fs::file_size(pack) - 1000);
  auto store = Open();
  ASSERT_TRUE(store);
  // Until the repair, writers refuse: a copy of b took b's lost chunks as stored (dedup), and was
  // unreadable from its import on.
  const Status added = TryAdd(*store, "c", b);
  EXPECT_EQ(added.code(), StatusCode::kCorrupt) << added.ToString();
  EXPECT_NE(added.message().find("fsck --repair"), std::string::npos);
  EXPECT_EQ(store->Gc(0.5).status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(store->Mkdir(kRootInode, "d", {}).status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(store->Symlink(kRootInode, "l", "a", {}).status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(store->LookupPath("d").status().code(), StatusCode::kNotFound);
  Result<RepairReport> r = store->Repair(true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  ExpectFile(*store, "a", a);
  EXPECT_EQ(store->LookupPath("b").status().code(), StatusCode::kNotFound);
  Add(*store, "b", b);
  ExpectFile(*store, "b", b);
  Result<StoreUsage> u = store->GetStoreUsage();
  ASSERT_TRUE(u.ok());
  uint64_t files = 0;
  for (const auto& e : fs::directory_iterator(store_dir_ + "/packs")) files += e.file_size();
  EXPECT_EQ(u->pack_bytes, files);
  EXPECT_TRUE(store->Check(true)->clean());
}

// A pack other than the current one lost whole (its file deleted): writers refused a pack cut
// short, but not one gone, and an import deduplicated onto its frames.
TEST_F(RepairTest, MissingPackKeepsWritersOutUntilRepaired) {
  const Bytes a = Compressible(100000, 22), b = Compressible(100000, 23);
  AddClosed("a", a);
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {  // new frames go to pack 2 from here on
    uint8_t two[4];
    rec::PutLE<uint32_t>(two, 2);
    ASSERT_TRUE(txn.Put(env.dbi(kMeta), lmdb::Val(rec::kMetaCurrentPack), lmdb::Val(two)).ok());
  });
  AddClosed("b", b);
  ASSERT_TRUE(fs::exists(store_dir_ + "/packs/pack-000002.znp"));
  fs::remove(store_dir_ + "/packs/pack-000001.znp");
  auto store = Open();
  ASSERT_TRUE(store);
  const Status added = TryAdd(*store, "c", a);
  EXPECT_EQ(added.code(), StatusCode::kCorrupt) << added.ToString();
  EXPECT_NE(added.message().find("pack-000001.znp: missing"), std::string::npos) << added.message();
  Result<RepairReport> r = store->Repair(true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  Add(*store, "c", a);
  ExpectFile(*store, "c", a);
  ExpectFile(*store, "b", b);
  store.reset();
  store = Open();  // and a writer opening it anew is not refused
  ASSERT_TRUE(store);
  Add(*store, "d", b);
}

// A pack length record lowered, or deleted with the current pack moved on: opening the store for
// writing must not cut or delete the frames the chunk records use; fsck names the record and
// repair restores it, every file intact.
TEST_F(RepairTest, DamagedPackLengthNeverCostsFrames) {
  const Bytes a = Compressible(300000, 8), b = Compressible(200000, 9);
  AddClosed("a", a);
  AddClosed("b", b);
  const std::string pack = store_dir_ + "/packs/pack-000001.znp";
  const uint64_t size = fs::file_size(pack);
  for (bool remove : {false, true}) {
    EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
      const std::string key = rec::PackLengthKey(1);
      if (remove) {
        ASSERT_TRUE(txn.Del(env.dbi(kMeta), lmdb::Val(key)).ok());
        uint8_t cur[4];
        rec::PutLE<uint32_t>(cur, 2);
        ASSERT_TRUE(txn.Put(env.dbi(kMeta), lmdb::Val(rec::kMetaCurrentPack), lmdb::Val(cur)).ok());
      } else {
        uint8_t len[8];
        rec::PutLE<uint64_t>(len, 100);
        ASSERT_TRUE(txn.Put(env.dbi(kMeta), lmdb::Val(key), lmdb::Val(len)).ok());
      }
    });
    auto store = Open();  // (opening for writing cuts uncommitted bytes, deletes unknown packs)
    ASSERT_TRUE(store);
    EXPECT_EQ(fs::file_size(pack), size) << remove;
    ExpectFile(*store, "a", a);
    Result<CheckReport> before = store->Check(true);
    ASSERT_TRUE(before.ok());
    EXPECT_FALSE(before->clean()) << remove;
    Result<RepairReport> r = store->Repair(true);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
    ExpectFile(*store, "a", a);
    ExpectFile(*store, "b", b);
  }
}

// A used chunk whose refcount was damaged to 0: gc refuses instead of dropping its frame; repair
// corrects the count, and gc then keeps the file whole.
TEST_F(RepairTest, GcNeverDropsAChunkFilesUse) {
  const Bytes a = Compressible(300000, 10);
  AddClosed("a", a);
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    Result<lmdb::Cursor> cur = lmdb::Cursor::Open(txn, env.dbi(kChunks));
    ASSERT_TRUE(cur.ok());
    MDB_val k, v;
    Status st;
    ASSERT_TRUE(cur->Get(k, v, MDB_FIRST, st));
    std::optional<rec::Chunk> c = rec::DecodeChunk(lmdb::Bytes(v));
    ASSERT_TRUE(c && c->refcount > 0);
    c->refcount = 0;
    uint8_t cv[rec::kChunkSize];
    rec::EncodeChunk(*c, cv);
    const Bytes key(static_cast<const uint8_t*>(k.mv_data),
                    static_cast<const uint8_t*>(k.mv_data) + k.mv_size);
    ASSERT_TRUE(txn.Put(env.dbi(kChunks), lmdb::Val(key), lmdb::Val(cv)).ok());
  });
  auto store = Open();
  ASSERT_TRUE(store);
  Result<GcReport> gc = store->Gc();
  EXPECT_EQ(gc.status().code(), StatusCode::kCorrupt);
  ExpectFile(*store, "a", a);
  Result<RepairReport> r = store->Repair(true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean());
  ASSERT_TRUE(store->Gc().ok());
  ExpectFile(*store, "a", a);
}

// The counters new inodes and packs come from, and a mode whose file type contradicts the inode's
// kind: fsck names each, repair restores them, and the store takes new files again.
TEST_F(RepairTest, MetaCountersAndModeTypeAreRepaired) {
  const Bytes a = Compressible(100000, 11), b = Compressible(100000, 12);
  const uint64_t ino = AddClosed("a", a);
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    ASSERT_TRUE(txn.Del(env.dbi(kMeta), lmdb::Val(rec::kMetaCurrentPack)).ok());
    uint8_t next[8];
    rec::PutLE<uint64_t>(next, ino);  // in use
    ASSERT_TRUE(txn.Put(env.dbi(kMeta), lmdb::Val(rec::kMetaNextInode), lmdb::Val(next)).ok());
  });
  EditInode(ino, [](InodeAttr& attr) { attr.mode = (attr.mode & ~S_IFMT) | S_IFDIR; });
  auto store = Open();  // (without a current-pack record, the newest pack)
  ASSERT_TRUE(store);
  Result<CheckReport> before = store->Check(false);
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->problems.size(), 3u);
  Result<RepairReport> r = store->Repair(false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  EXPECT_EQ(store->GetAttr(ino)->mode & S_IFMT, static_cast<mode_t>(S_IFREG));
  Add(*store, "b", b);
  ExpectFile(*store, "a", a);
  ExpectFile(*store, "b", b);
  EXPECT_TRUE(store->Check(true)->clean());
}

// A file inode's kind flipped to directory: fsck reports it and repair goes by the inode's records
// (its extents make it a file), so no file loses its data and gc keeps it.
// The same for a file whose mode lost its file type bits as well.
TEST_F(RepairTest, FlippedKindIsRepairedFromTheInodesRecords) {
  const Bytes a = Compressible(200000, 13), b = Compressible(100000, 19);
  const uint64_t ino = AddClosed("a", a);
  const uint64_t bare = AddClosed("b", b);
  EditInode(ino, [](InodeAttr& attr) { attr.kind = InodeKind::kDirectory; });
  EditInode(bare, [](InodeAttr& attr) {
    attr.kind = InodeKind::kDirectory;
    attr.mode &= ~S_IFMT;
  });
  auto store = OpenDamagedAndRepair(true);
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->Gc().ok());
  ExpectFile(*store, "a", a);
  ExpectFile(*store, "b", b);
  EXPECT_EQ(store->GetAttr(ino)->kind, InodeKind::kFile);
  EXPECT_EQ(store->GetAttr(bare)->mode & S_IFMT, static_cast<mode_t>(S_IFREG));
}

// A directory's only entry moved into its own child (a cycle cut off from the root), and the
// root's mode made a file's: repair moves the directory under the root instead of losing it, and
// keeps the root a directory.
TEST_F(RepairTest, CycleIsMovedUnderTheRootAndTheRootStaysADirectory) {
  uint64_t d = 0, e = 0;
  {
    auto store = Open();
    ASSERT_TRUE(store);
    Result<InodeAttr> dir = store->Mkdir(kRootInode, "d", {});
    ASSERT_TRUE(dir.ok());
    Result<InodeAttr> child = store->Mkdir(dir->ino, "e", {});
    ASSERT_TRUE(child.ok());
    d = dir->ino;
    e = child->ino;
  }
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    uint8_t entry[rec::kDirentSize];
    rec::EncodeDirent(d, InodeKind::kDirectory, entry);
    ASSERT_TRUE(txn.Del(env.dbi(kDirents), lmdb::Val(rec::NamedKey(kRootInode, "d"))).ok());
    ASSERT_TRUE(
        txn.Put(env.dbi(kDirents), lmdb::Val(rec::NamedKey(e, "d")), lmdb::Val(entry)).ok());
  });
  EditInode(kRootInode, [](InodeAttr& root) { root.mode = (root.mode & ~S_IFMT) | S_IFREG; });
  auto store = Open();
  ASSERT_TRUE(store);
  Result<RepairReport> r = store->Repair(false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  EXPECT_EQ(store->GetAttr(kRootInode)->kind, InodeKind::kDirectory);
  Result<InodeAttr> moved = store->LookupPath("lost+found-" + std::to_string(d) + "/e");
  ASSERT_TRUE(moved.ok()) << moved.status().ToString();
  EXPECT_EQ(moved->ino, e);
  // Link counts follow the new tree: d is the root's subdirectory now, e still d's.
  EXPECT_EQ(store->GetAttr(kRootInode)->nlink, 3u);
  EXPECT_EQ(store->GetAttr(d)->nlink, 3u);
  EXPECT_EQ(store->GetAttr(e)->nlink, 2u);
  Add(*store, "after", Compressible(1000, 14));  // the root takes new files
}

// The root's inode record lost: repair made no root, refused every entry in it and linked their
// inodes as lost+found-N under the missing root, leaving the store damaged. It makes the root
// anew, and the tree is whole again.
TEST_F(RepairTest, MissingRootIsMadeAnew) {
  const Bytes a = Compressible(1000, 21);
  {
    auto store = Open();
    ASSERT_TRUE(store);
    Add(*store, "a", a);
    ASSERT_TRUE(store->Mkdir(kRootInode, "d", {}).ok());
  }
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    ASSERT_TRUE(txn.Del(env.dbi(kInodes), lmdb::Val(rec::InodeKey(kRootInode).bytes())).ok());
  });
  // Deleted, or malformed (then repair made the root and deleted the malformed key after it).
  for (const std::string& bad : {std::string(), std::string("x")}) {
    if (!bad.empty()) {
      EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
        ASSERT_TRUE(
            txn.Put(env.dbi(kInodes), lmdb::Val(rec::InodeKey(kRootInode).bytes()), lmdb::Val(bad))
                .ok());
      });
    }
    auto store = OpenDamagedAndRepair(false);
    ASSERT_TRUE(store);
    ExpectFile(*store, "a", a);
    Result<InodeAttr> root = store->GetAttr(kRootInode);
    ASSERT_TRUE(root.ok()) << "record " << bad.size() << " bytes";
    EXPECT_EQ(root->kind, InodeKind::kDirectory);
    EXPECT_EQ(root->nlink, 3u);
    EXPECT_TRUE(store->LookupPath("d").ok());
  }
}

// A directory's link count (2 + subdirectories, as find and ls -l read it) went unchecked: fsck
// said clean whatever it held. It reports it, and repair sets it.
TEST_F(RepairTest, DirectoryLinkCountIsReportedAndRepaired) {
  uint64_t d = 0;
  {
    auto store = Open();
    ASSERT_TRUE(store);
    Result<InodeAttr> dir = store->Mkdir(kRootInode, "d", {});
    ASSERT_TRUE(dir.ok());
    ASSERT_TRUE(store->Mkdir(dir->ino, "e", {}).ok());
    d = dir->ino;
  }
  EditInode(d, [](InodeAttr& a) { a.nlink = 9; });
  EditInode(kRootInode, [](InodeAttr& a) { a.nlink = 2; });
  auto store = Open();
  ASSERT_TRUE(store);
  Result<CheckReport> before = store->Check(false);
  ASSERT_TRUE(before.ok());
  ASSERT_EQ(before->problems.size(), 2u);
  EXPECT_NE(before->problems[0].what.find("but 1 subdirectories"), std::string::npos)
      << before->problems[0].what;
  Result<RepairReport> r = store->Repair(false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  EXPECT_EQ(store->GetAttr(kRootInode)->nlink, 3u);
  EXPECT_EQ(store->GetAttr(d)->nlink, 3u);
}

// A directory entry whose kind byte is not its inode's (readdir and stat would disagree): fsck
// reports it and repair gives the entry the inode's kind.
TEST_F(RepairTest, EntryKindIsSetToItsInodes) {
  const Bytes a = Compressible(1000, 15);
  AddClosed("a", a);
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    MDB_val v;
    const std::string key = rec::NamedKey(kRootInode, "a");
    ASSERT_TRUE(txn.Get(env.dbi(kDirents), lmdb::Val(key), v).ok());
    uint8_t entry[rec::kDirentSize];
    rec::EncodeDirent(rec::GetLE<uint64_t>(static_cast<const uint8_t*>(v.mv_data)),
                      InodeKind::kDirectory, entry);
    ASSERT_TRUE(txn.Put(env.dbi(kDirents), lmdb::Val(key), lmdb::Val(entry)).ok());
  });
  auto store = OpenDamagedAndRepair(false);
  ASSERT_TRUE(store);
  std::vector<DirEntry> entries;
  ASSERT_TRUE(store->ReadDir(kRootInode, "", 10, entries).ok());
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].kind, InodeKind::kFile);
  ExpectFile(*store, "a", a);
}

// A file whose directory entry was lost: fsck reports the inode, and repair links it under the
// root instead of leaving its data unreachable.
TEST_F(RepairTest, InodeInNoDirectoryIsLinkedUnderTheRoot) {
  const Bytes a = Compressible(100000, 16);
  const uint64_t ino = AddClosed("a", a);
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    ASSERT_TRUE(txn.Del(env.dbi(kDirents), lmdb::Val(rec::NamedKey(kRootInode, "a"))).ok());
  });
  auto store = OpenDamagedAndRepair(true);
  ASSERT_TRUE(store);
  ExpectFile(*store, "lost+found-" + std::to_string(ino), a);
}

// A directory in no directory goes under the root too, and the root's link count with it; fsck
// says why the count it reports differs from the subdirectories the root has now.
TEST_F(RepairTest, DirectoryInNoDirectoryCountsInTheRootsLinks) {
  uint64_t d = 0, e = 0;
  {
    auto store = Open();
    ASSERT_TRUE(store);
    Result<InodeAttr> dir = store->Mkdir(kRootInode, "d", {});
    ASSERT_TRUE(dir.ok());
    d = dir->ino;
    Result<InodeAttr> sub = store->Mkdir(d, "e", {});
    ASSERT_TRUE(sub.ok());
    e = sub->ino;
  }
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    ASSERT_TRUE(txn.Del(env.dbi(kDirents), lmdb::Val(rec::NamedKey(d, "e"))).ok());
  });
  {
    auto store = Open();
    ASSERT_TRUE(store);
    Result<CheckReport> check = store->Check(false);
    ASSERT_TRUE(check.ok());
    ASSERT_FALSE(check->problems.empty());
    EXPECT_TRUE(std::any_of(check->problems.begin(), check->problems.end(), [](const auto& p) {
      return p.what.find("once repair links 1 lost ones under it") != std::string::npos;
    })) << check->problems[0].what;
  }
  auto store = OpenDamagedAndRepair(false);
  ASSERT_TRUE(store);
  EXPECT_TRUE(store->LookupPath("lost+found-" + std::to_string(e)).ok());
  EXPECT_EQ(store->GetAttr(kRootInode)->nlink, 4u);
  EXPECT_EQ(store->GetAttr(d)->nlink, 2u);
}

// Records whose inode is gone or of another kind: a deleted file inode's extents (which keep its
// chunks referenced), an extent and a link target on a directory, attributes of no inode. fsck
// reports them, repair deletes them, and gc then reclaims the file's chunks.
TEST_F(RepairTest, RecordsOfNoInodeOfTheirKindAreDeleted) {
  const Bytes a = Compressible(200000, 17), b = Compressible(100000, 18);
  const uint64_t ino = AddClosed("a", a);
  AddClosed("b", b);
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    const rec::InodeKey key(ino), root(kRootInode);
    ASSERT_TRUE(txn.Del(env.dbi(kInodes), lmdb::Val(key.bytes())).ok());
    ASSERT_TRUE(txn.Put(env.dbi(kSymlinks), lmdb::Val(root.bytes()), lmdb::Val("x")).ok());
    ASSERT_TRUE(
        txn.Put(env.dbi(kXattrs), lmdb::Val(rec::NamedKey(ino, "user.a")), lmdb::Val("1")).ok());
    MDB_val extent;  // a's first extent, copied to the root directory
    ASSERT_TRUE(txn.Get(env.dbi(kExtents), lmdb::Val(rec::ExtentKey(ino, 0).bytes()), extent).ok());
    const std::string value(static_cast<const char*>(extent.mv_data), extent.mv_size);
    ASSERT_TRUE(txn.Put(env.dbi(kExtents), lmdb::Val(rec::ExtentKey(kRootInode, 0).bytes()),
                        lmdb::Val(value))
                    .ok());
  });
  auto store = Open();
  ASSERT_TRUE(store);
  Result<CheckReport> before = store->Check(false);
  ASSERT_TRUE(before.ok());
  size_t strays = 0;
  for (const CheckProblem& p : before->problems)
    strays += p.what.find("of a missing inode or one of another kind") != std::string::npos;
  EXPECT_EQ(strays, 4u);
  Result<RepairReport> r = store->Repair(false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  Result<GcReport> gc = store->Gc(1.0);
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  EXPECT_GT(gc->chunks_dropped, 0u);  // a's chunks, referenced by nothing now
  EXPECT_GT(gc->bytes_reclaimed, 0u);
  ExpectFile(*store, "b", b);
  EXPECT_EQ(store->GetAttr(kRootInode)->kind, InodeKind::kDirectory);
  EXPECT_TRUE(store->Check(true)->clean());
}

// Two entries naming one file (the store has no hard links yet: a damaged index), for a sound
// file and for a damaged one: fsck reports the link counts, and one repair sets the sound file's
// to 2 and removes the damaged file with both its entries.
TEST_F(RepairTest, EveryEntryOfAFileIsCountedAndRemovedWithIt) {
  const Bytes c = Compressible(100000, 20), a = Compressible(100000, 21);
  const uint64_t damaged = AddClosed("c", c);  // first: its frame starts the pack
  const uint64_t sound = AddClosed("a", a);
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    for (auto [ino, name] : {std::pair{sound, "a2"}, std::pair{damaged, "c2"}}) {
      uint8_t entry[rec::kDirentSize];
      rec::EncodeDirent(ino, InodeKind::kFile, entry);
      ASSERT_TRUE(
          txn.Put(env.dbi(kDirents), lmdb::Val(rec::NamedKey(kRootInode, name)), lmdb::Val(entry))
              .ok());
    }
  });
  zipnn::test::FlipByte(store_dir_ + "/packs/pack-000001.znp", 100);
  auto store = Open();
  ASSERT_TRUE(store);
  Result<CheckReport> before = store->Check(false);
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->problems.size(), 2u);  // the link counts (the frame is not read)
  Result<RepairReport> r = store->Repair(true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  EXPECT_EQ(store->GetAttr(sound)->nlink, 2u);
  ExpectFile(*store, "a", a);
  ExpectFile(*store, "a2", a);
  EXPECT_EQ(store->LookupPath("c").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->LookupPath("c2").status().code(), StatusCode::kNotFound);
}

// A file of two links that lost both entries: repair links it under the root once and sets its
// link count to that one entry in the same pass (the after-check found "link count 2 but 1").
TEST_F(RepairTest, RelinkedFileGetsTheLinkCountOfItsOneEntry) {
  const Bytes a = Compressible(50000, 22);
  const uint64_t ino = AddClosed("a", a);
  EditIndex([&](lmdb::Env& env, lmdb::Txn& txn) {
    ASSERT_TRUE(txn.Del(env.dbi(kDirents), lmdb::Val(rec::NamedKey(kRootInode, "a"))).ok());
  });
  EditInode(ino, [](InodeAttr& attr) { attr.nlink = 2; });
  auto store = Open();
  ASSERT_TRUE(store);
  Result<RepairReport> r = store->Repair(false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->after.clean()) << r->after.problems[0].what;
  EXPECT_EQ(store->GetAttr(ino)->nlink, 1u);
  ExpectFile(*store, "lost+found-" + std::to_string(ino), a);
}

}  // namespace
}  // namespace zipnn::index
