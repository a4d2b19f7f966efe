// PageBuffer and MapHugePages: aligned, whole huge pages, growing without losing the mapping's
// bounds.
#include "codec/page_buffer.h"

#include <gtest/gtest.h>

#include <cstring>

namespace zipnn {
namespace {

TEST(PageBufferTest, GrowsInWholeAlignedHugePagesAndMoves) {
  PageBuffer b;
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(b.capacity(), 0u);
  ASSERT_TRUE(b.Reserve(1));
  EXPECT_EQ(b.capacity(), kHugePageSize);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % kHugePageSize, 0u);
  uint8_t* first = b.data();
  ASSERT_TRUE(b.Reserve(kHugePageSize));
  EXPECT_EQ(b.data(), first) << "room enough: no new mapping";
  ASSERT_TRUE(b.Reserve(kHugePageSize + 1));
  EXPECT_EQ(b.capacity(), 2 * kHugePageSize);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % kHugePageSize, 0u);
  std::memset(b.data(), 0x5a, b.capacity());  // all of it mapped and writable

  PageBuffer moved(std::move(b));
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(b.capacity(), 0u);
  EXPECT_EQ(moved.data()[moved.capacity() - 1], 0x5a);
  PageBuffer assigned;
  ASSERT_TRUE(assigned.Reserve(10));
  assigned = std::move(moved);
  EXPECT_EQ(assigned.capacity(), 2 * kHugePageSize);
  EXPECT_EQ(assigned.data()[0], 0x5a);
}

TEST(PageBufferTest, MappingsCanBeReleasedInAlignedParts) {
  uint8_t* p = MapHugePages(3 * kHugePageSize - 5);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kHugePageSize, 0u);
  std::memset(p, 1, 3 * kHugePageSize);  // rounded up to whole huge pages
  UnmapPages(p + kHugePageSize, kHugePageSize);
  p[0] = 2;
  p[3 * kHugePageSize - 1] = 2;
  UnmapPages(p, kHugePageSize);
  UnmapPages(p + 2 * kHugePageSize, kHugePageSize);
  EXPECT_EQ(MapHugePages(0), nullptr);
}

}  // namespace
}  // namespace zipnn
