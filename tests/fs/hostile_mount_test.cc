// The mounted filesystem over stores whose index was damaged through LMDB
// (tests/index/index_damage.h), as a review did (commit e28f642): a chunk record claiming a huge
// raw size, and chunk records pointing at other chunks' sound frames. Reads must fail with EIO,
// quickly and without the memory the record claims, never give other bytes.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "tests/fs/mount_util.h"
#include "tests/index/index_damage.h"

namespace zipnn::test {
namespace {

namespace damage = index::test;

constexpr uint32_t kChunk = 64 << 10;

// pread of `len` bytes at `off` of mounted file `path`: the byte count, or -errno.
ssize_t PreadAt(const std::string& path, uint64_t off, size_t len, std::string* data = nullptr) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  std::string buf(len, '\0');
  const ssize_t n = ::pread(fd, buf.data(), len, static_cast<off_t>(off));
  const int err = errno;
  ::close(fd);
  if (n < 0) return -err;
  buf.resize(static_cast<size_t>(n));
  if (data != nullptr) *data = std::move(buf);
  return n;
}

// A chunk record and its extent claiming 0xFFFFFFF0 raw bytes: the daemon allocated (and,
// populating the mapping, touched) 4 GiB for it before the frame was found not to match.
TEST_F(FsTest, HugeRawSizeClaimGivesEioWithoutTheMemory) {
  const std::string data = Bf16Like(3 * kChunk, 21);
  const std::string store = Path("store");
  Result<std::vector<std::vector<index::ChunkLocation>>> chunks =
      BuildStore(store, {{"w.bin", data}}, kChunk);
  ASSERT_TRUE(chunks.ok()) << chunks.status().message();
  ASSERT_EQ((*chunks)[0].size(), 3u);
  const index::ChunkLocation mid = (*chunks)[0][1];
  {
    damage::IndexEditor ed(store);
    ASSERT_TRUE(ed.ok()) << ed.error();
    const uint64_t ino = damage::LookupIno(ed, "/w.bin");
    ASSERT_NE(ino, 0u);
    const std::string key = damage::ChunkKeyAt(ed, ino, mid.file_offset);
    ASSERT_EQ(key.size(), 16u);
    ASSERT_TRUE(damage::EditExtent(ed, ino, mid.file_offset,
                                   [](index::rec::Extent& e) { e.raw_size = 0xFFFFFFF0u; }));
    ASSERT_TRUE(damage::EditChunk(ed, key, [](index::rec::Chunk& c) { c.raw_size = 0xFFFFFFF0u; }));
  }
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  ASSERT_GT(m.daemon_pid(), 0);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(PreadAt(m.Path("w.bin"), mid.file_offset + 100, 4096), -EIO);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(secs, 2.0) << "the read took " << secs << " s";
  const uint64_t peak = PeakRss(m.daemon_pid());
  RecordProperty("daemon_vmhwm_mib", std::to_string(peak >> 20));
  EXPECT_GT(peak, 0u);
  EXPECT_LT(peak, uint64_t{512} << 20) << "daemon VmHWM " << (peak >> 20) << " MiB";
  // The chunk before it is sound.
  std::string got;
  EXPECT_EQ(PreadAt(m.Path("w.bin"), 0, 4096, &got), 4096);
  EXPECT_TRUE(got == data.substr(0, 4096));
  EXPECT_TRUE(m.Unmount());
}

// Chunk records pointed at another file's frame (same pack, offset, frame size, raw size,
// method): the frames are sound and decode, to the other file's bytes, which the daemon served.
// A large chunk (its frame checksum is matched to the key) and a small one (<= 240 bytes: the
// decoded bytes are hashed).
TEST_F(FsTest, ChunkPointingAtAnotherFrameGivesEio) {
  const std::string a = Bf16Like(50000, 31), b = Bf16Like(50000, 32);
  const std::string sa = Bf16Like(200, 33), sb = Bf16Like(200, 34);
  const std::string store = Path("store");
  Result<std::vector<std::vector<index::ChunkLocation>>> chunks =
      BuildStore(store, {{"a", a}, {"b", b}, {"sa", sa}, {"sb", sb}}, kChunk);
  ASSERT_TRUE(chunks.ok()) << chunks.status().message();
  for (const auto& c : *chunks) ASSERT_EQ(c.size(), 1u);
  ASSERT_EQ((*chunks)[0][0].method, (*chunks)[1][0].method);
  ASSERT_EQ((*chunks)[2][0].method, (*chunks)[3][0].method);
  {
    damage::IndexEditor ed(store);
    ASSERT_TRUE(ed.ok()) << ed.error();
    for (const auto& [from, to] : {std::pair{"/a", "/b"}, std::pair{"/sa", "/sb"}}) {
      const std::string kf = damage::ChunkKeyAt(ed, damage::LookupIno(ed, from), 0);
      const std::string kt = damage::ChunkKeyAt(ed, damage::LookupIno(ed, to), 0);
      ASSERT_EQ(kf.size(), 16u) << from;
      ASSERT_EQ(kt.size(), 16u) << to;
      ASSERT_TRUE(damage::PointChunkAtOthersFrame(ed, kf, kt)) << from;
    }
  }
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  std::string got;
  EXPECT_EQ(PreadAt(m.Path("a"), 0, a.size(), &got), -EIO) << (got == b ? "gave b's bytes" : "");
  got.clear();
  EXPECT_EQ(PreadAt(m.Path("sa"), 0, sa.size(), &got), -EIO)
      << (got == sb ? "gave sb's bytes" : "");
  EXPECT_EQ(PreadAt(m.Path("b"), 0, b.size(), &got), static_cast<ssize_t>(b.size()));
  EXPECT_TRUE(got == b) << "b reads other bytes";
  EXPECT_EQ(PreadAt(m.Path("sb"), 0, sb.size(), &got), static_cast<ssize_t>(sb.size()));
  EXPECT_TRUE(got == sb) << "sb reads other bytes";
  EXPECT_TRUE(m.Unmount());
}

// Index damage that loses a file's inode record, or a symlink's target record: the name was left
// out of listings and a stat of it said ENOENT, so cp -a, rsync and tar copied the tree without
// it and exited 0; readlink said EINVAL. The name is listed, and stat and readlink say EIO.
TEST_F(FsTest, MissingInodeOrLinkTargetRecordsGiveEioNotAbsence) {
  const std::string store = Path("store");
  ASSERT_TRUE(BuildStore(store, {{"a", "alpha"}, {"b", "bravo"}}, kChunk).ok());
  {
    index::StoreOptions opts;
    opts.writable = true;
    Result<std::unique_ptr<index::Store>> s = index::Store::Open(store, opts);
    ASSERT_TRUE(s.ok()) << s.status().message();
    ASSERT_TRUE((*s)->Symlink(index::kRootInode, "l", "a", {}).ok());
  }
  {
    damage::IndexEditor ed(store);
    ASSERT_TRUE(ed.ok()) << ed.error();
    const index::rec::InodeKey b(damage::LookupIno(ed, "/b")), l(damage::LookupIno(ed, "/l"));
    ASSERT_TRUE(ed.Del(damage::kInodesDb, damage::AsString(b.bytes())));
    ASSERT_TRUE(ed.Del("symlinks", damage::AsString(l.bytes())));
  }
  Mount m(store, MakeDir("mnt"));
  ASSERT_TRUE(m.ok()) << m.result().err;
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(m.path()))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "l"}));
  struct stat st;
  EXPECT_EQ(::lstat(m.Path("b").c_str(), &st), -1);
  EXPECT_EQ(errno, EIO);
  char target[64];
  EXPECT_EQ(::readlink(m.Path("l").c_str(), target, sizeof target), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(ReadFile(m.Path("a")), "alpha");
  // readlink of what is no symlink stays EINVAL.
  EXPECT_EQ(::readlink(m.Path("a").c_str(), target, sizeof target), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_TRUE(m.Unmount());
}

}  // namespace
}  // namespace zipnn::test
