#include "index/tree.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <map>
#include <string_view>
#include <vector>

#include "codec/container.h"
#include "index/host_path.h"

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
// `st`'s attributes as stored; `src`'s times outside the store's range are told to opts.skipped.
NewAttr AttrOf(const struct stat& st, const std::string& src, const ImportOptions& opts) {
  NewAttr a;
  a.mode = st.st_mode & 07777;
  a.uid = st.st_uid;
  a.gid = st.st_gid;
  a.atime_ns = ToNs(st.st_atim);
  a.mtime_ns = ToNs(st.st_mtim);
  a.ctime_ns = ToNs(st.st_ctim);
  const auto clamped = [](int64_t ns) { return ns == INT64_MAX || ns == INT64_MIN; };
  if ((clamped(a.atime_ns) || clamped(a.mtime_ns)) && opts.skipped) {
    opts.skipped(src,
                 "a time outside 1677-2262, which a store cannot hold: kept as the nearer end");
  }
  return a;
}

// The extended attributes of `p` (not following a symlink). Attributes the filesystem will not
// show us are simply not copied.
std::vector<std::pair<std::string, std::string>> ReadXattrs(const HostPath& p) {
  std::vector<std::pair<std::string, std::string>> out;
  const HostXattrs x(p);
  const ssize_t size = x.List(nullptr, 0);
  if (size <= 0) return out;
  std::string names(static_cast<size_t>(size), '\0');
  const ssize_t n = x.List(names.data(), names.size());
  if (n <= 0) return out;
  names.resize(static_cast<size_t>(n));
  for (size_t pos = 0; pos < names.size();) {
    const std::string name(names.c_str() + pos);
    pos += name.size() + 1;
    const ssize_t vsize = x.Get(name.c_str(), nullptr, 0);
    if (vsize < 0) continue;
    std::string value(static_cast<size_t>(vsize), '\0');
    const ssize_t got = x.Get(name.c_str(), value.data(), value.size());
    if (got < 0) continue;
    value.resize(static_cast<size_t>(got));
    out.emplace_back(name, std::move(value));
  }
  return out;
}

// The names in open directory `dir`, sorted.
Result<std::vector<std::string>> ListHostDir(const UniqueFd& dir) {
  UniqueFd fd(::fcntl(dir.get(), F_DUPFD_CLOEXEC, 0));  // (closedir closes it)
  DIR* d = fd.valid() ? ::fdopendir(fd.get()) : nullptr;
  if (d == nullptr) return Status::FromErrno(errno, "opendir");
  fd.Release();
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
  // Those later names whose paths are unusable (past PATH_MAX), by label: where a file is left
  // out, they are walked again.
  std::map<std::string, HostPath> deep_links;
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

Status Walk(BulkAdd& bulk, const HostPath& src, BulkDir parent, const std::string& name,
            WalkContext& ctx, TreeSummary& summary);

// Queues the entries of host directory `src` in `dir`.
Status WalkChildren(BulkAdd& bulk, const HostPath& src, BulkDir dir, WalkContext& ctx,
                    TreeSummary& summary) {
  std::shared_ptr<const UniqueFd> fd = OpenDir(src, O_RDONLY);
  Result<std::vector<std::string>> names =
      fd ? ListHostDir(*fd) : Result<std::vector<std::string>>(Status::FromErrno(errno, "opendir"));
  if (!names.ok()) {  // (as cp -a does, the directory itself is kept)
    ZIPNN_RETURN_IF_ERROR(Failed(ctx, src.label, names.status(), summary));
    names = std::vector<std::string>{};
  }
  for (const std::string& child : *names) {
    ZIPNN_RETURN_IF_ERROR(Walk(bulk, ChildOf(fd, src.label, child), dir, child, ctx, summary));
  }
  return Status::Ok();
}

// Queues host entry `src` as `name` in `parent`; directories recursively, their times last (as
// cp -a does: adding children would have changed a live directory's times).
Status Walk(BulkAdd& bulk, const HostPath& src, BulkDir parent, const std::string& name,
            WalkContext& ctx, TreeSummary& summary) {
  const std::string& label = src.label;
  struct stat st;
  if (::fstatat(DirFd(src), src.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    // Listed by its directory a moment ago: it went away while the import ran.
    if (errno == ENOENT) {
      return Failed(ctx, label, Status::NotFound("vanished before it could be imported"), summary);
    }
    return Failed(ctx, label, Status::FromErrno(errno, "lstat"), summary);
  }
  if (ctx.store_ino != 0 && st.st_dev == ctx.store_dev && st.st_ino == ctx.store_ino) {
    // (Not counted: leaving the store out is the copy asked for, not a loss.)
    if (ctx.opts.skipped) ctx.opts.skipped(label, "the store itself, skipped");
    return Status::Ok();
  }
  NewAttr attr = AttrOf(st, label, ctx.opts);
  attr.xattrs = ReadXattrs(src);
  if (S_ISREG(st.st_mode)) {
    if (st.st_nlink > 1) {  // as cp -a keeps hard links
      auto it = ctx.linked.find({st.st_dev, st.st_ino});
      if (it != ctx.linked.end()) {
        if (HostPath kept = Kept(src); kept.dir) ctx.deep_links.emplace(label, std::move(kept));
        return bulk.Link(parent, name, it->second, label);
      }
    }
    // (Past PATH_MAX the queue holds a descriptor per entry at most, under the hard limits of
    // common systems, which zipnnfs raises its soft limit to.)
    Result<BulkFile> file = bulk.AddFile(parent, name, Kept(src), attr);
    if (!file.ok()) return file.status();
    if (st.st_nlink > 1) ctx.linked.emplace(std::pair{st.st_dev, st.st_ino}, std::move(*file));
    return Status::Ok();
  }
  if (S_ISLNK(st.st_mode)) {
    std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
    const ssize_t n = ::readlinkat(DirFd(src), src.name.c_str(), target.data(), target.size());
    if (n < 0) return Failed(ctx, label, Status::FromErrno(errno, "readlink"), summary);
    target.resize(static_cast<size_t>(n));
    return bulk.Symlink(parent, name, target, attr, label);
  }
  if (S_ISDIR(st.st_mode)) {
    Result<BulkDir> dir = bulk.Mkdir(parent, name, attr, label);
    if (!dir.ok()) return dir.status();
    ZIPNN_RETURN_IF_ERROR(WalkChildren(bulk, src, *dir, ctx, summary));
    return bulk.SetTimes(*dir, attr.atime_ns, attr.mtime_ns);
  }
  Skip(ctx, label, "special file (device, fifo or socket) skipped", summary);
  return Status::Ok();
}

}  // namespace

Status ImportTrees(Store& store, const std::vector<ImportSource>& sources, uint64_t parent,
                   const ImportOptions& opts, TreeSummary& summary) {
  WalkContext ctx{opts, 0, 0, {}, {}};
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
  struct Orphan {
    std::string host_path, name;
    uint64_t parent;
  };
  std::vector<Orphan> orphans;  // (the writer thread adds them; read after Finish)
  bulk_opts.link_orphaned = [&orphans](std::string_view label, uint64_t parent,
                                       std::string_view name) {
    orphans.push_back({std::string(label), std::string(name), parent});
  };
  bulk_opts.entry_added = [&summary](bool directory) {
    ++(directory ? summary.directories : summary.symlinks);
  };
  bulk_opts.file_added = [&summary](std::string_view, const AddResult& r) {
    ++summary.files;
    summary.raw_bytes += r.attr.size;
    summary.frame_bytes += r.frame_bytes;
    summary.new_frame_bytes += r.new_frame_bytes;
  };
  struct stat store_st;
  const bool have_store = !opts.store_dir.empty() && ::stat(opts.store_dir.c_str(), &store_st) == 0;
  if (have_store) {
    ctx.store_dev = store_st.st_dev;
    ctx.store_ino = store_st.st_ino;
  }
  Result<std::unique_ptr<BulkAdd>> bulk = store.BeginBulkAdd(bulk_opts);
  if (!bulk.ok()) return bulk.status();
  // One pipeline for all sources: hard links between them are kept, and small sources share
  // commits. Whatever was queued before a failure of the walk is still committed.
  Status walked;
  for (const ImportSource& source : sources) {
    const std::string& src = source.path;
    struct stat st;  // a missing source is the caller's mistake, not a file that vanished
    if (::lstat(src.c_str(), &st) != 0) {
      walked = Failed(ctx, src, Status::FromErrno(errno, "lstat"), summary);
    } else if (source.name.empty() && !S_ISDIR(st.st_mode)) {
      walked = Failed(ctx, src, Status::InvalidArgument("not a directory"), summary);
    } else if (have_store && PathIsWithin(src, opts.store_dir)) {
      // The store, or a source inside it (its packs, say), is read while the import writes it.
      walked = Failed(ctx, src, Status::InvalidArgument("is inside the store"), summary);
    } else {
      const BulkDir top{parent, false};
      const HostPath whole{nullptr, src, src};
      if (!source.name.empty()) {
        walked = Walk(**bulk, whole, top, source.name, ctx, summary);
      } else if ((walked = WalkChildren(**bulk, whole, top, ctx, summary)).ok()) {
        // As cp -a SRC/. DEST: DEST takes SRC's attributes (its times after its entries).
        NewAttr attr = AttrOf(st, src, opts);
        attr.xattrs = ReadXattrs(whole);
        walked = (*bulk)->SetDirAttr(top, attr);
      }
    }
    if (!walked.ok()) break;
  }
  Result<BulkSummary> done = (*bulk)->Finish();
  bulk->reset();
  // Other names of files left out (their first name refused, or unreadable when its turn came):
  // as cp -a, which links a name to the copy of its first only if that copy exists, each is
  // copied on its own (orphaned names of one file still share an inode).
  if (done.ok() && !orphans.empty()) {
    bulk_opts.link_orphaned = nullptr;
    bulk = store.BeginBulkAdd(bulk_opts);
    if (!bulk.ok()) return bulk.status();
    ctx.linked.clear();
    Status again;
    for (const Orphan& o : orphans) {
      auto deep = ctx.deep_links.find(o.host_path);
      const HostPath at =
          deep != ctx.deep_links.end() ? deep->second : HostPath{nullptr, o.host_path, o.host_path};
      again = Walk(**bulk, at, BulkDir{o.parent, false}, o.name, ctx, summary);
      if (!again.ok()) break;
    }
    done = (*bulk)->Finish();
    if (walked.ok()) walked = again;
  }
  summary.failed += files_failed;
  if (!done.ok()) return done.status();
  return walked;
}

Status ImportTree(Store& store, const std::string& src, uint64_t parent, const std::string& name,
                  const ImportOptions& opts, TreeSummary& summary) {
  return ImportTrees(store, {{src, name}}, parent, opts, summary);
}

}  // namespace zipnn::index
