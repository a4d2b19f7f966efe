#include "index/host_path.h"

#include <fcntl.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <climits>

namespace zipnn::index {

int DirFd(const HostPath& p) { return p.dir ? p.dir->get() : AT_FDCWD; }

HostPath ChildOf(std::shared_ptr<const UniqueFd> dir, const std::string& dir_label,
                 const std::string& name) {
  return HostPath{std::move(dir), name, dir_label + "/" + name};
}

HostPath Kept(const HostPath& p) {
  return p.label.size() < PATH_MAX ? HostPath{nullptr, p.label, p.label} : p;
}

std::shared_ptr<const UniqueFd> OpenDir(const HostPath& p, int flags) {
  // (A path given whole may pass through a symlink to a directory, as cp -a's DEST may.)
  const int nofollow = p.dir ? O_NOFOLLOW : 0;
  UniqueFd fd(::openat(DirFd(p), p.name.c_str(), flags | O_DIRECTORY | O_CLOEXEC | nofollow));
  if (!fd.valid()) return nullptr;
  return std::make_shared<const UniqueFd>(std::move(fd));
}

HostXattrs::HostXattrs(const HostPath& p)
    : fd_(::openat(DirFd(p), p.name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC)) {
  if (fd_.valid() && ::access("/proc/self/fd", X_OK) == 0) {
    path_ = "/proc/self/fd/" + std::to_string(fd_.get());
    follow_ = true;
  } else {
    path_ = p.dir ? p.label : p.name;
  }
}

ssize_t HostXattrs::List(char* names, size_t size) const {
  return follow_ ? ::listxattr(path_.c_str(), names, size)
                 : ::llistxattr(path_.c_str(), names, size);
}

ssize_t HostXattrs::Get(const char* name, void* value, size_t size) const {
  return follow_ ? ::getxattr(path_.c_str(), name, value, size)
                 : ::lgetxattr(path_.c_str(), name, value, size);
}

int HostXattrs::Set(const char* name, const void* value, size_t size) const {
  return follow_ ? ::setxattr(path_.c_str(), name, value, size, 0)
                 : ::lsetxattr(path_.c_str(), name, value, size, 0);
}

int HostXattrs::Remove(const char* name) const {
  return follow_ ? ::removexattr(path_.c_str(), name) : ::lremovexattr(path_.c_str(), name);
}

}  // namespace zipnn::index
