#include "index/tree.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <map>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "codec/container.h"

namespace zipnn::index {

namespace {

// The store keeps times as int64 nanoseconds (years 1677 to 2262): a time outside that range is
// clamped to its end, not wrapped around to the other end (ext4 allows 1901 to 2446).
int64_t ToNs(const timespec& t) {
  constexpr int64_t kMaxSec = INT64_MAX / 1000000000 - 1;
  if (t.tv_sec > kMaxSec) return INT64_MAX;
  if (t.tv_sec < -kMaxSec) return INT64_MIN;
  return int64_t{t.tv_sec} * 1000000000 + t.tv_nsec;
}
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
  // ACLs the destination's default ACL gave a new entry, where the source had none, go: as cp -a
  // makes them, the entry's permissions are its mode's alone.
  for (const char* acl : {"system.posix_acl_access", "system.posix_acl_default"}) {
    if (std::find(names.begin(), names.end(), acl) == names.end() &&
        ::lremovexattr(path.c_str(), acl) != 0 && errno != ENODATA && errno != ENOTSUP &&
        errno != EPERM) {
      return Status::FromErrno(errno, path + ": removing " + acl);
    }
  }
  return Status::Ok();
}

Status WithPath(const std::string& path, const Status& s) {
  return Status(s.code(), path + ": " + s.message());
}

Result<std::vector<std::string>> ListHostDir(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return Status::FromErrno(errno, "opendir");
  std::vector<std::string> names;
  for (;;) {
    errno = 0;  // (the end of the listing and a failure both return null)
    const dirent* e = ::readdir(d);
    if (e == nullptr) break;
    std::string_view n = e->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
  }
  const int err = errno;
  ::closedir(d);
  if (err != 0) return Status::FromErrno(err, "readdir");
  std::sort(names.begin(), names.end());
  return names;
}

// What a walk needs besides the entry: the options and the identity of the store's directory.
struct WalkContext {
  const ImportOptions& opts;
  dev_t store_dev = 0;
  ino_t store_ino = 0;  // 0: no store directory to skip
  // Files of several names (hard links) met so far: their later names become links to them.
  std::map<std::pair<dev_t, ino_t>, BulkFile> linked;
};

void Skip(const WalkContext& ctx, const std::string& src, const std::string& why,
          TreeSummary& summary) {
  ++summary.skipped;
  if (ctx.opts.skipped) ctx.opts.skipped(src, why);
}

// An entry of the source that cannot be read: left out and told, or (without opts.failed) the
// error that stops the import.
Status Failed(const WalkContext& ctx, const std::string& src, const Status& why,
              TreeSummary& summary) {
  if (!ctx.opts.failed) return WithPath(src, why);
  ++summary.failed;
  ctx.opts.failed(src, why);
  return Status::Ok();
}

Status Walk(BulkAdd& bulk, const std::string& src, BulkDir parent, const std::string& name,
            WalkContext& ctx, TreeSummary& summary);

// Queues the entries of host directory `src` in `dir`.
Status WalkChildren(BulkAdd& bulk, const std::string& src, BulkDir dir, WalkContext& ctx,
                    TreeSummary& summary) {
  Result<std::vector<std::string>> names = ListHostDir(src);
  if (!names.ok()) {  // (as cp -a does, the directory itself is kept)
    ZIPNN_RETURN_IF_ERROR(Failed(ctx, src, names.status(), summary));
    names = std::vector<std::string>{};
  }
  for (const std::string& child : *names) {
    ZIPNN_RETURN_IF_ERROR(Walk(bulk, src + "/" + child, dir, child, ctx, summary));
  }
  return Status::Ok();
}

// Queues host path `src` as `name` in `parent`; directories recursively, their times last (as
// cp -a does: adding children would have changed a live directory's times).
Status Walk(BulkAdd& bulk, const std::string& src, BulkDir parent, const std::string& name,
            WalkContext& ctx, TreeSummary& summary) {
  struct stat st;
  if (::lstat(src.c_str(), &st) != 0) {
    // Listed by its directory a moment ago: it went away while the import ran.
    if (errno == ENOENT) {
      return Failed(ctx, src, Status::NotFound("vanished before it could be imported"), summary);
    }
    return Failed(ctx, src, Status::FromErrno(errno, "lstat"), summary);
  }
  if (ctx.store_ino != 0 && st.st_dev == ctx.store_dev && st.st_ino == ctx.store_ino) {
    Skip(ctx, src, "the store itself, skipped", summary);
    return Status::Ok();
  }
  NewAttr attr = AttrOf(st);
  attr.xattrs = ReadXattrs(src);
  if (S_ISREG(st.st_mode)) {
    if (st.st_nlink > 1) {  // as cp -a keeps hard links
      auto it = ctx.linked.find({st.st_dev, st.st_ino});
      if (it != ctx.linked.end()) return bulk.Link(parent, name, it->second);
    }
    Result<BulkFile> file = bulk.AddFile(parent, name, src, attr);
    if (!file.ok()) return file.status();
    if (st.st_nlink > 1) ctx.linked.emplace(std::pair{st.st_dev, st.st_ino}, std::move(*file));
    return Status::Ok();
  }
  if (S_ISLNK(st.st_mode)) {
    std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
    const ssize_t n = ::readlink(src.c_str(), target.data(), target.size());
    if (n < 0) return Failed(ctx, src, Status::FromErrno(errno, "readlink"), summary);
    target.resize(static_cast<size_t>(n));
    ZIPNN_RETURN_IF_ERROR(bulk.Symlink(parent, name, target, attr));
    ++summary.symlinks;
    return Status::Ok();
  }
  if (S_ISDIR(st.st_mode)) {
    Result<BulkDir> dir = bulk.Mkdir(parent, name, attr);
    if (!dir.ok()) return dir.status();
    ++summary.directories;
    ZIPNN_RETURN_IF_ERROR(WalkChildren(bulk, src, *dir, ctx, summary));
    return bulk.SetTimes(*dir, attr.atime_ns, attr.mtime_ns);
  }
  Skip(ctx, src, "special file (device, fifo or socket) skipped", summary);
  return Status::Ok();
}

}  // namespace

Status ImportTree(Store& store, const std::string& src, uint64_t parent, const std::string& name,
                  const ImportOptions& opts, TreeSummary& summary) {
  WalkContext ctx{opts, 0, 0, {}};
  struct stat st;  // a missing source is the caller's mistake, not a file that vanished
  if (::lstat(src.c_str(), &st) != 0)
    return Failed(ctx, src, Status::FromErrno(errno, "lstat"), summary);
  if (name.empty() && !S_ISDIR(st.st_mode)) {
    return Failed(ctx, src, Status::InvalidArgument("not a directory"), summary);
  }
  BulkAddOptions bulk_opts;
  bulk_opts.commit_interval_ms = opts.commit_interval_ms;
  const TreeSummary base = summary;  // the writer thread reports on top of this
  if (opts.progress) {
    bulk_opts.progress = [&opts, base](const BulkProgress& p) {
      TreeSummary now = base;
      now.files += p.files;
      now.raw_bytes += p.raw_bytes;
      now.new_frame_bytes += p.new_frame_bytes;
      opts.progress(std::string(p.label), now);
    };
  }
  // Counted as each commit makes files durable, so that a failed import still tells what it
  // kept (Finish gives figures only on success). The writer thread writes only these fields.
  std::atomic<uint64_t> files_failed = 0;  // (the walk's thread writes summary.failed)
  if (opts.failed) {
    bulk_opts.file_failed = [&opts, &files_failed](std::string_view label, const Status& why) {
      ++files_failed;
      opts.failed(std::string(label), why);
    };
  }
  bulk_opts.file_added = [&summary](std::string_view, const AddResult& r) {
    ++summary.files;
    summary.raw_bytes += r.attr.size;
    summary.frame_bytes += r.frame_bytes;
    summary.new_frame_bytes += r.new_frame_bytes;
  };
  struct stat store_st;
  if (!opts.store_dir.empty() && ::stat(opts.store_dir.c_str(), &store_st) == 0) {
    ctx.store_dev = store_st.st_dev;
    ctx.store_ino = store_st.st_ino;
    // A source inside the store (its packs, say) is read while the import writes it.
    char real_src[PATH_MAX], real_store[PATH_MAX];
    if (::realpath(src.c_str(), real_src) != nullptr &&
        ::realpath(opts.store_dir.c_str(), real_store) != nullptr &&
        std::string_view(real_src).starts_with(std::string(real_store) + "/")) {
      return Failed(ctx, src, Status::InvalidArgument("is inside the store"), summary);
    }
  }
  Result<std::unique_ptr<BulkAdd>> bulk = store.BeginBulkAdd(bulk_opts);
  if (!bulk.ok()) return bulk.status();
  // Whatever was queued before a failure of the walk is still committed.
  const BulkDir top{parent, false};
  const Status walked = name.empty() ? WalkChildren(**bulk, src, top, ctx, summary)
                                     : Walk(**bulk, src, top, name, ctx, summary);
  Result<BulkSummary> done = (*bulk)->Finish();
  summary.failed += files_failed;
  if (!done.ok()) return done.status();
  return walked;
}

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
  uint64_t temps = 0;  // temporary names made so far
  // Files of several names (hard links) exported so far: their other names become links.
  std::unordered_map<uint64_t, std::string> linked;
  bool root = ::geteuid() == 0;
};

// A failure of one entry: with opts.failed, told and passed over, unless the disk is full (then
// every entry after it would fail too).
Status EntryDone(ExportContext& ctx, const Status& s) {
  if (s.ok() || !ctx.opts.failed || s.code() == StatusCode::kNoSpace) return s;
  ++ctx.summary.failed;
  ctx.opts.failed(s);
  return Status::Ok();
}

// What is at `path` now: 0 for nothing, else its st_mode's type bits.
Result<mode_t> KindAt(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) return st.st_mode & S_IFMT;
  if (errno == ENOENT) return mode_t{0};
  return Status::FromErrno(errno, path);
}

// A file or symlink is made under a temporary name beside `dest`, then renamed over it: an
// existing file or symlink is replaced whole (never written through, never left half written), as
// cp -a replaces it. A directory in the way is not replaced (cp -a refuses too).
class ReplacingName {
 public:
  ReplacingName(ExportContext& ctx, const std::string& dest) : dest_(dest) {
    const size_t slash = dest.rfind('/');
    temp_ = (slash == std::string::npos ? std::string() : dest.substr(0, slash + 1)) +
            ".zipnnfs-export." + std::to_string(::getpid()) + "." + std::to_string(ctx.temps++);
  }
  ~ReplacingName() {
    if (!done_) ::unlink(temp_.c_str());
  }
  ReplacingName(const ReplacingName&) = delete;
  ReplacingName& operator=(const ReplacingName&) = delete;

  const std::string& temp() const { return temp_; }
  static Status CheckDest(const std::string& dest) {
    Result<mode_t> kind = KindAt(dest);
    if (!kind.ok()) return kind.status();
    if (*kind == S_IFDIR) return Status::Exists(dest + ": cannot overwrite a directory");
    return Status::Ok();
  }
  Status Commit() {
    ZIPNN_RETURN_IF_ERROR(CheckDest(dest_));
    if (::rename(temp_.c_str(), dest_.c_str()) != 0) return Status::FromErrno(errno, dest_);
    done_ = true;
    return Status::Ok();
  }

 private:
  std::string dest_, temp_;
  bool done_ = false;
};

// Sets the stored owner of what `fd` (else `path`, not followed) is, as cp -a does: root sets
// it; another user can only keep the group, where they belong to it. Returns the mode to set:
// the stored one, less the set-id and sticky bits where the owner could not be kept (a set-uid
// file must not run as whoever exported it).
Result<mode_t> SetOwner(const ExportContext& ctx, int fd, const std::string& path,
                        const InodeAttr& a) {
  auto chown = [&](uid_t uid, gid_t gid) {
    return fd >= 0 ? ::fchown(fd, uid, gid) : ::lchown(path.c_str(), uid, gid);
  };
  mode_t mode = a.mode & 07777;
  if (ctx.root) {
    if (chown(a.uid, a.gid) != 0) return Status::FromErrno(errno, path);
    return mode;
  }
  const bool group = chown(static_cast<uid_t>(-1), a.gid) == 0;
  if (a.uid != ::geteuid() || !group) mode &= ~mode_t{07000};
  return mode;
}

Status ExportNode(ExportContext& ctx, uint64_t ino, const std::string& dest) {
  Store& store = ctx.store;
  Result<InodeAttr> attr = store.GetAttr(ino);
  if (!attr.ok()) return attr.status();
  const timespec times[2] = {FromNs(attr->atime_ns), FromNs(attr->mtime_ns)};
  switch (attr->kind) {
    case InodeKind::kFile: {
      ZIPNN_RETURN_IF_ERROR(ReplacingName::CheckDest(dest));  // before the work, not after
      ReplacingName name(ctx, dest);
      if (attr->nlink > 1) {  // another name of a file exported already: a hard link, as cp -a
        auto it = ctx.linked.find(ino);
        if (it != ctx.linked.end() && ::link(it->second.c_str(), name.temp().c_str()) == 0) {
          ZIPNN_RETURN_IF_ERROR(name.Commit());
          ++ctx.summary.files;
          return Status::Ok();
        }  // (else, a filesystem without links say, a copy)
      }
      UniqueFd fd(::open(name.temp().c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
      if (!fd.valid()) return Status::FromErrno(errno, dest);
      ZIPNN_RETURN_IF_ERROR(WriteRange(store, ctx.pool, ino, 0, attr->size, fd.get(), dest, true));
      if (::ftruncate(fd.get(), static_cast<off_t>(attr->size)) != 0) {
        return Status::FromErrno(errno, dest);
      }
      // Owner first, then attributes: chown drops security.capability (and set-id bits, which
      // the chmod after it puts back), as cp -a's order avoids.
      Result<mode_t> mode = SetOwner(ctx, fd.get(), dest, *attr);
      if (!mode.ok()) return mode.status();
      ZIPNN_RETURN_IF_ERROR(WriteXattrs(store, ino, name.temp()));
      if (::fchmod(fd.get(), *mode) != 0 || ::futimens(fd.get(), times) != 0) {
        return Status::FromErrno(errno, dest);
      }
      ZIPNN_RETURN_IF_ERROR(name.Commit());
      if (attr->nlink > 1) ctx.linked.emplace(ino, dest);
      ++ctx.summary.files;
      ctx.summary.raw_bytes += attr->size;
      return Status::Ok();
    }
    case InodeKind::kSymlink: {
      Result<std::string> target = store.ReadLink(ino);
      if (!target.ok()) return target.status();
      ZIPNN_RETURN_IF_ERROR(ReplacingName::CheckDest(dest));
      ReplacingName name(ctx, dest);
      const std::string& temp = name.temp();
      if (::symlink(target->c_str(), temp.c_str()) != 0) return Status::FromErrno(errno, dest);
      if (Result<mode_t> mode = SetOwner(ctx, -1, temp, *attr); !mode.ok()) return mode.status();
      ZIPNN_RETURN_IF_ERROR(WriteXattrs(store, ino, temp));
      if (::utimensat(AT_FDCWD, temp.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) {
        return Status::FromErrno(errno, dest);
      }
      ZIPNN_RETURN_IF_ERROR(name.Commit());
      ++ctx.summary.symlinks;
      return Status::Ok();
    }
    case InodeKind::kDirectory: {
      if (!ctx.dirs.insert(ino).second) {
        return Status::Corrupt(dest + ": directory inode " + std::to_string(ino) +
                               " is in the tree twice (damaged index: see zipnnfs fsck)");
      }
      // An existing directory is merged into, as cp -a does (and gets the stored attributes).
      Result<mode_t> kind = KindAt(dest);
      if (!kind.ok()) return kind.status();
      if (*kind != 0 && *kind != S_IFDIR) {
        return Status::Exists(dest + ": cannot overwrite a non-directory with a directory");
      }
      if (*kind == 0 && ::mkdir(dest.c_str(), 0700) != 0) return Status::FromErrno(errno, dest);
      ZIPNN_RETURN_IF_ERROR(ForEachDirEntry(store, ino, [&](const DirEntry& e) {
        return EntryDone(ctx, ExportNode(ctx, e.ino, dest + "/" + e.name));
      }));
      Result<mode_t> mode = SetOwner(ctx, -1, dest, *attr);
      if (!mode.ok()) return mode.status();
      ZIPNN_RETURN_IF_ERROR(WriteXattrs(store, ino, dest));
      if (::chmod(dest.c_str(), *mode) != 0 || ::utimensat(AT_FDCWD, dest.c_str(), times, 0) != 0) {
        return Status::FromErrno(errno, dest);
      }
      ++ctx.summary.directories;
      return Status::Ok();
    }
  }
  return Status::Corrupt("inode " + std::to_string(ino) + ": unknown kind");
}

}  // namespace

Status ExportTree(Store& store, uint64_t ino, const std::string& dest, TreeSummary& summary,
                  const ExportOptions& opts) {
  ThreadPool pool(0);
  ExportContext ctx{store, pool, opts, summary};
  return EntryDone(ctx, ExportNode(ctx, ino, dest));
}

Status WriteFileRange(Store& store, uint64_t ino, uint64_t begin, uint64_t end, int fd,
                      const std::string& label) {
  ThreadPool pool(0);
  return WriteRange(store, pool, ino, begin, end, fd, label);
}

}  // namespace zipnn::index
