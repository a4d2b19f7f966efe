#include "codec/huffman.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "codec/bytes.h"

namespace zipnn::internal {
namespace {

constexpr int kL = kHufMaxBits;
constexpr int kTableSize = 1 << kL;
// Below this many symbols a block decodes with the one-symbol table: building the multi-symbol
// table would cost more than it saves.
constexpr uint32_t kMinMultiSymbols = 4096;
constexpr uint64_t kBlockHeaderBits = 8 * 20;  // count varint + 4 stream sizes
// The decoder's multi-symbol table holds up to this many symbols per entry; a lane step of five
// lookups writes at most kStepOut bytes (the last 8-byte store included).
constexpr uint32_t kMaxSymbolsPerLookup = 5;
constexpr ptrdiff_t kStepOut = 5 * kMaxSymbolsPerLookup + 3;
// The encoder codes symbol pairs with one lookup where the alphabet is this small (the pair table
// has its square filled) and the block long enough to pay for filling it.
constexpr int kMaxPairAlphabet = 48;
constexpr uint32_t kMinPairSymbols = 16384;

// Moffat & Katajainen's in-place computation of Huffman code lengths. `a` holds n >= 2
// frequencies in non-decreasing order; on return a[i] is the code length of symbol i.
void MinimumRedundancyLengths(uint32_t* a, int n) {
  a[0] += a[1];
  int root = 0, leaf = 2;
  for (int next = 1; next < n - 1; next++) {
    if (leaf >= n || a[root] < a[leaf]) {
      a[next] = a[root];
      a[root++] = next;
    } else {
      a[next] = a[leaf++];
    }
    if (leaf >= n || (root < next && a[root] < a[leaf])) {
      a[next] += a[root];
      a[root++] = next;
    } else {
      a[next] += a[leaf++];
    }
  }
  a[n - 2] = 0;
  for (int next = n - 3; next >= 0; next--) a[next] = a[a[next]] + 1;
  int avail = 1, used = 0, depth = 0;
  int root2 = n - 2, next = n - 1;
  while (avail > 0) {
    while (root2 >= 0 && static_cast<int>(a[root2]) == depth) {
      used++;
      root2--;
    }
    while (avail > used) {
      a[next--] = depth;
      avail--;
    }
    avail = 2 * used;
    depth++;
    used = 0;
  }
}

// Fills `len` with complete, length-limited code lengths for `h`. Returns the number of symbols
// used; with fewer than two, `len` stays all zero.
int BuildLengths(const Histogram& h, std::array<uint8_t, 256>& len) {
  len.fill(0);
  struct Sym {
    uint32_t f;
    int s;
  };
  Sym v[256];
  int n = 0;
  for (int s = 0; s < 256; s++)
    if (h[s]) v[n++] = {h[s], s};
  if (n < 2) return n;
  std::sort(v, v + n, [](const Sym& x, const Sym& y) { return x.f < y.f || (x.f == y.f && x.s < y.s); });
  uint32_t a[256];
  for (int i = 0; i < n; i++) a[i] = v[i].f;
  MinimumRedundancyLengths(a, n);
  if (static_cast<int>(a[0]) > kL) {
    // Clamp, then restore Kraft equality: lengthen the least probable codes until the sum fits,
    // then shorten the most probable ones into any slack left.
    int64_t kraft = 0;
    for (int i = 0; i < n; i++) {
      a[i] = std::min<uint32_t>(a[i], kL);
      kraft += int64_t{1} << (kL - a[i]);
    }
    int64_t over = kraft - kTableSize;
    while (over > 0) {
      for (int i = 0; i < n && over > 0; i++) {
        if (static_cast<int>(a[i]) < kL) {
          over -= int64_t{1} << (kL - a[i] - 1);
          a[i]++;
        }
      }
    }
    for (int i = n - 1; i >= 0 && over < 0; i--) {
      while (a[i] > 1 && -over >= (int64_t{1} << (kL - a[i]))) {
        over += int64_t{1} << (kL - a[i]);
        a[i]--;
      }
    }
  }
  for (int i = 0; i < n; i++) len[v[i].s] = static_cast<uint8_t>(a[i]);
  return n;
}

// Canonical codes, MSB first, as deflate assigns them.
void AssignCodes(const std::array<uint8_t, 256>& len, std::array<uint32_t, 256>& code) {
  int count[kL + 2] = {};
  for (int s = 0; s < 256; s++) count[len[s]]++;
  count[0] = 0;
  uint32_t next[kL + 2] = {};
  uint32_t c = 0;
  for (int l = 1; l <= kL; l++) {
    c = (c + count[l - 1]) << 1;
    next[l] = c;
  }
  for (int s = 0; s < 256; s++) code[s] = len[s] ? next[len[s]]++ : 0;
}

// Serialized table: mode 0 = one symbol (its byte follows); mode 1 = min and max symbol, then
// one nibble per symbol in [min, max]: 0..11 a length, 12 k = a run of 2+k unused symbols,
// 13 k1 k2 = a run of 18+(k1<<4|k2).
void WriteTable(const HufBlockPlan& b, std::vector<uint8_t>& out) {
  if (b.single >= 0) {
    out.push_back(0);
    out.push_back(static_cast<uint8_t>(b.single));
    return;
  }
  int lo = 0, hi = 255;
  while (!b.len[lo]) lo++;
  while (!b.len[hi]) hi--;
  out.push_back(1);
  out.push_back(static_cast<uint8_t>(lo));
  out.push_back(static_cast<uint8_t>(hi));
  std::vector<uint8_t> nib;
  for (int s = lo; s <= hi;) {
    if (b.len[s]) {
      nib.push_back(b.len[s++]);
      continue;
    }
    int run = 0;
    while (s + run <= hi && !b.len[s + run]) run++;
    s += run;
    while (run > 0) {
      if (run == 1) {
        nib.push_back(0);
        run = 0;
      } else if (run <= 17) {
        nib.push_back(12);
        nib.push_back(static_cast<uint8_t>(run - 2));
        run = 0;
      } else {
        int k = std::min(run, 273);
        nib.push_back(13);
        nib.push_back(static_cast<uint8_t>((k - 18) >> 4));
        nib.push_back(static_cast<uint8_t>((k - 18) & 15));
        run -= k;
      }
    }
  }
  if (nib.size() & 1) nib.push_back(0);
  for (size_t i = 0; i < nib.size(); i += 2) out.push_back(static_cast<uint8_t>(nib[i] << 4 | nib[i + 1]));
}

// Parses a mode-1 table (after the mode byte) into `len`; checks the code is complete.
bool ReadTable(ByteReader& r, std::array<uint8_t, 256>& len) {
  uint8_t lo, hi;
  if (!r.GetU8(&lo) || !r.GetU8(&hi) || hi <= lo) return false;
  len.fill(0);
  int s = lo, pending = -1;
  auto nibble = [&](int* v) {
    if (pending >= 0) {
      *v = pending;
      pending = -1;
      return true;
    }
    uint8_t b;
    if (!r.GetU8(&b)) return false;
    *v = b >> 4;
    pending = b & 15;
    return true;
  };
  while (s <= hi) {
    int v;
    if (!nibble(&v)) return false;
    if (v <= kL) {
      len[s++] = static_cast<uint8_t>(v);
      continue;
    }
    int run;
    if (v == 12) {
      int k;
      if (!nibble(&k)) return false;
      run = 2 + k;
    } else if (v == 13) {
      int k1, k2;
      if (!nibble(&k1) || !nibble(&k2)) return false;
      run = 18 + (k1 << 4 | k2);
    } else {
      return false;
    }
    if (s + run > hi + 1) return false;
    s += run;
  }
  if (pending > 0) return false;  // padding must be zero
  if (!len[lo] || !len[hi]) return false;
  int64_t kraft = 0;
  for (int i = 0; i < 256; i++)
    if (len[i]) kraft += int64_t{1} << (kL - len[i]);
  return kraft == kTableSize;
}

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

// Codes the first `count` (rounded down to 5) symbols of two lanes in step, keeping both
// writers in registers: two dependency chains are enough to fill the core, four spill.
// Returns the number of symbols coded.
__attribute__((target_clones("bmi2", "default"))) uint32_t EncodePair(const uint32_t* entry, const uint8_t* sa, const uint8_t* sb, uint32_t count,
                    BitWriter& wa, BitWriter& wb) {
  uint64_t aa = wa.acc, ab = wb.acc;
  uint64_t na = wa.n, nb = wb.n;  // low byte: pending bits (code bits above are ignored)
  uint8_t *pa = wa.p, *pb = wb.p;
  uint32_t i = 0;
  for (; i + 5 <= count; i += 5) {
    for (int j = 0; j < 5; j++) {
      const uint32_t ea = entry[sa[i + j]], eb = entry[sb[i + j]];
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

// As EncodePair, two symbols per lookup from a pair table (codes of <= 22 bits): four symbols
// (<= 44 bits) per lane between flushes. Returns the number of symbols coded (a multiple of 4).
__attribute__((target_clones("bmi2", "default"))) uint32_t EncodePairOfPairs(
    const uint32_t* pair, const uint8_t* sa, const uint8_t* sb, uint32_t count, BitWriter& wa,
    BitWriter& wb) {
  uint64_t aa = wa.acc, ab = wb.acc;
  uint64_t na = wa.n, nb = wb.n;
  uint8_t *pa = wa.p, *pb = wb.p;
  uint32_t i = 0;
  for (; i + 4 <= count; i += 4) {
    for (int j = 0; j < 4; j += 2) {
      const uint32_t ea = pair[Load16(sa + i + j)], eb = pair[Load16(sb + i + j)];
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

inline uint64_t PeekSafe(const uint8_t* in, size_t nbytes, size_t bitpos) {
  size_t byte = bitpos >> 3;
  uint8_t tmp[8] = {};
  if (byte + 8 <= nbytes) {
    std::memcpy(tmp, in + byte, 8);
  } else if (byte < nbytes) {
    std::memcpy(tmp, in + byte, nbytes - byte);
  }
  return LoadBE64(tmp) << (bitpos & 7);
}

}  // namespace

void CountSymbols(std::span<const uint8_t> s, Histogram& h) {
  uint32_t c[4][256] = {};  // four tables break the dependency on runs of one symbol
  const uint8_t* p = s.data();
  size_t n = s.size(), i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = Load64(p + i);
    c[0][v & 0xff]++;
    c[1][(v >> 8) & 0xff]++;
    c[2][(v >> 16) & 0xff]++;
    c[3][(v >> 24) & 0xff]++;
    c[0][(v >> 32) & 0xff]++;
    c[1][(v >> 40) & 0xff]++;
    c[2][(v >> 48) & 0xff]++;
    c[3][v >> 56]++;
  }
  for (; i < n; i++) c[0][p[i]]++;
  for (int k = 0; k < 256; k++) h[k] = c[0][k] + c[1][k] + c[2][k] + c[3][k];
}

namespace {

// log2 for cost estimates: exact to ~1e-5, several times faster than libm.
inline double FastLog2(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, 8);
  const int e = static_cast<int>(bits >> 52) - 1023;
  bits = (bits & ((uint64_t{1} << 52) - 1)) | (uint64_t{1023} << 52);
  double m;
  std::memcpy(&m, &bits, 8);  // m in [1, 2)
  const double t = (m - 1) / (m + 1), t2 = t * t;  // log(m) = 2 atanh(t)
  return e + 2.8853900817779268 * t * (1 + t2 * (1.0 / 3 + t2 * (1.0 / 5 + t2 * (1.0 / 7))));
}

// c * log2(c), from a table for the small counts that dominate.
struct XLogX {
  static constexpr uint32_t kSize = 4096;
  double v[kSize];
  XLogX() {
    v[0] = 0;
    for (uint32_t c = 1; c < kSize; c++) v[c] = c * std::log2(static_cast<double>(c));
  }
  double operator()(uint32_t c) const { return c < kSize ? v[c] : c * FastLog2(c); }
};
const XLogX kXLogX;

}  // namespace

double EntropyBits(const Histogram& h) {
  uint64_t total = 0;
  double sum = 0;
  for (uint32_t c : h) {
    total += c;
    sum += kXLogX(c);
  }
  return total > 0 ? static_cast<double>(total) * FastLog2(static_cast<double>(total)) - sum : 0;
}

void PlanHuffman(std::span<const uint8_t> syms, std::span<const uint32_t> segments, HufPlan& plan) {
  plan.blocks.clear();
  plan.cost_bytes = 0;
  plan.entropy_bits = 0;
  const uint32_t n = static_cast<uint32_t>(syms.size());
  if (n == 0) {
    plan.cost_bytes = 1;
    return;
  }
  // Greedy left-to-right merge of segments while one table is cheaper than two.
  HufBlockPlan cur;
  double cur_cost = 0;
  uint32_t begin = 0;
  auto next_cut = segments.begin();
  while (begin < n) {
    while (next_cut != segments.end() && *next_cut <= begin) ++next_cut;
    uint32_t end = next_cut != segments.end() ? std::min(*next_cut, n) : n;
    HufBlockPlan seg;
    seg.begin = begin;
    seg.end = end;
    CountSymbols(syms.subspan(begin, end - begin), seg.hist);
    const double seg_cost = Cost(seg.hist);
    if (plan.blocks.empty() && cur.end == 0) {
      cur = seg;
      cur_cost = seg_cost;
    } else {
      Histogram merged;
      for (int s = 0; s < 256; s++) merged[s] = cur.hist[s] + seg.hist[s];
      const double merged_cost = Cost(merged);
      if (merged_cost <= cur_cost + seg_cost) {
        cur.hist = merged;
        cur.end = end;
        cur_cost = merged_cost;
      } else {
        plan.blocks.push_back(cur);
        cur = seg;
        cur_cost = seg_cost;
      }
    }
    begin = end;
  }
  plan.blocks.push_back(cur);

  uint64_t bits = 8 * 4;  // block count
  std::vector<uint8_t> table;
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
    int used = BuildLengths(rounded, b.len);
    table.clear();
    if (used < 2) {
      for (int s = 0; s < 256; s++)
        if (b.hist[s]) b.single = s;
      b.cost_bits = 8 * 8;
    } else {
      uint64_t payload = 0;
      for (int s = 0; s < 256; s++) payload += uint64_t{b.hist[s]} * b.len[s];
      WriteTable(b, table);
      b.cost_bits = payload + 8 * table.size() + kBlockHeaderBits;
    }
    bits += b.cost_bits;
  }
  plan.cost_bytes = (bits + 7) / 8;
}

void EncodeHuffman(std::span<const uint8_t> syms, HufPlan& plan, std::vector<uint8_t>& out) {
  PutVarint(out, plan.blocks.size());
  for (const HufBlockPlan& b : plan.blocks) {
    const uint32_t count = b.end - b.begin;
    PutVarint(out, count);
    WriteTable(b, out);
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
    const size_t header = out.size();
    out.resize(header + 16 + cap[0] + cap[1] + cap[2] + cap[3]);
    uint8_t* base = out.data() + header + 16;
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
    if (nused <= kMaxPairAlphabet && count >= kMinPairSymbols) {
      plan.pair_codes.resize(1u << 16);
      uint32_t* pair = plan.pair_codes.data();
      for (int x = 0; x < nused; x++)
        for (int y = 0; y < nused; y++) {
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
    uint8_t* dst = base;
    for (int k = 0; k < 4; k++) {
      uint8_t* end = w[k].Finish();
      size_t len = end - region[k];
      Store32(out.data() + header + 4 * k, static_cast<uint32_t>(len));
      std::memmove(dst, region[k], len);
      dst += len;
    }
    out.resize(dst - out.data());
  }
}

// ---- Decoder ---------------------------------------------------------------------------------

struct HuffmanDecoder::Table {
  uint64_t hash = 0;
  std::vector<uint8_t> desc;
  bool has_multi = false;
  uint16_t single[kTableSize];  // symbol | length << 8
  uint64_t multi[kTableSize];   // bits | count << 8 | up to 5 symbols << 16
};

HuffmanDecoder::HuffmanDecoder() = default;
HuffmanDecoder::~HuffmanDecoder() = default;

HuffmanDecoder::Table* HuffmanDecoder::GetTable(std::span<const uint8_t> desc,
                                                const std::array<uint8_t, 256>& len, bool multi) {
  const uint64_t hash = XXH3_64bits(desc.data(), desc.size());
  Table* t = nullptr;
  for (auto& c : cache_) {
    if (c && c->hash == hash && c->desc.size() == desc.size() &&
        std::equal(desc.begin(), desc.end(), c->desc.begin())) {
      t = c.get();
      break;
    }
  }
  if (!t) {
    auto& slot = cache_[next_victim_];
    next_victim_ = (next_victim_ + 1) % kCacheSize;
    if (!slot) slot = std::make_unique<Table>();
    t = slot.get();
    t->hash = hash;
    t->desc.assign(desc.begin(), desc.end());
    t->has_multi = false;
    std::array<uint32_t, 256> code;
    AssignCodes(len, code);
    for (int s = 0; s < 256; s++) {
      if (!len[s]) continue;
      const uint32_t lo = code[s] << (kL - len[s]), hi = (code[s] + 1) << (kL - len[s]);
      for (uint32_t w = lo; w < hi; w++) t->single[w] = static_cast<uint16_t>(s | len[s] << 8);
    }
  }
  if (multi && !t->has_multi) {
    // Dynamic programming over window widths: the decoding of an r-bit window is its first
    // symbol followed by the decoding of the (r - length)-bit rest, already computed. level[r]
    // holds the 2^r entries for width r; width kL is the table. Cheaper than walking each window
    // symbol by symbol, which matters when chunks bring new tables.
    uint64_t* level = levels_.data();  // width r at offset 2^r - 1
    level[0] = 0;
    for (int r = 1; r <= kL; r++) {
      uint64_t* cur = level + (1u << r) - 1;
      const uint64_t* shorter = level;  // base of all narrower widths
      for (uint32_t x = 0; x < (1u << r); x++) {
        const uint16_t e = t->single[x << (kL - r)];
        const int l = e >> 8;
        if (l > r) {
          cur[x] = 0;
          continue;
        }
        const int rest_w = r - l;
        uint64_t rest = shorter[(1u << rest_w) - 1 + (x & ((1u << rest_w) - 1))];
        uint64_t n = (rest >> 8) & 0xff;
        if (n == kMaxSymbolsPerLookup) {  // no room for the last one
          const uint8_t last = static_cast<uint8_t>(rest >> (16 + 8 * (n - 1)));
          rest = ((rest & 0xff) - len[last]) | (n - 1) << 8 |
                 (rest >> 16 & ((uint64_t{1} << (8 * (n - 1))) - 1)) << 16;
          n--;
        }
        cur[x] = ((rest & 0xff) + l) | (n + 1) << 8 | ((rest >> 16) << 8 | (e & 0xff)) << 16;
      }
    }
    std::memcpy(t->multi, level + kTableSize - 1, sizeof(t->multi));
    t->has_multi = true;
  }
  return t;
}

namespace {

// Decodes symbols one at a time until `out` reaches `end`. Returns the final bit position.
size_t DecodeTail(const uint16_t* single, const uint8_t* in, size_t nbytes, size_t bitpos,
                  uint8_t* out, uint8_t* end) {
  while (out < end && bitpos <= nbytes * 8) {
    uint64_t b = PeekSafe(in, nbytes, bitpos);
    const int avail = 57;
    int used = 0;
    while (out < end && used + kL <= avail) {
      const uint16_t e = single[b >> (64 - kL)];
      *out++ = static_cast<uint8_t>(e);
      b <<= e >> 8;
      used += e >> 8;
    }
    bitpos += used;
  }
  return out < end ? SIZE_MAX : bitpos;
}

// The 64 bits at bit position `pos`, MSB first, with the low 9 bits (never looked up within a
// step of five 11-bit lookups) replaced by a sentinel bit at bit 8.
inline uint64_t Window(const uint8_t* in, size_t pos) {
  return ((LoadBE64(in + (pos >> 3)) << (pos & 7)) & ~uint64_t{0x1ff}) | 0x100;
}
// Bits shifted out of a Window since it was loaded.
inline size_t Consumed(uint64_t window) { return static_cast<size_t>(__builtin_ctzll(window)) - 8; }

// One table lookup: emits the symbols the window starts with and shifts them out.
inline void Lookup(const uint64_t* mt, uint64_t& b, uint8_t*& op) {
  const uint64_t e = mt[b >> (64 - kL)];
  Store64(op, e >> 16);
  op += (e >> 8) & 0xff;
  b <<= (e & 63);
}
inline void Lookup(const uint16_t* st, uint64_t& b, uint8_t*& op) {
  const uint16_t e = st[b >> (64 - kL)];
  *op++ = static_cast<uint8_t>(e);
  b <<= (e >> 8);
}

// Decodes the four lanes in lockstep while every lane has room for a step without bounds checks:
// kStepOut output bytes and 15 input bytes past the position. The tails are left to DecodeTail.
// The lanes' bitstreams are consecutive in memory, so bit positions are kept relative to the
// first lane's start: one base register instead of four keeps the loop out of the stack. BMI2's
// shifts leave the count register free; a clone has them where the CPU does.
template <class Entry>  // uint64_t: multi-symbol table; uint16_t: one-symbol table
__attribute__((always_inline)) inline void DecodeLanes(const Entry* mt, const uint8_t* const ip[4],
                                                       const size_t nb[4], size_t bp[4],
                                                       uint8_t* op[4], uint8_t* const oe[4]) {
  const uint8_t* in = ip[0];
  size_t start[4];
  for (int k = 0; k < 4; k++) start[k] = static_cast<size_t>(ip[k] - in) * 8;
  size_t bp0 = bp[0] + start[0], bp1 = bp[1] + start[1], bp2 = bp[2] + start[2],
         bp3 = bp[3] + start[3];
  uint8_t *op0 = op[0], *op1 = op[1], *op2 = op[2], *op3 = op[3];
  uint8_t* lim[4];
  size_t bit_lim[4];
  bool ok = true;
  for (int k = 0; k < 4; k++) ok = ok && oe[k] - op[k] >= kStepOut && nb[k] >= 15;
  for (int k = 0; k < 4 && ok; k++) {
    lim[k] = oe[k] - kStepOut;
    bit_lim[k] = start[k] + (nb[k] - 15) * 8;
  }
  if (ok) {
    while (op0 <= lim[0] && op1 <= lim[1] && op2 <= lim[2] && op3 <= lim[3] && bp0 <= bit_lim[0] &&
           bp1 <= bit_lim[1] && bp2 <= bit_lim[2] && bp3 <= bit_lim[3]) {
      // Each lane: one 64-bit load, then five lookups (<= 55 bits). The lanes are interleaved
      // lookup by lookup so their dependency chains overlap. Lookups never reach the low 9 bits,
      // so a sentinel bit there counts the bits consumed (trailing zeros) without a register.
      uint64_t b0 = Window(in, bp0), b1 = Window(in, bp1), b2 = Window(in, bp2), b3 = Window(in, bp3);
#define ZIPNN_LOOKUP(k) Lookup(mt, b##k, op##k);
#define ZIPNN_LOOKUP4 ZIPNN_LOOKUP(0) ZIPNN_LOOKUP(1) ZIPNN_LOOKUP(2) ZIPNN_LOOKUP(3)
      ZIPNN_LOOKUP4 ZIPNN_LOOKUP4 ZIPNN_LOOKUP4 ZIPNN_LOOKUP4 ZIPNN_LOOKUP4
#undef ZIPNN_LOOKUP4
#undef ZIPNN_LOOKUP
      bp0 += Consumed(b0), bp1 += Consumed(b1), bp2 += Consumed(b2), bp3 += Consumed(b3);
    }
  }
  bp0 -= start[0], bp1 -= start[1], bp2 -= start[2], bp3 -= start[3];
  bp[0] = bp0, bp[1] = bp1, bp[2] = bp2, bp[3] = bp3;
  op[0] = op0, op[1] = op1, op[2] = op2, op[3] = op3;
  // Quarters differ in entropy, so one lane runs out first: finish each lane alone.
  for (int k = 0; k < 4; k++) {
    const uint8_t* in = ip[k];
    size_t pos = bp[k];
    uint8_t* o = op[k];
    while (oe[k] - o >= kStepOut && nb[k] >= 15 && (pos >> 3) <= nb[k] - 15) {
      uint64_t b = Window(in, pos);
      for (int j = 0; j < 5; j++) Lookup(mt, b, o);
      pos += Consumed(b);
    }
    bp[k] = pos;
    op[k] = o;
  }
}

// The decode loops proper: clones with BMI2's shifts where the CPU has them.
__attribute__((target_clones("arch=x86-64-v3", "default"))) void DecodeMulti(
    const uint64_t* t, const uint8_t* const ip[4], const size_t nb[4], size_t bp[4], uint8_t* op[4],
    uint8_t* const oe[4]) {
  DecodeLanes(t, ip, nb, bp, op, oe);
}
__attribute__((target_clones("arch=x86-64-v3", "default"))) void DecodeSingle(
    const uint16_t* t, const uint8_t* const ip[4], const size_t nb[4], size_t bp[4], uint8_t* op[4],
    uint8_t* const oe[4]) {
  DecodeLanes(t, ip, nb, bp, op, oe);
}

}  // namespace

bool HuffmanDecoder::Decode(std::span<const uint8_t> in, std::span<uint8_t> out) {
  ByteReader r(in);
  uint64_t nblocks;
  if (!r.GetVarint(&nblocks) || nblocks > out.size() || (nblocks == 0 && !out.empty())) return false;
  size_t pos = 0;
  std::array<uint8_t, 256> len;
  for (uint64_t b = 0; b < nblocks; b++) {
    uint64_t count;
    uint8_t mode;
    if (!r.GetVarint(&count) || count == 0 || count > out.size() - pos || !r.GetU8(&mode))
      return false;
    uint8_t* dst = out.data() + pos;
    pos += count;
    if (mode == 0) {
      uint8_t sym;
      if (!r.GetU8(&sym)) return false;
      std::memset(dst, sym, count);
      continue;
    }
    const uint8_t* desc_begin = r.pos() - 1;
    if (mode != 1 || !ReadTable(r, len)) return false;
    // Several symbols per lookup pay where codes are short and the block long enough to build
    // the table; where no two codes fit in a lookup, the one-symbol table is leaner.
    int min_len = kL;
    for (int s = 0; s < 256; s++)
      if (len[s]) min_len = std::min<int>(min_len, len[s]);
    const bool multi = count >= kMinMultiSymbols && 2 * min_len <= kL;
    const Table* t = GetTable({desc_begin, static_cast<size_t>(r.pos() - desc_begin)}, len, multi);
    std::span<const uint8_t> sizes, data[4];
    if (!r.GetBytes(16, &sizes)) return false;
    for (int k = 0; k < 4; k++)
      if (!r.GetBytes(Load32(sizes.data() + 4 * k), &data[k])) return false;

    const size_t q = (count + 3) / 4;
    const uint8_t* ip[4];
    size_t nb[4], bp[4] = {0, 0, 0, 0};
    uint8_t *op[4], *oe[4];
    for (int k = 0; k < 4; k++) {
      ip[k] = data[k].data();
      nb[k] = data[k].size();
      op[k] = dst + std::min(k * q, size_t{count});
      oe[k] = dst + std::min((k + 1) * q, size_t{count});
    }
    if (multi) {
      DecodeMulti(t->multi, ip, nb, bp, op, oe);
    } else {
      DecodeSingle(t->single, ip, nb, bp, op, oe);
    }
    for (int k = 0; k < 4; k++) {
      const size_t end = DecodeTail(t->single, ip[k], nb[k], bp[k], op[k], oe[k]);
      // The encoder pads each stream with zero bits to a byte: it must be consumed exactly, so
      // that no bit of a frame goes unchecked.
      if (end == SIZE_MAX || (end + 7) / 8 != nb[k]) return false;
      if ((end & 7) && (ip[k][nb[k] - 1] & (0xffu >> (end & 7)))) return false;
    }
  }
  return pos == out.size() && r.remaining() == 0;
}

}  // namespace zipnn::internal
