// BulkAdd: queueing (the caller) and the workers that read, hash and compress. The writer is in
// bulk_commit.cc.
#include "index/bulk_add.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <new>
#include <system_error>
#include <unordered_set>

#include "codec/page_buffer.h"

namespace zipnn::index {

namespace {
constexpr size_t kMaxQueued = 4096;  // entries queued and not yet handed out (bounds metadata)
constexpr uint64_t kMaxTaskBytes = 1u << 20;
}  // namespace

Result<std::unique_ptr<BulkAdd>> Store::BeginBulkAdd(const BulkAddOptions&) {
  return Status::Unsupported("this store does not support bulk adds");
}

Result<std::unique_ptr<BulkAdd>> StoreImpl::BeginBulkAdd(const BulkAddOptions& opts) {
  if (!pack_writer_) return Status::InvalidArgument("store is open read-only");
  {
    std::lock_guard lock(write_mutex_);  // (a repair clears it under the lock)
    ZIPNN_RETURN_IF_ERROR(RefuseIfFramesLost());
  }
  auto bulk = std::make_unique<BulkAddImpl>(*this, opts);
  ZIPNN_RETURN_IF_ERROR(bulk->Start());
  return std::unique_ptr<BulkAdd>(std::move(bulk));
}

BulkAddImpl::BulkAddImpl(StoreImpl& store, const BulkAddOptions& opts)
    : store_(store), opts_(opts) {
  threads_ = store.opts_.threads != 0 ? store.opts_.threads
                                      : std::max(1u, std::thread::hardware_concurrency());
  // Enough tasks out for every worker to have one and the next ones ready while the writer waits
  // on a direct pack write (with half as many, workers idled ~15% of an import of the corpus),
  // and batches small enough that a single file still spreads over all workers.
  window_ = 4 * uint64_t{threads_} + 4;
  task_bytes_ = std::clamp<uint64_t>(store.opts_.batch_bytes / window_, store.opts_.chunk_size,
                                     std::max<uint64_t>(kMaxTaskBytes, store.opts_.chunk_size));
}

Status BulkAddImpl::Start() {
  try {
    for (unsigned i = 0; i < threads_; ++i) {
      encoders_.push_back(std::make_unique<FrameEncoder>(store_.opts_.encode));
    }
    writer_ = std::thread([this] { WriterLoop(); });
    for (unsigned i = 0; i < threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
  } catch (const std::system_error& e) {  // no thread to be had: no exception leaves the store
    Stop(true);
    return Status::Io(std::string("starting import threads: ") + e.what());
  }
  return Status::Ok();
}

BulkAddImpl::~BulkAddImpl() { Stop(!finished_); }

void BulkAddImpl::Stop(bool abandon) {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    if (abandon) abandon_ = stop_ = true;
  }
  work_cv_.notify_all();
  result_cv_.notify_all();
  space_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
}

Result<BulkSummary> BulkAddImpl::Finish() {
  Stop(false);
  finished_ = true;
  std::lock_guard lock(mutex_);
  if (!error_.ok()) return error_;
  return summary_;
}

Result<size_t> BulkAddImpl::Queue(std::unique_ptr<BulkEntry> e) {
  if (e->kind != BulkEntry::Kind::kTimes && e->kind != BulkEntry::Kind::kDirAttr)
    ZIPNN_RETURN_IF_ERROR(ValidateName(e->name));
  for (const auto& [name, value] : e->attr.xattrs) {
    if (name.empty() || name.size() > 255) {
      return Status::InvalidArgument(e->label + ": bad xattr name");
    }
  }
  std::unique_lock lock(mutex_);
  space_cv_.wait(lock, [&] { return stop_ || entries_.size() - next_entry_ < kMaxQueued; });
  if (!error_.ok()) return error_;
  if (stop_ || closed_) return Status::InvalidArgument("bulk add is finished");
  entries_.push_back(std::move(e));
  work_cv_.notify_one();
  return entries_.size() - 1;
}

namespace {
std::unique_ptr<BulkEntry> MakeEntry(BulkEntry::Kind kind, BulkDir parent, std::string_view name,
                                     const NewAttr& attr) {
  auto e = std::make_unique<BulkEntry>();
  e->kind = kind;
  e->parent = parent;
  e->name = name;
  e->label = Quote(name);
  e->attr = attr;
  return e;
}
}  // namespace

Result<BulkDir> BulkAddImpl::Mkdir(BulkDir parent, std::string_view name, const NewAttr& attr,
                                   const std::string& host_path) {
  std::unique_ptr<BulkEntry> e = MakeEntry(BulkEntry::Kind::kMkdir, parent, name, attr);
  if (!host_path.empty()) e->label = host_path;
  Result<size_t> id = Queue(std::move(e));
  if (!id.ok()) return id.status();
  return BulkDir{*id, true};
}

Status BulkAddImpl::Symlink(BulkDir parent, std::string_view name, std::string_view target,
                            const NewAttr& attr, const std::string& host_path) {
  ZIPNN_RETURN_IF_ERROR(ValidateTarget(target));
  std::unique_ptr<BulkEntry> e = MakeEntry(BulkEntry::Kind::kSymlink, parent, name, attr);
  if (!host_path.empty()) e->label = host_path;
  e->target = target;
  return Queue(std::move(e)).status();
}

Result<BulkFile> BulkAddImpl::AddFile(BulkDir parent, std::string_view name, const HostPath& source,
                                      const NewAttr& attr) {
  std::unique_ptr<BulkEntry> e = MakeEntry(BulkEntry::Kind::kFile, parent, name, attr);
  e->label = source.label;
  e->target = source.name;
  e->host_dir = source.dir;
  Result<size_t> id = Queue(std::move(e));
  if (!id.ok()) return id.status();
  return BulkFile{*id, parent, std::string(name)};
}

Status BulkAddImpl::Link(BulkDir parent, std::string_view name, const BulkFile& file,
                         const std::string& host_path) {
  std::unique_ptr<BulkEntry> e = MakeEntry(BulkEntry::Kind::kLink, parent, name, {});
  e->label = host_path;
  e->link = file;
  return Queue(std::move(e)).status();
}

Status BulkAddImpl::AddFileFd(BulkDir parent, std::string_view name, int fd, const NewAttr& attr) {
  std::unique_ptr<BulkEntry> e = MakeEntry(BulkEntry::Kind::kFile, parent, name, attr);
  e->fd.Reset(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!e->fd.valid()) return Status::FromErrno(errno, e->label);
  return Queue(std::move(e)).status();
}

Status BulkAddImpl::SetTimes(BulkDir entry, int64_t atime_ns, int64_t mtime_ns) {
  auto e = std::make_unique<BulkEntry>();
  e->kind = BulkEntry::Kind::kTimes;
  e->parent = entry;
  e->label = "times of " + std::to_string(entry.id);
  e->attr.atime_ns = atime_ns;
  e->attr.mtime_ns = mtime_ns;
  return Queue(std::move(e)).status();
}

Status BulkAddImpl::SetDirAttr(BulkDir dir, const NewAttr& attr) {
  auto e = std::make_unique<BulkEntry>();
  e->kind = BulkEntry::Kind::kDirAttr;
  e->parent = dir;
  e->label = "attributes of " + std::to_string(dir.id);
  e->attr = attr;
  return Queue(std::move(e)).status();
}

void BulkAddImpl::WorkerLoop(unsigned worker) {
  std::vector<uint8_t> buf;  // the chunk being read: grows to the largest chunk, then stays
  for (;;) {
    std::unique_ptr<BulkTask> t = NextTask();
    if (!t) return;
    if (t->status.ok() && t->job) t->status = RunBatch(*t, *encoders_[worker], buf);
    std::lock_guard lock(mutex_);
    if (!t->status.ok() && t->source_failed && opts_.file_failed) {
      if (t->job) t->job->Fail(t->status);  // the writer leaves the file out; the rest go on
    } else if (!t->status.ok()) {
      dispense_done_ = true;  // the writer stops there
    }
    results_[t->seq] = std::move(t);
    result_cv_.notify_one();
  }
}

std::unique_ptr<BulkTask> BulkAddImpl::NextTask() {
  std::unique_lock lock(mutex_);
  for (;;) {
    if (stop_ || dispense_done_) return nullptr;
    if (next_seq_ < consumed_ + window_) {
      if (job_ && job_->failed) job_.reset();  // left out: its other batches need not run
      if (job_) {
        auto t = std::make_unique<BulkTask>();
        t->seq = next_seq_++;
        t->entry = job_->entry;
        t->e = entries_[job_->entry].get();
        t->job = job_;
        const std::vector<ChunkSpec>& plan = job_->plan;
        t->first = t->last = job_->next_chunk;
        for (uint64_t bytes = 0; t->last < plan.size() &&
                                 (t->last == t->first || bytes + plan[t->last].size <= task_bytes_);
             ++t->last) {
          bytes += plan[t->last].size;
        }
        job_->next_chunk = t->last;
        t->last_batch = t->last == plan.size();
        if (t->last_batch) job_.reset();
        return t;
      }
      if (opening_) {  // its tasks come next: wait for them
        work_cv_.wait(lock);
        continue;
      }
      if (next_entry_ < entries_.size()) {
        const size_t entry = next_entry_++;
        space_cv_.notify_one();
        BulkEntry& e = *entries_[entry];
        if (e.kind == BulkEntry::Kind::kFile) {
          // Opened and planned (a header read and parsed) without the lock, which the writer and
          // the other workers need meanwhile. Entries are never moved, only freed once committed.
          opening_ = true;
          lock.unlock();
          bool ours = false;
          Result<std::shared_ptr<FileJob>> job = OpenJob(entry, e, &ours);
          lock.lock();
          opening_ = false;
          work_cv_.notify_all();
          result_cv_.notify_one();  // the writer may wait to know whether anything is left
          if (job.ok()) {
            job_ = std::move(*job);
            continue;
          }
          auto t = std::make_unique<BulkTask>();  // the writer reports it in its turn
          t->seq = next_seq_++;
          t->entry = entry;
          t->e = &e;
          t->status = job.status();
          t->source_failed = !ours;
          return t;
        }
        auto t = std::make_unique<BulkTask>();  // nothing to compute
        t->seq = next_seq_++;
        t->entry = entry;
        t->e = &e;
        results_[t->seq] = std::move(t);
        result_cv_.notify_one();
        continue;
      }
      if (closed_) {
        result_cv_.notify_one();  // the writer may be waiting for this to be known
        return nullptr;
      }
    }
    work_cv_.wait(lock);
  }
}

Result<std::shared_ptr<FileJob>> BulkAddImpl::OpenJob(size_t entry, BulkEntry& e, bool* ours) {
  auto job = std::make_shared<FileJob>();
  job->entry = entry;
  if (e.fd.valid()) {
    job->fd = std::move(e.fd);
  } else {
    // O_NONBLOCK: a path that became a fifo since it was listed must not block the import
    // forever in open (it is refused below); reads of regular files ignore the flag.
    const int dir = e.host_dir ? e.host_dir->get() : AT_FDCWD;
    job->fd.Reset(
        ::openat(dir, e.target.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY));
    e.host_dir.reset();  // (descriptors are few: a directory's goes with its last file's open)
    if (!job->fd.valid()) {
      if (errno == ENOENT) return Status::NotFound("vanished before it could be imported");
      // Out of descriptors or memory: this process's failure, not the file's.
      *ours = errno == EMFILE || errno == ENFILE || errno == ENOMEM;
      return Status::FromErrno(errno, "open");
    }
  }
  if (::fstat(job->fd.get(), &job->before) != 0) return Status::FromErrno(errno, "fstat");
  if (!S_ISREG(job->before.st_mode)) return Status::InvalidArgument("is not a regular file");
  const int fd = job->fd.get();
  job->sparse = MayHaveHoles(fd);
  const ReadAtFn read_at = [fd](uint64_t off, std::span<uint8_t> out) {
    return PreadFull(fd, off, out);
  };
  PlanOptions plan_opts;
  plan_opts.chunk_size = store_.opts_.chunk_size;
  Result<std::vector<ChunkSpec>> plan =
      PlanChunks(read_at, static_cast<uint64_t>(job->before.st_size), plan_opts);
  if (!plan.ok()) return plan.status();
  job->plan = std::move(*plan);
  return job;
}

// The first batch to claim a chunk the store lacks codes it; a later batch leaves it to that one
// (the writer appends in sequence order, and if the earlier batch fails, nothing later counts).
bool BulkAddImpl::Claim(const ChunkHash& h, uint64_t seq, FileJob& job) {
  std::lock_guard lock(claims_mutex_);
  auto [it, inserted] = claims_.emplace(h, seq);
  if (!inserted && it->second < seq) return false;
  it->second = seq;
  job.claimed.emplace_back(h, seq);
  return true;
}

void BulkAddImpl::ReleaseClaims(FileJob& job) {
  std::lock_guard lock(claims_mutex_);
  for (const auto& [h, seq] : job.claimed) {
    auto it = claims_.find(h);
    if (it != claims_.end() && it->second == seq) claims_.erase(it);
  }
  job.claimed.clear();
}

Result<FrameInfo> AppendFrame(FrameEncoder& encoder, std::span<const uint8_t> buf,
                              const ChunkSpec& c, const ChunkHash& h, std::vector<uint8_t>& out) {
  const size_t at = out.size();
  ZIPNN_RETURN_IF_ERROR(encoder.Encode(buf, c.dtype, out, c.segments, /*stats=*/nullptr, c.grid,
                                       ChecksumFromHash(h, buf.size())));
  return ParseFrameHeader(std::span<const uint8_t>(out).subspan(at));
}

Status BulkAddImpl::RunBatch(BulkTask& t, FrameEncoder& encoder, std::vector<uint8_t>& chunk_buf) {
  if (t.first == t.last) return Status::Ok();
  if (t.job->failed) {  // an earlier look at the file failed: the writer leaves it out
    t.source_failed = true;
    return Status::Io("left out");
  }
  const std::vector<ChunkSpec>& plan = t.job->plan;
  {
    std::lock_guard lock(mutex_);
    if (!spare_buffers_.empty()) {
      t.frame_data = std::move(spare_buffers_.back());
      spare_buffers_.pop_back();
    }
  }
  size_t bound = 0;
  for (size_t i = t.first; i < t.last; ++i) bound += MaxFrameSize(plan[i].size);
  // Frames are coded straight into the task's buffer (no copy). Room for all at once, and to
  // spare, so that a recycled buffer seldom grows: growing touches new memory.
  t.frame_data.clear();
  try {
    if (t.frame_data.capacity() < bound) {
      t.frame_data.reserve(bound + bound / 4);
      // New memory, about to be filled: its faults would be ~30% of a small import's CPU.
      PrefaultPages(t.frame_data.data(), bound);
    }
  } catch (const std::bad_alloc&) {
    return Status::FromErrno(ENOMEM, "frame buffer");
  }
  t.extents.resize(t.last - t.first);
  std::unordered_set<ChunkHash, rec::ChunkHashHasher> seen;
  // A chunk at a time, so it is still in cache when it is hashed and coded. The read
  // transaction lives as long as the batch: milliseconds.
  Result<lmdb::Txn> txn = store_.env_->BeginRead();
  if (!txn.ok()) return txn.status();
  for (size_t i = t.first; i < t.last; ++i) {
    const ChunkSpec& c = plan[i];
    try {
      if (chunk_buf.size() < c.size) chunk_buf.resize(c.size);
    } catch (const std::bad_alloc&) {
      return Status::FromErrno(ENOMEM, "chunk buffer");
    }
    const std::span<uint8_t> buf(chunk_buf.data(), c.size);
    if (Status read = t.job->Read(c, buf); !read.ok()) {
      t.source_failed = true;
      return read;
    }
    const ChunkHash h = HashChunk(buf);
    t.extents[i - t.first] = {h, c.size, c.dtype};
    if (!seen.insert(h).second) continue;
    MDB_val v;
    Status got = txn->Get(store_.dbi(kChunks), lmdb::Val(h), v);
    if (got.ok()) continue;  // stored already: only its refcount changes
    if (got.code() != StatusCode::kNotFound) return got;
    if (!Claim(h, t.seq, *t.job)) continue;
    NewFrame& f = t.frames.emplace_back();
    f.hash = h;
    f.offset = t.frame_data.size();
    Result<FrameInfo> info = AppendFrame(encoder, buf, c, h, t.frame_data);
    if (!info.ok()) return info.status();
    f.info = *info;
  }
  return Status::Ok();
}

}  // namespace zipnn::index
