// The Store behind index/index.h. Internal to index/: store.cc opens and reads, store_write.cc
// writes.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "codec/codec.h"
#include "codec/container.h"
#include "index/index.h"
#include "index/lmdb.h"
#include "index/pack.h"
#include "index/records.h"

namespace zipnn::index {

// Named databases, in the order Env::Open gets their names.
enum Db : size_t { kMeta, kInodes, kDirents, kExtents, kChunks, kSymlinks, kXattrs, kNumDbs };
inline constexpr const char* kDbNames[kNumDbs] = {"meta",   "inodes",   "dirents", "extents",
                                                  "chunks", "symlinks", "xattrs"};

// Where chunk `hash`'s frame is (the file-side fields left empty), for ReadFrame.
inline ChunkLocation FrameLocation(const ChunkHash& hash, const rec::Chunk& c) {
  ChunkLocation loc;
  loc.hash = hash;
  loc.raw_size = c.raw_size;
  loc.pack_id = c.pack_id;
  loc.pack_offset = c.pack_offset;
  loc.frame_size = c.frame_size;
  loc.method = c.method;
  return loc;
}

// A file ready to commit: its attributes, extents and the chunk references they add.
struct NewFile {
  NewAttr attr;
  uint64_t size = 0;
  std::vector<uint64_t> offsets;  // of each extent in the file
  std::vector<rec::Extent> extents;
  std::unordered_map<ChunkHash, uint64_t, rec::ChunkHashHasher> refs;  // hash -> extents using it
};

class BulkAddImpl;

// What Store::Check finds, with what Store::Repair would do about it.
struct ScanResult {
  CheckReport report;
  std::vector<std::string> bad_inode_keys, bad_dirents, bad_chunk_keys;  // records to delete
  std::vector<std::pair<Db, std::string>> stray_records;  // records of no inode of their kind
  std::set<uint64_t> damaged_inodes;                      // files and symlinks to remove
  std::vector<ChunkHash> bad_chunks;                      // chunk records to delete
  std::map<ChunkHash, uint64_t> refcounts;                // every chunk's refcount after the repair
  std::map<uint32_t, uint64_t> pack_lengths;  // packs shorter than their committed length
  std::map<uint64_t, std::vector<std::string>> entries_of;  // inode -> its entries' keys
  std::map<uint64_t, InodeKind> kinds;
  // Inodes to link under the root, with the entry to delete first (one closing a directory
  // cycle) or "" (an inode in no directory).
  std::vector<std::pair<std::string, uint64_t>> relink;
  struct Retype {
    std::string key;
    uint64_t child;
    InodeKind kind;
  };
  std::vector<Retype> retyped_dirents;         // entries whose kind byte is not their inode's
  std::map<uint64_t, InodeAttr> fixed_inodes;  // kind, mode type or link count set right
  std::optional<uint64_t> next_inode;          // a counter at or below an inode in use: its value
  std::optional<uint32_t> current_pack;        // a missing current-pack record: its value
};

class StoreImpl final : public Store {
 public:
  StoreImpl(std::string dir, StoreOptions opts);
  ~StoreImpl() override;

  Status OpenImpl();

  Result<InodeAttr> GetAttr(uint64_t ino) override;
  Result<InodeAttr> Lookup(uint64_t parent, std::string_view name) override;
  Result<InodeAttr> LookupPath(std::string_view path) override;
  Status ReadDir(uint64_t parent, std::string_view after, size_t max,
                 std::vector<DirEntry>& out) override;
  Result<std::string> ReadLink(uint64_t ino) override;
  Result<std::string> GetXattr(uint64_t ino, std::string_view name) override;
  Status ListXattr(uint64_t ino, std::vector<std::string>& names) override;
  Result<size_t> Read(uint64_t ino, uint64_t offset, std::span<uint8_t> out) override;
  Result<std::vector<ChunkLocation>> ChunksInRange(uint64_t ino, uint64_t offset,
                                                   uint64_t length) override;
  Status ReadFrame(const ChunkLocation& chunk, std::vector<uint8_t>& frame) override;
  Result<FileUsage> GetFileUsage(uint64_t ino) override;
  Result<StoreUsage> GetStoreUsage() override;
  Result<CheckReport> Check(bool verify_frames) override;
  Result<RepairReport> Repair(bool verify_frames) override;

  Result<InodeAttr> Mkdir(uint64_t parent, std::string_view name, const NewAttr& attr) override;
  Result<InodeAttr> Symlink(uint64_t parent, std::string_view name, std::string_view target,
                            const NewAttr& attr) override;
  Result<AddResult> AddFile(uint64_t parent, std::string_view name, int source_fd,
                            const NewAttr& attr, const AddProgressFn& progress) override;
  Status SetTimes(uint64_t ino, int64_t atime_ns, int64_t mtime_ns) override;
  Result<GcReport> Gc(double live_fraction) override;
  Result<std::unique_ptr<BulkAdd>> BeginBulkAdd(const BulkAddOptions& opts) override;

  // Helpers usable inside any transaction.
  MDB_dbi dbi(Db db) const { return env_->dbi(db); }
  Result<InodeAttr> GetAttrIn(lmdb::Txn& txn, uint64_t ino);
  Result<InodeAttr> LookupIn(lmdb::Txn& txn, uint64_t parent, std::string_view name);
  // Extents of `ino` overlapping [offset, end), with their chunk records.
  Status ChunksIn(lmdb::Txn& txn, uint64_t ino, uint64_t offset, uint64_t end,
                  std::vector<ChunkLocation>& out);

  // The changes behind Mkdir, Symlink, SetTimes and AddFile, inside a write transaction.
  // `merge`: an existing directory of that name is kept (its entries) and given `attr`, as cp -a
  // does to a directory it copies onto; `replace`: an existing symlink is given the new target
  // and `attr`, keeping its inode number (as a replaced file does), and an existing file is
  // replaced by the symlink. A directory never replaces a non-directory, nor the other way round
  // (kExists, as cp -a refuses).
  Result<InodeAttr> MkdirIn(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                            const NewAttr& attr, bool merge);
  Result<InodeAttr> SymlinkIn(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                              std::string_view target, const NewAttr& attr, bool replace);
  Status SetTimesIn(lmdb::Txn& txn, uint64_t ino, int64_t atime_ns, int64_t mtime_ns);
  // Gives directory `ino` the attributes `attr` (mode, owner, times, extended attributes).
  Result<InodeAttr> SetDirAttrIn(lmdb::Txn& txn, uint64_t ino, const NewAttr& attr);
  // Creates or replaces file (or symlink) `name`; chunks the store lacks must be in `written`
  // (new frames, already synced to their pack). Fills `result`.
  Result<InodeAttr> CommitFileIn(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                                 const NewFile& f, const rec::ChunkMap& written, AddResult& result);
  // Makes `name` in `parent` another name of file `file` (a hard link), replacing a file or
  // symlink of that name.
  Status LinkIn(lmdb::Txn& txn, uint64_t parent, std::string_view name, const InodeAttr& file);

 private:
  friend class BulkAddImpl;

  Status OpenPacksForWriting();
  Result<InodeKind> EvidentKind(lmdb::Txn& txn, uint64_t ino, InodeKind kind);
  // Repair's first step: the index copied into fresh LMDB pages (repair.cc); notes in `actions`.
  Status RebuildIndex(std::vector<RepairAction>& actions);
  Status Scan(bool verify_frames, ScanResult& out);
  // Directory `ino`'s attributes; kInvalidArgument if it is not a directory.
  Result<InodeAttr> DirectoryIn(lmdb::Txn& txn, uint64_t ino);
  // Inserts a new directory entry and inode: `parent` must be a directory without `name`.
  Result<InodeAttr> CreateInode(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                                InodeAttr attr);
  // Sets `xattrs` on `ino`; with `replace`, they become its only ones.
  Status PutXattrs(lmdb::Txn& txn, uint64_t ino,
                   const std::vector<std::pair<std::string, std::string>>& xattrs,
                   bool replace = true);
  Status DropExtentsIn(lmdb::Txn& txn, uint64_t ino);
  // Removes entry `name` of `parent`, file or symlink `old`: the inode loses a link, and with its
  // last one its records go (a file's chunk references are dropped).
  Status RemoveNonDirIn(lmdb::Txn& txn, uint64_t parent, std::string_view name,
                        const InodeAttr& old);
  // Deletes every key of `db` that starts with inode number `ino`.
  Status DeleteKeysOf(lmdb::Txn& txn, Db db, uint64_t ino);

  const std::string dir_;
  const StoreOptions opts_;
  UniqueFd lock_fd_;
  std::string registered_path_;  // in the process-wide set of open stores, while open
  std::unique_ptr<lmdb::Env> env_;
  PackReader packs_;

  // The writer path: one change (or bulk-add commit group) at a time.
  std::mutex write_mutex_;
  std::optional<PackWriter> pack_writer_;
  // A pack found shorter than its committed length when the store opened: its lost frames'
  // records stay until a repair, so every writer refuses (an import would take them as stored,
  // and its files would be unreadable from the start; `import --to` would make its directories
  // before the refusal).
  std::string lost_frames_;
  Status RefuseIfFramesLost() const {
    if (lost_frames_.empty()) return Status::Ok();
    return Status::Corrupt(lost_frames_ + "; run zipnnfs fsck --repair first");
  }
};

Status ValidateName(std::string_view name);
// The root directory as init makes it (owned by this process's user, times now).
InodeAttr NewRootInode();
// The big-endian u64 at byte `at` of a key: the inode at the front of a dirent, extent or xattr
// key (KeyIno), an extent key's file offset (at 8).
inline uint64_t KeyU64(const MDB_val& k, size_t at) {
  return rec::GetBE64(static_cast<const uint8_t*>(k.mv_data) + at);
}
inline uint64_t KeyIno(const MDB_val& k) { return KeyU64(k, 0); }
// Meta counters and inode records, as stored (docs/format.md).
Result<uint64_t> GetU64(lmdb::Txn& txn, MDB_dbi dbi, std::string_view key);
Status PutU64(lmdb::Txn& txn, MDB_dbi dbi, std::string_view key, uint64_t value);
Status PutU32(lmdb::Txn& txn, MDB_dbi dbi, std::string_view key, uint32_t value);
Status PutInode(lmdb::Txn& txn, MDB_dbi dbi, const InodeAttr& a);
// Every pack length record of the meta database `meta`: pack id -> committed length, or nullopt
// for a record of the wrong size (each caller takes that as damage in its own way).
Result<std::map<uint32_t, std::optional<uint64_t>>> PackLengths(lmdb::Txn& txn, MDB_dbi meta);
// Records in `ends`, per pack, where chunk record `c`'s frame ends if it lies past what is there
// (a record whose end overflows is skipped: fsck reports it on its own).
inline void NoteFrameEnd(const rec::Chunk& c, std::map<uint32_t, uint64_t>& ends) {
  if (c.pack_offset > UINT64_MAX - c.frame_size) return;
  uint64_t& end = ends[c.pack_id];
  end = std::max(end, c.pack_offset + c.frame_size);
}
Status ValidateTarget(std::string_view target);  // of a symlink
// 'name', for messages (out of line: GCC 12 warns falsely on inlined string concatenation).
std::string Quote(std::string_view name);

}  // namespace zipnn::index
