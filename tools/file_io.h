// File helpers for the zipnn tool: whole reads and writes, input files, atomic output files.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>

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
  // fsync, rename over the real name (refusing to replace it unless overwrite), fsync directory.
  Status Commit();

 private:
  AtomicOutputFile(UniqueFd fd, std::string path, std::string temp_path, bool overwrite);
  void Discard();

  UniqueFd fd_;
  std::string path_;
  std::string temp_path_;  // empty once committed or discarded
  bool overwrite_ = false;
};

}  // namespace zipnn::tool
