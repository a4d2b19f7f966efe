// Crash safety: kill -9 of a tree import (grouped commits) at many points, and gc interrupted
// after each of its steps (the on-disk states a crash there leaves, rebuilt exactly). Real LMDB
// and real files in temp dirs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "index/index.h"
#include "index/tree.h"
#include "tests/index/store_test_util.h"

namespace zipnn::index {
namespace {

namespace fs = std::filesystem;
using test::Bytes;
using test::Cat;
using test::WriteAll;

Bytes Skewed(size_t n, uint64_t seed) { return test::RandomBytes(n, seed, 11); }

class CrashTest : public test::StoreDirTest {
 protected:
  static StoreOptions Options() {
    StoreOptions opts;
    opts.writable = true;
    opts.threads = 2;
    opts.chunk_size = 32u << 10;
    opts.batch_bytes = 128u << 10;
    return opts;
  }

  std::unique_ptr<Store> Open() { return OpenStore(true, Options()); }

  // The file at `path` is absent or holds exactly `want`.
  static void ExpectWholeOrAbsent(Store& store, const std::string& path, const Bytes& want) {
    Result<InodeAttr> a = store.LookupPath(path);
    if (!a.ok()) {
      EXPECT_EQ(a.status().code(), StatusCode::kNotFound) << path;
      return;
    }
    Bytes got(want.size() + 1);
    Result<size_t> n = store.Read(a->ino, 0, got);
    ASSERT_TRUE(n.ok()) << path << ": " << n.status().ToString();
    got.resize(*n);
    EXPECT_TRUE(got == want) << path;
  }
};

// A tree import killed at random points, 30 times, committing every entry or in groups: the store
// opens, fsck is clean, and each file of every round is complete or absent.
TEST_F(CrashTest, KilledTreeImportLeavesEachFileCompleteOrAbsent) {
  const std::string src = dir_ + "/src";
  fs::create_directories(src + "/d");
  std::vector<std::pair<std::string, Bytes>> files;
  for (int i = 0; i < 12; ++i) {
    const std::string rel = Cat({i % 3 == 0 ? "d/f" : "f", std::to_string(i)});
    files.emplace_back(rel, Skewed(20000 + 37000 * (i % 5), 100 + i));
    WriteAll(src + "/" + rel, files.back().second);
  }
  std::mt19937_64 rng(5);
  for (int round = 0; round < 30; ++round) {
    auto child = [&](const std::function<void()>& tick) {
      Result<std::unique_ptr<Store>> s = Store::Open(store_dir_, Options());
      if (!s.ok()) return 3;
      ImportOptions opts;
      opts.commit_interval_ms = round % 2 == 0 ? 0 : 1000;  // a commit per entry, or few
      opts.progress = [&](const std::string&, const TreeSummary&) { tick(); };
      TreeSummary summary;
      const std::string name = Cat({"r", std::to_string(round)});
      return ImportTree(**s, src, kRootInode, name, opts, summary).ok() ? 0 : 5;
    };
    // ~35 batches per import: kill somewhere among them (or let it finish).
    EXPECT_TRUE(test::RunAndKill(child, static_cast<int>(rng() % 60)));

    auto store = Open();  // a writer: cuts the uncommitted pack tail
    ASSERT_TRUE(store);
    for (int r = 0; r <= round; ++r) {
      for (const auto& [rel, bytes] : files) {
        ExpectWholeOrAbsent(*store, Cat({"r", std::to_string(r), "/", rel}), bytes);
      }
    }
    ExpectClean(*store);
  }
}

// gc's crash points, rebuilt exactly: (1) the new pack written but not committed; (2) committed
// but the old packs not yet deleted. Either way the next writer opens a consistent store with
// every file intact, and deletes the pack files the index does not know.
TEST_F(CrashTest, GcInterruptedAfterEachStep) {
  std::vector<std::pair<std::string, Bytes>> files;
  {
    auto store = Open();
    ASSERT_TRUE(store);
    for (int i = 0; i < 6; ++i) {
      files.emplace_back(Cat({"f", std::to_string(i)}), Skewed(150000, 200 + i));
      WriteAll(dir_ + "/in", files.back().second);
      const int fd = ::open((dir_ + "/in").c_str(), O_RDONLY);
      ASSERT_TRUE(store->AddFile(kRootInode, files.back().first, fd, {}).ok());
      ::close(fd);
    }
    // Replace most files: their old chunks become garbage, the pack sparse.
    for (int i = 0; i < 5; ++i) {
      files[i].second = Skewed(150000, 300 + i);
      WriteAll(dir_ + "/in", files[i].second);
      const int fd = ::open((dir_ + "/in").c_str(), O_RDONLY);
      ASSERT_TRUE(store->AddFile(kRootInode, files[i].first, fd, {}).ok());
      ::close(fd);
    }
  }
  const std::string before = dir_ + "/before";
  fs::copy(store_dir_, before, fs::copy_options::recursive);
  {
    auto store = Open();
    ASSERT_TRUE(store);
    Result<GcReport> gc = store->Gc(0.9);
    ASSERT_TRUE(gc.ok()) << gc.status().ToString();
    ASSERT_GT(gc->packs_removed, 0u);
  }
  const std::string after = dir_ + "/after";
  fs::copy(store_dir_, after, fs::copy_options::recursive);

  auto check_state = [&](const char* what) {
    SCOPED_TRACE(what);
    auto store = Open();
    ASSERT_TRUE(store);
    for (const auto& [name, bytes] : files) {
      EXPECT_TRUE(store->LookupPath(name).ok()) << name;
      ExpectWholeOrAbsent(*store, name, bytes);
    }
    ExpectClean(*store);
  };
  auto pack_names = [](const std::string& store) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(store + "/packs")) {
      names.push_back(e.path().filename());
    }
    std::sort(names.begin(), names.end());
    return names;
  };

  // (1) Old index and packs, plus the new pack gc had written (unknown to the old index).
  fs::remove_all(store_dir_);
  fs::copy(before, store_dir_, fs::copy_options::recursive);
  for (const auto& e : fs::directory_iterator(after + "/packs")) {
    const fs::path target = fs::path(store_dir_) / "packs" / e.path().filename();
    if (!fs::exists(target)) {
      fs::copy_file(e.path(), target);
      fs::resize_file(target, fs::file_size(target) / 2);  // torn while being written
    }
  }
  check_state("new pack written, not committed");
  EXPECT_EQ(pack_names(store_dir_), pack_names(before)) << "the unknown pack was deleted";

  // (2) New index and new pack, old packs still there.
  fs::remove_all(store_dir_);
  fs::copy(after, store_dir_, fs::copy_options::recursive);
  for (const auto& e : fs::directory_iterator(before + "/packs")) {
    const fs::path target = fs::path(store_dir_) / "packs" / e.path().filename();
    if (!fs::exists(target)) fs::copy_file(e.path(), target);
  }
  check_state("committed, old packs not deleted");
  EXPECT_EQ(pack_names(store_dir_), pack_names(after)) << "the old packs were deleted";
}

}  // namespace
}  // namespace zipnn::index
