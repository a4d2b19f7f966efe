// BulkAdd behind Store::BeginBulkAdd and Store::AddFile. Internal to index/.
//
// Three kinds of threads share one ordered sequence of tasks:
//  - the caller queues entries (directories, symlinks, files, times);
//  - workers take tasks in sequence order: a worker that finds no file in progress opens and
//    plans the next queued file (without the lock; the others wait for its tasks), then hands
//    out its chunks in batches; a batch is read, hashed, checked against the store and
//    compressed by whichever worker took it. Non-file entries
//    become tasks without work. At most `window_` tasks are out between the writer and the
//    newest one, which bounds memory;
//  - the writer consumes tasks strictly in sequence order: it appends new frames to the pack
//    (dropping chunks the store or the open group already has) and commits groups of whole
//    entries: pack synced, then one LMDB transaction (bulk_commit.cc).
// The first failure in sequence order stops everything after it.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "index/store_impl.h"

namespace zipnn::index {

struct BulkEntry {
  enum class Kind { kMkdir, kSymlink, kFile, kTimes, kDirAttr, kLink };
  Kind kind = Kind::kFile;
  BulkDir parent;  // kTimes, kDirAttr: the entry whose times (attributes) are set
  std::string name;
  std::string label;   // names the entry in messages
  NewAttr attr;        // kTimes: atime_ns and mtime_ns only
  std::string target;  // symlink target; file: its name in host_dir, when `fd` is not given
  std::shared_ptr<const UniqueFd> host_dir;  // file: null, or the directory `target` is in
  UniqueFd fd;
  BulkFile link;  // kLink: the file it is another name for
};

// A file whose batches are being handed out: opened and planned by the worker that reached it.
struct FileJob {
  size_t entry = 0;
  UniqueFd fd;
  struct stat before {};
  bool sparse = false;  // MayHaveHoles: read through PreadSparse
  std::vector<ChunkSpec> plan;
  size_t next_chunk = 0;
  // Set (under the bulk add's mutex) when a batch fails to read the source: the file is left
  // out, so its other batches need not read it. `failure` is the first such error.
  std::atomic<bool> failed{false};
  Status failure;
  // Chunks its batches claimed (under the bulk add's claims mutex), released if it is left out.
  std::vector<std::pair<ChunkHash, uint64_t>> claimed;

  // Reads chunk `c` of the file into `buf` (c.size bytes).
  Status Read(const ChunkSpec& c, std::span<uint8_t> buf) const {
    return sparse ? PreadSparse(fd.get(), c.offset, buf) : PreadFull(fd.get(), c.offset, buf);
  }
  // Marks the file left out for `why`, unless it is already (the caller holds the mutex).
  void Fail(const Status& why) {
    if (failed) return;
    failure = why;
    failed = true;
  }
};

// Appends the frame of chunk `c` (its bytes `buf`, whose HashChunk is `h`) to `out`; returns the
// frame's header.
Result<FrameInfo> AppendFrame(FrameEncoder& encoder, std::span<const uint8_t> buf,
                              const ChunkSpec& c, const ChunkHash& h, std::vector<uint8_t>& out);

struct NewFrame {
  ChunkHash hash{};
  size_t offset = 0;  // in BulkTask::frame_data
  FrameInfo info;
};

struct BulkTask {
  uint64_t seq = 0;
  size_t entry = 0;
  BulkEntry* e = nullptr;
  std::shared_ptr<FileJob> job;  // null for non-file entries
  size_t first = 0, last = 0;    // chunks [first, last) of job->plan
  bool last_batch = false;
  Status status;                     // a failure opening, reading or compressing
  bool source_failed = false;        // the failure is the source file's (skippable)
  std::vector<rec::Extent> extents;  // one per chunk
  std::vector<NewFrame> frames;      // chunks this task coded (others are known or coded earlier)
  std::vector<uint8_t> frame_data;   // their frames, back to back (a recycled buffer)
};

class BulkAddImpl final : public BulkAdd {
 public:
  BulkAddImpl(StoreImpl& store, const BulkAddOptions& opts);
  ~BulkAddImpl() override;
  Status Start();

  Result<BulkDir> Mkdir(BulkDir parent, std::string_view name, const NewAttr& attr,
                        const std::string& host_path) override;
  Status Symlink(BulkDir parent, std::string_view name, std::string_view target,
                 const NewAttr& attr, const std::string& host_path) override;
  Result<BulkFile> AddFile(BulkDir parent, std::string_view name, const HostPath& source,
                           const NewAttr& attr) override;
  Status Link(BulkDir parent, std::string_view name, const BulkFile& file,
              const std::string& host_path) override;
  Status AddFileFd(BulkDir parent, std::string_view name, int fd, const NewAttr& attr) override;
  Status SetTimes(BulkDir entry, int64_t atime_ns, int64_t mtime_ns) override;
  Status SetDirAttr(BulkDir dir, const NewAttr& attr) override;
  Result<BulkSummary> Finish() override;

 private:
  using Clock = std::chrono::steady_clock;

  // One entry of the open commit group; `file` for files, whose batches are all appended.
  struct GroupOp {
    size_t entry = 0;
    BulkEntry* e = nullptr;
    std::unique_ptr<NewFile> file;
    AddResult added;  // filled by the commit
    // The commit refused it (a name taken by another kind of entry), with file_failed: told and
    // left out; or it was left out with the directory it goes in, untold.
    Status refused;
    bool left_out = false;
    // A link whose file was left out, for link_orphaned; `orphan_parent` is its directory.
    bool orphaned = false;
    uint64_t orphan_parent = 0;
  };

  // ---- caller side (bulk_add.cc) ----
  Result<size_t> Queue(std::unique_ptr<BulkEntry> e);
  void Stop(bool abandon);
  // ---- workers (bulk_add.cc) ----
  void WorkerLoop(unsigned worker);
  std::unique_ptr<BulkTask> NextTask();  // null: no more work
  // Without mutex_. `ours`: set when the failure is this process's (out of descriptors).
  Result<std::shared_ptr<FileJob>> OpenJob(size_t entry, BulkEntry& e, bool* ours);
  Status RunBatch(BulkTask& t, FrameEncoder& encoder, std::vector<uint8_t>& chunk_buf);
  bool Claim(const ChunkHash& h, uint64_t seq, FileJob& job);
  void ReleaseClaims(FileJob& job);  // a file left out: later files code its chunks themselves
  // ---- writer (bulk_commit.cc) ----
  void WriterLoop();
  Status Consume(BulkTask& t);
  Status FileFailed(BulkTask& t, const Status& why);
  Status CodeOrphans(BulkTask& t, bool* source_failed);
  Status DropCurrentFile();
  void OpenGroup();
  Status CommitGroup();
  Status ApplyOp(lmdb::Txn& txn, GroupOp& op, std::unordered_map<size_t, uint64_t>& dirs);
  Result<uint64_t> Resolve(BulkDir d, const std::unordered_map<size_t, uint64_t>& dirs) const;

  StoreImpl& store_;
  const BulkAddOptions opts_;
  unsigned threads_ = 1;
  uint64_t window_ = 4;      // tasks handed out and not yet consumed, at most
  uint64_t task_bytes_ = 0;  // raw bytes per batch (at least one chunk)

  std::mutex mutex_;
  std::condition_variable work_cv_;                  // workers: entries, window space, stop
  std::condition_variable result_cv_;                // writer: results, close, stop
  std::condition_variable space_cv_;                 // caller: room in the queue
  std::vector<std::unique_ptr<BulkEntry>> entries_;  // freed once committed
  size_t next_entry_ = 0;                            // the next entry to hand out
  std::shared_ptr<FileJob> job_;                     // the file being handed out
  bool opening_ = false;  // a worker is opening the next file (whose tasks come next)
  uint64_t next_seq_ = 0, consumed_ = 0;
  std::map<uint64_t, std::unique_ptr<BulkTask>> results_;  // done, waiting for the writer
  // Frame buffers the writer is done with: reusing them spares page faults on fresh memory.
  std::vector<std::vector<uint8_t>> spare_buffers_;
  bool closed_ = false;         // Finish called: no more entries
  bool dispense_done_ = false;  // a failed task was handed out: nothing after it matters
  bool stop_ = false;           // the writer is done (error or end) or the caller abandons
  bool abandon_ = false;        // destroyed without Finish: commit nothing more
  Status error_;
  BulkSummary summary_;

  std::mutex claims_mutex_;
  std::unordered_map<ChunkHash, uint64_t, rec::ChunkHashHasher> claims_;  // hash -> lowest seq

  // Writer-only state.
  std::unique_ptr<std::lock_guard<std::mutex>> group_lock_;  // the store's write mutex
  std::vector<GroupOp> group_;
  std::unique_ptr<NewFile> current_;  // the file whose batches are being appended
  uint64_t current_start_ = 0;        // pack offset of its first frame
  rec::ChunkMap written_;             // frames appended in the open group
  Clock::time_point group_deadline_;
  bool sync_started_ = false;  // the pack's flush was started for the last tasks
  uint64_t group_bytes_ = 0;
  std::unordered_map<size_t, uint64_t> dir_ino_;  // Mkdir handle -> inode, once committed
  // Directories (Mkdir handles) and files left out: what goes in them, or links to them, too.
  std::unordered_set<size_t> left_out_;
  BulkProgress progress_;
  uint64_t file_done_ = 0;
  size_t skipped_entry_ = SIZE_MAX;  // the file being left out: its later tasks are ignored
  // A file was left out after its batches claimed chunks (Claim) that later files then did not
  // code: those files' tasks must check that every chunk they use is stored (CodeOrphans).
  bool orphans_possible_ = false;
  std::unique_ptr<FrameEncoder> orphan_encoder_;  // codes them, on the writer thread
  std::vector<uint8_t> orphan_buf_;

  std::vector<std::unique_ptr<FrameEncoder>> encoders_;
  std::vector<std::thread> workers_;
  std::thread writer_;
  bool finished_ = false;
};

}  // namespace zipnn::index
