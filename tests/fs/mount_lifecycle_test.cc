// The mount's life and failures: damaged chunks, a store already mounted, bad mount points,
// SIGTERM, busy unmounts. Every test leaves no mount behind, even when it fails.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/fs/mount_util.h"

namespace zipnn::test {
namespace {

constexpr uint32_t kChunk = 64 << 10;

std::string PackPath(const std::string& store, uint32_t pack_id) {
  char name[64];
  std::snprintf(name, sizeof name, "/packs/pack-%06u.znp", pack_id);
  return store + name;
}

// Flips every bit of one byte of a pack file.
void FlipByte(const std::string& path, uint64_t offset) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  uint8_t b = 0;
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b = static_cast<uint8_t>(~b);
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  ::close(fd);
}

TEST_F(FsTest, CorruptedChunkGivesEioOnItsRangeOnly) {
  const std::string data = Bf16Like(2 << 20, 11);  // 32 chunks, all different
  const std::string store = Path("store");
  Result<std::vector<std::vector<index::ChunkLocation>>> chunks =
      BuildStore(store, {{"weights.bin", data}}, kChunk);
  ASSERT_TRUE(chunks.ok()) << chunks.status().message();
  ASSERT_GE((*chunks)[0].size(), 8u);
  // Damage the payload of a chunk in the middle of the file.
  const index::ChunkLocation bad = (*chunks)[0][(*chunks)[0].size() / 2];
  FlipByte(PackPath(store, bad.pack_id), bad.pack_offset + bad.frame_size / 2);
  const uint64_t bad_begin = bad.file_offset, bad_end = bad.file_offset + bad.raw_size;
  ASSERT_GE(bad.raw_size, 16384u);

  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  const int fd = ::open(m.Path("weights.bin").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::string buf(kChunk, '\0');
  // The damaged range: EIO, never wrong bytes; twice, as failures are not cached.
  for (int attempt = 0; attempt < 2; ++attempt) {
    errno = 0;
    EXPECT_EQ(::pread(fd, buf.data(), 4096, static_cast<off_t>(bad_begin + 8192)), -1);
    EXPECT_EQ(errno, EIO) << "attempt " << attempt;
  }
  errno = 0;
  EXPECT_EQ(::pread(fd, buf.data(), 100, static_cast<off_t>(bad_end - 100)), -1);
  EXPECT_EQ(errno, EIO);
  // Everything else reads correctly, including the chunks right beside the damaged one.
  for (const index::ChunkLocation& c : (*chunks)[0]) {
    if (c.file_offset == bad_begin) continue;
    const ssize_t n = ::pread(fd, buf.data(), c.raw_size, static_cast<off_t>(c.file_offset));
    ASSERT_EQ(n, static_cast<ssize_t>(c.raw_size))
        << "chunk at " << c.file_offset << ": " << std::strerror(errno);
    EXPECT_EQ(std::memcmp(buf.data(), data.data() + c.file_offset, c.raw_size), 0)
        << "chunk at " << c.file_offset;
  }
  ::close(fd);

  const CommandResult stats = RunCommand(kZipnnfs, {"stats", m.path()});
  ASSERT_EQ(stats.exit_code, 0) << stats.err;
  const nlohmann::json j = nlohmann::json::parse(stats.out);
  EXPECT_EQ(j["bad_chunks"].get<uint64_t>(), 1u) << "one damaged chunk, however often read";
  EXPECT_GE(j["read_errors"].get<uint64_t>(), 3u);
  // PATHs are a store's: of a mount they were ignored without a word.
  const CommandResult paths = RunCommand(kZipnnfs, {"stats", m.path(), "/f"});
  EXPECT_EQ(paths.exit_code, 1);
  EXPECT_NE(paths.err.find("no per-path part"), std::string::npos) << paths.err;
  EXPECT_TRUE(m.Unmount());
}

TEST_F(FsTest, SecondMountOfAStoreFailsNamingTheLock) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", "hello"}}, kChunk).ok());
  Mount first(store, MakeDir("mnt1"));
  ASSERT_TRUE(first.ok()) << first.result().err;
  {
    Mount second(store, MakeDir("mnt2"));
    EXPECT_FALSE(second.ok()) << "a store was mounted twice";
    EXPECT_NE(second.result().exit_code, 0);
    EXPECT_NE(second.result().err.find("lock"), std::string::npos) << second.result().err;
    EXPECT_FALSE(IsMountPoint(Path("mnt2")));
  }
  // The first mount is unharmed.
  EXPECT_EQ(ReadFile(first.Path("f")), "hello");
  EXPECT_TRUE(first.Unmount());
  // Once it is gone, the store mounts again.
  Mount again(store, Path("mnt2"));
  ASSERT_TRUE(again.ok()) << again.result().err;
  EXPECT_EQ(ReadFile(again.Path("f")), "hello");
}

TEST_F(FsTest, BadMountPointsFailClearly) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", "x"}}, kChunk).ok());
  {
    Mount m(store, Path("missing"));
    EXPECT_FALSE(m.ok());
    EXPECT_EQ(m.result().exit_code, 1) << "an error, not a usage error (2, from libfuse)";
    EXPECT_NE(m.result().err.find("zipnnfs: mount point"), std::string::npos) << m.result().err;
    EXPECT_NE(m.result().err.find("missing"), std::string::npos) << m.result().err;
    EXPECT_NE(m.result().err.find("No such file"), std::string::npos) << m.result().err;
  }
  WriteFile(Path("plain-file"), "not a directory");
  {
    Mount m(store, Path("plain-file"));
    EXPECT_FALSE(m.ok());
    EXPECT_EQ(m.result().exit_code, 1);
    EXPECT_NE(m.result().err.find("not a directory"), std::string::npos) << m.result().err;
  }
  {
    Mount m(MakeDir("not-a-store"), MakeDir("mnt"));
    EXPECT_FALSE(m.ok());
    EXPECT_NE(m.result().exit_code, 0);
    EXPECT_NE(m.result().err.find("not-a-store"), std::string::npos) << m.result().err;
  }
  EXPECT_TRUE(MountsUnder(dir_).empty());
  // No failed attempt left the store locked.
  EXPECT_TRUE(StoreUnlocked(store));
}

// The options /proc/mounts lists for the mount at `path`, each between commas (",ro,nosuid,"),
// for finding one by name; empty: not mounted.
std::string MountOptions(const std::string& path) {
  std::ifstream mounts("/proc/mounts");
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string device, at, type, options;
    fields >> device >> at >> type >> options;
    if (at == path) return std::string(",").append(options).append(",");
  }
  return "";
}

// Mounted as mount(8) does for root (`mount -t fuse.zipnnfs`, fstab: mount.fuse3 passes
// "dev,suid"), the mount still honours no set-id bit or device node of the store: a set-uid program
// imported from anywhere ran as root for any user.
TEST_F(FsTest, MountsAreNosuidAndNodevHoweverAskedFor) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", "abc"}}, kChunk).ok());
  Mount m(store, MakeDir("mnt"), {"-o", "dev,suid"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  const std::string opts = MountOptions(m.path());
  EXPECT_NE(opts.find(",nosuid,"), std::string::npos) << opts;
  EXPECT_NE(opts.find(",nodev,"), std::string::npos) << opts;
  EXPECT_TRUE(m.Unmount());
}

// The store's path goes into the mount's options (fsname): a comma in it split them, failing the
// mount, or, as ",suid,dev", undid nosuid and nodev.
TEST_F(FsTest, StorePathsWithCommasMountAndAddNoOptions) {
  MakeDir("a,suid,dev");
  const std::string store = Path("a,suid,dev/s\\,x");
  ASSERT_TRUE(BuildStore(store, {{"f", "abc"}}, kChunk).ok());
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  EXPECT_EQ(ReadFile(m.Path("f")), "abc");
  const std::string opts = MountOptions(m.path());
  EXPECT_NE(opts.find(",nosuid,"), std::string::npos) << opts;
  EXPECT_NE(opts.find(",nodev,"), std::string::npos) << opts;
  EXPECT_TRUE(m.Unmount());
}

// A mount over the directory that holds the store (`zipnnfs /srv/models/.store /srv/models`),
// or over the store itself, hides the store's own paths: packs opened by path then resolved into
// the mount, and every read failed with EIO, logged as a missing pack.
TEST_F(FsTest, MountOverTheStoresDirectoryServesReads) {
  const std::string models = MakeDir("models");
  const std::string store = models + "/.store";
  ASSERT_TRUE(
      BuildStore(store, {{"f", "hello"}, {"g", std::string(3 * kChunk + 5, 'x')}}, kChunk).ok());
  for (const std::string& at : {models, store}) {
    Mount m(store, at);
    ASSERT_TRUE(m.ok()) << m.result().err;
    EXPECT_EQ(ReadFile(m.Path("f")), "hello") << "mounted on " << at;
    EXPECT_EQ(ReadFile(m.Path("g")), std::string(3 * kChunk + 5, 'x')) << "mounted on " << at;
    // (statfs looked the store up by path: over the store, the daemon asked itself and hung.)
    struct statvfs vfs;
    EXPECT_EQ(::statvfs(m.path().c_str(), &vfs), 0)
        << "mounted on " << at << ": " << std::strerror(errno);
    EXPECT_TRUE(m.Unmount());
  }
}

TEST_F(FsTest, StaleMountPointFailsClearly) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", "abc"}}, kChunk).ok());
  Mount dead(store, MakeDir("mnt"));
  ASSERT_TRUE(dead.ok()) << dead.result().err;
  ASSERT_GT(dead.daemon_pid(), 0);
  // Used before it died, its root's attributes stay in the kernel's cache: stat alone still
  // answers, and the new mount stacked on the dead one.
  struct stat st;
  ASSERT_EQ(::stat(dead.path().c_str(), &st), 0);
  // A daemon that dies without unmounting leaves a mount that answers ENOTCONN.
  ASSERT_EQ(::kill(dead.daemon_pid(), SIGKILL), 0);
  ASSERT_TRUE(dead.WaitForDaemonExit(20000));
  struct statvfs vfs;
  EXPECT_NE(::statvfs(dead.path().c_str(), &vfs), 0);
  EXPECT_EQ(errno, ENOTCONN);
  Mount again(store, dead.path());
  EXPECT_FALSE(again.ok());
  EXPECT_NE(again.result().err.find("fusermount3 -u"), std::string::npos)
      << "the message should say how to clear a stale mount: " << again.result().err;
  // So does `zipnnfs stats` of it (it aborted on an uncaught filesystem_error).
  const CommandResult stats = RunCommand(kZipnnfs, {"stats", dead.path()});
  EXPECT_EQ(stats.exit_code, 1) << stats.err;
  EXPECT_NE(stats.err.find("fusermount3 -u"), std::string::npos) << stats.err;
}

TEST_F(FsTest, SigtermUnmountsCleanly) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", Bf16Like(1 << 20, 5)}}, kChunk).ok());
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  ASSERT_GT(m.daemon_pid(), 0) << "no process holds " << store << "/LOCK";
  EXPECT_EQ(ReadFile(m.Path("f")).size(), 1u << 20);
  ASSERT_EQ(::kill(m.daemon_pid(), SIGTERM), 0);
  EXPECT_TRUE(m.WaitForDaemonExit(20000)) << "the daemon did not exit on SIGTERM";
  EXPECT_FALSE(IsMountPoint(m.path())) << "SIGTERM left the mount behind";
  EXPECT_TRUE(StoreUnlocked(store));
}

TEST_F(FsTest, SigintUnmountsCleanly) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", "abc"}}, kChunk).ok());
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  ASSERT_GT(m.daemon_pid(), 0);
  ASSERT_EQ(::kill(m.daemon_pid(), SIGINT), 0);
  EXPECT_TRUE(m.WaitForDaemonExit(20000)) << "the daemon did not exit on SIGINT";
  EXPECT_FALSE(IsMountPoint(m.path()));
}

TEST_F(FsTest, FusermountUnmountEndsTheDaemon) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", "abc"}}, kChunk).ok());
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  EXPECT_TRUE(IsMountPoint(m.path()));
  ASSERT_GT(m.daemon_pid(), 0);
  // Unmount is clean only if fusermount3 -u worked and the daemon then exited by itself.
  EXPECT_TRUE(m.Unmount()) << "fusermount3 -u failed or the daemon did not exit";
  EXPECT_FALSE(IsMountPoint(m.path()));
  EXPECT_TRUE(StoreUnlocked(store)) << "the daemon still holds the store";
}

// The fixture's own guarantee: a test that fails with a file still open (the mount is busy, so
// fusermount3 -u refuses) still leaves no mount and no daemon behind.
TEST_F(FsTest, BusyMountIsStillCleanedUp) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", "abc"}}, kChunk).ok());
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  const int fd = ::open(m.Path("f").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_FALSE(m.Unmount()) << "a busy mount should have needed force";
  EXPECT_FALSE(IsMountPoint(m.path()));
  EXPECT_TRUE(StoreUnlocked(store));
  ::close(fd);
}

// What an fstab line may carry (mount(8) itself drops defaults, nofail, x-systemd.* and the
// like): the atime flags libfuse does not know are taken, not refused.
TEST_F(FsTest, FstabAtimeOptionsMount) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", "abc"}}, kChunk).ok());
  Mount m(store, MakeDir("mnt"),
          {"-o", "ro,relatime,nodiratime,noatime,lazytime,nosuid,nodev,cache_size=1M"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  EXPECT_EQ(ReadFile(m.Path("f")), "abc");
  EXPECT_TRUE(m.Unmount());
}

// Options may come first, as sshfs and squashfuse take them (`zipnnfs -f -o ... STORE MNT` was
// refused with "A subcommand is required"); counts past 32 bits wrapped around silently, and "-1"
// was taken, as were negative timeouts.
TEST_F(FsTest, MountOptionsMayComeFirstAndAreChecked) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"f", "abc"}}, kChunk).ok());
  const std::string mnt = MakeDir("mnt");
  // (4294968320 is 2^32 + 1024: read as 32 bits, a valid 1024.)
  for (const char* opt :
       {"read_ahead_kb=99999999999", "read_ahead_kb=4294968320", "workers=4294967297",
        "prefetch=-1", "workers=2x", "entry_timeout=-5", "attr_timeout=nan"}) {
    const CommandResult bad = RunCommand(kZipnnfs, {store, mnt, "-o", opt});
    EXPECT_EQ(bad.exit_code, 2) << opt << ": " << bad.err;
    EXPECT_NE(bad.err.find(std::string(opt).substr(0, 7)), std::string::npos) << bad.err;
  }
  const CommandResult r = RunCommand(kZipnnfs, {"-o", "cache_size=1M", store, mnt});
  struct Detach {
    std::string mnt;
    ~Detach() {
      if (IsMountPoint(mnt)) RunCommand("fusermount3", {"-uz", mnt});
    }
  } detach{mnt};
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ReadFile(mnt + "/f"), "abc");
  EXPECT_EQ(RunCommand("fusermount3", {"-u", mnt}).exit_code, 0);
  WaitForStoreUnlocked(store);
}

TEST_F(FsTest, HelpListsEveryMountOption) {
  const CommandResult r = RunCommand(kZipnnfs, {"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* opt : {"cache_size=", "workers=", "prefetch=", "log_level=", "-f", "-d"}) {
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt;
  }
}

}  // namespace
}  // namespace zipnn::test
