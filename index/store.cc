// Store: creating and opening a store, and everything that reads it.
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>  // the AVX2 kernel where the CPU has it: twice the SSE2 default
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "index/store_impl.h"

namespace zipnn::index {

namespace {

constexpr std::string_view kFormatMagic = "zipnnfs-store";

std::string Join(const std::string& a, std::string_view b) { return a + "/" + std::string(b); }

Status MakeDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) return Status::FromErrno(errno, path);
  return Status::Ok();
}

Result<uint32_t> ReadFormatVersion(const std::string& dir) {
  std::ifstream in(Join(dir, "FORMAT"));
  if (!in) {
    struct stat st;
    if (::stat(dir.c_str(), &st) != 0) return Status::NotFound(dir + ": no such store");
    return Status::NotFound(dir + ": not a zipnnfs store (no FORMAT file)");
  }
  std::string magic;
  int64_t version = -1;
  in >> magic >> version;
  if (magic != kFormatMagic || version < 0) {
    return Status::Corrupt(dir + "/FORMAT: not a zipnnfs store format line");
  }
  if (version != kStoreFormatVersion) {
    return Status::Unsupported(dir + ": store format version " + std::to_string(version) +
                               ", this zipnnfs reads version " +
                               std::to_string(kStoreFormatVersion));
  }
  return static_cast<uint32_t>(version);
}

// flock()s STORE/LOCK exclusively, or fails with kBusy naming the reason.
// `shared`: a reader's lock, taken with a read-only descriptor (it works on read-only media);
// null when there is no LOCK to open. Writers take it exclusively, so either side sees kBusy.
Result<UniqueFd> LockStore(const std::string& dir, bool shared = false) {
  const std::string path = Join(dir, "LOCK");
  UniqueFd fd(
      ::open(path.c_str(), shared ? O_RDONLY | O_CLOEXEC : O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) {
    if (shared) return UniqueFd();
    return Status::FromErrno(errno, path);
  }
  if (::flock(fd.get(), (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Status::Busy(dir + ": store is locked by another process (a running import or mount)");
    }
    return Status::FromErrno(errno, path);
  }
  return fd;
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

uint64_t KeyIno(const MDB_val& k) { return rec::GetBE64(static_cast<const uint8_t*>(k.mv_data)); }

thread_local std::unique_ptr<FrameDecoder> tls_decoder;

// LMDB allows one environment per file per process (a second one would break its locks): the
// stores open in this process, by real path.
std::mutex open_stores_mutex;
std::set<std::string> open_stores;

// Makes a new store durable before anything is committed to it: a power cut must not leave
// committed files in a store that lost its FORMAT line (no longer opens) or its index's name.
Status SyncNewStore(const std::string& dir) {
  const std::string format_path = Join(dir, "FORMAT");
  UniqueFd format(::open(format_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!format.valid()) return Status::FromErrno(errno, format_path);
  if (::fsync(format.get()) != 0) return Status::FromErrno(errno, format_path + ": fsync");
  // index/ holds data.mdb; the store directory holds index/, packs/ and FORMAT; its parent, the
  // store directory itself when Init created it.
  ZIPNN_RETURN_IF_ERROR(SyncDir(Join(dir, "index")));
  ZIPNN_RETURN_IF_ERROR(SyncDir(dir));
  // The parent may not be ours to open (a store made in a directory of mode 0711): then its
  // entry is as durable as whoever made the store directory made it.
  const std::string parent_path = Join(dir, "..");
  UniqueFd parent(::open(parent_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (parent.valid() && ::fsync(parent.get()) != 0) {
    return Status::FromErrno(errno, parent_path + ": fsync");
  }
  return Status::Ok();
}

}  // namespace

ChunkHash HashChunk(std::span<const uint8_t> data) {
  XXH128_canonical_t c;
#if defined(__x86_64__)
  XXH128_canonicalFromHash(&c, XXH3_128bits_dispatch(data.data(), data.size()));
#else
  XXH128_canonicalFromHash(&c, XXH3_128bits(data.data(), data.size()));
#endif
  ChunkHash h;
  std::memcpy(h.data(), c.digest, h.size());
  return h;
}

std::optional<uint64_t> ChecksumFromHash(const ChunkHash& h, size_t size) {
  if (size <= 240) return std::nullopt;  // short inputs: two different functions
  uint64_t low = 0;
  for (int i = 8; i < 16; ++i) low = low << 8 | h[i];  // canonical: big-endian, high half first
  return low;
}

std::string Quote(std::string_view name) {
  std::string q;
  q.reserve(name.size() + 2);
  q.push_back('\'');
  q.append(name);
  q.push_back('\'');
  return q;
}

Status ValidateName(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 255 ||
      name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument("invalid file name " + Quote(name));
  }
  return Status::Ok();
}

Status Store::Init(const std::string& dir) {
  ZIPNN_RETURN_IF_ERROR(MakeDir(dir));
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return Status::FromErrno(errno, dir);
  bool empty = true;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) empty = false;
  }
  ::closedir(d);
  if (!empty) return Status::Exists(dir + ": exists and is not empty");

  Result<UniqueFd> lock = LockStore(dir);
  if (!lock.ok()) return lock.status();
  for (const char* sub : {"index", "packs", "staging"})
    ZIPNN_RETURN_IF_ERROR(MakeDir(Join(dir, sub)));
  Result<std::unique_ptr<lmdb::Env>> env = lmdb::Env::Open(Join(dir, "index"), true, kDbNames);
  if (!env.ok()) return env.status();
  Status st = (*env)->Update([&](lmdb::Txn& txn) -> Status {
    uint8_t u32[4], u64[8];
    rec::PutLE<uint32_t>(u32, kStoreFormatVersion);
    ZIPNN_RETURN_IF_ERROR(txn.Put((*env)->dbi(kMeta), lmdb::Val(rec::kMetaFormat), lmdb::Val(u32)));
    rec::PutLE<uint64_t>(u64, kRootInode + 1);
    ZIPNN_RETURN_IF_ERROR(
        txn.Put((*env)->dbi(kMeta), lmdb::Val(rec::kMetaNextInode), lmdb::Val(u64)));
    rec::PutLE<uint32_t>(u32, 1);
    ZIPNN_RETURN_IF_ERROR(
        txn.Put((*env)->dbi(kMeta), lmdb::Val(rec::kMetaCurrentPack), lmdb::Val(u32)));
    InodeAttr root;
    root.ino = kRootInode;
    root.kind = InodeKind::kDirectory;
    root.mode = S_IFDIR | 0755;
    root.uid = ::getuid();
    root.gid = ::getgid();
    root.atime_ns = root.mtime_ns = root.ctime_ns = NowNs();
    root.nlink = 2;
    uint8_t inode[rec::kInodeSize];
    rec::EncodeInode(root, inode);
    rec::InodeKey key(kRootInode);
    return txn.Put((*env)->dbi(kInodes), lmdb::Val(key.bytes()), lmdb::Val(inode));
  });
  if (!st.ok()) return st;
  // FORMAT last: a directory without it is not a store, so an interrupted init is never opened.
  const std::string format_path = Join(dir, "FORMAT");
  {
    std::ofstream out(format_path, std::ios::trunc);
    out << kFormatMagic << ' ' << kStoreFormatVersion << '\n';
    if (!out.flush()) return Status::Io(format_path + ": write failed");
  }
  return SyncNewStore(dir);
}

Result<std::unique_ptr<Store>> Store::Open(const std::string& dir, const StoreOptions& opts) {
  auto store = std::make_unique<StoreImpl>(dir, opts);
  ZIPNN_RETURN_IF_ERROR(store->OpenImpl());
  return std::unique_ptr<Store>(std::move(store));
}

StoreImpl::StoreImpl(std::string dir, StoreOptions opts)
    : dir_(std::move(dir)), opts_(std::move(opts)), packs_(dir_ + "/packs") {}

StoreImpl::~StoreImpl() {
  pack_writer_.reset();
  env_.reset();  // closed before another Open of this store may proceed
  if (!registered_path_.empty()) {
    std::lock_guard lock(open_stores_mutex);
    open_stores.erase(registered_path_);
  }
}

Status StoreImpl::OpenImpl() {
  Result<uint32_t> version = ReadFormatVersion(dir_);
  if (!version.ok()) return version.status();
  if (opts_.writable || opts_.shared_lock) {
    Result<UniqueFd> lock = LockStore(dir_, !opts_.writable);
    if (!lock.ok()) return lock.status();
    lock_fd_ = std::move(*lock);
  }
  {
    char real[PATH_MAX];
    if (::realpath(dir_.c_str(), real) == nullptr) return Status::FromErrno(errno, dir_);
    std::lock_guard lock(open_stores_mutex);
    if (!open_stores.insert(real).second) {
      return Status::Busy(dir_ + ": store is already open in this process");
    }
    registered_path_ = real;
  }
  Result<std::unique_ptr<lmdb::Env>> env =
      lmdb::Env::Open(dir_ + "/index", opts_.writable, kDbNames);
  if (!env.ok()) return Status(env.status().code(), dir_ + ": " + env.status().message());
  env_ = std::move(*env);
  {
    Result<lmdb::Txn> txn = env_->BeginRead();
    if (!txn.ok()) return txn.status();
    MDB_val v;
    Status st = txn->Get(dbi(kMeta), lmdb::Val(rec::kMetaFormat), v);
    if (!st.ok() || v.mv_size != 4 ||
        rec::GetLE<uint32_t>(static_cast<const uint8_t*>(v.mv_data)) != kStoreFormatVersion) {
      return Status::Corrupt(dir_ + ": index format version missing or not " +
                             std::to_string(kStoreFormatVersion));
    }
  }
  if (opts_.writable) {
    ZIPNN_RETURN_IF_ERROR(OpenPacksForWriting());
  }
  return Status::Ok();
}

// Cuts every pack to its committed length (bytes past it belong to no committed file) and opens
// the current pack for appending.
Status StoreImpl::OpenPacksForWriting() {
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  // A pack's committed length; -1 for a pack the index does not know.
  auto committed = [&](uint32_t id) -> Result<int64_t> {
    MDB_val v;
    const std::string key = rec::PackLengthKey(id);
    Status st = txn->Get(dbi(kMeta), lmdb::Val(key), v);
    if (st.code() == StatusCode::kNotFound) return int64_t{-1};
    if (!st.ok()) return st;
    if (v.mv_size != 8) return Status::Corrupt("pack length record");
    return rec::GetLE<int64_t>(static_cast<const uint8_t*>(v.mv_data));
  };

  const std::string packs_dir = dir_ + "/packs";
  DIR* d = ::opendir(packs_dir.c_str());
  if (d == nullptr) return Status::FromErrno(errno, packs_dir);
  std::vector<uint32_t> ids;
  while (dirent* e = ::readdir(d)) {
    unsigned id = 0;
    char tail[8] = {};
    if (std::sscanf(e->d_name, "pack-%u.%7s", &id, tail) == 2 && std::strcmp(tail, "znp") == 0) {
      ids.push_back(id);
    }
  }
  ::closedir(d);
  // The pack to append to; without a record of it (damage fsck reports), the newest one.
  MDB_val v;
  Status got = txn->Get(dbi(kMeta), lmdb::Val(rec::kMetaCurrentPack), v);
  if (!got.ok() && got.code() != StatusCode::kNotFound) return got;
  uint32_t current = 1;
  if (got.ok() && v.mv_size == 4) {
    current = rec::GetLE<uint32_t>(static_cast<const uint8_t*>(v.mv_data));
  } else {
    for (uint32_t id : ids) current = std::max(current, id);
  }
  // Where each pack's last frame a chunk record uses ends: found (a scan of the chunk records)
  // only when a pack is about to lose bytes, past its committed length or whole. After a crash
  // that is normal; if records reach into those bytes, the length record is damaged, and the
  // bytes stay (a cut would destroy committed files; fsck reports the records).
  std::optional<std::map<uint32_t, uint64_t>> used;
  auto keep_at_least = [&](uint32_t id, int64_t len) -> Result<int64_t> {
    struct stat st;
    const std::string path = PackPath(packs_dir, id);
    if (::stat(path.c_str(), &st) != 0) return Status::FromErrno(errno, path);
    if (st.st_size <= len) return len;
    if (!used) {
      used.emplace();
      Result<lmdb::Cursor> cur = lmdb::Cursor::Open(*txn, dbi(kChunks));
      if (!cur.ok()) return cur.status();
      MDB_val k, v;
      Status cst;
      for (bool have = cur->Get(k, v, MDB_FIRST, cst); have; have = cur->Get(k, v, MDB_NEXT, cst)) {
        if (std::optional<rec::Chunk> c = rec::DecodeChunk(lmdb::Bytes(v))) NoteFrameEnd(*c, *used);
      }
      ZIPNN_RETURN_IF_ERROR(cst);
    }
    auto it = used->find(id);
    if (it == used->end() || it->second <= static_cast<uint64_t>(std::max<int64_t>(len, 0)))
      return len;
    return static_cast<int64_t>(std::min<uint64_t>(it->second, static_cast<uint64_t>(st.st_size)));
  };
  for (uint32_t id : ids) {
    if (id == current) continue;
    Result<int64_t> len = committed(id);
    if (!len.ok()) return len.status();
    len = keep_at_least(id, *len);
    if (!len.ok()) return len.status();
    if (*len < 0) {
      // No committed byte: a pack started by a writer that crashed before its first commit, or
      // one gc emptied and had not yet removed.
      const std::string path = PackPath(packs_dir, id);
      if (::unlink(path.c_str()) != 0) return Status::FromErrno(errno, path);
      continue;
    }
    Result<PackWriter> w = PackWriter::Open(packs_dir, id, static_cast<uint64_t>(*len));
    // (Opening cuts the uncommitted tail.) A pack shorter than its committed length lost
    // frames: it stays as it is, for fsck to report and repair.
    if (!w.ok() && w.status().code() != StatusCode::kCorrupt) return w.status();
  }
  Result<int64_t> len = committed(current);
  if (!len.ok()) return len.status();
  if (::access(PackPath(packs_dir, current).c_str(), F_OK) == 0) len = keep_at_least(current, *len);
  if (!len.ok()) return len.status();
  Result<PackWriter> w =
      PackWriter::Open(packs_dir, current, static_cast<uint64_t>(std::max<int64_t>(*len, 0)));
  if (!w.ok() && w.status().code() == StatusCode::kCorrupt) {
    // Never append to a damaged pack: new frames go to a fresh one.
    uint32_t fresh = current + 1;
    for (uint32_t id : ids) fresh = std::max(fresh, id + 1);
    w = PackWriter::Open(packs_dir, fresh, 0);
  }
  if (!w.ok()) return w.status();
  pack_writer_.emplace(std::move(*w));
  return Status::Ok();
}

Result<InodeAttr> StoreImpl::GetAttrIn(lmdb::Txn& txn, uint64_t ino) {
  rec::InodeKey key(ino);
  MDB_val v;
  Status st = txn.Get(dbi(kInodes), lmdb::Val(key.bytes()), v);
  if (st.code() == StatusCode::kNotFound)
    return Status::NotFound("no inode " + std::to_string(ino));
  if (!st.ok()) return st;
  std::optional<InodeAttr> a = rec::DecodeInode(ino, lmdb::Bytes(v));
  if (!a) return Status::Corrupt("inode " + std::to_string(ino) + ": bad record");
  return *a;
}

Result<InodeAttr> StoreImpl::LookupIn(lmdb::Txn& txn, uint64_t parent, std::string_view name) {
  const std::string key = rec::NamedKey(parent, name);
  MDB_val v;
  Status st = txn.Get(dbi(kDirents), lmdb::Val(key), v);
  if (st.code() == StatusCode::kNotFound) {
    return Status::NotFound("no entry " + Quote(name) + " in inode " + std::to_string(parent));
  }
  if (!st.ok()) return st;
  if (v.mv_size != rec::kDirentSize) return Status::Corrupt("bad directory entry");
  return GetAttrIn(txn, rec::GetLE<uint64_t>(static_cast<const uint8_t*>(v.mv_data)));
}

Result<InodeAttr> StoreImpl::GetAttr(uint64_t ino) {
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  return GetAttrIn(*txn, ino);
}

Result<InodeAttr> StoreImpl::Lookup(uint64_t parent, std::string_view name) {
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  return LookupIn(*txn, parent, name);
}

Result<InodeAttr> StoreImpl::LookupPath(std::string_view path) {
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  Result<InodeAttr> cur = GetAttrIn(*txn, kRootInode);
  while (cur.ok()) {
    while (!path.empty() && path.front() == '/') path.remove_prefix(1);
    if (path.empty()) break;
    const size_t slash = path.find('/');
    const std::string_view part = path.substr(0, slash);
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash);
    if (part == ".") continue;
    if (cur->kind != InodeKind::kDirectory) {
      return Status::NotFound(Quote(part) + ": parent is not a directory");
    }
    cur = LookupIn(*txn, cur->ino, part);
  }
  return cur;
}

Status StoreImpl::ReadDir(uint64_t parent, std::string_view after, size_t max,
                          std::vector<DirEntry>& out) {
  out.clear();
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  Result<lmdb::Cursor> cur = lmdb::Cursor::Open(*txn, dbi(kDirents));
  if (!cur.ok()) return cur.status();
  std::string start = rec::NamedKey(parent, after);
  MDB_val k = lmdb::Val(start), v;
  Status st;
  bool have = cur->Get(k, v, MDB_SET_RANGE, st);
  while (have && out.size() < max) {
    if (k.mv_size < 8 || KeyIno(k) != parent) break;
    std::string_view name(static_cast<const char*>(k.mv_data) + 8, k.mv_size - 8);
    if (name != after || after.empty()) {
      // A damaged index must not hand out names a caller would follow out of a tree ("..",
      // "a/b") or page on forever (""; the next page starts after the last name).
      if (v.mv_size != rec::kDirentSize || !ValidateName(name).ok())
        return Status::Corrupt("bad directory entry in directory " + std::to_string(parent) + ": " +
                               Quote(name));
      const uint8_t* p = static_cast<const uint8_t*>(v.mv_data);
      out.push_back({std::string(name), rec::GetLE<uint64_t>(p), static_cast<InodeKind>(p[8])});
    }
    have = cur->Get(k, v, MDB_NEXT, st);
  }
  return st;
}

Result<std::string> StoreImpl::ReadLink(uint64_t ino) {
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  rec::InodeKey key(ino);
  MDB_val v;
  Status st = txn->Get(dbi(kSymlinks), lmdb::Val(key.bytes()), v);
  if (st.code() == StatusCode::kNotFound) {
    return Status::InvalidArgument("inode " + std::to_string(ino) + " is not a symlink");
  }
  if (!st.ok()) return st;
  return std::string(static_cast<const char*>(v.mv_data), v.mv_size);
}

Result<std::string> StoreImpl::GetXattr(uint64_t ino, std::string_view name) {
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  const std::string key = rec::NamedKey(ino, name);
  MDB_val v;
  ZIPNN_RETURN_IF_ERROR(txn->Get(dbi(kXattrs), lmdb::Val(key), v));
  return std::string(static_cast<const char*>(v.mv_data), v.mv_size);
}

Status StoreImpl::ListXattr(uint64_t ino, std::vector<std::string>& names) {
  names.clear();
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  Result<lmdb::Cursor> cur = lmdb::Cursor::Open(*txn, dbi(kXattrs));
  if (!cur.ok()) return cur.status();
  rec::InodeKey start(ino);
  MDB_val k = lmdb::Val(start.bytes()), v;
  Status st;
  for (bool have = cur->Get(k, v, MDB_SET_RANGE, st); have && k.mv_size > 8 && KeyIno(k) == ino;
       have = cur->Get(k, v, MDB_NEXT, st)) {
    names.emplace_back(static_cast<const char*>(k.mv_data) + 8, k.mv_size - 8);
  }
  return st;
}

Status StoreImpl::ChunksIn(lmdb::Txn& txn, uint64_t ino, uint64_t offset, uint64_t end,
                           std::vector<ChunkLocation>& out) {
  Result<lmdb::Cursor> cur = lmdb::Cursor::Open(txn, dbi(kExtents));
  if (!cur.ok()) return cur.status();
  // The extent holding `offset` is the last one starting at or before it: seek to the first key
  // >= (ino, offset), and step back one unless it starts exactly there.
  rec::ExtentKey start(ino, offset);
  MDB_val k = lmdb::Val(start.bytes()), v;
  Status st;
  auto key_ok = [&] { return k.mv_size == 16 && KeyIno(k) == ino; };
  auto key_offset = [&] { return rec::GetBE64(static_cast<const uint8_t*>(k.mv_data) + 8); };
  bool have = cur->Get(k, v, MDB_SET_RANGE, st);
  if (!(have && key_ok() && key_offset() == offset)) {
    const bool back = have ? cur->Get(k, v, MDB_PREV, st) : cur->Get(k, v, MDB_LAST, st);
    if (back && key_ok()) {
      have = true;
    } else {
      k = lmdb::Val(start.bytes());
      have = cur->Get(k, v, MDB_SET_RANGE, st);
    }
  }
  while (have && key_ok() && key_offset() < end) {
    std::optional<rec::Extent> e = rec::DecodeExtent(lmdb::Bytes(v));
    if (!e) return Status::Corrupt("inode " + std::to_string(ino) + ": bad extent record");
    const uint64_t ext_offset = key_offset();
    if (ext_offset + e->raw_size > offset) {
      MDB_val cv;
      Status cst = txn.Get(dbi(kChunks), lmdb::Val(e->hash), cv);
      std::optional<rec::Chunk> c;
      if (cst.ok()) c = rec::DecodeChunk(lmdb::Bytes(cv));
      if (!c || c->raw_size != e->raw_size) {
        return Status::Corrupt(
            "inode " + std::to_string(ino) + " bytes [" + std::to_string(ext_offset) + ", " +
            std::to_string(ext_offset + e->raw_size) + "): chunk record missing or inconsistent");
      }
      out.push_back({ext_offset, e->raw_size, e->dtype, e->hash, c->pack_id, c->pack_offset,
                     c->frame_size, c->method});
    }
    have = cur->Get(k, v, MDB_NEXT, st);
  }
  return st;
}

Result<std::vector<ChunkLocation>> StoreImpl::ChunksInRange(uint64_t ino, uint64_t offset,
                                                            uint64_t length) {
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  std::vector<ChunkLocation> out;
  const uint64_t end = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
  ZIPNN_RETURN_IF_ERROR(ChunksIn(*txn, ino, offset, end, out));
  return out;
}

Status StoreImpl::ReadFrame(const ChunkLocation& chunk, std::vector<uint8_t>& frame) {
  if (chunk.frame_size < kFrameHeaderSize || chunk.frame_size > MaxFrameSize(kMaxChunkSize)) {
    return Status::Corrupt("bad frame size in chunk record");
  }
  frame.resize(chunk.frame_size);
  ZIPNN_RETURN_IF_ERROR(packs_.Read(chunk.pack_id, chunk.pack_offset, frame));
  Result<FrameInfo> info = ParseFrameHeader(frame);
  if (!info.ok()) return info.status();
  if (info->frame_size() != chunk.frame_size || info->raw_size != chunk.raw_size ||
      info->method != chunk.method) {
    return Status::Corrupt("frame header does not match its chunk record");
  }
  // The frame must be this chunk's, not another sound one a damaged record points at: its
  // checksum is the key's low half (below that size, VerifyChunk hashes the decoded bytes).
  const std::optional<uint64_t> sum = ChecksumFromHash(chunk.hash, chunk.raw_size);
  if (sum && *sum != info->checksum) return Status::Corrupt("frame is not its chunk record's");
  return Status::Ok();
}

Status VerifyChunk(const ChunkLocation& chunk, std::span<const uint8_t> decoded) {
  if (ChecksumFromHash(chunk.hash, chunk.raw_size) || HashChunk(decoded) == chunk.hash)
    return Status::Ok();  // (larger chunks: ReadFrame has matched the frame to the key)
  return Status::Corrupt("frame is not its chunk record's");
}

Result<size_t> StoreImpl::Read(uint64_t ino, uint64_t offset, std::span<uint8_t> out) {
  std::vector<ChunkLocation> chunks;
  uint64_t end = 0;
  {
    // The read transaction ends before any pack is touched: no long-lived readers.
    Result<lmdb::Txn> txn = env_->BeginRead();
    if (!txn.ok()) return txn.status();
    Result<InodeAttr> attr = GetAttrIn(*txn, ino);
    if (!attr.ok()) return attr.status();
    if (attr->kind != InodeKind::kFile) {
      return Status::InvalidArgument("inode " + std::to_string(ino) + " is not a regular file");
    }
    if (offset >= attr->size) return size_t{0};
    end = std::min<uint64_t>(attr->size, offset + out.size());
    ZIPNN_RETURN_IF_ERROR(ChunksIn(*txn, ino, offset, end, chunks));
  }
  if (!tls_decoder) tls_decoder = std::make_unique<FrameDecoder>();
  std::vector<uint8_t> frame, whole;
  uint64_t covered = offset;
  for (const ChunkLocation& c : chunks) {
    const uint64_t c_end = c.file_offset + c.raw_size;
    auto fail = [&](const Status& s) {
      return Status(s.code(), "inode " + std::to_string(ino) + " bytes [" +
                                  std::to_string(c.file_offset) + ", " + std::to_string(c_end) +
                                  "): " + s.message());
    };
    if (c.file_offset > covered) return fail(Status::Corrupt("hole in the offset index"));
    Status st = ReadFrame(c, frame);
    if (!st.ok()) return fail(st);
    const uint64_t from = std::max(offset, c.file_offset), to = std::min(end, c_end);
    std::span<uint8_t> dest = out.subspan(from - offset, to - from);
    if (from == c.file_offset && to == c_end) {
      st = tls_decoder->Decode(frame, dest);  // whole chunk: decode in place
      if (st.ok()) st = VerifyChunk(c, dest);
    } else {
      whole.resize(c.raw_size);
      st = tls_decoder->Decode(frame, whole);
      if (st.ok()) st = VerifyChunk(c, whole);
      if (st.ok()) std::memcpy(dest.data(), whole.data() + (from - c.file_offset), dest.size());
    }
    if (!st.ok()) return fail(st);
    covered = to;
  }
  if (covered != end)
    return Status::Corrupt("inode " + std::to_string(ino) + ": offset index ends early");
  return static_cast<size_t>(end - offset);
}

}  // namespace zipnn::index
