// The mount: option parsing, daemonizing, the FUSE session and its loop.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <syslog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>

#include "codec/container.h"
#include "fs/filesystem.h"
#include "fs/fs.h"
#include "index/index.h"

namespace zipnn::fs {
namespace {

// Filled by fuse_opt_parse; strings are malloc'd by libfuse.
struct MountConfig {
  char* store = nullptr;
  char* mountpoint = nullptr;  // (also left to libfuse, which takes it)
  char* cache_size = nullptr;
  char* log_level = nullptr;
  char* workers = nullptr;  // counts as text: libfuse's %u takes "-1" and wraps past 32 bits
  char* prefetch = nullptr;
  char* read_ahead_kb = nullptr;
  double entry_timeout = 60;
  double attr_timeout = 60;
  int show_help = 0;
  ~MountConfig() {
    for (char* s : {store, mountpoint, cache_size, log_level, workers, prefetch, read_ahead_kb})
      std::free(s);
  }
};

// Option `name`'s count: decimal digits, at most `max`; `value` keeps its default if absent.
bool ParseCount(const char* name, const char* text, uint64_t max, unsigned& value) {
  if (text == nullptr) return true;
  const std::optional<uint64_t> v = ParseDecimal(text);
  if (!v || *v > max) {
    std::fprintf(stderr, "zipnnfs: bad %s '%s' (0 to %llu)\n", name, text,
                 static_cast<unsigned long long>(max));
    return false;
  }
  value = static_cast<unsigned>(*v);
  return true;
}

#define ZIPNN_OPT(t, p) \
  { t, offsetof(MountConfig, p), 1 }
const fuse_opt kOptions[] = {
    ZIPNN_OPT("cache_size=%s", cache_size), ZIPNN_OPT("log_level=%s", log_level),
    ZIPNN_OPT("workers=%s", workers), ZIPNN_OPT("prefetch=%s", prefetch),
    ZIPNN_OPT("read_ahead_kb=%s", read_ahead_kb), ZIPNN_OPT("entry_timeout=%lf", entry_timeout),
    ZIPNN_OPT("attr_timeout=%lf", attr_timeout),
    FUSE_OPT_KEY("ro", FUSE_OPT_KEY_DISCARD),  // always, for now
    // atime flags from fstab that libfuse 3.14 does not know: a read-only mount keeps none.
    FUSE_OPT_KEY("relatime", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("norelatime", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("strictatime", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("nostrictatime", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("lazytime", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("nolazytime", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("diratime", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("nodiratime", FUSE_OPT_KEY_DISCARD), FUSE_OPT_END};
#undef ZIPNN_OPT

// The first non-option argument is the store; the second stays for fuse_parse_cmdline.
int OptProc(void* data, const char* arg, int key, fuse_args*) {
  auto* cfg = static_cast<MountConfig*>(data);
  if (key == FUSE_OPT_KEY_NONOPT && cfg->store == nullptr) {
    cfg->store = strdup(arg);
    return 0;
  }
  if (key == FUSE_OPT_KEY_NONOPT && cfg->mountpoint == nullptr) cfg->mountpoint = strdup(arg);
  return 1;
}

// Lets the kernel ask for 1 MiB per request instead of 128 KiB. The device comes from
// mountinfo: stat()ing the mount point from here would ask this very daemon.
bool SetReadAhead(const std::string& mountpoint, unsigned kb, std::string& err) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line, dev;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, majmin, root, point;
    f >> id >> parent >> majmin >> root >> point;
    // mountinfo escapes space, tab, newline and backslash as octal.
    std::string unescaped;
    for (size_t i = 0; i < point.size(); ++i) {
      if (point[i] == '\\' && i + 3 < point.size()) {
        unescaped += static_cast<char>(std::strtol(point.substr(i + 1, 3).c_str(), nullptr, 8));
        i += 3;
      } else {
        unescaped += point[i];
      }
    }
    if (unescaped == mountpoint) dev = majmin;  // the last one is on top
  }
  if (dev.empty()) {
    err = "mount not found in /proc/self/mountinfo";
    return false;
  }
  const std::string path = "/sys/class/bdi/" + dev + "/read_ahead_kb";
  std::ofstream out(path);
  out << kb << "\n";
  out.flush();
  if (!out) {
    err = "cannot write " + path + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

void SetUpLogging(bool foreground, bool debug, const char* level) {
  std::shared_ptr<spdlog::logger> logger;
  if (foreground) {
    logger = spdlog::stderr_color_mt("zipnnfs");
  } else {
    logger = spdlog::syslog_logger_mt("zipnnfs", "zipnnfs", LOG_PID, LOG_DAEMON);
  }
  spdlog::set_default_logger(logger);
  spdlog::set_level(debug ? spdlog::level::debug : spdlog::level::info);
  if (level != nullptr) spdlog::set_level(spdlog::level::from_str(level));
}

// Until the mount is ready, errors go to the user's terminal: from a daemon, through a pipe to
// the parent process, which prints them and exits with their status.
class Reporter {
 public:
  explicit Reporter(int fd) : fd_(fd) {}
  ~Reporter() {
    if (fd_ >= 0) ::close(fd_);
  }
  int Fail(const std::string& msg) {
    const std::string line = "zipnnfs: " + msg + "\n";
    if (fd_ < 0) {
      std::fputs(line.c_str(), stderr);
    } else {
      (void)!::write(fd_, line.data(), line.size());
      spdlog::error("{}", msg);  // and to syslog
    }
    return 1;
  }
  void Ready() {
    if (fd_ < 0) return;
    (void)!::write(fd_, "", 1);  // a lone NUL byte: ready
    ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// The parent side of daemonizing: waits for the child's report and returns the exit code.
int WaitForDaemon(int fd, pid_t child) {
  std::string msg;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) msg.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (msg.size() == 1 && msg[0] == '\0') return 0;
  if (msg.empty()) {
    int status = 0;
    ::waitpid(child, &status, 0);
    std::fputs("zipnnfs: the daemon exited before the mount was ready\n", stderr);
    return 1;
  }
  std::fputs(msg.c_str(), stderr);
  ::waitpid(child, nullptr, 0);
  return 1;
}

// `s` as the value of a libfuse -o option: its parser splits options at commas and takes a
// backslash as an escape, so a store path holding either could otherwise add options.
std::string OptionValue(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string RealPath(const char* p) {
  char buf[PATH_MAX];
  return ::realpath(p, buf) != nullptr ? std::string(buf) : std::string(p);
}

}  // namespace

std::string MountUsage() {
  return "Mount: zipnnfs [mount] STORE MOUNTPOINT [-f] [-d] [-s] [-o opt,...]\n"
         "  -f                    stay in the foreground (log to stderr; else syslog)\n"
         "  -d                    debug: FUSE request log, log_level=debug, implies -f\n"
         "  -s                    single-threaded session loop\n"
         "  -o cache_size=SIZE    decoded-chunk cache, bytes (K/M/G suffixes; default 512M)\n"
         "  -o workers=N          prefetch decode threads (default, or 0: one per core)\n"
         "  -o prefetch=N         chunks read ahead of a sequential stream (default 32; 0 = off)\n"
         "  -o read_ahead_kb=N    kernel read-ahead of the mount (default 1024; 0 = leave)\n"
         "  -o entry_timeout=S    seconds the kernel caches names (default 60)\n"
         "  -o attr_timeout=S     seconds the kernel caches attributes (default 60)\n"
         "  -o log_level=L        trace, debug, info, warn, error, critical, off\n"
         "  -o max_threads=N      FUSE worker threads, at most (default 10)\n"
         "  -o allow_other        let other users read (FUSE; needs user_allow_other for "
         "non-root)\n"
         "  -o ro                 read-only (the only mode for now)\n"
         "Unmount with: fusermount3 -u MOUNTPOINT (or SIGINT/SIGTERM to the daemon).\n"
         "Live statistics: zipnnfs stats MOUNTPOINT\n";
}

int MountMain(int argc, char** argv) {
  fuse_args args = FUSE_ARGS_INIT(argc, argv);
  // RAII for libfuse's argument vector.
  std::unique_ptr<fuse_args, void (*)(fuse_args*)> args_guard(&args, fuse_opt_free_args);
  MountConfig cfg;
  if (fuse_opt_parse(&args, &cfg, kOptions, OptProc) != 0) return 2;
  // A mount point that is not there is an error like any other (exit 1, our message), not a
  // usage error: libfuse's parser below would refuse it so.
  // (A dead mount's root may still stat from the kernel's attribute cache; statfs always asks.)
  struct stat st;
  struct statvfs vfs;
  if (cfg.mountpoint != nullptr &&
      (::stat(cfg.mountpoint, &st) != 0 || ::statvfs(cfg.mountpoint, &vfs) != 0)) {
    const int err = errno;
    std::fprintf(stderr, "zipnnfs: mount point %s: %s%s\n", cfg.mountpoint, std::strerror(err),
                 err == ENOTCONN ? " (a stale FUSE mount: fusermount3 -u it first)" : "");
    return 1;
  }
  fuse_cmdline_opts cmd;
  std::memset(&cmd, 0, sizeof cmd);
  if (fuse_parse_cmdline(&args, &cmd) != 0) return 2;
  std::unique_ptr<char, decltype(&std::free)> mountpoint_guard(cmd.mountpoint, std::free);
  if (cmd.show_help) {
    std::fputs(MountUsage().c_str(), stdout);
    return 0;
  }
  if (cfg.store == nullptr || cmd.mountpoint == nullptr) {
    std::fputs("zipnnfs: usage: zipnnfs STORE MOUNTPOINT [options] (see zipnnfs --help)\n", stderr);
    return 2;
  }
  // (A negative or NaN timeout would reach the kernel as a huge unsigned one.)
  for (const auto& [name, value] :
       {std::pair{"entry_timeout", cfg.entry_timeout}, {"attr_timeout", cfg.attr_timeout}}) {
    if (!(value >= 0 && value <= 1e9)) {
      std::fprintf(stderr, "zipnnfs: -o %s: seconds from 0 to 1e9, not %g\n", name, value);
      return 2;
    }
  }
  FileSystemOptions fs_opts;
  fs_opts.store_dir = RealPath(cfg.store);
  fs_opts.entry_timeout = cfg.entry_timeout;
  fs_opts.attr_timeout = cfg.attr_timeout;
  // (Read-ahead: the kernel takes any size, and 1 GiB is far past what it can use.)
  unsigned workers = 0, prefetch = 32, read_ahead_kb = 1024;
  if (!ParseCount("workers", cfg.workers, 1024, workers) ||
      !ParseCount("prefetch", cfg.prefetch, 1u << 16, prefetch) ||
      !ParseCount("read_ahead_kb", cfg.read_ahead_kb, 1u << 20, read_ahead_kb)) {
    return 2;
  }
  fs_opts.reader.workers = workers;
  fs_opts.reader.prefetch = prefetch;
  if (cfg.cache_size != nullptr) {
    const std::optional<uint64_t> size = ParseSize(cfg.cache_size);
    if (!size) {
      std::fprintf(stderr, "zipnnfs: bad cache_size '%s'\n", cfg.cache_size);
      return 2;
    }
    fs_opts.reader.cache_size = *size;
  }
  if (cfg.log_level != nullptr && spdlog::level::from_str(cfg.log_level) == spdlog::level::off &&
      std::strcmp(cfg.log_level, "off") != 0) {
    std::fprintf(stderr, "zipnnfs: bad log_level '%s'\n", cfg.log_level);
    return 2;
  }
  const std::string mountpoint = RealPath(cmd.mountpoint);
  if (!S_ISDIR(st.st_mode)) {
    std::fprintf(stderr, "zipnnfs: mount point %s is not a directory\n", cmd.mountpoint);
    return 1;
  }
  // Always read-only until writes are served; fsname shows the store in mount(8) and df. Never
  // set-id programs or device nodes from a store, however mounted: mount.fuse3, run by root for
  // `mount -t fuse.zipnnfs` or fstab, passes "dev,suid", which these (last) override.
  const std::string mount_opts =
      "-oro,nosuid,nodev,default_permissions,fsname=zipnnfs:" + OptionValue(fs_opts.store_dir) +
      ",subtype=zipnnfs";
  if (fuse_opt_add_arg(&args, mount_opts.c_str()) != 0) return 1;

  const bool foreground = cmd.foreground || cmd.debug;
  int report_fd = -1;
  if (!foreground) {
    // Fork before anything opens the store or starts a thread: LMDB environments and threads
    // do not survive fork.
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
      std::perror("zipnnfs: pipe");
      return 1;
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("zipnnfs: fork");
      return 1;
    }
    if (pid > 0) {
      ::close(fds[1]);
      return WaitForDaemon(fds[0], pid);
    }
    ::close(fds[0]);
    ::setsid();
    report_fd = fds[1];
  }
  Reporter reporter(report_fd);
  SetUpLogging(foreground, cmd.debug, cfg.log_level);

  // The threads the store and the reader start (prefetch workers, background syncs) must never
  // take the signals that end the session: libfuse's handler only sets a flag, and its main
  // loop sleeps until interrupted, so a SIGTERM handled on another thread while the loop starts
  // its first worker (with signals blocked) left the daemon serving. They inherit this mask;
  // the main thread takes the signals again once they are started.
  sigset_t stop_signals, old_mask;
  sigemptyset(&stop_signals);
  for (int sig : {SIGHUP, SIGINT, SIGTERM}) sigaddset(&stop_signals, sig);
  pthread_sigmask(SIG_BLOCK, &stop_signals, &old_mask);
  index::StoreOptions store_opts;
  // Opened for writing, the store's lock is held: no other writer while mounted. A store on
  // read-only media (a shared volume, a ro bind mount) cannot open its lock file for writing: it
  // is served read-only under a shared lock, which other such mounts share and which keeps
  // writers out (a ro bind mount may be writable by its original path).
  struct statvfs media;
  // So is a store this user may not write (another user's): mounted by a service account, say.
  store_opts.writable =
      !(::statvfs(fs_opts.store_dir.c_str(), &media) == 0 && (media.f_flag & ST_RDONLY)) &&
      ::faccessat(AT_FDCWD, fs_opts.store_dir.c_str(), W_OK, AT_EACCESS) == 0;
  store_opts.shared_lock = !store_opts.writable;
  Result<std::unique_ptr<index::Store>> store = index::Store::Open(fs_opts.store_dir, store_opts);
  if (!store.ok()) {
    std::string msg = "cannot open store " + fs_opts.store_dir + ": " + store.status().message();
    return reporter.Fail(msg);
  }
  if (read_ahead_kb != 0) {
    // The kernel lowers the read-ahead to what the INIT reply allows, so it is raised once the
    // session is initialized: at the first request after INIT.
    fs_opts.after_init = [mountpoint, kb = read_ahead_kb] {
      std::string err;
      if (!SetReadAhead(mountpoint, kb, err)) {
        spdlog::warn("read-ahead left at the kernel default: {}", err);
      }
    };
  }
  FileSystem fs(**store, fs_opts);
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  fuse_session* se = fuse_session_new(&args, &FileSystem::Ops(), sizeof(fuse_lowlevel_ops), &fs);
  if (se == nullptr) return reporter.Fail("bad mount options (see zipnnfs --help)");
  std::unique_ptr<fuse_session, void (*)(fuse_session*)> se_guard(se, fuse_session_destroy);
  if (fuse_set_signal_handlers(se) != 0) return reporter.Fail("cannot set signal handlers");
  if (fuse_session_mount(se, mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se);
    return reporter.Fail("cannot mount on " + mountpoint);
  }
  spdlog::info("serving {} on {}{}", fs_opts.store_dir, mountpoint,
               store_opts.writable ? "" : " (read-only store: shared lock)");
  spdlog::debug("cache_size {} bytes, prefetch {} chunks, workers {}, read_ahead_kb {}",
                fs_opts.reader.cache_size, fs_opts.reader.prefetch,
                workers != 0 ? workers : std::max(1u, std::thread::hardware_concurrency()),
                read_ahead_kb);
  reporter.Ready();
  if (!foreground) {
    const int null = ::open("/dev/null", O_RDWR);
    if (null >= 0) {
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
      if (null > 2) ::close(null);
    }
    (void)!::chdir("/");
  }

  int rc;
  if (cmd.singlethread) {
    rc = fuse_session_loop(se);
  } else {
    fuse_loop_config* loop = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(loop, static_cast<unsigned>(cmd.clone_fd));
    if (cmd.max_idle_threads != UINT_MAX) {  // UINT_MAX: not given
      fuse_loop_cfg_set_idle_threads(loop, cmd.max_idle_threads);
    }
    if (cmd.max_threads != 0 && cmd.max_threads <= 100000) {
      fuse_loop_cfg_set_max_threads(loop, cmd.max_threads);
    }
    rc = fuse_session_loop_mt(se, loop);
    fuse_loop_cfg_destroy(loop);
  }
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  spdlog::info("unmounted {}", mountpoint);
  // libfuse's loops return the number of the signal that ended them (SIGTERM, SIGINT, SIGHUP) or
  // -errno: a signal is how users and systemd stop a mount (README), not a failure.
  return rc >= 0 ? 0 : 1;
}

Result<std::string> ReadMountStats(const std::string& mountpoint) {
  std::string value(1 << 16, '\0');
  for (;;) {
    const ssize_t n =
        ::getxattr(mountpoint.c_str(), FileSystem::kStatsXattr, value.data(), value.size());
    if (n >= 0) {
      value.resize(static_cast<size_t>(n));
      return value;
    }
    if (errno == ERANGE) {
      value.resize(value.size() * 4);
      continue;
    }
    if (errno == ENODATA || errno == ENOTSUP) {
      return Status::NotFound(mountpoint + " is not a zipnnfs mount");
    }
    return Status::FromErrno(errno, mountpoint);
  }
}

}  // namespace zipnn::fs
