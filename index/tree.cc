#include "index/tree.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string_view>
#include <vector>

#include "codec/container.h"

namespace zipnn::index {

namespace {

int64_t ToNs(const timespec& t) { return int64_t{t.tv_sec} * 1000000000 + t.tv_nsec; }
timespec FromNs(int64_t ns) {
  timespec t;
  t.tv_sec = ns / 1000000000;
  t.tv_nsec = ns % 1000000000;
  if (t.tv_nsec < 0) t.tv_nsec += 1000000000, --t.tv_sec;
  return t;
}

NewAttr AttrOf(const struct stat& st) {
  NewAttr a;
  a.mode = st.st_mode & 07777;
  a.uid = st.st_uid;
  a.gid = st.st_gid;
  a.atime_ns = ToNs(st.st_atim);
  a.mtime_ns = ToNs(st.st_mtim);
  a.ctime_ns = ToNs(st.st_ctim);
  return a;
}

// The extended attributes of `path` (not following a symlink). Attributes the filesystem will not
// show us are simply not copied.
std::vector<std::pair<std::string, std::string>> ReadXattrs(const std::string& path) {
  std::vector<std::pair<std::string, std::string>> out;
  const ssize_t size = ::llistxattr(path.c_str(), nullptr, 0);
  if (size <= 0) return out;
  std::string names(static_cast<size_t>(size), '\0');
  const ssize_t n = ::llistxattr(path.c_str(), names.data(), names.size());
  if (n <= 0) return out;
  names.resize(static_cast<size_t>(n));
  for (size_t pos = 0; pos < names.size();) {
    const std::string name(names.c_str() + pos);
    pos += name.size() + 1;
    const ssize_t vsize = ::lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
    if (vsize < 0) continue;
    std::string value(static_cast<size_t>(vsize), '\0');
    const ssize_t got = ::lgetxattr(path.c_str(), name.c_str(), value.data(), value.size());
    if (got < 0) continue;
    value.resize(static_cast<size_t>(got));
    out.emplace_back(name, std::move(value));
  }
  return out;
}

// Restores the stored extended attributes of `ino` on `path`. Namespaces the destination does not
// support or lets us write (trusted.*, security.* as non-root) are skipped, like cp -a does.
Status WriteXattrs(Store& store, uint64_t ino, const std::string& path) {
  std::vector<std::string> names;
  ZIPNN_RETURN_IF_ERROR(store.ListXattr(ino, names));
  for (const std::string& name : names) {
    Result<std::string> value = store.GetXattr(ino, name);
    if (!value.ok()) return value.status();
    if (::lsetxattr(path.c_str(), name.c_str(), value->data(), value->size(), 0) != 0 &&
        errno != ENOTSUP && errno != EPERM) {
      return Status::FromErrno(errno, path + ": xattr " + name);
    }
  }
  return Status::Ok();
}

Status WithPath(const std::string& path, const Status& s) {
  return Status(s.code(), path + ": " + s.message());
}

Result<std::vector<std::string>> ListHostDir(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return Status::FromErrno(errno, path);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

Status ImportTree(Store& store, const std::string& src, uint64_t parent, const std::string& name,
                  const ImportOptions& opts, TreeSummary& summary) {
  struct stat st;
  if (::lstat(src.c_str(), &st) != 0) return Status::FromErrno(errno, src);
  NewAttr attr = AttrOf(st);
  attr.xattrs = ReadXattrs(src);
  if (S_ISREG(st.st_mode)) {
    UniqueFd fd(::open(src.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd.valid()) return Status::FromErrno(errno, src);
    const uint64_t before = summary.raw_bytes;
    AddProgressFn progress;
    if (opts.progress) {
      progress = [&](const AddProgress& p) {
        TreeSummary now = summary;
        now.raw_bytes = before + p.raw_done;
        now.new_frame_bytes += p.new_frame_bytes;
        opts.progress(src, now);
      };
    }
    Result<AddResult> r = store.AddFile(parent, name, fd.get(), attr, progress);
    if (!r.ok()) return WithPath(src, r.status());
    ++summary.files;
    summary.raw_bytes += r->attr.size;
    summary.frame_bytes += r->frame_bytes;
    summary.new_frame_bytes += r->new_frame_bytes;
    if (opts.progress) opts.progress(src, summary);
    return Status::Ok();
  }
  if (S_ISLNK(st.st_mode)) {
    std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
    const ssize_t n = ::readlink(src.c_str(), target.data(), target.size());
    if (n < 0) return Status::FromErrno(errno, src);
    target.resize(static_cast<size_t>(n));
    Result<InodeAttr> r = store.Symlink(parent, name, target, attr);
    if (!r.ok() && r.status().code() == StatusCode::kExists) {
      Result<InodeAttr> old = store.Lookup(parent, name);
      Result<std::string> old_target =
          old.ok() ? store.ReadLink(old->ino) : Result<std::string>(old.status());
      if (old_target.ok() && *old_target == target) return Status::Ok();
    }
    if (!r.ok()) return WithPath(src, r.status());
    ++summary.symlinks;
    return Status::Ok();
  }
  if (S_ISDIR(st.st_mode)) {
    Result<InodeAttr> dir = store.Mkdir(parent, name, attr);
    if (!dir.ok() && dir.status().code() == StatusCode::kExists) {
      dir = store.Lookup(parent, name);
      if (dir.ok() && dir->kind != InodeKind::kDirectory) {
        return Status::Exists(src + ": exists in the store and is not a directory");
      }
    }
    if (!dir.ok()) return WithPath(src, dir.status());
    ++summary.directories;
    Result<std::vector<std::string>> names = ListHostDir(src);
    if (!names.ok()) return names.status();
    for (const std::string& child : *names) {
      ZIPNN_RETURN_IF_ERROR(ImportTree(store, src + "/" + child, dir->ino, child, opts, summary));
    }
    // Last, as cp -a does: adding children would have changed a live directory's times.
    return store.SetTimes(dir->ino, attr.atime_ns, attr.mtime_ns);
  }
  ++summary.skipped;
  if (opts.skipped) opts.skipped(src, "special file (device, fifo or socket) skipped");
  return Status::Ok();
}

Status ExportTree(Store& store, uint64_t ino, const std::string& dest, TreeSummary& summary) {
  Result<InodeAttr> attr = store.GetAttr(ino);
  if (!attr.ok()) return attr.status();
  const bool root = ::geteuid() == 0;
  const timespec times[2] = {FromNs(attr->atime_ns), FromNs(attr->mtime_ns)};
  switch (attr->kind) {
    case InodeKind::kFile: {
      UniqueFd fd(::open(dest.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
      if (!fd.valid()) return Status::FromErrno(errno, dest);
      std::vector<uint8_t> buf(std::min<uint64_t>(attr->size, 16u << 20));
      for (uint64_t off = 0; off < attr->size;) {
        Result<size_t> n = store.Read(ino, off, buf);
        if (!n.ok()) return WithPath(dest, n.status());
        if (*n == 0) return Status::Corrupt(dest + ": file ends early in the store");
        ZIPNN_RETURN_IF_ERROR(WriteFull(fd.get(), {buf.data(), *n}));
        off += *n;
      }
      ZIPNN_RETURN_IF_ERROR(WriteXattrs(store, ino, dest));
      if (root && ::fchown(fd.get(), attr->uid, attr->gid) != 0) {
        return Status::FromErrno(errno, dest);
      }
      if (::fchmod(fd.get(), attr->mode & 07777) != 0 || ::futimens(fd.get(), times) != 0) {
        return Status::FromErrno(errno, dest);
      }
      ++summary.files;
      summary.raw_bytes += attr->size;
      return Status::Ok();
    }
    case InodeKind::kSymlink: {
      Result<std::string> target = store.ReadLink(ino);
      if (!target.ok()) return target.status();
      if (::symlink(target->c_str(), dest.c_str()) != 0) return Status::FromErrno(errno, dest);
      if (root && ::lchown(dest.c_str(), attr->uid, attr->gid) != 0) {
        return Status::FromErrno(errno, dest);
      }
      ZIPNN_RETURN_IF_ERROR(WriteXattrs(store, ino, dest));
      if (::utimensat(AT_FDCWD, dest.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) {
        return Status::FromErrno(errno, dest);
      }
      ++summary.symlinks;
      return Status::Ok();
    }
    case InodeKind::kDirectory: {
      if (::mkdir(dest.c_str(), 0700) != 0) return Status::FromErrno(errno, dest);
      std::vector<DirEntry> entries;
      std::string after;
      do {
        ZIPNN_RETURN_IF_ERROR(store.ReadDir(ino, after, 1024, entries));
        for (const DirEntry& e : entries) {
          ZIPNN_RETURN_IF_ERROR(ExportTree(store, e.ino, dest + "/" + e.name, summary));
        }
        if (!entries.empty()) after = entries.back().name;
      } while (!entries.empty());
      if (root && ::lchown(dest.c_str(), attr->uid, attr->gid) != 0) {
        return Status::FromErrno(errno, dest);
      }
      ZIPNN_RETURN_IF_ERROR(WriteXattrs(store, ino, dest));
      if (::chmod(dest.c_str(), attr->mode & 07777) != 0 ||
          ::utimensat(AT_FDCWD, dest.c_str(), times, 0) != 0) {
        return Status::FromErrno(errno, dest);
      }
      ++summary.directories;
      return Status::Ok();
    }
  }
  return Status::Corrupt("inode " + std::to_string(ino) + ": unknown kind");
}

}  // namespace zipnn::index
