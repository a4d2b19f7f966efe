// Helpers shared by the store's test suites: a temp directory holding a new store, file helpers
// and the consistency check every crash and failure test ends with.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "index/index.h"

namespace zipnn::index::test {

using Bytes = std::vector<uint8_t>;

inline Bytes ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

inline void WriteAll(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// Concatenation out of line: GCC 12 warns falsely (-Wrestrict) on inlined string operator+.
[[gnu::noinline]] inline std::string Cat(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (std::string_view p : parts) s.append(p);
  return s;
}

// Bytes from an alphabet of `alphabet` symbols: 256 is incompressible, small ones compress.
inline Bytes RandomBytes(size_t n, uint64_t seed, int alphabet = 256) {
  std::mt19937_64 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng() % alphabet);
  return b;
}

// Runs `child` in a forked process and kill -9s it once it has called `tick` (its progress
// events) `events` times, or when it ends first. True when it was killed or returned 0.
inline bool RunAndKill(const std::function<int(const std::function<void()>& tick)>& child,
                       int events) {
  int fds[2];
  if (::pipe(fds) != 0) return false;
  const pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid == 0) {
    ::close(fds[0]);
    ::_exit(child([fd = fds[1]] {
      const char c = 'p';
      if (::write(fd, &c, 1) != 1) ::_exit(4);
    }));
  }
  ::close(fds[1]);
  char c;
  for (int seen = 0; seen < events && ::read(fds[0], &c, 1) == 1;) ++seen;
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(fds[0]);
  return WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

// A fresh temporary directory with an initialised store in `store_dir_`, removed afterwards.
class StoreDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "zipnn-store-test-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    store_dir_ = dir_ + "/store";
    ASSERT_TRUE(Store::Init(store_dir_).ok());
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::unique_ptr<Store> OpenStore(bool writable, StoreOptions opts = {}) {
    opts.writable = writable;
    if (opts.threads == 0) opts.threads = 2;
    Result<std::unique_ptr<Store>> s = Store::Open(store_dir_, opts);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }

  // fsck finds nothing and every committed pack byte belongs to a chunk record.
  static void ExpectClean(Store& store) {
    Result<CheckReport> check = store.Check(true);
    ASSERT_TRUE(check.ok()) << check.status().ToString();
    for (const CheckProblem& p : check->problems) ADD_FAILURE() << p.what;
    Result<StoreUsage> u = store.GetStoreUsage();
    ASSERT_TRUE(u.ok());
    EXPECT_EQ(u->pack_bytes, u->chunk_frame_bytes + u->unreferenced_frame_bytes);
  }

  std::string dir_, store_dir_;
};

}  // namespace zipnn::index::test
