#include "index/lmdb.h"

#include <errno.h>  // program_invocation_short_name
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>

namespace zipnn::index::lmdb {
namespace {

// LMDB asserts on some damaged pages (a branch page where a leaf belongs) and then aborts: the
// process would die of SIGABRT with LMDB's source line. As for a fault on its pages (MapGuard),
// say which index is damaged and exit 1; returning would reach the abort.
void OnAssert(MDB_env* env, const char* what) {
  const char* dir = nullptr;
  if (mdb_env_get_path(env, &dir) != MDB_SUCCESS || dir == nullptr) dir = "index";
  char msg[1024];
  std::snprintf(msg, sizeof msg,
                "%s/data.mdb: damaged (LMDB: %s); stopping. Restore the index from a backup, or "
                "re-import into a new store.",
                dir, what);
  std::fprintf(stderr, "%s: %s\n", program_invocation_short_name, msg);
  // A mount daemon's stderr is /dev/null: its log is syslog.
  ::syslog(LOG_ERR, "%s", msg);
  ::_exit(1);
}

}  // namespace

Status Error(int rc, std::string_view what) {
  std::string msg = "lmdb " + std::string(what) + ": " + mdb_strerror(rc);
  if (rc == MDB_NOTFOUND) return Status::NotFound(std::move(msg));
  if (rc == MDB_MAP_FULL || rc == ENOSPC) return Status::NoSpace(std::move(msg));
  if (rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == MDB_INVALID) {
    return Status::Corrupt(std::move(msg));
  }
  // LMDB fails every call of a transaction after one met a damaged page: say what that means.
  if (rc == MDB_BAD_TXN) {
    return Status::Corrupt(msg +
                           " (a page of the index could not be read: it may be damaged; "
                           "zipnnfs fsck tells)");
  }
  if (rc == MDB_VERSION_MISMATCH) return Status::Unsupported(std::move(msg));
  return Status::Io(std::move(msg));
}

Txn::Txn(Txn&& o) noexcept : txn_(o.txn_), lock_(std::move(o.lock_)), map_full_(o.map_full_) {
  o.txn_ = nullptr;
}

Txn::~Txn() {
  if (txn_ != nullptr) mdb_txn_abort(txn_);
}

Status Txn::Check(int rc, std::string_view what) {
  if (rc == MDB_SUCCESS) return Status::Ok();
  if (rc == MDB_MAP_FULL) map_full_ = true;
  return Error(rc, what);
}

Status Txn::Get(MDB_dbi dbi, MDB_val key, MDB_val& value) {
  return Check(mdb_get(txn_, dbi, &key, &value), "get");
}

Status Txn::Put(MDB_dbi dbi, MDB_val key, MDB_val value, unsigned flags) {
  return Check(mdb_put(txn_, dbi, &key, &value, flags), "put");
}

Status Txn::Del(MDB_dbi dbi, MDB_val key) {
  return Check(mdb_del(txn_, dbi, &key, nullptr), "del");
}

Status Txn::Commit() {
  const int rc = mdb_txn_commit(txn_);
  txn_ = nullptr;  // freed by LMDB whether or not the commit succeeded
  lock_ = {};
  return Check(rc, "commit");
}

Result<Cursor> Cursor::Open(Txn& txn, MDB_dbi dbi) {
  MDB_cursor* c = nullptr;
  const int rc = mdb_cursor_open(txn.get(), dbi, &c);
  if (rc != MDB_SUCCESS) return Error(rc, "cursor open");
  return Cursor(c);
}

bool Cursor::Get(MDB_val& key, MDB_val& value, MDB_cursor_op op, Status& st) {
  const int rc = mdb_cursor_get(cursor_, &key, &value, op);
  if (rc == MDB_SUCCESS) return true;
  if (rc != MDB_NOTFOUND) st = Error(rc, "cursor get");
  return false;
}

Result<std::unique_ptr<Env>> Env::Open(const std::string& path, bool writable,
                                       std::span<const char* const> names, size_t map_size,
                                       bool no_lock) {
  std::unique_ptr<Env> env(new Env());
  env->writable_ = writable;
  if (names.size() > std::size(env->dbis_)) return Status::InvalidArgument("too many databases");
  int rc = mdb_env_create(&env->env_);
  if (rc != MDB_SUCCESS) return Error(rc, "env create");
  mdb_env_set_assert(env->env_, OnAssert);
  mdb_env_set_maxdbs(env->env_, static_cast<MDB_dbi>(std::size(env->dbis_)));
  // Address space only: the file grows as used. An existing environment keeps a larger size
  // recorded in its file.
  mdb_env_set_mapsize(env->env_, map_size);
  // NOTLS: read transactions are not tied to threads (FUSE requests hop between workers).
  unsigned flags = MDB_NOTLS;
  if (!writable) flags |= MDB_RDONLY | (no_lock ? MDB_NOLOCK : 0);
  rc = mdb_env_open(env->env_, path.c_str(), flags, 0644);
  if (rc != MDB_SUCCESS) return Error(rc, "open " + path);
  env->path_ = path + "/data.mdb";
  env->WatchMap();

  MDB_txn* txn = nullptr;
  rc = mdb_txn_begin(env->env_, nullptr, writable ? 0 : MDB_RDONLY, &txn);
  if (rc != MDB_SUCCESS) return Error(rc, "begin");
  for (size_t i = 0; i < names.size(); ++i) {
    rc = mdb_dbi_open(txn, names[i], writable ? MDB_CREATE : 0, &env->dbis_[i]);
    if (rc != MDB_SUCCESS) {
      mdb_txn_abort(txn);
      return Error(rc, std::string("open database ") + names[i]);
    }
  }
  rc = mdb_txn_commit(txn);
  if (rc != MDB_SUCCESS) return Error(rc, "commit");
  return env;
}

Env::~Env() {
  guard_.Unwatch();  // (before the map goes: its addresses may serve another mapping next)
  if (env_ != nullptr) mdb_env_close(env_);
}

void Env::WatchMap() {
  mdb_filehandle_t fd;
  struct stat st;
  if (mdb_env_get_fd(env_, &fd) == MDB_SUCCESS && ::fstat(fd, &st) == 0)
    guard_.WatchFile(st.st_dev, st.st_ino, path_);
}

Status Env::Resize(size_t new_size) {
  std::unique_lock lock(resize_mutex_);
  const int rc = mdb_env_set_mapsize(env_, new_size);
  if (rc == MDB_SUCCESS) WatchMap();
  return rc == MDB_SUCCESS ? Status::Ok() : Error(rc, "set map size");
}

Result<Txn> Env::BeginRead() {
  for (int attempt = 0;; ++attempt) {
    std::shared_lock lock(resize_mutex_);
    MDB_txn* txn = nullptr;
    const int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
    if (rc == MDB_SUCCESS) return Txn(txn, std::move(lock));
    if (rc != MDB_MAP_RESIZED || attempt > 3) return Error(rc, "begin read");
    lock.unlock();
    ZIPNN_RETURN_IF_ERROR(Resize(0));  // another process grew the map
  }
}

Status Env::Update(const std::function<Status(Txn&)>& fn) {
  if (!writable_) return Status::InvalidArgument("store is open read-only");
  std::lock_guard writer(writer_mutex_);
  for (int attempt = 0;; ++attempt) {
    bool map_full = false;
    {
      std::shared_lock lock(resize_mutex_);
      MDB_txn* raw = nullptr;
      int rc = mdb_txn_begin(env_, nullptr, 0, &raw);
      if (rc == MDB_MAP_RESIZED) {
        lock.unlock();
        ZIPNN_RETURN_IF_ERROR(Resize(0));
        continue;
      }
      if (rc != MDB_SUCCESS) return Error(rc, "begin write");
      Txn txn(raw, std::move(lock));
      Status st = fn(txn);
      if (st.ok()) {
        st = txn.Commit();
        // LMDB reports a short write as EIO: on a full disk, say so.
        struct statvfs fs;
        if (st.code() == StatusCode::kIo && ::statvfs(path_.c_str(), &fs) == 0 &&
            static_cast<uint64_t>(::geteuid() == 0 ? fs.f_bfree : fs.f_bavail) * fs.f_frsize <
                (1u << 20)) {
          st = Status::NoSpace(st.message() + " (the disk is full)");
        }
      }
      if (st.ok()) return st;
      map_full = txn.map_full();
      if (!map_full || attempt > 20) return st;
    }  // the transaction is aborted here, before the resize
    MDB_envinfo info;
    mdb_env_info(env_, &info);
    ZIPNN_RETURN_IF_ERROR(Resize(info.me_mapsize * 2));
  }
}

Result<std::vector<Env::CopyCount>> Env::CopyRecords(Env& to, size_t n) {
  std::vector<CopyCount> counts(n);
  for (size_t i = 0; i < n; ++i) {
    // Read whole, then written in one transaction: Update may run its function again.
    std::vector<std::pair<std::string, std::string>> records;
    {
      Result<Txn> txn = BeginRead();
      if (!txn.ok()) return txn.status();
      Result<Cursor> c = Cursor::Open(*txn, dbi(i));
      if (!c.ok()) return c.status();
      MDB_val k, v;
      Status st;
      const size_t max_key = static_cast<size_t>(mdb_env_get_maxkeysize(to.env_));
      for (bool more = c->Get(k, v, MDB_FIRST, st); more; more = c->Get(k, v, MDB_NEXT, st)) {
        if (k.mv_size == 0 || k.mv_size > max_key) {
          ++counts[i].unkeyable;
          continue;
        }
        records.emplace_back(std::string(static_cast<const char*>(k.mv_data), k.mv_size),
                             std::string(static_cast<const char*>(v.mv_data), v.mv_size));
      }
      counts[i].stopped = !st.ok();
    }
    counts[i].records = records.size();
    ZIPNN_RETURN_IF_ERROR(to.Update([&](Txn& txn) -> Status {
      for (auto& [k, v] : records) {
        ZIPNN_RETURN_IF_ERROR(
            txn.Put(to.dbi(i), MDB_val{k.size(), k.data()}, MDB_val{v.size(), v.data()}));
      }
      return Status::Ok();
    }));
  }
  return counts;
}

}  // namespace zipnn::index::lmdb
