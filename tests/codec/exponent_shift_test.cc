// Per-column exponent shifts of float chunks: the shift is a bijection on every value, the planner
// finds column scales where they are and only there, and shifted frames round-trip, come out
// smaller, and reject damaged shift blocks.
#include "codec/exponent_shift.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "tests/codec/test_util.h"

namespace zipnn {
namespace {

using internal::ShiftPlan;
using test::Bytes;

struct Layout {
  DType dtype;
  int size, pos, bits;  // element bytes; the exponent field
};
const Layout kLayouts[] = {
    {DType::kBF16, 2, 7, 8}, {DType::kF16, 2, 10, 5}, {DType::kF32, 4, 23, 8}};

TEST(ExponentShiftTest, EveryValueComesBackAndOnlyFiniteNonzeroExponentsMove) {
  test::NoteSimdFallbacks();
  for (const Layout& l : kLayouts) {
    // Every 16-bit value; for F32, every exponent with sign and mantissa patterns around it.
    const size_t n = 65536;
    Bytes all(l.size * n);
    for (size_t v = 0; v < n; v++) {
      const uint64_t bits =
          l.size == 2 ? v : (v >> 8) << 23 | (v & 0x80) << 24 | (v & 0x7f) * 0x10203;
      test::StoreElement(all.data() + l.size * v, bits, l.size);
    }
    const uint64_t field = ((uint64_t{1} << l.bits) - 1) << l.pos;
    const int mod = (1 << l.bits) - 2;
    for (int columns : {1, 7, 8, 33, 4096}) {
      for (int first : {0, columns / 2}) {
        for (internal::Simd simd : test::kAllSimd) {
          ShiftPlan plan;
          plan.first = static_cast<uint64_t>(first);
          for (int c = 0; c < columns; c++)
            plan.shift.push_back(static_cast<int8_t>((c * 37) % 256 - 128));  // -128..127
          Bytes shifted(all.size());
          internal::ApplyShift(l.dtype, all.data(), shifted.data(), n, plan, false, simd);
          for (size_t v = 0; v < n; v++) {
            const uint64_t x = test::ReadLE(all.data() + l.size * v, l.size);
            const uint64_t y = test::ReadLE(shifted.data() + l.size * v, l.size);
            const int e = static_cast<int>((x & field) >> l.pos);
            const int s = plan.shift[(first + v) % columns];
            const int want = e == 0 || e == mod + 1 ? e : ((e - 1 - s) % mod + mod) % mod + 1;
            ASSERT_EQ(static_cast<int>((y & field) >> l.pos), want)
                << DTypeName(l.dtype) << " value " << x << " shift " << s;
            ASSERT_EQ(x & ~field, y & ~field) << "sign and mantissa of " << x;
          }
          internal::ApplyShift(l.dtype, shifted.data(), shifted.data(), n, plan, true, simd);
          ASSERT_EQ(shifted, all) << DTypeName(l.dtype) << ": " << columns << " columns from "
                                  << first << " simd " << static_cast<int>(simd);
        }
      }
    }
  }
}

TEST(ExponentShiftTest, PlanFindsColumnScales) {
  const size_t rows = 1024, columns = 96;
  const Bytes w = test::ColumnScaledBF16(rows, columns, 1);
  ShiftPlan plan;
  internal::PlanShift(DType::kBF16, w.data(), rows * columns, {0, columns}, plan);
  ASSERT_EQ(plan.shift.size(), columns);
  EXPECT_EQ(plan.first, 0u);
  // Column c is scaled by 2^-((5c) % 9): its shift, against column 0's, says so to within one.
  for (size_t c = 1; c < columns; c++) {
    const int want = -static_cast<int>((c * 5) % 9);
    EXPECT_NEAR(plan.shift[c] - plan.shift[0], want, 1) << "column " << c;
  }
  // A chunk starting mid-row: the first column follows the grid.
  internal::PlanShift(DType::kBF16, w.data() + 2 * 10, rows * columns - 10,
                      {10 + 5 * columns, columns}, plan);
  ASSERT_EQ(plan.shift.size(), columns);
  EXPECT_EQ(plan.first, 10u);
}

TEST(ExponentShiftTest, PlanFindsTheScalesOfWideRows) {
  // 4096 columns, as a language model's matrices: the sample holds too few rows for good
  // shifts, which then come from every element (starting mid-row, so the phase must be right).
  const size_t rows = 128, columns = 4096, skip = 1000;
  const Bytes w = test::ColumnScaledBF16(rows, columns, 7);
  ShiftPlan plan;
  internal::PlanShift(DType::kBF16, w.data() + 2 * skip, rows * columns - skip,
                      {skip + 3 * columns, columns}, plan);
  ASSERT_EQ(plan.shift.size(), columns);
  EXPECT_EQ(plan.first, skip);
  int off = 0;  // columns whose shift is more than one away from their scale
  for (size_t c = 1; c < columns; c++)
    off += std::abs(plan.shift[c] - plan.shift[0] + static_cast<int>((c * 5) % 9)) > 1;
  EXPECT_LE(off, static_cast<int>(columns / 100)) << "of " << columns << " columns";
}

TEST(ExponentShiftTest, PlanDeclinesWithoutColumnStructureOrGrid) {
  const Bytes iid = test::GaussianWeights(DType::kBF16, 96 * 1024, 0.02, 2);
  ShiftPlan plan;
  internal::PlanShift(DType::kBF16, iid.data(), 96 * 1024, {0, 96}, plan);
  EXPECT_TRUE(plan.shift.empty()) << "no column scales, yet shifts";
  const Bytes w = test::ColumnScaledBF16(1024, 96, 3);
  for (TensorGrid g : {TensorGrid{}, TensorGrid{0, 1}, TensorGrid{0, 96 * 1024}}) {
    internal::PlanShift(DType::kBF16, w.data(), 96 * 1024, g, plan);
    EXPECT_TRUE(plan.shift.empty()) << g.columns << " columns";
  }
  internal::PlanShift(DType::kBF16, w.data(), 1000, {0, 96}, plan);  // too small a chunk to pay
  EXPECT_TRUE(plan.shift.empty());
}

TEST(ExponentShiftTest, ShiftedFramesRoundTripSmaller) {
  const size_t columns = 128;
  Bytes w = test::ColumnScaledBF16(512, columns, 4);
  w.push_back(0x5A);  // a trailing byte
  for (uint64_t first : {uint64_t{0}, uint64_t{37}}) {
    const std::span<const uint8_t> data = std::span(w).subspan(2 * first);
    const TensorGrid grid{first, columns};
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
  ASSERT_TRUE(test::RoundTrip(w, DType::kBF16, {}, {}, &frame, {0, columns}));
  ASSERT_TRUE(test::InfoOf(frame).shifted);
  ASSERT_EQ(frame[kFrameHeaderSize], 0x80);
  ASSERT_EQ(frame[kFrameHeaderSize + 1], 0x01);
  ASSERT_EQ(frame[kFrameHeaderSize + 2], 0x00);
  // The shift block's header replaced (the rest of the frame kept, and valid): out-of-bound
  // counts are refused as such; in-bound wrong ones fail the checksum at the latest.
  const size_t n = w.size() / 2;
  auto with_head = [&](std::vector<uint64_t> varints) {
    Bytes bad(frame.begin(), frame.begin() + kFrameHeaderSize);
    for (uint64_t v : varints) {
      for (; v >= 0x80; v >>= 7) bad.push_back(static_cast<uint8_t>(v | 0x80));
      bad.push_back(static_cast<uint8_t>(v));
    }
    bad.insert(bad.end(), frame.begin() + kFrameHeaderSize + 3, frame.end());
    test::WriteLE(bad.data() + test::hdr::kPayloadSize, bad.size() - kFrameHeaderSize, 4);
    test::FixHeaderCheck(bad.data());
    Bytes out(w.size());
    return FrameDecoder().Decode(bad, out);
  };
  ASSERT_TRUE(with_head({columns, 0}).ok()) << "the unchanged header must decode";
  struct Case {
    const char* what;
    uint64_t columns, first;
  };
  for (const Case& c :
       {Case{"no columns", 0, 0}, Case{"more columns than elements", n + 1, 0},
        Case{"2^40 columns", uint64_t{1} << 40, 0}, Case{"first = columns", columns, columns},
        Case{"first past the columns", columns, 200}}) {
    const Status st = with_head({c.columns, c.first});
    EXPECT_EQ(st.code(), StatusCode::kCorrupt) << c.what;
    EXPECT_NE(st.message().find("shift header"), std::string::npos)
        << c.what << ": " << st.ToString();
  }
  for (const Case& c : {Case{"other columns", columns - 1, 0}, Case{"other first", columns, 1}})
    EXPECT_FALSE(with_head({c.columns, c.first}).ok()) << c.what;
  Bytes bad = frame;
  bad[kFrameHeaderSize + 3] = 9;  // the shifts' coding
  Bytes out(w.size());
  EXPECT_EQ(FrameDecoder().Decode(bad, out).code(), StatusCode::kCorrupt);
}

TEST(ExponentShiftTest, F16AndF32FramesShiftToo) {
  for (DType t : {DType::kF16, DType::kF32}) {
    const size_t columns = 64;
    Bytes w = test::ColumnScaled(t, 1024, columns, 6);
    w.push_back(0x33);  // a trailing byte
    Bytes shifted, plain;
    const TensorGrid grid{5, columns};
    const std::span<const uint8_t> data = std::span(w).subspan(5 * DTypeSize(t));
    ASSERT_TRUE(test::RoundTrip(data, t, {}, {}, &shifted, grid)) << DTypeName(t);
    EncodeOptions off;
    off.exponent_shift = false;
    ASSERT_TRUE(test::RoundTrip(data, t, off, {}, &plain, grid)) << DTypeName(t);
    EXPECT_TRUE(test::InfoOf(shifted).shifted) << DTypeName(t);
    EXPECT_LT(shifted.size(), plain.size()) << DTypeName(t);
  }
}

TEST(ExponentShiftTest, OnlyGroupedFloatFramesMayCarryTheFlag) {
  // Method, dtype and flags byte: flag 2 (shifted) is for grouped BF16, F16 and F32 frames, flag 1
  // (joint) for BF16 ones.
  struct Case {
    uint8_t method, dtype, flags;
    bool ok;
  };
  for (const Case& c :
       {Case{3, 1, 2, true}, Case{3, 1, 3, true}, Case{3, 3, 2, true}, Case{3, 2, 2, true},
        Case{3, 3, 3, false}, Case{3, 4, 2, false}, Case{2, 1, 2, false}, Case{3, 1, 4, false}}) {
    Bytes h = test::ForgeHeader(c.method, c.dtype, 100, 50, 0);
    h[test::hdr::kFlags] = c.flags;
    test::FixHeaderCheck(h.data());
    Result<FrameInfo> info = ParseFrameHeader(h);
    EXPECT_EQ(info.ok(), c.ok) << int{c.method} << "/" << int{c.dtype} << "/" << int{c.flags};
    h[3] = 1;  // version 1 frames have no flags
    test::FixHeaderCheck(h.data());
    EXPECT_FALSE(ParseFrameHeader(h).ok()) << "version 1, flags " << int{c.flags};
    if (info.ok()) {
      EXPECT_TRUE(info->shifted);
      EXPECT_EQ(info->joint, (c.flags & 1) != 0);
    }
  }
}

}  // namespace
}  // namespace zipnn
