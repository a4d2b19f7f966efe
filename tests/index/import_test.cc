// Tests of bulk imports (Store::BeginBulkAdd behind ImportTree and AddFile): a 1 GiB model, files
// that vanish or shrink mid-import, a full disk, and dedup between files compressed at once.
// Real LMDB and real files in temp dirs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "codec/container.h"
#include "index/index.h"
#include "index/tree.h"
#include "tests/index/store_test_util.h"
#include "tests/tools/cli_util.h"

namespace zipnn::index {
namespace {

namespace fs = std::filesystem;
using test::Bytes;
using test::RandomBytes;
using test::WriteAll;

// The tensor bytes of a generated BF16 model, block by block and reproducibly: Gaussian-like
// values (a table of 4096, picked by a fast PRNG) so no two chunks are alike.
class Bf16Stream {
 public:
  explicit Bf16Stream(uint64_t seed) : state_(seed | 1) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> gauss(0.0f, 0.02f);
    for (uint16_t& v : table_) {
      const float f = gauss(rng);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      v = static_cast<uint16_t>(bits >> 16);
    }
  }
  void Next(std::span<uint8_t> out) {  // out.size() even
    for (size_t i = 0; i + 1 < out.size(); i += 2) {
      state_ ^= state_ << 13, state_ ^= state_ >> 7, state_ ^= state_ << 17;
      const uint16_t v = table_[state_ & 4095];
      out[i] = static_cast<uint8_t>(v);
      out[i + 1] = static_cast<uint8_t>(v >> 8);
    }
  }

 private:
  uint64_t state_;
  uint16_t table_[4096];
};

std::string SafetensorsHeader(uint64_t tensor_bytes) {
  std::string json = "{\"w\":{\"dtype\":\"BF16\",\"shape\":[" + std::to_string(tensor_bytes / 2) +
                     "],\"data_offsets\":[0," + std::to_string(tensor_bytes) + "]}}";
  while (json.size() % 8 != 0) json += ' ';
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json;
}

class ImportTest : public test::StoreDirTest {
 protected:
  // A 6 MiB tmpfs under the test directory, for disk-full tests, and store_dir_ a store path in
  // it (unmounted when the result goes).
  std::unique_ptr<zipnn::test::SmallTmpfs> StoreOnSmallTmpfs() {
    store_dir_ = dir_ + "/small/store";
    return std::make_unique<zipnn::test::SmallTmpfs>(dir_ + "/small", "6m");
  }
  // Small chunks and batches: an 8 MiB file is many tasks, more than are ever in flight.
  static StoreOptions SmallBatches() {
    StoreOptions opts;
    opts.chunk_size = 64u << 10;
    opts.batch_bytes = 256u << 10;
    return opts;
  }
  // Makes `io` remove `victim` once the import has started on `busy`; *removed says it did.
  static void RemoveWhileImporting(ImportOptions& io, const std::string& busy,
                                   const std::string& victim, bool* removed) {
    io.progress = [=](const std::string& path, const TreeSummary&) {
      if (!*removed && path == busy) *removed = fs::remove(victim);
    };
  }
  // Store file `path` holds exactly `want`.
  static void ExpectStored(Store& store, const std::string& path, const Bytes& want) {
    Result<InodeAttr> a = store.LookupPath(path);
    ASSERT_TRUE(a.ok()) << path << ": " << a.status().ToString();
    EXPECT_EQ(a->size, want.size()) << path;
    Bytes got(want.size());
    ASSERT_EQ(*store.Read(a->ino, 0, got), want.size()) << path;
    EXPECT_TRUE(got == want) << path;
  }

  std::unique_ptr<Store> Open(bool writable, StoreOptions opts = {}) {
    return OpenStore(writable, opts);
  }
};

// A generated tree with a 1 GiB BF16 model: import, then export byte-exact, plus random ranges.
TEST_F(ImportTest, GigabyteBf16ModelRoundTrip) {
  constexpr uint64_t kTensorBytes = 1ull << 30;
  constexpr size_t kBlock = 16u << 20;
  const std::string src = dir_ + "/src";
  fs::create_directories(src + "/sub/dir");
  const std::string header = SafetensorsHeader(kTensorBytes);
  {
    std::ofstream out(src + "/sub/model ✓.safetensors", std::ios::binary);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    Bf16Stream gen(42);
    Bytes block(kBlock);
    for (uint64_t done = 0; done < kTensorBytes; done += kBlock) {
      gen.Next(block);
      out.write(reinterpret_cast<const char*>(block.data()), kBlock);
    }
    ASSERT_TRUE(out.good());
  }
  WriteAll(src + "/config.json", Bytes{'{', '}'});
  WriteAll(src + "/sub/dir/empty", {});
  fs::create_symlink("sub/model ✓.safetensors", src + "/link");

  TreeSummary imported;
  {
    auto store = Open(true);
    ASSERT_TRUE(store);
    Status st = ImportTree(*store, src, kRootInode, "m", {}, imported);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  EXPECT_EQ(imported.files, 3u);
  EXPECT_EQ(imported.raw_bytes, kTensorBytes + header.size() + 2);
  EXPECT_LT(imported.new_frame_bytes, kTensorBytes * 3 / 4) << "BF16 should compress";
  fs::remove(src + "/sub/model ✓.safetensors");  // compared against the generator below

  auto store = Open(false);
  ASSERT_TRUE(store);
  Result<InodeAttr> top = store->LookupPath("/m");
  ASSERT_TRUE(top.ok());
  TreeSummary exported;
  Status st = ExportTree(*store, top->ino, dir_ + "/out", exported);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(exported.raw_bytes, imported.raw_bytes);
  EXPECT_EQ(fs::read_symlink(dir_ + "/out/link"), "sub/model ✓.safetensors");
  EXPECT_EQ(fs::file_size(dir_ + "/out/sub/dir/empty"), 0u);
  {
    std::ifstream in(dir_ + "/out/sub/model ✓.safetensors", std::ios::binary);
    std::string got(header.size(), '\0');
    in.read(got.data(), static_cast<std::streamsize>(got.size()));
    ASSERT_EQ(got, header);
    Bf16Stream gen(42);
    Bytes want(kBlock), have(kBlock);
    for (uint64_t done = 0; done < kTensorBytes; done += kBlock) {
      gen.Next(want);
      in.read(reinterpret_cast<char*>(have.data()), kBlock);
      ASSERT_TRUE(in.good() && want == have) << "differs in block at " << done;
    }
    EXPECT_EQ(in.peek(), EOF);
  }
  // Random byte ranges through the store against the exported (verified) file.
  Result<InodeAttr> model = store->LookupPath("/m/sub/model ✓.safetensors");
  ASSERT_TRUE(model.ok());
  std::ifstream in(dir_ + "/out/sub/model ✓.safetensors", std::ios::binary);
  std::mt19937_64 rng(3);
  for (int i = 0; i < 50; ++i) {
    const uint64_t off = rng() % model->size, len = 1 + rng() % (1u << 20);
    Bytes got(len), want(len);
    Result<size_t> n = store->Read(model->ino, off, got);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    got.resize(*n);
    in.clear();
    in.seekg(static_cast<std::streamoff>(off));
    in.read(reinterpret_cast<char*>(want.data()), static_cast<std::streamsize>(len));
    want.resize(static_cast<size_t>(in.gcount()));
    ASSERT_TRUE(got == want) << "range at " << off;
  }
}

// A file that vanishes before its turn: a clear error naming it; the entries before it are
// committed, and the store is consistent.
TEST_F(ImportTest, FileVanishingDuringImport) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src);
  const Bytes big = RandomBytes(8u << 20, 1);
  WriteAll(src + "/a", big);
  WriteAll(src + "/b", RandomBytes(1000, 2));
  {
    auto store = Open(true, SmallBatches());
    ASSERT_TRUE(store);
    ImportOptions io;
    bool removed = false;
    RemoveWhileImporting(io, src + "/a", src + "/b", &removed);
    TreeSummary summary;
    Status st = ImportTree(*store, src, kRootInode, "src", io, summary);
    ASSERT_TRUE(removed);
    EXPECT_EQ(st.code(), StatusCode::kNotFound) << st.ToString();
    EXPECT_NE(st.message().find(src + "/b"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("vanished"), std::string::npos) << st.message();
  }
  auto store = Open(true);
  ASSERT_TRUE(store);
  ExpectClean(*store);
  ExpectStored(*store, "/src/a", big);  // (entries before the failure are committed)
  EXPECT_EQ(store->LookupPath("/src/b").status().code(), StatusCode::kNotFound);
}

// With ImportOptions::failed, a file that vanishes is told and left out, as cp -a does, and the
// entries after it are imported (the import stopped at it before).
TEST_F(ImportTest, VanishedFileIsLeftOutAndTheRestImported) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src);
  const Bytes big = RandomBytes(8u << 20, 1), after = RandomBytes(5000, 5);
  WriteAll(src + "/a", big);
  WriteAll(src + "/b", RandomBytes(1000, 2));
  WriteAll(src + "/c", after);
  auto store = Open(true, SmallBatches());
  ASSERT_TRUE(store);
  ImportOptions io;
  bool removed = false;
  RemoveWhileImporting(io, src + "/a", src + "/b", &removed);
  std::vector<std::pair<std::string, Status>> failed;
  io.failed = [&](const std::string& path, const Status& why) { failed.emplace_back(path, why); };
  TreeSummary summary;
  Status st = ImportTree(*store, src, kRootInode, "src", io, summary);
  ASSERT_TRUE(removed);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(summary.failed, 1u);
  EXPECT_EQ(summary.files, 2u);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].first, src + "/b");
  EXPECT_NE(failed[0].second.message().find("vanished"), std::string::npos)
      << failed[0].second.ToString();
  EXPECT_EQ(store->LookupPath("/src/b").status().code(), StatusCode::kNotFound);
  ExpectStored(*store, "/src/a", big);
  ExpectStored(*store, "/src/c", after);
  ExpectClean(*store);
}

// A file holding more than its size (/proc files have size 0) is left out, not stored empty.
TEST_F(ImportTest, FileHoldingMoreThanItsSizeIsLeftOut) {
  if (!fs::exists("/proc/version") || fs::file_size("/proc/version") != 0)
    GTEST_SKIP() << "no /proc/version of size 0";
  auto store = Open(true);
  ASSERT_TRUE(store);
  ImportOptions io;
  std::vector<std::pair<std::string, Status>> failed;
  io.failed = [&](const std::string& path, const Status& why) { failed.emplace_back(path, why); };
  TreeSummary summary;
  ASSERT_TRUE(ImportTree(*store, "/proc/version", kRootInode, "version", io, summary).ok());
  EXPECT_EQ(summary.files, 0u);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_NE(failed[0].second.message().find("holds more than its size"), std::string::npos)
      << failed[0].second.ToString();
  EXPECT_EQ(store->LookupPath("/version").status().code(), StatusCode::kNotFound);
  ExpectClean(*store);
}

// A file left out after its batches claimed chunks (the first batch to meet a new chunk codes it;
// later batches leave it to that one): a later file with the same chunks must still get frames
// for them, or it would commit extents of chunks no pack holds.
TEST_F(ImportTest, FileLeftOutAfterItsChunksWereClaimed) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src);
  const Bytes big = RandomBytes(8u << 20, 6);
  const Bytes head(big.begin(), big.begin() + (1u << 20));
  WriteAll(src + "/a", big);
  WriteAll(src + "/b", head);  // a's first 16 chunks
  StoreOptions opts;
  opts.chunk_size = 64u << 10;
  opts.batch_bytes = 256u << 10;  // a chunk per batch: only a's first ones are read before the cut
  {
    auto store = Open(true, opts);
    ASSERT_TRUE(store);
    ImportOptions io;
    bool cut = false;
    io.progress = [&](const std::string& path, const TreeSummary&) {
      if (!cut && path == src + "/a") cut = ::truncate((src + "/a").c_str(), 1u << 20) == 0;
    };
    std::vector<std::string> failed;
    io.failed = [&](const std::string& path, const Status&) { failed.push_back(path); };
    TreeSummary summary;
    Status st = ImportTree(*store, src, kRootInode, "src", io, summary);
    ASSERT_TRUE(cut);
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(failed, std::vector<std::string>{src + "/a"});
    EXPECT_EQ(summary.failed, 1u);
  }
  auto store = Open(true);
  ASSERT_TRUE(store);
  ExpectClean(*store);
  EXPECT_EQ(store->LookupPath("/src/a").status().code(), StatusCode::kNotFound);
  ExpectStored(*store, "/src/b", head);
}

// Times past what int64 nanoseconds hold (2262; ext4 goes to 2446) are clamped to the end of the
// range, not wrapped around to 1677 (signed overflow).
TEST_F(ImportTest, TimesBeyondTheStoresRangeAreClamped) {
  const std::string path = dir_ + "/future";
  WriteAll(path, RandomBytes(10, 7));
  const timespec t[2] = {{10000000000, 0}, {1600000000, 5}};  // atime in 2286
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), t, 0), 0);
  auto store = Open(true);
  ASSERT_TRUE(store);
  TreeSummary summary;
  ImportOptions io;
  std::vector<std::string> told;  // (it was silent)
  io.skipped = [&](const std::string& p, const std::string& why) {
    told.push_back(p + ": " + why);
  };
  ASSERT_TRUE(ImportTree(*store, path, kRootInode, "future", io, summary).ok());
  Result<InodeAttr> a = store->LookupPath("/future");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->atime_ns, INT64_MAX);
  EXPECT_EQ(a->mtime_ns, 1600000000000000005);
  ASSERT_EQ(told.size(), 1u);
  EXPECT_NE(told[0].find(path + ": a time outside 1677-2262"), std::string::npos) << told[0];
  EXPECT_EQ(summary.skipped, 0u);
}

// Importing again where an entry changed kind, as cp -a does: a file and a symlink replace each
// other; a directory and a non-directory do not (told, left out with what it holds), and the rest
// goes on (the first such entry stopped the import: "'x' exists").
TEST_F(ImportTest, ReimportWhereEntriesChangedKind) {
  const std::string a = dir_ + "/a/m", b = dir_ + "/b/m";
  fs::create_directories(a + "/d");
  fs::create_directories(b + "/f/sub");
  WriteAll(a + "/d/inner", RandomBytes(100, 1));
  WriteAll(a + "/f", RandomBytes(200, 2));
  WriteAll(a + "/x", RandomBytes(300000, 3));
  fs::create_symlink("d", a + "/s");
  WriteAll(b + "/d", RandomBytes(10, 4));
  WriteAll(b + "/f/sub/deeper", RandomBytes(20, 5));
  WriteAll(b + "/s", RandomBytes(30, 6));
  fs::create_symlink("s", b + "/x");
  WriteAll(b + "/z", RandomBytes(40, 7));
  auto store = Open(true);
  ASSERT_TRUE(store);
  TreeSummary first;
  ASSERT_TRUE(ImportTree(*store, a, kRootInode, "m", {}, first).ok());
  std::vector<std::string> failed;
  ImportOptions io;
  io.failed = [&](const std::string& path, const Status& why) {
    failed.push_back(path + ": " + why.message());
  };
  TreeSummary second;
  Status st = ImportTree(*store, b, kRootInode, "m", io, second);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_EQ(failed.size(), 2u) << ::testing::PrintToString(failed);
  EXPECT_NE(failed[0].find("cannot overwrite a directory with a non-directory"), std::string::npos)
      << failed[0];
  EXPECT_NE(failed[0].find(b + "/d"), std::string::npos) << failed[0];
  EXPECT_NE(failed[1].find("cannot overwrite a non-directory with a directory"), std::string::npos)
      << failed[1];
  EXPECT_EQ(failed[1].rfind(b + "/f: ", 0), 0u) << failed[1];  // (it named 'f' alone)
  EXPECT_EQ(second.failed, 2u);
  EXPECT_EQ(store->LookupPath("/m/d")->kind, InodeKind::kDirectory);
  EXPECT_EQ(store->LookupPath("/m/f")->kind, InodeKind::kFile);
  EXPECT_EQ(store->LookupPath("/m/x")->kind, InodeKind::kSymlink);
  EXPECT_EQ(*store->ReadLink(store->LookupPath("/m/x")->ino), "s");
  ASSERT_EQ(store->LookupPath("/m/s")->kind, InodeKind::kFile);
  ExpectStored(*store, "/m/s", RandomBytes(30, 6));
  EXPECT_TRUE(store->LookupPath("/m/z").ok()) << "entries after the refused ones are imported";
  ExpectClean(*store);  // (the replaced file's chunks lost their references)
  Result<GcReport> gc = store->Gc();
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  EXPECT_GE(gc->chunks_dropped, 1u) << "the replaced file's chunks were freed";
  ExpectClean(*store);
}

// Hard links are kept, as cp -a keeps them: the names of one file are one inode in the store,
// and export makes them one file again. Imported again, they stay one file; a name that is no
// longer a link becomes a file of its own.
TEST_F(ImportTest, HardLinksAreKept) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src + "/sub");
  const Bytes data = RandomBytes(300000, 1), other = RandomBytes(1000, 2);
  WriteAll(src + "/a", data);
  fs::create_hard_link(src + "/a", src + "/b");
  fs::create_hard_link(src + "/a", src + "/sub/c");
  WriteAll(src + "/d", other);
  auto store = Open(true);
  ASSERT_TRUE(store);
  auto expect_links = [&](std::vector<std::string> names, uint32_t nlink) {
    Result<InodeAttr> first = store->LookupPath(names[0]);
    ASSERT_TRUE(first.ok()) << names[0];
    EXPECT_EQ(first->nlink, nlink) << names[0];
    for (const std::string& n : names) {
      Result<InodeAttr> a = store->LookupPath(n);
      ASSERT_TRUE(a.ok()) << n;
      EXPECT_EQ(a->ino, first->ino) << n;
    }
  };
  for (int round = 0; round < 2; ++round) {
    TreeSummary summary;
    ASSERT_TRUE(ImportTree(*store, src, kRootInode, "src", {}, summary).ok());
    expect_links({"/src/a", "/src/b", "/src/sub/c"}, 3);
    expect_links({"/src/d"}, 1);
    ExpectClean(*store);
  }
  const std::string out = dir_ + "/out";
  TreeSummary exported;
  ASSERT_TRUE(ExportTree(*store, store->LookupPath("/src")->ino, out, exported).ok());
  struct stat a, b, c;
  ASSERT_EQ(::stat((out + "/a").c_str(), &a), 0);
  ASSERT_EQ(::stat((out + "/b").c_str(), &b), 0);
  ASSERT_EQ(::stat((out + "/sub/c").c_str(), &c), 0);
  EXPECT_EQ(a.st_nlink, 3u);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(a.st_ino, c.st_ino);
  EXPECT_EQ(test::ReadAll(out + "/sub/c"), data);

  fs::remove(src + "/b");
  WriteAll(src + "/b", other);
  TreeSummary again;
  ASSERT_TRUE(ImportTree(*store, src, kRootInode, "src", {}, again).ok());
  expect_links({"/src/a", "/src/sub/c"}, 2);
  expect_links({"/src/b"}, 1);
  // Between sources too (import STORE SRC/sub SRC/a: cp -a keeps that link as well).
  TreeSummary two;
  ASSERT_TRUE(
      ImportTrees(*store, {{src + "/sub", "p"}, {src + "/a", "q"}}, kRootInode, {}, two).ok());
  expect_links({"/p/c", "/q"}, 2);
  ExpectStored(*store, "/src/sub/c", data);
  ExpectClean(*store);
}

// 20 levels of 250-byte names: about 5 KB of path, past PATH_MAX (4096 bytes).
const std::string kLevel(250, 'd');
constexpr int kLevels = 20;

// Creates (or with make false, opens) the deepest directory below `top`, level by level.
UniqueFd Deepest(const std::string& top, bool make) {
  UniqueFd at(::open(top.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  for (int i = 0; i < kLevels && at.valid(); ++i) {
    if (make) {
      EXPECT_EQ(::mkdirat(at.get(), kLevel.c_str(), 0750), 0);
    }
    at = UniqueFd(::openat(at.get(), kLevel.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  }
  return at;
}

// A tree deeper than PATH_MAX has no usable paths below that depth: import and export reach its
// entries from their open directories (cp -a of this tree fails there).
TEST_F(ImportTest, TreeDeeperThanPathMaxRoundTrips) {
  const std::string& level = kLevel;
  auto deepest = Deepest;
  const std::string src = dir_ + "/src";
  fs::create_directories(src);
  const Bytes data = RandomBytes(300000, 3);
  {
    UniqueFd d = deepest(src, true);
    ASSERT_TRUE(d.valid());
    UniqueFd f(::openat(d.get(), "f", O_WRONLY | O_CREAT | O_CLOEXEC, 0640));
    ASSERT_TRUE(f.valid());
    ASSERT_TRUE(WriteFull(f.get(), data).ok());
    ASSERT_EQ(::symlinkat("f", d.get(), "l"), 0);
    ASSERT_EQ(::linkat(d.get(), "f", d.get(), "h", 0), 0);
    ASSERT_TRUE(::fsetxattr(f.get(), "user.k", "v", 1, 0) == 0 || errno == ENOTSUP);
  }
  auto store = Open(true);
  ASSERT_TRUE(store);
  TreeSummary summary;
  ImportOptions io;
  io.failed = [](const std::string& path, const Status& why) {
    ADD_FAILURE() << path.substr(0, 80) << "...: " << why.ToString();
  };
  ASSERT_TRUE(ImportTree(*store, src, kRootInode, "src", io, summary).ok());
  EXPECT_EQ(summary.files, 1u);  // (h is another name of f)
  EXPECT_EQ(summary.symlinks, 1u);
  EXPECT_EQ(summary.directories, kLevels + 1u);
  std::string deep = "/src";
  for (int i = 0; i < kLevels; ++i) deep += "/" + level;
  ExpectStored(*store, deep + "/f", data);
  EXPECT_EQ(store->LookupPath(deep + "/h")->ino, store->LookupPath(deep + "/f")->ino);
  ExpectClean(*store);

  const std::string out = dir_ + "/out";
  TreeSummary exported;
  ExportOptions eo;
  eo.failed = [](const Status& why) { ADD_FAILURE() << why.ToString().substr(0, 200); };
  ASSERT_TRUE(ExportTree(*store, store->LookupPath("/src")->ino, out, exported, eo).ok());
  UniqueFd d = deepest(out, false);
  ASSERT_TRUE(d.valid());
  struct stat f_st, h_st;  // h is still another name of f
  ASSERT_EQ(::fstatat(d.get(), "f", &f_st, 0), 0);
  ASSERT_EQ(::fstatat(d.get(), "h", &h_st, 0), 0);
  EXPECT_EQ(f_st.st_ino, h_st.st_ino);
  EXPECT_EQ(f_st.st_nlink, 2u);
  for (const char* name : {"f", "h"}) {
    UniqueFd f(::openat(d.get(), name, O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(f.valid()) << name;
    Bytes got(data.size() + 1);
    EXPECT_EQ(::pread(f.get(), got.data(), got.size(), 0), static_cast<ssize_t>(data.size()));
    got.resize(data.size());
    EXPECT_TRUE(got == data) << name;
    struct stat st;
    ASSERT_EQ(::fstat(f.get(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0640u) << name;
    char value[8];
    const ssize_t n = ::fgetxattr(f.get(), "user.k", value, sizeof value);
    if (n >= 0 || errno != ENOTSUP) {
      EXPECT_EQ(std::string(value, n > 0 ? n : 0), "v") << name;
    }
  }
  char target[16];
  EXPECT_EQ(::readlinkat(d.get(), "l", target, sizeof target), 1);
  EXPECT_EQ(target[0], 'f');
  struct stat st;
  ASSERT_EQ(::fstatat(d.get(), "", &st, AT_EMPTY_PATH), 0);
  EXPECT_EQ(st.st_mode & 07777, 0750u);
}

// Queued files hold no descriptor where their paths are usable: a wide tree, its files queued
// behind a large one, imports whole under a low limit of open descriptors.
TEST_F(ImportTest, WideTreeImportsUnderALowDescriptorLimit) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src);
  const Bytes big = RandomBytes(32u << 20, 5);
  WriteAll(src + "/0-big", big);  // first: the workers are busy on it while the walk queues
  constexpr int kDirs = 300;
  for (int i = 0; i < kDirs; ++i) {
    fs::create_directories(src + "/d" + std::to_string(i));
    WriteAll(src + "/d" + std::to_string(i) + "/f", RandomBytes(100, 10 + i));
  }
  auto store = Open(true, SmallBatches());
  ASSERT_TRUE(store);
  struct rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  struct rlimit low = saved;
  low.rlim_cur = 128;  // the store and the walk need a few dozen
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  TreeSummary summary;
  Status st = ImportTree(*store, src, kRootInode, "src", {}, summary);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(summary.files, kDirs + 1u);
  ExpectStored(*store, "/src/0-big", big);
  ExpectStored(*store, "/src/d299/f", RandomBytes(100, 10 + 299));
}

// The other name of a hard-linked file whose first name is refused is copied, past PATH_MAX too.
TEST_F(ImportTest, OtherNameOfARefusedFileIsCopiedPastPathMax) {
  const std::string old_tree = dir_ + "/old", src = dir_ + "/src";
  const Bytes data = RandomBytes(2000, 4);
  fs::create_directories(old_tree);
  fs::create_directories(src);
  {
    UniqueFd old = Deepest(old_tree, true), d = Deepest(src, true);
    ASSERT_TRUE(old.valid() && d.valid());
    ASSERT_EQ(::mkdirat(old.get(), "a", 0755), 0);  // where the first name goes, a directory
    UniqueFd f(::openat(d.get(), "a", O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    ASSERT_TRUE(f.valid() && WriteFull(f.get(), data).ok());
    ASSERT_EQ(::linkat(d.get(), "a", d.get(), "b", 0), 0);
  }
  auto store = Open(true);
  ASSERT_TRUE(store);
  TreeSummary first, second;
  ASSERT_TRUE(ImportTree(*store, old_tree, kRootInode, "m", {}, first).ok());
  std::vector<std::string> failed;
  ImportOptions io;
  io.failed = [&](const std::string& path, const Status& why) {
    failed.push_back(path.substr(path.size() - 2) + ": " + why.message());
  };
  ASSERT_TRUE(ImportTree(*store, src, kRootInode, "m", io, second).ok());
  EXPECT_EQ(failed.size(), 1u) << ::testing::PrintToString(failed);  // /a only
  std::string deep = "/m";
  for (int i = 0; i < kLevels; ++i) deep += "/" + kLevel;
  EXPECT_EQ(store->LookupPath(deep + "/a")->kind, InodeKind::kDirectory);
  ExpectStored(*store, deep + "/b", data);
  ExpectClean(*store);
}

// A file whose first name is refused (a directory is in the way) keeps its other names, as cp -a
// copies them: they become one file of their own, with its content and attributes.
TEST_F(ImportTest, OtherNamesOfARefusedFileAreCopied) {
  const std::string old_tree = dir_ + "/old/m", src = dir_ + "/src/m";
  fs::create_directories(old_tree + "/a");
  fs::create_directories(src + "/sub");
  const Bytes data = RandomBytes(300000, 1);
  WriteAll(src + "/a", data);
  fs::create_hard_link(src + "/a", src + "/b");
  fs::create_hard_link(src + "/a", src + "/sub/c");
  ::chmod((src + "/a").c_str(), 0640);
  WriteAll(src + "/z", RandomBytes(40, 2));
  auto store = Open(true);
  ASSERT_TRUE(store);
  TreeSummary first;
  ASSERT_TRUE(ImportTree(*store, old_tree, kRootInode, "m", {}, first).ok());
  std::vector<std::string> failed;
  ImportOptions io;
  io.failed = [&](const std::string& path, const Status& why) {
    failed.push_back(path + ": " + why.message());
  };
  TreeSummary second;
  Status st = ImportTree(*store, src, kRootInode, "m", io, second);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_EQ(failed.size(), 1u) << ::testing::PrintToString(failed);
  EXPECT_NE(failed[0].find(src + "/a:"), std::string::npos) << failed[0];
  EXPECT_EQ(second.failed, 1u);
  EXPECT_EQ(second.files, 2u) << "b (with sub/c) and z";
  EXPECT_EQ(store->LookupPath("/m/a")->kind, InodeKind::kDirectory);
  Result<InodeAttr> b = store->LookupPath("/m/b"), c = store->LookupPath("/m/sub/c");
  ASSERT_TRUE(b.ok() && c.ok());
  EXPECT_EQ(b->ino, c->ino) << "the copied names are still one file";
  EXPECT_EQ(b->nlink, 2u);
  EXPECT_EQ(b->mode & 07777, 0640u);
  ExpectStored(*store, "/m/b", data);
  EXPECT_TRUE(store->LookupPath("/m/z").ok());
  ExpectClean(*store);
}

// A file whose first name vanishes before its turn: its other name is still there, and copied.
TEST_F(ImportTest, OtherNameOfAVanishedFileIsCopied) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src);
  const Bytes big = RandomBytes(8u << 20, 1), data = RandomBytes(1000, 2);
  WriteAll(src + "/a", big);
  WriteAll(src + "/b", data);
  fs::create_hard_link(src + "/b", src + "/c");
  auto store = Open(true, SmallBatches());
  ASSERT_TRUE(store);
  ImportOptions io;
  bool removed = false;
  RemoveWhileImporting(io, src + "/a", src + "/b", &removed);
  std::vector<std::string> failed;
  io.failed = [&](const std::string& path, const Status&) { failed.push_back(path); };
  TreeSummary summary;
  Status st = ImportTree(*store, src, kRootInode, "src", io, summary);
  ASSERT_TRUE(removed);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(failed, std::vector<std::string>{src + "/b"});
  EXPECT_EQ(summary.files, 2u);
  EXPECT_EQ(store->LookupPath("/src/b").status().code(), StatusCode::kNotFound);
  ExpectStored(*store, "/src/c", data);
  EXPECT_EQ(store->LookupPath("/src/c")->nlink, 1u);
  ExpectClean(*store);
}

// A file cut short while it is read: a clear error, the file is not stored, the store is clean.
TEST_F(ImportTest, FileShrinkingDuringImport) {
  const std::string path = dir_ + "/shrinks";
  WriteAll(path, RandomBytes(8u << 20, 3));
  StoreOptions opts;
  opts.chunk_size = 64u << 10;
  opts.batch_bytes = 256u << 10;
  {
    auto store = Open(true, opts);
    ASSERT_TRUE(store);
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    bool cut = false;
    Result<AddResult> r = store->AddFile(kRootInode, "shrinks", fd, {}, [&](const AddProgress&) {
      if (!cut) cut = ::truncate(path.c_str(), 1u << 20) == 0;
    });
    ::close(fd);
    ASSERT_TRUE(cut);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("'shrinks'"), std::string::npos) << r.status().message();
    EXPECT_TRUE(r.status().message().find("shrink") != std::string::npos ||
                r.status().message().find("changed while") != std::string::npos)
        << r.status().message();
  }
  auto store = Open(true);
  ASSERT_TRUE(store);
  ExpectClean(*store);
  EXPECT_EQ(store->LookupPath("/shrinks").status().code(), StatusCode::kNotFound);
}

// Bytes this process has read through read(2) and pread(2) so far (/proc/self/io rchar).
uint64_t BytesRead() {
  std::ifstream io("/proc/self/io");
  std::string key;
  uint64_t value = 0;
  while (io >> key >> value)
    if (key == "rchar:") return value;
  return 0;
}

// A sparse file's holes are not read: reading a hole makes the kernel allocate and clear page
// cache for it (a 6 GiB sparse file took 10 s and 19 s of system time to import). Its bytes,
// data and zeros, come back exactly, a chunk that is part data and part hole included.
TEST_F(ImportTest, HolesOfSparseFilesAreNotRead) {
  constexpr off_t kSize = off_t{512} << 20;
  const std::string path = dir_ + "/sparse";
  const Bytes data = RandomBytes(300000, 4);
  const off_t at[] = {0, kSize / 2 + 1000, kSize - off_t{300000}};
  {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::ftruncate(fd.get(), kSize), 0);
    for (off_t a : at) ASSERT_TRUE(PwriteFull(fd.get(), static_cast<uint64_t>(a), data).ok());
  }
  auto store = Open(true);
  ASSERT_TRUE(store);
  const int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  const uint64_t before = BytesRead();
  Result<AddResult> r = store->AddFile(kRootInode, "sparse", fd, {});
  const uint64_t read = BytesRead() - before;
  ::close(fd);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_LT(read, uint64_t{16} << 20) << "holes were read";
  Result<InodeAttr> a = store->LookupPath("/sparse");
  ASSERT_TRUE(a.ok());
  ASSERT_EQ(a->size, static_cast<uint64_t>(kSize));
  Bytes got(1u << 20), want(1u << 20);
  for (off_t off : {off_t{0}, at[1] - 4096, kSize / 4, kSize - off_t{1u << 20}}) {
    ASSERT_EQ(*store->Read(a->ino, static_cast<uint64_t>(off), got), got.size());
    std::fill(want.begin(), want.end(), 0);
    for (off_t d : at) {
      const off_t lo = std::max(off, d), hi = std::min<off_t>(off + off_t{1u << 20}, d + 300000);
      if (lo < hi) std::copy_n(data.begin() + (lo - d), hi - lo, want.begin() + (lo - off));
    }
    EXPECT_TRUE(got == want) << "at " << off;
  }
  // A file that ends in a hole (no data past the chunk: lseek says ENXIO).
  {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_TRUNC));
    ASSERT_TRUE(fd.valid());
    ASSERT_TRUE(PwriteFull(fd.get(), 0, data).ok());
    ASSERT_EQ(::ftruncate(fd.get(), kSize), 0);
  }
  const int fd2 = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd2, 0);
  Result<AddResult> r2 = store->AddFile(kRootInode, "ends-in-a-hole", fd2, {});
  ::close(fd2);
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  Result<InodeAttr> b = store->LookupPath("/ends-in-a-hole");
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(b->size, static_cast<uint64_t>(kSize));
  ASSERT_EQ(*store->Read(b->ino, 0, got), got.size());
  std::fill(want.begin(), want.end(), 0);
  std::copy(data.begin(), data.end(), want.begin());
  EXPECT_TRUE(got == want);
  ASSERT_EQ(*store->Read(b->ino, kSize - got.size(), got), got.size());
  EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](uint8_t c) { return c == 0; }));
  ExpectClean(*store);
}

// A gc that runs out of space while copying live frames to its new pack: it failed, but left the
// partial pack until the next writer opened the store. It removes it, and the store is as before.
TEST_F(ImportTest, GcOnAFullDiskLeavesNoPartialPack) {
  const std::unique_ptr<zipnn::test::SmallTmpfs> tmpfs = StoreOnSmallTmpfs();
  if (!tmpfs->mounted()) {
    GTEST_SKIP() << "cannot mount a small tmpfs (" << tmpfs->error()
                 << "): disk-full test needs root";
  }
  ASSERT_TRUE(Store::Init(store_dir_).ok());
  const Bytes b = RandomBytes(1500000, 8), a2 = RandomBytes(1500000, 9);
  auto store = Open(true);
  ASSERT_TRUE(store);
  auto add = [&](const std::string& name, const Bytes& data) {
    WriteAll(dir_ + "/" + name, data);
    const int fd = ::open((dir_ + "/" + name).c_str(), O_RDONLY);
    Result<AddResult> r = store->AddFile(kRootInode, name, fd, {});
    ::close(fd);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  };
  add("a", RandomBytes(1500000, 7));
  add("b", b);
  add("a", a2);  // a's first frames are garbage now: 4.5 MB of packs, 3 live
  Result<GcReport> gc = store->Gc(0.9);  // the live 3 MB do not fit in what is left
  ASSERT_EQ(gc.status().code(), StatusCode::kNoSpace) << gc.status().ToString();
  std::vector<std::string> packs;
  for (const auto& e : fs::directory_iterator(store_dir_ + "/packs"))
    packs.push_back(e.path().filename().string());
  EXPECT_EQ(packs, std::vector<std::string>{"pack-000001.znp"});
  ExpectStored(*store, "/a", a2);
  ExpectStored(*store, "/b", b);
  ExpectClean(*store);
}

// A full disk: a clear error, a consistent store, and room again once the tail is cut.
TEST_F(ImportTest, DiskFullDuringImport) {
  const std::unique_ptr<zipnn::test::SmallTmpfs> tmpfs = StoreOnSmallTmpfs();
  if (!tmpfs->mounted()) {
    GTEST_SKIP() << "cannot mount a small tmpfs (" << tmpfs->error()
                 << "): disk-full test needs root";
  }
  ASSERT_TRUE(Store::Init(store_dir_).ok());
  const std::string src = dir_ + "/src";
  fs::create_directories(src);
  WriteAll(src + "/0small", RandomBytes(100000, 4));
  WriteAll(src + "/1huge", RandomBytes(16u << 20, 5));  // random: stored raw, does not fit
  TreeSummary summary;
  {
    auto store = Open(true);
    ASSERT_TRUE(store);
    Status st = ImportTree(*store, src, kRootInode, "src", {}, summary);
    EXPECT_EQ(st.code(), StatusCode::kNoSpace) << st.ToString();
    EXPECT_NE(st.message().find("No space left"), std::string::npos) << st.message();
  }
  auto store = Open(true);  // cuts the uncommitted tail
  ASSERT_TRUE(store);
  ExpectClean(*store);
  EXPECT_EQ(store->LookupPath("/src/1huge").status().code(), StatusCode::kNotFound);
  Result<InodeAttr> small = store->LookupPath("/src/0small");
  if (small.ok()) {
    EXPECT_EQ(small->size, 100000u);  // committed whole, if at all
  }
  // The summary tells what was kept, not what was queued.
  EXPECT_EQ(summary.directories, store->LookupPath("/src").ok() ? 1u : 0u);
  EXPECT_EQ(summary.files, small.ok() ? 1u : 0u);
  // The store works again once the failed import's bytes are gone.
  const std::string more = dir_ + "/more";
  WriteAll(more, RandomBytes(200000, 6));
  const int fd = ::open(more.c_str(), O_RDONLY);
  Result<AddResult> r = store->AddFile(kRootInode, "more", fd, {});
  ::close(fd);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  ExpectClean(*store);
}

// Identical files compressed at the same time are stored once, and many small files share few
// commits.
TEST_F(ImportTest, DedupAcrossFilesInFlightAndGroupedCommits) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src);
  const Bytes same = RandomBytes(3u << 20, 7);
  for (int i = 0; i < 4; ++i) WriteAll(src + "/copy" + std::to_string(i), same);
  for (int i = 0; i < 200; ++i) WriteAll(src + "/small" + std::to_string(i), RandomBytes(500, i));
  auto store = Open(true);
  ASSERT_TRUE(store);
  BulkAddOptions bo;
  bo.commit_interval_ms = 60000;
  Result<std::unique_ptr<BulkAdd>> bulk = store->BeginBulkAdd(bo);
  ASSERT_TRUE(bulk.ok());
  Result<BulkDir> d = (*bulk)->Mkdir(BulkDir{}, "src", {}, "");
  ASSERT_TRUE(d.ok());
  for (const auto& e : fs::directory_iterator(src)) {
    const std::string path = e.path().string();
    ASSERT_TRUE((*bulk)->AddFile(*d, e.path().filename().string(), {nullptr, path, path}, {}).ok());
  }
  Result<BulkSummary> done = (*bulk)->Finish();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->files, 204u);
  EXPECT_EQ(done->commits, 1u);
  EXPECT_LT(done->new_frame_bytes, same.size() + 200 * 600) << "the copies share their chunks";
  EXPECT_EQ(done->frame_bytes - done->new_frame_bytes >= 3 * same.size(), true);
  ExpectClean(*store);
  ExpectStored(*store, "/src/copy3", same);
}

// The Hugging Face cache keeps models as blobs named by hash, linked from their snapshots: a
// blob that holds safetensors is planned as safetensors, so its chunks are the ones the same file
// under its own name makes (and dedup finds them).
TEST_F(ImportTest, SafetensorsBlobsWithoutTheSuffixAreTensorAware) {
  const std::string src = dir_ + "/hub";
  fs::create_directories(src + "/blobs");
  fs::create_directories(src + "/snapshots/abc");
  constexpr uint64_t kTensorBytes = 3u << 20;
  const std::string header = SafetensorsHeader(kTensorBytes);
  Bytes model(header.begin(), header.end());
  model.resize(header.size() + kTensorBytes);
  Bf16Stream(5).Next(std::span(model).subspan(header.size()));
  WriteAll(src + "/blobs/9f86d081884c7d65", model);
  fs::create_symlink("../../blobs/9f86d081884c7d65", src + "/snapshots/abc/model.safetensors");
  WriteAll(dir_ + "/model.safetensors", model);

  auto store = Open(true);
  ASSERT_TRUE(store);
  TreeSummary blob, named;
  ASSERT_TRUE(ImportTree(*store, src, kRootInode, "hub", {}, blob).ok());
  ASSERT_TRUE(
      ImportTree(*store, dir_ + "/model.safetensors", kRootInode, "m.safetensors", {}, named).ok());
  Result<InodeAttr> ino = store->LookupPath("/hub/blobs/9f86d081884c7d65");
  ASSERT_TRUE(ino.ok());
  Result<FileUsage> usage = store->GetFileUsage(ino->ino);
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->raw_by_dtype[static_cast<int>(DType::kBF16)], kTensorBytes)
      << "the tensor's chunks are coded as BF16";
  EXPECT_EQ(named.new_frame_bytes, 0u) << "the same file under a .safetensors name adds nothing";
  Bytes got(model.size());
  ASSERT_EQ(*store->Read(ino->ino, 0, got), model.size());
  EXPECT_TRUE(got == model);
}

}  // namespace
}  // namespace zipnn::index
