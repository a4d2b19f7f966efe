// The Huffman stream decoder: cached tables and four-lane multi-symbol decoding.
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "codec/huffman_table.h"

namespace zipnn::internal {
namespace {

// Below this many symbols a block decodes with the one-symbol table unless the multi-symbol one
// is cached already: building it would cost more than it saves (measured on the corpus, files of
// many small tensors: 8K beats 32K by 2-6% and 2K by 4%; large blocks are unaffected).
constexpr uint32_t kMinMultiSymbols = 8192;
// The multi-symbol table holds up to this many symbols per entry.
constexpr uint32_t kMaxSymbolsPerLookup = 5;
// A lane step (one 8-byte load, five lookups) writes at most this many bytes: with the
// multi-symbol table, the last 8-byte store included; with the one-symbol table, a byte a lookup.
template <class Entry>
constexpr ptrdiff_t kStepOut = sizeof(Entry) == 8 ? 5 * kMaxSymbolsPerLookup + 3 : 5;

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

struct HuffmanDecoder::Table {
  uint64_t hash = 0;
  std::vector<uint8_t> desc;
  bool has_multi = false;       // then `single` is not built: `multi` serves the tails too
  uint16_t single[kTableSize];  // length | symbol << 8
  // bits | count << 8 | up to 5 symbols << 16 | the first symbol's length << 56
  uint64_t multi[kTableSize];
};

// Memory of tables no cache holds any more, for the next build. Tables are ~20 KiB and built
// per block: left to malloc, they kept landing on fresh pages (measured in a mount: 70% of the
// daemon's page faults, each costing a trap in a VM), where a recycled table is warm.
class TableMemory : public std::enable_shared_from_this<TableMemory> {
 public:
  std::shared_ptr<HuffmanDecoder::Table> Get() {
    std::unique_ptr<HuffmanDecoder::Table> t;
    {
      std::lock_guard lock(mu_);
      if (!free_.empty()) {
        t = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!t) t = std::make_unique_for_overwrite<HuffmanDecoder::Table>();
    // The deleter keeps this memory alive as long as any of its tables.
    return {t.release(), [self = shared_from_this()](HuffmanDecoder::Table* p) { self->Put(p); }};
  }

 private:
  static constexpr size_t kMaxFree = 32;
  void Put(HuffmanDecoder::Table* p) {
    std::unique_ptr<HuffmanDecoder::Table> t(p);
    std::lock_guard lock(mu_);
    if (free_.size() < kMaxFree) free_.push_back(std::move(t));
  }
  std::mutex mu_;
  std::vector<std::unique_ptr<HuffmanDecoder::Table>> free_;
};

namespace {

bool SameTable(const HuffmanDecoder::Table& t, uint64_t hash, std::span<const uint8_t> desc,
               bool multi) {
  return t.hash == hash && (t.has_multi || !multi) && t.desc.size() == desc.size() &&
         std::equal(desc.begin(), desc.end(), t.desc.begin());
}

}  // namespace

std::shared_ptr<const HuffmanDecoder::Table> SharedHuffmanTables::Find(
    uint64_t hash, std::span<const uint8_t> desc, bool multi) {
  std::lock_guard lock(mu_);
  auto it = tables_.find(hash);
  if (it == tables_.end() || !SameTable(*it->second, hash, desc, multi)) return nullptr;
  return it->second;
}

void SharedHuffmanTables::Put(std::shared_ptr<const HuffmanDecoder::Table> table) {
  std::lock_guard lock(mu_);
  const uint64_t hash = table->hash;
  auto [it, inserted] = tables_.insert_or_assign(hash, std::move(table));
  if (!inserted) return;
  order_.push_back(hash);
  while (tables_.size() > max_tables_) {
    tables_.erase(order_.front());
    order_.pop_front();
  }
}

SharedHuffmanTables::SharedHuffmanTables(size_t max_tables)
    : max_tables_(max_tables), memory_(std::make_shared<TableMemory>()) {}
SharedHuffmanTables::~SharedHuffmanTables() = default;

HuffmanDecoder::HuffmanDecoder(SharedHuffmanTables* shared)
    : shared_(shared),
      memory_(shared != nullptr ? shared->memory_ : std::make_shared<TableMemory>()) {}
HuffmanDecoder::~HuffmanDecoder() = default;

const HuffmanDecoder::Table* HuffmanDecoder::GetTable(std::span<const uint8_t> desc,
                                                      const CodeLengths& c, bool multi) {
  const uint64_t hash = XXH3_64bits(desc.data(), desc.size());
  for (const auto& c : cache_) {
    if (c && SameTable(*c, hash, desc, multi)) return c.get();
  }
  std::shared_ptr<const Table> t;
  if (shared_ != nullptr) t = shared_->Find(hash, desc, multi);
  if (!t) {
    t = BuildTable(desc, hash, c, multi);
    if (shared_ != nullptr) shared_->Put(t);
  }
  auto& slot = cache_[next_victim_];
  next_victim_ = (next_victim_ + 1) % kCacheSize;
  slot = std::move(t);
  return slot.get();
}

namespace {

// The one-symbol table of the `nsyms` coded symbols in `order` (code order): each takes the next
// 2^(kL - length) windows. A clone has AVX2 for the fill.
__attribute__((target_clones("arch=x86-64-v3", "default"))) void BuildSingle(const uint8_t* order,
                                                                             int nsyms,
                                                                             const uint8_t* len,
                                                                             uint16_t* table) {
  for (int i = 0, x = 0; i < nsyms; i++) {
    const uint8_t s = order[i];
    const int run = 1 << (kL - len[s]);
    std::fill(table + x, table + x + run, static_cast<uint16_t>(len[s] | s << 8));
    x += run;
  }
}

// The entry of a window that starts with the symbol in `head` and continues as `rest` decodes:
// bits and counts add up, the rest's symbols move up a byte (and its first length out the top).
inline uint64_t Prepend(uint64_t head, uint64_t rest) {
  return head + (rest & 0xffff) + ((rest >> 16) << 24);
}

// Entries of `run` windows that start with the symbol in `head`: each rest behind it.
inline void PutRun(uint64_t* __restrict out, const uint64_t* __restrict rest, uint32_t run,
                   uint64_t head) {
  for (uint32_t j = 0; j < run; j++) out[j] = Prepend(head, rest[j]);
}

// The multi-symbol table of the `nsyms` coded symbols in `order` (code order), by dynamic
// programming over window widths: the decoding of an r-bit window is its first symbol followed by
// the decoding of the (r - length)-bit rest, already computed. `level` holds width r's 2^r
// entries at offset 2^r - 1; width kL is `table`. A clone has AVX2 for the fill loops.
__attribute__((target_clones("arch=x86-64-v3", "default"))) void BuildMulti(
    const uint8_t* order, int nsyms, const uint8_t* len, uint64_t* level, uint64_t* table) {
  // In width r too, the windows that start with one symbol form one run, in code order, and the
  // run of a length-l symbol is level[r - l] with the symbol put in front: a tight loop per
  // symbol, not a walk per window. Narrower widths only ever serve as the rest of a wider window,
  // behind at least one symbol: they keep at most kMaxSymbolsPerLookup - 1 symbols, so the
  // table's loop needs no check.
  constexpr uint64_t kRestMax = kMaxSymbolsPerLookup - 1;
  constexpr uint64_t kRestSyms = (uint64_t{1} << (16 + 8 * (kRestMax - 1))) - 1;
  level[0] = 0;
  // A rest follows at least one symbol, so no rest is wider than kL - (shortest length): the
  // widths between are never read (with exponents' 2- and 3-bit codes, a quarter of the work).
  const int shortest = len[order[0]], widest_rest = kL - shortest;
  for (int r = 1; r <= kL; r++) {
    if (r > widest_rest && r < kL) continue;
    uint64_t* cur = r < kL ? level + (1u << r) - 1 : table;  // the widest is the table
    uint32_t x = 0;
    for (int i = 0; i < nsyms && len[order[i]] <= r; i++) {
      const uint8_t s = order[i];
      const uint32_t run = 1u << (r - len[s]);
      const uint64_t* rest = level + run - 1;
      const uint64_t head = uint64_t{len[s]} | 1u << 8 | uint64_t{s} << 16 | uint64_t{len[s]} << 56;
      // A rest of r - len bits holds at most (kL - 2 * shortest) / shortest symbols: with no
      // 1-bit code, never more than a rest may keep, so only a 1-bit code needs the check.
      if (r == kL || shortest > 1) {
        PutRun(cur + x, rest, run, head);
      } else {
        for (uint32_t j = 0; j < run; j++) {
          uint64_t e = rest[j];
          if (((e >> 8) & 0xff) == kRestMax) {  // no room for its last symbol
            const uint8_t last = static_cast<uint8_t>(e >> (16 + 8 * (kRestMax - 1)));
            e = ((e & 0xff) - len[last]) | (kRestMax - 1) << 8 | (e & kRestSyms & ~0xffffull);
          }
          cur[x + j] = Prepend(head, e);
        }
      }
      x += run;
    }
    std::fill(cur + x, cur + (1u << r), uint64_t{0});  // windows a longer code starts
  }
}

}  // namespace

std::shared_ptr<const HuffmanDecoder::Table> HuffmanDecoder::BuildTable(
    std::span<const uint8_t> desc, uint64_t hash, const CodeLengths& c, bool multi) {
  const std::array<uint8_t, 256>& len = c.len;
  std::shared_ptr<Table> t = memory_->Get();  // every entry is written below
  t->hash = hash;
  t->desc.assign(desc.begin(), desc.end());
  t->has_multi = false;
  // Canonical codes follow in code order (length, then symbol), each taking the next
  // 2^(kL - length) windows of the table: a counting sort by length gives the order, and the
  // table fills in runs, without the codes themselves. ReadTable has checked the code complete.
  // Only [lo, hi] has codes; symbols without one sort first, as length 0, and are skipped.
  int start[kL + 2] = {};  // where each length's symbols start in `sorted`
  for (int s = c.lo; s <= c.hi; s++) start[len[s] + 1]++;
  for (int l = 1; l <= kL + 1; l++) start[l] += start[l - 1];
  const int unused = start[1];
  uint8_t sorted[256];
  for (int s = c.lo; s <= c.hi; s++) sorted[start[len[s]]++] = static_cast<uint8_t>(s);
  const uint8_t* order = sorted + unused;
  const int nsyms = start[kL] - unused;  // (each start[l] has moved on to the next length's)
  if (multi) {
    BuildMulti(order, nsyms, len.data(), levels_.data(), t->multi);
    t->has_multi = true;
  } else {
    BuildSingle(order, nsyms, len.data(), t->single);
  }
  return t;
}

namespace {

// One table lookup: emits the symbols the window starts with and shifts them out. Returns the
// bits they took.
inline int Lookup(const uint64_t* mt, uint64_t& b, uint8_t*& op) {
  const uint64_t e = mt[b >> (64 - kL)];
  Store64(op, e >> 16);
  op += (e >> 8) & 0xff;
  b <<= (e & 63);
  return static_cast<int>(e & 63);
}
// (The length in the low byte: the shift takes it as it is, one step less on the chain from one
// lookup to the next; measured on GGUF Q4_0 quants, which decode a symbol per lookup.)
inline int Lookup(const uint16_t* st, uint64_t& b, uint8_t*& op) {
  const uint16_t e = st[b >> (64 - kL)];
  *op++ = static_cast<uint8_t>(e >> 8);
  b <<= (e & 63);
  return e & 0xff;
}

// The first symbol of a multi-symbol entry alone, for the last few symbols of a lane.
inline int LookupFirst(const uint64_t* mt, uint64_t& b, uint8_t*& op) {
  const uint64_t e = mt[b >> (64 - kL)];
  *op++ = static_cast<uint8_t>(e >> 16);
  b <<= (e >> 56);
  return static_cast<int>(e >> 56);
}

// Decodes the rest of a lane, near the ends of its input and output, until `out` reaches `end`,
// reading no byte past `nbytes`. With the multi-symbol table (when given; `single` is then null,
// not built): while a lookup can neither write past `end` nor yield more symbols than are left,
// then a symbol at a time from the same table. Else a symbol at a time from `single`. Returns
// the final bit position.
size_t DecodeTail(const uint64_t* multi, const uint16_t* single, const uint8_t* in, size_t nbytes,
                  size_t bitpos, uint8_t* out, uint8_t* end) {
  while (out < end && bitpos <= nbytes * 8) {
    uint64_t b = PeekSafe(in, nbytes, bitpos);
    const int avail = 57;
    int used = 0;
    if (multi != nullptr) {
      while (end - out >= 8 && used + kL <= avail) used += Lookup(multi, b, out);
      while (out < end && used + kL <= avail) used += LookupFirst(multi, b, out);
    } else {
      while (out < end && used + kL <= avail) used += Lookup(single, b, out);
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

// Whether lane k has room for a lockstep step without bounds checks: kStepOut output bytes, and
// the 8 input bytes a step loads. DecodeFour's and DecodeGroup's loops test exactly this: a lane
// with room that a loop would not step on leaves DecodeLanes going round forever.
template <class Entry>
inline bool HasRoom(const size_t nb[4], const size_t bp[4], uint8_t* const op[4],
                    uint8_t* const oe[4], int k) {
  return oe[k] - op[k] >= kStepOut<Entry> && nb[k] >= 8 && bp[k] <= (nb[k] - 8) * 8;
}

// Decodes the four lanes in lockstep while every lane has room (HasRoom). The lanes' bitstreams
// are consecutive in memory, so bit positions are kept relative to the first lane's start: one
// base register instead of four keeps the loop out of the stack. BMI2's shifts leave the count
// register free; a clone has them where the CPU does.
template <class Entry>  // uint64_t: multi-symbol table; uint16_t: one-symbol table
__attribute__((always_inline)) inline void DecodeFour(const Entry* mt, const uint8_t* const ip[4],
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
  constexpr ptrdiff_t kOut = kStepOut<Entry>;
  for (int k = 0; k < 4; k++) {
    lim[k] = oe[k] - kOut;
    bit_lim[k] = start[k] + (nb[k] - 8) * 8;
  }
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
        bp0 += Consumed(b0),
        bp1 += Consumed(b1), bp2 += Consumed(b2), bp3 += Consumed(b3);
  }
  bp0 -= start[0], bp1 -= start[1], bp2 -= start[2], bp3 -= start[3];
  bp[0] = bp0, bp[1] = bp1, bp[2] = bp2, bp[3] = bp3;
  op[0] = op0, op[1] = op1, op[2] = op2, op[3] = op3;
}

// Decodes the N lanes `ids` in lockstep while each has room, as DecodeFour does four.
template <int N, class Entry>
__attribute__((always_inline)) inline void DecodeGroup(const Entry* mt, const uint8_t* const ip[4],
                                                       const size_t nb[4], size_t bp[4],
                                                       uint8_t* op[4], uint8_t* const oe[4],
                                                       const int* ids) {
  const uint8_t* in[N];
  size_t pos[N], bit_lim[N];
  uint8_t *o[N], *lim[N];
  for (int k = 0; k < N; k++) {
    in[k] = ip[ids[k]];
    pos[k] = bp[ids[k]];
    o[k] = op[ids[k]];
    lim[k] = oe[ids[k]] - kStepOut<Entry>;
    bit_lim[k] = (nb[ids[k]] - 8) * 8;
  }
  for (;;) {
    bool room = true;
    for (int k = 0; k < N; k++) room &= (o[k] <= lim[k]) & (pos[k] <= bit_lim[k]);
    if (!room) break;
    uint64_t b[N];
    for (int k = 0; k < N; k++) b[k] = Window(in[k], pos[k]);
    for (int j = 0; j < 5; j++)
      for (int k = 0; k < N; k++) Lookup(mt, b[k], o[k]);
    for (int k = 0; k < N; k++) pos[k] += Consumed(b[k]);
  }
  for (int k = 0; k < N; k++) {
    bp[ids[k]] = pos[k];
    op[ids[k]] = o[k];
  }
}

// Decodes the lanes while any has room for a step without bounds checks, leaving the tails to
// DecodeTail. Quarters differ in entropy, so lanes run out at different times: those left go on
// in lockstep, three or two at a time, and the last one alone. (Each alone, up to a tenth of a
// block's symbols decoded at a quarter of the rate: whole-file exponent streams of the corpus
// went from 2.8 and 3.1 to 3.1 and 3.7 G symbols/s.)
template <class Entry>
__attribute__((always_inline)) inline void DecodeLanes(const Entry* mt, const uint8_t* const ip[4],
                                                       const size_t nb[4], size_t bp[4],
                                                       uint8_t* op[4], uint8_t* const oe[4]) {
  for (;;) {
    int ids[4], n = 0;
    for (int k = 0; k < 4; k++)
      if (HasRoom<Entry>(nb, bp, op, oe, k)) ids[n++] = k;
    // Each call stops once a lane has no room: the next round has fewer lanes.
    if (n == 4) {
      DecodeFour(mt, ip, nb, bp, op, oe);
    } else if (n == 3) {
      DecodeGroup<3>(mt, ip, nb, bp, op, oe, ids);
    } else if (n == 2) {
      DecodeGroup<2>(mt, ip, nb, bp, op, oe, ids);
    } else {
      if (n == 1) DecodeGroup<1>(mt, ip, nb, bp, op, oe, ids);
      return;
    }
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

bool HuffmanDecoder::Decode(std::span<const uint8_t> in, std::span<uint8_t> out,
                            bool varint_lanes) {
  ByteReader r(in);
  uint64_t nblocks;
  if (!r.GetVarint(&nblocks) || nblocks > out.size() || (nblocks == 0 && !out.empty()))
    return false;
  size_t pos = 0;
  CodeLengths lengths;
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
    if (!ReadTable(r, mode, lengths)) return false;
    // Several symbols per lookup pay where codes are short and the block long enough to build
    // the table; where no two codes fit in a lookup, the one-symbol table is leaner.
    const bool fits = 2 * lengths.min_len <= kL;
    const Table* t = GetTable({desc_begin, static_cast<size_t>(r.pos() - desc_begin)}, lengths,
                              fits && count >= kMinMultiSymbols);
    // (A table has a multi-symbol part only where codes fit; one built for a longer block serves.)
    const bool multi = t->has_multi;
    uint64_t size[4];
    for (int k = 0; k < 4; k++) {
      std::span<const uint8_t> u32;
      if (varint_lanes ? !r.GetVarint(&size[k]) : !r.GetBytes(4, &u32)) return false;
      if (!varint_lanes) size[k] = Load32(u32.data());
    }
    std::span<const uint8_t> data[4];
    for (int k = 0; k < 4; k++)
      if (!r.GetBytes(size[k], &data[k])) return false;

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
      const size_t end = DecodeTail(multi ? t->multi : nullptr, multi ? nullptr : t->single, ip[k],
                                    nb[k], bp[k], op[k], oe[k]);
      // The encoder pads each stream with zero bits to a byte: it must be consumed exactly, so
      // that no bit of a frame goes unchecked.
      if (end == SIZE_MAX || (end + 7) / 8 != nb[k]) return false;
      if ((end & 7) && (ip[k][nb[k] - 1] & (0xffu >> (end & 7)))) return false;
    }
  }
  return pos == out.size() && r.remaining() == 0;
}

}  // namespace zipnn::internal
