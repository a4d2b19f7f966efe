// The mounted read path under pressure, from a concurrency review: memory against cache_size,
// and reads that pin many chunks at once.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "fs/file_reader.h"
#include "tests/fs/mount_util.h"

namespace zipnn::test {
namespace {

// Every small file took a 256 KiB buffer while the cache charged its size: reading 3000 files of
// 4 KiB through a 64 MiB cache left the daemon at 530 MiB. Here 1500 files through a 16 MiB cache
// reached ~280 MiB; the bound is cache_size + 64 MiB.
TEST_F(FsTest, ManySmallFilesStayWithinTheCacheSize) {
  constexpr int kFiles = 1500;
  std::vector<std::pair<std::string, std::string>> files;
  for (int i = 0; i < kFiles; ++i) {
    std::string name = "f";  // (appended: GCC 12's -Wrestrict misfires on "f" + to_string)
    name += std::to_string(i);
    files.emplace_back(std::move(name), Bf16Like(4096, 1000 + i));
  }
  const std::string store = Path("store");
  Result<std::vector<std::vector<index::ChunkLocation>>> built =
      BuildStore(store, files, 256 << 10);
  ASSERT_TRUE(built.ok()) << built.status().message();
  Mount m(store, MakeDir("mnt"), {"-o", "cache_size=16M"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  ASSERT_GT(m.daemon_pid(), 0);
  for (const auto& [name, data] : files) {
    // Part of each file, as mmap faults and header probes read: the chunk stays among the live
    // ones, which only the capacity bounds.
    const int fd = ::open(m.Path(name).c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0) << name << ": " << std::strerror(errno);
    char buf[100];
    ASSERT_EQ(::pread(fd, buf, sizeof buf, 0), static_cast<ssize_t>(sizeof buf)) << name;
    ::close(fd);
    ASSERT_EQ(std::string(buf, sizeof buf), data.substr(0, sizeof buf)) << name;
  }
  const uint64_t peak = PeakRss(m.daemon_pid());
  RecordProperty("daemon_vmhwm_mib", std::to_string(peak >> 20));
  EXPECT_GT(peak, 0u);
  EXPECT_LT(peak, (16u << 20) + (64u << 20)) << "daemon peak RSS " << (peak >> 20) << " MiB";
}

// A read across many small chunks (1 KiB tensors of alternating dtypes): each chunk took a 256
// KiB buffer unit and a read pinned every chunk it spanned, so the cache could evict none: one
// file of 20 MB took a daemon with a 16 MiB cache to gigabytes (5 GB for 20k chunks of 40
// bytes). Small chunks now hold their own size, and a read pins at most 64 chunks.
TEST_F(FsTest, ReadsAcrossManySmallChunksStayWithinTheCacheSize) {
#ifdef ZIPNN_SANITIZED
  GTEST_SKIP() << "a sanitized daemon's RSS holds shadow memory and a quarantine";
#endif
  const std::string model = AlternatingDtypeSafetensors(20000);
  const std::string store = Path("store");
  Result<std::vector<std::vector<index::ChunkLocation>>> chunks =
      BuildStore(store, {{"m.safetensors", model}}, 256 << 10);
  ASSERT_TRUE(chunks.ok()) << chunks.status().message();
  ASSERT_GT((*chunks)[0].size(), 20000u);
  Mount m(store, MakeDir("mnt"), {"-o", "cache_size=16M"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  ASSERT_GT(m.daemon_pid(), 0);
  EXPECT_TRUE(ReadFile(m.Path("m.safetensors")) == model) << "wrong bytes";
  const uint64_t peak = PeakRss(m.daemon_pid());
  RecordProperty("daemon_vmhwm_mib", std::to_string(peak >> 20));
  EXPECT_LT(peak, (16u << 20) + (64u << 20)) << "daemon peak RSS " << (peak >> 20) << " MiB";
  EXPECT_TRUE(m.Unmount());
}

// Opening a model file reads its header (for tensor prefetch), and safetensors headers may be
// 100 MiB. Read whole, every chunk of it stayed pinned at once, beyond the cache's capacity: a
// 48 MiB header took a daemon with a 1 MiB cache to 171 MiB. Read a chunk at a time, the cache
// holds no more than its capacity and the chunks of one piece.
TEST_F(FsTest, OpeningAFileWithAHugeHeaderDoesNotPinIt) {
  constexpr uint32_t kChunk = 64 << 10;
  constexpr uint64_t kCache = 256 << 10;
  const std::string tensors = Bf16Like(1 << 20, 7);
  std::string json = R"({"w":{"dtype":"BF16","shape":[524288],"data_offsets":[0,1048576]}})";
  uint64_t state = 99;  // whitespace of every kind: compressible, and no two chunks alike
  while (json.size() < (8u << 20)) json += " \n\t\r"[SplitMix64(state) % 4];
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
  file += json;
  file += tensors;
  const std::string store_dir = Path("store");
  ASSERT_TRUE(BuildStore(store_dir, {{"h.safetensors", file}}, kChunk).ok());
  Result<std::unique_ptr<index::Store>> store = index::Store::Open(store_dir);
  ASSERT_TRUE(store.ok()) << store.status().message();
  Result<index::InodeAttr> attr = (*store)->Lookup(index::kRootInode, "h.safetensors");
  ASSERT_TRUE(attr.ok()) << attr.status().message();

  fs::FileReaderOptions opts;
  opts.cache_size = kCache;
  opts.chunk_size = kChunk;
  opts.prefetch = 4;
  opts.workers = 1;
  fs::FileReader reader(**store, opts);
  reader.OnOpen(attr->ino, attr->size);
  const nlohmann::json stats = nlohmann::json::parse(reader.StatsJson());
  EXPECT_GT(stats["read_bytes"].get<uint64_t>(), json.size()) << "the header was not read";
  EXPECT_LE(stats["cache"]["bytes"].get<uint64_t>(), kCache + 2 * kChunk)
      << "chunks held after the header was read";
  Result<fs::ReadResult> tail = reader.Read(attr->ino, 8 + json.size(), 4096, attr->size);
  ASSERT_TRUE(tail.ok()) << tail.status().message();
}

}  // namespace
}  // namespace zipnn::test
