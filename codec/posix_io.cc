// Whole reads and writes of descriptors (container.h): EINTR and short transfers retried, the
// end of a file that shrank named as such.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "codec/container.h"

namespace zipnn {

namespace {

// Calls io(done) until `size` bytes have moved, retrying EINTR and short transfers; io returns
// what read(2) and write(2) do. Moving nothing means the end of the file.
template <class Io>
Status TransferAll(size_t size, const char* what, Io io) {
  for (size_t done = 0; done < size;) {
    const ssize_t n = io(done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, what);
    }
    if (n == 0) return Status::Io("unexpected end of file (did it shrink?)");
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

Status PreadFull(int fd, uint64_t offset, std::span<uint8_t> out) {
  return TransferAll(out.size(), "read", [&](size_t done) {
    return ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
  });
}

bool MayHaveHoles(int fd) {
  struct stat st;
  // (Half at least: on filesystems that compress (ZFS, btrfs), blocks count compressed data, and
  // every chunk of every such file would cost an lseek.)
  return ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_blocks * 512 < st.st_size / 2;
}

Status PreadSparse(int fd, uint64_t offset, std::span<uint8_t> out) {
  if (out.empty()) return Status::Ok();
  const off_t data = ::lseek(fd, static_cast<off_t>(offset), SEEK_DATA);
  // No data in the range: only ENXIO (no data past `offset`) or data past its end say so; any
  // other failure (SEEK_DATA not supported, say) reads as usual.
  const bool hole = data < 0 ? errno == ENXIO : static_cast<uint64_t>(data) >= offset + out.size();
  if (!hole) return PreadFull(fd, offset, out);
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "fstat");
  if (offset + out.size() > static_cast<uint64_t>(st.st_size))
    return Status::Io("unexpected end of file (did it shrink?)");
  std::fill(out.begin(), out.end(), uint8_t{0});
  return Status::Ok();
}

Status CheckEndsAt(int fd, uint64_t size) {
  uint8_t byte;
  ssize_t n;
  do {
    n = ::pread(fd, &byte, 1, static_cast<off_t>(size));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Status::FromErrno(errno, "read");
  if (n > 0) {
    return Status::Io("holds more than its size of " + std::to_string(size) +
                      " bytes (did it grow? a /proc file?)");
  }
  return Status::Ok();
}

bool PathIsWithin(const std::string& path, const std::string& dir) {
  struct stat target;
  if (::stat(dir.c_str(), &target) != 0) return false;
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(path, ec);
  while (!ec && !std::filesystem::exists(p, ec) && p.has_relative_path()) p = p.parent_path();
  p = std::filesystem::canonical(p, ec);  // (symlinks resolved)
  if (ec) return false;
  if (!std::filesystem::is_directory(p, ec)) p = p.parent_path();  // (a file: its directory)
  // Up through "..", by identity rather than by name: a bind mount of `dir` is `dir`.
  UniqueFd at(::open(p.c_str(), O_PATH | O_CLOEXEC));
  while (at.valid()) {
    struct stat st, up;
    if (::fstat(at.get(), &st) != 0) return false;
    if (st.st_dev == target.st_dev && st.st_ino == target.st_ino) return true;
    UniqueFd parent(::openat(at.get(), "..", O_PATH | O_CLOEXEC));
    if (!parent.valid() || ::fstat(parent.get(), &up) != 0) return false;
    if (up.st_dev == st.st_dev && up.st_ino == st.st_ino) return false;  // the root
    at = std::move(parent);
  }
  return false;
}

Status WriteFull(int fd, std::span<const uint8_t> bytes) {
  return TransferAll(bytes.size(), "write", [&](size_t done) {
    return ::write(fd, bytes.data() + done, bytes.size() - done);
  });
}

Status PwriteFull(int fd, uint64_t offset, std::span<const uint8_t> bytes) {
  return TransferAll(bytes.size(), "write", [&](size_t done) {
    return ::pwrite(fd, bytes.data() + done, bytes.size() - done,
                    static_cast<off_t>(offset + done));
  });
}

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

}  // namespace zipnn
