// Tests of the zipnnfs store tool, run as a separate process like a user would.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "tests/tools/cli_util.h"
#include "tools/synth_model.h"

#ifndef ZIPNNFS_BINARY
#error "ZIPNNFS_BINARY must name the zipnnfs executable"
#endif

namespace zipnn::tool {
namespace {

namespace fs = std::filesystem;

class ZipnnfsCliTest : public test::ZipnnfsToolTest {
 protected:
  // A small model directory: two safetensors files, a config, a nested dir and a symlink.
  std::string MakeModelDir() {
    const std::string m = Path("model");
    fs::create_directories(m + "/sub");
    SynthModelOptions o;
    o.layers = 2;
    o.dim = 128;
    EXPECT_TRUE(WriteSyntheticSafetensors(m + "/a.safetensors", o).ok());
    o.seed = 2;
    EXPECT_TRUE(WriteSyntheticSafetensors(m + "/sub/b.safetensors", o).ok());
    std::ofstream(m + "/config.json") << "{\"hidden_size\": 128}\n";
    fs::create_symlink("sub/b.safetensors", m + "/b_link");
    return m;
  }

  // While `zipnnfs cat` (as `user`, unless 0) reads /m/model/a.safetensors of the store at
  // `read_store` (store_, or a view of it), an import of `model` into store_ is refused; once
  // the reader is done, it goes through.
  void ExpectReaderKeepsWritersOut(const std::string& read_store, uid_t user,
                                   const std::string& model);
};

TEST_F(ZipnnfsCliTest, ImportExportCatStats) {
  ASSERT_EQ(Run({"init", store_}).exit_code, 0);
  const std::string model = MakeModelDir();
  test::ToolRun imp = Run({"import", store_, model, "--to", "/models", "--threads", "2"});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  EXPECT_NE(imp.err.find("imported 3 files"), std::string::npos) << imp.err;

  test::ToolRun exp = Run({"export", store_, Path("out"), "/models/model"});
  ASSERT_EQ(exp.exit_code, 0) << exp.err;
  for (const char* f : {"a.safetensors", "sub/b.safetensors", "config.json"}) {
    EXPECT_EQ(test::ReadAll(Path("out/") + f), test::ReadAll(model + "/" + f)) << f;
  }
  EXPECT_EQ(fs::read_symlink(Path("out/b_link")), "sub/b.safetensors");
  // Never into the store itself (it wrote over the store's files and exited 0), however named.
  fs::create_directory_symlink(store_, Path("store_link"));
  for (const std::string& into : {store_, store_ + "/packs/new", Path("store_link/x")}) {
    test::ToolRun self = Run({"export", store_, into});
    EXPECT_EQ(self.exit_code, 1) << into;
    EXPECT_NE(self.err.find("inside the store"), std::string::npos) << self.err;
  }
  EXPECT_FALSE(fs::exists(store_ + "/packs/new"));
  EXPECT_FALSE(fs::exists(store_ + "/models"));
  // Nor through a bind mount of it (a check by name let that through); nor onto one of its files.
  fs::create_directory(Path("bound"));
  if (::mount(store_.c_str(), Path("bound").c_str(), nullptr, MS_BIND, nullptr) == 0) {
    test::ToolRun bound = Run({"export", store_, Path("bound/x")});
    ::umount2(Path("bound").c_str(), MNT_DETACH);
    EXPECT_EQ(bound.exit_code, 1) << bound.err;
    EXPECT_NE(bound.err.find("inside the store"), std::string::npos) << bound.err;
  }
  test::ToolRun onto = Run({"export", store_, store_ + "/FORMAT"});
  EXPECT_EQ(onto.exit_code, 1) << onto.err;
  EXPECT_FALSE(fs::exists(store_ + "/x"));

  const std::string a = test::ReadAll(model + "/a.safetensors");
  test::ToolRun cat =
      Run({"cat", store_, "/models/model/a.safetensors", "--offset", "1000", "--length", "5000"});
  ASSERT_EQ(cat.exit_code, 0) << cat.err;
  EXPECT_EQ(cat.out, a.substr(1000, 5000));
  // At the end: nothing; past it: an error, as zipnn cat.
  const std::string size = std::to_string(a.size()), past = std::to_string(a.size() + 1);
  test::ToolRun at_end = Run({"cat", store_, "/models/model/a.safetensors", "--offset", size});
  EXPECT_EQ(at_end.exit_code, 0) << at_end.err;
  EXPECT_EQ(at_end.out, "");
  test::ToolRun beyond = Run({"cat", store_, "/models/model/a.safetensors", "--offset", past});
  EXPECT_EQ(beyond.exit_code, 1);
  EXPECT_NE(beyond.err.find("past the end"), std::string::npos) << beyond.err;
  EXPECT_EQ(Run({"cat", store_, "models/model/config.json"}).out,
            test::ReadAll(model + "/config.json"));

  // A second import of the same files adds no chunk bytes.
  ASSERT_EQ(Run({"import", store_, model, "--to", "/copy"}).exit_code, 0);
  test::ToolRun stats = Run({"stats", store_, "--json"});
  ASSERT_EQ(stats.exit_code, 0) << stats.err;
  const nlohmann::json j = nlohmann::json::parse(stats.out);
  EXPECT_EQ(j["files"].size(), 6u);
  const auto& s = j["store"];
  EXPECT_EQ(s["pack_bytes"], s["chunk_frame_bytes"]);
  // At least the second copy is saved (more when chunks repeat inside a file, like zero biases).
  EXPECT_GE(s["dedup_saved_bytes"].get<uint64_t>() * 2, j["total"]["stored"].get<uint64_t>());
  EXPECT_LT(s["dedup_saved_bytes"].get<uint64_t>(), j["total"]["stored"].get<uint64_t>());
  // stored / size, as zipnn prints it: the floats shrink.
  EXPECT_GT(j["total"]["ratio"].get<double>(), 0.1);
  EXPECT_LT(j["total"]["ratio"].get<double>(), 0.9);
  // Re-importing a changed file leaves garbage that gc reclaims.
  std::ofstream(Path("solo.txt")) << "first version\n";
  ASSERT_EQ(Run({"import", store_, Path("solo.txt"), "--to", "/solo"}).exit_code, 0);
  std::ofstream(Path("solo.txt"), std::ios::trunc) << "second version\n";
  ASSERT_EQ(Run({"import", store_, Path("solo.txt"), "--to", "/solo"}).exit_code, 0);
  test::ToolRun gc = Run({"gc", store_});
  EXPECT_EQ(gc.exit_code, 0) << gc.err;
  EXPECT_NE(gc.err.find("1 unreferenced chunks dropped"), std::string::npos) << gc.err;
  EXPECT_EQ(Run({"cat", store_, "/solo/solo.txt"}).out, "second version\n");
  test::ToolRun fsck = Run({"fsck", store_});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.out << fsck.err;
  EXPECT_NE(fsck.err.find("clean"), std::string::npos) << fsck.err;
  {  // A flipped byte in the last frame: fsck names the damaged file and exits 1.
    const std::string pack = store_ + "/packs/pack-000001.znp";
    std::fstream f(pack, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-2, std::ios::end);
    char c = 0;
    f.get(c);
    f.seekp(-2, std::ios::end);
    f.put(static_cast<char>(c ^ 0x40));
  }
  fsck = Run({"fsck", store_});
  EXPECT_EQ(fsck.exit_code, 1) << fsck.out << fsck.err;
  EXPECT_NE(fsck.out.find("bytes ["), std::string::npos) << fsck.out;
  EXPECT_NE(fsck.err.find("DAMAGED"), std::string::npos) << fsck.err;
  test::ToolRun text = Run({"stats", store_, "/copy"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("/copy/model/sub/b.safetensors"), std::string::npos) << text.out;
  EXPECT_EQ(text.out.find("/models/"), std::string::npos) << text.out;
}

// `zipnnfs cat STORE PATH` (as user `as_user`, unless 0) writing into a pipe nobody reads until
// Finish: started() once it wrote its first byte, with the store open; a file larger than the
// pipe keeps it there, store open, until Finish reads the rest (no sleeps).
class PipedCat {
 public:
  PipedCat(const std::string& store, const std::string& path, uid_t as_user) {
    int fds[2];
    if (::pipe(fds) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], STDOUT_FILENO);
      ::close(fds[0]);
      if (as_user == 0 ||
          (::setgroups(0, nullptr) == 0 && ::setgid(as_user) == 0 && ::setuid(as_user) == 0)) {
        ::execl(ZIPNNFS_BINARY, ZIPNNFS_BINARY, "cat", store.c_str(), path.c_str(),
                static_cast<char*>(nullptr));
      }
      ::_exit(127);
    }
    ::close(fds[1]);
    fd_ = fds[0];
    char first;
    if (pid_ > 0 && ::read(fd_, &first, 1) == 1) got_.assign(1, first);
  }
  ~PipedCat() { Finish(); }
  bool started() const { return !got_.empty(); }
  // Everything it wrote, once it has exited 0 (else empty).
  std::string Finish() {
    if (fd_ < 0) return ok_ ? got_ : std::string();
    char buf[65536];
    for (ssize_t n; (n = ::read(fd_, buf, sizeof buf)) > 0;) got_.append(buf, n);
    ::close(fd_);
    fd_ = -1;
    int status = 0;
    ok_ = pid_ > 0 && ::waitpid(pid_, &status, 0) == pid_ && WIFEXITED(status) &&
          WEXITSTATUS(status) == 0;
    return ok_ ? got_ : std::string();
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  bool ok_ = false;
  std::string got_;
};

void ZipnnfsCliTest::ExpectReaderKeepsWritersOut(const std::string& read_store, uid_t user,
                                                 const std::string& model) {
  PipedCat reader(read_store, "/m/model/a.safetensors", user);
  ASSERT_TRUE(reader.started());
  test::ToolRun busy = Run({"import", store_, model, "--to", "/again"});
  EXPECT_EQ(busy.exit_code, 1) << busy.err;
  EXPECT_NE(busy.err.find("locked"), std::string::npos) << busy.err;
  EXPECT_TRUE(reader.Finish() == test::ReadAll(model + "/a.safetensors"));
  EXPECT_EQ(Run({"import", store_, model, "--to", "/again"}).exit_code, 0);
}

// A user who may read a store but not write it (a store owned by root, read by a service account)
// can still use the read-only tools: LMDB's lock file is not theirs to write, so the store is
// read under its shared lock instead ("lmdb open .../index: Permission denied" before).
TEST_F(ZipnnfsCliTest, ReadOnlyToolsWorkForAUserWhoCannotWriteTheStore) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the tool as another user";
  constexpr uid_t kNobody = 65534;
  ASSERT_EQ(Run({"init", store_}).exit_code, 0);
  const std::string model = MakeModelDir();
  ASSERT_EQ(Run({"import", store_, model, "--to", "/m"}).exit_code, 0);
  fs::permissions(dir_, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                            fs::perms::others_read | fs::perms::others_exec);
  test::ToolRun cat = RunTool(ZIPNNFS_BINARY, {"cat", store_, "/m/model/config.json"}, 60, kNobody);
  EXPECT_EQ(cat.exit_code, 0) << cat.how << ": " << cat.err;
  EXPECT_EQ(cat.out, test::ReadAll(model + "/config.json"));
  for (const char* tool : {"stats", "fsck"}) {
    test::ToolRun r = RunTool(ZIPNNFS_BINARY, {tool, store_}, 60, kNobody);
    EXPECT_EQ(r.exit_code, 0) << tool << ": " << r.how << ": " << r.err;
  }
  // Without LMDB's lock file (a backup may leave it out), which such a user cannot create.
  fs::rename(store_ + "/index/lock.mdb", Path("lock.mdb"));
  test::ToolRun stats = RunTool(ZIPNNFS_BINARY, {"stats", store_}, 60, kNobody);
  EXPECT_EQ(stats.exit_code, 0) << stats.how << ": " << stats.err;
  fs::rename(Path("lock.mdb"), store_ + "/index/lock.mdb");

  // It reads under the store's shared lock: a writer is refused while it reads, and gets the
  // store once it is done.
  ExpectReaderKeepsWritersOut(store_, kNobody, model);
}

// Like cp -a, import tells what it cannot read (a file or directory the user may not read), leaves
// it out, imports the rest and exits 1; a directory it cannot list is kept, empty.
TEST_F(ZipnnfsCliTest, ImportLeavesOutWhatItCannotReadAndGoesOn) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the tool as another user";
  constexpr uid_t kNobody = 65534;
  const fs::perms open_dir = fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                             fs::perms::others_read | fs::perms::others_exec;
  fs::permissions(dir_, open_dir);
  const std::string work = Path("work"), src = Path("src");
  fs::create_directories(work);
  ASSERT_EQ(::chown(work.c_str(), kNobody, kNobody), 0);
  fs::create_directories(src + "/locked");
  fs::create_directories(src + "/sub");
  fs::permissions(src, open_dir);
  fs::permissions(src + "/sub", open_dir);
  fs::permissions(src + "/locked", fs::perms::owner_all);
  const std::string ok(70000, 'k'), fine(3000, 'f');
  std::ofstream(src + "/ok.bin") << ok;
  std::ofstream(src + "/secret.bin") << "secret";
  std::ofstream(src + "/locked/x") << "x";
  std::ofstream(src + "/sub/fine") << fine;
  fs::permissions(src + "/ok.bin", fs::perms::owner_read | fs::perms::others_read);
  fs::permissions(src + "/sub/fine", fs::perms::owner_read | fs::perms::others_read);
  fs::permissions(src + "/secret.bin", fs::perms::owner_read);
  const std::string store = work + "/store";
  ASSERT_EQ(RunTool(ZIPNNFS_BINARY, {"init", store}, 60, kNobody).exit_code, 0);

  test::ToolRun r = RunTool(ZIPNNFS_BINARY, {"import", store, src}, 60, kNobody);
  EXPECT_EQ(r.exit_code, 1) << r.how << ": " << r.err;
  EXPECT_NE(r.err.find(src + "/secret.bin: open: Permission denied"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(src + "/locked: opendir: Permission denied"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("2 entries could not be imported"), std::string::npos) << r.err;
  EXPECT_EQ(Run({"cat", store, "/src/ok.bin"}).out, ok);
  EXPECT_EQ(Run({"cat", store, "/src/sub/fine"}).out, fine);
  EXPECT_EQ(Run({"cat", store, "/src/secret.bin"}).exit_code, 1);
  test::ToolRun ls = Run({"stats", store, "/src/locked"});
  EXPECT_EQ(ls.exit_code, 0) << "the directory is kept: " << ls.err;
  EXPECT_EQ(Run({"fsck", store}).exit_code, 0);
}

// A user who is not root exports files as their own; where a file's stored owner cannot be kept,
// its set-id bits are dropped, as cp -a drops them: a set-uid root program must not come out
// set-uid to whoever exported it. Their own files keep every bit.
TEST_F(ZipnnfsCliTest, ExportByAnotherUserDropsSetIdBitsOfOthersFiles) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the tool as another user";
  constexpr uid_t kNobody = 65534;
  const std::string src = Path("src");
  fs::create_directories(src);
  std::ofstream(src + "/root-suid") << "#!/bin/sh\n";
  std::ofstream(src + "/own-suid") << "#!/bin/sh\n";
  ASSERT_EQ(::chown((src + "/own-suid").c_str(), kNobody, kNobody), 0);
  ASSERT_EQ(::chmod((src + "/root-suid").c_str(), 06755), 0);
  ASSERT_EQ(::chmod((src + "/own-suid").c_str(), 06755), 0);
  fs::create_directories(src + "/shared");
  ASSERT_EQ(::chmod((src + "/shared").c_str(), 01777), 0);
  ASSERT_EQ(Run({"init", store_}).exit_code, 0);
  ASSERT_EQ(Run({"import", store_, src}).exit_code, 0);
  fs::permissions(dir_, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                            fs::perms::others_read | fs::perms::others_exec);
  const std::string out = Path("out");
  fs::create_directories(out);
  ASSERT_EQ(::chown(out.c_str(), kNobody, kNobody), 0);
  test::ToolRun r = RunTool(ZIPNNFS_BINARY, {"export", store_, out, "/src"}, 60, kNobody);
  ASSERT_EQ(r.exit_code, 0) << r.how << ": " << r.err;
  struct stat st;
  ASSERT_EQ(::stat((out + "/src/root-suid").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kNobody);
  EXPECT_EQ(st.st_mode & 07777, 0755u) << std::oct << st.st_mode;
  ASSERT_EQ(::stat((out + "/src/own-suid").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 06755u) << std::oct << st.st_mode;
  ASSERT_EQ(::stat((out + "/src/shared").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 01777u) << "a shared directory keeps its sticky bit, as with cp -a";
}

// A store read through a read-only bind mount (read-only media, as a shared volume): a tool
// reading it there takes the store's shared lock, so a writer by the writable path waits its
// turn (it ran meanwhile, and could reuse pages the reader still read: LMDB keeps no reader
// table on read-only media).
TEST_F(ZipnnfsCliTest, ReadersThroughReadOnlyMediaKeepWritersOut) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to bind-mount";
  ASSERT_EQ(Run({"init", store_}).exit_code, 0);
  const std::string model = MakeModelDir();
  ASSERT_EQ(Run({"import", store_, model, "--to", "/m"}).exit_code, 0);
  const std::string ro = Path("ro");
  fs::create_directories(ro);
  ASSERT_EQ(::mount(store_.c_str(), ro.c_str(), nullptr, MS_BIND, nullptr), 0);
  struct Unmount {
    std::string at;
    ~Unmount() { ::umount2(at.c_str(), MNT_DETACH); }
  } unmount{ro};
  ASSERT_EQ(::mount(nullptr, ro.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr), 0);
  ExpectReaderKeepsWritersOut(ro, 0, model);
}

TEST_F(ZipnnfsCliTest, FsckNamesDamageAndRepairRemovesIt) {
  const std::string model = MakeModelDir();
  fs::create_hard_link(model + "/a.safetensors", model + "/z-link.safetensors");
  ASSERT_EQ(Run({"init", store_}).exit_code, 0);
  ASSERT_EQ(Run({"import", "-q", store_, model}).exit_code, 0);
  // a.safetensors is imported first: its first frame starts the pack. Each of its names is told.
  test::FlipByte(store_ + "/packs/pack-000001.znp", 200, 0x04);
  test::ToolRun check = Run({"fsck", store_});
  EXPECT_EQ(check.exit_code, 1);
  EXPECT_NE(check.out.find("/model/a.safetensors, /model/z-link.safetensors: bytes [0, "),
            std::string::npos)
      << check.out;
  test::ToolRun repair = Run({"fsck", "--repair", store_});
  EXPECT_EQ(repair.exit_code, 0) << repair.out << repair.err;
  EXPECT_NE(repair.out.find("repair: removed damaged file"), std::string::npos) << repair.out;
  EXPECT_NE(repair.out.find("[/model/a.safetensors, /model/z-link.safetensors]"), std::string::npos)
      << repair.out;
  EXPECT_NE(repair.err.find("clean after repair"), std::string::npos) << repair.err;
  EXPECT_EQ(Run({"fsck", store_}).exit_code, 0);
  // Every file fsck named is gone (the two models share their header chunk); the rest is intact.
  for (const char* name : {"/model/a.safetensors", "/model/sub/b.safetensors"}) {
    const bool named = check.out.find(std::string(name) + ",") != std::string::npos ||
                       check.out.find(std::string(name) + ": bytes") != std::string::npos;
    EXPECT_EQ(Run({"cat", store_, name}).exit_code, named ? 1 : 0) << name;
  }
  test::ToolRun config = Run({"cat", store_, "/model/config.json"});
  EXPECT_EQ(config.exit_code, 0);
  EXPECT_TRUE(config.out == test::ReadAll(model + "/config.json"));
}

TEST_F(ZipnnfsCliTest, ClearErrors) {
  test::ToolRun missing = Run({"stats", Path("nope")});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("no such store"), std::string::npos) << missing.err;
  EXPECT_EQ(Run({"import"}).exit_code, 2);

  ASSERT_EQ(Run({"init", store_}).exit_code, 0);
  EXPECT_EQ(Run({"init", store_}).exit_code, 1) << "not empty";
  EXPECT_EQ(Run({"cat", store_, "/absent"}).exit_code, 1);
  {  // A running writer holds the lock: a second one is refused and the store is untouched.
    int fd = ::open((store_ + "/LOCK").c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::flock(fd, LOCK_EX), 0);
    test::ToolRun locked = Run({"import", store_, "/etc/hostname"});
    ::close(fd);
    EXPECT_EQ(locked.exit_code, 1);
    EXPECT_NE(locked.err.find("locked by another process"), std::string::npos) << locked.err;
  }
  // A report that cannot be written fails (it exited 0); with stdout closed, no store file
  // becomes the tool's stdout and takes the report.
  ASSERT_EQ(Run({"import", store_, "/etc/hostname"}).exit_code, 0);
  const std::string quoted = "'" + std::string(ZIPNNFS_BINARY) + "' ";
  for (const char* redirect : {"> /dev/full", ">&-"}) {
    for (const std::string& cmd : {"stats " + store_, "stats --json " + store_}) {
      const int rc = std::system((quoted + cmd + " " + redirect + " 2>/dev/null").c_str());
      EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 1) << cmd << " " << redirect;
    }
  }
  EXPECT_EQ(Run({"fsck", store_}).exit_code, 0);
  // Without its index file, a store is refused, and not given a new, empty one.
  fs::rename(store_ + "/index/data.mdb", Path("data.mdb"));
  test::ToolRun no_index = Run({"import", store_, "/etc/hostname", "--to", "/x"});
  EXPECT_EQ(no_index.exit_code, 1);
  EXPECT_NE(no_index.err.find("data.mdb"), std::string::npos) << no_index.err;
  EXPECT_FALSE(fs::exists(store_ + "/index/data.mdb"));
  fs::rename(Path("data.mdb"), store_ + "/index/data.mdb");
  std::ofstream(store_ + "/FORMAT", std::ios::trunc) << "zipnnfs-store 99\n";
  test::ToolRun version = Run({"stats", store_});
  EXPECT_EQ(version.exit_code, 1);
  EXPECT_NE(version.err.find("format version 99"), std::string::npos) << version.err;
}

}  // namespace
}  // namespace zipnn::tool
