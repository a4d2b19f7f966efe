// zipnn store: compressed files in append-only packs of codec frames, found through an LMDB index.
//
//   STORE/FORMAT    text: "zipnnfs-store <version>"; other versions are refused
//   STORE/LOCK      flock()ed exclusively by the one process that opens the store for writing
//   STORE/index/    the LMDB environment (inodes, directory entries, offset index, chunks, ...)
//   STORE/packs/    pack-NNNNNN.znp: codec frames back to back, append-only
//   STORE/staging/  reserved for files being written through the filesystem (later)
//
// A file is committed in one LMDB write transaction, after the frames it references are synced to
// their pack: after a crash every file is entirely its old or its new version. Pack bytes past
// the committed length of their pack belong to no file and are cut off when a writer opens the
// store. Identical chunks (same XXH3-128 of their raw bytes) are stored once and refcounted.
// Every key and value encoding is in docs/format.md, "The store".
//
// Inode numbers are stable and never reused while the store lives, so the filesystem can hand
// them to the kernel as they are; the root directory is inode 1 (FUSE_ROOT_ID).
//
// Thread safety: every method may be called from any thread. Reads run concurrently (each takes a
// short LMDB read transaction and releases it before touching packs); writes are serialised.
// This module knows nothing of FUSE.
#pragma once

#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "codec/codec.h"
#include "codec/status.h"

namespace zipnn {
class UniqueFd;  // codec/container.h
}  // namespace zipnn

namespace zipnn::index {

inline constexpr uint32_t kStoreFormatVersion = 1;
inline constexpr uint64_t kRootInode = 1;

// Values are stored in inode records: never renumber.
enum class InodeKind : uint8_t { kFile = 1, kDirectory = 2, kSymlink = 3 };

// The file-type bits of st_mode for an inode of `kind`.
inline uint32_t FileTypeBits(InodeKind kind) {
  return kind == InodeKind::kDirectory ? S_IFDIR : kind == InodeKind::kSymlink ? S_IFLNK : S_IFREG;
}

struct InodeAttr {
  uint64_t ino = 0;
  InodeKind kind = InodeKind::kFile;
  uint32_t mode = 0;  // permission bits and the file-type bits of st_mode
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size = 0;  // files: bytes; symlinks: target length; directories: 0
  int64_t atime_ns = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint32_t nlink = 1;
};

// Attributes a caller gives a new inode (size, nlink and the inode number come from the store).
struct NewAttr {
  uint32_t mode = 0644;  // permission bits; the file-type bits are set from the kind
  uint32_t uid = 0;
  uint32_t gid = 0;
  int64_t atime_ns = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;  // extended attributes: name, value
};

struct DirEntry {
  std::string name;
  uint64_t ino = 0;
  InodeKind kind = InodeKind::kFile;
};

using ChunkHash = std::array<uint8_t, 16>;  // XXH3-128 of the raw bytes, canonical (big-endian)

// Where one chunk of a file is: its place in the file and its frame in a pack. What the
// filesystem needs to read and cache chunks itself (the hash is a natural cache key).
struct ChunkLocation {
  uint64_t file_offset = 0;
  uint32_t raw_size = 0;
  DType dtype = DType::kBytes;  // as planned (tensor dtype); the frame says how it was coded
  ChunkHash hash{};
  uint32_t pack_id = 0;
  uint64_t pack_offset = 0;
  uint32_t frame_size = 0;
  Method method = Method::kRaw;
};

struct StoreOptions {
  bool writable = false;  // takes STORE/LOCK; fails with kBusy if another process holds it
  // Read-only: shares STORE/LOCK with other such readers (a mount of read-only media), so that no
  // writer opens the store meanwhile (kBusy if one has it); without a LOCK to open, no lock.
  bool shared_lock = false;
  unsigned threads = 0;  // compression threads for AddFile; 0 = all cores
  uint32_t chunk_size = 256u << 10;
  EncodeOptions encode;
  uint64_t batch_bytes = 32u << 20;  // raw bytes compressed per batch (bounds AddFile's memory)
  uint64_t pack_target_size =
      1ull << 30;  // a pack this large is closed; the next frame starts a new one
};

// Progress of AddFile, called after each batch is appended to its pack (before the commit).
struct AddProgress {
  uint64_t raw_done = 0;         // bytes of the file read and compressed so far
  uint64_t raw_total = 0;        // size of the file
  uint64_t new_frame_bytes = 0;  // bytes appended to packs so far (dedup hits add nothing)
};
using AddProgressFn = std::function<void(const AddProgress&)>;

struct AddResult {
  InodeAttr attr;
  uint64_t chunks = 0;
  uint64_t new_chunks = 0;       // chunks not already in the store
  uint64_t new_frame_bytes = 0;  // bytes appended to packs
  uint64_t frame_bytes = 0;      // frame bytes of all its chunks, deduplicated or not
};

// Per-file storage figures for `stats`.
struct FileUsage {
  uint64_t size = 0;
  uint64_t chunks = 0;
  uint64_t frame_bytes = 0;  // sum of the frame sizes of its chunks (shared chunks counted fully)
  uint64_t raw_by_method[kNumMethods] = {};
  uint64_t raw_by_dtype[kNumDTypes] = {};  // by the dtype the frames were coded as
};

struct StoreUsage {
  uint64_t files = 0, directories = 0, symlinks = 0;
  uint64_t logical_bytes = 0;           // sum of file sizes
  uint64_t chunks = 0;                  // distinct chunks with refcount > 0
  uint64_t chunk_frame_bytes = 0;       // their frame bytes: what the files really take
  uint64_t referenced_frame_bytes = 0;  // frame bytes times references: the files without dedup
  uint64_t chunk_raw_bytes = 0;
  uint64_t unreferenced_frame_bytes = 0;  // chunks at refcount 0, for gc (later)
  uint64_t pack_bytes = 0;                // committed bytes of all packs
};

// What Store::Check found wrong. `ino` is 0 for problems of the store as a whole; for a file,
// [begin, end) is the byte range affected.
struct CheckProblem {
  std::string what;
  uint64_t ino = 0;
  uint64_t begin = 0, end = 0;
};
struct CheckReport {
  uint64_t inodes = 0;
  uint64_t chunks = 0;
  uint64_t frames_verified = 0;
  std::vector<CheckProblem> problems;
  bool clean() const { return problems.empty(); }
};

struct RepairAction {
  RepairAction(std::string w, uint64_t i = 0) : what(std::move(w)), ino(i) {}  // (implicit)
  std::string what;                                                            // one line
  uint64_t ino = 0;  // the inode it acted on, if one
};

struct RepairReport {
  CheckReport found;                  // the check before the repair
  std::vector<RepairAction> actions;  // what the repair did
  CheckReport after;                  // the check after it
};

struct GcReport {
  uint64_t chunks_dropped = 0;  // unreferenced chunk records removed
  uint64_t frames_moved = 0;    // live frames copied out of sparse packs
  uint64_t bytes_moved = 0;
  uint64_t packs_removed = 0;
  uint64_t bytes_reclaimed = 0;  // pack bytes before minus after
};

// ---- Bulk adding: many entries through one pipeline (import) ----
//
// Files are read, hashed and compressed by a pool of workers, several files at a time, while one
// writer thread appends their frames and commits them in groups: the frames of a group are synced
// before the one LMDB transaction that references them, so after a crash each entry is entirely
// committed or absent (entries commit in queue order). Memory is bounded by
// StoreOptions::batch_bytes (raw bytes in flight) plus each in-progress file's extent list.

// A directory entries go into: an inode of the store, or a directory queued earlier in the same
// bulk add (BulkAdd::Mkdir's result).
struct BulkDir {
  uint64_t id = kRootInode;
  bool queued = false;  // `id` is a BulkAdd::Mkdir handle, not an inode number
};

// An entry of the host file system: `name` in the directory open as `dir`, or with `dir` null,
// `name` is a path (from the working directory). Named below an open directory, an entry of a
// tree deeper than PATH_MAX is still reachable, and a directory renamed or replaced by a symlink
// during a walk is not followed elsewhere. `label` is its whole path, for messages.
struct HostPath {
  std::shared_ptr<const UniqueFd> dir;
  std::string name, label;
};

// A file queued by BulkAdd::AddFile, for BulkAdd::Link: its queue position and its place.
struct BulkFile {
  size_t id = 0;
  BulkDir parent;
  std::string name;
};

struct BulkProgress {
  std::string_view label;  // the file being added: its host path, or its name
  uint64_t file_done = 0, file_size = 0;
  uint64_t files = 0;            // files complete so far (committed or in the open group)
  uint64_t raw_bytes = 0;        // file bytes read and compressed so far, all files
  uint64_t frame_bytes = 0;      // frame bytes of all their chunks, deduplicated or not
  uint64_t new_frame_bytes = 0;  // bytes appended to packs
};

struct BulkAddOptions {
  // Both are called on the writer thread, one call at a time, while it holds the store's write
  // lock (so they must not change the store). `progress` after each batch of a file is appended
  // to its pack; `file_added` after the commit that made a file durable.
  std::function<void(const BulkProgress&)> progress;
  std::function<void(std::string_view label, const AddResult&)> file_added;
  // After the commit that made a directory (true; merged into an existing one too) or a symlink
  // (false) durable, on the writer thread.
  std::function<void(bool directory)> entry_added;
  // With this set, a file whose source fails (it vanished, cannot be opened or read, or changed
  // while it was read) is left out and reported here, on the writer thread, and the bulk add
  // goes on, as cp does; without it, such a file stops the bulk add like any other failure.
  // Failures of the store (a full disk, say) always stop it.
  std::function<void(std::string_view label, const Status& why)> file_failed;
  // With this set, a hard link (Link) whose file was left out is not refused but reported here:
  // the directory it goes in (an inode) and its name, for the caller to add as a file of its
  // own, as cp -a copies a name whose first name it could not copy. Called after its commit.
  std::function<void(std::string_view label, uint64_t parent, std::string_view name)> link_orphaned;
  // A commit group closes at the first entry boundary after it holds this many file bytes or
  // has been open this long; fsync and commit costs are paid once per group.
  uint64_t commit_bytes = 1ull << 30;
  uint32_t commit_interval_ms = 1000;
};

struct BulkSummary {
  uint64_t files = 0, raw_bytes = 0, frame_bytes = 0, new_frame_bytes = 0, new_chunks = 0;
  uint64_t files_failed = 0;  // left out (BulkAddOptions::file_failed)
  uint64_t commits = 0;       // LMDB transactions (groups) committed
};

// Entries are applied in the order they are queued. Queueing returns early errors: a bad
// argument, or the first failure of the pipeline so far (then nothing queued later is applied).
// An entry that fails stops the bulk add (but see BulkAddOptions::file_failed): the entries
// before it are committed by Finish.
class BulkAdd {
 public:
  virtual ~BulkAdd() = default;  // without Finish: stops; uncommitted entries are dropped

  // A directory; an existing directory of that name is merged into and gets `attr`. Messages
  // name it by `host_path` (by its name if that is empty), as AddFile's.
  virtual Result<BulkDir> Mkdir(BulkDir parent, std::string_view name, const NewAttr& attr,
                                const std::string& host_path) = 0;
  // A symlink; an existing symlink of that name is replaced (keeping its inode number), anything
  // else there is kExists. Messages name it as Mkdir's.
  virtual Status Symlink(BulkDir parent, std::string_view name, std::string_view target,
                         const NewAttr& attr, const std::string& host_path) = 0;
  // A regular file from the host, opened when its turn comes (a file gone by then fails);
  // it replaces a file of that name, like Store::AddFile. Messages and progress name it by
  // `source.label`. The bulk add keeps `source.dir` open until then.
  virtual Result<BulkFile> AddFile(BulkDir parent, std::string_view name, const HostPath& source,
                                   const NewAttr& attr) = 0;
  // Another name for a file queued earlier (a hard link): `name` in `parent` names the same
  // inode. An existing file or symlink of that name is replaced; if `file` was left out, so is
  // the link (told to file_failed, or to link_orphaned where set).
  // Messages name it by `host_path`.
  virtual Status Link(BulkDir parent, std::string_view name, const BulkFile& file,
                      const std::string& host_path) = 0;
  // The same from an open descriptor (duplicated; the caller keeps its own).
  virtual Status AddFileFd(BulkDir parent, std::string_view name, int fd, const NewAttr& attr) = 0;
  virtual Status SetTimes(BulkDir entry, int64_t atime_ns, int64_t mtime_ns) = 0;
  // Gives existing directory `dir` these attributes: mode, owner, times and extended attributes
  // (cp -a SRC/. DEST gives DEST those of SRC).
  virtual Status SetDirAttr(BulkDir dir, const NewAttr& attr) = 0;
  // Waits for everything queued and commits it; returns the first error, if any.
  virtual Result<BulkSummary> Finish() = 0;
};

class Store {
 public:
  // Creates an empty store (FORMAT, LOCK, index with the root directory, packs/, staging/) in
  // `dir`, which must not exist or be empty.
  static Status Init(const std::string& dir);
  // Opens a store: kNotFound without one, kUnsupported for another format version, kBusy when
  // another process writes it (writable) or this process has it open already (LMDB allows one
  // environment per process: share the Store instead).
  static Result<std::unique_ptr<Store>> Open(const std::string& dir, const StoreOptions& opts = {});

  virtual ~Store() = default;

  // ---- Reading ----
  virtual Result<InodeAttr> GetAttr(uint64_t ino) = 0;
  virtual Result<InodeAttr> Lookup(uint64_t parent, std::string_view name) = 0;
  // Resolves "/a/b/c" (or "a/b/c"; "" and "/" are the root) without following symlinks.
  virtual Result<InodeAttr> LookupPath(std::string_view path) = 0;
  // Up to `max` entries of directory `parent` whose names sort after `after` (byte order), in
  // order; "" starts at the beginning. The last name returned is the cookie for the next call.
  virtual Status ReadDir(uint64_t parent, std::string_view after, size_t max,
                         std::vector<DirEntry>& out) = 0;
  virtual Result<std::string> ReadLink(uint64_t ino) = 0;
  // Extended attributes (stored with the inode, in its commit). GetXattr: kNotFound if absent.
  virtual Result<std::string> GetXattr(uint64_t ino, std::string_view name) = 0;
  virtual Status ListXattr(uint64_t ino, std::vector<std::string>& names) = 0;
  // Like pread: bytes [offset, offset + out.size()) of file `ino`, clamped at its end; returns
  // the number of bytes read. Every frame touched is verified; a damaged chunk is a kChecksum or
  // kCorrupt error naming the inode and byte range.
  virtual Result<size_t> Read(uint64_t ino, uint64_t offset, std::span<uint8_t> out) = 0;
  // The chunks overlapping [offset, offset + length) of file `ino`, in file order.
  virtual Result<std::vector<ChunkLocation>> ChunksInRange(uint64_t ino, uint64_t offset,
                                                           uint64_t length) = 0;
  // Reads the frame of `chunk` from its pack (resizing `frame`) and checks its header against
  // the location; the caller decodes it (FrameDecoder verifies the checksum).
  virtual Status ReadFrame(const ChunkLocation& chunk, std::vector<uint8_t>& frame) = 0;
  virtual Result<FileUsage> GetFileUsage(uint64_t ino) = 0;
  virtual Result<StoreUsage> GetStoreUsage() = 0;
  // Checks the index (directory entries, extents tiling each file, chunk records, refcounts,
  // pack bounds) and, with `verify_frames`, decodes every referenced frame against its checksum.
  // A damaged chunk is reported once per file range that uses it. Errors only when the check
  // itself cannot run; damage goes into the report.
  virtual Result<CheckReport> Check(bool verify_frames) = 0;

  // ---- Writing (store opened writable) ----
  // Makes a damaged store consistent again (what `zipnnfs fsck --repair` does): files and
  // symlinks with damage (a damaged or missing chunk, broken extents, no target) are removed
  // with their entries, chunk records that are damaged or point outside their pack are dropped,
  // directory entries naming nothing are deleted, refcounts are recomputed and a pack shorter
  // than its committed length is cut to what it holds. All in one transaction, on a fresh copy
  // of the index's readable records (damaged LMDB pages are never written to), which replaces
  // the index: nothing else may use the store meanwhile. Re-import the removed files afterwards.
  // Default: kUnsupported.
  virtual Result<RepairReport> Repair(bool verify_frames);

  // Creates directory `name` in `parent`; kExists if the name is taken.
  virtual Result<InodeAttr> Mkdir(uint64_t parent, std::string_view name, const NewAttr& attr) = 0;
  virtual Result<InodeAttr> Symlink(uint64_t parent, std::string_view name, std::string_view target,
                                    const NewAttr& attr) = 0;
  // Stores the bytes of `source_fd` (from offset 0 to its size at the call) as file `name` in
  // `parent`, replacing a file of that name (keeping its inode number). Safetensors and GGUF
  // content (whatever the name) gets tensor-aware chunks. Commits in one transaction.
  virtual Result<AddResult> AddFile(uint64_t parent, std::string_view name, int source_fd,
                                    const NewAttr& attr, const AddProgressFn& progress = {}) = 0;
  // Drops unreferenced chunks and rewrites packs whose live frames fill less than
  // `live_fraction` of them: live frames are copied to a new pack, synced, and one transaction
  // moves their records and forgets the old packs, which are then deleted. A crash at any point
  // leaves the old or the new layout (an unreferenced pack file is deleted by the next writer).
  // Meant for a store no filesystem is serving: frames a reader located before the gc may be
  // gone.
  virtual Result<GcReport> Gc(double live_fraction = 0.5) = 0;
  // Sets the times of any inode (import restores directory times after filling them).
  virtual Status SetTimes(uint64_t ino, int64_t atime_ns, int64_t mtime_ns) = 0;
  // Starts a bulk add (store opened writable). Only one change runs at a time: other writes wait
  // while a commit group is open.
  virtual Result<std::unique_ptr<BulkAdd>> BeginBulkAdd(const BulkAddOptions& opts = {});
};

// Calls fn for every entry of directory `dir` in name order, reading the directory a page at a
// time (no read transaction is held while fn runs). Stops at the first error, fn's or the store's.
Status ForEachDirEntry(Store& store, uint64_t dir,
                       const std::function<Status(const DirEntry&)>& fn);

// Canonical XXH3-128 of `data`, the key of a chunk.
ChunkHash HashChunk(std::span<const uint8_t> data);
// The codec's Checksum() (XXH3-64) of a chunk of `size` bytes, where its HashChunk `h` gives it:
// for more than 240 bytes, XXH3's 128-bit hash has the 64-bit one as its low half (the same
// accumulation, finished twice), which saves the encoder a second pass over the chunk.
std::optional<uint64_t> ChecksumFromHash(const ChunkHash& h, size_t size);
// Whether `decoded`, the bytes of the frame ReadFrame gave for `chunk`, are that chunk's: ReadFrame
// matches a frame to its key by the frame's checksum where ChecksumFromHash allows; for chunks of
// 240 bytes or less this hashes them.
Status VerifyChunk(const ChunkLocation& chunk, std::span<const uint8_t> decoded);

}  // namespace zipnn::index
