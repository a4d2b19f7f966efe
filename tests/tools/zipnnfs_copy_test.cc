// The zipnnfs store tool judged as one judges cp -a and a checker: file capabilities and holes
// survive export, a tree holding the store imports, byte-count options are strict, stats --json
// stays JSON for any file name, and a failed import tells what it kept.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "tests/tools/cli_util.h"

#ifndef ZIPNNFS_BINARY
#error "ZIPNNFS_BINARY must name the zipnnfs executable"
#endif

namespace zipnn::tool {
namespace {

namespace fs = std::filesystem;

// The export temporary names left in `dir` (none once an export is done).
std::vector<std::string> TemporaryNames(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with(".zipnnfs-export")) names.push_back(name);
  }
  return names;
}

class ZipnnfsCopyTest : public test::ZipnnfsToolTest {
 protected:
  void SetUp() override {
    ZipnnfsToolTest::SetUp();
    ASSERT_EQ(Run({"init", store_}).exit_code, 0);
  }
};

// chown drops security.capability: export must set it after the owner, as cp -a does.
TEST_F(ZipnnfsCopyTest, ExportKeepsFileCapabilities) {
  const std::string src = Path("src");
  fs::create_directories(src);
  std::ofstream(src + "/tool") << "#!/bin/sh\n";
  // VFS_CAP_REVISION_2, CAP_NET_BIND_SERVICE permitted and effective.
  const unsigned char cap[20] = {0x01, 0, 0, 0x02, 0, 0x04, 0, 0};
  if (::geteuid() != 0 ||
      ::setxattr((src + "/tool").c_str(), "security.capability", cap, sizeof cap, 0) != 0) {
    GTEST_SKIP() << "needs root and a filesystem with file capabilities";
  }
  ASSERT_EQ(Run({"import", store_, src, "-q"}).exit_code, 0);
  test::ToolRun exp = Run({"export", store_, Path("out"), "/src"});
  ASSERT_EQ(exp.exit_code, 0) << exp.err;
  unsigned char got[20] = {};
  EXPECT_EQ(::getxattr(Path("out/tool").c_str(), "security.capability", got, sizeof got),
            static_cast<ssize_t>(sizeof cap));
  EXPECT_EQ(std::string(got, got + sizeof got), std::string(cap, cap + sizeof cap));
}

// A sparse file comes back sparse (a 10 GiB hole must not fill the disk), and byte-exact.
TEST_F(ZipnnfsCopyTest, ExportKeepsHolesOfSparseFiles) {
  const std::string src = Path("src");
  fs::create_directories(src);
  constexpr off_t kSize = 64 << 20;
  {
    const int fd = ::open((src + "/sparse").c_str(), O_WRONLY | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "head", 4, 0), 4);
    ASSERT_EQ(::pwrite(fd, "mid", 3, kSize / 2), 3);
    ASSERT_EQ(::ftruncate(fd, kSize), 0);  // a trailing hole too
    ::close(fd);
  }
  ASSERT_EQ(Run({"import", store_, src, "-q"}).exit_code, 0);
  ASSERT_EQ(Run({"export", store_, Path("out"), "/src"}).exit_code, 0);
  struct stat st;
  ASSERT_EQ(::stat(Path("out/sparse").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, kSize);
  EXPECT_LT(st.st_blocks * 512, kSize / 8) << "holes were written as zeros";
  EXPECT_TRUE(test::ReadAll(Path("out/sparse")) == test::ReadAll(src + "/sparse"));
  // Holes smaller than a chunk, or than the MiB pieces export writes, stay holes too: each 1 byte
  // written is a 4 KiB block (and the file system's own block), not a MiB (it was 1 MiB each).
  ASSERT_EQ(::stat((src + "/sparse").c_str(), &st), 0);
  const blkcnt_t source_blocks = st.st_blocks;
  ASSERT_EQ(::stat(Path("out/sparse").c_str(), &st), 0);
  EXPECT_LE(st.st_blocks, source_blocks + 16) << "source " << source_blocks;
}

// A special file has no place in a store: it is named and left out, the rest imported, and the
// exit code 1 as for anything else cp -a would have copied (it was 0: `import && rm -rf SRC` lost
// the fifo).
TEST_F(ZipnnfsCopyTest, SpecialFilesAreToldAndMakeTheExitCodeOne) {
  const std::string src = Path("src");
  fs::create_directories(src);
  std::ofstream(src + "/data") << "payload";
  ASSERT_EQ(::mkfifo((src + "/fifo").c_str(), 0644), 0);
  test::ToolRun imp = Run({"import", store_, src});
  EXPECT_EQ(imp.exit_code, 1) << imp.err;
  EXPECT_NE(imp.err.find(src + "/fifo: special file"), std::string::npos) << imp.err;
  EXPECT_NE(imp.err.find("1 entries could not be imported"), std::string::npos) << imp.err;
  EXPECT_EQ(Run({"cat", store_, "/src/data"}).out, "payload");
  EXPECT_EQ(Run({"stats", store_, "/src/fifo"}).exit_code, 1);
}

// A tree that holds the store: the store is skipped (its packs grow while they would be read),
// everything else is imported.
TEST_F(ZipnnfsCopyTest, ImportOfATreeHoldingTheStoreSkipsIt) {
  // A tree of its own: the tool's captured output, in dir_, grows while the import runs.
  const std::string tree = Path("tree"), store = tree + "/store";
  fs::create_directories(tree);
  std::ofstream(tree + "/data") << std::string(3 << 20, 'x');
  ASSERT_EQ(Run({"init", store}).exit_code, 0);
  test::ToolRun imp = Run({"import", store, tree, "--to", "/self"});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  EXPECT_NE(imp.err.find("the store itself, skipped"), std::string::npos) << imp.err;
  EXPECT_EQ(Run({"cat", store, "/self/tree/data"}).out, std::string(3 << 20, 'x'));
  EXPECT_EQ(Run({"stats", store, "/self/tree/store"}).exit_code, 1);
  // A source inside the store is refused: its packs grow as they would be read.
  test::ToolRun inside = Run({"import", store, store + "/packs", "--to", "/in"});
  EXPECT_EQ(inside.exit_code, 1);
  EXPECT_NE(inside.err.find("inside the store"), std::string::npos) << inside.err;
  // So is the store's own content (it imported the store into itself), one of its files, and the
  // store reached through a bind mount (the check went by name).
  fs::create_directory(Path("bound"));
  const bool bound = ::mount(store.c_str(), Path("bound").c_str(), nullptr, MS_BIND, nullptr) == 0;
  std::vector<std::string> selves = {store + "/.", store, store + "/FORMAT"};
  if (bound) selves.push_back(Path("bound"));
  for (const std::string& self : selves) {
    test::ToolRun itself = Run({"import", store, self, "--to", "/in"});
    EXPECT_EQ(itself.exit_code, 1) << self;
    EXPECT_NE(itself.err.find("inside the store"), std::string::npos) << itself.err;
  }
  if (bound) ::umount2(Path("bound").c_str(), MNT_DETACH);
  EXPECT_EQ(Run({"stats", store, "/in/FORMAT"}).exit_code, 1);
  EXPECT_EQ(Run({"fsck", store}).exit_code, 0);
}

// Negative or too large byte counts are usage errors (CLI11 alone wraps "-1" to 2^64 - 1), and
// a length running past 2^64 means "to the end", not an empty range. Sizes such as 1K work too.
TEST_F(ZipnnfsCopyTest, CatByteCountsAreStrict) {
  std::ofstream(Path("f")) << "0123456789";
  ASSERT_EQ(Run({"import", store_, Path("f"), "-q"}).exit_code, 0);
  for (const std::vector<std::string>& bad : {std::vector<std::string>{"--offset", "-1"},
                                              {"--length", "-1"},
                                              {"--offset", "0x1"},
                                              {"--offset", "99999999999999999999999"},
                                              {"--length", ""}}) {
    std::vector<std::string> args{"cat", store_, "/f"};
    args.insert(args.end(), bad.begin(), bad.end());
    test::ToolRun r = Run(args);
    EXPECT_EQ(r.exit_code, 2) << bad[0] << " " << bad[1];
    EXPECT_EQ(r.out, "") << bad[0] << " " << bad[1];
  }
  test::ToolRun rest =
      Run({"cat", store_, "/f", "--offset", "3", "--length", "18446744073709551615"});
  EXPECT_EQ(rest.exit_code, 0) << rest.err;
  EXPECT_EQ(rest.out, "3456789");
  EXPECT_EQ(Run({"cat", store_, "/f", "--offset", "8", "--length", "5"}).out, "89");
  EXPECT_EQ(Run({"cat", store_, "/f", "--offset", "18446744073709551615"}).out, "");
  EXPECT_EQ(Run({"cat", store_, "/f", "--length", "1K"}).out, "0123456789") << "sizes as zipnn's";
}

// Linux names are bytes; JSON holds Unicode. stats --json must stay valid JSON (it aborted) and
// still let a script find the file.
TEST_F(ZipnnfsCopyTest, StatsJsonWithNamesThatAreNotUtf8) {
  const std::string src = Path("src");
  fs::create_directories(src);
  const std::string name = "bad\xff\xfe name";
  std::ofstream(src + "/" + name) << "data";
  ASSERT_EQ(Run({"import", store_, src, "-q"}).exit_code, 0);
  test::ToolRun r = Run({"stats", store_, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  ASSERT_EQ(j["files"].size(), 1u);
  EXPECT_EQ(j["files"][0]["path_hex"],
            "2f7372632f626164fffe206e616d65");  // "/src/bad\xff\xfe name"
  EXPECT_EQ(j["files"][0]["size"], 4);
}

// An import that fails part way keeps the entries before the failure, and its summary says so.
TEST_F(ZipnnfsCopyTest, FailedImportSummaryCountsWhatWasKept) {
  const std::string src = Path("src");
  fs::create_directories(src + "/b");
  ASSERT_EQ(Run({"import", store_, src, "-q"}).exit_code, 0);
  fs::remove(src + "/b");
  std::ofstream(src + "/a") << "kept";
  std::ofstream(src + "/b") << "a file where the store has a directory";
  test::ToolRun r = Run({"import", store_, src});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("imported 1 files"), std::string::npos) << r.err;
  EXPECT_EQ(Run({"cat", store_, "/src/a"}).out, "kept");
  EXPECT_EQ(Run({"fsck", store_}).exit_code, 0);
}

// Sources as cp -a takes them: SRC/. copies SRC's entries, not a directory named SRC; a missing
// source is told and the others are still imported (nothing was, after it), exit 1.
TEST_F(ZipnnfsCopyTest, ImportSourcesAsCpTakesThem) {
  const std::string src = Path("src"), other = Path("other");
  fs::create_directories(src + "/d");
  fs::create_directories(other);
  std::ofstream(src + "/a") << "a";
  std::ofstream(src + "/d/b") << "b";
  std::ofstream(other + "/c") << "c";
  test::ToolRun r = Run({"import", store_, Path("missing"), src + "/.", other, "--to", "/dot"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find(Path("missing") + ": lstat: No such file or directory"), std::string::npos)
      << r.err;
  EXPECT_EQ(Run({"cat", store_, "/dot/a"}).out, "a");
  EXPECT_EQ(Run({"cat", store_, "/dot/d/b"}).out, "b");
  EXPECT_EQ(Run({"cat", store_, "/dot/other/c"}).out, "c");
  EXPECT_NE(Run({"cat", store_, "/dot/src/a"}).exit_code, 0);
  ASSERT_EQ(Run({"import", store_, src + "/./", "--to", "/dot2"}).exit_code, 0);
  // A --to path with '..' is refused before any of it is made (/up was made, then refused).
  EXPECT_EQ(Run({"import", store_, src, "--to", "/up/../x"}).exit_code, 1);
  EXPECT_NE(Run({"stats", store_, "/up"}).exit_code, 0);
  EXPECT_EQ(Run({"cat", store_, "/dot2/a"}).out, "a");
  EXPECT_EQ(Run({"fsck", store_}).exit_code, 0);
}

// Exported into a directory with a default ACL, entries whose source had no ACL get none (as
// cp -a leaves them): they inherited the destination's entries, granting a user the source never
// named.
TEST_F(ZipnnfsCopyTest, ExportDoesNotKeepInheritedAcls) {
  const std::string src = Path("src"), out = Path("out");
  fs::create_directories(src + "/d");
  std::ofstream(src + "/d/f") << "f";
  fs::create_directories(out);
  // system.posix_acl_default: owner rwx, user 1234 rwx, group r-x, mask rwx, others r-x.
  std::string acl;
  auto put = [&](uint64_t x, int bytes) {
    for (int i = 0; i < bytes; i++) acl.push_back(static_cast<char>(x >> (8 * i)));
  };
  put(2, 4);
  for (auto [tag, perm, id] : {std::tuple{0x01, 7, ~0u},
                               {0x02, 7, 1234u},
                               {0x04, 5, ~0u},
                               {0x10, 7, ~0u},
                               {0x20, 5, ~0u}}) {
    put(static_cast<uint64_t>(tag), 2);
    put(static_cast<uint64_t>(perm), 2);
    put(id, 4);
  }
  if (::setxattr(out.c_str(), "system.posix_acl_default", acl.data(), acl.size(), 0) != 0) {
    GTEST_SKIP() << "the test directory's filesystem has no ACLs: " << std::strerror(errno);
  }
  ASSERT_EQ(Run({"import", store_, src, "-q"}).exit_code, 0);
  ASSERT_EQ(Run({"export", store_, out, "/src"}).exit_code, 0);
  for (const std::string& p : {out + "/src", out + "/src/d", out + "/src/d/f"}) {
    for (const char* name : {"system.posix_acl_access", "system.posix_acl_default"}) {
      errno = 0;
      EXPECT_LT(::getxattr(p.c_str(), name, nullptr, 0), 0) << p << " has " << name;
      EXPECT_EQ(errno, ENODATA) << p << " " << name;
    }
  }
}

// Where the stored owner cannot be set (root in a user namespace that maps no other user, as root
// exporting to vfat or to NFS with root squash), the file still comes out whole, its failure is
// told and the exit code is 1, as with cp -a (it was removed with its temporary name: the data
// was lost). Whole-store exports keep hard links between top-level entries.
TEST_F(ZipnnfsCopyTest, ExportKeepsDataWhereAttributesCannotBeSet) {
  const std::string src = Path("src");
  fs::create_directories(src + "/x");
  fs::create_directories(src + "/y");
  const std::string data(300000, 'd');
  std::ofstream(src + "/x/model") << data;
  ASSERT_EQ(::chown((src + "/x/model").c_str(), 1000, 1000), 0);
  fs::create_hard_link(src + "/x/model", src + "/y/link");
  ASSERT_EQ(::chmod(src.c_str(), 0750), 0);
  const timespec times[2] = {{1500000000, 1}, {1600000000, 2}};
  ASSERT_EQ(::utimensat(AT_FDCWD, src.c_str(), times, 0), 0);
  ASSERT_EQ(Run({"import", store_, src + "/.", "-q"}).exit_code, 0);

  const std::string out = Path("out");
  fs::create_directories(out);
  ASSERT_EQ(::chmod(out.c_str(), 0705), 0);
  test::ToolRun r = Run({"export", store_, out});  // the root's entries into an existing DEST
  ASSERT_EQ(r.exit_code, 0) << r.err;
  struct stat a, b;
  // The root took the attributes of the tree imported as SRC/., as cp -a SRC/. DEST gives them:
  // a new DEST is made with them; an existing one (a home directory, say) keeps its own.
  ASSERT_EQ(::stat(out.c_str(), &a), 0);
  EXPECT_EQ(a.st_mode & 07777, 0705u);
  EXPECT_NE(a.st_mtim.tv_sec, 1600000000);
  ASSERT_EQ(Run({"export", store_, Path("fresh")}).exit_code, 0);
  ASSERT_EQ(::stat(Path("fresh").c_str(), &a), 0);
  EXPECT_EQ(a.st_mode & 07777, 0750u);
  EXPECT_EQ(a.st_mtim.tv_sec, 1600000000);
  EXPECT_EQ(a.st_mtim.tv_nsec, 2);
  // DEST may be a symlink to a directory, as for cp.
  fs::create_directory_symlink(out, Path("out-link"));
  test::ToolRun via_link = Run({"export", store_, Path("out-link")});
  EXPECT_EQ(via_link.exit_code, 0) << via_link.err;
  ASSERT_EQ(::stat((out + "/x/model").c_str(), &a), 0);
  ASSERT_EQ(::stat((out + "/y/link").c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino) << "the hard link between two top-level trees was lost";

  test::ToolRun probe = RunTool("/usr/bin/unshare", {"-U", "-r", "true"});
  if (probe.exit_code != 0) GTEST_SKIP() << "no user namespaces here: " << probe.err;
  const std::string out2 = Path("out2");
  test::ToolRun ns =
      RunTool("/usr/bin/unshare", {"-U", "-r", ZIPNNFS_BINARY, "export", store_, out2, "/x"});
  EXPECT_EQ(ns.exit_code, 1) << ns.err;
  EXPECT_NE(ns.err.find(out2 + "/model: setting the owner"), std::string::npos) << ns.err;
  EXPECT_EQ(test::ReadAll(out2 + "/model"), data);
  EXPECT_EQ(TemporaryNames(out2), std::vector<std::string>{});
}

// Store paths resolve as host paths do: cat follows a Hugging Face cache's snapshot symlinks
// (snapshots/REV/config.json -> ../../blobs/HASH; "not a file" before) and symlinked directories
// on the way; export and stats follow those on the way but take a last symlink as it is (as cp -a);
// import --to follows them all.
TEST_F(ZipnnfsCopyTest, StorePathsFollowSymlinks) {
  const std::string hub = Path("hub");
  fs::create_directories(hub + "/blobs");
  fs::create_directories(hub + "/snapshots/rev");
  std::ofstream(hub + "/blobs/abc") << "{\"config\": 1}";
  fs::create_symlink("../../blobs/abc", hub + "/snapshots/rev/config.json");
  fs::create_directory_symlink("snapshots/rev", hub + "/main");
  fs::create_symlink("/etc/hostname", hub + "/absolute");
  fs::create_symlink("loop", hub + "/loop");
  fs::create_symlink("nowhere", hub + "/dangling");
  ASSERT_EQ(Run({"import", store_, hub, "-q"}).exit_code, 0);
  EXPECT_EQ(Run({"cat", store_, "/hub/snapshots/rev/config.json"}).out, "{\"config\": 1}");
  EXPECT_EQ(Run({"cat", store_, "/hub/main/config.json"}).out, "{\"config\": 1}");
  // (".." after a symlinked directory is its target's parent, as the kernel takes it)
  EXPECT_EQ(Run({"cat", store_, "/hub/main/../rev/./config.json"}).out, "{\"config\": 1}");
  test::ToolRun loop = Run({"cat", store_, "/hub/loop"});
  EXPECT_EQ(loop.exit_code, 1);
  EXPECT_NE(loop.err.find("too many levels of symbolic links"), std::string::npos) << loop.err;
  test::ToolRun absolute = Run({"cat", store_, "/hub/absolute"});
  EXPECT_EQ(absolute.exit_code, 1);
  EXPECT_NE(absolute.err.find("names a host path"), std::string::npos) << absolute.err;
  ASSERT_EQ(Run({"export", store_, Path("out"), "/hub/main/config.json"}).exit_code, 0);
  EXPECT_TRUE(fs::is_symlink(Path("out"))) << "a last symlink is exported as a symlink";
  // So does import's --to, as mkdir -p (it was "not a directory in the store"); a link to no
  // directory is refused, naming it.
  std::ofstream(Path("g")) << "gamma";
  for (const char* to : {"/hub/main/sub", "/hub/main/", "/hub/main/."})
    ASSERT_EQ(Run({"import", store_, Path("g"), "--to", to, "-q"}).exit_code, 0) << to;
  EXPECT_EQ(Run({"cat", store_, "/hub/snapshots/rev/sub/g"}).out, "gamma");
  EXPECT_EQ(Run({"cat", store_, "/hub/snapshots/rev/g"}).out, "gamma");
  // A trailing slash names a directory (cat of "file/" read the file); stats goes on past a
  // missing path, as du (it printed nothing), and exits 1.
  test::ToolRun slash = Run({"cat", store_, "/hub/blobs/abc/"});
  EXPECT_EQ(slash.exit_code, 1);
  EXPECT_NE(slash.err.find("not a directory"), std::string::npos) << slash.err;
  test::ToolRun stats = Run({"stats", store_, "/hub/missing", "/hub/blobs/abc"});
  EXPECT_EQ(stats.exit_code, 1);
  EXPECT_NE(stats.err.find("/hub/missing: no such file"), std::string::npos) << stats.err;
  EXPECT_NE(stats.out.find("/hub/blobs/abc"), std::string::npos) << stats.out;
  test::ToolRun dangling = Run({"import", store_, Path("g"), "--to", "/hub/dangling/x"});
  EXPECT_EQ(dangling.exit_code, 1);
  EXPECT_NE(dangling.err.find("/hub/dangling links to no directory"), std::string::npos)
      << dangling.err;
}

// Two exports into one place at once: each replaces what the other made, and where both names of
// a hard-linked file end up as links to one file, rename does nothing; the temporary name must go
// all the same (43 were left behind of 2000 files with 50 links).
TEST_F(ZipnnfsCopyTest, ConcurrentExportsLeaveNoTemporaryNames) {
  const std::string src = Path("src");
  fs::create_directories(src);
  for (int i = 0; i < 2000; ++i) std::ofstream(src + "/f" + std::to_string(i)) << i;
  for (int i = 0; i < 50; ++i)
    fs::create_hard_link(src + "/f" + std::to_string(i), src + "/h" + std::to_string(i));
  ASSERT_EQ(Run({"import", store_, src, "-q"}).exit_code, 0);
  const std::string out = Path("out");
  fs::create_directories(out);
  const std::string z = ZIPNNFS_BINARY;
  test::ToolRun r = RunTool("/bin/sh", {"-c", z + " export " + store_ + " " + out + " & " + z +
                                                  " export " + store_ + " " + out + " & wait"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(TemporaryNames(out + "/src"), std::vector<std::string>{});
  EXPECT_EQ(test::ReadAll(out + "/src/h7"), "7");
}

}  // namespace
}  // namespace zipnn::tool
