// Helpers for tests that run the project's executables as a user would.
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace zipnn::test {

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Flips bits of the byte at `offset` of file `path` in place (damage for fsck tests).
inline void FlipByte(const std::string& path, std::streamoff offset, uint8_t mask = 0x10) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  const char c = static_cast<char>(f.get() ^ mask);
  f.seekp(offset);
  f.put(c);
  ASSERT_TRUE(f.good()) << path;
}

// A small tmpfs at `dir` (created), for disk-full tests; unmounted when the object dies, however
// the test ends. Mounting needs root: check mounted() and skip otherwise.
class SmallTmpfs {
 public:
  SmallTmpfs(const std::string& dir, const std::string& size) : dir_(dir) {
    std::filesystem::create_directories(dir_);
    mounted_ = ::mount("tmpfs", dir_.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
    if (!mounted_) error_ = std::strerror(errno);
  }
  ~SmallTmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  SmallTmpfs(const SmallTmpfs&) = delete;
  SmallTmpfs& operator=(const SmallTmpfs&) = delete;
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_, error_;
  bool mounted_ = false;
};

struct ToolRun {
  int exit_code = -1;  // -1: did not exit by itself
  std::string how;     // "exit 1", "killed by signal 11", "timed out after 5 s (killed)"
  std::string out, err;
};

// A fixture with a fresh temporary directory, removed after the test.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "zipnn-test-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Runs `binary` with `args`, capturing how it ended, stdout and stderr; with `timeout_seconds`,
  // killed (SIGALRM, kept across exec) after that long; with `as_user`, as that user and group
  // (the test must run as root).
  ToolRun RunTool(const char* binary, const std::vector<std::string>& args,
                  unsigned timeout_seconds = 0, uid_t as_user = 0) {
    const std::string out_path = Path(".stdout"), err_path = Path(".stderr");
    pid_t pid = ::fork();
    if (pid == 0) {
      int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      ::dup2(out, STDOUT_FILENO);
      ::dup2(err, STDERR_FILENO);
      std::vector<char*> argv{const_cast<char*>(binary)};
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      if (timeout_seconds != 0) ::alarm(timeout_seconds);
      if (as_user != 0 &&
          (::setgroups(0, nullptr) != 0 || ::setgid(as_user) != 0 || ::setuid(as_user) != 0)) {
        ::_exit(126);
      }
      ::execv(binary, argv.data());
      ::_exit(127);
    }
    ToolRun r;
    int status = 0;
    if (pid < 0 || ::waitpid(pid, &status, 0) != pid) {
      r.how = "not run";
    } else if (WIFEXITED(status)) {
      r.exit_code = WEXITSTATUS(status);
      r.how = "exit " + std::to_string(r.exit_code);
    } else if (timeout_seconds != 0 && WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
      r.how = "timed out after " + std::to_string(timeout_seconds) + " s (killed)";
    } else if (WIFSIGNALED(status)) {
      r.how = "killed by signal " + std::to_string(WTERMSIG(status));
    }
    r.out = ReadAll(out_path);
    r.err = ReadAll(err_path);
    std::filesystem::remove(out_path);
    std::filesystem::remove(err_path);
    return r;
  }

  std::string dir_;
};

#ifdef ZIPNNFS_BINARY
// A fresh temporary directory, the path of a store in it (not created) and the zipnnfs tool.
class ZipnnfsToolTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    store_ = dir_ + "/store";
  }
  ToolRun Run(const std::vector<std::string>& args) { return RunTool(ZIPNNFS_BINARY, args); }

  std::string store_;
};
#endif

}  // namespace zipnn::test
