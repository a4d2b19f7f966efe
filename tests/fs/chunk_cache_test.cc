// ChunkCache: single-flight loads, LRU eviction by bytes, pinned chunks, failures, prefetch.
// Threads synchronise on condition variables and on the cache's own counters, never on sleeps;
// every wait has a deadline so a broken cache fails instead of hanging.
#include "fs/chunk_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace zipnn::fs {
namespace {

using namespace std::chrono_literals;

constexpr auto kDeadline = 10s;
// The cache charges a chunk the memory its buffer holds, whole pages: test chunks are a page.
constexpr size_t kPage = 4096;
// What a chunk of kPage bytes costs the cache (a buffer pool unit of kPage, and its entry).
constexpr size_t kCharge = kPage + ChunkCache::kEntryBytes;

index::ChunkHash Key(uint32_t n) {
  index::ChunkHash h{};
  std::memcpy(h.data(), &n, sizeof n);
  h[15] = static_cast<uint8_t>(n * 31 + 7);
  return h;
}

// A decoded chunk of `size` bytes, every byte derived from `tag` so holders can check it.
ChunkRef MakeChunk(const std::shared_ptr<BufferPool>& pool, size_t size, uint32_t tag) {
  std::unique_ptr<ChunkBytes> buf = pool->Get(size);
  for (size_t i = 0; i < size; ++i) buf->data()[i] = static_cast<uint8_t>(tag * 13 + i);
  return ChunkRef(std::move(buf));
}

bool HoldsTag(const ChunkRef& c, uint32_t tag) {
  for (size_t i = 0; i < c->size(); ++i) {
    if (c->data()[i] != static_cast<uint8_t>(tag * 13 + i)) return false;
  }
  return true;
}

// A gate a loader waits on until the test opens it; reports when a loader has entered.
class Gate {
 public:
  void Enter() {
    std::unique_lock lock(mu_);
    ++entered_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
  }
  bool WaitEntered(int n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kDeadline, [&] { return entered_ >= n; });
  }
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int entered_ = 0;
  bool open_ = false;
};

// Waits, without sleeping, until `pred` holds or the deadline passes.
template <class Pred>
bool SpinUntil(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

class ChunkCacheTest : public ::testing::Test {
 protected:
  std::shared_ptr<BufferPool> pool_ = BufferPool::Create(4096, 1 << 20);
};

TEST_F(ChunkCacheTest, ConcurrentGetsOfOneKeyRunTheLoaderOnce) {
  constexpr int kThreads = 8;
  ChunkCache cache(1 << 20);
  Gate gate;
  std::atomic<int> loads{0};
  ChunkLoader load = [&]() -> Result<ChunkRef> {
    ++loads;
    gate.Enter();  // held until every other thread is waiting on this load
    return MakeChunk(pool_, kPage, 42);
  };
  std::vector<Result<ChunkRef>> results(kThreads, Status::Io("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] { results[i] = cache.Get(Key(1), load); });
  }
  ASSERT_TRUE(gate.WaitEntered(1));
  // Every other thread must join the load in flight rather than start its own.
  const bool all_joined =
      SpinUntil([&] { return cache.stats().joins == static_cast<uint64_t>(kThreads - 1); });
  gate.Open();
  for (std::thread& t : threads) t.join();
  EXPECT_TRUE(all_joined) << "joins: " << cache.stats().joins;
  EXPECT_EQ(loads.load(), 1);
  for (const Result<ChunkRef>& r : results) {
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->get(), results[0]->get()) << "every caller shares the one decoded chunk";
    EXPECT_TRUE(HoldsTag(*r, 42));
  }
  const ChunkCacheStats s = cache.stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits + s.joins, static_cast<uint64_t>(kThreads - 1));
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.bytes, kCharge);
}

TEST_F(ChunkCacheTest, WaitersOfAFailedLoadAllGetItsErrorAndNothingIsCached) {
  constexpr int kThreads = 6;
  ChunkCache cache(1 << 20);
  Gate gate;
  std::atomic<int> loads{0};
  ChunkLoader fail = [&]() -> Result<ChunkRef> {
    ++loads;
    gate.Enter();
    return Status::ChecksumMismatch("damaged frame");
  };
  std::vector<Result<ChunkRef>> results(kThreads, Status::Io("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] { results[i] = cache.Get(Key(2), fail); });
  }
  ASSERT_TRUE(gate.WaitEntered(1));
  const bool all_joined =
      SpinUntil([&] { return cache.stats().joins == static_cast<uint64_t>(kThreads - 1); });
  gate.Open();
  for (std::thread& t : threads) t.join();
  EXPECT_TRUE(all_joined);
  EXPECT_EQ(loads.load(), 1);
  for (const Result<ChunkRef>& r : results) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kChecksum);
  }
  EXPECT_FALSE(cache.Contains(Key(2)));
  EXPECT_EQ(cache.stats().failures, 1u);
  EXPECT_EQ(cache.stats().entries, 0u);
  EXPECT_EQ(cache.stats().bytes, 0u);
}

TEST_F(ChunkCacheTest, FailedLoadIsRetriedByTheNextGet) {
  ChunkCache cache(1 << 20);
  int loads = 0;
  bool damaged = true;
  ChunkLoader load = [&]() -> Result<ChunkRef> {
    ++loads;
    if (damaged) return Status::Corrupt("bad frame");
    return MakeChunk(pool_, 500, 3);
  };
  EXPECT_FALSE(cache.Get(Key(3), load).ok());
  EXPECT_FALSE(cache.Get(Key(3), load).ok());
  EXPECT_EQ(loads, 2) << "a failure must not be cached";
  damaged = false;  // e.g. a transient read error
  Result<ChunkRef> r = cache.Get(Key(3), load);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(HoldsTag(*r, 3));
  EXPECT_EQ(loads, 3);
  EXPECT_TRUE(cache.Get(Key(3), load).ok());
  EXPECT_EQ(loads, 3) << "a success is cached";
  EXPECT_EQ(cache.stats().failures, 2u);
  EXPECT_EQ(cache.stats().hits, 1u);
}

TEST_F(ChunkCacheTest, LeastRecentlyUsedChunkIsEvictedFirst) {
  ChunkCache cache(3 * kCharge);
  int loads = 0;
  auto loader = [&](uint32_t tag) {
    return [&, tag]() -> Result<ChunkRef> {
      ++loads;
      return MakeChunk(pool_, kPage, tag);
    };
  };
  for (uint32_t k = 1; k <= 3; ++k) ASSERT_TRUE(cache.Get(Key(k), loader(k)).ok());
  ASSERT_TRUE(cache.Get(Key(1), loader(1)).ok());  // 1 is now the most recently used
  EXPECT_EQ(loads, 3);
  ASSERT_TRUE(cache.Get(Key(4), loader(4)).ok());  // over capacity: 2 must go
  EXPECT_TRUE(cache.Contains(Key(1)));
  EXPECT_FALSE(cache.Contains(Key(2)));
  EXPECT_TRUE(cache.Contains(Key(3)));
  EXPECT_TRUE(cache.Contains(Key(4)));
  ChunkCacheStats s = cache.stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.bytes, 3 * kCharge) << "eviction frees the evicted chunk's bytes";
  EXPECT_EQ(s.entries, 3u);

  // An evicted chunk is loaded again when asked for.
  Result<ChunkRef> again = cache.Get(Key(2), loader(2));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(HoldsTag(*again, 2));
  EXPECT_EQ(loads, 5);
  s = cache.stats();
  EXPECT_LE(s.bytes, 3 * kCharge + kCharge) << "only the chunk held by `again` may exceed capacity";
}

TEST_F(ChunkCacheTest, ChunkHeldByACallerIsNotEvicted) {
  ChunkCache cache(2 * kCharge);
  auto loader = [&](uint32_t tag) {
    return [&, tag]() -> Result<ChunkRef> { return MakeChunk(pool_, kPage, tag); };
  };
  Result<ChunkRef> held = cache.Get(Key(1), loader(1));  // oldest, but in use
  ASSERT_TRUE(held.ok());
  for (uint32_t k = 2; k <= 6; ++k) ASSERT_TRUE(cache.Get(Key(k), loader(k)).ok());
  EXPECT_TRUE(cache.Contains(Key(1))) << "a chunk in use was evicted";
  EXPECT_TRUE(HoldsTag(*held, 1)) << "a held chunk's memory was reused";
  EXPECT_TRUE(cache.Contains(Key(6)));
  EXPECT_LE(cache.stats().bytes, 2 * kCharge);
  EXPECT_EQ(cache.stats().evictions, 4u);

  // Released, it becomes the least recently used chunk and the next load evicts it.
  held = Status::Io("released");
  ASSERT_TRUE(cache.Get(Key(7), loader(7)).ok());
  EXPECT_FALSE(cache.Contains(Key(1)));
  EXPECT_LE(cache.stats().bytes, 2 * kCharge);
}

TEST_F(ChunkCacheTest, RunsOverCapacityOnlyWhileEveryChunkIsHeld) {
  ChunkCache cache(kCharge);
  auto loader = [&](uint32_t tag) {
    return [&, tag]() -> Result<ChunkRef> { return MakeChunk(pool_, kPage, tag); };
  };
  std::vector<ChunkRef> held;
  for (uint32_t k = 1; k <= 4; ++k) {
    Result<ChunkRef> r = cache.Get(Key(k), loader(k));
    ASSERT_TRUE(r.ok());
    held.push_back(*r);
  }
  EXPECT_EQ(cache.stats().bytes, 4 * kCharge);
  EXPECT_EQ(cache.stats().evictions, 0u);
  for (uint32_t k = 1; k <= 4; ++k) EXPECT_TRUE(HoldsTag(held[k - 1], k));
  held.clear();
  ASSERT_TRUE(cache.Get(Key(5), loader(5)).ok());
  EXPECT_LE(cache.stats().bytes, kCharge) << "released chunks must be evicted on the next load";
  EXPECT_TRUE(cache.Contains(Key(5)));
}

TEST_F(ChunkCacheTest, PrefetchSkipsCachedAndInFlightKeysWithoutWaiting) {
  ChunkCache cache(1 << 20);
  int prefetch_loads = 0;
  ChunkLoader counting = [&]() -> Result<ChunkRef> {
    ++prefetch_loads;
    return MakeChunk(pool_, 100, 9);
  };
  ASSERT_TRUE(
      cache.Get(Key(1), [&]() -> Result<ChunkRef> { return MakeChunk(pool_, 100, 1); }).ok());
  EXPECT_FALSE(cache.Prefetch(Key(1), counting));
  EXPECT_EQ(prefetch_loads, 0) << "prefetch loaded a cached chunk";

  // A key being loaded by a reader: Prefetch returns at once, it never waits for that load.
  Gate gate;
  std::thread reader([&] {
    EXPECT_TRUE(cache
                    .Get(Key(2),
                         [&]() -> Result<ChunkRef> {
                           gate.Enter();
                           return MakeChunk(pool_, 100, 2);
                         })
                    .ok());
  });
  ASSERT_TRUE(gate.WaitEntered(1));
  auto prefetch = std::async(std::launch::async, [&] { return cache.Prefetch(Key(2), counting); });
  const bool returned = prefetch.wait_for(kDeadline) == std::future_status::ready;
  gate.Open();
  reader.join();
  ASSERT_TRUE(returned) << "Prefetch waited on a load in flight";
  EXPECT_FALSE(prefetch.get());
  EXPECT_EQ(prefetch_loads, 0);
  EXPECT_EQ(cache.stats().misses, 2u);
}

TEST_F(ChunkCacheTest, PrefetchedChunkServesTheNextGet) {
  ChunkCache cache(1 << 20);
  int loads = 0;
  ChunkLoader load = [&]() -> Result<ChunkRef> {
    ++loads;
    return MakeChunk(pool_, 300, 5);
  };
  EXPECT_TRUE(cache.Prefetch(Key(5), load));
  EXPECT_EQ(loads, 1);
  Result<ChunkRef> r = cache.Get(Key(5), load);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(HoldsTag(*r, 5));
  EXPECT_EQ(loads, 1);
  ASSERT_TRUE(cache.Get(Key(5), load).ok());
  const ChunkCacheStats s = cache.stats();
  EXPECT_EQ(s.prefetched, 1u);
  EXPECT_EQ(s.prefetch_hits, 1u) << "counted once per load";
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 0u);

  // A failed prefetch caches nothing; the reader loads it itself.
  EXPECT_FALSE(cache.Prefetch(Key(6), []() -> Result<ChunkRef> { return Status::Io("x"); }));
  EXPECT_FALSE(cache.Contains(Key(6)));
  EXPECT_TRUE(cache.Get(Key(6), load).ok());
}

// Resident memory of this process, in bytes.
uint64_t ResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// Small chunks (small files) each took a 256 KiB unit of the pool while the cache charged them
// their size: a 512 KiB cache of 4 KiB chunks held 32 MiB. The cache must bound the memory.
TEST(ChunkCacheMemoryTest, SmallChunksCostTheCacheTheMemoryTheyHold) {
  constexpr size_t kUnit = 256u << 10, kCapacity = 512u << 10;
  std::shared_ptr<BufferPool> pool = BufferPool::Create(kUnit, 0);
  ChunkCache cache(kCapacity);
  const uint64_t before = ResidentBytes();
  for (uint32_t k = 0; k < 512; ++k) {
    ASSERT_TRUE(
        cache.Get(Key(k), [&] { return Result<ChunkRef>(MakeChunk(pool, kPage, k)); }).ok());
  }
  const uint64_t grown = ResidentBytes() - std::min(before, ResidentBytes());
  EXPECT_LE(cache.stats().bytes, kCapacity);
  EXPECT_LT(grown, 8u << 20) << "chunks cached: " << cache.stats().entries;
}

// Many threads, many keys, a cache far smaller than the working set, some callers holding chunks
// for a while: every caller must see the bytes of its own key, and the accounting must add up.
TEST_F(ChunkCacheTest, ConcurrentStressKeepsBytesAndAccountingRight) {
  constexpr int kThreads = 8, kGets = 3000, kKeys = 48;
  constexpr size_t kChunk = kPage;
  ChunkCache cache(8 * kCharge);
  std::atomic<int> loads{0}, wrong{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      uint64_t state = 0x1234567ull * (t + 1);
      std::vector<std::pair<uint32_t, ChunkRef>> held;
      for (int i = 0; i < kGets; ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        const uint32_t k = static_cast<uint32_t>((state >> 33) % kKeys);
        auto load = [&, k]() -> Result<ChunkRef> {
          ++loads;
          if (k % 17 == 5 && (state >> 40) % 4 == 0) return Status::Io("flaky");
          return MakeChunk(pool_, kChunk, k);
        };
        Result<ChunkRef> r = (state >> 50) % 8 == 0
                                 ? (cache.Prefetch(Key(k), load), cache.Get(Key(k), load))
                                 : cache.Get(Key(k), load);
        if (!r.ok()) {
          ++errors;
          continue;
        }
        if (!HoldsTag(*r, k)) ++wrong;
        if ((state >> 45) % 4 == 0) held.emplace_back(k, *r);
        if (held.size() > 3) {
          for (auto& [hk, hc] : held) {
            if (!HoldsTag(hc, hk)) ++wrong;
          }
          held.clear();
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  const ChunkCacheStats s = cache.stats();
  EXPECT_EQ(s.hits + s.misses + s.joins, static_cast<uint64_t>(kThreads) * kGets);
  EXPECT_EQ(s.bytes, s.entries * kCharge);
  // Nothing is held any more: the next load brings the cache back within its capacity.
  ASSERT_TRUE(
      cache.Get(Key(1000), [&]() -> Result<ChunkRef> { return MakeChunk(pool_, kChunk, 1); }).ok());
  EXPECT_LE(cache.stats().bytes, 8 * kCharge);
  EXPECT_GE(static_cast<uint64_t>(loads.load()), s.misses + s.prefetched);
  EXPECT_GT(errors.load(), 0) << "the flaky keys should have failed sometimes";
}

}  // namespace
}  // namespace zipnn::fs
