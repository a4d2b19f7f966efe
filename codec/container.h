// The .znn container: frames back to back, then a seek table and a fixed-size footer.
//
//   file header (8 B) | frame 0 | frame 1 | ... | seek table (32 B per frame) | footer (48 B)
//
// The table lets a reader find the frames holding any byte range of the original file without
// reading the others; the footer, at a known place, finds the table. Everything is little-endian
// and checked: the footer has its own check, the table its XXH3-64, and each frame header must
// agree with its table entry. The exact layout is in docs/format.md.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "codec/codec.h"
#include "codec/status.h"

namespace zipnn {

inline constexpr uint16_t kContainerVersion = 1;
inline constexpr size_t kContainerHeaderSize = 8;
inline constexpr size_t kContainerEntrySize = 32;
inline constexpr size_t kContainerFooterSize = 48;

// Bytes a container adds to the frames it holds.
inline constexpr uint64_t ContainerOverhead(uint64_t frames) {
  return kContainerHeaderSize + frames * kContainerEntrySize + kContainerFooterSize;
}

// An owned file descriptor, closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.Release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) Reset(o.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// pread, write and pwrite that finish the whole span (retrying short transfers and EINTR). A
// read past the end of the file is an I/O error.
Status PreadFull(int fd, uint64_t offset, std::span<uint8_t> out);
Status WriteFull(int fd, std::span<const uint8_t> bytes);
Status PwriteFull(int fd, uint64_t offset, std::span<const uint8_t> bytes);
// Whether a file read up to `size` ends there: one that grew while it was read, or one that does
// not report its size (/proc files have size 0 and yet content), would be copied cut short.
Status CheckEndsAt(int fd, uint64_t size);
// Whether host path `path` (or, where it does not exist yet, its nearest existing ancestor) is
// directory `dir` or lies in it: symlinks resolved, and compared by identity, so that a bind mount
// of `dir` is `dir`.
bool PathIsWithin(const std::string& path, const std::string& dir);

// Whether a file's blocks cover less than half its size: it has holes, most likely (cp's
// --sparse=auto asks for less than all). Reading a hole makes the kernel allocate and clear
// page-cache pages for it (measured: importing a file of 6 GiB of holes took 19 s of system time),
// so such files read through PreadSparse.
bool MayHaveHoles(int fd);
// PreadFull, except that a range wholly inside a hole comes back as zeros without a read.
Status PreadSparse(int fd, uint64_t offset, std::span<uint8_t> out);

// fdatasyncs a file on a thread of its own every few MB its writer reports, so that a long run of
// writes reaches the disk while the writer goes on (pack appends, the zipnn tool's output): a
// flush takes time in proportion to what it flushes (measured here: ~1 ms per MB, however early
// writeback was started), and the writer's final sync then has little left. A failure is kept for
// Drain: the kernel reports a writeback error once per open file, so the writer's own fdatasync
// would not see it. Thread-safe.
class BackgroundSyncer {
 public:
  // Syncs a duplicate of `fd`, so it never outlives what it syncs; `label` starts its error
  // messages. Null if no fd or thread.
  static std::unique_ptr<BackgroundSyncer> Start(int fd, std::string label);
  ~BackgroundSyncer();  // waits for a sync under way
  BackgroundSyncer(const BackgroundSyncer&) = delete;
  BackgroundSyncer& operator=(const BackgroundSyncer&) = delete;

  // `bytes` more were written: a sync starts once 8 MB are unsynced (measured: 4-16 MB alike,
  // 64 MB no help). Never blocks.
  void Wrote(uint64_t bytes);
  void Request();  // a sync now; never blocks
  // Waits until every requested sync has run (the caller syncs what came after); returns the
  // first failure since the last call.
  Status Drain();

 private:
  BackgroundSyncer(UniqueFd fd, std::string label) : fd_(std::move(fd)), label_(std::move(label)) {}
  void Loop();

  const UniqueFd fd_;
  const std::string label_;
  std::mutex mu_;
  std::condition_variable cv_;       // the thread: a request or stop
  std::condition_variable idle_cv_;  // Drain: the sync under way is done
  bool requested_ = false, running_ = false, stop_ = false;
  uint64_t unsynced_ = 0;  // bytes reported since the last sync was asked for
  Status error_;
  std::thread thread_;
};

// Parses a byte count with an optional binary suffix: "262144", "256K", "1M", "1MiB", "2G".
std::optional<uint64_t> ParseSize(std::string_view s);
// Parses plain decimal digits that fit in 64 bits: "", "-1", "+1", "0x1" and "1K" are refused
// (command-line libraries take "-1" as 2^64 - 1 or wrap large numbers around).
std::optional<uint64_t> ParseDecimal(std::string_view s);

// One frame as the seek table describes it.
struct ContainerEntry {
  uint64_t offset = 0;  // of the frame, from the start of the file
  uint32_t frame_size = 0;
  uint32_t raw_size = 0;
  uint64_t checksum = 0;  // XXH3-64 of the raw bytes, as in the frame header
  DType dtype = DType::kBytes;
  Method method = Method::kRaw;
  uint64_t raw_offset = 0;  // not stored: where the frame's bytes start in the original file
};

struct ContainerIndex {
  std::vector<ContainerEntry> entries;
  uint64_t total_raw_size = 0;
  uint64_t file_size = 0;
};

// Validates a whole container held in memory: everything ContainerReader::Open checks, plus every
// frame header against its entry (payloads are not decoded). For fuzzers and in-memory users.
Result<ContainerIndex> ParseContainer(std::span<const uint8_t> file);

// Checks that `frame` (at least its header) is the frame `entry` describes.
Status CheckFrameAgainstEntry(std::span<const uint8_t> frame, const ContainerEntry& entry);

// Writes a container sequentially: Append the frames in file order, then Finish.
// Not thread-safe. After an error every later call returns that error.
class ContainerWriter {
 public:
  // Creates or truncates `path`; the writer owns the file and closes it in Finish.
  static Result<ContainerWriter> Create(const std::string& path);
  // Writes through `fd`, which must be at offset 0 of an empty file. The caller keeps ownership
  // (and decides about fsync and rename).
  static ContainerWriter ForFd(int fd);

  ContainerWriter(ContainerWriter&&) noexcept;
  ContainerWriter& operator=(ContainerWriter&&) noexcept;
  ~ContainerWriter();

  // Appends one complete frame. The header is parsed and checked against `frame`'s size.
  Status Append(std::span<const uint8_t> frame);
  // Same, with the header already parsed by the caller (it must agree with the frame).
  Status Append(std::span<const uint8_t> frame, const FrameInfo& info);
  // Writes the seek table and footer. Appending afterwards is an error.
  Status Finish();

  uint64_t frame_count() const { return entries_.size(); }
  uint64_t raw_bytes() const { return raw_bytes_; }
  uint64_t bytes_written() const { return offset_; }  // including buffered bytes

 private:
  ContainerWriter(int fd, bool owns_fd);
  Status Write(std::span<const uint8_t> bytes);
  Status Flush();
  Status Fail(Status s);

  UniqueFd owned_fd_;
  int fd_ = -1;
  std::vector<uint8_t> buffer_;  // batches small frames into fewer write(2) calls
  std::vector<ContainerEntry> entries_;
  uint64_t offset_ = 0;  // file offset of the next byte appended
  uint64_t raw_bytes_ = 0;
  bool finished_ = false;
  Status error_;
};

// Reads a container: the seek table is loaded and validated on Open, frames on demand.
// ReadFrame(s) are safe to call concurrently; DecodeFrame and ReadRange use the reader's one
// FrameDecoder, so use one reader per thread for those.
class ContainerReader {
 public:
  // Opens and strictly validates the header, footer and seek table. A hostile or damaged file
  // yields an error (kCorrupt; kUnsupported for a newer version), never a crash or a large
  // allocation beyond the table the file really holds.
  static Result<ContainerReader> Open(const std::string& path);
  // Same, taking ownership of an open file descriptor.
  static Result<ContainerReader> OpenFd(UniqueFd fd);

  ContainerReader(ContainerReader&&) noexcept;
  ContainerReader& operator=(ContainerReader&&) noexcept;
  ~ContainerReader();

  const std::vector<ContainerEntry>& entries() const { return index_.entries; }
  uint64_t total_raw_size() const { return index_.total_raw_size; }
  uint64_t file_size() const { return index_.file_size; }
  int fd() const { return fd_.get(); }

  // Index of the frame holding byte `raw_offset` of the original (< total_raw_size()).
  size_t FrameAt(uint64_t raw_offset) const;

  // Reads frame `i` into `frame` (resized) and checks its header against the entry.
  Status ReadFrame(size_t i, std::vector<uint8_t>& frame) const;
  // Reads frames [first, first + count) with one read into `buf` (resized); frame k starts at
  // entries()[first + k].offset - entries()[first].offset. Each header is checked.
  Status ReadFrames(size_t first, size_t count, std::vector<uint8_t>& buf) const;
  // Reads and decodes frame `i` into `out`, whose size must be the entry's raw_size.
  Status DecodeFrame(size_t i, std::span<uint8_t> out);
  // Decodes original bytes [offset, offset + out.size()), which must lie inside the original,
  // reading and decoding only the frames they touch.
  Status ReadRangeInto(uint64_t offset, std::span<uint8_t> out);
  // Original bytes [offset, offset + length) into `out`, clamped at the end of the original
  // (like pread: an offset at or past the end gives an empty `out`).
  Status ReadRange(uint64_t offset, uint64_t length, std::vector<uint8_t>& out);

 private:
  ContainerReader(UniqueFd fd, ContainerIndex index);

  UniqueFd fd_;
  ContainerIndex index_;
  std::unique_ptr<FrameDecoder> decoder_;
  std::vector<uint8_t> frame_buf_;  // scratch: compressed frames
  std::vector<uint8_t> raw_buf_;    // scratch: frames only partly inside a range
};

}  // namespace zipnn
