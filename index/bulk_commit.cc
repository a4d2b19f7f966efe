// BulkAdd's writer: consumes tasks in sequence order, appends new frames to the pack and commits
// groups of whole entries. A group holds the store's write mutex from its first task to its
// commit; its frames are synced before the one transaction that references them.
#include <sys/stat.h>

#include "index/bulk_add.h"

namespace zipnn::index {

namespace {

Status Labeled(const BulkEntry& e, const Status& s) { return WithPath(e.label, s); }

// Failures of one entry (the transaction can still commit the entries before it) as opposed to
// failures of the transaction itself.
// (Refusals are checked before an entry changes anything; a record missing on the way, which
// only a damaged store has, is a failure of the transaction: it must not commit half an entry.)
bool IsEntryError(const Status& s) {
  return s.code() == StatusCode::kExists || s.code() == StatusCode::kInvalidArgument;
}

// The record of a new chunk whose frame (of `size` bytes, with header `info`) goes at `offset` of
// `pack`.
rec::Chunk NewChunk(const PackWriter& pack, uint64_t offset, size_t size, const FrameInfo& info) {
  rec::Chunk c;
  c.pack_id = pack.id();
  c.pack_offset = offset;
  c.frame_size = static_cast<uint32_t>(size);
  c.raw_size = info.raw_size;
  c.method = info.method;
  c.dtype = info.dtype;
  return c;
}

}  // namespace

void BulkAddImpl::WriterLoop() {
  Status st;
  for (;;) {
    std::unique_ptr<BulkTask> t;
    bool done = false;
    {
      std::unique_lock lock(mutex_);
      for (;;) {
        if (abandon_) {
          done = true;
          break;
        }
        auto it = results_.find(consumed_);
        if (it != results_.end()) {
          t = std::move(it->second);
          results_.erase(it);
          break;
        }
        if (closed_ && next_entry_ == entries_.size() && !job_ && !opening_ &&
            consumed_ == next_seq_) {
          done = true;
          break;
        }
        const bool at_boundary = group_lock_ && !current_;
        if (at_boundary && Clock::now() >= group_deadline_) break;  // commit while we wait
        if (at_boundary) {
          result_cv_.wait_until(lock, group_deadline_);
        } else {
          result_cv_.wait(lock);
        }
      }
    }
    if (!t) {
      if (abandon_) break;
      if (group_lock_) st = CommitGroup();
      if (done || !st.ok()) break;
      continue;
    }
    st = Consume(*t);
    bool last_tasks_out = false;
    {
      std::lock_guard lock(mutex_);
      ++consumed_;
      last_tasks_out = closed_ && next_entry_ == entries_.size() && !job_ && !opening_;
    }
    // The end is near: start the pack's flush now, beside the last compressions (it took 3-6 ms
    // of the final commit of a corpus import when left to it).
    if (last_tasks_out && !sync_started_ && group_lock_) {
      store_.pack_writer_->SyncSoon();
      sync_started_ = true;
    }
    work_cv_.notify_all();
    if (!st.ok()) {
      // The entries before the failing one are whole: commit them, without its frames.
      (void)DropCurrentFile();
      if (group_lock_) {
        Status c = CommitGroup();
        if (!c.ok() && c.code() != st.code())
          st = Status(st.code(), st.message() + "; " + c.message());
      }
      break;
    }
    if (group_lock_ && !current_ &&
        (group_bytes_ >= opts_.commit_bytes || Clock::now() >= group_deadline_)) {
      st = CommitGroup();
      if (!st.ok()) break;
    }
  }
  if (group_lock_) {                        // abandoned, or a failed commit left it open
    (void)store_.pack_writer_->Rollback();  // best effort: a writer opening the store cuts it too
    group_.clear();
    written_.clear();
    current_.reset();
    group_lock_.reset();
  }
  std::lock_guard lock(mutex_);
  if (!st.ok() && error_.ok()) error_ = st;
  stop_ = true;
  work_cv_.notify_all();
  space_cv_.notify_all();
}

// A failure of the source of t's file: with file_failed set, the file is left out (its frames
// cut from the pack) and the bulk add goes on; else it stops here.
Status BulkAddImpl::FileFailed(BulkTask& t, const Status& why) {
  if (!opts_.file_failed) return Labeled(*t.e, why);
  // Chunks its batches claimed (any batch that read it may have) are coded by no one else: the
  // files after it code them.
  orphans_possible_ |= t.job != nullptr;
  if (t.job) {
    {
      std::lock_guard lock(mutex_);
      t.job->Fail(why);  // (where the writer found it: its batches not yet run need not read it)
    }
    ReleaseClaims(*t.job);
  }
  if (current_) {  // the progress counted what is dropped now
    progress_.raw_bytes -= file_done_;
    progress_.new_frame_bytes -= store_.pack_writer_->end() - current_start_;
    file_done_ = 0;
  }
  if (Status st = DropCurrentFile(); !st.ok()) return Labeled(*t.e, st);
  skipped_entry_ = t.entry;
  left_out_.insert(t.entry);
  ++summary_.files_failed;
  opts_.file_failed(t.e->label, why);
  return Status::Ok();
}

// Chunks of t that no earlier batch coded, though one claimed them (its file was left out after
// the claim), are coded here: every chunk a committed file uses has a frame. `source_failed`:
// the failure is reading t's file (it changed since its batch read it, say).
Status BulkAddImpl::CodeOrphans(BulkTask& t, bool* source_failed) {
  Result<lmdb::Txn> txn = store_.env_->BeginRead();
  if (!txn.ok()) return txn.status();
  PackWriter& pack = *store_.pack_writer_;
  for (size_t i = t.first; i < t.last; ++i) {
    const ChunkHash& h = t.extents[i - t.first].hash;
    if (written_.count(h) != 0) continue;
    MDB_val v;
    Status got = txn->Get(store_.dbi(kChunks), lmdb::Val(h), v);
    if (got.ok()) continue;
    if (got.code() != StatusCode::kNotFound) return got;
    const ChunkSpec& c = t.job->plan[i];
    orphan_buf_.resize(c.size);
    Status read = t.job->Read(c, orphan_buf_);
    if (read.ok() && HashChunk(orphan_buf_) != h)
      read = Status::Busy("changed while it was being imported");
    if (!read.ok()) {
      *source_failed = true;
      return read;
    }
    if (!orphan_encoder_) orphan_encoder_ = std::make_unique<FrameEncoder>(store_.opts_.encode);
    std::vector<uint8_t> frame;
    Result<FrameInfo> info = AppendFrame(*orphan_encoder_, orphan_buf_, c, h, frame);
    if (!info.ok()) return info.status();
    const rec::Chunk rc = NewChunk(pack, pack.end(), frame.size(), *info);
    ZIPNN_RETURN_IF_ERROR(pack.Append(frame));
    written_.emplace(h, rc);
    progress_.new_frame_bytes += rc.frame_size;
  }
  return Status::Ok();
}

Status BulkAddImpl::DropCurrentFile() {
  if (!current_) return Status::Ok();
  current_.reset();
  PackWriter& pack = *store_.pack_writer_;
  // Only this file uses the frames appended since it started (earlier files were complete). If
  // they cannot be cut, they stay, in `written_`: the commit gives them records at refcount 0.
  ZIPNN_RETURN_IF_ERROR(pack.Truncate(current_start_));
  std::erase_if(written_, [&](const auto& w) {
    return w.second.pack_id == pack.id() && w.second.pack_offset >= current_start_;
  });
  return Status::Ok();
}

void BulkAddImpl::OpenGroup() {
  group_lock_ = std::make_unique<std::lock_guard<std::mutex>>(store_.write_mutex_);
  const auto interval = std::chrono::milliseconds(opts_.commit_interval_ms);
  group_deadline_ =
      opts_.commit_interval_ms == UINT32_MAX ? Clock::time_point::max() : Clock::now() + interval;
  group_bytes_ = 0;
}

Status BulkAddImpl::Consume(BulkTask& t) {
  if (!t.status.ok() && !t.source_failed) return Labeled(*t.e, t.status);  // the store's: stop
  if (t.entry == skipped_entry_) return Status::Ok();  // a later batch of a file left out
  if (!t.status.ok()) return FileFailed(t, t.job && t.job->failed ? t.job->failure : t.status);
  if (!group_lock_) {
    OpenGroup();
    // A full pack is closed between groups (a group's frames are all in one pack); the new pack
    // becomes current in the group's commit.
    std::optional<PackWriter>& pack = store_.pack_writer_;
    if (pack->end() >= store_.opts_.pack_target_size) {
      Result<PackWriter> next = PackWriter::Open(store_.dir_ + "/packs", pack->id() + 1, 0);
      if (!next.ok()) return Labeled(*t.e, next.status());
      pack.emplace(std::move(*next));
    }
  }
  if (!t.job) {
    group_.push_back({t.entry, t.e, nullptr, {}, {}, false});
    return Status::Ok();
  }
  if (!current_) {
    current_ = std::make_unique<NewFile>();
    current_->attr = t.e->attr;
    current_->size = static_cast<uint64_t>(t.job->before.st_size);
    current_->extents.reserve(t.job->plan.size());
    current_->offsets.reserve(t.job->plan.size());
    current_start_ = store_.pack_writer_->end();
    file_done_ = 0;
  }
  PackWriter& pack = *store_.pack_writer_;
  if (!t.frames.empty()) {
    Result<lmdb::Txn> txn = store_.env_->BeginRead();
    if (!txn.ok()) return Labeled(*t.e, txn.status());
    // Runs of consecutive frames the pack takes go in one write.
    size_t run_begin = 0, run_end = 0;
    auto flush_run = [&]() -> Status {
      if (run_end == run_begin) return Status::Ok();
      Status st = pack.Append({t.frame_data.data() + run_begin, run_end - run_begin});
      run_begin = run_end;
      return st;
    };
    for (size_t j = 0; j < t.frames.size(); ++j) {
      const NewFrame& f = t.frames[j];
      const size_t end = j + 1 < t.frames.size() ? t.frames[j + 1].offset : t.frame_data.size();
      MDB_val v;
      Status got = written_.count(f.hash) != 0
                       ? Status::Ok()  // an earlier batch of this group has it
                       : txn->Get(store_.dbi(kChunks), lmdb::Val(f.hash), v);
      if (got.code() != StatusCode::kNotFound && !got.ok()) return Labeled(*t.e, got);
      if (got.ok()) {  // known: skip its frame
        Status st = flush_run();
        if (!st.ok()) return Labeled(*t.e, st);
        run_begin = run_end = end;
        continue;
      }
      const rec::Chunk c =
          NewChunk(pack, pack.end() + (run_end - run_begin), end - f.offset, f.info);
      run_end = end;
      written_.emplace(f.hash, c);
      progress_.new_frame_bytes += c.frame_size;
    }
    Status st = flush_run();
    if (!st.ok()) return Labeled(*t.e, st);
  }
  if (orphans_possible_) {
    bool source_failed = false;
    Status st = CodeOrphans(t, &source_failed);
    if (!st.ok()) return source_failed ? FileFailed(t, st) : Labeled(*t.e, st);
  }
  if (t.frame_data.capacity() != 0) {
    std::lock_guard lock(mutex_);
    spare_buffers_.push_back(std::move(t.frame_data));
  }
  for (size_t i = t.first; i < t.last; ++i) {
    const rec::Extent& e = t.extents[i - t.first];
    current_->offsets.push_back(t.job->plan[i].offset);
    current_->extents.push_back(e);
    ++current_->refs[e.hash];
    file_done_ += e.raw_size;
    progress_.raw_bytes += e.raw_size;
  }
  if (opts_.progress) {
    progress_.label = t.e->label;
    progress_.file_done = file_done_;
    progress_.file_size = current_->size;
    opts_.progress(progress_);
  }
  if (!t.last_batch) return Status::Ok();
  // A file that changed while we read it would be stored torn: refuse it.
  struct stat after;
  const struct stat& before = t.job->before;
  if (::fstat(t.job->fd.get(), &after) != 0)
    return FileFailed(t, Status::FromErrno(errno, "fstat"));
  if (after.st_size != before.st_size || after.st_mtim.tv_sec != before.st_mtim.tv_sec ||
      after.st_mtim.tv_nsec != before.st_mtim.tv_nsec) {
    return FileFailed(t, Status::Busy("changed while it was being imported"));
  }
  // Nor may it hold more than its size said (a /proc file would be stored empty).
  if (Status ends = CheckEndsAt(t.job->fd.get(), before.st_size); !ends.ok())
    return FileFailed(t, ends);
  group_bytes_ += current_->size;
  ++progress_.files;
  group_.push_back({t.entry, t.e, std::move(current_), {}, {}, false});
  return Status::Ok();
}

Result<uint64_t> BulkAddImpl::Resolve(BulkDir d,
                                      const std::unordered_map<size_t, uint64_t>& dirs) const {
  if (!d.queued) return d.id;
  auto it = dirs.find(d.id);
  if (it != dirs.end()) return it->second;
  it = dir_ino_.find(d.id);
  if (it != dir_ino_.end()) return it->second;
  return Status::Corrupt("bulk add: directory " + std::to_string(d.id) + " was never created");
}

Status BulkAddImpl::ApplyOp(lmdb::Txn& txn, GroupOp& op,
                            std::unordered_map<size_t, uint64_t>& dirs) {
  const BulkEntry& e = *op.e;
  Result<uint64_t> parent = Resolve(e.parent, dirs);
  if (!parent.ok()) return parent.status();
  switch (e.kind) {
    case BulkEntry::Kind::kMkdir: {
      Result<InodeAttr> a = store_.MkdirIn(txn, *parent, e.name, e.attr, true);
      if (!a.ok()) return a.status();
      dirs[op.entry] = a->ino;
      return Status::Ok();
    }
    case BulkEntry::Kind::kSymlink:
      return store_.SymlinkIn(txn, *parent, e.name, e.target, e.attr, true).status();
    case BulkEntry::Kind::kTimes:
      return store_.SetTimesIn(txn, *parent, e.attr.atime_ns, e.attr.mtime_ns);
    case BulkEntry::Kind::kDirAttr:
      return store_.SetDirAttrIn(txn, *parent, e.attr).status();
    case BulkEntry::Kind::kFile:
      return store_.CommitFileIn(txn, *parent, e.name, *op.file, written_, op.added).status();
    case BulkEntry::Kind::kLink: {
      Result<uint64_t> dir = Resolve(e.link.parent, dirs);
      if (!dir.ok()) return dir.status();
      Result<InodeAttr> file = store_.LookupIn(txn, *dir, e.link.name);
      if (!file.ok() && file.status().code() != StatusCode::kNotFound) return file.status();
      if (!file.ok() || file->kind != InodeKind::kFile) {
        return Status::InvalidArgument("the file it is a hard link of is not in the store");
      }
      return store_.LinkIn(txn, *parent, e.name, *file);
    }
  }
  return Status::Corrupt("bulk add: unknown entry kind");
}

Status BulkAddImpl::CommitGroup() {
  PackWriter& pack = *store_.pack_writer_;
  // The frames must be durable before any committed transaction references them.
  Status st = pack.end() != pack.committed() ? pack.Sync() : Status::Ok();
  size_t applied = 0;  // ops the loop below went through (applied, refused or left out)
  Status entry_error;
  std::unordered_map<size_t, uint64_t> dirs;
  std::unordered_set<size_t> left_out;  // entries left out, this group's and earlier ones
  if (st.ok() && (!group_.empty() || !written_.empty())) {
    st = store_.env_->Update([&](lmdb::Txn& txn) -> Status {
      applied = 0;
      entry_error = Status::Ok();
      dirs.clear();
      left_out = left_out_;
      for (GroupOp& op : group_) {
        op.refused = Status::Ok();
        op.orphaned = false;
        // What goes in a directory left out is left out with it, as cp -a skips its contents.
        op.left_out = op.e->parent.queued && left_out.count(op.e->parent.id) != 0;
        Status s;
        if (!op.left_out && op.e->kind == BulkEntry::Kind::kLink &&
            left_out.count(op.e->link.id) != 0) {
          if (opts_.link_orphaned) {
            Result<uint64_t> dir = Resolve(op.e->parent, dirs);
            if (!dir.ok()) return dir.status();
            op.orphaned = true;
            op.orphan_parent = *dir;
          } else {
            s = Status::InvalidArgument("the file it is a hard link of was left out");
          }
        } else if (!op.left_out) {
          s = ApplyOp(txn, op, dirs);
        }
        if (!s.ok() && IsEntryError(s)) {
          if (!opts_.file_failed) {
            entry_error = Labeled(*op.e, s);  // commit the entries before it
            break;
          }
          op.refused = s;  // (a refusal changed nothing: it is found before any change)
          s = Status::Ok();
        }
        ZIPNN_RETURN_IF_ERROR(s);
        if (op.left_out || !op.refused.ok()) left_out.insert(op.entry);
        ++applied;
      }
      // New chunks no committed entry uses (an entry failed in the commit) keep a record at
      // refcount 0: every committed pack byte belongs to a chunk, and gc can reclaim them.
      for (const auto& [hash, chunk] : written_) {
        MDB_val v;
        Status got = txn.Get(store_.dbi(kChunks), lmdb::Val(hash), v);
        if (got.ok()) continue;
        if (got.code() != StatusCode::kNotFound) return got;
        uint8_t cv[rec::kChunkSize];
        rec::EncodeChunk(chunk, cv);
        ZIPNN_RETURN_IF_ERROR(txn.Put(store_.dbi(kChunks), lmdb::Val(hash), lmdb::Val(cv)));
      }
      ZIPNN_RETURN_IF_ERROR(
          PutU64(txn, store_.dbi(kMeta), rec::PackLengthKey(pack.id()), pack.end()));
      return PutU32(txn, store_.dbi(kMeta), rec::kMetaCurrentPack, pack.id());
    });
  }
  if (!st.ok()) {
    (void)pack.Rollback();  // best effort; a writer reopening the store cuts the tail anyway
    const Status failed = group_.empty() ? st : Labeled(*group_.front().e, st);
    group_.clear();
    written_.clear();
    current_.reset();
    group_lock_.reset();
    return failed;
  }
  pack.MarkCommitted();
  dir_ino_.insert(dirs.begin(), dirs.end());
  left_out_ = std::move(left_out);
  ++summary_.commits;
  for (size_t i = 0; i < applied; ++i) {
    GroupOp& op = group_[i];
    if (!op.refused.ok()) {
      ++summary_.files_failed;
      opts_.file_failed(op.e->label, op.refused);
    }
    if (op.orphaned) opts_.link_orphaned(op.e->label, op.orphan_parent, op.e->name);
    const bool dir = op.e->kind == BulkEntry::Kind::kMkdir;
    if ((dir || op.e->kind == BulkEntry::Kind::kSymlink) && !op.left_out && op.refused.ok() &&
        opts_.entry_added) {
      opts_.entry_added(dir);
    }
    if (!op.file || op.left_out || !op.refused.ok()) continue;
    AddResult& r = op.added;
    for (const auto& [hash, count] : op.file->refs) {
      auto w = written_.find(hash);
      if (w != written_.end() && w->second.refcount == 0) {  // the first file to use it brought it
        w->second.refcount = count;
        ++r.new_chunks;
        r.new_frame_bytes += w->second.frame_size;
      }
    }
    ++summary_.files;
    summary_.new_chunks += r.new_chunks;
    summary_.raw_bytes += r.attr.size;
    summary_.frame_bytes += r.frame_bytes;
    summary_.new_frame_bytes += r.new_frame_bytes;
    if (opts_.file_added) opts_.file_added(op.e->label, r);
  }
  {
    std::lock_guard lock(claims_mutex_);
    for (const auto& w : written_) claims_.erase(w.first);
  }
  {
    std::lock_guard lock(mutex_);
    for (size_t i = 0; i < applied; ++i) entries_[group_[i].entry].reset();
  }
  group_.clear();
  written_.clear();
  group_lock_.reset();
  return entry_error;
}

}  // namespace zipnn::index
