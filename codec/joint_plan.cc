// PlanJoint: whether, and how, to code a BF16 chunk jointly (see joint_bf16.h), from sampled
// statistics of the chunk.
#include <algorithm>
#include <array>

#include "codec/bytes.h"
#include "codec/huffman.h"
#include "codec/joint_bf16.h"

namespace zipnn::internal {
namespace {

constexpr size_t kMinElements = 1024;
constexpr size_t kLongSegment = 2048;
// Joint coding must beat exponent-only coding by this much of the estimate: longer codes decode
// slower, and below this the estimate's error decides more often than the data.
constexpr double kMinJointSaving = 0.002;

}  // namespace

JointParams PlanJoint(const uint8_t* in, size_t n, std::span<const uint32_t> segments,
                      int force_k) {
  if (n < kMinElements && !force_k) return {};
  if (n == 0) return {force_k, 0};
  // About a table per long segment: the Huffman planner merges short ones into neighbours.
  size_t tables = 1;
  for (size_t i = 0; i < segments.size(); i++) {
    const size_t end = i + 1 < segments.size() ? segments[i + 1] : n;
    tables += end - segments[i] >= kLongSegment;
  }
  // The chunk in up to four slices, each with its own statistics: the Huffman planner gives
  // drifting data several tables, so the estimate must see the drift too. Every fourth element
  // is counted in long chunks, every eighth from 128K elements (still 16K samples; an LLM-shaped
  // model's frames came out 0.004% smaller): spread samples, since a few slices could miss a
  // region of rare exponents, which become costly escapes. J with k = 3 (2048 bins) folds into
  // every smaller k. The raw part of k = 3 (sign and four low mantissa bits) says whether the low
  // bits are noise, as joint coding assumes (a sample suffices there).
  const size_t slices = std::clamp<size_t>(n / kMinElements, 1, 4);
  std::array<std::array<uint32_t, 2048>, 4> hist{};
  size_t len[4] = {}, from[4] = {};
  for (size_t s = 0; s < slices; s++) {
    from[s] = s * n / slices;
    len[s] = (s + 1) * n / slices - from[s];
  }
  // The slices in step: four histograms in flight instead of one chain of increments.
  const size_t common = *std::min_element(len, len + slices);
  auto bin = [&](size_t s, size_t i) { return Load16(in + 2 * (from[s] + i)) >> 4 & 2047; };
  const size_t stride = n >= 131072 ? 8 : n >= 16384 ? 4 : 1;
  size_t done = 0;
  if (slices == 4) {
    for (; done < common; done += stride) {
      hist[0][bin(0, done)]++;
      hist[1][bin(1, done)]++;
      hist[2][bin(2, done)]++;
      hist[3][bin(3, done)]++;
    }
  }
  for (size_t s = 0; s < slices; s++)
    for (size_t i = done; i < len[s]; i += stride) hist[s][bin(s, i)]++;
  size_t counted[4] = {};
  for (size_t s = 0; s < slices; s++) counted[s] = (len[s] + stride - 1) / stride;
  // (Four tables: the 32 values are few enough that one table's increments chain.)
  std::array<std::array<uint32_t, 32>, 4> lows{};
  const size_t step = std::max<size_t>(1, n / 4096);
  size_t i = 0;
  for (; i + 3 * step < n; i += 4 * step) {
    lows[0][JointRestOf(Load16(in + 2 * i), 4)]++;
    lows[1][JointRestOf(Load16(in + 2 * (i + step)), 4)]++;
    lows[2][JointRestOf(Load16(in + 2 * (i + 2 * step)), 4)]++;
    lows[3][JointRestOf(Load16(in + 2 * (i + 3 * step)), 4)]++;
  }
  for (; i < n; i += step) lows[0][JointRestOf(Load16(in + 2 * i), 4)]++;
  std::array<uint32_t, 32> low;
  for (size_t j = 0; j < 32; j++) low[j] = lows[0][j] + lows[1][j] + lows[2][j] + lows[3][j];
  double sampled = 0;
  for (uint32_t c : low) sampled += c;
  if (!force_k && EntropyBits(low) < 4.9 * sampled) return {};  // low bits not noise

  // The bins any sample fell in (usually a few hundred of the 2048): the loops below run over
  // them only, the rest being zero. That is most of the time of planning a small chunk.
  size_t first = 0, last = 2047;
  auto occupied = [&](size_t j) {
    uint32_t any = 0;
    for (size_t s = 0; s < slices; s++) any |= hist[s][j];
    return any != 0;
  };
  while (first < last && !occupied(first)) first++;
  while (last > first && !occupied(last)) last--;

  double cost[4] = {};
  uint32_t bases[4] = {};
  // From k = 3 down, each k's counts folding the bins of the one above in pairs (in place: bins
  // past the occupied range keep the counts of a larger k, and are never read).
  std::array<std::array<uint32_t, 2048>, 4>& c = hist;
  std::array<uint32_t, 2048> sum;
  for (int k = 3; k >= 0; k--) {
    const size_t bins = size_t{256} << k, lo_bin = first >> (3 - k), hi_bin = last >> (3 - k);
    if (k < 3) {
      // The fold reads bin 2 * hi_bin + 1 of the k above, which may lie one past its occupied
      // range and so still hold a count of a larger k: that bin must read as empty.
      for (size_t s = 0; s < slices; s++) {
        if (2 * hi_bin + 1 > last >> (2 - k)) c[s][2 * hi_bin + 1] = 0;
        for (size_t j = lo_bin; j <= hi_bin; j++) c[s][j] = c[s][2 * j] + c[s][2 * j + 1];
      }
    }
    if (force_k && k != force_k) continue;
    for (size_t j = lo_bin; j <= hi_bin; j++) {
      uint32_t t = 0;
      for (size_t s = 0; s < slices; s++) t += c[s][j];
      sum[j] = t;
    }
    // k = 0 codes all 256 exponents; k > 0 the window of 255 values of J holding the most
    // elements (the first such), plus the escape symbol.
    uint32_t base = 0;
    size_t width = bins;
    if (k > 0) {
      width = 255;
      uint64_t in_window = 0, best_window = 0;
      for (size_t j = lo_bin; j <= std::min(bins - 1, hi_bin + 254); j++) {
        if (j <= hi_bin) in_window += sum[j];
        if (j >= lo_bin + 255) in_window -= sum[j - 255];
        if (j >= 254 && in_window > best_window) {
          best_window = in_window;
          base = static_cast<uint32_t>(j - 254);
        }
      }
    }
    // The occupied bins inside the window: the symbols used, and all the counts there are.
    const size_t from_bin = std::max<size_t>(base, lo_bin);
    const size_t to_bin = std::min<size_t>(base + width - 1, hi_bin);
    size_t lo = width, hi = 0;
    for (size_t j = from_bin; j <= to_bin; j++)
      if (sum[j]) lo = std::min(lo, j - base), hi = j - base;
    // Symbols, with a table per slice (or segment).
    double split = 0, escapes = 0;
    for (size_t s = 0; s < slices; s++) {
      uint32_t out = static_cast<uint32_t>(counted[s]);
      std::span<const uint32_t> in_window;
      if (from_bin <= to_bin) in_window = {c[s].data() + from_bin, to_bin - from_bin + 1};
      for (uint32_t v : in_window) out -= v;
      const double scale = static_cast<double>(len[s]) / static_cast<double>(counted[s]);
      split += EntropyBits(in_window, out) * scale;
      escapes += out * scale;
    }
    if (escapes > 0) hi = width;  // the escape symbol
    const double table = 24.0 + 5.0 * static_cast<double>(hi - lo + 1);
    const double bits = split + table * static_cast<double>(std::max(slices, tables)) +
                        16 * escapes + (8 - k) * static_cast<double>(n) + (k ? 64 : 0);
    if (force_k) return JointParams{k, base};
    cost[k] = bits;
    bases[k] = base;
  }
  // Each mantissa bit in the symbol lengthens the codes, and longer codes decode slower: take
  // the smallest k within kMinJointSaving of the best, and only if that beats k = 0 by as much.
  const double best = std::min({cost[1], cost[2], cost[3]});
  for (int k = 1; k <= 3; k++) {
    if (cost[k] <= best * (1 + kMinJointSaving) && cost[k] <= cost[0] * (1 - kMinJointSaving))
      return JointParams{k, bases[k]};
  }
  return {};
}

}  // namespace zipnn::internal
