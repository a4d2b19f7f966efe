// ChunkCache: decoded chunks in memory, keyed by the hash of their raw bytes.
//
// - Single-flight: concurrent requests for one chunk wait on one decode.
// - Byte-capped: ready chunks are evicted least-recently-used first when the cache holds more than
//   its capacity. A chunk is charged the memory its buffer holds (a pool unit for a chunk of up
//   to a unit that does not come from the heap) and its entry's, not its size: charged by size,
//   small files let a 64 MiB cache hold 500 MiB. A chunk
//   somebody holds (a ChunkRef outside the cache) is never evicted, so a reply can point into it;
//   if every chunk is in use the cache runs over its capacity until they are released.
// - Keyed by content, not by file: a rewritten file gets new keys, so writes never need to
//   invalidate anything here, and identical chunks of different files are decoded once.
// - Scan-resistant: a chunk whose every byte has been served (NoteServed) moves to a short
//   "consumed" list, evicted first and kept under its own budget. A sequential stream, whose
//   bytes the kernel now caches itself, then recycles a few warm buffers instead of filling the
//   cache with chunks nobody will ask for again, while chunks read in pieces stay cached.
// - No priority inversion: a reader that joins a prefetch in flight lifts the prefetching
//   thread to normal priority (prefetch workers run niced; the Prefetcher restores it).
// - Failed loads are not cached: the next request tries again (and fails again, if the frame is
//   damaged).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "codec/status.h"
#include "fs/buffer_pool.h"
#include "index/index.h"

namespace zipnn::fs {

using ChunkBytes = BufferPool::Buffer;  // a decoded chunk
using ChunkRef = std::shared_ptr<const ChunkBytes>;
using ChunkLoader = std::function<Result<ChunkRef>()>;

struct ChunkCacheStats {
  uint64_t hits = 0;           // requests served from a ready chunk
  uint64_t misses = 0;         // requests that decoded the chunk themselves
  uint64_t joins = 0;          // requests that waited on someone else's decode
  uint64_t prefetched = 0;     // chunks loaded ahead of any request
  uint64_t prefetch_hits = 0;  // prefetched chunks later requested (counted once per load)
  uint64_t evictions = 0;
  uint64_t failures = 0;  // loads that failed
  uint64_t bytes = 0;     // memory of chunks held (ready, in use or not): their charges
  uint64_t entries = 0;
};

class ChunkCache {
 public:
  // `consumed_budget`: bytes of fully served chunks kept, at most (within the capacity).
  explicit ChunkCache(uint64_t capacity_bytes, uint64_t consumed_budget = UINT64_MAX);
  ChunkCache(const ChunkCache&) = delete;
  ChunkCache& operator=(const ChunkCache&) = delete;

  // The chunk `key`: from the cache, from a decode in flight, or by calling `load` on this
  // thread (and caching its result). Never waits for anything but this chunk.
  Result<ChunkRef> Get(const index::ChunkHash& key, const ChunkLoader& load);

  // Loads `key` ahead of use unless it is cached or being loaded. Returns true if it loaded it.
  bool Prefetch(const index::ChunkHash& key, const ChunkLoader& load);

  // Records that `bytes` of chunk `key` were served to a reader.
  void NoteServed(const index::ChunkHash& key, uint64_t bytes);

  bool Contains(const index::ChunkHash& key) const;
  // What each entry costs the capacity besides its buffer's footprint.
  static constexpr uint64_t kEntryBytes = 160;
  uint64_t capacity() const { return capacity_; }
  ChunkCacheStats stats() const;

 private:
  struct KeyHash {
    size_t operator()(const index::ChunkHash& h) const;
  };
  // One decode in flight; waiters block on its condition variable.
  struct Flight {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    pid_t prefetcher = 0;  // the thread loading it ahead of use, at a lower priority
    Result<ChunkRef> result = Status::Io("load did not finish");
  };
  struct Entry {
    ChunkRef data;                              // null while loading
    std::shared_ptr<Flight> flight;             // set while loading
    std::list<index::ChunkHash>::iterator lru;  // in lru_, or in consumed_ when consumed
    uint64_t served = 0;
    bool consumed = false;
    bool prefetched_unused = false;
  };

  static uint64_t Charge(const ChunkBytes& c);
  Result<ChunkRef> Load(const index::ChunkHash& key, const ChunkLoader& load,
                        std::shared_ptr<Flight> flight, bool prefetch);
  void EvictLocked();
  // Evicts from the cold end of `list` chunks not in use while `over()` holds.
  template <class Over>
  void EvictFrom(std::list<index::ChunkHash>& list, Over over);

  const uint64_t capacity_;
  const uint64_t consumed_budget_;
  mutable std::mutex mu_;
  std::unordered_map<index::ChunkHash, Entry, KeyHash> map_;
  std::list<index::ChunkHash> lru_;       // ready entries, most recently used first
  std::list<index::ChunkHash> consumed_;  // fully served entries, most recent first
  uint64_t bytes_ = 0;
  uint64_t consumed_bytes_ = 0;
  ChunkCacheStats stats_;
};

}  // namespace zipnn::fs
