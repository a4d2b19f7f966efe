// Store::Check, the consistency check behind `zipnnfs fsck`, and the usage figures behind
// `zipnnfs stats`. Check reads the index in one short read transaction into memory; packs are
// read and frames decoded after it has ended.
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "index/store_impl.h"

namespace zipnn::index {

namespace {

struct Use {  // one extent: where a chunk is used
  uint64_t ino, offset;
  uint32_t raw_size;
};

}  // namespace

Result<CheckReport> StoreImpl::Check(bool verify_frames) {
  ScanResult scan;
  ZIPNN_RETURN_IF_ERROR(Scan(verify_frames, scan));
  return std::move(scan.report);
}

// The kind of inode `ino` by the records it has: extents make a file, a link target a symlink,
// entries a directory; with none, `kind` (its kind byte) stands. The root is a directory.
Result<InodeKind> StoreImpl::EvidentKind(lmdb::Txn& txn, uint64_t ino, InodeKind kind) {
  if (ino == kRootInode) return InodeKind::kDirectory;
  auto has_key_of = [&](Db db, std::span<const uint8_t> prefix) -> Result<bool> {
    Result<lmdb::Cursor> cur = lmdb::Cursor::Open(txn, dbi(db));
    if (!cur.ok()) return cur.status();
    MDB_val k = lmdb::Val(prefix), v;
    Status st;
    const bool have = cur->Get(k, v, MDB_SET_RANGE, st);
    ZIPNN_RETURN_IF_ERROR(st);
    return have && k.mv_size >= 8 && KeyU64(k, 0) == ino;
  };
  const rec::InodeKey key(ino);
  Result<bool> data = has_key_of(kExtents, key.bytes());
  if (!data.ok() || *data) return data.ok() ? Result<InodeKind>(InodeKind::kFile) : data.status();
  Result<bool> link = has_key_of(kSymlinks, key.bytes());
  if (!link.ok() || *link)
    return link.ok() ? Result<InodeKind>(InodeKind::kSymlink) : link.status();
  Result<bool> entries = has_key_of(kDirents, key.bytes());
  if (!entries.ok()) return entries.status();
  if (*entries) return InodeKind::kDirectory;
  return kind;  // (written with the directory entry's kind byte, which is not checked here)
}

// Each problem found is reported and, where a repair can fix it, its fix recorded in `out`.
Status StoreImpl::Scan(bool verify_frames, ScanResult& out) {
  CheckReport& report = out.report;
  auto problem = [&](std::string what, uint64_t ino = 0, uint64_t begin = 0, uint64_t end = 0) {
    report.problems.push_back({std::move(what), ino, begin, end});
  };
  std::unordered_map<ChunkHash, std::vector<Use>, rec::ChunkHashHasher> uses;
  std::unordered_map<ChunkHash, rec::Chunk, rec::ChunkHashHasher> chunks;
  std::map<uint32_t, uint64_t> pack_lengths;
  {
    Result<lmdb::Txn> txn = env_->BeginRead();
    if (!txn.ok()) return txn.status();
    Status st;
    MDB_val k, v;
    std::map<uint64_t, InodeAttr> inodes;
    {
      Result<lmdb::Cursor> cur = lmdb::Cursor::Open(*txn, dbi(kInodes));
      if (!cur.ok()) return cur.status();
      for (bool have = cur->Get(k, v, MDB_FIRST, st); have; have = cur->Get(k, v, MDB_NEXT, st)) {
        if (k.mv_size != 8) {
          problem("inodes: malformed key");
          out.bad_inode_keys.emplace_back(static_cast<const char*>(k.mv_data), k.mv_size);
          continue;
        }
        std::optional<InodeAttr> a = rec::DecodeInode(KeyU64(k, 0), lmdb::Bytes(v));
        if (!a) {
          problem("bad inode record", KeyU64(k, 0));
          out.bad_inode_keys.emplace_back(static_cast<const char*>(k.mv_data), k.mv_size);
          continue;
        }
        // The kernel goes by the mode's file type, readers by the kind: they must agree. Where
        // they do not, the records the inode has say which is right (file data, a link target,
        // directory entries), else the kind; the rest of the check goes by that. (A mode with no
        // file type is damaged too: every inode is written with one.)
        if ((a->mode & S_IFMT) != FileTypeBits(a->kind) ||
            (a->ino == kRootInode && a->kind != InodeKind::kDirectory)) {
          problem("mode " + std::to_string(a->mode) + " contradicts the inode's kind", a->ino);
          Result<InodeKind> kind = EvidentKind(*txn, a->ino, a->kind);
          if (!kind.ok()) return kind.status();
          a->kind = *kind;
          a->mode = (a->mode & ~S_IFMT) | FileTypeBits(*kind);
          out.fixed_inodes[a->ino] = *a;
        }
        inodes[a->ino] = *a;
      }
    }
    report.inodes = inodes.size();
    if (!inodes.count(kRootInode)) {
      // Made anew, as init makes it: its entries then find their directory again (they were all
      // refused, and their inodes linked under a root that did not exist).
      problem("the root directory (inode 1) is missing");
      inodes[kRootInode] = out.fixed_inodes[kRootInode] = NewRootInode();
    }
    {  // the counters new inodes and packs come from
      const uint64_t last = inodes.empty() ? kRootInode : inodes.rbegin()->first;
      Result<uint64_t> next = GetU64(*txn, dbi(kMeta), rec::kMetaNextInode);
      if (!next.ok() || *next <= last) {
        problem("meta: the next inode number is missing or not above inode " +
                std::to_string(last));
        out.next_inode = last + 1;
      }
      MDB_val m;
      if (!txn->Get(dbi(kMeta), lmdb::Val(rec::kMetaCurrentPack), m).ok() || m.mv_size != 4) {
        problem("meta: the current pack record is missing");
        out.current_pack = pack_writer_ ? pack_writer_->id() : 1;
      }
    }
    std::map<uint64_t, uint64_t> dir_parent;  // directory -> the directory holding it
    {
      Result<lmdb::Cursor> cur = lmdb::Cursor::Open(*txn, dbi(kDirents));
      if (!cur.ok()) return cur.status();
      for (bool have = cur->Get(k, v, MDB_FIRST, st); have; have = cur->Get(k, v, MDB_NEXT, st)) {
        std::string key(static_cast<const char*>(k.mv_data), k.mv_size);
        if (k.mv_size <= 8 || v.mv_size != rec::kDirentSize) {
          problem("dirents: malformed record");
          out.bad_dirents.push_back(std::move(key));
          continue;
        }
        const uint64_t parent = KeyU64(k, 0);
        const uint64_t child = rec::GetLE<uint64_t>(static_cast<const uint8_t*>(v.mv_data));
        const std::string name(static_cast<const char*>(k.mv_data) + 8, k.mv_size - 8);
        auto p = inodes.find(parent);
        auto c = inodes.find(child);
        if (!ValidateName(name).ok()) {  // "", ".", "..", "a/b": readers refuse the directory
          problem("entry " + Quote(name) + " has an invalid name", parent);
          out.bad_dirents.push_back(std::move(key));
        } else if (c != inodes.end() && c->second.kind == InodeKind::kDirectory &&
                   (child == kRootInode || dir_parent.count(child) != 0)) {
          problem("entry " + Quote(name) + " names a directory that has a place already", parent);
          out.bad_dirents.push_back(std::move(key));
        } else if (p == inodes.end() || p->second.kind != InodeKind::kDirectory) {
          problem("entry '" + name + "' is in a missing or non-directory inode", parent);
          out.bad_dirents.push_back(std::move(key));
        } else if (c == inodes.end()) {
          problem("entry '" + name + "' names a missing inode", parent);
          out.bad_dirents.push_back(std::move(key));
        } else {
          if (c->second.kind == InodeKind::kDirectory) dir_parent[child] = parent;
          // readdir's file types come from the entry, stat's from the inode
          if (static_cast<const uint8_t*>(v.mv_data)[8] != static_cast<uint8_t>(c->second.kind)) {
            problem("entry " + Quote(name) + ": its kind differs from its inode's", parent);
            out.retyped_dirents.push_back({key, child, c->second.kind});
          }
          out.entries_of[child].push_back(std::move(key));
        }
      }
    }
    // With one entry each, directories form a tree unless a chain of parents loops (a damaged
    // index). Each directory is walked once: 1 while on the walk under way, 2 once known not to
    // lie on a loop.
    std::map<uint64_t, int> state;
    for (const auto& [dir, parent] : dir_parent) {
      std::vector<uint64_t> walk;
      uint64_t at = dir;
      for (;;) {
        int& s = state[at];
        if (s == 1) {  // back on this walk: a loop through `at`
          problem("directory cycle", at);
          out.relink.push_back({out.entries_of[at].front(), at});  // repair moves it under the root
        }
        if (s != 0) break;
        s = 1;
        walk.push_back(at);
        auto up = dir_parent.find(at);
        if (up == dir_parent.end()) break;  // the root, or a directory in no directory
        at = up->second;
      }
      for (uint64_t w : walk) state[w] = 2;
    }
    // Inodes in no directory (their entry lost, or refused above) are unreachable: repair links
    // them under the root too.
    for (const auto& [ino, a] : inodes) {
      if (ino == kRootInode || out.entries_of.count(ino) != 0) continue;
      problem("inode in no directory", ino);
      out.relink.push_back({std::string(), ino});
    }
    // A directory's link count is 2 (its entry and ".") plus its subdirectories' "..", in the
    // tree repair leaves: the directories it relinks go under the root.
    std::map<uint64_t, uint32_t> subdirs;
    std::set<uint64_t> moved;
    for (const auto& [key, ino] : out.relink) {
      auto a = inodes.find(ino);
      if (a == inodes.end() || a->second.kind != InodeKind::kDirectory) continue;
      moved.insert(ino);
      ++subdirs[kRootInode];
    }
    for (const auto& [dir, parent] : dir_parent)
      if (moved.count(dir) == 0) ++subdirs[parent];
    for (auto& [ino, a] : inodes) {
      if (a.kind != InodeKind::kDirectory || out.damaged_inodes.count(ino) != 0) continue;
      const uint32_t count = 2 + subdirs[ino];
      if (a.nlink == count) continue;
      // (The root's count includes the directories repair links under it: say so.)
      const std::string linked =
          ino == kRootInode && !moved.empty()
              ? " once repair links " + std::to_string(moved.size()) + " lost ones under it"
              : "";
      problem("link count " + std::to_string(a.nlink) + " but " + std::to_string(count - 2) +
                  " subdirectories" + linked,
              ino);
      a.nlink = count;
      out.fixed_inodes[ino] = a;
    }
    // A file or symlink's link count is the number of entries naming it (a directory has one);
    // an inode in no directory gets one entry from repair.
    for (auto& [ino, a] : inodes) {
      if (a.kind == InodeKind::kDirectory || ino == kRootInode) continue;
      auto entries = out.entries_of.find(ino);
      const size_t count = entries == out.entries_of.end() ? 1 : entries->second.size();
      if (a.nlink == count) continue;
      if (entries != out.entries_of.end()) {
        problem("link count " + std::to_string(a.nlink) + " but " + std::to_string(count) +
                    " entries name the inode",
                ino);
      }
      a.nlink = static_cast<uint32_t>(count);
      out.fixed_inodes[ino] = a;
    }
    // One pass over each database of per-inode records; `use` takes each record whose inode
    // owns it (k and v hold it). Records no inode of their kind owns (extents of a missing inode
    // or a non-file, a link target of a non-symlink, attributes of a missing inode) serve
    // nothing, and stray extents would hold chunks gc never reclaims: repair deletes them.
    auto scan_records = [&](Db db, std::string_view what, auto owned, auto use) -> Status {
      Result<lmdb::Cursor> cur = lmdb::Cursor::Open(*txn, dbi(db));
      if (!cur.ok()) return cur.status();
      std::optional<uint64_t> reported;
      for (bool have = cur->Get(k, v, MDB_FIRST, st); have; have = cur->Get(k, v, MDB_NEXT, st)) {
        const uint64_t ino = k.mv_size >= 8 ? KeyU64(k, 0) : 0;
        auto a = inodes.find(ino);
        if (k.mv_size >= 8 && a != inodes.end() && owned(a->second.kind, k.mv_size)) {
          use(ino);
          continue;
        }
        out.stray_records.push_back(
            {db, std::string(static_cast<const char*>(k.mv_data), k.mv_size)});
        if (reported == ino) continue;  // one report per inode
        problem(std::string(what) + " of a missing inode or one of another kind", ino);
        reported = ino;
      }
      return st;
    };
    // A file's extents must tile [0, size) in order: where each file's extents end so far.
    std::map<uint64_t, uint64_t> covered;
    ZIPNN_RETURN_IF_ERROR(scan_records(
        kExtents, "extents",
        [](InodeKind kind, size_t key) { return kind == InodeKind::kFile && key == 16; },
        [&](uint64_t ino) {
          uint64_t& next = covered[ino];
          const uint64_t off = KeyU64(k, 8);
          std::optional<rec::Extent> e = rec::DecodeExtent(lmdb::Bytes(v));
          if (!e || e->raw_size == 0) {
            problem("bad extent record", ino, off, off);
            out.damaged_inodes.insert(ino);
            return;
          }
          if (off != next) {
            problem("extents leave a gap or overlap", ino, std::min(off, next),
                    std::max(off, next));
            out.damaged_inodes.insert(ino);
          }
          next = off + e->raw_size;
          uses[e->hash].push_back({ino, off, e->raw_size});
        }));
    const auto ignore = [](uint64_t) {};
    ZIPNN_RETURN_IF_ERROR(scan_records(
        kSymlinks, "a link target",
        [](InodeKind kind, size_t key) { return kind == InodeKind::kSymlink && key == 8; },
        ignore));
    ZIPNN_RETURN_IF_ERROR(scan_records(
        kXattrs, "extended attributes", [](InodeKind, size_t key) { return key > 8; }, ignore));
    for (const auto& [ino, a] : inodes) {
      if (a.kind == InodeKind::kSymlink) {
        rec::InodeKey key(ino);
        MDB_val t;
        if (!txn->Get(dbi(kSymlinks), lmdb::Val(key.bytes()), t).ok()) {
          problem("symlink without a target", ino);
          out.damaged_inodes.insert(ino);
        } else if (t.mv_size != a.size || t.mv_size == 0 ||
                   std::memchr(t.mv_data, '\0', t.mv_size) != nullptr) {
          // (The size first: a damaged length can reach past the map, where a read would fault.)
          problem(t.mv_size != a.size ? "symlink target of " + std::to_string(t.mv_size) +
                                            " bytes where its inode says " + std::to_string(a.size)
                                      : std::string("symlink target empty or holding a NUL"),
                  ino);
          out.damaged_inodes.insert(ino);
        }
      }
      if (a.kind != InodeKind::kFile) continue;
      auto end = covered.find(ino);
      const uint64_t next = end == covered.end() ? 0 : end->second;
      if (next != a.size) {
        problem("extents cover " + std::to_string(next) + " bytes of " + std::to_string(a.size),
                ino, std::min(next, a.size), std::max(next, a.size));
        out.damaged_inodes.insert(ino);
      }
    }
    {
      Result<lmdb::Cursor> cur = lmdb::Cursor::Open(*txn, dbi(kChunks));
      if (!cur.ok()) return cur.status();
      for (bool have = cur->Get(k, v, MDB_FIRST, st); have; have = cur->Get(k, v, MDB_NEXT, st)) {
        std::optional<rec::Chunk> c = rec::DecodeChunk(lmdb::Bytes(v));
        if (k.mv_size != 16 || !c) {
          problem("chunks: malformed record");
          out.bad_chunk_keys.emplace_back(static_cast<const char*>(k.mv_data), k.mv_size);
          continue;
        }
        ChunkHash h;
        std::memcpy(h.data(), k.mv_data, 16);
        chunks[h] = *c;
      }
    }
    if (!st.ok()) return st;
    Result<std::map<uint32_t, std::optional<uint64_t>>> lengths = PackLengths(*txn, dbi(kMeta));
    if (!lengths.ok()) return lengths.status();
    for (const auto& [id, length] : *lengths)
      if (length) pack_lengths[id] = *length;
    for (const auto& [ino, a] : inodes) out.kinds[ino] = a.kind;
  }  // the read transaction ends here: packs are checked without it

  std::map<uint32_t, uint64_t> used_end;  // where the last frame a record uses ends, per pack
  for (const auto& [h, c] : chunks) NoteFrameEnd(c, used_end);
  auto file_size = [&](uint32_t id) {
    struct stat s;
    const std::string path = PackPath(dir_ + "/packs", id);
    return ::stat(path.c_str(), &s) == 0 ? static_cast<uint64_t>(s.st_size) : 0;
  };
  // A length record short of (or missing for) frames the file holds: the record is damaged, not
  // the frames (which the full check verifies), and repair raises it.
  for (const auto& [id, end] : used_end) {
    auto known = pack_lengths.find(id);
    if (known != pack_lengths.end() && known->second >= end) continue;
    if (end > file_size(id)) continue;  // lost frames: reported below
    problem("pack " + std::to_string(id) + ": committed length " +
            (known == pack_lengths.end() ? std::string("missing") : std::to_string(known->second)) +
            ", but its chunk records use " + std::to_string(end) + " bytes");
    out.pack_lengths[id] = pack_lengths[id] = end;
  }
  for (auto& [id, length] : pack_lengths) {
    const uint64_t size = file_size(id);
    if (size < length) {
      problem(PackPath(dir_ + "/packs", id) + ": shorter than its committed length " +
              std::to_string(length));
      out.pack_lengths[id] = length = size;  // frames past its end are lost
    }
  }
  // (A chunk no file uses is reported too: an import that meets its content again reuses it.)
  auto damaged = [&](const ChunkHash& h, const std::string& what) {
    if (uses[h].empty()) problem("unreferenced chunk (gc drops it): " + what);
    for (const Use& u : uses[h]) {
      problem(what, u.ino, u.offset, u.offset + u.raw_size);
      out.damaged_inodes.insert(u.ino);
    }
  };
  for (const auto& [h, list] : uses) {
    auto c = chunks.find(h);
    if (c == chunks.end()) {
      damaged(h, "chunk record missing");
    } else if (c->second.refcount != list.size()) {
      problem("chunk refcount " + std::to_string(c->second.refcount) + " but " +
              std::to_string(list.size()) + " references");
    }
  }
  std::vector<std::pair<const ChunkHash*, ChunkLocation>> to_verify;
  for (const auto& [h, c] : chunks) {
    ++report.chunks;
    const bool used = uses.count(h) != 0;
    if (!used && c.refcount != 0) {
      problem("orphan chunk: refcount " + std::to_string(c.refcount) + " but no references");
    }
    auto pack = pack_lengths.find(c.pack_id);
    if (pack == pack_lengths.end() || c.frame_size > pack->second ||
        c.pack_offset > pack->second - c.frame_size) {
      damaged(h, "chunk lies outside the committed part of pack " + std::to_string(c.pack_id));
      out.bad_chunks.push_back(h);
      continue;
    }
    if (verify_frames) to_verify.emplace_back(&h, FrameLocation(h, c));
  }
  // Frames are decoded on all cores (a store is read many times faster than one core decodes);
  // what is found is reported in chunk order, as it would be one by one.
  ParallelCodec codec(0);
  std::vector<std::vector<uint8_t>> frame(codec.threads()), raw(codec.threads());
  std::vector<Status> verdict(to_verify.size());
  (void)codec.Run(to_verify.size(), [&](size_t i, unsigned w) {
    const ChunkLocation& loc = to_verify[i].second;
    Status st = ReadFrame(loc, frame[w]);
    if (st.ok()) {
      raw[w].resize(loc.raw_size);
      st = codec.decoder(w).Decode(frame[w], raw[w]);
    }
    if (st.ok() && HashChunk(raw[w]) != *to_verify[i].first)
      st = Status::ChecksumMismatch("content does not match its hash");
    verdict[i] = st;
    return Status::Ok();  // every chunk is verified: failures are findings, not errors
  });
  for (size_t i = 0; i < to_verify.size(); ++i) {
    if (!verdict[i].ok()) {
      damaged(*to_verify[i].first, "damaged chunk: " + verdict[i].message());
      out.bad_chunks.push_back(*to_verify[i].first);
    }
    ++report.frames_verified;
  }
  // What every chunk's refcount is once the damaged files are gone.
  for (const auto& [h, c] : chunks) {
    uint64_t live = 0;
    for (const Use& u : uses[h]) live += out.damaged_inodes.count(u.ino) == 0;
    out.refcounts[h] = live;
  }
  return Status::Ok();
}

Result<FileUsage> StoreImpl::GetFileUsage(uint64_t ino) {
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  Result<InodeAttr> attr = GetAttrIn(*txn, ino);
  if (!attr.ok()) return attr.status();
  FileUsage u;
  u.size = attr->size;
  if (attr->kind != InodeKind::kFile) return u;
  std::vector<ChunkLocation> chunks;
  ZIPNN_RETURN_IF_ERROR(ChunksIn(*txn, ino, 0, UINT64_MAX, chunks));
  for (const ChunkLocation& c : chunks) {
    ++u.chunks;
    u.frame_bytes += c.frame_size;
    u.raw_by_method[static_cast<int>(c.method)] += c.raw_size;
    u.raw_by_dtype[static_cast<int>(c.dtype)] += c.raw_size;
  }
  return u;
}

Result<StoreUsage> StoreImpl::GetStoreUsage() {
  Result<lmdb::Txn> txn = env_->BeginRead();
  if (!txn.ok()) return txn.status();
  StoreUsage u;
  Status st;
  MDB_val k, v;
  {
    Result<lmdb::Cursor> cur = lmdb::Cursor::Open(*txn, dbi(kInodes));
    if (!cur.ok()) return cur.status();
    for (bool have = cur->Get(k, v, MDB_FIRST, st); have; have = cur->Get(k, v, MDB_NEXT, st)) {
      std::optional<InodeAttr> a = rec::DecodeInode(KeyU64(k, 0), lmdb::Bytes(v));
      if (!a) return Status::Corrupt("bad inode record");
      if (a->kind == InodeKind::kFile) ++u.files, u.logical_bytes += a->size;
      if (a->kind == InodeKind::kDirectory) ++u.directories;
      if (a->kind == InodeKind::kSymlink) ++u.symlinks;
    }
  }
  {
    Result<lmdb::Cursor> cur = lmdb::Cursor::Open(*txn, dbi(kChunks));
    if (!cur.ok()) return cur.status();
    for (bool have = cur->Get(k, v, MDB_FIRST, st); have; have = cur->Get(k, v, MDB_NEXT, st)) {
      std::optional<rec::Chunk> c = rec::DecodeChunk(lmdb::Bytes(v));
      if (!c) return Status::Corrupt("bad chunk record");
      if (c->refcount == 0) {
        u.unreferenced_frame_bytes += c->frame_size;
        continue;
      }
      ++u.chunks;
      u.chunk_frame_bytes += c->frame_size;
      u.referenced_frame_bytes += uint64_t{c->frame_size} * c->refcount;
      u.chunk_raw_bytes += c->raw_size;
    }
  }
  if (!st.ok()) return st;
  Result<std::map<uint32_t, std::optional<uint64_t>>> lengths = PackLengths(*txn, dbi(kMeta));
  if (!lengths.ok()) return lengths.status();
  for (const auto& [id, length] : *lengths) u.pack_bytes += length.value_or(0);
  return u;
}

}  // namespace zipnn::index
