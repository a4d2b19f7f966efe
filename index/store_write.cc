// Store: the writer path. Everything that changes the store holds write_mutex_, so the pack
// writer and the chunks database only ever see one change at a time.
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "index/store_impl.h"

namespace zipnn::index {

Result<uint64_t> GetU64(lmdb::Txn& txn, MDB_dbi dbi, std::string_view key) {
  MDB_val v;
  ZIPNN_RETURN_IF_ERROR(txn.Get(dbi, lmdb::Val(key), v));
  if (v.mv_size != 8) return Status::Corrupt("meta " + std::string(key) + ": bad record");
  return rec::GetLE<uint64_t>(static_cast<const uint8_t*>(v.mv_data));
}

Result<std::map<uint32_t, std::optional<uint64_t>>> PackLengths(lmdb::Txn& txn, MDB_dbi meta) {
  Result<lmdb::Cursor> cur = lmdb::Cursor::Open(txn, meta);
  if (!cur.ok()) return cur.status();
  std::map<uint32_t, std::optional<uint64_t>> lengths;
  const std::string prefix = rec::PackLengthKey(0).substr(0, 5);  // "pack/"
  MDB_val k = lmdb::Val(prefix), v;
  Status st;
  for (bool have = cur->Get(k, v, MDB_SET_RANGE, st); have; have = cur->Get(k, v, MDB_NEXT, st)) {
    if (k.mv_size != 9 || std::memcmp(k.mv_data, prefix.data(), 5) != 0) break;
    std::optional<uint64_t>& length =
        lengths[rec::GetBE32(static_cast<const uint8_t*>(k.mv_data) + 5)];
    if (v.mv_size == 8) length = rec::GetLE<uint64_t>(static_cast<const uint8_t*>(v.mv_data));
  }
  ZIPNN_RETURN_IF_ERROR(st);
  return lengths;
}

Status PutU64(lmdb::Txn& txn, MDB_dbi dbi, std::string_view key, uint64_t value) {
  uint8_t b[8];
  rec::PutLE<uint64_t>(b, value);
  return txn.Put(dbi, lmdb::Val(key), lmdb::Val(b));
}

Status PutU32(lmdb::Txn& txn, MDB_dbi dbi, std::string_view key, uint32_t value) {
  uint8_t b[4];
  rec::PutLE<uint32_t>(b, value);
  return txn.Put(dbi, lmdb::Val(key), lmdb::Val(b));
}

Status PutInode(lmdb::Txn& txn, MDB_dbi dbi, const InodeAttr& a) {
  uint8_t v[rec::kInodeSize];
  rec::EncodeInode(a, v);
  rec::InodeKey key(a.ino);
  return txn.Put(dbi, lmdb::Val(key.bytes()), lmdb::Val(v));
}

namespace {

InodeAttr FromNew(const NewAttr& n, InodeKind kind) {
  InodeAttr a;
  a.kind = kind;
  a.mode = FileTypeBits(kind) | (n.mode & 07777);
  a.uid = n.uid;
  a.gid = n.gid;
  a.atime_ns = n.atime_ns;
  a.mtime_ns = n.mtime_ns;
  a.ctime_ns = n.ctime_ns;
  a.nlink = kind == InodeKind::kDirectory ? 2 : 1;
  return a;
}

// A file or symlink never takes a directory's name (as cp -a refuses).
Status DirectoryInTheWay() {
  return Status::Exists("cannot overwrite a directory with a non-directory");
}

}  // namespace

Result<InodeAttr> StoreImpl::DirectoryIn(lmdb::Txn& txn, uint64_t ino) {
  Result<InodeAttr> dir = GetAttrIn(txn, ino);
  if (dir.ok() && dir->kind != InodeKind::kDirectory) {
    return Status::InvalidArgument("inode " + std::to_string(ino) + " is not a directory");
  }
  return dir;
}

Status ValidateTarget(std::string_view target) {
  if (target.empty() || target.size() > 4095) {
    return Status::InvalidArgument("symlink target must have 1 to 4095 bytes");
  }
  // (No symlink on a host holds one; fsck takes one for damage.)
  if (target.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument("symlink target holds a NUL byte");
  }
  return Status::Ok();
}

Result<InodeAttr> StoreImpl::CreateInode(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                                         InodeAttr attr) {
  Result<InodeAttr> dir = DirectoryIn(txn, parent);
  if (!dir.ok()) return dir.status();
  const std::string dirent_key = rec::NamedKey(parent, name);
  MDB_val existing;
  Status st = txn.Get(dbi(kDirents), lmdb::Val(dirent_key), existing);
  if (st.ok()) return Status::Exists(Quote(name) + " exists");
  if (st.code() != StatusCode::kNotFound) return st;

  Result<uint64_t> next = GetU64(txn, dbi(kMeta), rec::kMetaNextInode);
  if (!next.ok()) return next.status();
  attr.ino = *next;
  {  // a damaged counter must not make a new file overwrite an old one
    const rec::InodeKey key(attr.ino);
    MDB_val old;
    st = txn.Get(dbi(kInodes), lmdb::Val(key.bytes()), old);
    if (st.ok()) {
      return Status::Corrupt("the next free inode number (" + std::to_string(attr.ino) +
                             ") is in use: damaged store metadata (see zipnnfs fsck)");
    }
    if (st.code() != StatusCode::kNotFound) return st;
  }
  ZIPNN_RETURN_IF_ERROR(PutU64(txn, dbi(kMeta), rec::kMetaNextInode, *next + 1));
  ZIPNN_RETURN_IF_ERROR(PutInode(txn, dbi(kInodes), attr));
  uint8_t dirent[rec::kDirentSize];
  rec::EncodeDirent(attr.ino, attr.kind, dirent);
  ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kDirents), lmdb::Val(dirent_key), lmdb::Val(dirent)));
  if (attr.kind == InodeKind::kDirectory) {  // the new directory's ".." links its parent
    ++dir->nlink;
    ZIPNN_RETURN_IF_ERROR(PutInode(txn, dbi(kInodes), *dir));
  }
  return attr;
}

Status StoreImpl::DeleteKeysOf(lmdb::Txn& txn, Db db, uint64_t ino) {
  std::vector<std::string> keys;
  {
    Result<lmdb::Cursor> cur = lmdb::Cursor::Open(txn, dbi(db));
    if (!cur.ok()) return cur.status();
    rec::InodeKey start(ino);
    MDB_val k = lmdb::Val(start.bytes()), v;
    Status st;
    for (bool have = cur->Get(k, v, MDB_SET_RANGE, st); have && k.mv_size >= 8 && KeyIno(k) == ino;
         have = cur->Get(k, v, MDB_NEXT, st)) {
      keys.emplace_back(static_cast<const char*>(k.mv_data), k.mv_size);
    }
    ZIPNN_RETURN_IF_ERROR(st);
  }  // the cursor closes before the writes below
  for (const std::string& key : keys) ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(db), lmdb::Val(key)));
  return Status::Ok();
}

Status StoreImpl::PutXattrs(lmdb::Txn& txn, uint64_t ino,
                            const std::vector<std::pair<std::string, std::string>>& xattrs,
                            bool replace) {
  if (replace) ZIPNN_RETURN_IF_ERROR(DeleteKeysOf(txn, kXattrs, ino));
  for (const auto& [name, value] : xattrs) {
    if (name.empty() || name.size() > 255) return Status::InvalidArgument("bad xattr name");
    const std::string key = rec::NamedKey(ino, name);
    ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kXattrs), lmdb::Val(key), lmdb::Val(value)));
  }
  return Status::Ok();
}

Result<InodeAttr> StoreImpl::MkdirIn(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                                     const NewAttr& attr, bool merge) {
  if (merge) {
    Result<InodeAttr> old = LookupIn(txn, parent, name);
    // Re-importing a tree whose directory was chmod-ed or chown-ed brings the change along.
    if (old.ok() && old->kind == InodeKind::kDirectory) return SetDirAttrIn(txn, old->ino, attr);
    if (old.ok()) return Status::Exists("cannot overwrite a non-directory with a directory");
    if (old.status().code() != StatusCode::kNotFound) return old.status();
  }
  Result<InodeAttr> a = CreateInode(txn, parent, name, FromNew(attr, InodeKind::kDirectory));
  if (!a.ok()) return a.status();
  ZIPNN_RETURN_IF_ERROR(PutXattrs(txn, a->ino, attr.xattrs));
  return a;
}

Result<InodeAttr> StoreImpl::SymlinkIn(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                                       std::string_view target, const NewAttr& attr, bool replace) {
  InodeAttr a = FromNew(attr, InodeKind::kSymlink);
  a.mode = S_IFLNK | 0777;
  a.size = target.size();
  Result<InodeAttr> r = Status::NotFound("");
  if (replace) {
    // A re-imported tree whose link now points elsewhere (cp -a and rsync -a replace it).
    Result<InodeAttr> old = LookupIn(txn, parent, name);
    if (old.ok() && old->kind == InodeKind::kSymlink) {
      a.ino = old->ino;
      ZIPNN_RETURN_IF_ERROR(PutInode(txn, dbi(kInodes), a));
      r = a;
    } else if (old.ok() && old->kind == InodeKind::kDirectory) {
      return DirectoryInTheWay();
    } else if (old.ok()) {
      ZIPNN_RETURN_IF_ERROR(RemoveNonDirIn(txn, parent, name, *old));
    }
  }
  if (!r.ok()) r = CreateInode(txn, parent, name, a);
  if (!r.ok()) return r.status();
  rec::InodeKey key(r->ino);
  ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kSymlinks), lmdb::Val(key.bytes()), lmdb::Val(target)));
  ZIPNN_RETURN_IF_ERROR(PutXattrs(txn, r->ino, attr.xattrs));
  return r;
}

Result<InodeAttr> StoreImpl::SetDirAttrIn(lmdb::Txn& txn, uint64_t ino, const NewAttr& attr) {
  Result<InodeAttr> old = GetAttrIn(txn, ino);
  if (!old.ok()) return old.status();
  if (old->kind != InodeKind::kDirectory) return Status::InvalidArgument("not a directory");
  InodeAttr a = FromNew(attr, InodeKind::kDirectory);
  a.ino = old->ino;
  a.nlink = old->nlink;
  ZIPNN_RETURN_IF_ERROR(PutInode(txn, dbi(kInodes), a));
  // As cp -a onto a directory: the source's attributes are set, others the directory has stay.
  ZIPNN_RETURN_IF_ERROR(PutXattrs(txn, a.ino, attr.xattrs, /*replace=*/false));
  return a;
}

Status StoreImpl::SetTimesIn(lmdb::Txn& txn, uint64_t ino, int64_t atime_ns, int64_t mtime_ns) {
  Result<InodeAttr> a = GetAttrIn(txn, ino);
  if (!a.ok()) return a.status();
  a->atime_ns = atime_ns;
  a->mtime_ns = mtime_ns;
  return PutInode(txn, dbi(kInodes), *a);
}

Result<InodeAttr> StoreImpl::Mkdir(uint64_t parent, std::string_view name, const NewAttr& attr) {
  ZIPNN_RETURN_IF_ERROR(ValidateName(name));
  std::lock_guard lock(write_mutex_);
  // (As every writer: `import --to` must not make its directories, then be refused.)
  ZIPNN_RETURN_IF_ERROR(RefuseIfFramesLost());
  InodeAttr created;
  Status st = env_->Update([&](lmdb::Txn& txn) -> Status {
    Result<InodeAttr> a = MkdirIn(txn, parent, name, attr, false);
    if (a.ok()) created = *a;
    return a.status();
  });
  if (!st.ok()) return st;
  return created;
}

Result<InodeAttr> StoreImpl::Symlink(uint64_t parent, std::string_view name,
                                     std::string_view target, const NewAttr& attr) {
  ZIPNN_RETURN_IF_ERROR(ValidateName(name));
  ZIPNN_RETURN_IF_ERROR(ValidateTarget(target));
  std::lock_guard lock(write_mutex_);
  ZIPNN_RETURN_IF_ERROR(RefuseIfFramesLost());
  InodeAttr created;
  Status st = env_->Update([&](lmdb::Txn& txn) -> Status {
    Result<InodeAttr> a = SymlinkIn(txn, parent, name, target, attr, false);
    if (a.ok()) created = *a;
    return a.status();
  });
  if (!st.ok()) return st;
  return created;
}

Status StoreImpl::SetTimes(uint64_t ino, int64_t atime_ns, int64_t mtime_ns) {
  std::lock_guard lock(write_mutex_);
  ZIPNN_RETURN_IF_ERROR(RefuseIfFramesLost());
  return env_->Update(
      [&](lmdb::Txn& txn) -> Status { return SetTimesIn(txn, ino, atime_ns, mtime_ns); });
}

// Drops the extents of file `ino` and the chunk references they hold (at zero a chunk stays, for
// gc or a later file).
Status StoreImpl::DropExtentsIn(lmdb::Txn& txn, uint64_t ino) {
  std::vector<std::pair<rec::ExtentKey, ChunkHash>> old_extents;
  {
    Result<lmdb::Cursor> cur = lmdb::Cursor::Open(txn, dbi(kExtents));
    if (!cur.ok()) return cur.status();
    rec::ExtentKey start(ino, 0);
    MDB_val k = lmdb::Val(start.bytes()), v;
    Status cst;
    for (bool have = cur->Get(k, v, MDB_SET_RANGE, cst);
         have && k.mv_size == 16 && KeyIno(k) == ino; have = cur->Get(k, v, MDB_NEXT, cst)) {
      std::optional<rec::Extent> e = rec::DecodeExtent(lmdb::Bytes(v));
      if (!e) return Status::Corrupt("bad extent record");
      const uint8_t* kp = static_cast<const uint8_t*>(k.mv_data);
      old_extents.emplace_back(rec::ExtentKey(ino, rec::GetBE64(kp + 8)), e->hash);
    }
    ZIPNN_RETURN_IF_ERROR(cst);
  }  // the cursor closes before the writes below
  for (const auto& [key, hash] : old_extents) {
    ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kExtents), lmdb::Val(key.bytes())));
    MDB_val v;
    ZIPNN_RETURN_IF_ERROR(txn.Get(dbi(kChunks), lmdb::Val(hash), v));
    std::optional<rec::Chunk> c = rec::DecodeChunk(lmdb::Bytes(v));
    if (!c) return Status::Corrupt("bad chunk record");
    if (c->refcount > 0) --c->refcount;
    uint8_t cv[rec::kChunkSize];
    rec::EncodeChunk(*c, cv);
    ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kChunks), lmdb::Val(hash), lmdb::Val(cv)));
  }
  return Status::Ok();
}

Status StoreImpl::RemoveNonDirIn(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                                 const InodeAttr& old) {
  ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kDirents), lmdb::Val(rec::NamedKey(parent, name))));
  if (old.nlink > 1) {  // a hard link: the other names keep the inode
    InodeAttr a = old;
    --a.nlink;
    return PutInode(txn, dbi(kInodes), a);
  }
  if (old.kind == InodeKind::kFile) ZIPNN_RETURN_IF_ERROR(DropExtentsIn(txn, old.ino));
  ZIPNN_RETURN_IF_ERROR(DeleteKeysOf(txn, kXattrs, old.ino));
  const rec::InodeKey key(old.ino);
  if (old.kind == InodeKind::kSymlink) {
    ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kSymlinks), lmdb::Val(key.bytes())));
  }
  return txn.Del(dbi(kInodes), lmdb::Val(key.bytes()));
}

Status StoreImpl::LinkIn(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                         const InodeAttr& file) {
  Result<InodeAttr> dir = DirectoryIn(txn, parent);
  if (!dir.ok()) return dir.status();
  Result<InodeAttr> old = LookupIn(txn, parent, name);
  if (old.ok() && old->ino == file.ino) return Status::Ok();  // linked already
  if (old.ok() && old->kind == InodeKind::kDirectory) {
    return DirectoryInTheWay();
  }
  if (old.ok()) ZIPNN_RETURN_IF_ERROR(RemoveNonDirIn(txn, parent, name, *old));
  if (!old.ok() && old.status().code() != StatusCode::kNotFound) return old.status();
  Result<InodeAttr> now = GetAttrIn(txn, file.ino);  // (the removal may have changed it)
  if (!now.ok()) return now.status();
  ++now->nlink;
  ZIPNN_RETURN_IF_ERROR(PutInode(txn, dbi(kInodes), *now));
  uint8_t dirent[rec::kDirentSize];
  rec::EncodeDirent(file.ino, InodeKind::kFile, dirent);
  return txn.Put(dbi(kDirents), lmdb::Val(rec::NamedKey(parent, name)), lmdb::Val(dirent));
}

Result<InodeAttr> StoreImpl::CommitFileIn(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                                          const NewFile& f, const rec::ChunkMap& written,
                                          AddResult& result) {
  InodeAttr file = FromNew(f.attr, InodeKind::kFile);
  file.size = f.size;
  Result<InodeAttr> old = LookupIn(txn, parent, name);
  if (old.ok() && old->kind == InodeKind::kDirectory) {
    return DirectoryInTheWay();
  }
  // A symlink, or a file of other names too (a hard link: they keep its content, as a new
  // file renamed over this name leaves them), is replaced by a new inode.
  if (old.ok() && (old->kind != InodeKind::kFile || old->nlink > 1)) {
    ZIPNN_RETURN_IF_ERROR(RemoveNonDirIn(txn, parent, name, *old));
    old = Status::NotFound("");
  }
  if (old.ok()) {
    file.ino = old->ino;
    ZIPNN_RETURN_IF_ERROR(DropExtentsIn(txn, file.ino));
    ZIPNN_RETURN_IF_ERROR(PutInode(txn, dbi(kInodes), file));
  } else if (old.status().code() == StatusCode::kNotFound) {
    Result<InodeAttr> created = CreateInode(txn, parent, name, file);
    if (!created.ok()) return created.status();
    file.ino = created->ino;
  } else {
    return old.status();
  }
  for (size_t i = 0; i < f.extents.size(); ++i) {
    uint8_t ev[rec::kExtentSize];
    rec::EncodeExtent(f.extents[i], ev);
    rec::ExtentKey key(file.ino, f.offsets[i]);
    ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kExtents), lmdb::Val(key.bytes()), lmdb::Val(ev)));
  }
  result.frame_bytes = 0;
  for (const auto& [hash, count] : f.refs) {
    rec::Chunk c;
    MDB_val v;
    Status got = txn.Get(dbi(kChunks), lmdb::Val(hash), v);
    if (got.ok()) {
      std::optional<rec::Chunk> d = rec::DecodeChunk(lmdb::Bytes(v));
      if (!d) return Status::Corrupt("bad chunk record");
      c = *d;
    } else if (got.code() == StatusCode::kNotFound) {
      auto it = written.find(hash);
      if (it == written.end()) return Status::Corrupt("chunk vanished during import");
      c = it->second;
    } else {
      return got;
    }
    c.refcount += count;
    result.frame_bytes += uint64_t{c.frame_size} * count;
    uint8_t cv[rec::kChunkSize];
    rec::EncodeChunk(c, cv);
    ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kChunks), lmdb::Val(hash), lmdb::Val(cv)));
  }
  ZIPNN_RETURN_IF_ERROR(PutXattrs(txn, file.ino, f.attr.xattrs));
  result.attr = file;
  result.chunks = f.extents.size();
  return file;
}

// One file through the bulk pipeline: the same workers, writer and commit as an import.
Result<AddResult> StoreImpl::AddFile(uint64_t parent, std::string_view name, int source_fd,
                                     const NewAttr& attr, const AddProgressFn& progress) {
  BulkAddOptions opts;
  if (progress) {
    opts.progress = [&progress](const BulkProgress& p) {
      progress({p.file_done, p.file_size, p.new_frame_bytes});
    };
  }
  AddResult result;
  opts.file_added = [&result](std::string_view, const AddResult& r) { result = r; };
  opts.commit_interval_ms = UINT32_MAX;  // one file, one commit
  opts.commit_bytes = UINT64_MAX;
  Result<std::unique_ptr<BulkAdd>> bulk = BeginBulkAdd(opts);
  if (!bulk.ok()) return bulk.status();
  ZIPNN_RETURN_IF_ERROR((*bulk)->AddFileFd(BulkDir{parent, false}, name, source_fd, attr));
  Result<BulkSummary> done = (*bulk)->Finish();
  if (!done.ok()) return done.status();
  return result;
}

}  // namespace zipnn::index
