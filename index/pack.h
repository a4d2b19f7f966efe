// Pack files: codec frames back to back, append-only. Internal to index/.
//
// A pack has no header or table: the chunks database says where each frame is, and the meta
// database how many bytes of each pack are committed. Bytes past that length were appended by a
// writer that did not commit (a crash or an error) and are cut off when a writer opens the pack.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "codec/container.h"
#include "codec/page_buffer.h"
#include "codec/status.h"

namespace zipnn::index {

std::string PackPath(const std::string& packs_dir, uint32_t pack_id);

// fsyncs directory `dir`, making the names created or removed in it durable: a file's own
// fsync does not reach its directory entry, so a power cut could lose a synced file's name.
Status SyncDir(const std::string& dir);

// Reads frames from any pack; file descriptors are opened on first use and kept. Thread-safe.
class PackReader {
 public:
  // Holds the directory open from here on: packs open relative to it, so a mount over the store
  // or a parent of it (`zipnnfs /srv/models/.store /srv/models`) cannot hide them.
  explicit PackReader(std::string packs_dir);
  Status Read(uint32_t pack_id, uint64_t offset, std::span<uint8_t> out);

 private:
  std::string dir_;
  UniqueFd dir_fd_;  // O_PATH; invalid if the directory could not be opened (then by path)
  std::mutex mutex_;
  std::map<uint32_t, UniqueFd> fds_;
};

// Appends frames to one pack. Frames go to a buffer and reach the file in large writes; Sync
// makes everything appended durable. Not thread-safe (the store's writer path owns it).
//
// Where the file system allows, whole 4 KiB blocks are written with O_DIRECT: through the page
// cache, a pack costs the writer a copy, page-cache pages (on a fresh VM, host faults of
// never-used memory: measured ~0.5 ms per MB here) and kernel writeback, as much CPU as a third
// of the compression an import does. The partial last block stays in the buffer, to be written
// again whole; Sync writes it through the page cache, so the file ends where the frames do.
class PackWriter {
 public:
  // Opens (creating) pack `pack_id` and cuts it to `committed` bytes. A pack it creates has its
  // name synced into `packs_dir` before it returns, so no commit can reference a pack file a
  // power cut would lose.
  static Result<PackWriter> Open(const std::string& packs_dir, uint32_t pack_id,
                                 uint64_t committed);
  PackWriter(PackWriter&&) = default;
  PackWriter& operator=(PackWriter&&) = default;

  uint32_t id() const { return id_; }
  uint64_t end() const { return end_; }               // offset of the next frame
  uint64_t committed() const { return committed_; }   // what the index references
  bool direct() const { return direct_fd_.valid(); }  // whole blocks go with O_DIRECT

  // Appends `frame`; its offset in the pack is end() before the call. On an error, end() may
  // have moved over part of it: Truncate or Rollback drops it.
  Status Append(std::span<const uint8_t> frame);
  // Writes buffered frames and fdatasyncs the pack.
  Status Sync();
  // Starts syncing what has reached the file in the background, for a Sync soon: the flush
  // then overlaps the caller's last work instead of following it.
  void SyncSoon();
  // The index now references everything appended (call after the LMDB commit).
  void MarkCommitted() { committed_ = end_; }
  // Drops everything appended since the last commit (after a failed add).
  Status Rollback();
  // Drops what was appended at or after `offset` (>= committed()): a failed file's frames.
  Status Truncate(uint64_t offset);

 private:
  PackWriter() = default;
  Status LoadTail();       // makes the buffer hold [base_, flushed_)
  Status Flush(bool all);  // writes whole blocks, and with `all` the rest too
  Status WriteDirect(uint64_t offset, std::span<const uint8_t> bytes);
  Status WriteBuffered(uint64_t offset, std::span<const uint8_t> bytes);
  void StartSyncer();

  UniqueFd fd_;
  UniqueFd direct_fd_;  // the same file with O_DIRECT (invalid: the file system refused it)
  std::unique_ptr<BackgroundSyncer> syncer_;  // started at the first write
  uint32_t id_ = 0;
  uint64_t end_ = 0;
  uint64_t committed_ = 0;
  uint64_t flushed_ = 0;     // the file holds [0, flushed_)
  uint64_t base_ = 0;        // the buffer holds [base_, end_): block-aligned when direct()
  bool tail_ready_ = false;  // whether it holds [base_, flushed_) yet (read lazily)
  PageBuffer buffer_;
};

}  // namespace zipnn::index
