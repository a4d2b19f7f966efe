// Prefetcher: finds sequential streams in the reads of each file and decodes ahead of them on a
// pool of worker threads.
//
// Streams are tracked per file region, not per process or handle: several processes reading one
// file through one mapping interleave, and each of their streams is found. A stream's window
// starts small and doubles up to `max_window` bytes. Work goes through a bounded queue of ranges,
// served a piece at a time round robin; when it is full, prefetch requests are dropped
// (prefetching is a hint), never waited for: a FUSE thread that calls OnRead or Enqueue never
// blocks on anything but a short mutex.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace zipnn::fs {

struct PrefetcherOptions {
  unsigned workers = 2;
  uint64_t piece = 256u << 10;     // unit of work: one job per piece of a range
  uint64_t max_window = 8u << 20;  // how far a stream is read ahead, at most
  size_t queue_limit = 64;         // ranges waiting, at most
  size_t streams_per_file = 8;
  size_t files = 1024;  // files whose streams are remembered
  int nice = 10;        // scheduling priority of the workers: below demand reads
};

struct PrefetcherStats {
  uint64_t jobs_queued = 0;
  uint64_t jobs_dropped = 0;  // the queue was full
  uint64_t jobs_passed = 0;   // dropped because their stream's reader got there first
  uint64_t streams_detected = 0;
};

class Prefetcher {
 public:
  // fetch(ino, begin, end) loads the chunks of [begin, end) of file `ino` into the cache. It runs
  // on the worker threads.
  using FetchFn = std::function<void(uint64_t ino, uint64_t begin, uint64_t end)>;

  Prefetcher(const PrefetcherOptions& opts, FetchFn fetch);
  ~Prefetcher();  // drops queued jobs and joins the workers
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // Records a read of [offset, offset + size) of a file of `file_size` bytes and queues what
  // its stream will read next.
  void OnRead(uint64_t ino, uint64_t offset, uint64_t size, uint64_t file_size);
  // Queues [begin, end) of `ino` (a tensor's bytes, a read's later chunks).
  void Enqueue(uint64_t ino, uint64_t begin, uint64_t end);
  // Forgets the streams of `ino` (its data changed or the kernel forgot it).
  void Forget(uint64_t ino);

  PrefetcherStats stats() const;
  uint64_t max_window() const { return opts_.max_window; }

 private:
  struct Stream {
    uint64_t pos = 0;    // end of the furthest read seen
    uint64_t ahead = 0;  // end of what has been queued
    uint64_t window = 0;
    unsigned reads = 0;
    uint64_t last_use = 0;
  };
  struct FileStreams {
    std::vector<Stream> streams;
    std::list<uint64_t>::iterator lru;
  };
  struct Job {
    uint64_t ino, begin, end;
  };

  void EnqueueLocked(uint64_t ino, uint64_t begin, uint64_t end);
  void DropPassedLocked(uint64_t ino, uint64_t pos);
  void WorkerLoop();

  const PrefetcherOptions opts_;
  const FetchFn fetch_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  std::unordered_map<uint64_t, FileStreams> files_;
  std::list<uint64_t> file_lru_;  // most recently read first
  uint64_t clock_ = 0;
  PrefetcherStats stats_;
  std::vector<std::thread> workers_;
};

}  // namespace zipnn::fs
