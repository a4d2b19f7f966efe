// Pack files: codec frames back to back, append-only. Internal to index/.
//
// A pack has no header or table: the chunks database says where each frame is, and the meta
// database how many bytes of each pack are committed. Bytes past that length were appended by a
// writer that did not commit (a crash or an error) and are cut off when a writer opens the pack.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "codec/container.h"
#include "codec/status.h"

namespace zipnn::index {

std::string PackPath(const std::string& packs_dir, uint32_t pack_id);

// Reads frames from any pack; file descriptors are opened on first use and kept. Thread-safe.
class PackReader {
 public:
  explicit PackReader(std::string packs_dir) : dir_(std::move(packs_dir)) {}
  Status Read(uint32_t pack_id, uint64_t offset, std::span<uint8_t> out);

 private:
  std::string dir_;
  std::mutex mutex_;
  std::map<uint32_t, UniqueFd> fds_;
};

// fdatasyncs a file on a thread of its own when asked, so that a long run of appends reaches the
// disk while the appender goes on: a flush takes time in proportion to what it flushes (measured
// here: ~1 ms per MB, however early writeback was started), and the Sync before a commit then has
// little left. A failure is kept for Drain: the kernel reports a writeback error once per open
// file, so the appender's own fdatasync would not see it.
class BackgroundSyncer {
 public:
  // Syncs a duplicate of `fd`, so it never outlives what it syncs. Null if no fd or thread.
  static std::unique_ptr<BackgroundSyncer> Start(int fd);
  ~BackgroundSyncer();  // waits for a sync under way
  BackgroundSyncer(const BackgroundSyncer&) = delete;
  BackgroundSyncer& operator=(const BackgroundSyncer&) = delete;

  void Request();  // never blocks
  // Waits until every requested sync has run; returns the first failure since the last call.
  Status Drain();

 private:
  explicit BackgroundSyncer(UniqueFd fd) : fd_(std::move(fd)) {}
  void Loop();

  const UniqueFd fd_;
  std::mutex mu_;
  std::condition_variable cv_;       // the thread: a request or stop
  std::condition_variable idle_cv_;  // Drain: the sync under way is done
  bool requested_ = false, running_ = false, stop_ = false;
  Status error_;
  std::thread thread_;
};

// Appends frames to one pack. Frames go to a buffer and reach the file in large writes; Sync
// makes everything appended durable. Not thread-safe (the store's writer path owns it).
class PackWriter {
 public:
  // Opens (creating) pack `pack_id` and cuts it to `committed` bytes.
  static Result<PackWriter> Open(const std::string& packs_dir, uint32_t pack_id,
                                 uint64_t committed);
  PackWriter(PackWriter&&) = default;
  PackWriter& operator=(PackWriter&&) = default;

  uint32_t id() const { return id_; }
  uint64_t end() const { return end_; }              // offset of the next frame
  uint64_t committed() const { return committed_; }  // what the index references

  // Appends `frame`; its offset in the pack is end() before the call.
  Status Append(std::span<const uint8_t> frame);
  // Writes buffered frames and fdatasyncs the pack.
  Status Sync();
  // The index now references everything appended (call after the LMDB commit).
  void MarkCommitted() { committed_ = end_; }
  // Drops everything appended since the last commit (after a failed add).
  Status Rollback();
  // Drops what was appended at or after `offset` (>= committed()): a failed file's frames.
  Status Truncate(uint64_t offset);

 private:
  PackWriter() = default;
  Status Flush();
  Status Write(std::span<const uint8_t> bytes);  // at flushed_, then starts its writeback

  UniqueFd fd_;
  std::unique_ptr<BackgroundSyncer> syncer_;  // started when first needed (null: none yet)
  uint32_t id_ = 0;
  uint64_t end_ = 0;
  uint64_t committed_ = 0;
  uint64_t flushed_ = 0;   // file offset where the buffer goes
  uint64_t unsynced_ = 0;  // bytes written since the last sync was asked for
  std::vector<uint8_t> buffer_;
};

}  // namespace zipnn::index
