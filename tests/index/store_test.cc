// Tests of the store (index/index.h) and tree copies (index/tree.h) on real LMDB in temp dirs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "index/index.h"
#include "index/tree.h"
#include "tests/index/store_test_util.h"

namespace zipnn::index {
namespace {

namespace fs = std::filesystem;
using test::Bytes;
using test::Cat;
using test::RandomBytes;
using test::ReadAll;
using test::WriteAll;

// A valid BF16 .safetensors file of `tensors` Gaussian tensors of `elems` elements each.
Bytes MakeSafetensors(int tensors, size_t elems, uint64_t seed) {
  std::string header = "{";
  for (int t = 0; t < tensors; ++t) {
    if (t > 0) header += ",";
    header += "\"w" + std::to_string(t) + "\":{\"dtype\":\"BF16\",\"shape\":[" +
              std::to_string(elems) + "],\"data_offsets\":[" + std::to_string(t * elems * 2) + "," +
              std::to_string((t + 1) * elems * 2) + "]}";
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  Bytes out(8 + header.size());
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  for (size_t i = 0; i < static_cast<size_t>(tensors) * elems; ++i) {
    const float f = gauss(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    out.push_back(static_cast<uint8_t>(bits >> 16));
    out.push_back(static_cast<uint8_t>(bits >> 24));
  }
  return out;
}

class StoreTest : public test::StoreDirTest {
 protected:
  // Adds host file `path` as `name` in the root.
  AddResult Add(Store& store, const std::string& path, const std::string& name) {
    int fd = ::open(path.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    Result<AddResult> r = store.AddFile(kRootInode, name, fd, NewAttr{});
    ::close(fd);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : AddResult{};
  }

  Bytes ReadFile(Store& store, uint64_t ino, uint64_t offset, size_t length) {
    Bytes out(length);
    Result<size_t> n = store.Read(ino, offset, out);
    EXPECT_TRUE(n.ok()) << n.status().ToString();
    out.resize(n.ok() ? *n : 0);
    return out;
  }
};

// Two trees are equal: same names, kinds, bytes, modes, mtimes and symlink targets.
void ExpectSameTree(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  ASSERT_EQ(::lstat(a.c_str(), &sa), 0) << a;
  ASSERT_EQ(::lstat(b.c_str(), &sb), 0) << b;
  EXPECT_EQ(sa.st_mode, sb.st_mode) << b;
  if (!S_ISLNK(sa.st_mode)) {
    EXPECT_EQ(sa.st_mtim.tv_sec, sb.st_mtim.tv_sec) << b;
    EXPECT_EQ(sa.st_mtim.tv_nsec, sb.st_mtim.tv_nsec) << b;
  }
  if (S_ISREG(sa.st_mode)) {
    EXPECT_TRUE(ReadAll(a) == ReadAll(b)) << b;
  } else if (S_ISLNK(sa.st_mode)) {
    EXPECT_EQ(fs::read_symlink(a), fs::read_symlink(b)) << b;
  } else if (S_ISDIR(sa.st_mode)) {
    std::vector<std::string> na, nb;
    for (const auto& e : fs::directory_iterator(a)) na.push_back(e.path().filename());
    for (const auto& e : fs::directory_iterator(b)) nb.push_back(e.path().filename());
    std::sort(na.begin(), na.end());
    std::sort(nb.begin(), nb.end());
    ASSERT_EQ(na, nb) << b;
    for (const std::string& n : na) ExpectSameTree(a + "/" + n, b + "/" + n);
  }
}

// The import hands the encoder the low half of its chunk key as the frame checksum.
TEST(ChunkHashTest, ChecksumFromHashIsTheFrameChecksumAbove240Bytes) {
  std::mt19937 rng(7);
  for (size_t n : {0, 1, 240, 241, 4096, 262144, 262147}) {
    std::vector<uint8_t> d(n);
    for (uint8_t& b : d) b = static_cast<uint8_t>(rng());
    const std::optional<uint64_t> sum = ChecksumFromHash(HashChunk(d), n);
    if (n <= 240) {
      EXPECT_FALSE(sum.has_value()) << n;
    } else {
      ASSERT_TRUE(sum.has_value()) << n;
      EXPECT_EQ(*sum, Checksum(d)) << n;
    }
  }
}

TEST_F(StoreTest, InitCreatesRootAndRefusesNonEmptyDir) {
  auto store = OpenStore(false);
  ASSERT_TRUE(store);
  Result<InodeAttr> root = store->GetAttr(kRootInode);
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->kind, InodeKind::kDirectory);
  EXPECT_TRUE(S_ISDIR(root->mode));
  EXPECT_EQ(Store::Init(store_dir_).code(), StatusCode::kExists);
  EXPECT_TRUE(fs::is_directory(store_dir_ + "/staging"));
  Result<std::unique_ptr<Store>> missing = Store::Open(dir_ + "/nope", {});
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST_F(StoreTest, WrongFormatVersionIsRefused) {
  std::ofstream(store_dir_ + "/FORMAT", std::ios::trunc) << "zipnnfs-store 2\n";
  Result<std::unique_ptr<Store>> s = Store::Open(store_dir_, {});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(s.status().message().find("version 2"), std::string::npos) << s.status().message();
}

TEST_F(StoreTest, SecondWriterIsRefused) {
  auto writer = OpenStore(true);
  ASSERT_TRUE(writer);
  // flock locks belong to the open file description: a second open in this process is refused
  // just like another process (and before it would open a second LMDB environment).
  StoreOptions opts;
  opts.writable = true;
  Result<std::unique_ptr<Store>> second = Store::Open(store_dir_, opts);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kBusy);
  EXPECT_NE(second.status().message().find("locked by another process"), std::string::npos);
  // A reader in the same process would be a second LMDB environment on one file: refused too.
  Result<std::unique_ptr<Store>> reader = Store::Open(store_dir_, {});
  ASSERT_FALSE(reader.ok());
  EXPECT_NE(reader.status().message().find("already open in this process"), std::string::npos);
  writer.reset();
  EXPECT_TRUE(OpenStore(true));
}

// A mount's daemon lets go of the lock shortly after `fusermount3 -u` returns: a writer opening
// the store meanwhile waits for it instead of failing (an import run right after an unmount
// failed about one time in twenty). Here the holder lets go 200 ms after the writer starts:
// should the writer start later, it passes without waiting, and the test proves nothing but
// cannot fail wrongly.
TEST_F(StoreTest, WriterWaitsForALockLetGoWithinAMoment) {
  const int holder = ::open((store_dir_ + "/LOCK").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(holder, 0);
  ASSERT_EQ(::flock(holder, LOCK_EX), 0);
  std::thread release([holder] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ::close(holder);
  });
  auto writer = OpenStore(true);
  release.join();
  EXPECT_TRUE(writer);
}

TEST_F(StoreTest, DirectoriesSymlinksAndLookup) {
  auto store = OpenStore(true);
  ASSERT_TRUE(store);
  NewAttr mode750;
  mode750.mode = 0750;
  Result<InodeAttr> a = store->Mkdir(kRootInode, "a", mode750);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(store->Mkdir(kRootInode, "a", {}).status().code(), StatusCode::kExists);
  EXPECT_EQ(store->Mkdir(kRootInode, "x/y", {}).status().code(), StatusCode::kInvalidArgument);
  Result<InodeAttr> b = store->Mkdir(a->ino, "b", {});
  ASSERT_TRUE(b.ok());
  Result<InodeAttr> l = store->Symlink(b->ino, "link", "../target", {});
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(store->GetAttr(a->ino)->nlink, 3u);
  EXPECT_EQ(store->LookupPath("/a/b/link")->ino, l->ino);
  EXPECT_EQ(*store->ReadLink(l->ino), "../target");
  EXPECT_EQ(store->LookupPath("a/nope").status().code(), StatusCode::kNotFound);
  for (int i = 0; i < 30; ++i)
    ASSERT_TRUE(store->Mkdir(b->ino, Cat({"d", std::to_string(100 + i)}), {}).ok());
  // Paged listing: each call continues after the last name returned.
  std::vector<DirEntry> page;
  std::vector<std::string> names;
  std::string after;
  do {
    ASSERT_TRUE(store->ReadDir(b->ino, after, 7, page).ok());
    for (const DirEntry& e : page) names.push_back(e.name);
    if (!page.empty()) after = page.back().name;
  } while (!page.empty());
  ASSERT_EQ(names.size(), 31u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(names.back(), "link");
}

TEST_F(StoreTest, RandomRangeReadsMatchTheOriginal) {
  const std::string model = dir_ + "/m.safetensors", blob = dir_ + "/blob.bin";
  const Bytes model_bytes = MakeSafetensors(5, 300000, 1);
  const Bytes blob_bytes = RandomBytes(1000003, 2, 5);
  WriteAll(model, model_bytes);
  WriteAll(blob, blob_bytes);
  StoreOptions opts;
  opts.chunk_size = 64u << 10;
  opts.batch_bytes = 1u << 20;
  auto store = OpenStore(true, opts);
  ASSERT_TRUE(store);
  const AddResult m = Add(*store, model, "m.safetensors");
  const AddResult b = Add(*store, blob, "blob.bin");
  EXPECT_LT(m.frame_bytes, model_bytes.size() * 0.85) << "BF16 should compress";
  std::mt19937_64 rng(7);
  for (const auto& [ino, original] :
       {std::pair{m.attr.ino, &model_bytes}, {b.attr.ino, &blob_bytes}}) {
    EXPECT_TRUE(ReadFile(*store, ino, 0, original->size() + 10) == *original);
    for (int i = 0; i < 150; ++i) {
      const uint64_t off = rng() % (original->size() + 100);
      const size_t len = rng() % 3 == 0 ? rng() % 300000 : rng() % 5000;
      Bytes expect;
      if (off < original->size()) {
        expect.assign(original->begin() + off,
                      original->begin() + std::min<uint64_t>(original->size(), off + len));
      }
      ASSERT_TRUE(ReadFile(*store, ino, off, len) == expect) << off << "+" << len;
    }
    // Chunk locations tile the file with no gaps.
    Result<std::vector<ChunkLocation>> chunks = store->ChunksInRange(ino, 0, UINT64_MAX);
    ASSERT_TRUE(chunks.ok());
    uint64_t next = 0;
    for (const ChunkLocation& c : *chunks) {
      EXPECT_EQ(c.file_offset, next);
      next += c.raw_size;
    }
    EXPECT_EQ(next, original->size());
    Result<std::vector<ChunkLocation>> one = store->ChunksInRange(ino, next / 2, 1);
    ASSERT_TRUE(one.ok());
    ASSERT_EQ(one->size(), 1u);
    EXPECT_LE((*one)[0].file_offset, next / 2);
    EXPECT_GT((*one)[0].file_offset + (*one)[0].raw_size, next / 2);
  }
}

TEST_F(StoreTest, DedupAndReplace) {
  const std::string path = dir_ + "/m.safetensors";
  const Bytes v1 = MakeSafetensors(4, 200000, 3);
  WriteAll(path, v1);
  auto store = OpenStore(true);
  ASSERT_TRUE(store);
  const AddResult first = Add(*store, path, "a.safetensors");
  EXPECT_GT(first.new_frame_bytes, 0u);
  const StoreUsage before = *store->GetStoreUsage();
  const AddResult second = Add(*store, path, "b.safetensors");
  EXPECT_EQ(second.new_chunks, 0u);
  EXPECT_EQ(second.new_frame_bytes, 0u);
  const StoreUsage after = *store->GetStoreUsage();
  EXPECT_EQ(after.pack_bytes, before.pack_bytes);
  EXPECT_EQ(after.chunk_frame_bytes, before.chunk_frame_bytes);
  EXPECT_EQ(after.logical_bytes, 2 * v1.size());
  EXPECT_EQ(after.pack_bytes, after.chunk_frame_bytes) << "packs hold exactly the frames";

  // Replacing b keeps its inode, reads the new bytes, and frees nothing that a still uses.
  Bytes v2 = v1;
  for (size_t i = v2.size() / 2; i < v2.size(); i += 4099) v2[i] ^= 0x55;
  WriteAll(path, v2);
  const AddResult replaced = Add(*store, path, "b.safetensors");
  {  // Replacing with attributes: the new version's xattrs replace the old ones, in its commit.
    int fd = ::open(path.c_str(), O_RDONLY);
    NewAttr with;
    with.xattrs = {{"user.a", "1"}, {"user.b", std::string("\0x", 2)}};
    ASSERT_TRUE(store->AddFile(kRootInode, "x.safetensors", fd, with).ok());
    with.xattrs = {{"user.c", "3"}};
    ASSERT_TRUE(store->AddFile(kRootInode, "x.safetensors", fd, with).ok());
    ::close(fd);
    const uint64_t x = store->LookupPath("x.safetensors")->ino;
    std::vector<std::string> names;
    ASSERT_TRUE(store->ListXattr(x, names).ok());
    EXPECT_EQ(names, std::vector<std::string>{"user.c"});
    EXPECT_EQ(store->GetXattr(x, "user.a").status().code(), StatusCode::kNotFound);
    EXPECT_EQ(*store->GetXattr(x, "user.c"), "3");
  }
  EXPECT_EQ(replaced.attr.ino, second.attr.ino);
  EXPECT_GT(replaced.new_chunks, 0u);
  EXPECT_LT(replaced.new_chunks, replaced.chunks) << "the unchanged half is shared";
  EXPECT_TRUE(ReadFile(*store, replaced.attr.ino, 0, v2.size()) == v2);
  EXPECT_TRUE(ReadFile(*store, first.attr.ino, 0, v1.size()) == v1);
  EXPECT_EQ(store->GetStoreUsage()->unreferenced_frame_bytes, 0u) << "a still holds v1's chunks";
  // Replacing a too leaves v1's changed half unreferenced (for gc).
  Add(*store, path, "a.safetensors");
  EXPECT_GT(store->GetStoreUsage()->unreferenced_frame_bytes, 0u);
  Result<CheckReport> check = store->Check(true);
  ASSERT_TRUE(check.ok());
  EXPECT_TRUE(check->clean()) << check->problems[0].what;
}

TEST_F(StoreTest, GcReclaimsUnreferencedChunksAndSparsePacks) {
  const std::string path = dir_ + "/f.bin";
  std::vector<Bytes> versions;
  auto store = OpenStore(true);
  ASSERT_TRUE(store);
  const Bytes keep = RandomBytes(700000, 30, 11);
  WriteAll(path, keep);
  const uint64_t keep_ino = Add(*store, path, "keep.bin").attr.ino;
  // Five versions of one file: four become garbage.
  uint64_t ino = 0;
  for (int v = 0; v < 5; ++v) {
    versions.push_back(RandomBytes(900000, 40 + v, 13));
    WriteAll(path, versions.back());
    ino = Add(*store, path, "churn.bin").attr.ino;
  }
  const StoreUsage before = *store->GetStoreUsage();
  ASSERT_GT(before.unreferenced_frame_bytes, before.chunk_frame_bytes);

  Result<GcReport> gc = store->Gc(0.5);
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  EXPECT_GT(gc->chunks_dropped, 0u);
  EXPECT_EQ(gc->packs_removed, 1u);
  const StoreUsage after = *store->GetStoreUsage();
  EXPECT_EQ(after.unreferenced_frame_bytes, 0u);
  EXPECT_EQ(after.pack_bytes, after.chunk_frame_bytes);
  EXPECT_EQ(gc->bytes_reclaimed, before.pack_bytes - after.pack_bytes);
  EXPECT_FALSE(fs::exists(store_dir_ + "/packs/pack-000001.znp"));
  EXPECT_TRUE(ReadFile(*store, ino, 0, 1 << 20) == versions.back());
  EXPECT_TRUE(ReadFile(*store, keep_ino, 0, 1 << 20) == keep);
  EXPECT_TRUE(store->Check(true)->clean());

  // New files go to the new pack; the store reopens consistent; a second gc has nothing to do.
  WriteAll(path, versions[0]);
  const uint64_t again = Add(*store, path, "again.bin").attr.ino;
  store.reset();
  store = OpenStore(true);
  ASSERT_TRUE(store);
  EXPECT_TRUE(ReadFile(*store, again, 0, 1 << 20) == versions[0]);
  EXPECT_TRUE(store->Check(true)->clean());
  Result<GcReport> second = store->Gc(0.5);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->frames_moved, 0u);
  EXPECT_EQ(second->chunks_dropped, 0u);
}

TEST_F(StoreTest, ImportExportTreeIsByteExact) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src + "/deep/a/b/c/d/e/f/g/h");
  fs::create_directories(src + "/empty_dir");
  WriteAll(src + "/empty.bin", {});
  WriteAll(src + "/deep/a/b/c/d/e/f/g/h/leaf.txt", RandomBytes(12345, 4, 40));
  WriteAll(src + "/模型 ünïcødé ✓.bin", RandomBytes(777, 5));
  WriteAll(src + "/model.safetensors", MakeSafetensors(6, 500000, 6));  // ~6 MB of BF16
  WriteAll(src + "/exec.sh", RandomBytes(100, 7, 60));
  ::chmod((src + "/exec.sh").c_str(), 0751);
  fs::create_symlink("deep/a/b", src + "/rel_link");
  fs::create_symlink("/etc/hostname", src + "/abs_link");
  fs::create_symlink("missing", src + "/dangling");
  ::mkfifo((src + "/fifo").c_str(), 0644);
  // Extended attributes, where the temp filesystem has user.* attributes.
  const std::string xattr_value("fp8 \0 scales", 13);
  const bool have_xattrs = ::setxattr((src + "/model.safetensors").c_str(), "user.zipnn.test",
                                      xattr_value.data(), xattr_value.size(), 0) == 0 &&
                           ::setxattr((src + "/deep").c_str(), "user.dir", "d", 1, 0) == 0;
  const timespec old_times[2] = {{1000000000, 123456789}, {1100000000, 987654321}};
  ::utimensat(AT_FDCWD, (src + "/model.safetensors").c_str(), old_times, 0);
  ::utimensat(AT_FDCWD, (src + "/deep").c_str(), old_times, 0);

  TreeSummary imported;
  std::vector<std::string> skipped;
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    ImportOptions opts;
    opts.skipped = [&](const std::string& p, const std::string&) { skipped.push_back(p); };
    Status st = ImportTree(*store, src, kRootInode, "src", opts, imported);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  EXPECT_EQ(skipped, std::vector<std::string>{src + "/fifo"});
  EXPECT_EQ(imported.files, 5u);
  EXPECT_EQ(imported.symlinks, 3u);
  // The fifo is not exported: remove it, keeping the directory's times as they were imported.
  struct stat src_st;
  ASSERT_EQ(::lstat(src.c_str(), &src_st), 0);
  fs::remove(src + "/fifo");
  const timespec src_times[2] = {src_st.st_atim, src_st.st_mtim};
  ::utimensat(AT_FDCWD, src.c_str(), src_times, 0);

  auto store = OpenStore(false);
  ASSERT_TRUE(store);
  Result<InodeAttr> top = store->LookupPath("/src");
  ASSERT_TRUE(top.ok());
  TreeSummary exported;
  Status st = ExportTree(*store, top->ino, dir_ + "/out", exported);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ExpectSameTree(src, dir_ + "/out");
  EXPECT_EQ(exported.raw_bytes, imported.raw_bytes);
  if (have_xattrs) {
    Result<InodeAttr> model = store->LookupPath("/src/model.safetensors");
    ASSERT_TRUE(model.ok());
    EXPECT_EQ(*store->GetXattr(model->ino, "user.zipnn.test"), xattr_value);
    std::vector<std::string> names;
    ASSERT_TRUE(store->ListXattr(store->LookupPath("/src/deep")->ino, names).ok());
    EXPECT_EQ(names, std::vector<std::string>{"user.dir"});
    std::string got(64, '\0');
    const ssize_t n = ::getxattr((dir_ + "/out/model.safetensors").c_str(), "user.zipnn.test",
                                 got.data(), got.size());
    ASSERT_EQ(n, static_cast<ssize_t>(xattr_value.size()));
    got.resize(static_cast<size_t>(n));
    EXPECT_EQ(got, xattr_value);
  } else {
    std::printf("note: %s has no user.* xattrs; their round trip was not tested\n", dir_.c_str());
  }
  // Exporting again onto the copy, as cp -a does, merges directories and replaces files and
  // symlinks whole: a file changed since, or a symlink put in a file's place, comes back as
  // stored, and the symlink's target is not written through. (Refused before: "File exists".)
  WriteAll(dir_ + "/out/exec.sh", RandomBytes(5, 8));
  WriteAll(dir_ + "/elsewhere", RandomBytes(5, 9));
  fs::remove(dir_ + "/out/empty.bin");
  fs::create_symlink(dir_ + "/elsewhere", dir_ + "/out/empty.bin");
  fs::remove(dir_ + "/out/rel_link");
  WriteAll(dir_ + "/out/rel_link", RandomBytes(5, 10));
  fs::remove_all(dir_ + "/out/deep/a/b/c/d/e/f/g/h");
  ASSERT_EQ(::utimensat(AT_FDCWD, (dir_ + "/out/deep/a/b/c/d/e/f/g").c_str(), nullptr, 0), 0);
  TreeSummary again;
  st = ExportTree(*store, top->ino, dir_ + "/out", again);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ExpectSameTree(src, dir_ + "/out");
  EXPECT_EQ(ReadAll(dir_ + "/elsewhere"), RandomBytes(5, 9));
  for (const auto& e : fs::directory_iterator(dir_ + "/out"))
    EXPECT_EQ(e.path().filename().string().find(".zipnnfs-export"), std::string::npos)
        << "a temporary name was left: " << e.path();
}

// What cannot be exported over what is there (a directory where a file goes, a file where a
// directory goes) is told and left out, and the rest is exported, as cp -a does.
TEST_F(StoreTest, ExportLeavesOutWhatItCannotOverwrite) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src + "/dir");
  WriteAll(src + "/dir/inner", RandomBytes(100, 1));
  WriteAll(src + "/file", RandomBytes(200, 2));
  WriteAll(src + "/zlast", RandomBytes(300, 3));
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    TreeSummary imported;
    ASSERT_TRUE(ImportTree(*store, src, kRootInode, "src", {}, imported).ok());
  }
  const std::string out = dir_ + "/out";
  fs::create_directories(out + "/file");      // a directory in the file's place
  WriteAll(out + "/dir", RandomBytes(7, 4));  // a file in the directory's place
  auto store = OpenStore(false);
  ASSERT_TRUE(store);
  std::vector<std::string> failed;
  ExportOptions opts;
  opts.failed = [&](const Status& why) { failed.push_back(why.message()); };
  TreeSummary exported;
  Status st = ExportTree(*store, store->LookupPath("/src")->ino, out, exported, opts);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_EQ(failed.size(), 2u);
  EXPECT_NE(failed[0].find(out + "/dir: cannot overwrite a non-directory"), std::string::npos)
      << failed[0];
  EXPECT_NE(failed[1].find(out + "/file: cannot overwrite a directory"), std::string::npos)
      << failed[1];
  EXPECT_EQ(exported.failed, 2u);
  EXPECT_EQ(ReadAll(out + "/zlast"), RandomBytes(300, 3));
  EXPECT_EQ(ReadAll(out + "/dir"), RandomBytes(7, 4));
  EXPECT_TRUE(fs::is_directory(out + "/file"));
  // Without a handler the first failure stops the export.
  EXPECT_EQ(ExportTree(*store, store->LookupPath("/src")->ino, out, exported).code(),
            StatusCode::kExists);
}

TEST_F(StoreTest, CorpusRoundTrip) {
  const char* env = std::getenv("ZIPNN_CORPUS");
  const std::string corpus = env != nullptr ? env : ZIPNN_CORPUS_DIR;
  if (!fs::is_directory(corpus)) GTEST_SKIP() << "no corpus at " << corpus << " (set ZIPNN_CORPUS)";
  {
    auto store = OpenStore(true);
    ASSERT_TRUE(store);
    TreeSummary s;
    Status st = ImportTree(*store, corpus, kRootInode, "corpus", {}, s);
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_LT(s.new_frame_bytes, s.raw_bytes);
  }
  auto store = OpenStore(false);
  TreeSummary out;
  Status st = ExportTree(*store, store->LookupPath("corpus")->ino, dir_ + "/out", out);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ExpectSameTree(corpus, dir_ + "/out");
}

TEST_F(StoreTest, DamagedFrameFailsOnlyItsRange) {
  const std::string path = dir_ + "/blob.bin";
  const Bytes bytes = RandomBytes(4 * 65536, 9, 3);
  WriteAll(path, bytes);
  StoreOptions opts;
  opts.chunk_size = 65536;
  uint64_t ino = 0;
  ChunkLocation victim;
  {
    auto store = OpenStore(true, opts);
    ASSERT_TRUE(store);
    ino = Add(*store, path, "blob.bin").attr.ino;
    victim = (*store->ChunksInRange(ino, 2 * 65536, 1))[0];
  }
  {  // Flip one payload byte of the third chunk's frame.
    const std::string pack = store_dir_ + "/packs/pack-000001.znp";
    int fd = ::open(pack.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint8_t b;
    const off_t at = static_cast<off_t>(victim.pack_offset + victim.frame_size - 3);
    ASSERT_EQ(::pread(fd, &b, 1, at), 1);
    b ^= 0x10;
    ASSERT_EQ(::pwrite(fd, &b, 1, at), 1);
    ::close(fd);
  }
  auto store = OpenStore(false);
  Bytes out(100);
  Result<size_t> bad = store->Read(ino, 2 * 65536 + 10, out);
  ASSERT_FALSE(bad.ok());
  const std::string range = Cat({"inode ", std::to_string(ino), " bytes [131072, 196608)"});
  EXPECT_NE(bad.status().message().find(range), std::string::npos) << bad.status().message();
  EXPECT_TRUE(ReadFile(*store, ino, 0, 2 * 65536) ==
              Bytes(bytes.begin(), bytes.begin() + 2 * 65536));
  EXPECT_TRUE(ReadFile(*store, ino, 3 * 65536, 65536) ==
              Bytes(bytes.begin() + 3 * 65536, bytes.end()));
  // The check names the file and the damaged range, and nothing else.
  Result<CheckReport> check = store->Check(true);
  ASSERT_TRUE(check.ok()) << check.status().ToString();
  ASSERT_EQ(check->problems.size(), 1u);
  EXPECT_EQ(check->problems[0].ino, ino);
  EXPECT_EQ(check->problems[0].begin, 131072u);
  EXPECT_EQ(check->problems[0].end, 196608u);
  EXPECT_EQ(check->frames_verified, 4u);
  // Export refuses the file, naming it and the damaged range.
  TreeSummary exported;
  const Status ex = ExportTree(*store, ino, dir_ + "/blob.out", exported);
  EXPECT_EQ(ex.code(), bad.status().code()) << ex.ToString();
  EXPECT_NE(ex.message().find("blob.out"), std::string::npos) << ex.message();
  EXPECT_NE(ex.message().find(range), std::string::npos) << ex.message();
}

// A child imports files and is killed at a random point (after it reported some progress through
// a pipe); the store must open and hold each file complete or not at all.
TEST_F(StoreTest, KilledImportLeavesEachFileCompleteOrAbsent) {
  std::vector<Bytes> files;
  for (int i = 0; i < 4; ++i) {
    files.push_back(i % 2 ? RandomBytes(600000 + i * 1000, 10 + i, 9)
                          : MakeSafetensors(3, 100000, 20 + i));
    WriteAll(Cat({dir_, "/f", std::to_string(i)}), files.back());
  }
  std::mt19937_64 rng(11);
  const int kRounds = 50;
  for (int round = 0; round < kRounds; ++round) {
    auto child = [&](const std::function<void()>& tick) {
      StoreOptions opts;
      opts.writable = true;
      opts.threads = 1;
      opts.chunk_size = 32u << 10;
      opts.batch_bytes = 64u << 10;
      Result<std::unique_ptr<Store>> s = Store::Open(store_dir_, opts);
      if (!s.ok()) return 3;
      for (int i = 0; i < 4; ++i) {
        int fd = ::open(Cat({dir_, "/f", std::to_string(i)}).c_str(), O_RDONLY);
        const std::string name = Cat({"r", std::to_string(round), "_f", std::to_string(i)});
        Result<AddResult> r =
            (*s)->AddFile(kRootInode, name, fd, {}, [&](const AddProgress&) { tick(); });
        if (!r.ok()) return 5;
        ::close(fd);
      }
      return 0;
    };
    // Each file reports ~10 batches; kill somewhere among all of them (or let it finish).
    EXPECT_TRUE(test::RunAndKill(child, 1 + static_cast<int>(rng() % 45)));

    auto store = OpenStore(true);  // a writer: cuts the uncommitted pack tail
    ASSERT_TRUE(store);
    for (int r = 0; r <= round; ++r) {
      for (int i = 0; i < 4; ++i) {
        Result<InodeAttr> a =
            store->LookupPath(Cat({"r", std::to_string(r), "_f", std::to_string(i)}));
        if (!a.ok()) {
          EXPECT_EQ(a.status().code(), StatusCode::kNotFound);
          continue;
        }
        EXPECT_TRUE(ReadFile(*store, a->ino, 0, files[i].size() + 1) == files[i])
            << "round " << r << " file " << i;
      }
    }
    Result<CheckReport> check = store->Check(true);
    ASSERT_TRUE(check.ok());
    EXPECT_TRUE(check->clean()) << "round " << round << ": " << check->problems[0].what;
    const StoreUsage u = *store->GetStoreUsage();
    EXPECT_EQ(u.pack_bytes, u.chunk_frame_bytes + u.unreferenced_frame_bytes);
    EXPECT_EQ(fs::file_size(store_dir_ + "/packs/pack-000001.znp"), u.pack_bytes);
  }
}

}  // namespace
}  // namespace zipnn::index

namespace zipnn::index {
namespace {

// The offset-index target: finding the chunk of a byte offset in a file of 10^6 chunks, index in
// page cache. A measurement, not a check: run with --gtest_also_run_disabled_tests.
TEST_F(StoreTest, DISABLED_OffsetLookupSpeed) {
  // A sparse 4 GB file of 4 KiB chunks: the extents are real, their chunks all one (zero) chunk.
  const size_t kChunks = 1000000, kChunkSize = 4096;
  const std::string path = dir_ + "/many.bin";
  WriteAll(path, {});
  fs::resize_file(path, kChunks * kChunkSize);
  StoreOptions opts;
  opts.chunk_size = kChunkSize;
  auto store = OpenStore(true, opts);
  ASSERT_TRUE(store);
  const auto t0 = std::chrono::steady_clock::now();
  const AddResult r = Add(*store, path, "many.bin");
  const auto t1 = std::chrono::steady_clock::now();
  ASSERT_EQ(r.chunks, kChunks);
  std::mt19937_64 rng(1);
  const int kLookups = 200000;
  uint64_t found = 0;
  const auto t2 = std::chrono::steady_clock::now();
  for (int i = 0; i < kLookups; ++i) {
    Result<std::vector<ChunkLocation>> c =
        store->ChunksInRange(r.attr.ino, rng() % (kChunks * kChunkSize), 1);
    found += c.ok() ? c->size() : 0;
  }
  const auto t3 = std::chrono::steady_clock::now();
  EXPECT_EQ(found, static_cast<uint64_t>(kLookups));
  const double us = std::chrono::duration<double, std::micro>(t3 - t2).count() / kLookups;
  std::printf("import of %zu chunks: %.2f s; ChunksInRange of one byte: %.2f us per lookup\n",
              kChunks, std::chrono::duration<double>(t1 - t0).count(), us);
}

}  // namespace
}  // namespace zipnn::index
