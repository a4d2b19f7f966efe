// ChunkCache's scan resistance: fully served chunks go to a small "consumed" list evicted first,
// so a sequential stream recycles a few buffers while chunks read in pieces stay cached.
#include <gtest/gtest.h>

#include <cstring>

#include "fs/chunk_cache.h"

namespace zipnn::fs {
namespace {

constexpr size_t kChunk = 4096;
// What a chunk costs the cache: a buffer pool unit of kChunk, and its entry.
constexpr size_t kCharge = kChunk + ChunkCache::kEntryBytes;

index::ChunkHash Key(uint32_t n) {
  index::ChunkHash h{};
  std::memcpy(h.data() + 12, &n, sizeof n);
  return h;
}

class ScanTest : public ::testing::Test {
 protected:
  // Capacity for 16 chunks, of which at most 4 fully served.
  ChunkCache cache_{16 * kCharge, 4 * kCharge};
  std::shared_ptr<BufferPool> pool_ = BufferPool::Create(kChunk, 0);

  ChunkLoader Loader(int* loads) {
    return [this, loads]() -> Result<ChunkRef> {
      ++*loads;
      return ChunkRef(pool_->Get(kChunk));
    };
  }
};

TEST_F(ScanTest, FullyServedChunksBeyondTheBudgetAreEvictedFirst) {
  int loads = 0;
  for (uint32_t k = 0; k < 10; ++k) {
    ASSERT_TRUE(cache_.Get(Key(k), Loader(&loads)).ok());
    cache_.NoteServed(Key(k), kChunk);  // read through, as a sequential stream does
  }
  // Only the budget's worth of consumed chunks stays, well under the capacity.
  EXPECT_EQ(cache_.stats().bytes, 4 * kCharge);
  EXPECT_TRUE(cache_.Contains(Key(9)));
  EXPECT_FALSE(cache_.Contains(Key(0)));
}

TEST_F(ScanTest, PartlyServedChunksStayCached) {
  int loads = 0;
  for (uint32_t k = 0; k < 10; ++k) {
    ASSERT_TRUE(cache_.Get(Key(k), Loader(&loads)).ok());
    cache_.NoteServed(Key(k), kChunk / 2);  // random reads touch parts of chunks
  }
  EXPECT_EQ(cache_.stats().bytes, 10 * kCharge);
  for (uint32_t k = 0; k < 10; ++k) EXPECT_TRUE(cache_.Contains(Key(k))) << k;
}

TEST_F(ScanTest, ConsumedChunksGoBeforeLiveOnesWhenFull) {
  int loads = 0;
  for (uint32_t k = 0; k < 12; ++k) ASSERT_TRUE(cache_.Get(Key(k), Loader(&loads)).ok());
  for (uint32_t k = 100; k < 104; ++k) {
    ASSERT_TRUE(cache_.Get(Key(k), Loader(&loads)).ok());
    cache_.NoteServed(Key(k), kChunk);
  }
  ASSERT_EQ(cache_.stats().bytes, 16 * kCharge);
  // Over capacity: a consumed chunk goes, although the live ones were used less recently.
  ASSERT_TRUE(cache_.Get(Key(200), Loader(&loads)).ok());
  for (uint32_t k = 0; k < 12; ++k) EXPECT_TRUE(cache_.Contains(Key(k))) << k;
  EXPECT_FALSE(cache_.Contains(Key(100)));
}

TEST_F(ScanTest, AConsumedChunkAskedForAgainIsLiveAgain) {
  int loads = 0;
  ASSERT_TRUE(cache_.Get(Key(1), Loader(&loads)).ok());
  cache_.NoteServed(Key(1), kChunk);
  ASSERT_TRUE(cache_.Get(Key(1), Loader(&loads)).ok());  // a hit: no new load
  EXPECT_EQ(loads, 1);
  // Now live: ten more consumed chunks push others out, not this one.
  for (uint32_t k = 10; k < 20; ++k) {
    ASSERT_TRUE(cache_.Get(Key(k), Loader(&loads)).ok());
    cache_.NoteServed(Key(k), kChunk);
  }
  EXPECT_TRUE(cache_.Contains(Key(1)));
}

TEST_F(ScanTest, AChunkInUseIsNotEvictedEvenWhenConsumed) {
  int loads = 0;
  Result<ChunkRef> held = cache_.Get(Key(7), Loader(&loads));
  ASSERT_TRUE(held.ok());
  cache_.NoteServed(Key(7), kChunk);
  for (uint32_t k = 10; k < 20; ++k) {
    ASSERT_TRUE(cache_.Get(Key(k), Loader(&loads)).ok());
    cache_.NoteServed(Key(k), kChunk);
  }
  EXPECT_TRUE(cache_.Contains(Key(7)));
}

}  // namespace
}  // namespace zipnn::fs
