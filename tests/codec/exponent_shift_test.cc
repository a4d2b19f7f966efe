// Per-column exponent shifts of BF16 chunks: the shift is a bijection on every value, the planner
// finds column scales where they are and only there, and shifted frames round-trip, come out
// smaller, and reject damaged shift blocks.
#include "codec/exponent_shift.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "codec/codec.h"
#include "tests/codec/test_util.h"

namespace zipnn {
namespace {

using internal::ShiftPlan;
using test::Bytes;

uint32_t ExponentOf(const Bytes& b, size_t i) { return (b[2 * i] | b[2 * i + 1] << 8) >> 7 & 0xff; }

TEST(ExponentShiftTest, EveryValueComesBackAndOnlyFiniteNonzeroExponentsMove) {
  Bytes all(2 * 65536);
  for (size_t v = 0; v < 65536; v++) test::StoreElement(all.data() + 2 * v, v, 2);
  for (int columns : {1, 7, 8, 33}) {
    for (int first : {0, columns / 2}) {
      for (bool avx2 : {true, false}) {
        ShiftPlan plan;
        plan.first = static_cast<uint64_t>(first);
        for (int c = 0; c < columns; c++)
          plan.shift.push_back(static_cast<int8_t>((c * 37) % 256 - 128));  // -128..127
        Bytes shifted(all.size());
        internal::ApplyShift(all.data(), shifted.data(), 65536, plan, false, avx2);
        for (size_t v = 0; v < 65536; v++) {
          const uint32_t e = ExponentOf(all, v), e2 = ExponentOf(shifted, v);
          const int s = plan.shift[(first + v) % columns];
          const uint32_t want = e == 0 || e == 255 ? e : (e - 1 + 254 * 2 - s) % 254 + 1;
          ASSERT_EQ(e2, want) << "value " << v << " shift " << s;
          ASSERT_EQ(all[2 * v] & 0x7f, shifted[2 * v] & 0x7f) << "mantissa of " << v;
          ASSERT_EQ(all[2 * v + 1] & 0x80, shifted[2 * v + 1] & 0x80) << "sign of " << v;
        }
        internal::ApplyShift(shifted.data(), shifted.data(), 65536, plan, true, avx2);  // in place
        ASSERT_EQ(shifted, all) << columns << " columns from " << first << " avx2 " << avx2;
      }
    }
  }
}

TEST(ExponentShiftTest, PlanFindsColumnScales) {
  const size_t rows = 1024, columns = 96;
  const Bytes w = test::ColumnScaledBF16(rows, columns, 1);
  ShiftPlan plan;
  internal::PlanShift(w.data(), rows * columns, {0, columns, columns}, plan);
  ASSERT_EQ(plan.shift.size(), columns);
  EXPECT_EQ(plan.first, 0u);
  // Column c is scaled by 2^-((5c) % 9): its shift, against column 0's, says so to within one.
  for (size_t c = 1; c < columns; c++) {
    const int want = -static_cast<int>((c * 5) % 9);
    EXPECT_NEAR(plan.shift[c] - plan.shift[0], want, 1) << "column " << c;
  }
  // A chunk starting mid-row: the first column follows the grid.
  internal::PlanShift(w.data() + 2 * 10, rows * columns - 10, {10 + 5 * columns, columns, columns},
                      plan);
  ASSERT_EQ(plan.shift.size(), columns);
  EXPECT_EQ(plan.first, 10u);
}

TEST(ExponentShiftTest, PlanDeclinesWithoutColumnStructureOrGrid) {
  const Bytes iid = test::GaussianWeights(DType::kBF16, 96 * 1024, 0.02, 2);
  ShiftPlan plan;
  internal::PlanShift(iid.data(), 96 * 1024, {0, 96, 96}, plan);
  EXPECT_TRUE(plan.shift.empty()) << "no column scales, yet shifts";
  const Bytes w = test::ColumnScaledBF16(1024, 96, 3);
  for (TensorGrid g : {TensorGrid{}, TensorGrid{0, 1, 1}, TensorGrid{0, 96 * 1024, 96 * 1024}}) {
    internal::PlanShift(w.data(), 96 * 1024, g, plan);
    EXPECT_TRUE(plan.shift.empty()) << g.columns << " columns";
  }
  internal::PlanShift(w.data(), 1000, {0, 96, 96}, plan);  // too small a chunk to pay
  EXPECT_TRUE(plan.shift.empty());
}

TEST(ExponentShiftTest, ShiftedFramesRoundTripSmaller) {
  const size_t columns = 128;
  Bytes w = test::ColumnScaledBF16(512, columns, 4);
  w.push_back(0x5A);  // a trailing byte
  for (uint64_t first : {uint64_t{0}, uint64_t{37}}) {
    const std::span<const uint8_t> data = std::span(w).subspan(2 * first);
    const TensorGrid grid{first, columns, columns};
    Bytes shifted, plain;
    ASSERT_TRUE(test::RoundTrip(data, DType::kBF16, {}, {}, &shifted, grid));
    EncodeOptions off;
    off.exponent_shift = false;
    ASSERT_TRUE(test::RoundTrip(data, DType::kBF16, off, {}, &plain, grid));
    EXPECT_TRUE(test::InfoOf(shifted).shifted);
    EXPECT_FALSE(test::InfoOf(plain).shifted);
    EXPECT_LT(shifted.size() * 100, plain.size() * 97) << "column scales should save 3%";
    // Also with joint coding off, and with other forced joint widths.
    for (int k : {0, 1, 3}) {
      EncodeOptions o;
      o.joint_k = k;
      Bytes f;
      ASSERT_TRUE(test::RoundTrip(data, DType::kBF16, o, {}, &f, grid)) << "k " << k;
      EXPECT_TRUE(test::InfoOf(f).shifted) << "k " << k;
    }
  }
}

TEST(ExponentShiftTest, DamagedShiftBlocksAreRejected) {
  const size_t columns = 128;  // varint 0x80 0x01, then the first column: 0
  const Bytes w = test::ColumnScaledBF16(256, columns, 5);
  Bytes frame;
  ASSERT_TRUE(test::RoundTrip(w, DType::kBF16, {}, {}, &frame, {0, columns, columns}));
  ASSERT_TRUE(test::InfoOf(frame).shifted);
  ASSERT_EQ(frame[kFrameHeaderSize], 0x80);
  ASSERT_EQ(frame[kFrameHeaderSize + 1], 0x01);
  ASSERT_EQ(frame[kFrameHeaderSize + 2], 0x00);
  struct Damage {
    const char* what;
    size_t at;
    uint8_t value;
  };
  for (const Damage& d :
       {Damage{"no columns", 0, 0x00}, Damage{"first past the columns", 2, 0x7f},
        Damage{"first = columns", 2, 0x80}, Damage{"more columns than elements", 1, 0x7f},
        Damage{"fewer columns", 0, 0x81}, Damage{"bad coding", 3, 9}}) {
    Bytes bad = frame;
    bad[kFrameHeaderSize + d.at] = d.value;
    Bytes out(w.size());
    const Status st = FrameDecoder().Decode(bad, out);
    EXPECT_FALSE(st.ok()) << d.what;
  }
  // Declared sizes past any bound: a column count of 2^40, a first column past the count. The
  // rest of the frame stays as it was, and valid.
  const std::vector<Bytes> heads = {{0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x00},
                                    {0x80, 0x01, 0xC8, 0x01}};
  for (const Bytes& head : heads) {
    Bytes bad(frame.begin(), frame.begin() + kFrameHeaderSize);
    bad.insert(bad.end(), head.begin(), head.end());
    bad.insert(bad.end(), frame.begin() + kFrameHeaderSize + 3, frame.end());
    test::WriteLE(bad.data() + test::hdr::kPayloadSize, bad.size() - kFrameHeaderSize, 4);
    test::FixHeaderCheck(bad.data());
    Bytes out(w.size());
    const Status st = FrameDecoder().Decode(bad, out);
    EXPECT_EQ(st.code(), StatusCode::kCorrupt) << st.ToString();
  }
}

TEST(ExponentShiftTest, OnlyGroupedBF16FramesMayCarryTheFlag) {
  // Method, dtype and flags byte: flag 2 (shifted) is for grouped BF16 frames only.
  struct Case {
    uint8_t method, dtype, flags;
    bool ok;
  };
  for (const Case& c : {Case{3, 1, 2, true}, Case{3, 1, 3, true}, Case{3, 3, 2, false},
                        Case{2, 1, 2, false}, Case{3, 2, 2, false}, Case{3, 1, 4, false}}) {
    Bytes h = test::ForgeHeader(c.method, c.dtype, 100, 50, 0);
    h[test::hdr::kFlags] = c.flags;
    test::FixHeaderCheck(h.data());
    Result<FrameInfo> info = ParseFrameHeader(h);
    EXPECT_EQ(info.ok(), c.ok) << int{c.method} << "/" << int{c.dtype} << "/" << int{c.flags};
    if (info.ok()) {
      EXPECT_TRUE(info->shifted);
      EXPECT_EQ(info->joint, (c.flags & 1) != 0);
    }
  }
}

}  // namespace
}  // namespace zipnn
