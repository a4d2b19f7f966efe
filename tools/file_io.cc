#include "tools/file_io.h"

#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
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

mode_t CurrentUmask() {
  mode_t m = ::umask(0);
  ::umask(m);
  return m;
}

}  // namespace

Status WithPath(const std::string& path, const Status& s) {
  if (s.ok()) return s;
  return Status(s.code(), path + ": " + s.message());
}

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

bool PathExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// ---- AtomicOutputFile ------------------------------------------------------------------------

AtomicOutputFile::AtomicOutputFile(UniqueFd fd, std::string path, std::string temp_path,
                                   bool overwrite)
    : fd_(std::move(fd)),
      syncer_(BackgroundSyncer::Start(fd_.get(), path)),
      path_(std::move(path)),
      temp_path_(std::move(temp_path)),
      overwrite_(overwrite) {}

AtomicOutputFile::AtomicOutputFile(AtomicOutputFile&& o) noexcept
    : fd_(std::move(o.fd_)),
      syncer_(std::move(o.syncer_)),
      path_(std::move(o.path_)),
      temp_path_(std::exchange(o.temp_path_, std::string())),
      overwrite_(o.overwrite_) {}

AtomicOutputFile::~AtomicOutputFile() { Discard(); }

void AtomicOutputFile::Wrote(uint64_t bytes) {
  if (syncer_) syncer_->Wrote(bytes);
}

void AtomicOutputFile::Discard() {
  syncer_.reset();  // (its own descriptor: no wait for the file's)
  fd_.Reset();
  if (temp_path_.empty()) return;
  ::unlink(temp_path_.c_str());
  ClearPendingTemp(temp_path_);
  temp_path_.clear();
}

Result<AtomicOutputFile> AtomicOutputFile::Create(const std::string& path, bool overwrite,
                                                  mode_t mode) {
  if (!overwrite && PathExists(path)) {
    return Status::Exists(path + ": already exists (use -f to overwrite)");
  }
  std::string temp = path + ".tmp.XXXXXX";
  int fd = ::mkostemp(temp.data(), O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, path);
  SetPendingTemp(temp);
  AtomicOutputFile out(UniqueFd(fd), path, temp, overwrite);
  if (::fchmod(fd, mode & 0666 & ~CurrentUmask()) != 0) return Status::FromErrno(errno, path);
  return out;
}

Status AtomicOutputFile::Commit() {
  if (temp_path_.empty()) return Status::InvalidArgument(path_ + ": already committed");
  Status s = syncer_ ? syncer_->Drain() : Status::Ok();  // its failure is this file's
  if (s.ok() && ::fsync(fd_.get()) != 0) s = Status::FromErrno(errno, path_);
  syncer_.reset();
  // close() can report a deferred write error (NFS, quotas): check it.
  if (s.ok() && ::close(fd_.Release()) != 0) s = Status::FromErrno(errno, path_);
  if (s.ok()) {
    int rc = overwrite_ ? ::rename(temp_path_.c_str(), path_.c_str())
                        : ::renameat2(AT_FDCWD, temp_path_.c_str(), AT_FDCWD, path_.c_str(),
                                      RENAME_NOREPLACE);
    if (rc != 0 && !overwrite_ && (errno == EINVAL || errno == ENOSYS)) {
      // A file system without RENAME_NOREPLACE: link(2) refuses to replace too.
      rc = ::link(temp_path_.c_str(), path_.c_str());
      if (rc == 0) ::unlink(temp_path_.c_str());
    }
    if (rc != 0) {
      s = errno == EEXIST ? Status::Exists(path_ + ": already exists (use -f to overwrite)")
                          : Status::FromErrno(errno, path_);
    }
  }
  if (!s.ok()) {
    Discard();
    return s;
  }
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

Status OffsetWriter::Write(uint64_t offset, std::vector<uint8_t>& buf) {
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return !writing_ || queue_.size() < max_queued_ || !error_.ok(); });
  if (!error_.ok()) return error_;
  if (writing_) {
    queue_.emplace_back(offset, std::move(buf));
    buf.clear();
    if (!spare_.empty()) {
      buf.swap(spare_.back());
      spare_.pop_back();
    }
    return Status::Ok();
  }
  writing_ = true;
  Status s = Status::Ok();
  for (std::pair<uint64_t, std::vector<uint8_t>> item{offset, std::move(buf)};;) {
    lk.unlock();
    s = PwriteFull(fd_, item.first, item.second);
    lk.lock();
    if (!s.ok() || queue_.empty()) {
      buf = std::move(item.second);
      break;
    }
    spare_.push_back(std::move(item.second));
    item = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();  // room in the queue
  }
  if (!s.ok()) {
    error_ = s;
    queue_.clear();
  }
  writing_ = false;
  cv_.notify_all();
  return s;
}

}  // namespace zipnn::tool
