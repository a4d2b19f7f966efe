// Tests of pack files (index/pack.h): appends reach the file whole and in order, with background
// syncs meanwhile; rollbacks and reopening drop what was not committed.
#include "index/pack.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "tests/index/store_test_util.h"

namespace zipnn::index {
namespace {

// A temporary directory (dir_) that holds the packs.
class PackTest : public test::StoreDirTest {
 protected:
  std::vector<uint8_t> FileBytes(uint32_t id) const { return test::ReadAll(PackPath(dir_, id)); }
};

TEST_F(PackTest, AppendsOfEverySizeLandInOrderAcrossBackgroundSyncs) {
  Result<PackWriter> w = PackWriter::Open(dir_, 1, 0);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  // Small frames (buffered) and large ones (written directly), 40 MB in all: several background
  // syncs run while appending.
  std::mt19937 rng(7);
  std::vector<uint8_t> expected;
  while (expected.size() < (40u << 20)) {
    const size_t n = rng() % 3 == 0 ? (300u << 10) + rng() % (2u << 20) : 1 + rng() % 70000;
    std::vector<uint8_t> frame(n, static_cast<uint8_t>(rng()));
    frame.front() = static_cast<uint8_t>(expected.size());
    ASSERT_EQ(w->end(), expected.size());
    ASSERT_TRUE(w->Append(frame).ok());
    expected.insert(expected.end(), frame.begin(), frame.end());
  }
  ASSERT_TRUE(w->Sync().ok());
  w->MarkCommitted();
  EXPECT_EQ(w->committed(), expected.size());
  EXPECT_EQ(FileBytes(1), expected);
  // Uncommitted appends are dropped by a rollback, and by the next writer to open the pack.
  ASSERT_TRUE(w->Append(std::vector<uint8_t>(9u << 20, 1)).ok());
  ASSERT_TRUE(w->Rollback().ok());
  EXPECT_EQ(FileBytes(1), expected);
  ASSERT_TRUE(w->Append(std::vector<uint8_t>(1000, 2)).ok());
  ASSERT_TRUE(w->Sync().ok());
  Result<PackWriter> again = PackWriter::Open(dir_, 1, expected.size());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(FileBytes(1), expected);
}

}  // namespace
}  // namespace zipnn::index
