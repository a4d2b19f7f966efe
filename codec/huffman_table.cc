// Huffman tables: code lengths, canonical codes, serialization, and symbol statistics.
#include "codec/huffman_table.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace zipnn::internal {
namespace {

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

}  // namespace

// Fills `len` with complete, length-limited code lengths for `h`. Returns the number of symbols
// used; with fewer than two, `len` stays all zero.
int BuildLengths(const Histogram& h, std::array<uint8_t, 256>& len) {
  len.fill(0);
  // Sorted by frequency, then symbol: one integer key each sorts several times faster than
  // records with a comparator, and blocks are many where tensors are small.
  uint64_t key[256];
  int n = 0;
  for (int s = 0; s < 256; s++)
    if (h[s]) key[n++] = uint64_t{h[s]} << 8 | static_cast<uint64_t>(s);
  if (n < 2) return n;
  std::sort(key, key + n);
  uint32_t a[256];
  for (int i = 0; i < n; i++) a[i] = static_cast<uint32_t>(key[i] >> 8);
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
  for (int i = 0; i < n; i++) len[key[i] & 0xff] = static_cast<uint8_t>(a[i]);
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

namespace {

// Mode 1: one nibble per symbol in [lo, hi]: 0..11 a length, 12 k = a run of 2+k unused
// symbols, 13 k1 k2 = a run of 18+(k1<<4|k2).
void WriteNibbles(const std::array<uint8_t, 256>& len, int lo, int hi, std::vector<uint8_t>& out) {
  // Into a bounded local buffer (at most 3 nibbles per symbol), not the heap: tables are many.
  struct {
    uint8_t v[3 * 256];
    size_t n = 0;
    void push_back(uint8_t x) { v[n++] = x; }
    size_t size() const { return n; }
    uint8_t operator[](size_t i) const { return v[i]; }
  } nib;
  for (int s = lo; s <= hi;) {
    if (len[s]) {
      nib.push_back(len[s++]);
      continue;
    }
    int run = 0;
    while (s + run <= hi && !len[s + run]) run++;
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
  for (size_t i = 0; i < nib.size(); i += 2)
    out.push_back(static_cast<uint8_t>(nib[i] << 4 | nib[i + 1]));
}

bool ReadNibbles(ByteReader& r, int lo, int hi, std::array<uint8_t, 256>& len) {
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
  return pending <= 0;  // padding must be zero
}

// Mode 2: the first length in 4 bits, then each next one against the one before: 0 same,
// 10 one longer, 110 one shorter, 111 + 4 bits as is. Neighbouring symbols of joint BF16 coding
// (an exponent's mantissa steps) have near-equal lengths: about half the bits of mode 1.
// Writes at most 1 + 255 * 7 / 8 bytes at `out`; returns the end.
uint8_t* WriteDeltas(const std::array<uint8_t, 256>& len, int lo, int hi, uint8_t* out) {
  uint32_t acc = 0;
  int n = 0;
  auto put = [&](uint32_t bits, int count) {
    acc = acc << count | bits;
    for (n += count; n >= 8; n -= 8) *out++ = static_cast<uint8_t>(acc >> (n - 8));
  };
  put(len[lo], 4);
  for (int s = lo + 1; s <= hi; s++) {
    const int d = len[s] - len[s - 1];
    if (d == 0) {
      put(0, 1);
    } else if (d == 1) {
      put(2, 2);
    } else if (d == -1) {
      put(6, 3);
    } else {
      put(7u << 4 | len[s], 7);
    }
  }
  if (n) put(0, 8 - n);
  return out;
}

bool ReadDeltas(ByteReader& r, int lo, int hi, std::array<uint8_t, 256>& len) {
  // Straight from the bytes, a prefix code per table lookup, instead of bit by bit: the reader
  // moves on by the bytes the lengths took once they are all read.
  const uint8_t* p = r.pos();
  const size_t avail = r.remaining();
  auto peek16 = [&](size_t bit) -> uint32_t {  // MSB first; zeros past the end
    const size_t byte = bit >> 3;
    uint32_t w = 0;
    for (size_t i = 0; i < 3; i++) w = w << 8 | (byte + i < avail ? p[byte + i] : 0u);
    return (w << (bit & 7)) >> 8 & 0xffff;
  };
  // By the first three bits: 0xx same, 10x one longer, 110 one shorter, 111 as is (4 bits more).
  static constexpr uint8_t kBits[8] = {1, 1, 1, 1, 2, 2, 3, 7};
  static constexpr int8_t kDelta[8] = {0, 0, 0, 0, 1, 1, -1, 0};
  int l = static_cast<int>(peek16(0) >> 12);
  size_t bit = 4;
  if (l > kL) return false;
  len[lo] = static_cast<uint8_t>(l);
  for (int s = lo + 1; s <= hi; s++) {
    const uint32_t v = peek16(bit), t = v >> 13;
    l = t == 7 ? static_cast<int>(v >> 9 & 15) : l + kDelta[t];
    bit += kBits[t];
    if (l < 0 || l > kL) return false;
    len[s] = static_cast<uint8_t>(l);
  }
  const size_t bytes = (bit + 7) / 8;
  if (bytes > avail || (peek16(bit) >> (16 - (bytes * 8 - bit))) != 0) return false;  // padding: 0
  std::span<const uint8_t> used;
  return r.GetBytes(bytes, &used);
}

}  // namespace

// Serialized table: mode 0 = one symbol (its byte follows); modes 1 and 2 = min and max symbol,
// then the lengths of the symbols in [min, max], as nibbles or as deltas, whichever is shorter.
void WriteTable(const HufBlockPlan& b, std::vector<uint8_t>& out) {
  if (b.single >= 0) {
    out.push_back(0);
    out.push_back(static_cast<uint8_t>(b.single));
    return;
  }
  int lo = 0, hi = 255;
  while (!b.len[lo]) lo++;
  while (!b.len[hi]) hi--;
  const size_t start = out.size();
  out.insert(out.end(), {1, static_cast<uint8_t>(lo), static_cast<uint8_t>(hi)});
  WriteNibbles(b.len, lo, hi, out);
  uint8_t deltas[3 + 256] = {2, static_cast<uint8_t>(lo), static_cast<uint8_t>(hi)};
  uint8_t* end = WriteDeltas(b.len, lo, hi, deltas + 3);
  if (static_cast<size_t>(end - deltas) < out.size() - start) {
    out.resize(start);
    out.insert(out.end(), deltas, end);
  }
}

bool ReadTable(ByteReader& r, uint8_t mode, CodeLengths& c) {
  uint8_t lo, hi;
  if ((mode != 1 && mode != 2) || !r.GetU8(&lo) || !r.GetU8(&hi) || hi <= lo) return false;
  std::array<uint8_t, 256>& len = c.len;
  len.fill(0);
  if (!(mode == 1 ? ReadNibbles(r, lo, hi, len) : ReadDeltas(r, lo, hi, len))) return false;
  if (!len[lo] || !len[hi]) return false;
  c.lo = lo;
  c.hi = hi;
  int64_t kraft = 0;
  int min_len = kL;
  for (int i = lo; i <= hi; i++) {
    const int l = len[i];  // (0: no code, masked out without a branch)
    kraft += (int64_t{1} << (kL - l)) & -int64_t{l != 0};
    min_len = std::min(min_len, l ? l : kL);
  }
  c.min_len = min_len;
  return kraft == kTableSize;
}

void CountSymbols(std::span<const uint8_t> s, Histogram& h) {
  const uint8_t* p = s.data();
  size_t n = s.size();
  h.fill(0);
  if (n >= 2048) {  // (below, clearing the tables would cost more than counting)
    // Eight tables: the few values exponents mostly take spread over eight dependency chains.
    // 16-bit counters keep them in 4 KiB of L1 (measured: 25-30% faster than four 32-bit ones);
    // a piece of at most 8 * 65535 bytes cannot overflow one.
    constexpr size_t kPiece = (8 * 65535) & ~size_t{15};
    while (n >= 16) {
      const size_t m = std::min(n, kPiece) & ~size_t{15};
      uint16_t c[8][256] = {};
      for (size_t i = 0; i < m; i += 16) {
        const uint64_t v = Load64(p + i), w = Load64(p + i + 8);
        c[0][v & 0xff]++;
        c[1][(v >> 8) & 0xff]++;
        c[2][(v >> 16) & 0xff]++;
        c[3][(v >> 24) & 0xff]++;
        c[4][(v >> 32) & 0xff]++;
        c[5][(v >> 40) & 0xff]++;
        c[6][(v >> 48) & 0xff]++;
        c[7][v >> 56]++;
        c[0][w & 0xff]++;
        c[1][(w >> 8) & 0xff]++;
        c[2][(w >> 16) & 0xff]++;
        c[3][(w >> 24) & 0xff]++;
        c[4][(w >> 32) & 0xff]++;
        c[5][(w >> 40) & 0xff]++;
        c[6][(w >> 48) & 0xff]++;
        c[7][w >> 56]++;
      }
      for (int k = 0; k < 256; k++) {
        h[k] +=
            uint32_t{c[0][k]} + c[1][k] + c[2][k] + c[3][k] + c[4][k] + c[5][k] + c[6][k] + c[7][k];
      }
      p += m;
      n -= m;
    }
  }
  for (size_t i = 0; i < n; i++) h[p[i]]++;
}

namespace {

// log2 for cost estimates: exact to ~1e-5, several times faster than libm.
inline double FastLog2(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, 8);
  const int e = static_cast<int>(bits >> 52) - 1023;
  bits = (bits & ((uint64_t{1} << 52) - 1)) | (uint64_t{1023} << 52);
  double m;
  std::memcpy(&m, &bits, 8);                       // m in [1, 2)
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

double EntropyBits(std::span<const uint32_t> counts, uint32_t extra) {
  uint64_t total = extra;
  double sum = kXLogX(extra);
  for (uint32_t c : counts) {
    total += c;
    sum += kXLogX(c);
  }
  return total > 0 ? static_cast<double>(total) * FastLog2(static_cast<double>(total)) - sum : 0;
}

double EntropyBits(const Histogram& h) { return EntropyBits(std::span<const uint32_t>(h)); }

}  // namespace zipnn::internal
