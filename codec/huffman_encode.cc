// The Huffman stream encoder: block planning and four-lane bit writing.
#include <algorithm>
#include <cstring>

#include "codec/huffman_table.h"

namespace zipnn::internal {
namespace {

constexpr uint64_t kBlockHeaderBits = 8 * 8;  // count varint + 4 lane sizes (varints)
// Symbol pairs are coded with one lookup where the alphabet is this small (the pair table has its
// square filled) and the block long enough to pay for filling it.
constexpr int kMaxPairAlphabet = 48;
constexpr uint32_t kMinPairSymbols = 16384;
// Segments (tensors) shorter than this always share their neighbour's table.
constexpr uint32_t kMinSegmentSymbols = 32;
constexpr uint32_t kSubBlockSymbols = 16384;
constexpr double kSubBlockSplitPenalty = 0.03;

double Cost(const Histogram& h) {
  int used = 0;
  for (uint32_t c : h) used += c != 0;
  return EntropyBits(h) + 24 + 5.0 * used + kBlockHeaderBits;
}

// MSB-first bit writer. Put() at most five 11-bit codes between Flush() calls.
struct BitWriter {
  uint64_t acc = 0;
  uint32_t n = 0;
  uint8_t* p = nullptr;
  inline void Put(uint32_t e) {  // e = code << 8 | length
    acc = (acc << (e & 0xff)) | (e >> 8);
    n += e & 0xff;
  }
  inline void Flush() {  // writes 8 bytes, of which n/8 are kept
    if (n == 0) return;
    internal::Store64(p, __builtin_bswap64(acc << (64 - n)));
    p += n >> 3;
    n &= 7;
  }
  uint8_t* Finish() {
    Flush();
    if (n) *p++ = static_cast<uint8_t>(acc << (8 - n));
    n = 0;
    return p;
  }
};

// Codes the first `count` symbols (rounded down to a whole step) of two lanes in step, keeping
// both writers in registers: two dependency chains are enough to fill the core, four spill. With
// kPairs the table is indexed by two symbols (one little-endian 16-bit load) and holds both codes
// (<= 22 bits): a step is 4 symbols (<= 44 bits); else a step is 5 one-symbol codes (<= 55 bits).
// Returns the number of symbols coded.
template <bool kPairs>
__attribute__((always_inline)) inline uint32_t EncodeLanes(const uint32_t* table, const uint8_t* sa,
                                                           const uint8_t* sb, uint32_t count,
                                                           BitWriter& wa, BitWriter& wb) {
  constexpr uint32_t kStep = kPairs ? 4 : 5, kPerLookup = kPairs ? 2 : 1;
  uint64_t aa = wa.acc, ab = wb.acc;
  uint64_t na = wa.n, nb = wb.n;  // low byte: pending bits (code bits above are ignored)
  uint8_t *pa = wa.p, *pb = wb.p;
  uint32_t i = 0;
  for (; i + kStep <= count; i += kStep) {
    for (uint32_t j = 0; j < kStep; j += kPerLookup) {
      const uint32_t ea = table[kPairs ? Load16(sa + i + j) : sa[i + j]];
      const uint32_t eb = table[kPairs ? Load16(sb + i + j) : sb[i + j]];
      aa = (aa << (ea & 63)) | (ea >> 8);
      ab = (ab << (eb & 63)) | (eb >> 8);
      na += ea;
      nb += eb;
    }
    na &= 0xff;
    nb &= 0xff;
    Store64(pa, __builtin_bswap64(aa << (64 - na)));
    Store64(pb, __builtin_bswap64(ab << (64 - nb)));
    pa += na >> 3;
    pb += nb >> 3;
    na &= 7;
    nb &= 7;
  }
  wa.acc = aa, wb.acc = ab;
  wa.n = static_cast<uint32_t>(na), wb.n = static_cast<uint32_t>(nb);
  wa.p = pa, wb.p = pb;
  return i;
}

// The encode loops proper: clones with BMI2's shifts where the CPU has them.
__attribute__((target_clones("bmi2", "default"))) uint32_t EncodePair(const uint32_t* entry,
                                                                      const uint8_t* sa,
                                                                      const uint8_t* sb,
                                                                      uint32_t count, BitWriter& wa,
                                                                      BitWriter& wb) {
  return EncodeLanes<false>(entry, sa, sb, count, wa, wb);
}
__attribute__((target_clones("bmi2", "default"))) uint32_t EncodePairOfPairs(
    const uint32_t* pair, const uint8_t* sa, const uint8_t* sb, uint32_t count, BitWriter& wa,
    BitWriter& wb) {
  return EncodeLanes<true>(pair, sa, sb, count, wa, wb);
}

}  // namespace

void PlanHuffman(std::span<const uint8_t> syms, std::span<const uint32_t> segments, HufPlan& plan) {
  plan.blocks.clear();
  plan.cost_bytes = 0;
  plan.entropy_bits = 0;
  const uint32_t n = static_cast<uint32_t>(syms.size());
  if (n == 0) {
    plan.cost_bytes = 1;
    return;
  }
  // Greedy left-to-right merge of segments while one table is cheaper than two. Segments too
  // short to pay for a table of their own join the current block without the cost estimate.
  HufBlockPlan cur;
  double cur_cost = -1;  // < 0: not computed since the block last grew
  uint32_t begin = 0;
  auto next_cut = segments.begin();
  while (begin < n) {
    while (next_cut != segments.end() && *next_cut <= begin) ++next_cut;
    uint32_t end = next_cut != segments.end() ? std::min(*next_cut, n) : n;
    // Statistics drift inside long tensors too (rows of different scale): cut them into
    // sub-blocks the merge below may keep apart.
    const bool at_segment = next_cut != segments.begin() && *(next_cut - 1) == begin;
    if (end - begin > 2 * kSubBlockSymbols) end = begin + kSubBlockSymbols;
    Histogram hist;
    CountSymbols(syms.subspan(begin, end - begin), hist);
    if (begin == 0) {
      cur.begin = 0;
      cur.end = end;
      cur.hist = hist;
    } else if (end - begin < kMinSegmentSymbols) {
      for (int s = 0; s < 256; s++) cur.hist[s] += hist[s];
      cur.end = end;
      cur_cost = -1;
    } else {
      Histogram merged;
      for (int s = 0; s < 256; s++) merged[s] = cur.hist[s] + hist[s];
      if (cur_cost < 0) cur_cost = Cost(cur.hist);
      const double seg_cost = Cost(hist), merged_cost = Cost(merged);
      // A new table inside a tensor must save more: each costs the decoder a table build.
      const double penalty = at_segment ? 0 : kSubBlockSplitPenalty * merged_cost;
      if (merged_cost <= cur_cost + seg_cost + penalty) {
        cur.hist = merged;
        cur.end = end;
        cur_cost = merged_cost;
      } else {
        plan.blocks.push_back(cur);
        cur = HufBlockPlan{};
        cur.begin = begin;
        cur.end = end;
        cur.hist = hist;
        cur_cost = seg_cost;
      }
    }
    begin = end;
  }
  plan.blocks.push_back(cur);

  uint64_t bits = 8 * 4;  // block count
  plan.tables.clear();
  for (HufBlockPlan& b : plan.blocks) {
    plan.entropy_bits += EntropyBits(b.hist);
    // Code lengths come from counts rounded to three significant bits: they cost next to nothing
    // (Huffman lengths barely move under such changes) and make chunks of one tensor get the same
    // table, so the decoder's table cache hits instead of building. Output stays a function of the
    // chunk alone.
    Histogram rounded;
    for (int s = 0; s < 256; s++) {
      const uint32_t c = b.hist[s];
      const int shift = c ? std::max(0, 29 - __builtin_clz(c)) : 0;  // keep the top 3 bits
      rounded[s] = c ? std::max(1u, (c >> shift) << shift) : 0;
    }
    const bool single = BuildLengths(rounded, b.len) < 2;
    for (int s = 0; s < 256 && single; s++)
      if (b.hist[s]) b.single = s;
    b.table_at = plan.tables.size();
    WriteTable(b, plan.tables);
    b.table_size = plan.tables.size() - b.table_at;
    uint64_t payload = 0;  // (none for a single symbol: its length is 0)
    for (int s = 0; s < 256; s++) payload += uint64_t{b.hist[s]} * b.len[s];
    b.cost_bits = single ? 8 * 8 : payload + 8 * b.table_size + kBlockHeaderBits;
    bits += b.cost_bits;
  }
  plan.cost_bytes = (bits + 7) / 8;
}

void EncodeHuffman(std::span<const uint8_t> syms, HufPlan& plan, std::vector<uint8_t>& out) {
  PutVarint(out, plan.blocks.size());
  for (const HufBlockPlan& b : plan.blocks) {
    const uint32_t count = b.end - b.begin;
    PutVarint(out, count);
    const auto table = plan.tables.begin() + static_cast<ptrdiff_t>(b.table_at);
    out.insert(out.end(), table, table + static_cast<ptrdiff_t>(b.table_size));
    if (b.single >= 0) continue;
    std::array<uint32_t, 256> code;
    AssignCodes(b.len, code);
    uint32_t entry[256];
    for (int s = 0; s < 256; s++) entry[s] = code[s] << 8 | b.len[s];

    // Four quarters, each into its own worst-case region, then compacted.
    const uint32_t q = (count + 3) / 4;
    uint32_t qbeg[4], qlen[4];
    size_t cap[4];
    for (int k = 0; k < 4; k++) {
      qbeg[k] = std::min(b.begin + k * q, b.end);
      qlen[k] = std::min(b.begin + (k + 1) * q, b.end) - qbeg[k];
      cap[k] = (size_t{qlen[k]} * kL + 7) / 8 + 16;
    }
    // The lanes go to scratch (reused, so never cleared), then behind their sizes in `out`.
    const size_t room = cap[0] + cap[1] + cap[2] + cap[3];
    uint8_t* base = GrowTo(plan.lanes, room).data();
    uint8_t* region[4];
    region[0] = base;
    for (int k = 1; k < 4; k++) region[k] = region[k - 1] + cap[k - 1];
    const uint8_t* sp[4];
    for (int k = 0; k < 4; k++) sp[k] = syms.data() + qbeg[k];
    BitWriter w[4];
    for (int k = 0; k < 4; k++) w[k].p = region[k];
    // Small alphabets (exponents) take two symbols per lookup from a table of pair codes,
    // indexed by the two bytes as one little-endian 16-bit load; only used pairs are filled.
    int used[256], nused = 0;
    for (int s = 0; s < 256; s++)
      if (b.len[s]) used[nused++] = s;
    uint32_t i;
    // (Filling the used square must pay: larger alphabets need longer blocks.)
    if (count >= kMinPairSymbols &&
        (nused <= kMaxPairAlphabet || static_cast<uint32_t>(nused * nused) * 4 <= count)) {
      plan.pair_codes.resize(1u << 16);
      uint32_t* pair = plan.pair_codes.data();
      for (int y = 0; y < nused; y++)  // (the first symbol inner: neighbouring entries)
        for (int x = 0; x < nused; x++) {
          const int s1 = used[x], s2 = used[y];
          pair[s1 | s2 << 8] = (code[s1] << b.len[s2] | code[s2]) << 8 | (b.len[s1] + b.len[s2]);
        }
      i = EncodePairOfPairs(pair, sp[0], sp[1], qlen[3], w[0], w[1]);
      EncodePairOfPairs(pair, sp[2], sp[3], qlen[3], w[2], w[3]);
    } else {
      i = EncodePair(entry, sp[0], sp[1], qlen[3], w[0], w[1]);
      EncodePair(entry, sp[2], sp[3], qlen[3], w[2], w[3]);
    }
    for (int k = 0; k < 4; k++) {
      for (uint32_t j = i; j < qlen[k]; j++) {
        w[k].Put(entry[sp[k][j]]);
        if ((j - i) % 5 == 4) w[k].Flush();
      }
    }
    size_t len[4];
    for (int k = 0; k < 4; k++) len[k] = static_cast<size_t>(w[k].Finish() - region[k]);
    uint8_t sizes[4 * 10];
    uint8_t* end = sizes;
    for (int k = 0; k < 4; k++) end = PutVarint(end, len[k]);
    out.insert(out.end(), sizes, end);
    for (int k = 0; k < 4; k++) out.insert(out.end(), region[k], region[k] + len[k]);
  }
}

}  // namespace zipnn::internal
