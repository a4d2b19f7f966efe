// File helpers for the zipnn tool: whole reads and writes, input files, atomic output files.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "codec/container.h"
#include "codec/status.h"

namespace zipnn::tool {

// An allocator whose resize leaves new bytes unset: for buffers about to be filled by a read.
// (std::vector<uint8_t> zero-fills what it grows by: 3-6% of a decompress of frames of varied
// sizes, swapped between buffers.)
template <class T>
struct UninitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = UninitAllocator<U>;
  };
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
using ByteBuffer = std::vector<uint8_t, UninitAllocator<uint8_t>>;

struct InputFile {
  UniqueFd fd;
  uint64_t size = 0;
  mode_t mode = 0;
};
// Opens a regular file for reading; errors name `path`.
Result<InputFile> OpenInput(const std::string& path);

bool PathExists(const std::string& path);

// Occupies whichever of descriptors 0, 1 and 2 the caller left closed (/dev/null, read-only: a
// write there still fails, and is reported), so that no file the tool opens becomes its stdout.
// Else `zipnnfs import ... >&-` would write its report into the store's first file.
void HoldStandardDescriptors();
// Raises this process's soft limit of open descriptors to its hard limit: an import holds a
// descriptor per host directory with files queued (see index::HostPath), more than the usual
// soft limit of 1024 where a large file holds up the workers. (Nothing here uses select().)
void RaiseDescriptorLimit();

// A new file, unnamed until complete where the file system allows (O_TMPFILE: even a kill -9
// leaves nothing behind), else under a temporary name (path.tmp.XXXXXX, same directory, the name
// cut short to fit NAME_MAX), given its real name by Commit after an fsync: a crash or error
// never leaves a partial file under the real name. A named temporary file is removed if the
// object dies uncommitted, and on SIGINT, SIGTERM or SIGHUP.
class AtomicOutputFile {
 public:
  // Fails with kExists if `path` exists and !overwrite. `mode` is applied (minus the umask). An
  // existing character device or pipe is written in place, without -f (a temporary file renamed
  // over /dev/null would replace it); so is a descriptor named as /dev/stdout, /dev/stderr,
  // /dev/fd/N or /proc/self/fd/N, in order from its current offset.
  static Result<AtomicOutputFile> Create(const std::string& path, bool overwrite, mode_t mode);

  AtomicOutputFile(AtomicOutputFile&& o) noexcept;
  AtomicOutputFile& operator=(AtomicOutputFile&&) = delete;
  AtomicOutputFile(const AtomicOutputFile&) = delete;
  ~AtomicOutputFile();

  int fd() const { return fd_.get(); }
  // Whether the output takes positional writes (a pipe does not: write in order instead).
  bool seekable() const { return !sequential_ && ::lseek(fd_.get(), 0, SEEK_CUR) >= 0; }
  const std::string& path() const { return path_; }
  // Whether the output is a new file of our own (not a device, pipe or inherited descriptor):
  // ranges never written read as zeros (holes, once ftruncate makes them part of the file).
  bool fresh() const { return !temp_path_.empty(); }
  // Tells that `bytes` more were written: every few MB they are synced in the background, so the
  // fsync of Commit has little left (a flush costs time in proportion to what it flushes). Any
  // thread.
  void Wrote(uint64_t bytes);
  // fsync, rename (or link) over the real name (refusing to replace it unless overwrite), fsync
  // the directory.
  Status Commit();

 private:
  AtomicOutputFile(UniqueFd fd, std::string path, std::string temp_path, bool overwrite,
                   bool sequential = false);
  void Discard();
  // Gives the unnamed file (fd_) the name `name`: false, with errno, where it cannot.
  bool LinkAs(const std::string& name) const;
  Status NameUnnamed();
  Status NameTemporary();

  UniqueFd fd_;
  std::unique_ptr<BackgroundSyncer> syncer_;  // null: syncs only in Commit
  std::string path_;
  std::string temp_path_;  // empty once committed or discarded
  bool overwrite_ = false;
  bool special_ = false;     // a device or pipe, written to in place
  bool unnamed_ = false;     // O_TMPFILE: temp_path_ is only the pattern of a name for Commit
  bool sequential_ = false;  // a descriptor the shell opened: positional writes would skip its
                             // offset (and O_APPEND makes pwrite append anyway)
};

// Reads extents of a file for coding. With `ahead` = 0, Read reads on the spot, on the calling
// thread (any number of threads at once: each worker reads its own chunk in parallel). With
// `ahead` > 0, a thread of its own reads the extents in order, up to `ahead` of them before the
// one consumer, which takes them in order: reading overlaps coding when there is one coding
// thread (as zstd's asynchronous I/O does for -T1).
class ExtentReader {
 public:
  struct Extent {
    uint64_t offset = 0;
    size_t size = 0;
  };
  ExtentReader(int fd, std::vector<Extent> extents, size_t ahead);
  ~ExtentReader();
  ExtentReader(const ExtentReader&) = delete;
  ExtentReader& operator=(const ExtentReader&) = delete;

  // Extent i into `buf` (resized; read ahead, it is swapped in: no copy). With `ahead` > 0, i
  // must follow the last extent read.
  Status Read(size_t i, ByteBuffer& buf);

 private:
  struct Slot {
    ByteBuffer buf;
    Status status;
    bool ready = false;
  };
  void ReadAhead();
  // Whether half the slots are free for extent i onwards (with mu_ held): the reader waits for
  // that, not for one slot, since a thread woken costs as much as a small read.
  bool HalfFree(size_t i) const { return i + slots_.size() / 2 < taken_ + slots_.size(); }

  Status ReadExtent(size_t i, std::span<uint8_t> out) const {
    return sparse_ ? PreadSparse(fd_, extents_[i].offset, out)
                   : PreadFull(fd_, extents_[i].offset, out);
  }

  const int fd_;
  const bool sparse_;  // MayHaveHoles
  const std::vector<Extent> extents_;
  size_t largest_ = 0;       // extent
  std::vector<Slot> slots_;  // extent i in slot i % size
  std::mutex mu_;
  std::condition_variable space_, ready_;
  size_t taken_ = 0;              // extents handed out
  size_t waiting_at_ = SIZE_MAX;  // the extent the reader waits to read into a free slot
  bool consumer_waits_ = false;   // for a slot to be ready
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace zipnn::tool
