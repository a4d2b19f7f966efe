// FileSystem: the read-only mount's operations, served from the store through a FileReader.
#include "fs/filesystem.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <vector>

namespace zipnn::fs {
namespace {

int ErrnoOf(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return 0;
    case StatusCode::kNotFound:
      return ENOENT;
    case StatusCode::kExists:
      return EEXIST;
    case StatusCode::kNoSpace:
      return ENOSPC;
    case StatusCode::kInvalidArgument:
      return EINVAL;
    case StatusCode::kUnsupported:
      return ENOTSUP;
    case StatusCode::kBusy:
      return EBUSY;
    default:
      return EIO;  // kCorrupt, kChecksum, kIo: the data cannot be served
  }
}

void ToStat(const index::InodeAttr& a, struct stat& st) {
  std::memset(&st, 0, sizeof st);
  st.st_ino = a.ino;
  st.st_mode = a.mode;
  st.st_nlink = a.nlink;
  st.st_uid = a.uid;
  st.st_gid = a.gid;
  st.st_size = static_cast<off_t>(a.size);
  st.st_blksize = 1 << 20;  // a hint for readers: large reads serve best
  st.st_blocks = static_cast<blkcnt_t>((a.size + 511) / 512);
  auto ts = [](int64_t ns) {  // (before 1970 too: tv_nsec is never negative)
    timespec t{ns / 1000000000, ns % 1000000000};
    if (t.tv_nsec < 0) t.tv_nsec += 1000000000, --t.tv_sec;
    return t;
  };
  st.st_atim = ts(a.atime_ns);
  st.st_mtim = ts(a.mtime_ns);
  st.st_ctim = ts(a.ctime_ns);
}

bool IsDotOrDotDot(std::string_view n) { return n == "." || n == ".."; }

// getxattr and listxattr answer alike: the size when asked with size 0, else the bytes if
// they fit.
void ReplyXattr(fuse_req_t req, const std::string& bytes, size_t size) {
  if (size == 0) {
    fuse_reply_xattr(req, bytes.size());
  } else if (bytes.size() > size) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, bytes.data(), bytes.size());
  }
}

}  // namespace

// A directory's entries, listed once at opendir: offsets stay valid while it is read, whatever
// happens to the directory meanwhile.
struct FileSystem::DirHandle {
  std::vector<index::DirEntry> entries;
};

FileSystem::~FileSystem() = default;

namespace {

// What the store directory takes on disk, its own file system only: measured before the mount
// exists (walked on each statfs, a mount inside the store was walked through, and a walk that
// reached this mount waited on itself).
uint64_t DiskBytes(const std::string& dir) {
  struct stat top;
  if (::lstat(dir.c_str(), &top) != 0) return 0;
  uint64_t bytes = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    struct stat f;
    if (::lstat(it->path().c_str(), &f) != 0 || f.st_dev != top.st_dev) {
      it.disable_recursion_pending();
      continue;
    }
    bytes += static_cast<uint64_t>(f.st_blocks) * 512;
  }
  return bytes;
}

}  // namespace

FileSystem::FileSystem(index::Store& store, const FileSystemOptions& opts)
    : store_(store),
      opts_(opts),
      reader_(store, opts.reader),
      store_disk_bytes_(DiskBytes(opts.store_dir)) {
  if (::statvfs(opts.store_dir.c_str(), &store_vfs_) != 0) store_vfs_errno_ = errno;
}

FileSystem* FileSystem::Self(fuse_req_t req) {
  auto* self = static_cast<FileSystem*>(fuse_req_userdata(req));
  self->AfterInit();
  return self;
}

void FileSystem::AfterInit() {
  // Whoever comes first runs it; nobody waits for it (a FUSE thread must not wait on anything
  // but its own reply's data).
  if (opts_.after_init && !after_init_done_.load(std::memory_order_relaxed) &&
      !after_init_done_.exchange(true)) {
    opts_.after_init();
  }
}

void FileSystem::Init(fuse_conn_info* conn) {
  // Readers of large files gain from the largest requests the kernel will send.
  conn->max_readahead = conn->max_readahead > 0 ? conn->max_readahead : UINT32_MAX;
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO) conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  // The kernel enforces the ACLs files carry (system.posix_acl_access, from getxattr) besides
  // their mode: else a user an ACL denies could read the file (with allow_other), and one it
  // grants could not.
  if (conn->capable & FUSE_CAP_POSIX_ACL) conn->want |= FUSE_CAP_POSIX_ACL;
  // Splice was measured slower than replying from memory (fuse-notes.md).
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
}

// Chunks are looked at this many file bytes at a time by DataBytes and Lseek: memory stays
// bounded, and a seek near the next hole need not list the whole file.
constexpr uint64_t kScanWindow = uint64_t{256} << 20;

std::optional<uint64_t> FileSystem::KnownDataBytes(uint64_t ino) {
  std::lock_guard lock(data_bytes_mu_);
  auto it = data_bytes_.find(ino);
  if (it == data_bytes_.end()) return std::nullopt;
  return it->second;
}

Result<uint64_t> FileSystem::DataBytes(const index::InodeAttr& attr) {
  if (std::optional<uint64_t> known = KnownDataBytes(attr.ino)) return *known;
  uint64_t zero = 0;
  for (uint64_t pos = 0; pos < attr.size;) {
    Result<std::vector<index::ChunkLocation>> chunks =
        store_.ChunksInRange(attr.ino, pos, std::min(kScanWindow, attr.size - pos));
    if (!chunks.ok()) return chunks.status();
    const uint64_t before = pos;
    for (const index::ChunkLocation& c : *chunks) {
      const uint64_t end = c.file_offset + c.raw_size;
      if (end <= pos) continue;        // (the first may begin before the window)
      if (c.file_offset > pos) break;  // a gap (a damaged index): counted as data
      if (c.method == Method::kZero) zero += end - pos;
      pos = end;
    }
    if (pos == before) break;
  }
  const uint64_t data = attr.size - std::min(zero, attr.size);
  std::lock_guard lock(data_bytes_mu_);
  if (data_bytes_.size() >= kMaxDataBytesKnown) data_bytes_.clear();
  data_bytes_[attr.ino] = data;
  return data;
}

void FileSystem::Stat(const index::InodeAttr& attr, struct stat& st) {
  ToStat(attr, st);
  // Holes show as they did on the source (an import reads none), and all-zero chunks as holes
  // too: cp, rsync and tar -S then keep such files sparse. (Where the index cannot say, the
  // whole size counts: the read will report the damage.)
  if (attr.kind != index::InodeKind::kFile) return;
  Result<uint64_t> data = DataBytes(attr);
  if (data.ok()) st.st_blocks = static_cast<blkcnt_t>((*data + 511) / 512);
}

void FileSystem::FillEntry(const index::InodeAttr& attr, fuse_entry_param& e) {
  std::memset(&e, 0, sizeof e);
  e.ino = attr.ino;
  e.generation = 1;  // inode numbers are never reused while a store lives
  Stat(attr, e.attr);
  e.attr_timeout = opts_.attr_timeout;
  e.entry_timeout = opts_.entry_timeout;
}

void FileSystem::CountLookup(const index::InodeAttr& attr, uint64_t parent) {
  std::lock_guard lock(inodes_mu_);
  Known& k = inodes_[attr.ino];
  ++k.lookups;
  if (attr.kind == index::InodeKind::kDirectory) k.parent = parent;
}

uint64_t FileSystem::ParentOf(uint64_t dir) {
  // The kernel looks a directory up before it opens it; the root is its own parent.
  std::lock_guard lock(inodes_mu_);
  auto it = inodes_.find(dir);
  return it != inodes_.end() && it->second.parent != 0 ? it->second.parent : dir;
}

void FileSystem::Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  // The kernel passes FUSE names of up to 1024 bytes; a longer name than the filesystem allows
  // is ENAMETOOLONG (as from ext4 or tmpfs), not an absent name.
  if (std::strlen(name) > kNameMax) {
    fuse_reply_err(req, ENAMETOOLONG);
    return;
  }
  Result<index::InodeAttr> attr = store_.Lookup(parent, name);
  if (!attr.ok()) {
    if (attr.status().code() == StatusCode::kNotFound) {
      // A negative entry: the kernel remembers the name is absent.
      fuse_entry_param e;
      std::memset(&e, 0, sizeof e);
      e.entry_timeout = opts_.entry_timeout;
      fuse_reply_entry(req, &e);
      return;
    }
    fuse_reply_err(req, ErrnoOf(attr.status()));
    return;
  }
  fuse_entry_param e;
  FillEntry(*attr, e);
  CountLookup(*attr, parent);
  if (fuse_reply_entry(req, &e) != 0) Forget(attr->ino, 1);  // the request was interrupted
}

void FileSystem::Forget(fuse_ino_t ino, uint64_t nlookup) {
  bool gone = false;
  {
    std::lock_guard lock(inodes_mu_);
    auto it = inodes_.find(ino);
    if (it == inodes_.end()) return;
    it->second.lookups -= std::min(it->second.lookups, nlookup);
    if (it->second.lookups == 0) {
      inodes_.erase(it);
      gone = true;
    }
  }
  if (gone) reader_.Forget(ino);
}

void FileSystem::GetAttr(fuse_req_t req, fuse_ino_t ino) {
  Result<index::InodeAttr> attr = store_.GetAttr(ino);
  if (!attr.ok()) {
    fuse_reply_err(req, ErrnoOf(attr.status()));
    return;
  }
  struct stat st;
  Stat(*attr, st);
  fuse_reply_attr(req, &st, opts_.attr_timeout);
}

void FileSystem::ReadLink(fuse_req_t req, fuse_ino_t ino) {
  Result<std::string> target = store_.ReadLink(ino);
  if (!target.ok()) {
    fuse_reply_err(req, ErrnoOf(target.status()));
    return;
  }
  fuse_reply_readlink(req, target->c_str());
}

void FileSystem::Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
    fuse_reply_err(req, EROFS);
    return;
  }
  Result<index::InodeAttr> attr = store_.GetAttr(ino);
  if (!attr.ok()) {
    fuse_reply_err(req, ErrnoOf(attr.status()));
    return;
  }
  if (attr->kind != index::InodeKind::kFile) {
    fuse_reply_err(req, attr->kind == index::InodeKind::kDirectory ? EISDIR : ELOOP);
    return;
  }
  reader_.OnOpen(ino, attr->size);
  // The handle is the file's size at open (reads stop there): a value, so nothing is left to
  // free when the kernel never releases it (an unmount with files open).
  fi->fh = attr->size;
  fi->keep_cache = 1;  // files change only through this daemon, which will invalidate them
  fuse_reply_open(req, fi);
}

void FileSystem::Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Result<ReadResult> r = reader_.Read(ino, static_cast<uint64_t>(off), size, fi->fh);
  if (!r.ok()) {
    spdlog::debug("read of inode {} at {} ({} bytes): {}", ino, off, size, r.status().message());
    fuse_reply_err(req, ErrnoOf(r.status()));
    return;
  }
  if (r->iov.empty()) {
    fuse_reply_buf(req, nullptr, 0);
    return;
  }
  // (libfuse sends the reply as one writev of a header and the pieces: at most IOV_MAX of them.)
  static_assert(ReadResult::kMaxPinnedChunks < IOV_MAX);
  fuse_reply_iov(req, r->iov.data(), static_cast<int>(r->iov.size()));
}

// SEEK_DATA and SEEK_HOLE (the kernel answers the other kinds): all-zero chunks are holes, as
// in Stat, so that copies of sparse files stay sparse.
void FileSystem::Lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi) {
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  const uint64_t size = fi->fh;  // (see Open)
  if (off < 0 || static_cast<uint64_t>(off) >= size) {
    fuse_reply_err(req, ENXIO);
    return;
  }
  uint64_t pos = static_cast<uint64_t>(off);
  if (KnownDataBytes(ino) == size) {  // no holes: no scan
    fuse_reply_lseek(req, static_cast<off_t>(whence == SEEK_DATA ? pos : size));
    return;
  }
  while (pos < size) {
    const uint64_t window_end = pos + std::min(kScanWindow, size - pos);
    Result<std::vector<index::ChunkLocation>> chunks =
        store_.ChunksInRange(ino, pos, window_end - pos);
    if (!chunks.ok()) {
      fuse_reply_err(req, ErrnoOf(chunks.status()));
      return;
    }
    for (const index::ChunkLocation& c : *chunks) {
      const uint64_t end = c.file_offset + c.raw_size;
      if (end <= pos) continue;  // (the first may begin before the window)
      if (c.file_offset > pos) break;
      if ((c.method == Method::kZero) == (whence == SEEK_HOLE)) {
        fuse_reply_lseek(req, static_cast<off_t>(std::max(pos, c.file_offset)));
        return;
      }
      pos = end;
    }
    // Extents tile a file: a range none covers is a damaged index, where read() fails too.
    // Calling it a hole would have copies take zeros for the lost bytes.
    if (pos < window_end) {
      fuse_reply_err(req, EIO);
      return;
    }
  }
  // Past the last data there is no more; the end of a file is a hole.
  if (whence == SEEK_DATA) {
    fuse_reply_err(req, ENXIO);
  } else {
    fuse_reply_lseek(req, static_cast<off_t>(size));
  }
}

void FileSystem::Release(fuse_req_t req, fuse_file_info*) { fuse_reply_err(req, 0); }

void FileSystem::OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Result<index::InodeAttr> attr = store_.GetAttr(ino);
  if (!attr.ok()) {
    fuse_reply_err(req, ErrnoOf(attr.status()));
    return;
  }
  if (attr->kind != index::InodeKind::kDirectory) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  auto handle = std::make_unique<DirHandle>();
  handle->entries.push_back({".", ino, index::InodeKind::kDirectory});
  handle->entries.push_back({"..", ParentOf(ino), index::InodeKind::kDirectory});
  const Status listed = index::ForEachDirEntry(store_, ino, [&](const index::DirEntry& e) {
    handle->entries.push_back(e);
    return Status::Ok();
  });
  if (!listed.ok()) {
    fuse_reply_err(req, ErrnoOf(listed));
    return;
  }
  fi->fh = reinterpret_cast<uint64_t>(handle.get());
  fi->cache_readdir = 1;
  {
    std::lock_guard lock(dirs_mu_);
    const DirHandle* key = handle.get();
    dirs_.emplace(key, std::move(handle));
  }
  // (Should the reply fail, the kernel sends no release: the listing waits for the unmount.)
  fuse_reply_open(req, fi);
}

void FileSystem::ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
                         bool plus) {
  const auto* dir = reinterpret_cast<const DirHandle*>(fi->fh);
  std::vector<char> buf(size);
  size_t used = 0;
  for (size_t i = static_cast<size_t>(off); i < dir->entries.size(); ++i) {
    const index::DirEntry& d = dir->entries[i];
    const off_t next = static_cast<off_t>(i + 1);
    size_t n;
    if (!plus) {
      struct stat st;
      std::memset(&st, 0, sizeof st);
      st.st_ino = d.ino;
      st.st_mode = index::FileTypeBits(d.kind);
      n = fuse_add_direntry(req, buf.data() + used, size - used, d.name.c_str(), &st, next);
    } else {
      fuse_entry_param e;
      std::memset(&e, 0, sizeof e);
      std::optional<index::InodeAttr> counted;
      // Inode 0 for ".", ".." and an entry whose attributes cannot be read: the kernel makes no
      // dentry and counts no lookup, but lists the name. A stat of that entry then asks Lookup,
      // which says what is wrong (EIO for a damaged index): dropped from the listing, it went
      // missing from cp -a, rsync and tar, which exited 0.
      Result<index::InodeAttr> attr =
          IsDotOrDotDot(d.name) ? Status::NotFound("") : store_.GetAttr(d.ino);
      if (attr.ok()) {
        FillEntry(*attr, e);
        counted = *attr;
      } else {
        e.attr.st_ino = d.ino;
        e.attr.st_mode = index::FileTypeBits(d.kind);
      }
      n = fuse_add_direntry_plus(req, buf.data() + used, size - used, d.name.c_str(), &e, next);
      if (n <= size - used && counted) CountLookup(*counted, ino);
    }
    if (n > size - used) break;  // full; this entry goes in the next call
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void FileSystem::ReleaseDir(fuse_req_t req, fuse_file_info* fi) {
  std::unique_ptr<DirHandle> dir;  // freed outside the lock
  {
    std::lock_guard lock(dirs_mu_);
    auto it = dirs_.find(reinterpret_cast<const DirHandle*>(fi->fh));
    if (it != dirs_.end()) {
      dir = std::move(it->second);
      dirs_.erase(it);
    }
  }
  fuse_reply_err(req, 0);
}

// The read-only mount's figures, as squashfuse gives its image's: its size is what the store
// takes on disk, and nothing is free (the host's free space was no room for writes here).
void FileSystem::StatFs(fuse_req_t req) {
  if (store_vfs_errno_ != 0) {
    fuse_reply_err(req, store_vfs_errno_);
    return;
  }
  struct statvfs st = store_vfs_;
  const uint64_t bytes = store_disk_bytes_;
  const uint64_t unit = st.f_frsize ? st.f_frsize : 4096;
  st.f_blocks = static_cast<fsblkcnt_t>((bytes + unit - 1) / unit);
  st.f_bfree = st.f_bavail = 0;
  st.f_files = st.f_ffree = st.f_favail = 0;
  st.f_namemax = kNameMax;
  st.f_flag |= ST_RDONLY;
  fuse_reply_statfs(req, &st);
}

std::string FileSystem::StatsJson() const {
  nlohmann::json j = nlohmann::json::parse(reader_.StatsJson());
  j["store"] = opts_.store_dir;
  return j.dump(2) + "\n";
}

void FileSystem::GetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  std::string value;
  if (ino == index::kRootInode && std::strcmp(name, kStatsXattr) == 0) {
    value = StatsJson();
  } else {
    Result<std::string> v = store_.GetXattr(ino, name);
    if (!v.ok()) {
      fuse_reply_err(req,
                     v.status().code() == StatusCode::kNotFound ? ENODATA : ErrnoOf(v.status()));
      return;
    }
    value = std::move(*v);
  }
  ReplyXattr(req, value, size);
}

void FileSystem::ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  // The statistics attribute is not listed: copies (cp -a, rsync -X) must not carry it.
  std::vector<std::string> names;
  Status st = store_.ListXattr(ino, names);
  if (!st.ok()) {
    fuse_reply_err(req, ErrnoOf(st));
    return;
  }
  std::string list;
  for (const std::string& n : names) list.append(n).push_back('\0');
  ReplyXattr(req, list, size);
}

}  // namespace zipnn::fs
