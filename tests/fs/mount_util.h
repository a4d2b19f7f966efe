// Helpers for tests that mount stores with real FUSE: running commands, the mount table, a Mount
// that always unmounts, a fixture with a temporary directory that never leaves a mount behind,
// and generated test data.
//
// Synchronisation is by events, never by sleeping: `zipnnfs STORE MNT` (without -f) returns only
// once the mount is ready, and the end of a daemon is seen through a pidfd and STORE/LOCK, which
// the daemon holds while it runs.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "codec/status.h"
#include "index/index.h"

namespace zipnn::test {

#ifdef ZIPNNFS_BINARY
inline constexpr const char* kZipnnfs = ZIPNNFS_BINARY;
#else
inline constexpr const char* kZipnnfs = "zipnnfs";
#endif

// The real-weights corpus: $ZIPNN_CORPUS, else the directory beside the checkout.
inline std::filesystem::path CorpusDir() {
  if (const char* env = std::getenv("ZIPNN_CORPUS"); env && *env) return env;
  return ZIPNN_CORPUS_DIR;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(out.good()) << path;
}

// ---- Commands ----

struct CommandResult {
  int exit_code = -1;  // -1: did not exit normally
  std::string out, err;
};

inline std::string ReadMemFd(int fd) {
  std::string s;
  char buf[4096];
  off_t off = 0;
  for (ssize_t n; (n = ::pread(fd, buf, sizeof buf, off)) > 0; off += n) s.append(buf, n);
  ::close(fd);
  return s;
}

// Runs `program args...` (PATH is searched) and captures its output. Output goes to memory
// files, not pipes: a daemonizing child keeps its copies of stdout and stderr open, and reading
// a pipe to its end would wait for the daemon.
inline CommandResult RunCommand(const std::string& program, const std::vector<std::string>& args) {
  const int out = ::memfd_create("stdout", MFD_CLOEXEC);
  const int err = ::memfd_create("stderr", MFD_CLOEXEC);
  CommandResult r;
  if (out < 0 || err < 0) {
    r.err = std::string("memfd_create: ") + std::strerror(errno);
    return r;
  }
  std::vector<char*> argv{const_cast<char*>(program.c_str())};
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out, STDOUT_FILENO);
    ::dup2(err, STDERR_FILENO);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  if (pid > 0 && ::waitpid(pid, &status, 0) == pid && WIFEXITED(status)) {
    r.exit_code = WEXITSTATUS(status);
  }
  r.out = ReadMemFd(out);
  r.err = ReadMemFd(err);
  return r;
}

// ---- The mount table ----

struct MountEntry {
  std::string point;   // unescaped
  std::string fstype;  // e.g. "fuse.zipnnfs"
};

inline std::string UnescapeMountInfo(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      out += static_cast<char>(std::strtol(s.substr(i + 1, 3).c_str(), nullptr, 8));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

inline std::vector<MountEntry> ReadMountTable() {
  std::vector<MountEntry> mounts;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, majmin, root, point, word;
    f >> id >> parent >> majmin >> root >> point;
    while (f >> word && word != "-") {
    }
    MountEntry e;
    e.point = UnescapeMountInfo(point);
    f >> e.fstype;
    mounts.push_back(std::move(e));
  }
  return mounts;
}

// The peak resident memory of process `pid` in bytes (VmHWM), or 0.
inline uint64_t PeakRss(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

inline bool IsMountPoint(const std::string& path) {
  for (const MountEntry& m : ReadMountTable()) {
    if (m.point == path) return true;
  }
  return false;
}

// Mount points at or below directory `dir`.
inline std::vector<std::string> MountsUnder(const std::string& dir) {
  std::vector<std::string> found;
  for (const MountEntry& m : ReadMountTable()) {
    if (m.point == dir || m.point.rfind(dir + "/", 0) == 0) found.push_back(m.point);
  }
  return found;
}

// ---- The daemon ----

// A process holding an flock on `path` (from /proc/locks), or -1; with `arg`, one whose command
// line has that argument (several read-only mounts share a store's lock). The mount daemon holds
// STORE/LOCK while it serves, so this finds it.
inline pid_t FlockHolder(const std::string& path, const std::string& arg = "") {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return -1;
  std::ifstream in("/proc/locks");
  std::string line;
  while (std::getline(in, line)) {
    // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters have "->" after the number.
    std::istringstream f(line);
    std::string num, type, advisory, mode, dev;
    long pid = -1;
    f >> num >> type;
    if (type != "FLOCK") continue;
    f >> advisory >> mode >> pid >> dev;
    unsigned maj = 0, min = 0;
    unsigned long long ino = 0;
    if (std::sscanf(dev.c_str(), "%x:%x:%llu", &maj, &min, &ino) != 3) continue;
    if (ino != st.st_ino || maj != major(st.st_dev) || min != minor(st.st_dev)) continue;
    if (arg.empty()) return static_cast<pid_t>(pid);
    std::ifstream cmdline("/proc/" + std::to_string(pid) + "/cmdline");
    for (std::string a; std::getline(cmdline, a, '\0');)
      if (a == arg) return static_cast<pid_t>(pid);
  }
  return -1;
}

// Waits up to `timeout_ms` for the process behind `pidfd` to exit.
inline bool WaitForExit(int pidfd, int timeout_ms) {
  pollfd p{pidfd, POLLIN, 0};
  int n;
  while ((n = ::poll(&p, 1, timeout_ms)) < 0 && errno == EINTR) {
  }
  return n == 1;
}

// True if nobody holds STORE/LOCK: no daemon (nor import) is using the store.
inline bool StoreUnlocked(const std::string& store) {
  const int fd = ::open((store + "/LOCK").c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  const bool free = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
  ::close(fd);
  return free;
}

// Blocks until nobody holds STORE/LOCK (the daemon has exited).
inline void WaitForStoreUnlocked(const std::string& store) {
  const int fd = ::open((store + "/LOCK").c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return;
  while (::flock(fd, LOCK_EX) != 0 && errno == EINTR) {
  }
  ::close(fd);
}

// ---- Mount ----

// Mounts a store for the lifetime of the object: `zipnnfs STORE MNT -o ...` daemonizes and
// returns once the mount is ready (or fails with a message). The destructor always unmounts and
// waits for the daemon to exit, forcing both if needed, so a failing test leaves nothing behind.
class Mount {
 public:
  // Longer than any test needs: only a hang reaches it.
  static constexpr std::chrono::seconds kWatchdog{45};

  Mount(std::string store, std::string mountpoint, std::vector<std::string> extra_args = {})
      : store_(std::move(store)), mountpoint_(std::move(mountpoint)) {
    std::vector<std::string> args{store_, mountpoint_};
    for (std::string& a : extra_args) args.push_back(std::move(a));
    result_ = RunCommand(kZipnnfs, args);
    if (result_.exit_code != 0) return;
    mounted_ = true;
    pid_ = FlockHolder(store_ + "/LOCK", mountpoint_);  // (as the daemon was given it)
    std::error_code ec;
    mountpoint_ = std::filesystem::canonical(mountpoint_, ec).string();
    if (pid_ > 0) pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    // A hung daemon would leave the test blocked in the kernel for good (a FUSE request being
    // served cannot be interrupted): past the deadline, kill the daemon, which aborts the
    // connection, so the test's reads fail with ENOTCONN and the hang is reported.
    if (pid_ > 0) {
      watchdog_ = std::thread([this] {
        std::unique_lock lock(watchdog_mu_);
        if (!watchdog_cv_.wait_for(lock, kWatchdog, [&] { return watchdog_done_; })) {
          watchdog_fired_ = true;
          Kill();
        }
      });
    }
  }
  ~Mount() { Unmount(); }
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  bool ok() const { return mounted_; }
  const CommandResult& result() const { return result_; }
  const std::string& path() const { return mountpoint_; }
  std::string Path(const std::string& rel) const { return mountpoint_ + "/" + rel; }
  pid_t daemon_pid() const { return pid_; }

  // Waits up to `timeout_ms` for the daemon to exit by itself (after a signal, say).
  bool WaitForDaemonExit(int timeout_ms) {
    if (pidfd_ < 0) return false;
    return WaitForExit(pidfd_, timeout_ms);
  }

  // Unmounts (fusermount3 -u) and waits for the daemon to exit. Returns false if that needed
  // force: the mount was busy or the daemon did not exit, so it was killed and the mount
  // detached (fusermount3 -uz).
  bool Unmount() {
    if (!mounted_) return true;
    mounted_ = false;
    bool clean = true;
    if (watchdog_.joinable()) {
      {
        std::lock_guard lock(watchdog_mu_);
        watchdog_done_ = true;
      }
      watchdog_cv_.notify_all();
      watchdog_.join();
      if (watchdog_fired_) {
        ADD_FAILURE() << "the zipnnfs daemon (pid " << pid_ << ") on " << mountpoint_
                      << " hung for " << kWatchdog.count() << " s and was killed";
        clean = false;
      }
    }
    if (IsMountPoint(mountpoint_)) {
      CommandResult r = RunCommand("fusermount3", {"-u", mountpoint_});
      if (r.exit_code != 0) {
        clean = false;
        // Busy (an open file or mapping) or hung: killing the daemon aborts the connection,
        // so nothing can wait on it any more, and the lazy unmount detaches the mount.
        Kill();
        RunCommand("fusermount3", {"-uz", mountpoint_});
      }
    }
    if (pidfd_ >= 0) {
      if (!WaitForExit(pidfd_, 30000)) {
        clean = false;
        Kill();
        WaitForExit(pidfd_, 30000);
      }
      ::close(pidfd_);
      pidfd_ = -1;
    }
    // The lock outlives nothing of the daemon: once it is free, the store is ours again.
    WaitForStoreUnlocked(store_);
    return clean;
  }

 private:
  // SIGKILL through the pidfd: never another process that got the daemon's pid after it died.
  void Kill() {
    if (pidfd_ >= 0) ::syscall(SYS_pidfd_send_signal, pidfd_, SIGKILL, nullptr, 0);
  }

  std::string store_, mountpoint_;
  CommandResult result_;
  bool mounted_ = false;
  pid_t pid_ = -1;
  int pidfd_ = -1;
  std::thread watchdog_;
  std::mutex watchdog_mu_;
  std::condition_variable watchdog_cv_;
  bool watchdog_done_ = false;
  bool watchdog_fired_ = false;
};

// ---- The safety net ----

// Every temporary directory the tests of this process made: whatever is still mounted below
// them at exit is detached, so even a crashed test leaves no mount behind. Never destroyed: the
// atexit safety net runs after static destructors.
inline std::mutex& TestDirsMutex() {
  static auto* mu = new std::mutex;
  return *mu;
}
inline std::set<std::string>& TestDirs() {
  static auto* dirs = new std::set<std::string>;
  return *dirs;
}

// Detaches every mount below the test directories of this process; returns what it found.
inline std::vector<std::string> UnmountLeftovers() {
  std::vector<std::string> left;
  std::set<std::string> dirs;
  {
    std::lock_guard lock(TestDirsMutex());
    dirs = TestDirs();
  }
  for (const std::string& d : dirs) {
    for (const std::string& m : MountsUnder(d)) {
      left.push_back(m);
      RunCommand("fusermount3", {"-uz", m});
    }
  }
  return left;
}

// ---- The fixture ----

// A fresh temporary directory per test, for stores, sources and mount points. TearDown checks
// that no mount is left below it (Mounts are locals or reset by the test, so they are gone by
// then) and only then removes it: remove_all must never walk into a live mount.
class FsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "zipnn-fstest-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = std::filesystem::canonical(tmpl).string();
    std::lock_guard lock(TestDirsMutex());
    TestDirs().insert(dir_);
  }
  void TearDown() override {
    if (dir_.empty()) return;
    const std::vector<std::string> left = MountsUnder(dir_);
    EXPECT_TRUE(left.empty()) << "mount left behind: " << left.front();
    for (const std::string& m : left) RunCommand("fusermount3", {"-uz", m});
    if (MountsUnder(dir_).empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  std::string MakeDir(const std::string& name) const {
    std::filesystem::create_directories(Path(name));
    return Path(name);
  }

  std::string dir_;
};

// ---- Test data ----

inline uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// BF16-like weights: random signs and mantissas, exponents bunched near 2^-6 as in trained
// layers, so the codec compresses them (exponent coding) and every chunk differs (no dedup).
inline std::string Bf16Like(size_t bytes, uint64_t seed) {
  std::string out(bytes, '\0');
  uint64_t state = seed;
  for (size_t i = 0; i + 1 < bytes; i += 2) {
    const uint64_t r = SplitMix64(state);
    const unsigned spread = static_cast<unsigned>(__builtin_ctzll(r | (1ull << 10)));  // geometric
    const unsigned exponent = 121 - std::min(spread, 20u);
    const unsigned sign = (r >> 20) & 1;
    const unsigned mantissa = (r >> 32) & 0x7f;
    const uint16_t v = static_cast<uint16_t>((sign << 15) | (exponent << 7) | mantissa);
    out[i] = static_cast<char>(v & 0xff);
    out[i + 1] = static_cast<char>(v >> 8);
  }
  return out;
}

// A .safetensors file of `count` 1 KiB tensors, BF16 and F32 in turn: a chunk each (tensors of
// another dtype share a chunk only under 1 KiB), so a 1 MiB read spans 1024 chunks or more.
inline std::string AlternatingDtypeSafetensors(int count) {
  std::string header = "{";
  std::string data;
  uint64_t state = 77;
  for (int i = 0; i < count; ++i) {
    const bool bf16 = i % 2 == 0;
    if (i != 0) header += ",";
    header += "\"t" + std::to_string(i) + "\":{\"dtype\":\"" + (bf16 ? "BF16" : "F32");
    header += std::string("\",\"shape\":[") + (bf16 ? "512" : "256") + "],\"data_offsets\":[";
    header += std::to_string(data.size()) + "," + std::to_string(data.size() + 1024) + "]}";
    for (size_t b = 0; b < 1024; ++b) data += static_cast<char>(SplitMix64(state) % 8);
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return file + header + data;
}

// A valid .safetensors file of BF16 tensors of the given element counts (odd sizes put tensor
// and chunk boundaries in odd places).
inline std::string SafetensorsBf16(const std::vector<uint64_t>& elements, uint64_t seed) {
  std::string header = "{";
  uint64_t off = 0;
  for (size_t i = 0; i < elements.size(); ++i) {
    const uint64_t size = elements[i] * 2;
    // Appended piece by piece: GCC 12's -Wrestrict misfires on a long chain of operator+.
    if (i != 0) header += ",";
    header += "\"layer" + std::to_string(i) + ".weight\":{\"dtype\":\"BF16\",\"shape\":[";
    header += std::to_string(elements[i]) + "],\"data_offsets\":[";
    header += std::to_string(off) + "," + std::to_string(off + size) + "]}";
    off += size;
  }
  header += "}";
  while ((8 + header.size()) % 8 != 0) header += ' ';
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  file += header;
  file += Bf16Like(off, seed);
  return file;
}

// Stores each (name, bytes) as a file in the root of a new store at `store_dir`, with chunks of
// `chunk_size` bytes, in this process; the store is closed on return, ready to be mounted.
// Returns the chunks of every file, in file order, for tests that need chunk boundaries or
// frame positions.
inline Result<std::vector<std::vector<index::ChunkLocation>>> BuildStore(
    const std::string& store_dir, const std::vector<std::pair<std::string, std::string>>& files,
    uint32_t chunk_size) {
  ZIPNN_RETURN_IF_ERROR(index::Store::Init(store_dir));
  index::StoreOptions opts;
  opts.writable = true;
  opts.chunk_size = chunk_size;
  Result<std::unique_ptr<index::Store>> store = index::Store::Open(store_dir, opts);
  if (!store.ok()) return store.status();
  std::vector<std::vector<index::ChunkLocation>> chunks;
  for (const auto& [name, data] : files) {
    const int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
    if (fd < 0 || ::write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) {
      return Status::Io("cannot stage " + name);
    }
    index::NewAttr attr;
    attr.mode = 0644;
    attr.mtime_ns = attr.atime_ns = attr.ctime_ns = 1700000000123456789;
    Result<index::AddResult> added = (*store)->AddFile(index::kRootInode, name, fd, attr);
    ::close(fd);
    if (!added.ok()) return added.status();
    Result<std::vector<index::ChunkLocation>> c =
        (*store)->ChunksInRange(added->attr.ino, 0, data.size());
    if (!c.ok()) return c.status();
    chunks.push_back(std::move(*c));
  }
  return chunks;
}

}  // namespace zipnn::test
