#include "codec/exponent_shift.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>

#include "codec/bytes.h"
#include "codec/huffman.h"

#ifdef __x86_64__
#include <immintrin.h>  // AVX2 and AVX-512, chosen at run time
#endif

namespace zipnn::internal {
namespace {

constexpr size_t kMinElements = 4096;  // smaller chunks: the shifts cost more than they save
constexpr size_t kMaxElements = size_t{1} << 24;  // (u32 sums of exponents)
constexpr size_t kSampleElements = 8192;          // the estimate's sample, at least
constexpr size_t kMinPerColumn = 8;               // samples per column, at least
constexpr size_t kExactPerColumn = 32;  // samples per column that make shifts as good as all
constexpr size_t kMaxColumns = 65536;   // (u32 sums of squares per row)
// Rows shorter than this are handled several at a time: the columns' pattern repeated over
// several rows keeps the vector loops long.
constexpr size_t kMinPattern = 256;

// The float formats: element type and where the exponent field is. Exponents 1..kMod shift
// cyclically; 0 and kMod + 1 (all ones) stay.
template <typename T, int Pos, int Bits>
struct Format {
  using Element = T;
  static constexpr int kPos = Pos, kBits = Bits;
  static constexpr uint32_t kMod = (1u << kBits) - 2;
  static constexpr T kField = static_cast<T>(((1u << kBits) - 1) << kPos);
  static uint32_t ExponentOf(T v) { return v >> kPos & ((1u << kBits) - 1); }
  static bool Shiftable(uint32_t e) { return e - 1 < kMod; }
  static T Load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void Store(uint8_t* p, T v) { std::memcpy(p, &v, sizeof v); }
};
using BF16Format = Format<uint16_t, 7, 8>;
using F16Format = Format<uint16_t, 10, 5>;
using F32Format = Format<uint32_t, 23, 8>;

size_t Widened(size_t columns) { return columns * std::max<size_t>(1, kMinPattern / columns); }
static_assert(kMaxColumns * 254 * 254 <= UINT32_MAX && kMaxColumns % kMinPattern == 0);

// Calls fn(column, i, count) for the pieces of [begin, end) that run along a row of `width`
// columns (the chunk's element i being in column (first + i) % width).
template <typename Fn>
void ForEachRow(uint64_t first, size_t width, size_t begin, size_t end, Fn&& fn) {
  size_t column = static_cast<size_t>((first + begin) % width);
  for (size_t i = begin; i < end; column = 0) {
    const size_t count = std::min(end - i, width - column);
    fn(column, i, count);
    i += count;
  }
}

// Adds the exponents of the n values at p into s[j] and their count into c[j], leaving 0 and the
// all-ones exponent out; returns the sum of their squares (n <= kMaxColumns: no overflow).
template <typename F>
__attribute__((always_inline)) inline uint32_t AccumulateRow(const uint8_t* p, size_t n,
                                                             uint32_t* __restrict s,
                                                             uint32_t* __restrict c) {
  constexpr size_t kSize = sizeof(typename F::Element);
  uint32_t q = 0;
  for (size_t j = 0; j < n; j++) {  // (vectorized)
    const uint32_t e = F::ExponentOf(F::Load(p + kSize * j));
    const uint32_t ok = F::Shiftable(e);
    s[j] += e & -ok;
    c[j] += ok;
    q += (e * e) & -ok;
  }
  return q;
}
template <typename F>
uint32_t AccumulateRowBase(const uint8_t* p, size_t n, uint32_t* s, uint32_t* c) {
  return AccumulateRow<F>(p, n, s, c);
}
#ifdef __x86_64__
template <typename F>
__attribute__((target("avx2"))) uint32_t AccumulateRowAvx2(const uint8_t* p, size_t n, uint32_t* s,
                                                           uint32_t* c) {
  return AccumulateRow<F>(p, n, s, c);
}
#endif

// Adds each column's exponent sum and count over [begin, end) into `sum` and `count` (of
// `width` columns: a pattern of whole rows); returns the sum of squares.
template <typename F>
uint64_t Accumulate(const uint8_t* in, uint64_t first, size_t begin, size_t end,
                    std::vector<uint32_t>& sum, std::vector<uint32_t>& count) {
#ifdef __x86_64__
  const auto row = __builtin_cpu_supports("avx2") ? AccumulateRowAvx2<F> : AccumulateRowBase<F>;
#else
  const auto row = AccumulateRowBase<F>;
#endif
  uint64_t squares = 0;
  ForEachRow(first, sum.size(), begin, end, [&](size_t column, size_t i, size_t n) {
    squares +=
        row(in + sizeof(typename F::Element) * i, n, sum.data() + column, count.data() + column);
  });
  return squares;
}

// Per-column sums and counts of the pieces [begin[k], end[k]), gathered over a pattern of whole
// rows and folded back. Returns the sum of squares.
template <typename F>
uint64_t Stats(const uint8_t* in, uint64_t first, size_t columns, std::span<const size_t> begin,
               std::span<const size_t> end, std::vector<uint32_t>& sum,
               std::vector<uint32_t>& count) {
  const size_t wide = Widened(columns);
  sum.assign(wide, 0);
  count.assign(wide, 0);
  uint64_t squares = 0;
  for (size_t k = 0; k < begin.size(); k++)
    squares += Accumulate<F>(in, first % columns, begin[k], end[k], sum, count);
  for (size_t j = columns; j < wide; j++) {
    sum[j % columns] += sum[j];
    count[j % columns] += count[j];
  }
  sum.resize(columns);
  count.resize(columns);
  return squares;
}

// The Gaussian estimate of the bits that removing per-column means saves on the sampled
// elements: half the log of the total variance over the variance left within columns, per
// element. Means of few samples are partly noise: that share of the between-column variance
// (about one sample's variance per column) does not count.
double GaussianSaving(const std::vector<uint32_t>& sum, const std::vector<uint32_t>& count,
                      uint64_t squares) {
  uint64_t n = 0, s = 0, used = 0;
  double between = 0;
  for (size_t j = 0; j < sum.size(); j++) {
    n += count[j];
    s += sum[j];
    used += count[j] != 0;
    between += static_cast<double>(sum[j]) * sum[j] / std::max<uint32_t>(count[j], 1);
  }
  if (n < 2) return 0;
  const double nn = static_cast<double>(n), mean = static_cast<double>(s) / nn;
  const double total = static_cast<double>(squares) / nn - mean * mean;
  if (total <= 0) return 0;
  const double b = between / nn - mean * mean - total * static_cast<double>(used) / nn;
  return b > 0 ? -0.5 * std::log2(1 - std::min(b / total, 0.999)) * nn : 0;
}

// Each column's mean exponent less the mean of all, rounded.
void Shifts(const std::vector<uint32_t>& sum, const std::vector<uint32_t>& count,
            std::vector<int8_t>& shift) {
  uint64_t all = 0, n = 0;
  for (size_t j = 0; j < sum.size(); j++) all += sum[j], n += count[j];
  shift.assign(sum.size(), 0);
  if (n == 0) return;
  const double mean = static_cast<double>(all) / static_cast<double>(n);
  for (size_t j = 0; j < sum.size(); j++) {
    if (count[j] == 0) continue;
    const double d = static_cast<double>(sum[j]) / count[j] - mean;
    shift[j] = static_cast<int8_t>(std::clamp(std::lround(d), -127L, 127L));
  }
}

// The additive form of each shift: e -> e + add, less kMod if that passes kMod.
template <typename F>
void Addends(const std::vector<int8_t>& shift, bool inverse, std::vector<uint16_t>& add) {
  constexpr int kMod = static_cast<int>(F::kMod);
  add.resize(shift.size());
  for (size_t j = 0; j < shift.size(); j++) {
    const int m = ((shift[j] % kMod) + kMod) % kMod;
    add[j] = static_cast<uint16_t>(inverse ? m : (kMod - m) % kMod);
  }
}

template <typename F>
inline uint32_t ShiftExponent(uint32_t e, uint32_t add) {
  const uint32_t u = e + add;
  return F::Shiftable(e) ? (u > F::kMod ? u - F::kMod : u) : e;
}
template <typename F>
inline typename F::Element ShiftOne(typename F::Element v, uint32_t add) {
  using T = typename F::Element;
  return static_cast<T>((v & static_cast<T>(~F::kField)) | ShiftExponent<F>(F::ExponentOf(v), add)
                                                               << F::kPos);
}

// Shifts `count` values from src to dst (which may be src), by add[j] each. Branch-free, so the
// compiler vectorizes it: for the baseline ISA, and for AVX2 in ShiftRunAvx2.
template <typename F>
__attribute__((always_inline)) inline void ShiftLoop(const uint8_t* src, uint8_t* dst, size_t count,
                                                     const uint16_t* add) {
  constexpr size_t kSize = sizeof(typename F::Element);
  for (size_t j = 0; j < count; j++)
    F::Store(dst + kSize * j, ShiftOne<F>(F::Load(src + kSize * j), add[j]));
}
template <typename F>
void ShiftRun(const uint8_t* src, uint8_t* dst, size_t count, const uint16_t* add) {
  ShiftLoop<F>(src, dst, count, add);
}
#ifdef __x86_64__
// With AVX2: 16-bit elements in 16-bit lanes, 16 at a time (the compiler's own vectorization
// widens them to 32 bits, at twice the work); 32-bit ones as the compiler vectorizes them.
template <typename F>
__attribute__((target("avx2"))) void ShiftRunAvx2(const uint8_t* src, uint8_t* dst, size_t count,
                                                  const uint16_t* add) {
  size_t j = 0;
  if constexpr (sizeof(typename F::Element) == 2) {
    const __m256i ones = _mm256_set1_epi16(static_cast<short>(F::kMod + 1));
    const __m256i keep = _mm256_set1_epi16(static_cast<short>(static_cast<uint16_t>(~F::kField)));
    const __m256i mod = _mm256_set1_epi16(static_cast<short>(F::kMod));
    const __m256i zero = _mm256_setzero_si256();
    for (; j + 16 <= count; j += 16) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * j));
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(add + j));
      const __m256i e = _mm256_and_si256(_mm256_srli_epi16(v, F::kPos), ones);
      __m256i u = _mm256_add_epi16(e, a);
      u = _mm256_sub_epi16(u, _mm256_and_si256(_mm256_cmpgt_epi16(u, mod), mod));
      const __m256i fixed =
          _mm256_or_si256(_mm256_cmpeq_epi16(e, zero), _mm256_cmpeq_epi16(e, ones));
      const __m256i moved =
          _mm256_or_si256(_mm256_and_si256(v, keep), _mm256_slli_epi16(u, F::kPos));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * j),
                          _mm256_blendv_epi8(moved, v, fixed));
    }
  }
  ShiftLoop<F>(src + j * sizeof(typename F::Element), dst + j * sizeof(typename F::Element),
               count - j, add + j);
}

// With AVX-512 (BW), 16-bit elements 32 at a time, the fixed exponents kept by a mask; 32-bit
// ones as ShiftRunAvx2 does them.
ZIPNN_AVX512_KERNELS_BEGIN
template <typename F>
__attribute__((target("avx512f,avx512bw"))) void ShiftRunAvx512(const uint8_t* src, uint8_t* dst,
                                                                size_t count, const uint16_t* add) {
  size_t j = 0;
  if constexpr (sizeof(typename F::Element) == 2) {
    const __m512i ones = _mm512_set1_epi16(static_cast<short>(F::kMod + 1));
    const __m512i keep = _mm512_set1_epi16(static_cast<short>(static_cast<uint16_t>(~F::kField)));
    const __m512i mod = _mm512_set1_epi16(static_cast<short>(F::kMod));
    const __m512i zero = _mm512_setzero_si512();
    for (; j + 32 <= count; j += 32) {
      const __m512i v = _mm512_loadu_si512(src + 2 * j);
      const __m512i a = _mm512_loadu_si512(add + j);
      const __m512i e = _mm512_and_si512(_mm512_srli_epi16(v, F::kPos), ones);
      __m512i u = _mm512_add_epi16(e, a);
      u = _mm512_mask_sub_epi16(u, _mm512_cmpgt_epi16_mask(u, mod), u, mod);
      const __mmask32 fixed = _mm512_cmpeq_epi16_mask(e, zero) | _mm512_cmpeq_epi16_mask(e, ones);
      const __m512i moved =
          _mm512_or_si512(_mm512_and_si512(v, keep), _mm512_slli_epi16(u, F::kPos));
      _mm512_storeu_si512(dst + 2 * j, _mm512_mask_blend_epi16(fixed, moved, v));
    }
  }
  ShiftRunAvx2<F>(src + j * sizeof(typename F::Element), dst + j * sizeof(typename F::Element),
                  count - j, add + j);
}
ZIPNN_AVX512_KERNELS_END
#endif

template <typename F>
void Plan(const uint8_t* in, size_t n, const TensorGrid& grid, ShiftPlan& plan) {
  constexpr size_t kSize = sizeof(typename F::Element);
  const uint64_t columns = grid.columns;
  if (n < kMinElements || n > kMaxElements || columns < 2 || columns > n / kMinPerColumn ||
      columns > kMaxColumns)
    return;
  const size_t width = static_cast<size_t>(columns);
  const uint64_t first = grid.first % columns;
  // The estimate, on a sample: pieces spread over the chunk, each a row or more.
  const size_t want = std::min(n, std::max(kSampleElements, kMinPerColumn * width));
  constexpr size_t kPieces = 8;
  const size_t piece = (want + kPieces - 1) / kPieces;
  size_t begins[kPieces], ends[kPieces], sampled = 0;
  for (size_t k = 0; k < kPieces; k++) {
    begins[k] = std::min(n - std::min(n, piece), k * (n / kPieces));
    ends[k] = std::min(n, begins[k] + piece);
    sampled += ends[k] - begins[k];
  }
  std::vector<uint32_t> sum, count;
  const uint64_t squares = Stats<F>(in, first, width, begins, ends, sum, count);
  const double scale = static_cast<double>(n) / static_cast<double>(sampled);
  // Worth it only for a clear gain, decoding paying a pass over the chunk: an estimated 0.04 bits
  // per byte, about 0.5% of a BF16 frame. (On the corpus's BF16 files, half that shifts 52% of
  // the elements for 40.7 KB, this 32% for 35.0 KB.) The Gaussian estimate, from the sums alone,
  // screens out most chunks that will not make it (taking the shifts at two bits each).
  const double needed = std::max(1024.0, 0.04 * static_cast<double>(kSize * n));
  if (GaussianSaving(sum, count, squares) * scale - 2.0 * static_cast<double>(width) < needed / 2)
    return;
  std::vector<int8_t> shift;
  Shifts(sum, count, shift);
  Histogram shifts{};
  int used = 0;
  for (int8_t v : shift) used += shifts[static_cast<uint8_t>(v)]++ == 0;
  const double side = std::min(EntropyBits(shifts) + 24 + 5.0 * used, 8.0 * width) + 64;
  std::vector<uint16_t> add;
  Addends<F>(shift, false, add);
  // Two tables of each: exponents take few values, and one table's increments would chain.
  Histogram before[2]{}, after[2]{};
  for (size_t k = 0; k < kPieces; k++) {
    ForEachRow(first, width, begins[k], ends[k], [&](size_t column, size_t i, size_t m) {
      size_t j = 0;
      for (; j + 2 <= m; j += 2) {
        const uint32_t e0 = F::ExponentOf(F::Load(in + kSize * (i + j)));
        const uint32_t e1 = F::ExponentOf(F::Load(in + kSize * (i + j + 1)));
        before[0][e0]++;
        before[1][e1]++;
        after[0][ShiftExponent<F>(e0, add[column + j])]++;
        after[1][ShiftExponent<F>(e1, add[column + j + 1])]++;
      }
      for (; j < m; j++) {
        const uint32_t e = F::ExponentOf(F::Load(in + kSize * (i + j)));
        before[0][e]++;
        after[0][ShiftExponent<F>(e, add[column + j])]++;
      }
    });
  }
  for (size_t e = 0; e < 256; e++) {
    before[0][e] += before[1][e];
    after[0][e] += after[1][e];
  }
  if ((EntropyBits(before[0]) - EntropyBits(after[0])) * scale - side < needed) return;
  plan.first = first;
  plan.shift = std::move(shift);
  if (want == n || want >= kExactPerColumn * width) return;
  // Too few samples per column for good shifts: take them from every element.
  const size_t all_begin[1] = {0}, all_end[1] = {n};
  (void)Stats<F>(in, first, width, all_begin, all_end, sum, count);
  Shifts(sum, count, plan.shift);
}

template <typename F>
void Apply(const uint8_t* src, uint8_t* dst, size_t n, const ShiftPlan& plan, bool inverse,
           Simd simd) {
  constexpr size_t kSize = sizeof(typename F::Element);
  std::vector<uint16_t> add;
  Addends<F>(plan.shift, inverse, add);
  const size_t columns = add.size();
  [[maybe_unused]] const bool avx512 = UseAvx512(simd), avx2 = UseAvx2(simd);
  auto run = [&](size_t i, size_t count, const uint16_t* pattern) {
#ifdef __x86_64__
    if (avx512) return ShiftRunAvx512<F>(src + kSize * i, dst + kSize * i, count, pattern);
    if (avx2) return ShiftRunAvx2<F>(src + kSize * i, dst + kSize * i, count, pattern);
#endif
    ShiftRun<F>(src + kSize * i, dst + kSize * i, count, pattern);
  };
  // The pattern repeated over several rows, so that short rows still make long runs.
  const size_t wide = Widened(columns);
  add.resize(wide);
  for (size_t j = columns; j < wide; j++) add[j] = add[j - columns];
  ForEachRow(plan.first, wide, 0, n,
             [&](size_t column, size_t i, size_t count) { run(i, count, add.data() + column); });
}

}  // namespace

bool ShiftsExponents(DType t) { return t == DType::kBF16 || t == DType::kF16 || t == DType::kF32; }

void PlanShift(DType t, const uint8_t* in, size_t n, const TensorGrid& grid, ShiftPlan& plan) {
  plan.shift.clear();
  if (t == DType::kBF16) Plan<BF16Format>(in, n, grid, plan);
  if (t == DType::kF16) Plan<F16Format>(in, n, grid, plan);
  if (t == DType::kF32) Plan<F32Format>(in, n, grid, plan);
}

void ApplyShift(DType t, const uint8_t* src, uint8_t* dst, size_t n, const ShiftPlan& plan,
                bool inverse, Simd simd) {
  if (t == DType::kBF16) Apply<BF16Format>(src, dst, n, plan, inverse, simd);
  if (t == DType::kF16) Apply<F16Format>(src, dst, n, plan, inverse, simd);
  if (t == DType::kF32) Apply<F32Format>(src, dst, n, plan, inverse, simd);
}

}  // namespace zipnn::internal
