#include "fs/prefetcher.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>

namespace zipnn::fs {

Prefetcher::Prefetcher(const PrefetcherOptions& opts, FetchFn fetch)
    : opts_(opts), fetch_(std::move(fetch)) {
  for (unsigned i = 0; i < std::max(1u, opts_.workers); ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    queue_.clear();
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void Prefetcher::OnRead(uint64_t ino, uint64_t offset, uint64_t size, uint64_t file_size) {
  std::lock_guard lock(mu_);
  auto [it, inserted] = files_.try_emplace(ino);
  FileStreams& file = it->second;
  if (inserted) {
    file_lru_.push_front(ino);
    file.lru = file_lru_.begin();
    if (files_.size() > opts_.files) {
      files_.erase(file_lru_.back());
      file_lru_.pop_back();
    }
  } else {
    file_lru_.splice(file_lru_.begin(), file_lru_, file.lru);
  }

  // Reads of one stream arrive a little out of order (the kernel sends read-ahead requests to
  // several FUSE threads at once), so "sequential" means near the stream's end, or inside the
  // part already queued.
  const uint64_t slack = std::max<uint64_t>(4 * size, 2 * opts_.piece);
  const uint64_t end = offset + size;
  Stream* stream = nullptr;
  for (Stream& s : file.streams) {
    const uint64_t lo = s.pos > slack ? s.pos - slack : 0;
    if (offset >= lo && offset <= std::max(s.ahead, s.pos + slack)) {
      stream = &s;
      break;
    }
  }
  if (stream == nullptr) {
    if (file.streams.size() >= opts_.streams_per_file) {
      auto oldest = std::min_element(
          file.streams.begin(), file.streams.end(),
          [](const Stream& a, const Stream& b) { return a.last_use < b.last_use; });
      file.streams.erase(oldest);
    }
    file.streams.push_back(Stream{end, end, 0, 1, ++clock_});
    return;
  }
  stream->last_use = ++clock_;
  stream->pos = std::max(stream->pos, end);
  DropPassedLocked(ino, stream->pos);
  if (++stream->reads == 2) ++stats_.streams_detected;
  stream->window = std::min(std::max(2 * stream->window, 2 * opts_.piece), opts_.max_window);
  const uint64_t want = std::min(stream->pos + stream->window, file_size);
  const uint64_t from = std::max(stream->ahead, stream->pos);
  if (want > from) {
    EnqueueLocked(ino, from, want);
    stream->ahead = want;
  }
}

void Prefetcher::DropPassedLocked(uint64_t ino, uint64_t pos) {
  // The reader decoded what it passed itself; a worker arriving there later would only decode
  // chunks already served (and perhaps evicted) again. Jobs well behind `pos` belong to other
  // streams of the file and stay.
  const uint64_t reach = 2 * opts_.max_window + 2 * opts_.piece;
  const uint64_t lo = pos > reach ? pos - reach : 0;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (it->ino == ino && it->begin >= lo && it->begin < pos) {
      if (it->end <= pos) {
        it = queue_.erase(it);
        ++stats_.jobs_passed;
        continue;
      }
      it->begin = pos;
    }
    ++it;
  }
}

void Prefetcher::Enqueue(uint64_t ino, uint64_t begin, uint64_t end) {
  std::lock_guard lock(mu_);
  EnqueueLocked(ino, begin, end);
}

void Prefetcher::EnqueueLocked(uint64_t ino, uint64_t begin, uint64_t end) {
  if (begin >= end) return;
  // A stream's next range usually continues its last one: extend that job instead of queueing
  // another, so one stream holds one place in the round robin.
  for (Job& j : queue_) {
    if (j.ino == ino && begin <= j.end && end >= j.begin) {
      j.begin = std::min(j.begin, begin);
      j.end = std::max(j.end, end);
      return;
    }
  }
  if (queue_.size() >= opts_.queue_limit) {
    ++stats_.jobs_dropped;
    return;
  }
  queue_.push_back(Job{ino, begin, end});
  ++stats_.jobs_queued;
  work_cv_.notify_one();
}

void Prefetcher::Forget(uint64_t ino) {
  std::lock_guard lock(mu_);
  auto it = files_.find(ino);
  if (it == files_.end()) return;
  file_lru_.erase(it->second.lru);
  files_.erase(it);
}

PrefetcherStats Prefetcher::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

namespace {
void SetNice(int nice) { (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), nice); }
}  // namespace

void Prefetcher::WorkerLoop() {
  // Speculative work yields the CPU to demand decodes (a FUSE thread serving a read), which
  // matters most where cores are few. Per-thread nice values are a Linux property.
  if (opts_.nice != 0) SetNice(opts_.nice);
  std::unique_lock lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    // One piece of the first job; the rest of the job goes to the back, so concurrent streams
    // (and a large tensor) share the workers instead of queueing behind each other.
    Job job = queue_.front();
    queue_.pop_front();
    const uint64_t piece_end = std::min(job.end, (job.begin / opts_.piece + 1) * opts_.piece);
    const Job piece{job.ino, job.begin, piece_end};
    if (piece_end < job.end) {
      job.begin = piece_end;
      queue_.push_back(job);
      work_cv_.notify_one();
    }
    lock.unlock();
    try {
      fetch_(piece.ino, piece.begin, piece.end);
    } catch (const std::exception&) {
      // A hint that failed (out of memory, most likely): the reader will load what it needs.
    }
    // A reader waiting on this worker's decode lifts its priority (ChunkCache): drop it again.
    if (opts_.nice != 0) SetNice(opts_.nice);
    lock.lock();
  }
}

}  // namespace zipnn::fs
