// Store: creating and opening a store (its reads: store_read.cc).
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
#include <thread>

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
  // A daemon lets go of the lock a few (on a loaded machine, tens of) milliseconds after
  // `fusermount3 -u` returns, while it winds down: a command run right after the unmount waits
  // that long rather than fail. Holders that stay are told after the grace period.
  constexpr auto kGrace = std::chrono::seconds(1);
  const auto deadline = std::chrono::steady_clock::now() + kGrace;
  while (::flock(fd.get(), (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return Status::FromErrno(errno, path);
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::Busy(dir + ": store is locked by another process (a running import or mount)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return fd;
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

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

InodeAttr NewRootInode() {
  InodeAttr root;
  root.ino = kRootInode;
  root.kind = InodeKind::kDirectory;
  root.mode = S_IFDIR | 0755;
  root.uid = ::getuid();
  root.gid = ::getgid();
  root.atime_ns = root.mtime_ns = root.ctime_ns = NowNs();
  root.nlink = 2;
  return root;
}

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
    const InodeAttr root = NewRootInode();
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
  // A reader that may not write LMDB's lock file (a store owned by another user, or on read-only
  // media; or create it, where a backup left it out) reads without LMDB's reader table, holding
  // the store's shared lock instead, which keeps writers out.
  const std::string lmdb_lock = dir_ + "/index/lock.mdb";
  auto may_write = [](const std::string& path) {
    return ::faccessat(AT_FDCWD, path.c_str(), W_OK, AT_EACCESS) == 0;
  };
  const bool no_lock =
      !opts_.writable && !may_write(lmdb_lock) && !(errno == ENOENT && may_write(dir_ + "/index"));
  if (no_lock && !lock_fd_.valid()) {
    Result<UniqueFd> lock = LockStore(dir_, /*shared=*/true);
    if (!lock.ok()) return lock.status();
    if (!lock->valid()) {
      return Status::FromErrno(
          EACCES, dir_ + ": neither " + lmdb_lock + " may be written nor LOCK be read");
    }
    lock_fd_ = std::move(*lock);
  }
  // A repair that stopped between its renames left its complete copy of the index (repair.cc).
  struct stat st;
  if (opts_.writable && ::stat((dir_ + "/index").c_str(), &st) != 0 && errno == ENOENT &&
      ::rename((dir_ + "/index.rebuilt").c_str(), (dir_ + "/index").c_str()) == 0) {
    ZIPNN_RETURN_IF_ERROR(SyncDir(dir_));
  }
  // (A writer's LMDB would make a new, empty one: the store would change, and then be refused.)
  if (::stat((dir_ + "/index/data.mdb").c_str(), &st) != 0) {
    return Status::FromErrno(errno, dir_ + "/index/data.mdb: the store's index");
  }
  // (LMDB read it as "Bad file descriptor"; a writer made a new, empty index in its place.)
  if (st.st_size == 0) {
    return Status::Corrupt(dir_ +
                           "/index/data.mdb: empty, the index is lost; restore it from a backup, "
                           "or re-import into a new store");
  }
  Result<std::unique_ptr<lmdb::Env>> env =
      lmdb::Env::Open(dir_ + "/index", opts_.writable, kDbNames, size_t{1} << 30, no_lock);
  if (!env.ok()) return WithPath(dir_, env.status());
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
  Result<std::map<uint32_t, std::optional<uint64_t>>> lengths = PackLengths(*txn, dbi(kMeta));
  if (!lengths.ok()) return lengths.status();
  // A pack's committed length; -1 for a pack the index does not know.
  auto committed = [&](uint32_t id) -> Result<int64_t> {
    auto it = lengths->find(id);
    if (it == lengths->end()) return int64_t{-1};
    if (!it->second) return Status::Corrupt("pack length record");
    return static_cast<int64_t>(*it->second);
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
  // A pack the index says holds committed frames, and the directory lacks, lost them all.
  for (const auto& [id, length] : *lengths) {
    if (length.value_or(0) > 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) {
      lost_frames_ = PackPath(packs_dir, id) + ": missing, but the index says it holds frames";
      break;
    }
  }
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
    if (!w.ok() && lost_frames_.empty()) lost_frames_ = w.status().message();
  }
  Result<int64_t> len = committed(current);
  if (!len.ok()) return len.status();
  if (::access(PackPath(packs_dir, current).c_str(), F_OK) == 0) len = keep_at_least(current, *len);
  if (!len.ok()) return len.status();
  Result<PackWriter> w =
      PackWriter::Open(packs_dir, current, static_cast<uint64_t>(std::max<int64_t>(*len, 0)));
  if (!w.ok() && w.status().code() == StatusCode::kCorrupt) {
    if (lost_frames_.empty()) lost_frames_ = w.status().message();
    // Never append to a damaged pack: new frames go to a fresh one.
    uint32_t fresh = current + 1;
    for (uint32_t id : ids) fresh = std::max(fresh, id + 1);
    w = PackWriter::Open(packs_dir, fresh, 0);
  }
  if (!w.ok()) return w.status();
  pack_writer_.emplace(std::move(*w));
  return Status::Ok();
}

}  // namespace zipnn::index
