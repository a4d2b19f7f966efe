// RAII over LMDB: one environment, short transactions, cursors that cannot outlive them.
// Internal to index/.
//
// LMDB's rules, kept here so the store cannot break them: one MDB_env per process per file; one
// write transaction at a time (Env::Update holds a mutex); mdb_env_set_mapsize only while no
// transaction of this process is active (every transaction holds the resize lock shared, a resize
// takes it exclusive); a cursor of a write transaction must be closed before the transaction ends
// (declare a Cursor after its Txn, in the same or an inner scope).
#pragma once

#include <lmdb.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "codec/status.h"
#include "index/map_guard.h"

namespace zipnn::index::lmdb {

Status Error(int rc, std::string_view what);

inline MDB_val Val(std::span<const uint8_t> s) {
  return MDB_val{s.size(), const_cast<uint8_t*>(s.data())};
}
inline MDB_val Val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
inline std::span<const uint8_t> Bytes(const MDB_val& v) {
  return {static_cast<const uint8_t*>(v.mv_data), v.mv_size};
}

class Env;

class Txn {
 public:
  Txn(Txn&& o) noexcept;
  Txn& operator=(Txn&&) = delete;
  Txn(const Txn&) = delete;
  ~Txn();  // aborts if not committed

  MDB_txn* get() const { return txn_; }
  // Get: NotFound when absent. The value points into the map: valid until the txn ends or a write.
  Status Get(MDB_dbi dbi, MDB_val key, MDB_val& value);
  Status Put(MDB_dbi dbi, MDB_val key, MDB_val value, unsigned flags = 0);
  Status Del(MDB_dbi dbi, MDB_val key);  // NotFound when absent
  Status Commit();
  bool map_full() const { return map_full_; }

 private:
  friend class Env;
  Txn(MDB_txn* txn, std::shared_lock<std::shared_mutex> lock) : txn_(txn), lock_(std::move(lock)) {}
  Status Check(int rc, std::string_view what);

  MDB_txn* txn_ = nullptr;
  std::shared_lock<std::shared_mutex> lock_;  // keeps the map from being resized under us
  bool map_full_ = false;
};

class Cursor {
 public:
  static Result<Cursor> Open(Txn& txn, MDB_dbi dbi);
  Cursor(Cursor&& o) noexcept : cursor_(o.cursor_) { o.cursor_ = nullptr; }
  Cursor& operator=(Cursor&&) = delete;
  ~Cursor() {
    if (cursor_ != nullptr) mdb_cursor_close(cursor_);
  }
  // Returns false at the end (MDB_NOTFOUND); other errors in `st`.
  bool Get(MDB_val& key, MDB_val& value, MDB_cursor_op op, Status& st);

 private:
  explicit Cursor(MDB_cursor* c) : cursor_(c) {}
  MDB_cursor* cursor_ = nullptr;
};

class Env {
 public:
  // Opens (creating when writable) the environment in directory `path` and the named databases
  // `names` (their handles in dbis(), in the same order).
  // `map_size` is where a new environment starts (tests make it small to exercise growth).
  // `no_lock` (read-only only): without LMDB's reader table in lock.mdb, for a reader that may
  // not write it; the caller must keep every writer out meanwhile.
  static Result<std::unique_ptr<Env>> Open(const std::string& path, bool writable,
                                           std::span<const char* const> names,
                                           size_t map_size = size_t{1} << 30, bool no_lock = false);
  ~Env();

  MDB_dbi dbi(size_t i) const { return dbis_[i]; }
  Result<Txn> BeginRead();
  // Copies every record of databases 0..n-1 into `to` (of the same databases), which gets
  // pages of its own making. Stops a database at a record it cannot read: returns, per database,
  // the records copied, those left out, and whether it stopped early.
  struct CopyCount {
    uint64_t records = 0, unkeyable = 0;  // copied; left out (a key LMDB cannot hold)
    bool stopped = false;
  };
  Result<std::vector<CopyCount>> CopyRecords(Env& to, size_t n);
  // Runs `fn` in a write transaction and commits it. When the map is full the transaction is
  // aborted, the map doubled and `fn` run again from the start: `fn` must only touch the txn.
  Status Update(const std::function<Status(Txn&)>& fn);

 private:
  Env() = default;
  Status Resize(size_t new_size);  // 0: adopt the size another process set
  void WatchMap();                 // (again after each resize: the map may move)

  MDB_env* env_ = nullptr;
  std::string path_;
  MapGuard guard_;
  MDB_dbi dbis_[16] = {};
  bool writable_ = false;
  std::shared_mutex resize_mutex_;
  std::mutex writer_mutex_;
};

}  // namespace zipnn::index::lmdb
