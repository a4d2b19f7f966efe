// Store: the writer path. Everything that changes the store holds write_mutex_, so the pack
// writer and the chunks database only ever see one change at a time.
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <future>
#include <system_error>
#include <unordered_map>

#include "index/store_impl.h"

namespace zipnn::index {

namespace {

struct ChunkHashHasher {
  size_t operator()(const ChunkHash& h) const {
    size_t v;
    std::memcpy(&v, h.data(), sizeof(v));  // already a hash
    return v;
  }
};

Result<uint64_t> GetU64(lmdb::Txn& txn, MDB_dbi dbi, std::string_view key) {
  MDB_val v;
  ZIPNN_RETURN_IF_ERROR(txn.Get(dbi, lmdb::Val(key), v));
  if (v.mv_size != 8) return Status::Corrupt("meta " + std::string(key) + ": bad record");
  return rec::GetLE<uint64_t>(static_cast<const uint8_t*>(v.mv_data));
}

Status PutU64(lmdb::Txn& txn, MDB_dbi dbi, std::string_view key, uint64_t value) {
  uint8_t b[8];
  rec::PutLE<uint64_t>(b, value);
  return txn.Put(dbi, lmdb::Val(key), lmdb::Val(b));
}

Status PutInode(lmdb::Txn& txn, MDB_dbi dbi, const InodeAttr& a) {
  uint8_t v[rec::kInodeSize];
  rec::EncodeInode(a, v);
  rec::InodeKey key(a.ino);
  return txn.Put(dbi, lmdb::Val(key.bytes()), lmdb::Val(v));
}

InodeAttr FromNew(const NewAttr& n, InodeKind kind, uint32_t type_bits) {
  InodeAttr a;
  a.kind = kind;
  a.mode = type_bits | (n.mode & 07777);
  a.uid = n.uid;
  a.gid = n.gid;
  a.atime_ns = n.atime_ns;
  a.mtime_ns = n.mtime_ns;
  a.ctime_ns = n.ctime_ns;
  a.nlink = kind == InodeKind::kDirectory ? 2 : 1;
  return a;
}

}  // namespace

Result<InodeAttr> StoreImpl::CreateInode(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                                         InodeAttr attr) {
  Result<InodeAttr> dir = GetAttrIn(txn, parent);
  if (!dir.ok()) return dir.status();
  if (dir->kind != InodeKind::kDirectory) {
    return Status::InvalidArgument("inode " + std::to_string(parent) + " is not a directory");
  }
  const std::string dirent_key = rec::NamedKey(parent, name);
  MDB_val existing;
  Status st = txn.Get(dbi(kDirents), lmdb::Val(dirent_key), existing);
  if (st.ok()) return Status::Exists(Quote(name) + " exists");
  if (st.code() != StatusCode::kNotFound) return st;

  Result<uint64_t> next = GetU64(txn, dbi(kMeta), rec::kMetaNextInode);
  if (!next.ok()) return next.status();
  attr.ino = *next;
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

Status StoreImpl::PutXattrs(lmdb::Txn& txn, uint64_t ino,
                            const std::vector<std::pair<std::string, std::string>>& xattrs) {
  std::vector<std::string> old_keys;
  {
    Result<lmdb::Cursor> cur = lmdb::Cursor::Open(txn, dbi(kXattrs));
    if (!cur.ok()) return cur.status();
    rec::InodeKey start(ino);
    MDB_val k = lmdb::Val(start.bytes()), v;
    Status st;
    for (bool have = cur->Get(k, v, MDB_SET_RANGE, st);
         have && k.mv_size > 8 && rec::GetBE64(static_cast<const uint8_t*>(k.mv_data)) == ino;
         have = cur->Get(k, v, MDB_NEXT, st)) {
      old_keys.emplace_back(static_cast<const char*>(k.mv_data), k.mv_size);
    }
    ZIPNN_RETURN_IF_ERROR(st);
  }  // the cursor closes before the writes below
  for (const std::string& key : old_keys)
    ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kXattrs), lmdb::Val(key)));
  for (const auto& [name, value] : xattrs) {
    if (name.empty() || name.size() > 255) return Status::InvalidArgument("bad xattr name");
    const std::string key = rec::NamedKey(ino, name);
    ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kXattrs), lmdb::Val(key), lmdb::Val(value)));
  }
  return Status::Ok();
}

Result<InodeAttr> StoreImpl::Mkdir(uint64_t parent, std::string_view name, const NewAttr& attr) {
  ZIPNN_RETURN_IF_ERROR(ValidateName(name));
  std::lock_guard lock(write_mutex_);
  InodeAttr created;
  Status st = env_->Update([&](lmdb::Txn& txn) -> Status {
    Result<InodeAttr> a =
        CreateInode(txn, parent, name, FromNew(attr, InodeKind::kDirectory, S_IFDIR));
    if (!a.ok()) return a.status();
    created = *a;
    return PutXattrs(txn, created.ino, attr.xattrs);
  });
  if (!st.ok()) return st;
  return created;
}

Result<InodeAttr> StoreImpl::Symlink(uint64_t parent, std::string_view name,
                                     std::string_view target, const NewAttr& attr) {
  ZIPNN_RETURN_IF_ERROR(ValidateName(name));
  if (target.empty() || target.size() > 4095) {
    return Status::InvalidArgument("symlink target must have 1 to 4095 bytes");
  }
  std::lock_guard lock(write_mutex_);
  InodeAttr created;
  Status st = env_->Update([&](lmdb::Txn& txn) -> Status {
    InodeAttr a = FromNew(attr, InodeKind::kSymlink, S_IFLNK);
    a.mode = S_IFLNK | 0777;
    a.size = target.size();
    Result<InodeAttr> r = CreateInode(txn, parent, name, a);
    if (!r.ok()) return r.status();
    created = *r;
    rec::InodeKey key(created.ino);
    ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kSymlinks), lmdb::Val(key.bytes()), lmdb::Val(target)));
    return PutXattrs(txn, created.ino, attr.xattrs);
  });
  if (!st.ok()) return st;
  return created;
}

Status StoreImpl::SetTimes(uint64_t ino, int64_t atime_ns, int64_t mtime_ns) {
  std::lock_guard lock(write_mutex_);
  return env_->Update([&](lmdb::Txn& txn) -> Status {
    Result<InodeAttr> a = GetAttrIn(txn, ino);
    if (!a.ok()) return a.status();
    a->atime_ns = atime_ns;
    a->mtime_ns = mtime_ns;
    return PutInode(txn, dbi(kInodes), *a);
  });
}

Result<AddResult> StoreImpl::AddFile(uint64_t parent, std::string_view name, int source_fd,
                                     const NewAttr& attr, const AddProgressFn& progress) {
  ZIPNN_RETURN_IF_ERROR(ValidateName(name));
  if (!pack_writer_) return Status::InvalidArgument("store is open read-only");
  std::lock_guard lock(write_mutex_);
  const std::string what = Quote(name);
  struct stat before;
  if (::fstat(source_fd, &before) != 0) return Status::FromErrno(errno, what);
  if (!S_ISREG(before.st_mode)) return Status::InvalidArgument(what + " is not a regular file");
  const uint64_t size = static_cast<uint64_t>(before.st_size);

  const ReadAtFn read_at = [source_fd](uint64_t off, std::span<uint8_t> out) {
    return PreadFull(source_fd, off, out);
  };
  PlanOptions plan_opts;
  plan_opts.chunk_size = opts_.chunk_size;
  Result<std::vector<ChunkSpec>> plan = PlanChunks(name, read_at, size, plan_opts);
  if (!plan.ok()) return Status(plan.status().code(), what + ": " + plan.status().message());

  // A full pack is closed between files (a file's frames are all in one pack). The new pack
  // becomes current in the commit below.
  if (pack_writer_->end() >= opts_.pack_target_size) {
    Result<PackWriter> next = PackWriter::Open(dir_ + "/packs", pack_writer_->id() + 1, 0);
    if (!next.ok()) return next.status();
    pack_writer_.emplace(std::move(*next));
  }
  PackWriter& pack = *pack_writer_;

  AddResult result;
  std::vector<rec::Extent> extents(plan->size());
  std::unordered_map<ChunkHash, uint64_t, ChunkHashHasher> refs;       // references this file adds
  std::unordered_map<ChunkHash, rec::Chunk, ChunkHashHasher> written;  // chunks new to the store
  std::vector<uint8_t> buf;
  std::vector<ChunkSpec> to_encode;
  std::vector<ChunkHash> to_encode_hash;
  // Frames of two batches: the pack writes one batch on a helper thread while the next one is
  // read, hashed and compressed.
  std::vector<std::vector<uint8_t>> frame_sets[2];
  int current_set = 0;
  std::future<Status> pending_write;
  uint64_t queued_end = pack.end();  // where the next frame will land in the pack
  auto wait_write = [&]() -> Status {
    return pending_write.valid() ? pending_write.get() : Status::Ok();
  };
  AddProgress prog;
  prog.raw_total = size;

  auto fail = [&](const Status& s) -> Status {
    (void)wait_write();
    (void)pack.Rollback();  // best effort; a writer reopening the store cuts the tail anyway
    return Status(s.code(), what + ": " + s.message());
  };

  for (size_t first = 0; first < plan->size();) {
    // One batch: whole chunks up to batch_bytes of raw data (at least one chunk).
    size_t last = first;
    uint64_t batch = 0;
    while (last < plan->size() &&
           (last == first || batch + (*plan)[last].size <= opts_.batch_bytes)) {
      batch += (*plan)[last++].size;
    }
    const uint64_t base = (*plan)[first].offset;
    buf.resize(batch);
    Status st = PreadFull(source_fd, base, buf);
    if (!st.ok()) return fail(st);

    to_encode.clear();
    to_encode_hash.clear();
    {
      Result<lmdb::Txn> txn = env_->BeginRead();
      if (!txn.ok()) return fail(txn.status());
      for (size_t i = first; i < last; ++i) {
        const ChunkSpec& c = (*plan)[i];
        const ChunkHash h = HashChunk({buf.data() + (c.offset - base), c.size});
        extents[i] = {h, c.size, c.dtype};
        if (refs[h]++ > 0) continue;  // seen earlier in this file
        MDB_val v;
        Status got = txn->Get(dbi(kChunks), lmdb::Val(h), v);
        if (got.ok()) continue;  // already stored: only its refcount changes
        if (got.code() != StatusCode::kNotFound) return fail(got);
        to_encode.push_back(c);
        to_encode_hash.push_back(h);
      }
    }
    std::vector<std::vector<uint8_t>>& frames = frame_sets[current_set];
    st = codec_->EncodeAll(buf, base, to_encode, frames);
    if (!st.ok()) return fail(st);
    for (size_t j = 0; j < frames.size(); ++j) {
      Result<FrameInfo> info = ParseFrameHeader(frames[j]);
      if (!info.ok()) return fail(info.status());
      rec::Chunk c;
      c.pack_id = pack.id();
      c.pack_offset = queued_end;
      c.frame_size = static_cast<uint32_t>(frames[j].size());
      c.raw_size = info->raw_size;
      c.method = info->method;
      c.dtype = info->dtype;
      queued_end += c.frame_size;
      written.emplace(to_encode_hash[j], c);
      ++result.new_chunks;
      result.new_frame_bytes += c.frame_size;
    }
    // The previous batch's write must be done before its frame set is reused, and its errors
    // are reported here.
    st = wait_write();
    if (!st.ok()) return fail(st);
    try {
      pending_write = std::async(std::launch::async, [&pack, &frames]() -> Status {
        for (const std::vector<uint8_t>& f : frames) ZIPNN_RETURN_IF_ERROR(pack.Append(f));
        return Status::Ok();
      });
    } catch (const std::system_error& e) {  // no thread to be had: no exception leaves the store
      return fail(Status::Io(std::string("starting the pack writer thread: ") + e.what()));
    }
    current_set ^= 1;
    prog.raw_done += batch;
    prog.new_frame_bytes = result.new_frame_bytes;
    if (progress) progress(prog);
    first = last;
  }

  Status written_st = wait_write();
  if (!written_st.ok()) return fail(written_st);
  if (pack.end() != queued_end) return fail(Status::Corrupt("pack writer lost frames"));

  // A file that changed while we read it would be stored torn: refuse it.
  struct stat after;
  if (::fstat(source_fd, &after) != 0) return fail(Status::FromErrno(errno, "fstat"));
  if (after.st_size != before.st_size || after.st_mtim.tv_sec != before.st_mtim.tv_sec ||
      after.st_mtim.tv_nsec != before.st_mtim.tv_nsec) {
    return fail(Status::Busy("changed while it was being imported"));
  }
  // The frames must be durable before any committed transaction references them.
  Status st = pack.Sync();
  if (!st.ok()) return fail(st);

  InodeAttr file = FromNew(attr, InodeKind::kFile, S_IFREG);
  file.size = size;
  st = env_->Update([&](lmdb::Txn& txn) -> Status {
    result.frame_bytes = 0;
    uint64_t ino = 0;
    Result<InodeAttr> old = LookupIn(txn, parent, name);
    if (old.ok()) {
      if (old->kind != InodeKind::kFile) return Status::Exists("exists and is not a regular file");
      ino = old->ino;
      // Drop the old version's extents and their chunk references.
      std::vector<std::pair<rec::ExtentKey, ChunkHash>> old_extents;
      {
        Result<lmdb::Cursor> cur = lmdb::Cursor::Open(txn, dbi(kExtents));
        if (!cur.ok()) return cur.status();
        rec::ExtentKey start(ino, 0);
        MDB_val k = lmdb::Val(start.bytes()), v;
        Status cst;
        for (bool have = cur->Get(k, v, MDB_SET_RANGE, cst);
             have && k.mv_size == 16 && rec::GetBE64(static_cast<const uint8_t*>(k.mv_data)) == ino;
             have = cur->Get(k, v, MDB_NEXT, cst)) {
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
        if (c->refcount > 0) --c->refcount;  // at zero it stays for gc
        uint8_t cv[rec::kChunkSize];
        rec::EncodeChunk(*c, cv);
        ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kChunks), lmdb::Val(hash), lmdb::Val(cv)));
      }
      file.ino = ino;
      ZIPNN_RETURN_IF_ERROR(PutInode(txn, dbi(kInodes), file));
    } else if (old.status().code() == StatusCode::kNotFound) {
      Result<InodeAttr> created = CreateInode(txn, parent, name, file);
      if (!created.ok()) return created.status();
      ino = created->ino;
    } else {
      return old.status();
    }
    for (size_t i = 0; i < extents.size(); ++i) {
      uint8_t ev[rec::kExtentSize];
      rec::EncodeExtent(extents[i], ev);
      rec::ExtentKey key(ino, (*plan)[i].offset);
      ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kExtents), lmdb::Val(key.bytes()), lmdb::Val(ev)));
    }
    for (const auto& [hash, count] : refs) {
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
    ZIPNN_RETURN_IF_ERROR(PutU64(txn, dbi(kMeta), rec::PackLengthKey(pack.id()), pack.end()));
    uint8_t cur[4];
    rec::PutLE<uint32_t>(cur, pack.id());
    ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kMeta), lmdb::Val(rec::kMetaCurrentPack), lmdb::Val(cur)));
    file.ino = ino;
    return PutXattrs(txn, ino, attr.xattrs);
  });
  if (!st.ok()) return fail(st);
  pack.MarkCommitted();
  result.attr = file;
  result.chunks = extents.size();
  return result;
}

}  // namespace zipnn::index
