// Reading through real FUSE mounts: every byte, name and attribute as stored, under random
// access, many threads, several processes and mmap page faults.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <latch>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/fs/mount_util.h"

namespace zipnn::test {
namespace {

namespace stdfs = std::filesystem;

// The safety net: whatever a crashed or failed test left mounted under the temporary directories
// of this process is detached when the tests end, and reported as a failure.
class LeftoverMounts : public ::testing::Environment {
 public:
  void TearDown() override {
    const std::vector<std::string> left = UnmountLeftovers();
    EXPECT_TRUE(left.empty()) << left.size() << " mount(s) left behind, first " << left.front();
  }
};
[[maybe_unused]] ::testing::Environment* const kLeftoverMounts =
    ::testing::AddGlobalTestEnvironment(new LeftoverMounts);
[[maybe_unused]] const int kAtExit = std::atexit([] { UnmountLeftovers(); });

constexpr uint32_t kChunk = 64 << 10;  // small chunks: many boundaries in small files

// A store with a generated safetensors model (BF16 tensors of odd sizes, so tensor and chunk
// boundaries fall everywhere) and an untyped file, with the original bytes and chunk lists.
class GeneratedStoreTest : public FsTest {
 protected:
  void SetUp() override {
    FsTest::SetUp();
    files_ = {
        {"model.safetensors",
         SafetensorsBf16({12345, 1 << 20, 777777, 3 << 20, 100, (2 << 20) + 3}, 1)},
        {"plain.bin", Bf16Like((3 << 20) + 1234, 2)},
    };
    store_ = Path("store");
    Result<std::vector<std::vector<index::ChunkLocation>>> chunks =
        BuildStore(store_, files_, kChunk);
    ASSERT_TRUE(chunks.ok()) << chunks.status().message();
    chunks_ = std::move(*chunks);
    mnt_ = MakeDir("mnt");
  }
  const std::string& Original(size_t i) const { return files_[i].second; }

  std::vector<std::pair<std::string, std::string>> files_;
  std::vector<std::vector<index::ChunkLocation>> chunks_;
  std::string store_, mnt_;
};

// Reads `len` bytes at `off` and checks them (and the count) against `original`.
::testing::AssertionResult PreadMatches(int fd, const std::string& original, uint64_t off,
                                        size_t len) {
  std::string buf(len, '\0');
  const ssize_t n = ::pread(fd, buf.data(), len, static_cast<off_t>(off));
  const size_t want = off >= original.size() ? 0 : std::min<uint64_t>(len, original.size() - off);
  if (n < 0) {
    return ::testing::AssertionFailure()
           << "pread(" << off << ", " << len << "): " << std::strerror(errno);
  }
  if (static_cast<size_t>(n) != want) {
    return ::testing::AssertionFailure()
           << "pread(" << off << ", " << len << ") returned " << n << ", want " << want;
  }
  if (std::memcmp(buf.data(), original.data() + off, want) != 0) {
    size_t i = 0;
    while (buf[i] == original[off + i]) ++i;
    return ::testing::AssertionFailure()
           << "pread(" << off << ", " << len << "): wrong byte at file offset " << off + i;
  }
  return ::testing::AssertionSuccess();
}

TEST_F(FsTest, CorpusFilesReadBackIdentical) {
  const stdfs::path corpus = CorpusDir();
  if (!stdfs::is_directory(corpus)) GTEST_SKIP() << "no corpus at " << corpus;
  const std::string store = Path("store");
  ASSERT_EQ(RunCommand(kZipnnfs, {"init", store}).exit_code, 0);
  const CommandResult imp = RunCommand(kZipnnfs, {"import", "-q", store, corpus.string()});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;

  const std::string root = m.Path(corpus.filename().string());
  size_t files = 0;
  for (const auto& e : stdfs::recursive_directory_iterator(corpus)) {
    if (!e.is_regular_file()) continue;
    const std::string rel = stdfs::relative(e.path(), corpus).string();
    const std::string original = ReadFile(e.path().string());
    const std::string mounted = ReadFile(root + "/" + rel);
    ASSERT_EQ(mounted.size(), original.size()) << rel;
    EXPECT_TRUE(mounted == original) << rel << " differs through the mount";
    ++files;
  }
  EXPECT_GE(files, 50u) << "corpus looks incomplete";
  EXPECT_TRUE(m.Unmount()) << "unmount needed force";
}

// ---- A generated tree: names, kinds, attributes ----

void SetTimes(const std::string& path, int64_t sec, long nsec) {
  timespec t[2] = {{sec, nsec}, {sec, nsec}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), t, AT_SYMLINK_NOFOLLOW), 0) << path;
}

// Compares one entry (and, for a directory, its whole subtree) of the source and the mount.
void ExpectSameTree(const std::string& src, const std::string& mnt, const std::string& rel) {
  SCOPED_TRACE(rel.empty() ? "<root>" : rel);
  struct stat a, b;
  ASSERT_EQ(::lstat((src + rel).c_str(), &a), 0);
  ASSERT_EQ(::lstat((mnt + rel).c_str(), &b), 0) << std::strerror(errno);
  EXPECT_EQ(a.st_mode, b.st_mode);
  EXPECT_EQ(a.st_uid, b.st_uid);
  EXPECT_EQ(a.st_gid, b.st_gid);
  EXPECT_EQ(a.st_mtim.tv_sec, b.st_mtim.tv_sec);
  EXPECT_EQ(a.st_mtim.tv_nsec, b.st_mtim.tv_nsec);
  if (!S_ISDIR(a.st_mode)) {
    EXPECT_EQ(a.st_size, b.st_size);
    EXPECT_EQ(a.st_nlink, b.st_nlink);  // (hard links)
  }

  // Extended attributes, as the source has them.
  auto xattrs = [](const std::string& p) {
    std::map<std::string, std::string> out;
    char names[4096];
    const ssize_t n = ::llistxattr(p.c_str(), names, sizeof names);
    for (ssize_t i = 0; i < n;) {
      const std::string name(names + i);
      i += static_cast<ssize_t>(name.size()) + 1;
      char value[4096];
      const ssize_t v = ::lgetxattr(p.c_str(), name.c_str(), value, sizeof value);
      out[name] = v >= 0 ? std::string(value, static_cast<size_t>(v)) : "<error>";
    }
    return out;
  };
  EXPECT_EQ(xattrs(src + rel), xattrs(mnt + rel));

  if (S_ISLNK(a.st_mode)) {
    EXPECT_EQ(stdfs::read_symlink(src + rel), stdfs::read_symlink(mnt + rel));
  } else if (S_ISREG(a.st_mode)) {
    EXPECT_TRUE(ReadFile(src + rel) == ReadFile(mnt + rel)) << "contents differ";
  } else if (S_ISDIR(a.st_mode)) {
    auto list = [](const std::string& p) {
      std::vector<std::string> names;
      DIR* d = ::opendir(p.c_str());
      if (d == nullptr) return names;
      while (dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
      ::closedir(d);
      std::sort(names.begin(), names.end());
      return names;
    };
    const std::vector<std::string> src_names = list(src + rel), mnt_names = list(mnt + rel);
    EXPECT_EQ(src_names, mnt_names);
    for (const std::string& n : src_names) {
      if (n != "." && n != "..") ExpectSameTree(src, mnt, rel + "/" + n);
    }
  }
}

TEST_F(FsTest, GeneratedTreeMatchesSource) {
  const std::string src = MakeDir("src/tree");
  std::filesystem::create_directories(src + "/a/b/c");
  WriteFile(src + "/a/b/c/deep.bin", Bf16Like(300000, 3));
  WriteFile(src + "/empty", "");
  WriteFile(src + "/ünïcødé 名前 🙂.txt", "unicode\n");
  WriteFile(src + "/big.bin", Bf16Like((1 << 20) + 17, 4));
  WriteFile(src + "/secret", "0600\n");
  ::chmod((src + "/secret").c_str(), 0600);
  WriteFile(src + "/tool", "#!/bin/sh\n");
  ::chmod((src + "/tool").c_str(), 0755);
  ::chown((src + "/tool").c_str(), 1234, 5678);
  stdfs::create_directory_symlink("a/b", src + "/rel-link");
  stdfs::create_symlink("a/b/c/deep.bin", src + "/file-link");
  stdfs::create_symlink("../nowhere", src + "/dangling");
  stdfs::create_hard_link(src + "/big.bin", src + "/a/big-link.bin");
  // A directory larger than one readdir reply.
  const std::string many = MakeDir("src/tree/many");
  for (int i = 0; i < 600; ++i) {
    WriteFile(many + "/entry-with-a-longish-name-" + std::to_string(i), std::to_string(i));
  }
  ASSERT_EQ(::setxattr((src + "/big.bin").c_str(), "user.comment", "weights", 7, 0), 0)
      << std::strerror(errno);
  ASSERT_EQ(::setxattr((src + "/a").c_str(), "user.empty", "", 0, 0), 0);
  // Times with nanoseconds, set last, deepest first (filling a directory changes its mtime).
  for (const char* p : {"/a/b/c/deep.bin", "/a/b/c", "/a/b", "/a", "/empty", "/big.bin",
                        "/rel-link", "/dangling", "/many", ""}) {
    SetTimes(src + p, 1600000000 + static_cast<int64_t>(std::strlen(p)), 123456789);
  }
  WriteFile(src + "/a/old", "1969\n");  // 1.5 s before 1970 (was shown as -1.000000001 s)
  SetTimes(src + "/a/old", -2, 500000000);
  SetTimes(src + "/a", 1600000002, 123456789);

  const std::string store = Path("store");
  ASSERT_EQ(RunCommand(kZipnnfs, {"init", store}).exit_code, 0);
  const CommandResult imp = RunCommand(kZipnnfs, {"import", "-q", store, src});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;

  ExpectSameTree(src, m.Path("tree"), "");
  // Following the links through the mount lands on the right bytes.
  EXPECT_EQ(ReadFile(m.Path("tree/file-link")), ReadFile(src + "/a/b/c/deep.bin"));
  EXPECT_TRUE(stdfs::is_regular_file(m.Path("tree/rel-link/c/deep.bin")));
  EXPECT_FALSE(stdfs::exists(m.Path("tree/dangling")));
  EXPECT_FALSE(stdfs::exists(m.Path("tree/no-such-file")));
  struct stat big, link;  // two names, one file
  ASSERT_EQ(::stat(m.Path("tree/big.bin").c_str(), &big), 0);
  ASSERT_EQ(::stat(m.Path("tree/a/big-link.bin").c_str(), &link), 0);
  EXPECT_EQ(big.st_ino, link.st_ino);
  // "." and ".." in a listing carry the directory's and its parent's inode numbers.
  for (const char* rel : {"tree/a/b", "tree/a", "tree"}) {
    const std::string dir = m.Path(rel);
    std::map<std::string, ino_t> seen;
    if (DIR* d = ::opendir(dir.c_str())) {
      while (dirent* e = ::readdir(d)) seen[e->d_name] = e->d_ino;
      ::closedir(d);
    }
    struct stat self, parent;
    ASSERT_EQ(::stat(dir.c_str(), &self), 0);
    ASSERT_EQ(::stat((dir + "/..").c_str(), &parent), 0);
    EXPECT_EQ(seen["."], self.st_ino) << rel;
    EXPECT_EQ(seen[".."], parent.st_ino) << rel;
  }
  EXPECT_TRUE(m.Unmount());
}

// ---- Random access ----

TEST_F(GeneratedStoreTest, RandomPreadsMatchOriginal) {
  Mount m(store_, mnt_);
  ASSERT_TRUE(m.ok()) << m.result().err;
  for (size_t f = 0; f < files_.size(); ++f) {
    SCOPED_TRACE(files_[f].first);
    const std::string& original = Original(f);
    const int fd = ::open(m.Path(files_[f].first).c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<size_t>(st.st_size), original.size());

    // Around every chunk boundary: a few bytes, and a read spanning two or three chunks.
    for (const index::ChunkLocation& c : chunks_[f]) {
      if (c.file_offset == 0) continue;
      EXPECT_TRUE(PreadMatches(fd, original, c.file_offset - 3, 6));
      const uint64_t before = std::min<uint64_t>(c.file_offset, kChunk / 2);
      EXPECT_TRUE(PreadMatches(fd, original, c.file_offset - before, 2 * kChunk));
    }
    // Past the end: short, empty, far away.
    EXPECT_TRUE(PreadMatches(fd, original, original.size() - 5, 100));
    EXPECT_TRUE(PreadMatches(fd, original, original.size(), 100));
    EXPECT_TRUE(PreadMatches(fd, original, original.size() + (1 << 30), 4096));
    EXPECT_TRUE(PreadMatches(fd, original, 0, 1));

    // Random offsets and lengths; dropping the page cache now and then sends reads back to
    // the daemon instead of serving them from the kernel's copy.
    uint64_t state = 1000 + f;
    for (int i = 0; i < 1500; ++i) {
      if (i % 100 == 0) ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      const uint64_t r = SplitMix64(state);
      const uint64_t off = r % (original.size() + 200000);
      const size_t len = (r >> 40) % 8 == 0 ? 1 + (r >> 20) % 16 : 1 + (r >> 20) % (600 << 10);
      ASSERT_TRUE(PreadMatches(fd, original, off, len)) << "read " << i;
    }
    ::close(fd);
  }
  EXPECT_TRUE(m.Unmount());
}

// The result of a reader (thread or process): reads done, wrong bytes, errors.
struct ReaderTally {
  int reads = 0, wrong = 0, errors = 0;
};

// Random reads, mixed with sequential runs that set the prefetcher going, on a fresh fd.
ReaderTally ReadRandomly(const std::string& path, const std::string& original, uint64_t seed,
                         int reads) {
  ReaderTally t;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    t.errors = reads;
    return t;
  }
  std::string buf;
  uint64_t state = seed;
  uint64_t seq = 0;
  for (int i = 0; i < reads; ++i) {
    const uint64_t r = SplitMix64(state);
    if (r % 16 == 0) ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    const bool sequential = (i / 20) % 2 == 1;
    if (!sequential || seq >= original.size()) seq = r % original.size();
    const uint64_t off = sequential ? seq : (r >> 8) % original.size();
    const size_t len = sequential ? 128 << 10 : 1 + (r >> 32) % (300 << 10);
    seq = off + len;
    buf.resize(len);
    const ssize_t n = ::pread(fd, buf.data(), len, static_cast<off_t>(off));
    const size_t want = std::min<uint64_t>(len, original.size() - off);
    ++t.reads;
    if (n != static_cast<ssize_t>(want)) {
      ++t.errors;
    } else if (std::memcmp(buf.data(), original.data() + off, want) != 0) {
      ++t.wrong;
    }
  }
  ::close(fd);
  return t;
}

// Runs read(i) on n threads released together; returns their tallies.
template <class Read>
std::vector<ReaderTally> ReadTogether(int n, Read read) {
  std::vector<ReaderTally> tallies(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  std::latch start(n);
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      tallies[static_cast<size_t>(i)] = read(i);
    });
  }
  for (std::thread& t : threads) t.join();
  return tallies;
}

void ExpectAllCorrect(const std::vector<ReaderTally>& tallies, int reads) {
  for (const ReaderTally& t : tallies) {
    EXPECT_EQ(t.reads, reads);
    EXPECT_EQ(t.wrong, 0);
    EXPECT_EQ(t.errors, 0);
  }
}

TEST_F(GeneratedStoreTest, ManyThreadsAndProcessesReadOneFile) {
  // A cache of 16 chunks for dozens of concurrent readers: chunks are evicted while others are
  // pinned by replies in flight, and single-flight loads are joined all the time.
  Mount m(store_, mnt_, {"-o", "cache_size=1M,workers=2,prefetch=8"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  const std::string path = m.Path(files_[0].first);
  const std::string& original = Original(0);
  constexpr int kThreads = 8, kProcesses = 3, kReads = 300;

  // Processes first (fork before this process starts threads); they wait for the go signal.
  int go[2];
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      char c;
      ::close(go[1]);
      if (::read(go[0], &c, 1) != 0) ::_exit(3);  // EOF is the signal
      const ReaderTally t = ReadRandomly(path, original, 500 + p, kReads);
      ::_exit(t.wrong != 0 ? 1 : t.errors != 0 ? 2 : 0);
    }
    children.push_back(pid);
  }
  std::vector<ReaderTally> tallies(kThreads);
  std::vector<std::thread> threads;
  std::latch start(kThreads + 1);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      tallies[i] = ReadRandomly(path, original, 100 + i, kReads);
    });
  }
  ::close(go[0]);
  ::close(go[1]);  // go
  start.arrive_and_wait();
  for (std::thread& t : threads) t.join();
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "reader process: " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1)
        << " (1: wrong bytes, 2: read errors)";
  }
  ExpectAllCorrect(tallies, kReads);
  const CommandResult stats = RunCommand(kZipnnfs, {"stats", m.path()});
  ASSERT_EQ(stats.exit_code, 0) << stats.err;
  const nlohmann::json j = nlohmann::json::parse(stats.out);
  EXPECT_EQ(j["read_errors"], 0);
  EXPECT_EQ(j["bad_chunks"], 0);
  EXPECT_GT(j["cache"]["evictions"].get<uint64_t>(), 0u) << "the small cache never evicted";
  EXPECT_LE(j["cache"]["capacity_bytes"].get<uint64_t>(), 1u << 20);
  EXPECT_TRUE(m.Unmount());
}

// The deadlock another model mount hit: more concurrent readers than FUSE threads, the kernel's
// read-ahead and a prefetcher with a long window over a tiny cache. Requests must never wait on
// each other, so this finishes (the Mount's watchdog turns a hang into a failure).
TEST_F(GeneratedStoreTest, FewFuseThreadsManyReadersNoDeadlock) {
  Mount m(store_, mnt_, {"-o", "max_threads=2,cache_size=512K,workers=1,prefetch=64"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  const std::string path = m.Path(files_[0].first);
  const std::string& original = Original(0);
  constexpr int kReads = 150;
  ExpectAllCorrect(
      ReadTogether(12, [&](int i) { return ReadRandomly(path, original, 900 + i, kReads); }),
      kReads);
  EXPECT_TRUE(m.Unmount());
}

TEST_F(GeneratedStoreTest, SingleThreadedLoopServesConcurrentReaders) {
  Mount m(store_, mnt_, {"-s"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  ExpectAllCorrect(ReadTogether(4,
                                [&](int i) {
                                  return ReadRandomly(m.Path(files_[i % 2].first), Original(i % 2),
                                                      700 + i, 100);
                                }),
                   100);
  EXPECT_TRUE(m.Unmount());
}

TEST_F(GeneratedStoreTest, ParallelMmapPageFaultsMatchOriginal) {
  Mount m(store_, mnt_, {"-o", "cache_size=2M"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  const std::string path = m.Path(files_[0].first);
  const std::string& original = Original(0);
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t pages = (original.size() + page - 1) / page;

  // Every page of the mapping, in an order of its own per reader; returns pages that differ.
  auto check_pages = [&](const uint8_t* map, uint64_t seed) {
    size_t wrong = 0;
    const size_t stride = 1 + 2 * (seed % 97);  // odd, so it visits every page
    for (size_t k = 0, p = seed % pages; k < pages; ++k, p = (p + stride) % pages) {
      const size_t off = p * page, len = std::min(page, original.size() - off);
      if (std::memcmp(map + off, original.data() + off, len) != 0) ++wrong;
    }
    return wrong;
  };
  auto map_file = [&]() -> const uint8_t* {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nullptr;
    void* p = ::mmap(nullptr, original.size(), PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    return p == MAP_FAILED ? nullptr : static_cast<const uint8_t*>(p);
  };

  constexpr int kProcesses = 2, kThreads = 8;
  int go[2];
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      char c;
      ::close(go[1]);
      if (::read(go[0], &c, 1) != 0) ::_exit(3);
      const uint8_t* map = map_file();
      if (map == nullptr) ::_exit(2);
      ::_exit(check_pages(map, 7 + p) == 0 ? 0 : 1);
    }
    children.push_back(pid);
  }
  const uint8_t* map = map_file();
  ASSERT_NE(map, nullptr) << "MAP_SHARED mmap failed: " << std::strerror(errno);
  std::vector<size_t> wrong(kThreads);
  std::vector<std::thread> threads;
  std::latch start(kThreads + 1);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      wrong[i] = check_pages(map, 31 * i + 1);
    });
  }
  ::close(go[0]);
  ::close(go[1]);
  start.arrive_and_wait();
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) EXPECT_EQ(wrong[i], 0u) << "thread " << i;
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "mmap reader process: "
        << (WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status))
        << " (1: wrong bytes, 2: mmap failed)";
  }
  ::munmap(const_cast<uint8_t*>(map), original.size());
  EXPECT_TRUE(m.Unmount());
}

TEST_F(GeneratedStoreTest, WritesAreRefused) {
  Mount m(store_, mnt_);
  ASSERT_TRUE(m.ok()) << m.result().err;
  const std::string file = m.Path(files_[1].first);
  auto errno_of = [](int rc) { return rc < 0 ? errno : 0; };
  int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
  EXPECT_EQ(fd < 0 ? errno : 0, EROFS) << "open O_WRONLY";
  if (fd >= 0) ::close(fd);
  fd = ::open(file.c_str(), O_RDWR | O_CLOEXEC);
  EXPECT_EQ(fd < 0 ? errno : 0, EROFS) << "open O_RDWR";
  if (fd >= 0) ::close(fd);
  fd = ::open(m.Path("new-file").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  EXPECT_EQ(fd < 0 ? errno : 0, EROFS) << "create";
  if (fd >= 0) ::close(fd);
  EXPECT_EQ(errno_of(::mkdir(m.Path("new-dir").c_str(), 0755)), EROFS);
  EXPECT_EQ(errno_of(::unlink(file.c_str())), EROFS);
  EXPECT_EQ(errno_of(::rename(file.c_str(), m.Path("renamed").c_str())), EROFS);
  EXPECT_EQ(errno_of(::truncate(file.c_str(), 0)), EROFS);
  EXPECT_EQ(errno_of(::symlink("x", m.Path("new-link").c_str())), EROFS);
  EXPECT_EQ(errno_of(::setxattr(file.c_str(), "user.x", "1", 1, 0)), EROFS);
  EXPECT_EQ(errno_of(::chmod(file.c_str(), 0600)), EROFS);
  struct statvfs vfs;
  ASSERT_EQ(::statvfs(m.path().c_str(), &vfs), 0);
  EXPECT_NE(vfs.f_flag & ST_RDONLY, 0u) << "statfs does not say read-only";
  // No room to write (the host's free space was shown), and the size is the store's, on disk.
  EXPECT_EQ(vfs.f_bavail, 0u);
  EXPECT_EQ(vfs.f_bfree, 0u);
  uint64_t store_bytes = 0;
  for (const auto& e : stdfs::recursive_directory_iterator(store_)) {
    struct stat f;
    ASSERT_EQ(::lstat(e.path().c_str(), &f), 0);
    store_bytes += static_cast<uint64_t>(f.st_blocks) * 512;
  }
  EXPECT_GE(uint64_t{vfs.f_blocks} * vfs.f_frsize, store_bytes);
  EXPECT_LT(uint64_t{vfs.f_blocks} * vfs.f_frsize, store_bytes + vfs.f_frsize);
  // Nothing changed.
  EXPECT_TRUE(ReadFile(file) == Original(1));
  EXPECT_FALSE(stdfs::exists(m.Path("new-file")));
  EXPECT_TRUE(m.Unmount());
}

TEST_F(GeneratedStoreTest, StatsCountReadsAndCacheActivity) {
  Mount m(store_, mnt_);
  ASSERT_TRUE(m.ok()) << m.result().err;
  EXPECT_TRUE(ReadFile(m.Path(files_[0].first)) == Original(0));
  const CommandResult stats = RunCommand(kZipnnfs, {"stats", m.path()});
  ASSERT_EQ(stats.exit_code, 0) << stats.err;
  const nlohmann::json j = nlohmann::json::parse(stats.out);
  EXPECT_GT(j["reads"].get<uint64_t>(), 0u);
  EXPECT_GE(j["read_bytes"].get<uint64_t>(), Original(0).size());
  EXPECT_GE(j["decoded_bytes"].get<uint64_t>(), Original(0).size());
  EXPECT_GT(j["cache"]["misses"].get<uint64_t>() + j["cache"]["prefetched"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["bad_chunks"], 0);
  EXPECT_EQ(j["read_errors"], 0);
  // Not listed among the root's attributes: copies must not carry it.
  char names[1024];
  const ssize_t n = ::listxattr(m.path().c_str(), names, sizeof names);
  EXPECT_EQ(std::string(names, n > 0 ? static_cast<size_t>(n) : 0).find("zipnnfs"),
            std::string::npos);
  EXPECT_TRUE(m.Unmount());
}

}  // namespace
}  // namespace zipnn::test
