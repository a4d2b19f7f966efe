// Byte grouping: the split of elements into streams and the merge back, at every SIMD level.
#include "codec/byte_groups.h"

#include <gtest/gtest.h>

#include "tests/codec/test_util.h"

namespace zipnn {
namespace {

using test::Bytes;

// Merge inverts split for every dtype, at lengths around each vector width (the 16- and 64-element
// loops and their scalar tails), with each SIMD level the CPU has.
TEST(ByteGroupsTest, MergeInvertsSplitAtEverySimdLevel) {
  test::NoteSimdFallbacks();
  for (DType t : test::kAllDTypes) {
    for (size_t n : {0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 200, 4099}) {
      const internal::GroupLayout l = internal::LayoutFor(t, n * DTypeSize(t));
      ASSERT_EQ(l.elements, n) << DTypeName(t);
      const Bytes in = test::RandomBytes(n * DTypeSize(t), n + static_cast<uint64_t>(t));
      std::vector<Bytes> streams(l.streams);
      uint8_t* ptrs[internal::kMaxStreams] = {};
      for (int s = 0; s < l.streams; s++) {
        streams[s].resize(l.StreamSize(s));
        ptrs[s] = streams[s].data();
      }
      internal::SplitStreams(t, l, in.data(), ptrs);
      for (internal::Simd simd : test::kAllSimd) {
        Bytes out(in.size(), 0xAA);
        ASSERT_TRUE(internal::MergeStreams(t, l, ptrs, out.data(), simd)) << DTypeName(t);
        ASSERT_EQ(out, in) << DTypeName(t) << " n=" << n << " simd=" << static_cast<int>(simd);
      }
    }
  }
}

}  // namespace
}  // namespace zipnn
