// The zipnnfs tool on stores whose index was damaged through LMDB (tests/index/index_damage.h),
// as a review did (commit e28f642): an empty entry name, names leaving the export destination,
// directory cycles, a chunk record pointing at another chunk's frame and a lowered next-inode
// counter. Each command must end by itself (a hang is killed after kTimeoutSeconds) with an exit
// code and a message, never a signal, wrong bytes or files written outside its destination.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "tests/index/index_damage.h"
#include "tests/tools/cli_util.h"

#ifndef ZIPNNFS_BINARY
#error "ZIPNNFS_BINARY must name the zipnnfs executable"
#endif

namespace zipnn::tool {
namespace {

namespace fs = std::filesystem;
using index::InodeKind;
using index::kRootInode;
namespace damage = index::test;

// Far more than any command here needs on a sound tool; only a hang reaches it.
constexpr unsigned kTimeoutSeconds = 5;

using CliRun = test::ToolRun;

// How a run ended and (the start of) what it printed.
std::string Show(const CliRun& r) {
  auto cut = [](const std::string& s) { return s.size() > 300 ? s.substr(0, 300) + "..." : s; };
  return r.how + "; stdout: " + cut(r.out) + "; stderr: " + cut(r.err);
}

// Ended by itself with an error exit code and a message.
::testing::AssertionResult FailedWithMessage(const CliRun& r) {
  if (r.exit_code <= 0) return ::testing::AssertionFailure() << Show(r);
  if (r.err.empty() && r.out.empty()) return ::testing::AssertionFailure() << "no message";
  return ::testing::AssertionSuccess();
}

// Bytes over a small alphabet: they compress, and two seeds give frames of the same method.
std::string Compressible(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>('a' + rng() % 7);
  return s;
}

class ZipnnfsHostileTest : public test::TempDirTest {
 protected:
  // The store holds /src/a.txt, /src/x.bin and /src/y.bin (same size, different bytes),
  // /src/tree/sub/deeper/c.txt and the empty directory /src/tree/emptydir.
  void SetUp() override {
    TempDirTest::SetUp();
    store_ = Path("store");
    const std::string src = Path("src");
    fs::create_directories(src + "/tree/sub/deeper");
    fs::create_directories(src + "/tree/emptydir");
    x_ = Compressible(100000, 1);
    y_ = Compressible(100000, 2);
    Write(src + "/a.txt", "alpha\n");
    Write(src + "/x.bin", x_);
    Write(src + "/y.bin", y_);
    Write(src + "/tree/sub/deeper/c.txt", "charlie\n");
    CliRun init = Zipnnfs({"init", store_});
    ASSERT_EQ(init.exit_code, 0) << Show(init);
    CliRun imp = Zipnnfs({"import", store_, src, "--threads", "2"});
    ASSERT_EQ(imp.exit_code, 0) << Show(imp);
  }

  // Imports 800 small files, enough records for a tree of branch pages over many leaves, and
  // copies the store aside; returns the copy's path ("" on failure).
  std::string ImportManyFiles() {
    const std::string many = Path("many");
    fs::create_directories(many);
    for (int i = 0; i < 800; ++i) Write(many + "/f" + std::to_string(i), Compressible(300 + i, i));
    if (Zipnnfs({"import", store_, many}).exit_code != 0) return "";
    const std::string pristine = Path("pristine");
    fs::copy(store_, pristine, fs::copy_options::recursive);
    return pristine;
  }

  static void Write(const std::string& path, const std::string& data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << data;
    ASSERT_TRUE(out.good()) << path;
  }

  // Runs zipnnfs with `args`, killed after kTimeoutSeconds.
  CliRun Zipnnfs(const std::vector<std::string>& args) {
    return RunTool(ZIPNNFS_BINARY, args, kTimeoutSeconds);
  }

  // fsck --repair succeeds, a second fsck finds the store clean, and store file `path` reads
  // `content`.
  void ExpectRepairedAndRead(const std::string& path, const std::string& content) {
    CliRun repair = Zipnnfs({"fsck", "--repair", store_});
    EXPECT_EQ(repair.exit_code, 0) << Show(repair);
    CliRun again = Zipnnfs({"fsck", store_});
    EXPECT_EQ(again.exit_code, 0) << Show(again);
    CliRun cat = Zipnnfs({"cat", store_, path});
    EXPECT_EQ(cat.exit_code, 0) << Show(cat);
    EXPECT_EQ(cat.out, content);
  }

  // Names of the entries of host directory `dir`, sorted.
  static std::vector<std::string> List(const std::string& dir) {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string store_, x_, y_;
};

// An entry with an empty name (key: the directory's 8-byte prefix alone) in an empty directory:
// fsck and stats listed it forever (killed here after kTimeoutSeconds). fsck must report it and
// exit 1, stats and export fail with a message; repair removes the entry.
TEST_F(ZipnnfsHostileTest, EmptyNameIsReportedNotListedForever) {
  {
    damage::IndexEditor ed(store_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    const uint64_t dir = damage::LookupIno(ed, "/src/tree/emptydir");
    const uint64_t a = damage::LookupIno(ed, "/src/a.txt");
    ASSERT_NE(dir, 0u);
    ASSERT_NE(a, 0u);
    ASSERT_TRUE(damage::PutDirent(ed, dir, "", a, InodeKind::kFile));
  }
  CliRun fsck = Zipnnfs({"fsck", store_});
  ASSERT_TRUE(FailedWithMessage(fsck));
  // (A key of the 8-byte prefix alone is too short to hold an entry: a malformed record.)
  EXPECT_NE(fsck.out.find("dirents: malformed record"), std::string::npos) << Show(fsck);
  EXPECT_NE(fsck.err.find("DAMAGED"), std::string::npos) << Show(fsck);
  EXPECT_TRUE(FailedWithMessage(Zipnnfs({"stats", store_})));
  fs::create_directories(Path("dest"));
  EXPECT_TRUE(FailedWithMessage(Zipnnfs({"export", store_, Path("dest")})));

  ExpectRepairedAndRead("/src/a.txt", "alpha\n");
}

// An entry of the root whose name leads out of the export destination (it names /src/a.txt):
// export fails with a message and nothing appears outside DEST.
class ZipnnfsEscapeTest : public ZipnnfsHostileTest,
                          public ::testing::WithParamInterface<const char*> {};

TEST_P(ZipnnfsEscapeTest, ExportWritesNothingOutsideDest) {
  {
    damage::IndexEditor ed(store_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    const uint64_t a = damage::LookupIno(ed, "/src/a.txt");
    ASSERT_NE(a, 0u);
    ASSERT_TRUE(damage::PutDirent(ed, kRootInode, GetParam(), a, InodeKind::kFile));
  }
  // Both names resolve to o1/o2/escaped from DEST = o1/o2/o3/dest.
  const std::string dest = Path("o1/o2/o3/dest");
  fs::create_directories(dest);
  CliRun exp = Zipnnfs({"export", store_, dest});
  EXPECT_TRUE(FailedWithMessage(exp));
  EXPECT_EQ(List(Path("o1")), std::vector<std::string>{"o2"});
  EXPECT_EQ(List(Path("o1/o2")), std::vector<std::string>{"o3"});
  EXPECT_EQ(List(Path("o1/o2/o3")), std::vector<std::string>{"dest"});
  EXPECT_FALSE(fs::exists(Path("o1/o2/escaped")));
  // fsck names the entry.
  CliRun fsck = Zipnnfs({"fsck", "--quick", store_});
  EXPECT_TRUE(FailedWithMessage(fsck));
  EXPECT_NE(fsck.out.find("invalid name"), std::string::npos) << Show(fsck);
}

INSTANTIATE_TEST_SUITE_P(Names, ZipnnfsEscapeTest,
                         ::testing::Values("../../escaped", "src/../../../escaped"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.index == 0 ? "DotDot" : "Slash");
                         });

// Directory cycles: /src/tree/sub holding an entry for the root, or /src/tree/emptydir one for
// itself. fsck and stats recursed until the stack overflowed (SIGSEGV); they must exit 1 with a
// message, and fsck --repair must leave a store fsck passes.
class ZipnnfsCycleTest : public ZipnnfsHostileTest, public ::testing::WithParamInterface<bool> {};

TEST_P(ZipnnfsCycleTest, FsckAndStatsFailWithAMessageAndRepairFixes) {
  const bool to_root = GetParam();
  {
    damage::IndexEditor ed(store_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    if (to_root) {
      const uint64_t sub = damage::LookupIno(ed, "/src/tree/sub");
      ASSERT_NE(sub, 0u);
      ASSERT_TRUE(damage::PutDirent(ed, sub, "up", kRootInode, InodeKind::kDirectory));
    } else {
      const uint64_t dir = damage::LookupIno(ed, "/src/tree/emptydir");
      ASSERT_NE(dir, 0u);
      ASSERT_TRUE(damage::PutDirent(ed, dir, "self", dir, InodeKind::kDirectory));
    }
  }
  CliRun fsck = Zipnnfs({"fsck", store_});
  ASSERT_TRUE(FailedWithMessage(fsck));
  EXPECT_NE(fsck.out.find("directory"), std::string::npos) << Show(fsck);
  // A problem of an inode is named without a byte range (it printed "bytes [0, 0)").
  EXPECT_EQ(fsck.out.find("bytes [0, 0)"), std::string::npos) << Show(fsck);
  CliRun quick = Zipnnfs({"fsck", "--quick", store_});
  EXPECT_TRUE(FailedWithMessage(quick));
  CliRun stats = Zipnnfs({"stats", store_});
  EXPECT_TRUE(FailedWithMessage(stats));
  EXPECT_NE(stats.err.find("twice"), std::string::npos) << Show(stats);

  ExpectRepairedAndRead("/src/tree/sub/deeper/c.txt", "charlie\n");
  EXPECT_EQ(Zipnnfs({"stats", store_}).exit_code, 0);
}

INSTANTIATE_TEST_SUITE_P(Cycles, ZipnnfsCycleTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return std::string(info.param ? "EntryForTheRoot" : "EntryForItself");
                         });

// /src/x.bin's chunk record pointed at /src/y.bin's frame (same pack, offset, frame size and raw
// size): cat gave y's bytes with success. It must fail; y still reads; full fsck names x.
TEST_F(ZipnnfsHostileTest, ChunkPointingAtAnotherFrameFailsCat) {
  {
    damage::IndexEditor ed(store_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    const uint64_t x = damage::LookupIno(ed, "/src/x.bin"), y = damage::LookupIno(ed, "/src/y.bin");
    ASSERT_NE(x, 0u);
    ASSERT_NE(y, 0u);
    const std::string kx = damage::ChunkKeyAt(ed, x, 0), ky = damage::ChunkKeyAt(ed, y, 0);
    ASSERT_EQ(kx.size(), 16u) << "x.bin is one chunk";
    ASSERT_EQ(ky.size(), 16u);
    const std::optional<index::rec::Chunk> cx = damage::GetChunk(ed, kx);
    const std::optional<index::rec::Chunk> cy = damage::GetChunk(ed, ky);
    ASSERT_TRUE(cx && cy);
    ASSERT_EQ(cx->raw_size, cy->raw_size);
    ASSERT_EQ(cx->method, cy->method);
    ASSERT_TRUE(damage::PointChunkAtOthersFrame(ed, kx, ky));
  }
  CliRun cat = Zipnnfs({"cat", store_, "/src/x.bin"});
  EXPECT_TRUE(FailedWithMessage(cat)) << (cat.out == y_ ? "(gave y.bin's bytes)" : "");
  CliRun part = Zipnnfs({"cat", store_, "/src/x.bin", "--offset", "1000", "--length", "500"});
  EXPECT_TRUE(FailedWithMessage(part));
  CliRun cat_y = Zipnnfs({"cat", store_, "/src/y.bin"});
  EXPECT_EQ(cat_y.exit_code, 0) << Show(cat_y);
  EXPECT_TRUE(cat_y.out == y_) << "y.bin reads other bytes";
  CliRun fsck = Zipnnfs({"fsck", store_});
  EXPECT_TRUE(FailedWithMessage(fsck));
  EXPECT_NE(fsck.out.find("/src/x.bin"), std::string::npos) << Show(fsck);
  EXPECT_EQ(fsck.out.find("/src/y.bin"), std::string::npos) << Show(fsck);
}

// A file whose chunk record is gone, met by stats --json after others were written out: the
// error is reported (exit 1) and the document still parses, with the error in it (it was cut
// off mid-array).
TEST_F(ZipnnfsHostileTest, StatsJsonOfADamagedFileStaysValidJson) {
  {
    damage::IndexEditor ed(store_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    const uint64_t y = damage::LookupIno(ed, "/src/y.bin");
    ASSERT_NE(y, 0u);
    ASSERT_TRUE(ed.Del("chunks", damage::ChunkKeyAt(ed, y, 0)));
  }
  CliRun stats = Zipnnfs({"stats", "--json", store_});
  EXPECT_TRUE(FailedWithMessage(stats));
  EXPECT_NE(stats.err.find("/src/y.bin"), std::string::npos) << Show(stats);
  const nlohmann::json j = nlohmann::json::parse(stats.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded()) << "not JSON: " << stats.out;
  EXPECT_NE(j.value("error", "").find("/src/y.bin"), std::string::npos) << stats.out;
  EXPECT_TRUE(j["files"].is_array());
}

// The next-inode counter lowered to /src/a.txt's inode: an import must fail, not take that
// inode over; a.txt keeps its bytes.
TEST_F(ZipnnfsHostileTest, ImportWithLoweredNextInodeOverwritesNothing) {
  {
    damage::IndexEditor ed(store_);
    ASSERT_TRUE(ed.ok()) << ed.error();
    const uint64_t a = damage::LookupIno(ed, "/src/a.txt");
    ASSERT_NE(a, 0u);
    ASSERT_TRUE(damage::SetNextInode(ed, a));
  }
  Write(Path("new.txt"), "a new file\n");
  CliRun imp = Zipnnfs({"import", store_, Path("new.txt"), "--to", "/"});
  EXPECT_TRUE(FailedWithMessage(imp));
  CliRun cat = Zipnnfs({"cat", store_, "/src/a.txt"});
  EXPECT_EQ(cat.exit_code, 0) << Show(cat);
  EXPECT_EQ(cat.out, "alpha\n");
  CliRun cat_new = Zipnnfs({"cat", store_, "/new.txt"});
  EXPECT_NE(cat_new.exit_code, 0) << Show(cat_new);
  CliRun cat_c = Zipnnfs({"cat", store_, "/src/tree/sub/deeper/c.txt"});
  EXPECT_EQ(cat_c.out, "charlie\n") << Show(cat_c);
}

// A truncated index file: LMDB reads its pages through the map, past the end of the file, and
// every command died of SIGBUS. Each must say the index is damaged and exit 1.
TEST_F(ZipnnfsHostileTest, TruncatedIndexGivesAMessageNotASignal) {
  fs::resize_file(store_ + "/index/data.mdb", 8192);  // the two meta pages, no tree
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"fsck", store_},
                                             {"stats", store_},
                                             {"cat", store_, "/src/a.txt"},
                                             {"import", store_, Path("src"), "--to", "/again"},
                                             {"fsck", "--repair", store_}}) {
    CliRun r = Zipnnfs(args);
    EXPECT_EQ(r.exit_code, 1) << args[0] << ": " << Show(r);
    EXPECT_NE(r.err.find("data.mdb: damaged or truncated"), std::string::npos) << Show(r);
  }
  // Cut to nothing: readers said "Bad file descriptor", and a writer made a new, empty index.
  fs::resize_file(store_ + "/index/data.mdb", 0);
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"fsck", store_}, {"import", store_, Path("src"), "--to", "/again"}}) {
    CliRun r = Zipnnfs(args);
    EXPECT_EQ(r.exit_code, 1) << args[0] << ": " << Show(r);
    EXPECT_NE(r.err.find("data.mdb: empty"), std::string::npos) << Show(r);
  }
  EXPECT_EQ(fs::file_size(store_ + "/index/data.mdb"), 0u);
}

// Bits flipped in the index's B-tree pages: repair wrote through LMDB into the damaged pages and
// corrupted memory (SIGSEGV, or malloc aborting, in 8 of 60 such stores). Now every command ends
// with an exit code, and a repair that succeeds leaves a store fsck finds clean.
TEST_F(ZipnnfsHostileTest, FlippedIndexBitsNeverKillTheToolAndRepairCleans) {
  const std::string pristine = ImportManyFiles();
  ASSERT_FALSE(pristine.empty());
  const uint64_t size = fs::file_size(store_ + "/index/data.mdb");
  std::mt19937_64 rng(11);
  int repaired = 0;
  for (int round = 0; round < 24; ++round) {
    fs::remove_all(store_);
    fs::copy(pristine, store_, fs::copy_options::recursive);
    {
      std::fstream f(store_ + "/index/data.mdb", std::ios::in | std::ios::out | std::ios::binary);
      for (uint64_t flips = 1 + rng() % 16; flips > 0; --flips) {
        const auto at = static_cast<std::streamoff>(8192 + rng() % (size - 8192));  // (not meta)
        char c;
        f.seekg(at);
        f.get(c);
        f.seekp(at);
        f.put(static_cast<char>(c ^ (1 << rng() % 8)));
      }
    }
    for (const char* cmd : {"fsck", "stats"}) {
      CliRun r = Zipnnfs({cmd, store_});
      EXPECT_GE(r.exit_code, 0) << "round " << round << ", " << cmd << ": " << Show(r);
    }
    CliRun repair = Zipnnfs({"fsck", "--repair", store_});
    ASSERT_GE(repair.exit_code, 0) << "round " << round << ": " << Show(repair);
    if (repair.exit_code != 0) continue;  // (told: the index could not be read)
    ++repaired;
    CliRun again = Zipnnfs({"fsck", store_});
    EXPECT_EQ(again.exit_code, 0) << "round " << round << ": " << Show(again);
  }
  EXPECT_GE(repaired, 12) << "most such stores are repairable";
}

// A node offset changed in a branch page sends LMDB to a branch page where it wants a leaf, and
// LMDB's assertion aborted fsck, repair and stats (SIGABRT). Each now says the index is damaged;
// so does a transaction LMDB fails after such a read (MDB_BAD_TXN, unexplained before).
TEST_F(ZipnnfsHostileTest, LmdbAssertionsGiveAMessageNotAnAbort) {
  const std::string pristine = ImportManyFiles();
  ASSERT_FALSE(pristine.empty());
  const std::string index = test::ReadAll(store_ + "/index/data.mdb");
  const size_t kPage = static_cast<size_t>(::sysconf(_SC_PAGESIZE));  // LMDB's page size
  int branches = 0, asserted = 0, bad_txn = 0;
  for (size_t page = 2; page < index.size() / kPage && branches < 6; ++page) {
    if ((index[page * kPage + 10] & 0xff) != 0x01) continue;  // mp_flags: P_BRANCH
    ++branches;
    fs::remove_all(store_);
    fs::copy(pristine, store_, fs::copy_options::recursive);
    std::string damaged = index;
    damaged[page * kPage + 19] ^= 1;  // the high byte of its second node's offset
    Write(store_ + "/index/data.mdb", damaged);
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"fsck", store_}, {"stats", store_}, {"fsck", "--repair", store_}}) {
      CliRun r = Zipnnfs(args);
      ASSERT_GE(r.exit_code, 0) << "page " << page << ", " << args[0] << ": " << Show(r);
      if (r.err.find("Assertion") != std::string::npos) {
        ++asserted;
        EXPECT_EQ(r.exit_code, 1) << Show(r);
        EXPECT_NE(r.err.find("data.mdb: damaged"), std::string::npos) << Show(r);
      }
      // Every call after the one that met the damage fails: that must not read as a mystery.
      if (r.err.find("MDB_BAD_TXN") != std::string::npos) {
        ++bad_txn;
        EXPECT_NE(r.err.find("may be damaged"), std::string::npos) << Show(r);
      }
    }
  }
  EXPECT_GT(branches, 0) << "no branch page in the index";
  // (Where LMDB is built without assertions, or lays its pages out otherwise, none is met: no
  // command may abort all the same, as checked above.)
  if (asserted == 0 || bad_txn == 0) {
    GTEST_SKIP() << "this liblmdb met " << asserted << " assertions and " << bad_txn
                 << " failed transactions on these pages";
  }
}

}  // namespace
}  // namespace zipnn::tool
