// Damaging a store's index the way a hostile or corrupted one looks, for regression tests: the
// LMDB environment of a closed store (STORE/index) is opened with liblmdb itself and its records
// rewritten (docs/format.md, "The store", has every key and value; index/records.h the encoders).
//
// Only one LMDB environment per file may be open in a process: destroy the IndexEditor before
// opening the Store again.
#pragma once

#include <gtest/gtest.h>
#include <lmdb.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "index/index.h"
#include "index/records.h"

namespace zipnn::index::test {

// The named databases of a store's index (docs/format.md).
inline constexpr const char* kMetaDb = "meta";
inline constexpr const char* kInodesDb = "inodes";
inline constexpr const char* kDirentsDb = "dirents";
inline constexpr const char* kExtentsDb = "extents";
inline constexpr const char* kChunksDb = "chunks";

// The index of a closed store, open for writing; every call is one write transaction.
class IndexEditor {
 public:
  explicit IndexEditor(const std::string& store_dir) {
    int rc = ::mdb_env_create(&env_);
    // As index/lmdb.cc opens it: a directory environment, up to 16 named databases, 1 GiB map.
    if (rc == MDB_SUCCESS) rc = ::mdb_env_set_maxdbs(env_, 16);
    if (rc == MDB_SUCCESS) rc = ::mdb_env_set_mapsize(env_, size_t{1} << 30);
    if (rc == MDB_SUCCESS) rc = ::mdb_env_open(env_, (store_dir + "/index").c_str(), 0, 0644);
    if (rc != MDB_SUCCESS) error_ = "open " + store_dir + "/index: " + ::mdb_strerror(rc);
  }
  ~IndexEditor() {
    if (env_ != nullptr) ::mdb_env_close(env_);
  }
  IndexEditor(const IndexEditor&) = delete;
  IndexEditor& operator=(const IndexEditor&) = delete;

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

  // The value of `key` in database `db`; nullopt when absent (or on an error).
  std::optional<std::string> Get(const char* db, std::string_view key) {
    std::optional<std::string> value;
    (void)InTxn(db, [&](MDB_txn* txn, MDB_dbi dbi) {
      MDB_val k = Val(key), v{};
      const int rc = ::mdb_get(txn, dbi, &k, &v);
      if (rc == MDB_SUCCESS) value.emplace(static_cast<const char*>(v.mv_data), v.mv_size);
      return rc == MDB_NOTFOUND ? MDB_SUCCESS : rc;
    });
    return value;
  }
  ::testing::AssertionResult Put(const char* db, std::string_view key, std::string_view value) {
    return InTxn(db, [&](MDB_txn* txn, MDB_dbi dbi) {
      MDB_val k = Val(key), v = Val(value);
      return ::mdb_put(txn, dbi, &k, &v, 0);
    });
  }
  ::testing::AssertionResult Del(const char* db, std::string_view key) {
    return InTxn(db, [&](MDB_txn* txn, MDB_dbi dbi) {
      MDB_val k = Val(key);
      return ::mdb_del(txn, dbi, &k, nullptr);
    });
  }

 private:
  static MDB_val Val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
  ::testing::AssertionResult InTxn(const char* db,
                                   const std::function<int(MDB_txn*, MDB_dbi)>& fn) {
    if (!ok()) return ::testing::AssertionFailure() << error_;
    MDB_txn* txn = nullptr;
    int rc = ::mdb_txn_begin(env_, nullptr, 0, &txn);
    if (rc != MDB_SUCCESS) return ::testing::AssertionFailure() << "begin: " << ::mdb_strerror(rc);
    MDB_dbi dbi = 0;
    rc = ::mdb_dbi_open(txn, db, 0, &dbi);
    if (rc == MDB_SUCCESS) rc = fn(txn, dbi);
    if (rc != MDB_SUCCESS) {
      ::mdb_txn_abort(txn);
      return ::testing::AssertionFailure() << db << ": " << ::mdb_strerror(rc);
    }
    rc = ::mdb_txn_commit(txn);
    if (rc != MDB_SUCCESS) return ::testing::AssertionFailure() << "commit: " << ::mdb_strerror(rc);
    return ::testing::AssertionSuccess();
  }

  MDB_env* env_ = nullptr;
  std::string error_;
};

inline std::string AsString(std::span<const uint8_t> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// Directory entry `name` (any bytes, even "" or "../x") in directory `parent`, naming `child`.
inline ::testing::AssertionResult PutDirent(IndexEditor& ed, uint64_t parent, std::string_view name,
                                            uint64_t child, InodeKind kind) {
  uint8_t v[rec::kDirentSize];
  rec::EncodeDirent(child, kind, v);
  return ed.Put(kDirentsDb, rec::NamedKey(parent, name), AsString(v));
}

// Sets the meta counter of the next inode number to hand out.
inline ::testing::AssertionResult SetNextInode(IndexEditor& ed, uint64_t next) {
  uint8_t v[8];
  rec::PutLE<uint64_t>(v, next);
  return ed.Put(kMetaDb, rec::kMetaNextInode, AsString(v));
}

// The inode `path` ("/a/b") leads to, walking directory entries from the root; 0 if none.
inline uint64_t LookupIno(IndexEditor& ed, std::string_view path) {
  uint64_t ino = kRootInode;
  while (!path.empty()) {
    const size_t slash = path.find('/');
    const std::string_view part = path.substr(0, slash);
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
    if (part.empty()) continue;
    const std::optional<std::string> v = ed.Get(kDirentsDb, rec::NamedKey(ino, part));
    if (!v || v->size() != rec::kDirentSize) return 0;
    ino = rec::GetLE<uint64_t>(reinterpret_cast<const uint8_t*>(v->data()));
  }
  return ino;
}

// Rewrites the extent of inode `ino` at file offset `offset`.
inline ::testing::AssertionResult EditExtent(IndexEditor& ed, uint64_t ino, uint64_t offset,
                                             const std::function<void(rec::Extent&)>& edit) {
  const rec::ExtentKey key(ino, offset);
  const std::optional<std::string> v = ed.Get(kExtentsDb, AsString(key.bytes()));
  if (!v) return ::testing::AssertionFailure() << "no extent " << ino << "@" << offset;
  std::optional<rec::Extent> e =
      rec::DecodeExtent({reinterpret_cast<const uint8_t*>(v->data()), v->size()});
  if (!e) return ::testing::AssertionFailure() << "bad extent " << ino << "@" << offset;
  edit(*e);
  uint8_t out[rec::kExtentSize];
  rec::EncodeExtent(*e, out);
  return ed.Put(kExtentsDb, AsString(key.bytes()), AsString(out));
}

// The chunk record key (hash) of the extent of inode `ino` at `offset`; empty if none.
inline std::string ChunkKeyAt(IndexEditor& ed, uint64_t ino, uint64_t offset) {
  const rec::ExtentKey key(ino, offset);
  const std::optional<std::string> v = ed.Get(kExtentsDb, AsString(key.bytes()));
  return v && v->size() == rec::kExtentSize ? v->substr(0, 16) : std::string();
}

inline std::optional<rec::Chunk> GetChunk(IndexEditor& ed, std::string_view hash) {
  const std::optional<std::string> v = ed.Get(kChunksDb, hash);
  if (!v) return std::nullopt;
  return rec::DecodeChunk({reinterpret_cast<const uint8_t*>(v->data()), v->size()});
}

// Rewrites the chunk record of `hash`.
inline ::testing::AssertionResult EditChunk(IndexEditor& ed, std::string_view hash,
                                            const std::function<void(rec::Chunk&)>& edit) {
  std::optional<rec::Chunk> c = GetChunk(ed, hash);
  if (!c) return ::testing::AssertionFailure() << "no chunk record of that hash";
  edit(*c);
  uint8_t out[rec::kChunkSize];
  rec::EncodeChunk(*c, out);
  return ed.Put(kChunksDb, hash, AsString(out));
}

// Points the chunk record of `hash` at the frame of chunk `other` (same pack, offset, frame
// size, raw size, method and dtype; its refcount kept): a sound frame, but another chunk's.
inline ::testing::AssertionResult PointChunkAtOthersFrame(IndexEditor& ed, std::string_view hash,
                                                          std::string_view other) {
  const std::optional<rec::Chunk> o = GetChunk(ed, other);
  if (!o) return ::testing::AssertionFailure() << "no chunk record for the other hash";
  return EditChunk(ed, hash, [&](rec::Chunk& c) {
    const uint64_t refcount = c.refcount;
    c = *o;
    c.refcount = refcount;
  });
}

}  // namespace zipnn::index::test
