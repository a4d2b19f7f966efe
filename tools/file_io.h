// File helpers for the zipnn tool: whole reads and writes, input files, atomic output files.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "codec/container.h"
#include "codec/status.h"

namespace zipnn::tool {

// `s` with "path: " in front of its message (the tool's error messages name the file).
Status WithPath(const std::string& path, const Status& s);

struct InputFile {
  UniqueFd fd;
  uint64_t size = 0;
  mode_t mode = 0;
};
// Opens a regular file for reading; errors name `path`.
Result<InputFile> OpenInput(const std::string& path);

bool PathExists(const std::string& path);

// A new file written under a temporary name (path.tmp.XXXXXX, same directory) and renamed to
// its real name by Commit, after an fsync: a crash or error never leaves a partial file under the
// real name. The temporary file is removed if the object dies uncommitted, and on SIGINT, SIGTERM
// or SIGHUP.
class AtomicOutputFile {
 public:
  // Fails with kExists if `path` exists and !overwrite. `mode` is applied (minus the umask).
  static Result<AtomicOutputFile> Create(const std::string& path, bool overwrite, mode_t mode);

  AtomicOutputFile(AtomicOutputFile&& o) noexcept;
  AtomicOutputFile& operator=(AtomicOutputFile&&) = delete;
  AtomicOutputFile(const AtomicOutputFile&) = delete;
  ~AtomicOutputFile();

  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }
  // Tells that `bytes` more were written: every few MB they are synced in the background, so the
  // fsync of Commit has little left (a flush costs time in proportion to what it flushes). Any
  // thread.
  void Wrote(uint64_t bytes);
  // fsync, rename over the real name (refusing to replace it unless overwrite), fsync directory.
  Status Commit();

 private:
  AtomicOutputFile(UniqueFd fd, std::string path, std::string temp_path, bool overwrite);
  void Discard();

  UniqueFd fd_;
  std::unique_ptr<BackgroundSyncer> syncer_;  // null: syncs only in Commit
  std::string path_;
  std::string temp_path_;  // empty once committed or discarded
  bool overwrite_ = false;
};

// Writes buffers at their offsets in one file for many workers. Workers that write one file
// directly contend for its inode lock and spin; here the worker that finds a write under way
// queues its buffer and goes back to work, and the writing worker writes what was queued too.
// A worker waits (asleep) only when `max_queued` buffers are pending.
class OffsetWriter {
 public:
  OffsetWriter(int fd, size_t max_queued) : fd_(fd), max_queued_(max_queued) {}

  // Writes `buf` at `offset`, now or after the write under way; leaves a buffer to reuse (of
  // unspecified contents) in `buf`. Returns the first write error so far. Every buffer is written
  // once all Write calls have returned, unless a write fails: then nothing more is written, even
  // buffers whose Write returned OK, and the caller that met the failure reports it (the file is
  // to be discarded).
  Status Write(uint64_t offset, std::vector<uint8_t>& buf);

 private:
  const int fd_;
  const size_t max_queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<uint64_t, std::vector<uint8_t>>> queue_;
  std::vector<std::vector<uint8_t>> spare_;
  bool writing_ = false;
  Status error_;
};

}  // namespace zipnn::tool
