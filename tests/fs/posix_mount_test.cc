// What a POSIX user of the mount meets, found by testing it with real programs (python's os
// calls, dd, stat, systemd's SIGTERM): replies the kernel never got, errnos other filesystems
// give, exit codes. Every test leaves no mount behind, even when it fails.
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "codec/container.h"
#include "tests/fs/mount_util.h"

namespace zipnn::test {
namespace {

// A read's reply is written with one writev of a header and one piece per chunk: a read across
// IOV_MAX chunks or more failed to be written ("fuse: writing device: Invalid argument"), so the
// kernel never got a reply and the reader hung (in D state with O_DIRECT). (Such reads now copy
// their bytes into one piece.)
TEST_F(FsTest, ReadAcrossMoreChunksThanIovMaxIsAnswered) {
  const std::string model = AlternatingDtypeSafetensors(3000);
  const std::string store = Path("store");
  Result<std::vector<std::vector<index::ChunkLocation>>> chunks =
      BuildStore(store, {{"tiny-tensors.safetensors", model}}, 256 << 10);
  ASSERT_TRUE(chunks.ok()) << chunks.status().message();
  ASSERT_GT((*chunks)[0].size(), 2u * IOV_MAX) << "the test needs reads across IOV_MAX chunks";
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;

  // One request for the whole file (O_DIRECT: not cut into pages by the page cache), then the
  // page cache's own reads.
  const int fd = ::open(m.Path("tiny-tensors.safetensors").c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  std::string buf(model.size() + 4096, '\0');
  const ssize_t n = ::pread(fd, buf.data(), buf.size(), 0);
  const int err = errno;
  ::close(fd);
  ASSERT_EQ(n, static_cast<ssize_t>(model.size())) << std::strerror(err);
  buf.resize(model.size());
  EXPECT_TRUE(buf == model) << "wrong bytes through O_DIRECT";
  EXPECT_TRUE(ReadFile(m.Path("tiny-tensors.safetensors")) == model) << "wrong bytes";
  EXPECT_TRUE(m.Unmount());
}

// `zipnnfs STORE MNT -f ARGS...` as a child of the test, as systemd runs it: its exit status is
// the daemon's own. The destructor kills it and detaches the mount if the test did not end it.
class ForegroundMount {
 public:
  ForegroundMount(const std::string& store, const std::string& mnt, std::vector<std::string> args)
      : mnt_(mnt) {
    args.insert(args.begin(), {kZipnnfs, store, mnt, "-f"});
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(devnull, STDOUT_FILENO);
      ::dup2(devnull, STDERR_FILENO);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(devnull);
    if (pid_ > 0) pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
  }
  ~ForegroundMount() {
    if (pid_ <= 0) return;
    if (!exited_) ::syscall(SYS_pidfd_send_signal, pidfd_, SIGKILL, nullptr, 0);
    if (IsMountPoint(mnt_)) RunCommand("fusermount3", {"-uz", mnt_});
    if (!exited_) ::waitpid(pid_, nullptr, 0);
    ::close(pidfd_);
  }

  // Waits until the mount appears in the mount table or the daemon exits; true if mounted. The
  // kernel flags /proc/self/mountinfo with POLLPRI when the table changed since it was opened
  // (or last polled), so a mount between a check and the poll is not missed.
  bool WaitUntilMounted(int timeout_ms) {
    const int table = ::open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (table < 0) return false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    bool mounted;
    while (!(mounted = IsMountPoint(mnt_))) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p[2] = {{table, POLLPRI, 0}, {pidfd_, POLLIN, 0}};
      if (::poll(p, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
      if (p[1].revents != 0) {  // the daemon exited: one last look
        mounted = IsMountPoint(mnt_);
        break;
      }
    }
    ::close(table);
    return mounted;
  }

  // Sends `sig` and waits for the daemon to exit; its exit status (-1 if killed or too slow).
  int SignalAndWait(int sig) {
    if (pid_ <= 0 || ::syscall(SYS_pidfd_send_signal, pidfd_, sig, nullptr, 0) != 0) return -1;
    if (!WaitForExit(pidfd_, 30000)) return -1;
    int status = 0;
    if (::waitpid(pid_, &status, 0) != pid_) return -1;
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  std::string mnt_;
  pid_t pid_ = -1;
  int pidfd_ = -1;
  bool exited_ = false;
};

// systemd stops a foreground mount (a Type=simple service) with SIGTERM, a terminal with SIGINT
// or SIGHUP; the README names SIGINT and SIGTERM as ways to unmount. libfuse's loop returns the
// signal's number, which the daemon turned into exit status 1, so systemd marked every stopped
// mount as failed.
TEST_F(FsTest, SignalsEndAForegroundMountWithStatusZero) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", "abc"}}, 64 << 10).ok());
  const std::string mnt = MakeDir("mnt");
  const std::vector<std::pair<int, std::vector<std::string>>> cases = {
      {SIGTERM, {}}, {SIGINT, {}}, {SIGHUP, {}}, {SIGTERM, {"-s"}}};
  for (const auto& [sig, args] : cases) {
    SCOPED_TRACE(std::string(strsignal(sig)) + (args.empty() ? "" : " with -s"));
    ForegroundMount m(store, mnt, args);
    ASSERT_TRUE(m.WaitUntilMounted(20000)) << "the foreground daemon did not mount";
    EXPECT_EQ(ReadFile(mnt + "/f"), "abc");
    EXPECT_EQ(m.SignalAndWait(sig), 0);
    EXPECT_FALSE(IsMountPoint(mnt)) << "the signal left the mount behind";
  }
}

// The signals that end a session must reach the daemon's main thread, the one libfuse's loop
// sleeps in: a SIGTERM taken by a prefetch worker (which blocked nothing) while the main thread
// had signals blocked to start the first FUSE worker set the exit flag without waking the loop,
// and the daemon went on serving (a full run once saw SignalsEndAForegroundMountWithStatusZero
// wait 30 s for it). Every other thread must block them.
TEST_F(FsTest, OnlyTheMainThreadTakesStopSignals) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", Bf16Like(1 << 20, 3)}}, 64 << 10).ok());
  Mount m(store, MakeDir("mnt"), {"-o", "workers=2,prefetch=8"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  ASSERT_GT(m.daemon_pid(), 0);
  EXPECT_EQ(ReadFile(m.Path("f")).size(), 1u << 20);  // every kind of thread has started
  const std::string tasks = "/proc/" + std::to_string(m.daemon_pid()) + "/task";
  int others = 0;
  for (const auto& t : std::filesystem::directory_iterator(tasks)) {
    if (t.path().filename() == std::to_string(m.daemon_pid())) continue;
    std::ifstream status(t.path() / "status");
    std::string line;
    uint64_t blocked = 0;
    while (std::getline(status, line)) {
      if (line.rfind("SigBlk:", 0) == 0) blocked = std::stoull(line.substr(7), nullptr, 16);
    }
    for (int sig : {SIGHUP, SIGINT, SIGTERM}) {
      EXPECT_NE(blocked & (1ull << (sig - 1)), 0u)
          << "thread " << t.path().filename() << " takes " << strsignal(sig);
    }
    ++others;
  }
  EXPECT_GE(others, 2) << "expected prefetch workers and FUSE workers";
  EXPECT_TRUE(m.Unmount());
}

// A name longer than NAME_MAX (255 bytes, statfs's f_namemax) is ENAMETOOLONG on Linux
// filesystems; the kernel leaves the check to FUSE daemons for names of up to 1024 bytes, and
// zipnnfs answered ENOENT, so a program could not tell a bad name from an absent file.
// Holes (of a sparse source, or any all-zero chunk) show as holes: st_blocks counts the rest, and
// SEEK_DATA/SEEK_HOLE find them, so that cp, rsync and tar -S make sparse copies. They counted as
// data: a copy of a 1 GiB sparse file out of the mount took 1 GiB.
TEST_F(FsTest, HolesShowInBlocksAndSeeks) {
  constexpr uint32_t kChunkSize = 64 << 10;
  std::string sparse(16 * kChunkSize, '\0');
  sparse[3 * kChunkSize + 5] = 1;  // data in chunks 3, 4 and 9 (of 16); the end is a hole
  sparse[4 * kChunkSize] = 2;
  sparse[9 * kChunkSize + 100] = 3;
  std::string dense(3 * kChunkSize + 1000, 'x');
  const std::string store = Path("store");
  Result<std::vector<std::vector<index::ChunkLocation>>> chunks =
      BuildStore(store, {{"sparse", sparse}, {"dense", dense}}, kChunkSize);
  ASSERT_TRUE(chunks.ok()) << chunks.status().message();
  uint64_t zero = 0;  // (the premise: all-zero chunks are stored as such)
  for (const index::ChunkLocation& c : (*chunks)[0]) {
    const bool all_zero =
        sparse.find_first_not_of('\0', c.file_offset) >= c.file_offset + c.raw_size;
    ASSERT_EQ(c.method == Method::kZero, all_zero) << c.file_offset;
    if (all_zero) zero += c.raw_size;
  }
  ASSERT_GE(zero, 12u * kChunkSize);
  // SEEK_DATA and SEEK_HOLE as the chunks say: the first offset from `x` in a data chunk (-1 past
  // the last), or in a zero chunk (else the end).
  auto expect_seek = [&](off_t x, int whence) -> off_t {
    for (const index::ChunkLocation& c : (*chunks)[0]) {
      const off_t end = off_t(c.file_offset + c.raw_size);
      if (end > x && (c.method == Method::kZero) == (whence == SEEK_HOLE))
        return std::max(x, off_t(c.file_offset));
    }
    return whence == SEEK_HOLE ? off_t(sparse.size()) : -1;
  };
  std::vector<off_t> probes = {0};
  for (const index::ChunkLocation& c : (*chunks)[0]) {
    for (off_t d : {-1, 0, 1, 5000}) {
      if (off_t(c.file_offset) + d >= 0 && off_t(c.file_offset) + d < off_t(sparse.size()))
        probes.push_back(off_t(c.file_offset) + d);
    }
  }
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;

  struct stat st;
  ASSERT_EQ(::stat(m.Path("sparse").c_str(), &st), 0);
  EXPECT_EQ(uint64_t(st.st_blocks) * 512, sparse.size() - zero);
  ASSERT_EQ(::stat(m.Path("dense").c_str(), &st), 0);
  EXPECT_EQ(uint64_t(st.st_blocks), (dense.size() + 511) / 512);

  for (const char* name : {"sparse", "dense"}) {  // each before and after its blocks are known
    UniqueFd fd(::open(m.Path(name).c_str(), O_RDONLY));
    ASSERT_TRUE(fd.valid());
    if (std::string(name) == "dense") {
      EXPECT_EQ(::lseek(fd.get(), 0, SEEK_DATA), 0);
      EXPECT_EQ(::lseek(fd.get(), 7, SEEK_HOLE), off_t(dense.size()));
      continue;
    }
    for (off_t x : probes) {
      for (int whence : {SEEK_DATA, SEEK_HOLE}) {
        errno = 0;
        EXPECT_EQ(::lseek(fd.get(), x, whence), expect_seek(x, whence))
            << (whence == SEEK_DATA ? "SEEK_DATA from " : "SEEK_HOLE from ") << x;
        if (expect_seek(x, whence) < 0) {
          EXPECT_EQ(errno, ENXIO);
        }
      }
    }
    errno = 0;
    EXPECT_EQ(::lseek(fd.get(), off_t(sparse.size()), SEEK_HOLE), -1);
    EXPECT_EQ(errno, ENXIO);
  }

  // cp makes a sparse copy, byte-exact.
  const CommandResult cp = RunCommand("cp", {m.Path("sparse"), Path("copy")});
  ASSERT_EQ(cp.exit_code, 0) << cp.err;
  EXPECT_TRUE(ReadFile(Path("copy")) == sparse);
  ASSERT_EQ(::stat(Path("copy").c_str(), &st), 0);
  EXPECT_LE(uint64_t(st.st_blocks) * 512, sparse.size() / 2) << "the copy is not sparse";
  EXPECT_TRUE(m.Unmount());
}

// statfs gives the store's size on disk. It walked the store on each call: a mount inside its
// own store was walked through, and with one FUSE thread (-s) the walk waited on itself (df hung).
TEST_F(FsTest, StatfsOfAMountInsideItsStoreAnswers) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", std::string(1 << 20, 'x')}}, 64 << 10).ok());
  const std::string mnt = MakeDir("store/mnt");
  uint64_t store_bytes = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(store)) {
    struct stat f;
    ASSERT_EQ(::lstat(e.path().c_str(), &f), 0);
    store_bytes += static_cast<uint64_t>(f.st_blocks) * 512;
  }
  Mount m(store, mnt, {"-s"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  // In a child with a deadline: a hung statfs must fail the test, not hang it.
  const CommandResult df = RunCommand("timeout", {"20", "stat", "-f", "-c", "%b %S", m.path()});
  ASSERT_EQ(df.exit_code, 0) << df.err;
  uint64_t blocks = 0, unit = 0;
  std::istringstream(df.out) >> blocks >> unit;
  EXPECT_GE(blocks * unit, store_bytes);
  EXPECT_LT(blocks * unit, store_bytes + unit) << "not the store's size";
  EXPECT_EQ(ReadFile(m.Path("f")), std::string(1 << 20, 'x'));
  EXPECT_TRUE(m.Unmount());
}

TEST_F(FsTest, NamesLongerThanNameMaxAreTooLong) {
  const std::string longest(255, 'n');
  WriteFile(MakeDir("src") + "/" + longest, "255");  // (memfd names, BuildStore's, are shorter)
  const std::string store = Path("store");
  ASSERT_EQ(RunCommand(kZipnnfs, {"init", store}).exit_code, 0);
  const CommandResult imp = RunCommand(kZipnnfs, {"import", "-q", store, Path("src")});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  auto path = [&](const std::string& name) { return m.Path("src/" + name); };
  auto stat_errno = [&](const std::string& name) {
    struct stat st;
    return ::stat(path(name).c_str(), &st) == 0 ? 0 : errno;
  };
  EXPECT_EQ(stat_errno(longest), 0);
  EXPECT_EQ(ReadFile(path(longest)), "255");
  EXPECT_EQ(stat_errno(std::string(255, 'm')), ENOENT);
  for (size_t len : {256, 600, 1024}) {
    EXPECT_EQ(stat_errno(std::string(len, 'n')), ENAMETOOLONG) << len << " bytes";
    const int fd = ::open(path(std::string(len, 'n')).c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_EQ(fd < 0 ? errno : 0, ENAMETOOLONG) << "open, " << len << " bytes";
    if (fd >= 0) ::close(fd);
  }
  EXPECT_TRUE(m.Unmount());
}

// A POSIX access ACL as Linux stores it in system.posix_acl_access: the owner rw-, user `uid`
// with `perm`, the group and mask r--, others `other`.
std::string AccessAcl(uint32_t uid, uint16_t perm, uint16_t other) {
  std::string v;
  auto put = [&](uint64_t x, int bytes) {
    for (int i = 0; i < bytes; i++) v.push_back(static_cast<char>(x >> (8 * i)));
  };
  put(2, 4);  // version
  const struct {
    uint16_t tag, perm;
    uint32_t id;
  } entries[] = {
      {0x01, 6, ~0u}, {0x02, perm, uid}, {0x04, 4, ~0u}, {0x10, 4, ~0u}, {0x20, other, ~0u}};
  for (const auto& e : entries) {
    put(e.tag, 2);
    put(e.perm, 2);
    put(e.id, 4);
  }
  return v;
}

// The mount enforces the ACLs its files carry, as the source filesystem did: with allow_other, a
// user an ACL denies read a file its mode allowed, and one it grants was refused.
TEST_F(FsTest, AclsAreEnforced) {
  constexpr uid_t kUser = 1234;
  const std::string src = MakeDir("src");
  WriteFile(src + "/grant", "granted");
  WriteFile(src + "/deny", "denied");
  WriteFile(src + "/plain", "plain");
  ::chmod((src + "/grant").c_str(), 0640);
  ::chmod((src + "/deny").c_str(), 0644);
  ::chmod((src + "/plain").c_str(), 0644);
  const std::string grant = AccessAcl(kUser, 4, 0), deny = AccessAcl(kUser, 0, 4);
  if (::setxattr((src + "/grant").c_str(), "system.posix_acl_access", grant.data(), grant.size(),
                 0) != 0 ||
      ::setxattr((src + "/deny").c_str(), "system.posix_acl_access", deny.data(), deny.size(), 0) !=
          0) {
    GTEST_SKIP() << "the test directory's filesystem has no ACLs: " << std::strerror(errno);
  }
  const std::string store = Path("store");
  ASSERT_EQ(RunCommand(kZipnnfs, {"init", store}).exit_code, 0);
  const CommandResult imp = RunCommand(kZipnnfs, {"import", "-q", store, src});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  ::chmod(dir_.c_str(), 0755);  // the other user reaches the mount point
  Mount m(store, MakeDir("mnt"), {"-o", "allow_other"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  // errno of opening each file as kUser, a byte each, from a child that drops to that user.
  auto open_as_user = [&](const std::string& name) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (::setgid(kUser) != 0 || ::setuid(kUser) != 0) ::_exit(255);
      const int fd = ::open(m.Path("src/" + name).c_str(), O_RDONLY | O_CLOEXEC);
      ::_exit(fd >= 0 ? 0 : errno);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  EXPECT_EQ(open_as_user("plain"), 0) << "the user cannot reach the mount at all";
  EXPECT_EQ(open_as_user("grant"), 0) << "the ACL grants read";
  EXPECT_EQ(open_as_user("deny"), EACCES) << "the ACL denies read";
  EXPECT_TRUE(m.Unmount());
}

// A read-only bind mount of a directory, undone (lazily: a daemon may still be leaving it) when
// destroyed.
class ReadOnlyBind {
 public:
  ReadOnlyBind(const std::string& from, const std::string& to) : to_(to) {
    bound_ = ::mount(from.c_str(), to.c_str(), nullptr, MS_BIND, nullptr) == 0;
    ro_ = bound_ &&
          ::mount(nullptr, to.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) == 0;
  }
  ~ReadOnlyBind() {
    if (bound_) ::umount2(to_.c_str(), MNT_DETACH);
  }
  bool ok() const { return ro_; }

 private:
  std::string to_;
  bool bound_ = false, ro_ = false;
};

// A store on read-only media (a shared volume; a read-only bind mount here) mounts and serves its
// files (it was refused with "LOCK: Read-only file system") under a shared lock: other read-only
// mounts share it, writers by another path are refused.
TEST_F(FsTest, StoreOnReadOnlyMediaMounts) {
  const std::string store = Path("store"), data = Bf16Like(1 << 20, 5);
  ASSERT_TRUE(BuildStore(store, {{"f", data}}, 64 << 10).ok());
  ReadOnlyBind ro(store, MakeDir("ro"));
  if (!ro.ok()) GTEST_SKIP() << "needs root to bind-mount";
  Mount m(Path("ro"), MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  EXPECT_TRUE(ReadFile(m.Path("f")) == data);
  // The store is writable by its own path all the same: writers wait for the mount to end.
  WriteFile(Path("new"), "x");
  const CommandResult imp = RunCommand(kZipnnfs, {"import", store, Path("new")});
  EXPECT_NE(imp.exit_code, 0);
  EXPECT_NE(imp.err.find("locked"), std::string::npos) << imp.err;
  Mount second(Path("ro"), MakeDir("mnt2"));  // read-only mounts share the store
  ASSERT_TRUE(second.ok()) << second.result().err;
  EXPECT_TRUE(ReadFile(second.Path("f")) == data);
  EXPECT_TRUE(second.Unmount());
  EXPECT_TRUE(m.Unmount());
}

}  // namespace
}  // namespace zipnn::test
