// FileSystem: the libfuse low-level operations over a store. Index inode numbers are FUSE inode
// numbers (the root is 1 in both). Reads go through FileReader; the mount itself is in mount.cc.
//
// Read-only for now. Writes will come through the same object: the inode table already counts
// the kernel's lookups (an unlinked file must live until forgotten) and open files carry a handle.
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <sys/statvfs.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "fs/file_reader.h"
#include "index/index.h"

namespace zipnn::fs {

struct FileSystemOptions {
  std::string store_dir;      // for statfs
  double entry_timeout = 60;  // seconds the kernel may cache names and attributes: nothing
  double attr_timeout = 60;   // changes behind the daemon's back
  FileReaderOptions reader;
  std::function<void()> after_init;  // run once, at the first request after INIT
};

class FileSystem {
 public:
  FileSystem(index::Store& store, const FileSystemOptions& opts);
  ~FileSystem();

  static const fuse_lowlevel_ops& Ops();  // the callbacks; userdata is the FileSystem

  // Name of the root's virtual extended attribute holding live statistics (JSON).
  static constexpr const char* kStatsXattr = "user.zipnnfs.stats";
  // The longest file name, in bytes: what the store accepts (index::ValidateName), as on Linux.
  static constexpr size_t kNameMax = 255;

 private:
  struct DirHandle;

  static FileSystem* Self(fuse_req_t req);
  void AfterInit();
  void Init(fuse_conn_info* conn);
  void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  void Forget(fuse_ino_t ino, uint64_t nlookup);
  void GetAttr(fuse_req_t req, fuse_ino_t ino);
  void ReadLink(fuse_req_t req, fuse_ino_t ino);
  void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
  void Release(fuse_req_t req, fuse_file_info* fi);
  void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
               bool plus);
  void ReleaseDir(fuse_req_t req, fuse_file_info* fi);
  void StatFs(fuse_req_t req);
  void Lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi);
  void GetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size);
  void ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size);

  void FillEntry(const index::InodeAttr& attr, fuse_entry_param& e);
  // The attributes of `attr`, with a file's blocks counted as the store holds them (below).
  void Stat(const index::InodeAttr& attr, struct stat& st);
  // Bytes of file `attr` outside all-zero chunks (remembered: a scan of its chunks).
  Result<uint64_t> DataBytes(const index::InodeAttr& attr);
  std::optional<uint64_t> KnownDataBytes(uint64_t ino);
  // Counts a lookup the kernel will remember; for directories, notes their parent (for "..").
  void CountLookup(const index::InodeAttr& attr, uint64_t parent);
  uint64_t ParentOf(uint64_t dir);
  std::string StatsJson() const;

  index::Store& store_;
  const FileSystemOptions opts_;
  FileReader reader_;

  std::atomic<bool> after_init_done_{false};
  std::mutex inodes_mu_;
  struct Known {
    uint64_t lookups = 0;  // the kernel's lookup count
    uint64_t parent = 0;   // directories: the parent it was looked up in
  };
  std::unordered_map<uint64_t, Known> inodes_;  // inodes the kernel knows
  // DataBytes of files asked about, whether the kernel keeps them or not (a lookup asks before
  // the inode is known, and readdirplus for entries it may drop). The store does not change
  // under a read-only mount; bounded by clearing it when full.
  static constexpr size_t kMaxDataBytesKnown = 1 << 16;
  std::mutex data_bytes_mu_;
  std::unordered_map<uint64_t, uint64_t> data_bytes_;
  const uint64_t store_disk_bytes_;  // for statfs: what the store takes on disk
  // For statfs, taken before the mount: a mount over the store (or its parent) hides its path,
  // and a statvfs of it then reached this file system itself, every worker waiting on another.
  struct statvfs store_vfs_ {};
  int store_vfs_errno_ = 0;
  // Open directories' listings, owned here (fi->fh points at one) so that those the kernel
  // never releases (an unmount with a directory open) are freed with the file system.
  std::mutex dirs_mu_;
  std::unordered_map<const DirHandle*, std::unique_ptr<DirHandle>> dirs_;
};

}  // namespace zipnn::fs
