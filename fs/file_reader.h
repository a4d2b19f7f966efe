// FileReader: serves byte ranges of store files from decoded chunks (ChunkCache), prefetching
// ahead of sequential streams and across a tensor (safetensors, GGUF) when its start is read.
// Knows the store and the cache, not FUSE: the filesystem turns a ReadResult into a reply.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "codec/codec.h"
#include "codec/status.h"
#include "fs/chunk_cache.h"
#include "fs/prefetcher.h"
#include "index/index.h"

namespace zipnn::fs {

struct FileReaderOptions {
  uint64_t cache_size = 512ull << 20;
  unsigned workers = 0;              // decode threads for prefetching; 0 = one per core
  unsigned prefetch = 32;            // chunks read ahead of a sequential stream, at most (0 = off)
  uint32_t chunk_size = 256u << 10;  // the store's usual chunk size: the prefetch unit
};

// A read's bytes, in place inside cached chunks that stay pinned while the result lives; or, for
// a read across more than kMaxPinnedChunks chunks, copied into `copy`, so that no read pins
// more than that many (one read across 20k tiny chunks held each, and the cache could evict
// none of them: 5 GB in a daemon with a 64 MiB cache).
struct ReadResult {
  static constexpr size_t kMaxPinnedChunks = 64;
  std::vector<ChunkRef> chunks;
  std::vector<uint8_t> copy;
  std::vector<iovec> iov;
  size_t size = 0;
};

class FileReader {
 public:
  FileReader(index::Store& store, const FileReaderOptions& opts);
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  // Bytes [offset, offset + size) of file `ino`, cut at its end (`file_size`). A damaged chunk
  // fails the read with its error (logged once per chunk).
  Result<ReadResult> Read(uint64_t ino, uint64_t offset, size_t size, uint64_t file_size);
  // Called when a file is opened: learns the tensor layout of a model file (once per inode).
  void OnOpen(uint64_t ino, uint64_t file_size);
  // The file changed or is gone: forget what is known of its layout and streams.
  void Forget(uint64_t ino);

  // Live figures as a JSON object (for `zipnnfs stats MOUNTPOINT`).
  std::string StatsJson() const;

 private:
  struct Tensors {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end), ordered; empty if none
  };

  // What one decode needs; pooled, as threads come and go (FUSE's and the prefetcher's).
  struct DecodeContext {
    explicit DecodeContext(DecoderTableCache* tables) : decoder(tables) {}
    FrameDecoder decoder;
    std::vector<uint8_t> frame;
  };
  std::unique_ptr<DecodeContext> TakeContext();
  void ReturnContext(std::unique_ptr<DecodeContext> ctx);
  Result<ChunkRef> LoadChunk(uint64_t ino, const index::ChunkLocation& loc);
  void Fetch(uint64_t ino, uint64_t begin, uint64_t end);  // a prefetch job
  void PrefetchTensor(uint64_t ino, uint64_t offset, uint64_t file_size);
  Status ReadBytes(uint64_t ino, uint64_t offset, std::span<uint8_t> out, uint64_t file_size);

  index::Store& store_;
  const FileReaderOptions opts_;
  std::shared_ptr<BufferPool> pool_;
  DecoderTableCache tables_;
  std::mutex contexts_mu_;
  std::vector<std::unique_ptr<DecodeContext>> contexts_;
  ChunkCache cache_;

  mutable std::mutex mu_;  // guards tensors_ and bad_chunks_
  std::unordered_map<uint64_t, std::shared_ptr<const Tensors>> tensors_;
  std::unordered_set<std::string> bad_chunks_;  // logged already

  std::atomic<uint64_t> reads_{0}, read_bytes_{0}, read_errors_{0};
  std::atomic<uint64_t> decoded_chunks_{0}, decoded_bytes_{0}, decode_ns_{0};
  std::atomic<uint64_t> bad_chunk_count_{0};

  std::unique_ptr<Prefetcher> prefetcher_;  // last: its workers use everything above
};

}  // namespace zipnn::fs
