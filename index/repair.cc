// Store::Repair, behind `zipnnfs fsck --repair`: applies, in one transaction, the fixes the check
// (Scan, check.cc) recorded next to each problem.
#include <cstring>
#include <filesystem>

#include "index/store_impl.h"

namespace zipnn::index {

Result<RepairReport> Store::Repair(bool) {
  return Status::Unsupported("this store cannot be repaired");
}

// The index copied record by record into a fresh environment, which then takes its place: LMDB
// trusts its pages, and writing into a damaged B-tree corrupts memory (a bit flipped in the index
// crashed 8 of 60 repairs that wrote in place). The copy's pages are LMDB's own making.
// The copy is made in index.rebuild and renamed index.rebuilt once complete and synced: a crash
// leaves the old index, or (between the renames) the complete copy, which Open adopts.
Status StoreImpl::RebuildIndex(std::vector<RepairAction>& actions) {
  const std::string index = dir_ + "/index", fresh = dir_ + "/index.rebuild",
                    done = dir_ + "/index.rebuilt", old = dir_ + "/index.damaged";
  std::error_code ec;
  for (const std::string& stale : {fresh, done, old}) std::filesystem::remove_all(stale, ec);
  if (!std::filesystem::create_directory(fresh, ec)) return Status::Io(fresh + ": " + ec.message());
  std::vector<lmdb::Env::CopyCount> counts;
  {
    Result<std::unique_ptr<lmdb::Env>> env = lmdb::Env::Open(fresh, true, kDbNames);
    if (!env.ok()) return env.status();
    Result<std::vector<lmdb::Env::CopyCount>> copied = env_->CopyRecords(**env, kNumDbs);
    if (!copied.ok()) return copied.status();
    counts = std::move(*copied);
  }  // (its commits are durable)
  ZIPNN_RETURN_IF_ERROR(SyncDir(fresh));
  if (::rename(fresh.c_str(), done.c_str()) != 0) return Status::FromErrno(errno, done);
  ZIPNN_RETURN_IF_ERROR(SyncDir(dir_));
  env_.reset();
  Status swapped = Status::Ok();
  if (::rename(index.c_str(), old.c_str()) != 0) {
    swapped = Status::FromErrno(errno, "replacing " + index);
  } else if (::rename(done.c_str(), index.c_str()) != 0) {
    swapped = Status::FromErrno(errno, "replacing " + index);
    ::rename(old.c_str(), index.c_str());  // (the store keeps its index)
  }
  if (swapped.ok()) swapped = SyncDir(dir_);
  // Never left without an environment: the store object stays usable whatever failed.
  Result<std::unique_ptr<lmdb::Env>> env = lmdb::Env::Open(index, true, kDbNames);
  if (!env.ok()) return env.status();
  env_ = std::move(*env);
  ZIPNN_RETURN_IF_ERROR(swapped);
  uint64_t records = 0;
  bool lost = false;
  for (size_t i = 0; i < counts.size(); ++i) {
    records += counts[i].records;
    if (counts[i].stopped || counts[i].unkeyable != 0) {
      lost = true;
      actions.push_back(std::string("index database ") + kDbNames[i] +
                        (counts[i].stopped ? ": a damaged page hid the records after it" : "") +
                        (counts[i].unkeyable != 0 ? ": records with unusable keys dropped" : ""));
    }
  }
  actions.push_back("index rebuilt from its " + std::to_string(records) + " readable records");
  if (lost) {  // what could not be read is kept, for whoever can do better with it
    actions.push_back("the damaged index is kept as " + old);
  } else {
    std::filesystem::remove_all(old, ec);
  }
  return Status::Ok();
}

Result<RepairReport> StoreImpl::Repair(bool verify_frames) {
  if (!pack_writer_) return Status::InvalidArgument("store is open read-only");
  std::lock_guard lock(write_mutex_);
  RepairReport report;
  ScanResult scan;
  ZIPNN_RETURN_IF_ERROR(Scan(verify_frames, scan));
  report.found = scan.report;
  if (scan.report.clean()) {
    report.after = scan.report;
    return report;
  }
  std::vector<RepairAction> rebuilt;
  ZIPNN_RETURN_IF_ERROR(RebuildIndex(rebuilt));
  scan = ScanResult();
  ZIPNN_RETURN_IF_ERROR(Scan(verify_frames, scan));
  std::vector<RepairAction>& actions = report.actions;
  Status st = env_->Update([&](lmdb::Txn& txn) -> Status {
    actions = rebuilt;
    // A directory cycle is cut where it closes, and the directory found there, like any inode in
    // no directory, goes under the root (as lost+found-INODE), so nothing in it is lost.
    for (const auto& [key, ino] : scan.relink) {
      if (scan.damaged_inodes.count(ino) != 0) continue;  // removed below
      if (!key.empty()) ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kDirents), lmdb::Val(key)));
      std::string name = "lost+found-" + std::to_string(ino);
      for (int n = 2;; ++n) {
        MDB_val v;
        const Status got = txn.Get(dbi(kDirents), lmdb::Val(rec::NamedKey(kRootInode, name)), v);
        if (got.code() == StatusCode::kNotFound) break;
        ZIPNN_RETURN_IF_ERROR(got);
        name = "lost+found-" + std::to_string(ino) + "-" + std::to_string(n);
      }
      uint8_t d[rec::kDirentSize];
      rec::EncodeDirent(ino, scan.kinds.at(ino), d);
      ZIPNN_RETURN_IF_ERROR(
          txn.Put(dbi(kDirents), lmdb::Val(rec::NamedKey(kRootInode, name)), lmdb::Val(d)));
      actions.push_back({(key.empty() ? "inode in no directory: " : "directory cycle cut: ") +
                             std::string("inode ") + std::to_string(ino) + " linked as /" + name,
                         ino});
    }
    for (const ScanResult::Retype& r : scan.retyped_dirents) {
      uint8_t d[rec::kDirentSize];
      rec::EncodeDirent(r.child, r.kind, d);
      ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kDirents), lmdb::Val(r.key), lmdb::Val(d)));
      actions.push_back(
          {"directory entry of inode " + std::to_string(r.child) + ": kind set to its inode's",
           r.child});
    }
    // Malformed records go first: a root made anew takes the key of a malformed one.
    for (const std::string& key : scan.bad_inode_keys) {
      ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kInodes), lmdb::Val(key)));
      actions.emplace_back("deleted a malformed inode record");
    }
    for (const auto& [ino, a] : scan.fixed_inodes) {
      if (scan.damaged_inodes.count(ino) != 0) continue;  // removed below
      ZIPNN_RETURN_IF_ERROR(PutInode(txn, dbi(kInodes), a));
      actions.push_back({"inode " + std::to_string(ino) +
                             ": kind, mode and link count set to what its records show",
                         ino});
    }
    if (scan.next_inode) {
      ZIPNN_RETURN_IF_ERROR(PutU64(txn, dbi(kMeta), rec::kMetaNextInode, *scan.next_inode));
      actions.push_back("next inode number set to " + std::to_string(*scan.next_inode));
    }
    if (scan.current_pack) {
      ZIPNN_RETURN_IF_ERROR(PutU32(txn, dbi(kMeta), rec::kMetaCurrentPack, *scan.current_pack));
      actions.push_back("current pack set to " + std::to_string(*scan.current_pack));
    }
    for (const std::string& key : scan.bad_dirents) {
      ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kDirents), lmdb::Val(key)));
      const std::string name = key.size() > 8 ? key.substr(8) : "?";
      actions.push_back("deleted directory entry " + Quote(name) + " (names nothing usable)");
    }
    for (const auto& [db, key] : scan.stray_records) {
      const Status del = txn.Del(dbi(db), lmdb::Val(key));  // (gone if its inode was damaged)
      if (!del.ok() && del.code() != StatusCode::kNotFound) return del;
    }
    if (!scan.stray_records.empty()) {
      actions.push_back("deleted " + std::to_string(scan.stray_records.size()) +
                        " record(s) of missing inodes or inodes of another kind");
    }
    for (uint64_t ino : scan.damaged_inodes) {
      auto entries = scan.entries_of.find(ino);
      if (entries != scan.entries_of.end()) {
        for (const std::string& key : entries->second)
          ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kDirents), lmdb::Val(key)));
      }
      for (Db db : {kExtents, kXattrs}) ZIPNN_RETURN_IF_ERROR(DeleteKeysOf(txn, db, ino));
      rec::InodeKey key(ino);
      Status del = txn.Del(dbi(kSymlinks), lmdb::Val(key.bytes()));
      if (!del.ok() && del.code() != StatusCode::kNotFound) return del;
      ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kInodes), lmdb::Val(key.bytes())));
      const bool link = scan.kinds[ino] == InodeKind::kSymlink;
      actions.push_back({"removed damaged " + std::string(link ? "symlink" : "file") + " inode " +
                             std::to_string(ino) + " and its entry (re-import it)",
                         ino});
    }
    for (const std::string& key : scan.bad_chunk_keys) {
      ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kChunks), lmdb::Val(key)));
      actions.emplace_back("deleted a malformed chunk record");
    }
    for (const ChunkHash& h : scan.bad_chunks) {
      ZIPNN_RETURN_IF_ERROR(txn.Del(dbi(kChunks), lmdb::Val(h)));
      scan.refcounts.erase(h);
    }
    if (!scan.bad_chunks.empty()) {
      actions.push_back("dropped " + std::to_string(scan.bad_chunks.size()) +
                        " damaged chunk record(s)");
    }
    uint64_t fixed = 0;
    for (const auto& [h, count] : scan.refcounts) {
      MDB_val v;
      Status got = txn.Get(dbi(kChunks), lmdb::Val(h), v);
      if (got.code() == StatusCode::kNotFound) continue;
      ZIPNN_RETURN_IF_ERROR(got);
      std::optional<rec::Chunk> c = rec::DecodeChunk(lmdb::Bytes(v));
      if (!c || c->refcount == count) continue;
      c->refcount = count;
      uint8_t cv[rec::kChunkSize];
      rec::EncodeChunk(*c, cv);
      ZIPNN_RETURN_IF_ERROR(txn.Put(dbi(kChunks), lmdb::Val(h), lmdb::Val(cv)));
      ++fixed;
    }
    if (fixed != 0) actions.push_back("corrected " + std::to_string(fixed) + " chunk refcount(s)");
    for (const auto& [id, length] : scan.pack_lengths) {
      ZIPNN_RETURN_IF_ERROR(PutU64(txn, dbi(kMeta), rec::PackLengthKey(id), length));
      actions.push_back("pack " + std::to_string(id) + ": committed length set to " +
                        std::to_string(length) + " bytes");
    }
    return Status::Ok();
  });
  if (!st.ok()) return st;
  auto current = scan.pack_lengths.find(pack_writer_->id());
  if (current != scan.pack_lengths.end()) {  // the writer must append where the pack now ends
    Result<PackWriter> w = PackWriter::Open(dir_ + "/packs", current->first, current->second);
    if (!w.ok()) return w.status();
    pack_writer_.emplace(std::move(*w));
  }
  lost_frames_.clear();  // (the records of lost frames are gone, and the lengths are the packs')
  ScanResult after;
  ZIPNN_RETURN_IF_ERROR(Scan(verify_frames, after));
  report.after = std::move(after.report);
  return report;
}

}  // namespace zipnn::index
