// Host file system entries named below open directories (HostPath, index.h), for the tree walks of
// import and export. Internal to index/.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "codec/container.h"
#include "index/index.h"

namespace zipnn::index {

// The descriptor `p.name` is relative to (AT_FDCWD when `p.dir` is null).
int DirFd(const HostPath& p);
// `name` inside directory `dir` (whose label is `dir_label`).
HostPath ChildOf(std::shared_ptr<const UniqueFd> dir, const std::string& dir_label,
                 const std::string& name);
// `p` to keep for later: by its whole path where that is usable, holding no descriptor (a wide
// tree has more directories than a process may hold open), else as it is (past PATH_MAX).
HostPath Kept(const HostPath& p);
// Opens directory `p` (not following a symlink there, unless `p` is a path given whole) as a base
// for the entries below it; `flags` adds O_PATH or O_RDONLY. Null, with errno set, on failure.
std::shared_ptr<const UniqueFd> OpenDir(const HostPath& p, int flags);

// The extended attributes of host entry `p` itself, a symlink not followed, as llistxattr and
// friends give them for a path. Linux before 6.13 has no *xattrat calls: they go through
// /proc/self/fd/N of a descriptor of the entry (those calls follow that link to the entry
// itself), or where /proc is missing, through its path.
class HostXattrs {
 public:
  explicit HostXattrs(const HostPath& p);
  ssize_t List(char* names, size_t size) const;
  ssize_t Get(const char* name, void* value, size_t size) const;
  int Set(const char* name, const void* value, size_t size) const;
  int Remove(const char* name) const;

 private:
  UniqueFd fd_;
  std::string path_;
  bool follow_ = false;  // path_ is the /proc link (else the entry's own path)
};

}  // namespace zipnn::index
