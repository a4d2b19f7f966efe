// Whole reads and writes of descriptors (container.h): EINTR and short transfers retried, the
// end of a file that shrank named as such.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

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
