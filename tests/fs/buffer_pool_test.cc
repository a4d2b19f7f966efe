// BufferPool: recycled chunk buffers, a reserve mapped ahead, and a bound on what it keeps.
#include "fs/buffer_pool.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <vector>

namespace zipnn::fs {
namespace {

constexpr size_t kUnit = 64u << 10;

TEST(BufferPoolTest, ReserveIsMappedAheadAndKeptWithinTheBound) {
  // Reserve 4 units, keep at most 6: whatever the refill thread has done meanwhile, the free
  // list holds the reserve after FillReserve and never more than the bound.
  std::shared_ptr<BufferPool> pool = BufferPool::Create(kUnit, 6 * kUnit, 4 * kUnit);
  ASSERT_TRUE(pool->FillReserve());
  EXPECT_GE(pool->free_buffers(), 4u);
  EXPECT_LE(pool->free_buffers(), 6u);
  std::vector<std::unique_ptr<BufferPool::Buffer>> held;
  std::set<uint8_t*> seen;
  for (int i = 0; i < 20; ++i) {
    held.push_back(pool->Get(kUnit - i));  // smaller sizes share the unit
    ASSERT_NE(held.back(), nullptr);
    EXPECT_EQ(held.back()->size(), kUnit - i);
    EXPECT_TRUE(seen.insert(held.back()->data()).second) << "a buffer handed out twice";
    std::memset(held.back()->data(), i, held.back()->size());
    EXPECT_LE(pool->free_buffers(), 6u);
  }
  for (int i = 0; i < 20; ++i) EXPECT_EQ(held[i]->data()[kUnit - i - 1], i) << "buffers overlap";
  held.clear();
  EXPECT_LE(pool->free_buffers(), 6u) << "freed buffers beyond the bound are unmapped";
  EXPECT_GE(pool->free_buffers(), 4u);
}

TEST(BufferPoolTest, UnitsThatAreNotWholePagesNeverShareOne) {
  // Chunk sizes need only be multiples of 8: buffers are unmapped one by one, so each must own
  // its pages, or unmapping one would take the start of the next with it.
  constexpr size_t kOdd = 100000;
  std::shared_ptr<BufferPool> pool = BufferPool::Create(kOdd, 3 * kOdd, 2 * kOdd);
  ASSERT_TRUE(pool->FillReserve());
  std::vector<std::unique_ptr<BufferPool::Buffer>> held;
  for (int i = 0; i < 40; ++i) {
    held.push_back(pool->Get(kOdd));
    ASSERT_NE(held.back(), nullptr);
    std::memset(held.back()->data(), i, kOdd);
  }
  for (int i = 0; i < 40; i += 2) held[i].reset();  // most are unmapped: the free list is full
  for (int i = 1; i < 40; i += 2) {
    for (size_t k = 0; k < kOdd; k += 4096) ASSERT_EQ(held[i]->data()[k], i) << k;
    ASSERT_EQ(held[i]->data()[kOdd - 1], i);
    std::memset(held[i]->data(), 0, kOdd);  // still mapped and writable
  }
}

TEST(BufferPoolTest, OversizedBuffersAreNotKept) {
  std::shared_ptr<BufferPool> pool = BufferPool::Create(kUnit, 8 * kUnit);
  const size_t before = pool->free_buffers();
  {
    std::unique_ptr<BufferPool::Buffer> big = pool->Get(3 * kUnit + 5);
    ASSERT_NE(big, nullptr);
    std::memset(big->data(), 1, big->size());
  }
  EXPECT_EQ(pool->free_buffers(), before);
  { std::unique_ptr<BufferPool::Buffer> part = pool->Get(kUnit / 2); }
  EXPECT_EQ(pool->free_buffers(), before + 1) << "a unit buffer is recycled";
  EXPECT_TRUE(pool->FillReserve()) << "no reserve: nothing to do";
  EXPECT_EQ(pool->free_buffers(), before + 1);
}

// A buffer of more than an eighth of a unit takes a unit (recycled warm, not mapped anew) and says
// so: the cache charged its size instead, and 3000 files of 4 KiB read through a 64 MiB cache
// took 530 MiB. A smaller one (a tiny tensor's chunk) comes from the heap at its own size: a unit
// each, a read across 20k chunks of ~40 bytes held 5 GB.
TEST(BufferPoolTest, BuffersTellTheMemoryTheyHold) {
  std::shared_ptr<BufferPool> pool = BufferPool::Create(kUnit, 8 * kUnit);
  const size_t before = pool->free_buffers();
  {
    std::unique_ptr<BufferPool::Buffer> tiny = pool->Get(100);
    ASSERT_NE(tiny, nullptr);
    EXPECT_EQ(tiny->size(), 100u);
    EXPECT_LT(tiny->footprint(), 200u);
    std::memset(tiny->data(), 1, tiny->size());
    std::unique_ptr<BufferPool::Buffer> small = pool->Get(kUnit / 8 + 1);
    ASSERT_NE(small, nullptr);
    EXPECT_EQ(small->footprint(), kUnit);
    std::unique_ptr<BufferPool::Buffer> big = pool->Get(3 * kUnit + 1);
    ASSERT_NE(big, nullptr);
    EXPECT_GE(big->footprint(), 3 * kUnit + 1);
  }
  EXPECT_EQ(pool->free_buffers(), before + 1) << "only the unit is recycled";
}

TEST(BufferPoolTest, BuffersOutliveThePoolsOwner) {
  std::unique_ptr<BufferPool::Buffer> b;
  {
    std::shared_ptr<BufferPool> pool = BufferPool::Create(kUnit, 2 * kUnit, 2 * kUnit);
    b = pool->Get(kUnit);
  }  // the buffer keeps the pool (and its refill thread) alive until it goes
  ASSERT_NE(b, nullptr);
  std::memset(b->data(), 7, b->size());
  b.reset();
}

}  // namespace
}  // namespace zipnn::fs
