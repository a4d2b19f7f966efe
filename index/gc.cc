// Store::Gc: reclaims unreferenced chunks and rewrites sparse packs, crash-safely.
//
// Order of events, each a safe place to crash: (1) live frames of the sparse packs are appended
// to a new pack, which is fdatasynced (a crash leaves an unknown pack: deleted on the next
// writer open); (2) one transaction points the moved chunks at the new pack, deletes
// unreferenced chunk records and the old packs' lengths, and makes the new pack current;
// (3) the old pack files, now unknown to the index, are deleted (a crash leaves them for the next
// writer open to delete).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "index/store_impl.h"

namespace zipnn::index {

Result<GcReport> StoreImpl::Gc(double live_fraction) {
  if (!pack_writer_) return Status::InvalidArgument("store is open read-only");
  std::lock_guard lock(write_mutex_);
  ZIPNN_RETURN_IF_ERROR(RefuseIfFramesLost());
  GcReport report;
  std::vector<std::pair<ChunkHash, rec::Chunk>> chunks;
  std::map<uint32_t, uint64_t> pack_length, pack_live;
  {
    Result<lmdb::Txn> txn = env_->BeginRead();
    if (!txn.ok()) return txn.status();
    Status st;
    MDB_val k, v;
    {
      Result<lmdb::Cursor> cur = lmdb::Cursor::Open(*txn, dbi(kChunks));
      if (!cur.ok()) return cur.status();
      for (bool have = cur->Get(k, v, MDB_FIRST, st); have; have = cur->Get(k, v, MDB_NEXT, st)) {
        std::optional<rec::Chunk> c = rec::DecodeChunk(lmdb::Bytes(v));
        if (k.mv_size != 16 || !c) return Status::Corrupt("bad chunk record (run fsck)");
        ChunkHash h;
        std::memcpy(h.data(), k.mv_data, 16);
        chunks.emplace_back(h, *c);
        if (c->refcount > 0) pack_live[c->pack_id] += c->frame_size;
      }
    }
    // A chunk dropped for a refcount of 0 must be in no extent: refcounts are the index's own
    // bookkeeping, and a damaged one must not cost a file its data.
    std::set<ChunkHash> unreferenced;  // (few: held instead of every hash files use)
    for (const auto& [h, c] : chunks)
      if (c.refcount == 0) unreferenced.insert(h);
    if (!unreferenced.empty()) {
      Result<lmdb::Cursor> ext = lmdb::Cursor::Open(*txn, dbi(kExtents));
      if (!ext.ok()) return ext.status();
      for (bool have = ext->Get(k, v, MDB_FIRST, st); have; have = ext->Get(k, v, MDB_NEXT, st)) {
        std::optional<rec::Extent> e = rec::DecodeExtent(lmdb::Bytes(v));
        if (e && unreferenced.count(e->hash) != 0) {
          return Status::Corrupt(
              "a chunk files use has a refcount of 0: damaged index (run zipnnfs fsck --repair)");
        }
      }
      ZIPNN_RETURN_IF_ERROR(st);
    }
    Result<std::map<uint32_t, std::optional<uint64_t>>> lengths = PackLengths(*txn, dbi(kMeta));
    if (!lengths.ok()) return lengths.status();
    for (const auto& [id, length] : *lengths) {
      if (!length) return Status::Corrupt("bad pack length record");
      pack_length[id] = *length;
    }
  }

  std::set<uint32_t> victims;
  uint32_t max_id = pack_writer_->id();
  for (const auto& [id, length] : pack_length) {
    max_id = std::max(max_id, id);
    if (length > 0 && static_cast<double>(pack_live[id]) < live_fraction * length) {
      victims.insert(id);
    }
  }
  const bool any_dead = std::any_of(chunks.begin(), chunks.end(),
                                    [](const auto& c) { return c.second.refcount == 0; });
  if (victims.empty() && !any_dead) return report;

  // (1) Copy the live frames of the victims, in pack order, to a new pack.
  std::optional<PackWriter> fresh;
  std::vector<std::pair<ChunkHash, rec::Chunk>> moved;
  if (!victims.empty()) {
    Result<PackWriter> w = PackWriter::Open(dir_ + "/packs", max_id + 1, 0);
    if (!w.ok()) return w.status();
    fresh.emplace(std::move(*w));
    std::sort(chunks.begin(), chunks.end(), [](const auto& a, const auto& b) {
      return std::tie(a.second.pack_id, a.second.pack_offset) <
             std::tie(b.second.pack_id, b.second.pack_offset);
    });
    auto copy = [&]() -> Status {
      std::vector<uint8_t> frame;
      for (const auto& [hash, c] : chunks) {
        if (c.refcount == 0 || !victims.count(c.pack_id)) continue;
        const ChunkLocation loc = FrameLocation(hash, c);
        ZIPNN_RETURN_IF_ERROR(ReadFrame(loc, frame));
        rec::Chunk at = c;
        at.pack_id = fresh->id();
        at.pack_offset = fresh->end();
        ZIPNN_RETURN_IF_ERROR(fresh->Append(frame));
        moved.emplace_back(hash, at);
        ++report.frames_moved;
        report.bytes_moved += c.frame_size;
      }
      return fresh->Sync();
    };
    // A failed copy (a full disk, a damaged frame) leaves no partial pack behind (it stayed until
    // the next writer opened the store).
    if (Status copied = copy(); !copied.ok()) {
      ::unlink(PackPath(dir_ + "/packs", fresh->id()).c_str());
      return WithPath(dir_, copied);
    }
  }

  // (2) One transaction switches to the new layout.
  Status st = env_->Update([&](lmdb::Txn& txn) -> Status {
    report.chunks_dropped = 0;
    for (const auto& [hash, c] : moved) {
      uint8_t cv[rec::kChunkSize];
      rec::EncodeChunk(c, cv);
      ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kChunks), lmdb::Val(hash), lmdb::Val(cv)));
    }
    for (const auto& [hash, c] : chunks) {
      if (c.refcount != 0) continue;
      ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kChunks), lmdb::Val(hash)));
      ++report.chunks_dropped;
    }
    if (!fresh) return Status::Ok();
    for (uint32_t id : victims) {
      ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kMeta), lmdb::Val(rec::PackLengthKey(id))));
    }
    ZIPNN_RETURN_IF_ERROR(PutU64(txn, dbi(kMeta), rec::PackLengthKey(fresh->id()), fresh->end()));
    return PutU32(txn, dbi(kMeta), rec::kMetaCurrentPack, fresh->id());
  });
  if (!st.ok()) {
    if (fresh) ::unlink(PackPath(dir_ + "/packs", fresh->id()).c_str());
    return st;
  }
  if (!fresh) return report;
  fresh->MarkCommitted();
  const uint64_t after = fresh->end();
  pack_writer_.emplace(std::move(*fresh));

  // (3) The old packs are unknown to the index now.
  uint64_t before = 0;
  for (const auto& [id, length] : pack_length) before += length;
  for (uint32_t id : victims) {
    const std::string path = PackPath(dir_ + "/packs", id);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Status::FromErrno(errno, path);
    ++report.packs_removed;
  }
  uint64_t kept = 0;
  for (const auto& [id, length] : pack_length) {
    if (!victims.count(id)) kept += length;
  }
  report.bytes_reclaimed = before - (kept + after);
  UniqueFd dir(::open((dir_ + "/packs").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.valid()) ::fsync(dir.get());
  return report;
}

}  // namespace zipnn::index
