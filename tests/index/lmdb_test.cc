// Tests of the LMDB wrapper (index/lmdb.h): the map grows when full, transactions are RAII.
#include "index/lmdb.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

namespace zipnn::index::lmdb {
namespace {

namespace fs = std::filesystem;

class LmdbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "zipnn-lmdb-test-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string dir_;
};

constexpr const char* kNames[] = {"a"};

TEST_F(LmdbTest, MapGrowsWhenFull) {
  // A 256 KiB map, then 8 MB of values in transactions of 1 MB: each overflow aborts the
  // transaction, doubles the map and runs it again.
  Result<std::unique_ptr<Env>> env = Env::Open(dir_, true, kNames, 256u << 10);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  const std::string value(4000, 'v');
  for (int t = 0; t < 8; ++t) {
    int runs = 0;
    Status st = (*env)->Update([&](Txn& txn) -> Status {
      ++runs;
      for (int i = 0; i < 250; ++i) {
        const std::string key = std::to_string(t * 1000 + i);
        ZIPNN_RETURN_IF_ERROR(txn.Put((*env)->dbi(0), Val(key), Val(value)));
      }
      return Status::Ok();
    });
    ASSERT_TRUE(st.ok()) << st.ToString();
    if (t == 0) {
      EXPECT_GT(runs, 1) << "the first transaction should have needed a bigger map";
    }
  }
  Result<Txn> txn = (*env)->BeginRead();
  ASSERT_TRUE(txn.ok());
  MDB_val v;
  ASSERT_TRUE(txn->Get((*env)->dbi(0), Val(std::string("7249")), v).ok());
  EXPECT_EQ(v.mv_size, value.size());
  EXPECT_EQ(txn->Get((*env)->dbi(0), Val(std::string("7250")), v).code(), StatusCode::kNotFound);
}

TEST_F(LmdbTest, FailedUpdateLeavesNothing) {
  Result<std::unique_ptr<Env>> env = Env::Open(dir_, true, kNames);
  ASSERT_TRUE(env.ok());
  Status st = (*env)->Update([&](Txn& txn) -> Status {
    ZIPNN_RETURN_IF_ERROR(txn.Put((*env)->dbi(0), Val(std::string("k")), Val(std::string("v"))));
    return Status::Corrupt("give up");
  });
  EXPECT_EQ(st.code(), StatusCode::kCorrupt);
  Result<Txn> txn = (*env)->BeginRead();
  ASSERT_TRUE(txn.ok());
  MDB_val v;
  EXPECT_EQ(txn->Get((*env)->dbi(0), Val(std::string("k")), v).code(), StatusCode::kNotFound);
}

}  // namespace
// With an index open (its fault guard installed), other faults keep their usual end: a SIGSEGV
// sent by kill, or a bad access outside LMDB, still kills the process by that signal.
TEST_F(LmdbTest, FaultGuardLeavesOtherSegfaultsAlone) {
#ifdef ZIPNN_SANITIZED
  GTEST_SKIP() << "the sanitizers take the deliberate null write for themselves";
#endif
  Result<std::unique_ptr<Env>> env = Env::Open(dir_, true, kNames);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  for (int how = 0; how < 2; ++how) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      if (how == 0) {
        ::raise(SIGSEGV);
        ::_exit(0);  // (a guard that swallowed it)
      }
      volatile int* volatile nowhere = nullptr;
      *nowhere = 1;
      ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV)
        << (how == 0 ? "raise" : "null write") << ": status " << status;
  }
}

}  // namespace zipnn::index::lmdb
