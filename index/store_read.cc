// Store: everything that reads a store (lookups, attributes, links, xattrs, chunks, file bytes).
#include <algorithm>
#include <cstring>
#include <memory>

#include "index/store_impl.h"

namespace zipnn::index {

namespace {

thread_local std::unique_ptr<FrameDecoder> tls_decoder;

}  // namespace

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
  const uint64_t ino = rec::GetLE<uint64_t>(static_cast<const uint8_t*>(v.mv_data));
  Result<InodeAttr> attr = GetAttrIn(txn, ino);
  // The name exists: its inode missing is damage (EIO to a reader), not an absent name (ENOENT,
  // which a copy takes for a file removed meanwhile, and goes on without).
  if (attr.status().code() == StatusCode::kNotFound) {
    return Status::Corrupt("entry " + Quote(name) + " in inode " + std::to_string(parent) +
                           " names inode " + std::to_string(ino) + ", which is missing");
  }
  return attr;
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
    // EINVAL, as readlink(2) of another kind of file; a symlink without its target is damage.
    Result<InodeAttr> attr = GetAttrIn(*txn, ino);
    if (attr.ok() && attr->kind == InodeKind::kSymlink)
      return Status::Corrupt("symlink inode " + std::to_string(ino) + " has no target record");
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
  auto key_offset = [&] { return KeyU64(k, 8); };
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
