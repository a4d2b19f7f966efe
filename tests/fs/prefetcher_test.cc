// Prefetcher: stream detection per file region, window growth, the queue bound.
//
// The fetch function records what the workers fetch. How the prefetcher splits its queue into
// jobs is its own business, so tests wait (on a condition variable, with a deadline) for the
// bytes they expect to be fetched, and judge everything fetched only once the prefetcher is
// destroyed: its destructor joins the workers, so nothing more can come. Never sleeps.
#include "fs/prefetcher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <numeric>
#include <set>
#include <vector>

namespace zipnn::fs {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kPiece = 64 << 10;
constexpr uint64_t kMaxWindow = 1 << 20;

struct Job {
  uint64_t ino, begin, end;
};

// True if the `jobs` of `ino` cover [begin, end) without gaps.
bool Covers(std::vector<Job> jobs, uint64_t ino, uint64_t begin, uint64_t end) {
  std::erase_if(jobs, [&](const Job& j) { return j.ino != ino; });
  std::sort(jobs.begin(), jobs.end(), [](const Job& a, const Job& b) { return a.begin < b.begin; });
  uint64_t pos = begin;
  for (const Job& j : jobs) {
    if (j.begin <= pos && j.end > pos) pos = j.end;
  }
  return pos >= end;
}

// Records the fetches of the workers; can hold them at a gate.
class Recorder {
 public:
  Prefetcher::FetchFn Fn() {
    return [this](uint64_t ino, uint64_t b, uint64_t e) { Fetch(ino, b, e); };
  }
  void Fetch(uint64_t ino, uint64_t begin, uint64_t end) {
    std::unique_lock lock(mu_);
    ++entered_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !closed_; });
    jobs_.push_back(Job{ino, begin, end});
    cv_.notify_all();
  }
  // Waits until the fetches of `ino` cover [begin, end).
  bool WaitForCoverage(uint64_t ino, uint64_t begin, uint64_t end) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return Covers(jobs_, ino, begin, end); });
  }
  bool WaitEntered(uint64_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return entered_ >= n; });
  }
  void Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  void Open() {
    std::lock_guard lock(mu_);
    closed_ = false;
    cv_.notify_all();
  }
  std::vector<Job> jobs() {
    std::lock_guard lock(mu_);
    return jobs_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Job> jobs_;
  uint64_t entered_ = 0;
  bool closed_ = false;
};

PrefetcherOptions SmallOptions() {
  PrefetcherOptions o;
  o.workers = 2;
  o.piece = kPiece;
  o.max_window = kMaxWindow;
  o.queue_limit = 1024;
  return o;
}

// Every fetch is a non-empty part of one piece, and no byte is fetched twice.
void ExpectPiecesWithoutOverlap(std::vector<Job> jobs) {
  for (const Job& j : jobs) {
    EXPECT_LT(j.begin, j.end);
    EXPECT_EQ(j.begin / kPiece, (j.end - 1) / kPiece)
        << "fetch " << j.begin << ".." << j.end << " spans pieces";
  }
  std::sort(jobs.begin(), jobs.end(), [](const Job& a, const Job& b) {
    return a.ino != b.ino ? a.ino < b.ino : a.begin < b.begin;
  });
  for (size_t i = 1; i < jobs.size(); ++i) {
    if (jobs[i].ino == jobs[i - 1].ino) {
      EXPECT_GE(jobs[i].begin, jobs[i - 1].end) << "bytes fetched twice at " << jobs[i].begin;
    }
  }
}

TEST(PrefetcherTest, WindowStartsSmall) {
  constexpr uint64_t kFile = 64 << 20, kRead = 128 << 10;
  Recorder rec;
  {
    Prefetcher p(SmallOptions(), rec.Fn());
    p.OnRead(7, 0, kRead, kFile);
    EXPECT_EQ(p.stats().jobs_queued, 0u) << "one read is not a stream yet";
    p.OnRead(7, kRead, kRead, kFile);
    EXPECT_EQ(p.stats().streams_detected, 1u);
    ASSERT_TRUE(rec.WaitForCoverage(7, 2 * kRead, 2 * kRead + 1)) << "nothing read ahead";
  }
  uint64_t ahead = 0;
  for (const Job& j : rec.jobs()) ahead = std::max(ahead, j.end);
  EXPECT_LE(ahead, 2 * kRead + kMaxWindow / 2) << "the first window should be small";
  ExpectPiecesWithoutOverlap(rec.jobs());
}

TEST(PrefetcherTest, SequentialReadsGrowTheWindowUpToMaxWindow) {
  constexpr uint64_t kFile = 64 << 20, kRead = 128 << 10;
  Recorder rec;
  uint64_t pos = 0;
  {
    Prefetcher p(SmallOptions(), rec.Fn());
    for (int i = 0; i < 24; ++i) {
      p.OnRead(7, pos, kRead, kFile);
      pos += kRead;
    }
    EXPECT_EQ(p.stats().streams_detected, 1u);
    // Work the reader has already passed may be dropped; what lies ahead of it must come.
    EXPECT_TRUE(rec.WaitForCoverage(7, pos, pos + kMaxWindow))
        << "the stream is not read ahead by max_window";
  }
  for (const Job& j : rec.jobs()) {
    EXPECT_EQ(j.ino, 7u);
    EXPECT_GE(j.begin, kRead) << "prefetched bytes the reader had already read";
    EXPECT_LE(j.end, pos + kMaxWindow) << "read ahead beyond max_window";
  }
  ExpectPiecesWithoutOverlap(rec.jobs());
}

TEST(PrefetcherTest, StreamStopsAtTheEndOfTheFile) {
  // Neither size is a multiple of the piece; the window would reach far past the end.
  constexpr uint64_t kFile = 1000000, kRead = 100000;
  Recorder rec;
  uint64_t pos = 0;
  {
    Prefetcher p(SmallOptions(), rec.Fn());
    for (; pos < kFile - 3 * kRead; pos += kRead) p.OnRead(3, pos, kRead, kFile);
    EXPECT_TRUE(rec.WaitForCoverage(3, pos, kFile)) << "the last bytes are not read ahead";
  }
  for (const Job& j : rec.jobs()) EXPECT_LE(j.end, kFile) << "prefetch past the end of the file";
  ExpectPiecesWithoutOverlap(rec.jobs());
}

TEST(PrefetcherTest, RandomReadsQueueNothing) {
  constexpr uint64_t kFile = 1ull << 30, kSlot = 16 << 20;
  Recorder rec;
  Prefetcher p(SmallOptions(), rec.Fn());
  // 64 reads of 4 KiB in a shuffled order of 16 MiB slots: never near one another.
  std::vector<uint64_t> slots(64);
  std::iota(slots.begin(), slots.end(), 0);
  uint64_t state = 99;
  for (size_t i = slots.size() - 1; i > 0; --i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    std::swap(slots[i], slots[(state >> 33) % (i + 1)]);
  }
  for (uint64_t s : slots) p.OnRead(1, s * kSlot + (s * 4096) % kSlot, 4096, kFile);
  EXPECT_EQ(p.stats().jobs_queued, 0u);
  EXPECT_EQ(p.stats().streams_detected, 0u);
}

TEST(PrefetcherTest, InterleavedStreamsInOneFileAreBothDetected) {
  // Two readers of one file through one mapping (two processes, say): their requests interleave
  // in one sequence of reads of one inode.
  constexpr uint64_t kFile = 256 << 20, kRead = 128 << 10, kB = 100 << 20;
  Recorder rec;
  uint64_t a = 0, b = kB;
  {
    Prefetcher p(SmallOptions(), rec.Fn());
    for (int i = 0; i < 12; ++i) {
      p.OnRead(5, a, kRead, kFile);
      a += kRead;
      p.OnRead(5, b, kRead, kFile);
      b += kRead;
    }
    EXPECT_EQ(p.stats().streams_detected, 2u);
    EXPECT_TRUE(rec.WaitForCoverage(5, a, a + kMaxWindow)) << "stream A is not read ahead";
    EXPECT_TRUE(rec.WaitForCoverage(5, b, b + kMaxWindow)) << "stream B is not read ahead";
  }
  for (const Job& j : rec.jobs()) {
    EXPECT_TRUE(j.end <= a + kMaxWindow || (j.begin >= kB && j.end <= b + kMaxWindow))
        << "fetch " << j.begin << ".." << j.end << " belongs to no stream";
  }
  ExpectPiecesWithoutOverlap(rec.jobs());
}

TEST(PrefetcherTest, StreamsOfDifferentFilesAreSeparate) {
  constexpr uint64_t kFile = 64 << 20, kRead = 128 << 10;
  Recorder rec;
  Prefetcher p(SmallOptions(), rec.Fn());
  // Eight files read round robin at offsets that would be one sequential stream if they were
  // one file; each file on its own sees reads 1 MiB apart: no stream.
  for (uint64_t i = 0; i < 24; ++i) p.OnRead(10 + (i % 8), i * kRead, kRead, kFile);
  EXPECT_EQ(p.stats().jobs_queued, 0u);
  EXPECT_EQ(p.stats().streams_detected, 0u);
  // Each file read sequentially on its own, interleaved: both are detected.
  for (uint64_t i = 0; i < 4; ++i) {
    p.OnRead(20, i * kRead, kRead, kFile);
    p.OnRead(21, i * kRead, kRead, kFile);
  }
  EXPECT_EQ(p.stats().streams_detected, 2u);
  EXPECT_TRUE(rec.WaitForCoverage(20, 4 * kRead, 5 * kRead));
  EXPECT_TRUE(rec.WaitForCoverage(21, 4 * kRead, 5 * kRead));
}

TEST(PrefetcherTest, ForgetDropsAFilesStreams) {
  constexpr uint64_t kFile = 64 << 20, kRead = 128 << 10;
  Recorder rec;
  Prefetcher p(SmallOptions(), rec.Fn());
  p.OnRead(4, 0, kRead, kFile);
  p.Forget(4);
  p.OnRead(4, kRead, kRead, kFile);  // would continue the stream, had it been remembered
  EXPECT_EQ(p.stats().jobs_queued, 0u);
  EXPECT_EQ(p.stats().streams_detected, 0u);
}

TEST(PrefetcherTest, FullQueueDropsJobsInsteadOfBlocking) {
  PrefetcherOptions o = SmallOptions();
  o.workers = 1;
  o.queue_limit = 4;
  Recorder rec;
  rec.Close();  // the worker blocks inside its first fetch
  auto p = std::make_unique<Prefetcher>(o, rec.Fn());
  p->Enqueue(1, 0, kPiece);
  ASSERT_TRUE(rec.WaitEntered(1));  // the one worker is busy now: the queue only fills
  // Far more requests than the queue holds (distinct files, so nothing can be merged), and a
  // sequential stream on top, must all return at once: run them on another thread and give up
  // waiting after a deadline rather than hang.
  constexpr uint64_t kFiles = 100;
  auto producer = std::async(std::launch::async, [&] {
    for (uint64_t f = 0; f < kFiles; ++f) p->Enqueue(100 + f, 0, kPiece);
    for (uint64_t i = 0; i < 6; ++i) p->OnRead(2, i * kPiece, kPiece, 1 << 30);
  });
  const bool returned = producer.wait_for(10s) == std::future_status::ready;
  const PrefetcherStats s = p->stats();
  rec.Open();
  ASSERT_TRUE(returned) << "Enqueue or OnRead blocked on a full queue";
  producer.get();
  EXPECT_LE(s.jobs_queued, 1 + o.queue_limit);
  EXPECT_GE(s.jobs_dropped, kFiles - o.queue_limit);
  // What was queued still runs; the rest was dropped, not deferred.
  EXPECT_TRUE(rec.WaitEntered(1 + o.queue_limit));
  p.reset();
  std::set<uint64_t> files;
  for (const Job& j : rec.jobs()) files.insert(j.ino);
  EXPECT_LE(files.size(), 1 + o.queue_limit) << "more files fetched than the queue could hold";
}

// A reader that overtakes the workers decodes what it passes itself: queued work behind it is
// dropped, not done later (it would only decode again chunks already served).
TEST(PrefetcherTest, WorkTheReaderHasPassedIsDropped) {
  constexpr uint64_t kFile = 64 << 20, kRead = 128 << 10;
  PrefetcherOptions o = SmallOptions();
  o.workers = 1;
  Recorder rec;
  rec.Close();  // the worker blocks inside its first fetch
  auto p = std::make_unique<Prefetcher>(o, rec.Fn());
  p->Enqueue(1, 0, kPiece);  // something else occupies the one worker
  ASSERT_TRUE(rec.WaitEntered(1));
  uint64_t pos = 0;
  for (; pos < 4 * kRead; pos += kRead) p->OnRead(7, pos, kRead, kFile);
  const uint64_t queued_to = 4 * kRead + kMaxWindow;  // at most this far ahead
  // The reader runs on well past everything queued for it, while the worker is still stuck.
  for (; pos < queued_to + 4 * kRead; pos += kRead) p->OnRead(7, pos, kRead, kFile);
  const uint64_t reader_at = pos;
  EXPECT_GT(p->stats().jobs_passed, 0u);
  rec.Open();
  p.reset();  // joins the worker: every fetch that will ever happen has happened
  for (const Job& j : rec.jobs()) {
    if (j.ino != 7) continue;
    EXPECT_GE(j.end, reader_at - 2 * kRead)
        << "fetched " << j.begin << ".." << j.end << ", long after the reader passed it";
  }
}

}  // namespace
}  // namespace zipnn::fs
