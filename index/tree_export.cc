// Export: copying a store's tree out to the host filesystem, like cp -a (import is in tree.cc).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "codec/container.h"
#include "index/host_path.h"
#include "index/tree.h"

namespace zipnn::index {

Status ForEachDirEntry(Store& store, uint64_t dir,
                       const std::function<Status(const DirEntry&)>& fn) {
  std::vector<DirEntry> page;
  std::string after;
  do {
    ZIPNN_RETURN_IF_ERROR(store.ReadDir(dir, after, 1024, page));
    for (const DirEntry& e : page) ZIPNN_RETURN_IF_ERROR(fn(e));
    if (!page.empty()) after = page.back().name;
  } while (!page.empty());
  return Status::Ok();
}

namespace {

timespec FromNs(int64_t ns) {
  timespec t;
  t.tv_sec = ns / 1000000000;
  t.tv_nsec = ns % 1000000000;
  if (t.tv_nsec < 0) t.tv_nsec += 1000000000, --t.tv_sec;
  return t;
}

// Writes `buf` at the current offset of `fd`, which is `offset`; with `sparse`, the all-zero 4 KiB
// blocks of the file (in `fd`, new and empty) are skipped, leaving holes (cp -a keeps a 10 GiB
// sparse file sparse; writing its zeros would fill the disk). The caller sets the file's size at
// the end, since a trailing hole has none.
Status WritePiece(int fd, uint64_t offset, std::span<const uint8_t> buf, bool sparse) {
  if (!sparse) return WriteFull(fd, buf);
  if (AllZero(buf)) return Status::Ok();  // (the common case of a hole: no block loop)
  constexpr uint64_t kBlock = 4096;
  size_t data_from = 0;  // start of the run of data blocks not yet written
  for (size_t at = 0; at < buf.size();) {
    const size_t end =
        std::min<size_t>(buf.size(), at + kBlock - static_cast<size_t>((offset + at) % kBlock));
    if (AllZero(buf.subspan(at, end - at))) {
      if (data_from < at) {
        ZIPNN_RETURN_IF_ERROR(
            PwriteFull(fd, offset + data_from, buf.subspan(data_from, at - data_from)));
      }
      data_from = end;
    }
    at = end;
  }
  if (data_from < buf.size()) {
    ZIPNN_RETURN_IF_ERROR(PwriteFull(fd, offset + data_from, buf.subspan(data_from)));
  }
  return Status::Ok();
}

// `sparse`: `fd` is a new, empty regular file that all-zero blocks may leave as holes (written
// with pwrite at the range's offsets; else written in order at fd's offset, a pipe say).
Status WriteRange(Store& store, ThreadPool& pool, uint64_t ino, uint64_t begin, uint64_t end,
                  int fd, const std::string& label, bool sparse = false) {
  // Pieces of about 1 MiB (a buffer's first use costs page faults; 4 MiB saved nothing), cut at
  // chunk ends so that no chunk is decoded twice: decoded on all cores, written in order as they
  // come.
  constexpr uint64_t kPiece = 1u << 20;
  std::vector<uint64_t> from{begin};
  for (uint64_t off = begin; off < end; from.push_back(off)) {
    Result<std::vector<ChunkLocation>> chunks = store.ChunksInRange(ino, off, kPiece);
    if (!chunks.ok()) return WithPath(label, chunks.status());
    const uint64_t chunk_end =
        chunks->empty() ? off : chunks->back().file_offset + chunks->back().raw_size;
    if (chunk_end <= off) return Status::Corrupt(label + ": file ends early in the store");
    off = std::min(chunk_end, end);
  }
  return WithPath(label, pool.RunOrdered(
                             from.size() - 1, 2 * size_t{pool.size()} + 2,
                             [&](size_t i, unsigned, std::vector<uint8_t>& buf) -> Status {
                               const size_t size = from[i + 1] - from[i];
                               // Room to spare: a buffer that grows is new memory (page faults)
                               // again.
                               if (buf.capacity() < size) buf.reserve(size + size / 4);
                               buf.resize(size);
                               Result<size_t> got = store.Read(ino, from[i], buf);
                               if (!got.ok()) return got.status();
                               if (*got != buf.size())
                                 return Status::Corrupt("file ends early in the store");
                               return Status::Ok();
                             },
                             [&](size_t i, std::span<const uint8_t> buf) {
                               return WritePiece(fd, from[i], buf, sparse);
                             }));
}

struct ExportContext {
  ExportContext(Store& s, ThreadPool& p, const ExportOptions& o, TreeSummary& sum)
      : store(s), pool(p), opts(o), summary(sum) {}
  Store& store;
  ThreadPool& pool;
  const ExportOptions& opts;
  TreeSummary& summary;
  // The directories exported so far. A directory met twice (a cycle or a hard link, which only a
  // damaged index has) is an error, not an endless descent.
  std::unordered_set<uint64_t> dirs;
  // Files of several names (hard links) exported so far: their other names become links.
  // (Kept: by path where that is usable.)
  std::unordered_map<uint64_t, HostPath> linked;
  uint64_t temps = 0;  // temporary names tried so far
  bool root = ::geteuid() == 0;
  // Whether a file made unnamed (O_TMPFILE) can be named when complete: through /proc, else by
  // its descriptor, which before Linux 6.10 only root may do.
  bool unnamed_files = root || ::access("/proc/self/fd", X_OK) == 0;
};

// A failure of one entry: with opts.failed, told and passed over, unless the disk is full (then
// every entry after it would fail too).
Status EntryDone(ExportContext& ctx, const Status& s) {
  if (s.ok() || !ctx.opts.failed || s.code() == StatusCode::kNoSpace) return s;
  ++ctx.summary.failed;
  ctx.opts.failed(s);
  return Status::Ok();
}

// What is at `p` now: 0 for nothing, else its st_mode's type bits.
Result<mode_t> KindAt(const HostPath& p) {
  struct stat st;
  if (::fstatat(DirFd(p), p.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    return st.st_mode & S_IFMT;
  }
  if (errno == ENOENT) return mode_t{0};
  return Status::FromErrno(errno, p.label);
}

// A file or symlink is not put where a directory is (cp -a refuses too).
Status CheckNotDirectory(const HostPath& dest) {
  Result<mode_t> kind = KindAt(dest);
  if (!kind.ok()) return kind.status();
  if (*kind == S_IFDIR) return Status::Exists(dest.label + ": cannot overwrite a directory");
  return Status::Ok();
}

// A new file, symlink or hard link made beside `dest`, then renamed over it: an existing file or
// symlink there is replaced whole, never written through and never left half written, as cp -a
// replaces it. A file is made unnamed (O_TMPFILE) where the file system can, so that an export
// killed part way leaves nothing behind; else, and for links, under a temporary name no other
// entry has (made exclusively, retried while taken), removed again unless committed.
class NewEntry {
 public:
  NewEntry(ExportContext& ctx, const HostPath& dest) : ctx_(ctx), dest_(dest) {
    // (A path given whole: its temporary is beside it, so in its directory.)
    const size_t slash = dest.dir ? std::string::npos : dest.name.rfind('/');
    prefix_ = slash == std::string::npos ? std::string() : dest.name.substr(0, slash + 1);
  }
  ~NewEntry() {
    if (named_ && !done_) ::unlinkat(DirFd(dest_), temp_.c_str(), 0);
  }
  NewEntry(const NewEntry&) = delete;
  NewEntry& operator=(const NewEntry&) = delete;

  // The new file's descriptor (this object's).
  Result<int> CreateFile() {
    if (ctx_.unnamed_files) {
      fd_.Reset(::openat(DirFd(dest_), prefix_.empty() ? "." : prefix_.c_str(),
                         O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600));
      if (fd_.valid()) return fd_.get();
    }
    ZIPNN_RETURN_IF_ERROR(Named([&](const std::string& p) {
      fd_.Reset(::openat(DirFd(dest_), p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
      return fd_.valid() ? 0 : -1;
    }));
    return fd_.get();
  }
  Status CreateSymlink(const std::string& target) {
    return Named(
        [&](const std::string& p) { return ::symlinkat(target.c_str(), DirFd(dest_), p.c_str()); });
  }
  Status CreateLink(const HostPath& existing) {
    return Named([&](const std::string& p) {
      return ::linkat(DirFd(existing), existing.name.c_str(), DirFd(dest_), p.c_str(), 0);
    });
  }
  // The entry until committed (named entries only).
  HostPath temp() const { return HostPath{dest_.dir, temp_, dest_.label}; }

  Status Commit() {
    if (!named_) {  // an unnamed file gets its temporary name now
      const std::string self = "/proc/self/fd/" + std::to_string(fd_.get());
      ZIPNN_RETURN_IF_ERROR(Named([&](const std::string& p) {
        const int dir = DirFd(dest_);
        if (::linkat(AT_FDCWD, self.c_str(), dir, p.c_str(), AT_SYMLINK_FOLLOW) == 0) return 0;
        if (errno == EEXIST) return -1;  // (no /proc: root may name the descriptor itself)
        return ::linkat(fd_.get(), "", dir, p.c_str(), AT_EMPTY_PATH);
      }));
    }
    ZIPNN_RETURN_IF_ERROR(CheckNotDirectory(dest_));
    const int dir = DirFd(dest_);
    if (::renameat(dir, temp_.c_str(), dir, dest_.name.c_str()) != 0) {
      return Status::FromErrno(errno, dest_.label);
    }
    done_ = true;
    // Where both names were links to one file (another export into the same place made it),
    // rename does nothing: the temporary name, ours, goes.
    struct stat st;
    if (::fstatat(dir, temp_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      ::unlinkat(dir, temp_.c_str(), 0);
    }
    return Status::Ok();
  }

 private:
  // Runs make(name) on fresh temporary names until one is not taken; make returns 0, or -1 with
  // errno set (EEXIST: the name is taken).
  Status Named(const std::function<int(const std::string&)>& make) {
    for (int attempt = 0; attempt < 1000; ++attempt) {
      std::string name = prefix_ + ".zipnnfs-export." + std::to_string(::getpid()) + "." +
                         std::to_string(ctx_.temps++);
      if (make(name) == 0) {
        temp_ = std::move(name);
        named_ = true;
        return Status::Ok();
      }
      if (errno != EEXIST) return Status::FromErrno(errno, dest_.label);
    }
    return Status::Exists(dest_.label + ": no free temporary name beside it");
  }

  ExportContext& ctx_;
  const HostPath dest_;        // (holds its directory open)
  std::string prefix_, temp_;  // temp_: relative to dest_'s directory
  UniqueFd fd_;
  bool named_ = false, done_ = false;
};

// Sets the stored owner, extended attributes, mode and times of what `fd` is (else `path`, not
// followed; messages name it `path.label`), as cp -a does: each that fails is reported (the first
// failure is returned) and the rest still set. Root sets the owner; another user can only keep the
// group, where they belong to it. Where the owner cannot be kept, the set-id and sticky bits are
// dropped (a set-uid file must not run as whoever exported it).
Status SetAttributes(ExportContext& ctx, uint64_t ino, const InodeAttr& a, int fd,
                     const HostPath& path) {
  const std::string& label = path.label;
  const int dir = DirFd(path);
  const char* name = path.name.c_str();
  Status first;
  auto fail = [&](const std::string& what) {
    if (first.ok()) first = Status::FromErrno(errno, label + ": " + what);
  };
  const bool link = a.kind == InodeKind::kSymlink;
  auto chown = [&](uid_t uid, gid_t gid) {
    return fd >= 0 ? ::fchown(fd, uid, gid) : ::fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW);
  };
  // Owner first, then attributes: chown drops security.capability (and set-id bits, which the
  // chmod after it puts back), as cp -a's order avoids.
  mode_t mode = a.mode & 07777;
  bool owner_kept = true;
  if (ctx.root) {
    if (chown(a.uid, a.gid) != 0) fail("setting the owner"), owner_kept = false;
  } else {
    owner_kept = chown(static_cast<uid_t>(-1), a.gid) == 0 && a.uid == ::geteuid();
  }
  // (A directory keeps its sticky bit, as cp -a keeps it: it only protects its entries.)
  if (!owner_kept) mode &= a.kind == InodeKind::kDirectory ? ~mode_t{06000} : ~mode_t{07000};

  std::vector<std::string> names;
  if (Status st = ctx.store.ListXattr(ino, names); !st.ok()) return first.ok() ? st : first;
  std::optional<HostXattrs> host;  // (for an entry without `fd`)
  if (fd < 0) host.emplace(path);
  for (const std::string& x : names) {
    Result<std::string> value = ctx.store.GetXattr(ino, x);
    if (!value.ok()) return first.ok() ? value.status() : first;
    const int r = fd >= 0 ? ::fsetxattr(fd, x.c_str(), value->data(), value->size(), 0)
                          : host->Set(x.c_str(), value->data(), value->size());
    // Namespaces the destination does not support or lets us write (trusted.*, security.* as
    // non-root) are skipped, as cp -a skips them.
    if (r != 0 && errno != ENOTSUP && errno != EPERM) fail("xattr " + x);
  }
  // ACLs the destination's default ACL gave a new entry, where the source had none, go: as cp -a
  // makes them, the entry's permissions are its mode's alone.
  for (const char* acl : {"system.posix_acl_access", "system.posix_acl_default"}) {
    if (link || std::find(names.begin(), names.end(), acl) != names.end()) continue;
    const int r = fd >= 0 ? ::fremovexattr(fd, acl) : host->Remove(acl);
    if (r != 0 && errno != ENODATA && errno != ENOTSUP && errno != EPERM) fail("removing an ACL");
  }
  if (!link && (fd >= 0 ? ::fchmod(fd, mode) : ::fchmodat(dir, name, mode, 0)) != 0) fail("chmod");
  const timespec times[2] = {FromNs(a.atime_ns), FromNs(a.mtime_ns)};
  if ((fd >= 0 ? ::futimens(fd, times) : ::utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW)) != 0) {
    fail("setting times");
  }
  return first;
}

Status ExportNode(ExportContext& ctx, uint64_t ino, const HostPath& dest);

// Exports the entries of directory `ino` into directory `dest`.
Status ExportEntries(ExportContext& ctx, uint64_t ino, const HostPath& dest) {
  const std::shared_ptr<const UniqueFd> dir = OpenDir(dest, O_PATH);
  if (!dir) return Status::FromErrno(errno, dest.label);
  return ForEachDirEntry(ctx.store, ino, [&](const DirEntry& e) {
    return EntryDone(ctx, ExportNode(ctx, e.ino, ChildOf(dir, dest.label, e.name)));
  });
}

Status ExportFile(ExportContext& ctx, uint64_t ino, const InodeAttr& attr, const HostPath& dest) {
  ZIPNN_RETURN_IF_ERROR(CheckNotDirectory(dest));  // before the work, not after
  auto it = attr.nlink > 1 ? ctx.linked.find(ino) : ctx.linked.end();
  if (it != ctx.linked.end()) {  // another name of a file exported already: a link, as cp -a
    NewEntry link(ctx, dest);
    if (link.CreateLink(it->second).ok()) {
      ZIPNN_RETURN_IF_ERROR(link.Commit());
      ++ctx.summary.files;
      return Status::Ok();
    }  // (else, a file system without links say, a copy)
  }
  NewEntry file(ctx, dest);
  Result<int> fd = file.CreateFile();
  if (!fd.ok()) return fd.status();
  ZIPNN_RETURN_IF_ERROR(WriteRange(ctx.store, ctx.pool, ino, 0, attr.size, *fd, dest.label, true));
  if (::ftruncate(*fd, static_cast<off_t>(attr.size)) != 0) {
    return Status::FromErrno(errno, dest.label);
  }
  // The data is whole: it takes its place even where attributes cannot all be set (reported).
  const Status attributes = SetAttributes(ctx, ino, attr, *fd, dest);
  ZIPNN_RETURN_IF_ERROR(file.Commit());
  if (attr.nlink > 1) ctx.linked.emplace(ino, Kept(dest));
  ++ctx.summary.files;
  ctx.summary.raw_bytes += attr.size;
  return attributes;
}

Status ExportNode(ExportContext& ctx, uint64_t ino, const HostPath& dest) {
  Result<InodeAttr> attr = ctx.store.GetAttr(ino);
  if (!attr.ok()) return attr.status();
  switch (attr->kind) {
    case InodeKind::kFile:
      return ExportFile(ctx, ino, *attr, dest);
    case InodeKind::kSymlink: {
      Result<std::string> target = ctx.store.ReadLink(ino);
      if (!target.ok()) return target.status();
      ZIPNN_RETURN_IF_ERROR(CheckNotDirectory(dest));
      NewEntry link(ctx, dest);
      ZIPNN_RETURN_IF_ERROR(link.CreateSymlink(*target));
      const Status attributes = SetAttributes(ctx, ino, *attr, -1, link.temp());
      ZIPNN_RETURN_IF_ERROR(link.Commit());
      ++ctx.summary.symlinks;
      return attributes;
    }
    case InodeKind::kDirectory: {
      if (!ctx.dirs.insert(ino).second) {
        return Status::Corrupt(dest.label + ": directory inode " + std::to_string(ino) +
                               " is in the tree twice (damaged index: see zipnnfs fsck)");
      }
      // An existing directory is merged into, as cp -a does (and gets the stored attributes).
      Result<mode_t> kind = KindAt(dest);
      if (!kind.ok()) return kind.status();
      if (*kind != 0 && *kind != S_IFDIR) {
        return Status::Exists(dest.label + ": cannot overwrite a non-directory with a directory");
      }
      if (*kind == 0 && ::mkdirat(DirFd(dest), dest.name.c_str(), 0700) != 0) {
        return Status::FromErrno(errno, dest.label);
      }
      const Status listed = ExportEntries(ctx, ino, dest);
      // Attributes last (its entries changed its times), even after a failure of the listing.
      const Status attributes = SetAttributes(ctx, ino, *attr, -1, dest);
      ZIPNN_RETURN_IF_ERROR(listed);
      ++ctx.summary.directories;
      return attributes;
    }
  }
  return Status::Corrupt("inode " + std::to_string(ino) + ": unknown kind");
}

}  // namespace

Status ExportTree(Store& store, uint64_t ino, const std::string& dest, TreeSummary& summary,
                  const ExportOptions& opts) {
  ThreadPool pool(0);
  ExportContext ctx(store, pool, opts, summary);
  return EntryDone(ctx, ExportNode(ctx, ino, HostPath{nullptr, dest, dest}));
}

Status ExportTreeEntries(Store& store, uint64_t ino, const std::string& dest, TreeSummary& summary,
                         const ExportOptions& opts) {
  ThreadPool pool(0);
  ExportContext ctx(store, pool, opts, summary);
  return EntryDone(ctx, ExportEntries(ctx, ino, HostPath{nullptr, dest, dest}));
}

Status WriteFileRange(Store& store, uint64_t ino, uint64_t begin, uint64_t end, int fd,
                      const std::string& label) {
  ThreadPool pool(0);
  return WriteRange(store, pool, ino, begin, end, fd, label);
}

}  // namespace zipnn::index
