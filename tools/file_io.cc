#include "tools/file_io.h"

#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <optional>
#include <string_view>
#include <utility>

namespace zipnn::tool {
namespace {

// The temporary file to remove if a signal ends the process. One output at a time is enough
// for this tool; the buffer is fixed so the handler touches no allocator.
char g_pending_temp[4096];
volatile sig_atomic_t g_have_pending_temp = 0;

extern "C" void RemoveTempAndDie(int sig) {
  if (g_have_pending_temp) ::unlink(g_pending_temp);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void SetPendingTemp(const std::string& path) {
  static bool installed = false;
  if (!installed) {
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::signal(sig, RemoveTempAndDie);
    installed = true;
  }
  g_have_pending_temp = 0;
  if (path.size() < sizeof g_pending_temp) {
    std::memcpy(g_pending_temp, path.c_str(), path.size() + 1);
    g_have_pending_temp = 1;
  }
}

void ClearPendingTemp(const std::string& path) {
  if (g_have_pending_temp && path == g_pending_temp) g_have_pending_temp = 0;
}

std::string DirName(const std::string& path) {
  std::string copy = path;
  return ::dirname(copy.data());
}

// The descriptor of this process that `path` names (/dev/stdout, /dev/stderr, /dev/fd/N,
// /proc/self/fd/N), if it names one. The shell opened it (`> file`, `3>> log`): the output goes
// through it, since a temporary file renamed over the name would replace the system's
// /dev/stdout symlink (as root, with -f) and leave the redirected file empty.
std::optional<int> NamedDescriptor(std::string_view path) {
  if (path == "/dev/stdout") return STDOUT_FILENO;
  if (path == "/dev/stderr") return STDERR_FILENO;
  for (std::string_view dir : {"/dev/fd/", "/proc/self/fd/"}) {
    if (!path.starts_with(dir) || path.size() == dir.size()) continue;
    const std::optional<uint64_t> fd = ParseDecimal(path.substr(dir.size()));
    if (fd && *fd <= INT_MAX) return static_cast<int>(*fd);
  }
  return std::nullopt;
}

// path.tmp.XXXXXX, its name cut short where the whole would exceed NAME_MAX: any name that may
// exist may be an output (a 250-byte name once failed with "File name too long").
std::string TempPattern(const std::string& path) {
  constexpr std::string_view kSuffix = ".tmp.XXXXXX";
  const size_t slash = path.rfind('/');
  const size_t name_at = slash == std::string::npos ? 0 : slash + 1;
  std::string temp = path;
  if (path.size() - name_at + kSuffix.size() > NAME_MAX)
    temp.resize(name_at + NAME_MAX - kSuffix.size());
  return temp.append(kSuffix);
}

mode_t CurrentUmask() {
  mode_t m = ::umask(0);
  ::umask(m);
  return m;
}

}  // namespace

Result<InputFile> OpenInput(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not hang before the regular-file check (no effect on files).
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return Status::FromErrno(errno, path);
  InputFile in;
  in.fd = UniqueFd(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, path);
  if (S_ISDIR(st.st_mode)) return Status::FromErrno(EISDIR, path);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + ": not a regular file");
  in.size = static_cast<uint64_t>(st.st_size);
  in.mode = st.st_mode & 07777;
  return in;
}

void HoldStandardDescriptors() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
      const int held = ::open("/dev/null", O_RDONLY);  // (the lowest free descriptor: fd)
      if (held >= 0 && held != fd) ::close(held);
    }
  }
}

void RaiseDescriptorLimit() {
  struct rlimit lim;
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// ---- AtomicOutputFile ------------------------------------------------------------------------

AtomicOutputFile::AtomicOutputFile(UniqueFd fd, std::string path, std::string temp_path,
                                   bool overwrite, bool sequential)
    : fd_(std::move(fd)),
      syncer_(temp_path.empty() ? nullptr : BackgroundSyncer::Start(fd_.get(), path)),
      path_(std::move(path)),
      temp_path_(std::move(temp_path)),
      overwrite_(overwrite),
      special_(temp_path_.empty()),
      sequential_(sequential) {}

AtomicOutputFile::AtomicOutputFile(AtomicOutputFile&& o) noexcept
    : fd_(std::move(o.fd_)),
      syncer_(std::move(o.syncer_)),
      path_(std::move(o.path_)),
      temp_path_(std::exchange(o.temp_path_, std::string())),
      overwrite_(o.overwrite_),
      special_(o.special_),
      unnamed_(o.unnamed_),
      sequential_(o.sequential_) {}

AtomicOutputFile::~AtomicOutputFile() { Discard(); }

void AtomicOutputFile::Wrote(uint64_t bytes) {
  if (syncer_) syncer_->Wrote(bytes);
}

void AtomicOutputFile::Discard() {
  syncer_.reset();  // (its own descriptor: no wait for the file's)
  fd_.Reset();
  if (temp_path_.empty()) return;
  if (!unnamed_) {
    ::unlink(temp_path_.c_str());
    ClearPendingTemp(temp_path_);
  }
  temp_path_.clear();
}

bool AtomicOutputFile::LinkAs(const std::string& name) const {
  if (::linkat(fd_.get(), "", AT_FDCWD, name.c_str(), AT_EMPTY_PATH) == 0) return true;
  if (errno == EEXIST) return false;
  // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the descriptor's /proc link does not.
  const std::string self = "/proc/self/fd/" + std::to_string(fd_.get());
  return ::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0;
}

// The real name for the complete unnamed file: linked straight to it where it must not replace
// anything, else linked beside it under a fresh temporary name and renamed over it.
Status AtomicOutputFile::NameUnnamed() {
  if (!overwrite_) {
    if (LinkAs(path_)) return Status::Ok();
    return errno == EEXIST ? Status::Exists(path_ + ": already exists (use -f to overwrite)")
                           : Status::FromErrno(errno, path_);
  }
  for (int attempt = 0;; ++attempt) {
    std::string temp = temp_path_;  // path.tmp.XXXXXX
    uint64_t r = (static_cast<uint64_t>(::getpid()) << 32) ^ reinterpret_cast<uintptr_t>(&temp) ^
                 static_cast<uint64_t>(attempt) * 0x9e3779b97f4a7c15ull ^
                 static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    for (size_t i = temp.size() - 6; i < temp.size(); ++i, r /= 36)
      temp[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[r % 36];
    if (!LinkAs(temp)) {
      if (errno == EEXIST && attempt < 100) continue;
      return Status::FromErrno(errno, path_);
    }
    if (::rename(temp.c_str(), path_.c_str()) == 0) return Status::Ok();
    const int err = errno;
    ::unlink(temp.c_str());
    return Status::FromErrno(err, path_);
  }
}

// The real name for the complete named temporary file: renamed over it, or where it must not
// replace anything, renamed only if the name is free.
Status AtomicOutputFile::NameTemporary() {
  int rc = overwrite_ ? ::rename(temp_path_.c_str(), path_.c_str())
                      : ::renameat2(AT_FDCWD, temp_path_.c_str(), AT_FDCWD, path_.c_str(),
                                    RENAME_NOREPLACE);
  if (rc != 0 && !overwrite_ && (errno == EINVAL || errno == ENOSYS)) {
    // A file system without RENAME_NOREPLACE: link(2) refuses to replace too.
    rc = ::link(temp_path_.c_str(), path_.c_str());
    if (rc == 0) ::unlink(temp_path_.c_str());
  }
  if (rc == 0) return Status::Ok();
  return errno == EEXIST ? Status::Exists(path_ + ": already exists (use -f to overwrite)")
                         : Status::FromErrno(errno, path_);
}

Result<AtomicOutputFile> AtomicOutputFile::Create(const std::string& path, bool overwrite,
                                                  mode_t mode) {
  if (const std::optional<int> named = NamedDescriptor(path)) {
    // Written in order from where the shell left it (it may append), without -f: the shell has
    // decided about overwriting. A descriptor not open is an error, not a name to create.
    UniqueFd fd(::fcntl(*named, F_DUPFD_CLOEXEC, 0));
    if (!fd.valid()) return Status::FromErrno(errno, path);
    return AtomicOutputFile(std::move(fd), path, "", overwrite, /*sequential=*/true);
  }
  // A device or a pipe (/dev/null, /dev/stdout, a FIFO) is written to as it is: a temporary file
  // renamed over it would replace the device node. Nothing there is overwritten, so no -f.
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    if (!S_ISCHR(st.st_mode) && !S_ISFIFO(st.st_mode)) {
      return Status::InvalidArgument(path + ": not a regular file, character device or pipe");
    }
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd.valid()) return Status::FromErrno(errno, path);
    return AtomicOutputFile(std::move(fd), path, "", overwrite);
  }
  if (!overwrite && PathExists(path)) {
    return Status::Exists(path + ": already exists (use -f to overwrite)");
  }
  std::string temp = TempPattern(path);
  UniqueFd fd(::open(DirName(path).c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600));
  const bool unnamed = fd.valid();
  if (!unnamed) {  // (a file system without O_TMPFILE)
    fd.Reset(::mkostemp(temp.data(), O_CLOEXEC));
    if (!fd.valid()) return Status::FromErrno(errno, path);
    SetPendingTemp(temp);
  }
  const int raw = fd.get();
  AtomicOutputFile out(std::move(fd), path, temp, overwrite);
  out.unnamed_ = unnamed;
  if (::fchmod(raw, mode & 0666 & ~CurrentUmask()) != 0) return Status::FromErrno(errno, path);
  return out;
}

Status AtomicOutputFile::Commit() {
  if (special_) {
    if (!fd_.valid()) return Status::InvalidArgument(path_ + ": already committed");
    return ::close(fd_.Release()) == 0 ? Status::Ok() : Status::FromErrno(errno, path_);
  }
  if (temp_path_.empty()) return Status::InvalidArgument(path_ + ": already committed");
  Status s = syncer_ ? syncer_->Drain() : Status::Ok();  // its failure is this file's
  if (s.ok() && ::fsync(fd_.get()) != 0) s = Status::FromErrno(errno, path_);
  syncer_.reset();
  // A deferred write error (NFS, quotas) shows when a descriptor closes: close a duplicate
  // before the file takes its real name (and so may replace another).
  if (s.ok()) {
    const int dup = ::dup(fd_.get());
    if (dup < 0 || ::close(dup) != 0) s = Status::FromErrno(errno, path_);
  }
  if (s.ok()) s = unnamed_ ? NameUnnamed() : NameTemporary();
  if (!s.ok()) {
    Discard();
    return s;
  }
  fd_.Reset();  // (flushed and synced: nothing left to report)
  ClearPendingTemp(temp_path_);
  temp_path_.clear();
  // Make the rename itself durable.
  int dir = ::open(DirName(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return Status::Ok();
}

ExtentReader::ExtentReader(int fd, std::vector<Extent> extents, size_t ahead)
    : fd_(fd),
      sparse_(MayHaveHoles(fd)),
      extents_(std::move(extents)),
      slots_(std::min(ahead, extents_.size())) {
  for (const Extent& e : extents_) largest_ = std::max(largest_, e.size);
  if (!slots_.empty()) thread_ = std::thread([this] { ReadAhead(); });
}

ExtentReader::~ExtentReader() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  space_.notify_one();
  thread_.join();
}

void ExtentReader::ReadAhead() {
  const size_t slots = slots_.size();
  for (size_t i = 0; i < extents_.size(); i++) {
    Slot& slot = slots_[i % slots];
    {
      std::unique_lock lk(mu_);
      if (i >= taken_ + slots) {
        waiting_at_ = i;
        space_.wait(lk, [&] { return stop_ || HalfFree(i); });
        waiting_at_ = SIZE_MAX;
      }
      if (stop_) return;
    }
    // The slot is ours until marked ready: the consumer is at least one extent behind. Room for
    // the largest extent at once: growing by steps would map fresh pages again and again.
    slot.buf.reserve(largest_);
    slot.buf.resize(extents_[i].size);
    Status st = ReadExtent(i, slot.buf);
    std::lock_guard lk(mu_);
    slot.status = std::move(st);
    slot.ready = true;
    if (consumer_waits_) ready_.notify_one();
  }
}

Status ExtentReader::Read(size_t i, ByteBuffer& buf) {
  if (i >= extents_.size()) return Status::InvalidArgument("extent index out of range");
  if (slots_.empty()) {
    buf.resize(extents_[i].size);
    return ReadExtent(i, buf);
  }
  if (i != taken_) return Status::InvalidArgument("extents read ahead are taken in order");
  Slot& slot = slots_[i % slots_.size()];
  std::unique_lock lk(mu_);
  consumer_waits_ = true;
  ready_.wait(lk, [&] { return slot.ready; });
  consumer_waits_ = false;
  buf.swap(slot.buf);
  slot.ready = false;
  taken_++;
  if (waiting_at_ != SIZE_MAX && HalfFree(waiting_at_)) space_.notify_one();
  return std::move(slot.status);
}

}  // namespace zipnn::tool
