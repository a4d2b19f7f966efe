// passthrough_fuse: the reference FUSE filesystem of the filesystem benchmark (tools/fs_bench).
//
// Exposes one raw file, read-only, as the only entry of the mount's root, with the kernel settings
// zipnnfs uses: libfuse3 low-level API, page-cached files (no direct_io, so mmap works and reads
// go through the kernel's read-ahead), keep_cache, long entry and attribute timeouts, and the
// mount's read_ahead_kb raised so that sequential reads arrive as 1 MiB requests instead of
// 128 KiB. Each read is a pread into a per-thread buffer answered with fuse_reply_iov: the
// cheapest way to serve bytes from memory with libfuse 3.14 (splice measured slower here). What
// zipnnfs adds on top of this, decompression and its caches, is what the benchmark measures.
//
// Usage: passthrough_fuse [-s] [--read-ahead-kb N] FILE MOUNTPOINT
// Always runs in the foreground; SIGINT, SIGTERM and `fusermount3 -u` unmount it.

#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 14)
#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr fuse_ino_t kFileIno = 2;  // FUSE_ROOT_ID (1) is the root directory.
// Files never change while mounted, so the kernel may cache names and attributes for long.
constexpr double kTimeout = 3600.0;

struct State {
  int fd = -1;
  std::string name;        // the file's name in the mount's root
  struct stat file_st {};  // attributes of the exposed file (read-only copy of the raw file's)
  std::string mountpoint;
  unsigned read_ahead_kb = 1024;
  std::once_flag read_ahead_once;
};

State g_state;

// Read requests served, for the summary printed at exit: the mean request size shows whether the
// raised read-ahead took effect (1 MiB requests) or not (128 KiB).
std::atomic<uint64_t> g_reads{0};
std::atomic<uint64_t> g_read_bytes{0};
std::atomic<uint64_t> g_max_read{0};

// Decodes the octal escapes (\040 for a space, ...) that /proc/self/mountinfo uses in paths.
std::string UnescapeMountinfo(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8)));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// The "major:minor" of our mount, from /proc/self/mountinfo. The daemon must not stat() its own
// mount point to learn it: the stat would be a FUSE request that this very process has to serve.
// The last matching line wins, since a later mount on the same path hides the earlier ones.
std::string MountDevice(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line, device;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, majmin, root, target;
    if (fields >> id >> parent >> majmin >> root >> target &&
        UnescapeMountinfo(target) == mountpoint) {
      device = majmin;
    }
  }
  return device;
}

// Raises the mount's read-ahead. It must happen after the kernel has processed our INIT reply,
// which sets the read-ahead to min(current, max_readahead) and so can only lower it; the kernel
// holds every other request until then, so the first request after INIT is the earliest safe
// moment. Failure (not root, no sysfs) only costs speed, so it is reported and otherwise ignored.
void RaiseReadAhead() {
  std::call_once(g_state.read_ahead_once, [] {
    if (g_state.read_ahead_kb == 0) return;
    const std::string device = MountDevice(g_state.mountpoint);
    if (device.empty()) {
      std::fprintf(stderr, "passthrough_fuse: %s not in /proc/self/mountinfo\n",
                   g_state.mountpoint.c_str());
      return;
    }
    const std::string path = "/sys/class/bdi/" + device + "/read_ahead_kb";
    std::ofstream out(path);
    out << g_state.read_ahead_kb << '\n';
    out.flush();
    if (!out) {
      std::fprintf(stderr, "passthrough_fuse: cannot write %s: %s\n", path.c_str(),
                   std::strerror(errno));
    }
  });
}

struct stat RootStat() {
  struct stat st {};
  st.st_ino = FUSE_ROOT_ID;
  st.st_mode = S_IFDIR | 0555;
  st.st_nlink = 2;
  st.st_uid = g_state.file_st.st_uid;
  st.st_gid = g_state.file_st.st_gid;
  st.st_mtim = g_state.file_st.st_mtim;
  st.st_ctim = g_state.file_st.st_ctim;
  st.st_atim = g_state.file_st.st_atim;
  return st;
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  RaiseReadAhead();
  if (parent != FUSE_ROOT_ID || g_state.name != name) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e{};
  e.ino = kFileIno;
  e.attr = g_state.file_st;
  e.attr_timeout = kTimeout;
  e.entry_timeout = kTimeout;
  fuse_reply_entry(req, &e);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  RaiseReadAhead();
  if (ino == FUSE_ROOT_ID) {
    const struct stat st = RootStat();
    fuse_reply_attr(req, &st, kTimeout);
  } else if (ino == kFileIno) {
    fuse_reply_attr(req, &g_state.file_st, kTimeout);
  } else {
    fuse_reply_err(req, ENOENT);
  }
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  RaiseReadAhead();
  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  // Three fixed entries; the offset of an entry is the index of the next one.
  struct Entry {
    const char* name;
    struct stat st;
  };
  const Entry entries[] = {
      {".", RootStat()}, {"..", RootStat()}, {g_state.name.c_str(), g_state.file_st}};
  std::vector<char> buf(size);
  size_t used = 0;
  for (off_t i = off; i < 3; ++i) {
    const size_t n = fuse_add_direntry(req, buf.data() + used, size - used, entries[i].name,
                                       &entries[i].st, i + 1);
    if (n > size - used) break;
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  RaiseReadAhead();
  if (ino != kFileIno) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    fuse_reply_err(req, EROFS);
    return;
  }
  // The file never changes: keep its pages across opens, as zipnnfs does for unchanged files.
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  if (ino != kFileIno) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  // One buffer per session thread, grown to the largest request (1 MiB with libfuse 3.14).
  thread_local std::vector<char> buf;
  if (buf.size() < size) buf.resize(size);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = pread(g_state.fd, buf.data() + done, size - done, off + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      fuse_reply_err(req, errno);
      return;
    }
    if (n == 0) break;  // end of file
    done += static_cast<size_t>(n);
  }
  g_reads.fetch_add(1, std::memory_order_relaxed);
  g_read_bytes.fetch_add(done, std::memory_order_relaxed);
  uint64_t max = g_max_read.load(std::memory_order_relaxed);
  while (size > max && !g_max_read.compare_exchange_weak(max, size, std::memory_order_relaxed)) {
  }
  const iovec iov{buf.data(), done};
  fuse_reply_iov(req, &iov, 1);
}

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  struct statvfs st {};
  st.f_bsize = 4096;
  st.f_frsize = 4096;
  st.f_blocks = (g_state.file_st.st_size + 4095) / 4096;
  st.f_files = 2;
  st.f_namemax = 255;
  fuse_reply_statfs(req, &st);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Minimal read-only FUSE passthrough of one file (reference for the fs benchmark)"};
  std::string file, mountpoint;
  bool single_thread = false;
  app.add_option("FILE", file, "File to expose")->required()->check(CLI::ExistingFile);
  app.add_option("MOUNTPOINT", mountpoint, "Empty directory to mount on")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_flag("-s,--single-thread", single_thread, "Single-threaded session loop");
  app.add_option("--read-ahead-kb", g_state.read_ahead_kb,
                 "Mount read-ahead to set after mounting (0: keep the kernel's 128)");
  CLI11_PARSE(app, argc, argv);

  g_state.fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (g_state.fd < 0 || fstat(g_state.fd, &g_state.file_st) != 0) {
    std::fprintf(stderr, "passthrough_fuse: %s: %s\n", file.c_str(), std::strerror(errno));
    return 1;
  }
  g_state.file_st.st_ino = kFileIno;
  g_state.file_st.st_mode = S_IFREG | 0444;
  g_state.file_st.st_nlink = 1;
  const std::string::size_type slash = file.find_last_of('/');
  g_state.name = slash == std::string::npos ? file : file.substr(slash + 1);
  char resolved[PATH_MAX];
  if (realpath(mountpoint.c_str(), resolved) == nullptr) {
    std::fprintf(stderr, "passthrough_fuse: %s: %s\n", mountpoint.c_str(), std::strerror(errno));
    return 1;
  }
  g_state.mountpoint = resolved;

  fuse_lowlevel_ops ops{};
  ops.lookup = OpLookup;
  ops.getattr = OpGetattr;
  ops.readdir = OpReaddir;
  ops.open = OpOpen;
  ops.read = OpRead;
  ops.statfs = OpStatfs;

  std::string argv0 = argv[0];
  std::string opt_flag = "-o";
  std::string mount_opts = "ro,fsname=passthrough_fuse,subtype=passthrough";
  char* fuse_argv[] = {argv0.data(), opt_flag.data(), mount_opts.data()};
  fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
  fuse_session* se = fuse_session_new(&args, &ops, sizeof(ops), nullptr);
  if (se == nullptr) return 1;
  int rc = 1;
  if (fuse_set_signal_handlers(se) == 0) {
    if (fuse_session_mount(se, g_state.mountpoint.c_str()) == 0) {
      if (single_thread) {
        rc = fuse_session_loop(se);
      } else {
        fuse_loop_config* config = fuse_loop_cfg_create();
        rc = fuse_session_loop_mt(se, config);
        fuse_loop_cfg_destroy(config);
      }
      fuse_session_unmount(se);
    }
    fuse_remove_signal_handlers(se);
  }
  fuse_session_destroy(se);
  close(g_state.fd);
  const uint64_t reads = g_reads.load();
  std::fprintf(stderr, "passthrough_fuse: %llu reads, mean %.0f KiB, largest %.0f KiB\n",
               static_cast<unsigned long long>(reads),
               reads ? g_read_bytes.load() / 1024.0 / reads : 0.0, g_max_read.load() / 1024.0);
  return rc == 0 ? 0 : 1;
}
