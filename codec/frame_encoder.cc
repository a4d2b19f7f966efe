// Frames: the encoder, which chooses each chunk's method and codes the grouped payload (the
// format: frame_format.h).
#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_customMem: stable since 1.4, exported by libzstd
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "codec/byte_groups.h"
#include "codec/bytes.h"
#include "codec/codec.h"
#include "codec/exponent_shift.h"
#include "codec/frame_format.h"
#include "codec/huffman.h"
#include "codec/joint_bf16.h"
#include "codec/page_buffer.h"

namespace zipnn {
namespace {

using internal::GroupLayout;
using internal::Histogram;
using internal::HufPlan;
using internal::kFlagJoint;
using internal::kFlagShift;
using internal::StreamCoding;

void WriteHeader(uint8_t* h, Method m, DType t, uint8_t flags, uint32_t raw, uint32_t payload,
                 uint64_t sum) {
  std::memset(h, 0, kFrameHeaderSize);
  std::memcpy(h, internal::kFrameMagic, 4);
  h[4] = static_cast<uint8_t>(m);
  h[5] = static_cast<uint8_t>(t);
  h[6] = flags;
  internal::Store32(h + 8, raw);
  internal::Store32(h + 12, payload);
  internal::Store64(h + 16, sum);
  internal::Store32(h + 28, static_cast<uint32_t>(XXH3_64bits(h, 28)));
}

// What 256 elements of `chunk` (of `elem` bytes) sampled across it say of its values: how many
// distinct ones (0 when more than 32, or the chunk is short, or of bytes) and how many equal the
// element after them. Few values: quantized or integer-valued tensors; repeats: runs (zero rows,
// repeated or sorted values).
struct ValueSample {
  size_t distinct = 0;
  size_t repeats = 0;
};
ValueSample SampleValues(std::span<const uint8_t> chunk, size_t elem) {
  constexpr size_t kSamples = 256, kMaxDistinct = 32, kSlots = 128;  // slots > 2 * kMaxDistinct
  const size_t n = elem > 1 ? chunk.size() / elem : 0;
  ValueSample r;
  if (n < 4 * kSamples) return r;
  const size_t size = std::min<size_t>(elem, 8);
  uint64_t value[kSlots];
  bool used[kSlots] = {}, many = false;
  for (size_t i = 0; i < kSamples; i++) {
    const uint8_t* p = chunk.data() + i * (n / kSamples) * elem;
    uint64_t v = 0;
    std::memcpy(&v, p, size);
    // A run: the next three elements equal this one (n / kSamples >= 4: they are in the chunk).
    r.repeats += std::memcmp(p, p + elem, size) == 0 && std::memcmp(p, p + 2 * elem, size) == 0 &&
                 std::memcmp(p, p + 3 * elem, size) == 0;
    if (many) continue;
    size_t h = static_cast<size_t>((v * 0x9E3779B97F4A7C15ull) >> 57);  // 7 bits: kSlots
    while (used[h] && value[h] != v) h = (h + 1) % kSlots;
    if (used[h]) continue;
    used[h] = true;
    value[h] = v;
    many = ++r.distinct > kMaxDistinct;
  }
  if (many) r.distinct = 0;
  return r;
}

// A sample of `in`: four pieces of `piece` bytes spread from its start to its end, `align`-aligned
// (a power of two), back to back in `out`. `in` holds more than `piece` bytes.
void FourPieces(std::span<const uint8_t> in, size_t piece, size_t align,
                std::vector<uint8_t>& out) {
  const size_t step = (in.size() - piece) / 3 & ~(align - 1);
  out.clear();
  for (size_t k = 0; k < 4; k++)
    out.insert(out.end(), in.data() + k * step, in.data() + k * step + piece);
}

double ByteEntropyBits(std::span<const uint8_t> d) {
  Histogram h;
  internal::CountSymbols(d, h);
  return internal::EntropyBits(h);
}

// What order-0 coding of bytes can reach, in bits: the entropy, but a bit at least per symbol
// (Huffman's floor, which sparse data sits far above).
double HuffmanBoundBits(std::span<const uint8_t> d) {
  Histogram h;
  internal::CountSymbols(d, h);
  double bits = 0;
  const double n = static_cast<double>(d.size());
  for (uint32_t c : h)
    if (c) bits += c * std::max(1.0, std::log2(n / c));
  return bits;
}

// zstd's working memory, its large tables (a compression context at level 3 holds ~1 MiB) on
// huge pages, as a fresh context's would otherwise cost a page-fault trap per 4 KiB (see
// page_buffer.h); small blocks from malloc. A tag byte before each block says which. zstd frees
// and remaps its workspace whenever the inputs' sizes swing (a 16 KiB sample, then a 256 KiB
// stream): the block it frees is kept for its next allocation, which it then does not fault in
// again (measured: ~20 remaps of fresh huge pages per pass over the corpus without).
constexpr size_t kZstdBigBlock = 256u << 10, kZstdBigHeader = 64, kZstdSmallHeader = 16;

class ZstdMemory {
 public:
  ZstdMemory() = default;
  ZstdMemory(const ZstdMemory&) = delete;
  ZstdMemory& operator=(const ZstdMemory&) = delete;
  ~ZstdMemory() { UnmapPages(spare_, spare_size_); }

  static void* Alloc(void* self, size_t size) {
    if (size < kZstdBigBlock) {
      auto* p = static_cast<uint8_t*>(std::malloc(size + kZstdSmallHeader));
      if (p == nullptr) return nullptr;
      p[kZstdSmallHeader - 1] = 0;
      return p + kZstdSmallHeader;
    }
    auto& m = *static_cast<ZstdMemory*>(self);
    const size_t need = size + kZstdBigHeader;
    uint8_t* p = nullptr;
    size_t mapped = HugePageRound(need);
    if (m.spare_ != nullptr && m.spare_size_ >= need) {
      p = std::exchange(m.spare_, nullptr);
      mapped = std::exchange(m.spare_size_, 0);
    } else if ((p = MapHugePages(need)) == nullptr) {
      return nullptr;
    }
    internal::Store64(p, mapped);
    p[kZstdBigHeader - 1] = 1;
    return p + kZstdBigHeader;
  }

  static void Free(void* self, void* block) {
    if (block == nullptr) return;
    auto* p = static_cast<uint8_t*>(block);
    if (p[-1] != 1) return std::free(p - kZstdSmallHeader);
    auto& m = *static_cast<ZstdMemory*>(self);
    uint8_t* base = p - kZstdBigHeader;
    const size_t size = internal::Load64(base);
    if (size < m.spare_size_) return UnmapPages(base, size);
    UnmapPages(m.spare_, m.spare_size_);  // keep the larger
    m.spare_ = base;
    m.spare_size_ = size;
  }

 private:
  uint8_t* spare_ = nullptr;  // a freed big block, kept for the next
  size_t spare_size_ = 0;
};

}  // namespace

bool AllZero(std::span<const uint8_t> d) {
  const uint8_t* p = d.data();
  size_t n = d.size(), i = 0;
  uint64_t acc = 0;
  for (; i + 32 <= n; i += 32) {
    acc |= internal::Load64(p + i) | internal::Load64(p + i + 8) | internal::Load64(p + i + 16) |
           internal::Load64(p + i + 24);
    if (acc) return false;
  }
  for (; i < n; i++) acc |= p[i];
  return acc == 0;
}

// ---- Encoder -------------------------------------------------------------------------------

struct FrameEncoder::Impl {
  EncodeOptions opts;
  ZstdMemory zstd_memory;  // (declared before the context that uses it)
  ZSTD_CCtx* zstd = ZSTD_createCCtx_advanced({ZstdMemory::Alloc, ZstdMemory::Free, &zstd_memory});
  std::vector<uint8_t> streams[9];  // split streams (0-7 only grow: see internal::GrowTo)
  std::vector<uint8_t> exceptions;  // joint BF16's exception list
  std::vector<uint8_t> coded[9];    // their coded forms
  std::vector<uint8_t> tmp;
  std::vector<uint8_t> pieces;  // ZstdSampleWins's sample
  HufPlan plan;
  internal::ShiftPlan shift;
  std::vector<uint8_t> shifted;  // the chunk with its exponents shifted

  ~Impl() { ZSTD_freeCCtx(zstd); }

  std::span<uint8_t> Scratch(int s, size_t size) { return internal::GrowTo(streams[s], size); }

  // zstd into `out` (replacing it); false when zstd fails or saves nothing.
  bool Zstd(std::span<const uint8_t> in, int level, std::vector<uint8_t>& out) {
    out.resize(ZSTD_compressBound(in.size()));
    size_t r = ZSTD_compressCCtx(zstd, out.data(), out.size(), in.data(), in.size(), level);
    if (ZSTD_isError(r) || r >= in.size()) return false;
    out.resize(r);
    return true;
  }

  // Whether zstd -1 on kZstdSample bytes of `in`, scaled up, comes under `target` bytes. The
  // sample is the first bytes, or with `spread` four pieces from across `in` (for whole chunks,
  // whose start alone can miss what zstd finds: zero rows, say).
  bool ZstdSampleWins(std::span<const uint8_t> in, size_t target, bool spread = false) {
    constexpr size_t kZstdSample = 16u << 10, kPiece = kZstdSample / 4;
    if (in.size() <= 2 * kZstdSample) return true;
    std::span<const uint8_t> sample = in.first(kZstdSample);
    if (spread) {
      FourPieces(in, kPiece, 1, pieces);
      sample = pieces;
    }
    if (!Zstd(sample, 1, tmp)) return false;
    if (tmp.size() * (in.size() / kZstdSample) >= target) return false;
    // zstd must also find what order-0 coding misses: where it merely matches what Huffman can
    // reach on the sample, the full attempt loses more often than not (measured: 41 of 55 such
    // attempts on BF16 mantissa streams lost, and the 14 wins saved 3% of those streams).
    return 8.0 * static_cast<double>(tmp.size()) < 0.95 * HuffmanBoundBits(sample);
  }

  // Codes one stream into coded[s]; returns its coding. Adds its order-0 entropy to *entropy.
  StreamCoding CodeStream(std::span<const uint8_t> in, bool exponent,
                          std::span<const uint32_t> segments, double* entropy, int s) {
    std::vector<uint8_t>& out = coded[s];
    out.clear();
    if (AllZero(in)) return StreamCoding::kZero;
    // Mantissa streams are usually incompressible: a sample tells without a full count.
    if (!exponent && in.size() > (64u << 10)) {
      Histogram h{};
      for (size_t i = 0; i < 4; i++) {
        Histogram part;
        internal::CountSymbols(in.subspan(i * (in.size() - 4096) / 3, 4096), part);
        for (int k = 0; k < 256; k++) h[k] += part[k];
      }
      const double bits = internal::EntropyBits(h);
      if (bits > 7.9 * 4 * 4096) {
        *entropy += bits / (4 * 4096) * static_cast<double>(in.size());
        return StreamCoding::kRaw;
      }
    }
    internal::PlanHuffman(in, segments, plan);
    *entropy += plan.entropy_bits;
    const size_t keep_below = static_cast<size_t>(in.size() * (1 - opts.min_saving));
    StreamCoding best = StreamCoding::kRaw;
    size_t best_size = in.size();
    if (plan.cost_bytes < keep_below) {
      best = StreamCoding::kHuffman;
      best_size = plan.cost_bytes;
    }
    // zstd finds what order-0 coding cannot (repeats in integer or "clean" mantissa data, runs
    // in sparse tensors, where Huffman cannot go below a bit per symbol), but costs time: try it
    // on low-entropy streams that are not float exponents, and where Huffman is far off the
    // entropy. A fast pass over a sample says first whether the full attempt can win.
    const bool huffman_poor = plan.cost_bytes * 8 > 1.25 * plan.entropy_bits + 512;
    const size_t target = std::min(best_size, keep_below);
    if (((!exponent && plan.entropy_bits < 0.75 * 8 * in.size()) || huffman_poor) &&
        ZstdSampleWins(in, target) && Zstd(in, opts.zstd_level, tmp) && tmp.size() < target) {
      out.swap(tmp);
      return StreamCoding::kZstd;
    }
    if (best == StreamCoding::kHuffman) internal::EncodeHuffman(in, plan, out);
    return best;
  }

  // Appends a shift block (see exponent_shift.h): varint column count, varint first column, then
  // the shifts, zigzag bytes, as a stream (u8 coding + varint length + bytes).
  void PutShift(const internal::ShiftPlan& p, std::vector<uint8_t>& out, double* entropy) {
    internal::PutVarint(out, p.shift.size());
    internal::PutVarint(out, p.first);
    std::vector<uint8_t>& zigzag = streams[8];
    zigzag.resize(p.shift.size());
    for (size_t j = 0; j < p.shift.size(); j++) {
      const int v = p.shift[j];
      zigzag[j] = static_cast<uint8_t>(v < 0 ? -2 * v - 1 : 2 * v);
    }
    double bits = 0;
    const StreamCoding coding = CodeStream(zigzag, false, {}, &bits, 8);
    const std::span<const uint8_t> data = coding == StreamCoding::kRaw ? zigzag : coded[8];
    out.push_back(static_cast<uint8_t>(coding));
    internal::PutVarint(out, data.size());
    out.insert(out.end(), data.begin(), data.end());
    *entropy += bits;
  }

  // Appends a joint BF16 payload (see joint_bf16.h); false if it saves too little.
  bool Joint(std::span<const uint8_t> chunk, internal::JointParams jp,
             std::span<const uint32_t> segments, std::vector<uint8_t>& out, double* entropy) {
    const size_t n = chunk.size() / 2, tail = chunk.size() % 2;
    const std::span<uint8_t> exps = Scratch(0, n),
                             rest = Scratch(1, internal::JointRestBytes(n, jp.k));
    exceptions.clear();
    internal::SplitJoint(chunk.data(), n, jp, exps.data(), rest.data(), exceptions);
    double bits = 8.0 * static_cast<double>(rest.size() + exceptions.size());
    const StreamCoding coding = CodeStream(exps, true, segments, &bits, 0);
    const std::span<const uint8_t> sym = coding == StreamCoding::kRaw ? exps : coded[0];
    const size_t total = 24 + sym.size() + rest.size() + exceptions.size() + tail;
    if (total >= chunk.size() * (1 - opts.min_saving) && !opts.force_method) return false;
    if (total >= chunk.size()) return false;  // a frame never grows
    *entropy += bits;
    out.push_back(static_cast<uint8_t>(jp.k));
    out.push_back(static_cast<uint8_t>(jp.base));
    out.push_back(static_cast<uint8_t>(jp.base >> 8));
    internal::PutVarint(out, exceptions.size() / 2);
    out.push_back(static_cast<uint8_t>(coding));
    internal::PutVarint(out, sym.size());
    out.insert(out.end(), sym.begin(), sym.end());
    out.insert(out.end(), rest.begin(), rest.end());
    out.insert(out.end(), exceptions.begin(), exceptions.end());
    out.insert(out.end(), chunk.end() - tail, chunk.end());
    return true;
  }

  // Appends a grouped payload for `chunk` as `dtype`, for BF16 jointly coded where that is smaller
  // (*joint says which); false if it saves too little.
  bool Grouped(std::span<const uint8_t> chunk, DType dtype, std::span<const uint32_t> segments,
               std::vector<uint8_t>& out, double* entropy, bool* joint) {
    *joint = false;
    if (dtype == DType::kBF16 && opts.joint_k != 0) {
      const internal::JointParams jp =
          internal::PlanJoint(chunk.data(), chunk.size() / 2, segments, std::max(opts.joint_k, 0));
      if (jp.k && Joint(chunk, jp, segments, out, entropy)) return *joint = true;
    }
    return Plain(chunk, dtype, segments, out, entropy);
  }

  // The byte-grouped payload of `chunk` as `dtype`; false if it saves too little.
  bool Plain(std::span<const uint8_t> chunk, DType dtype, std::span<const uint32_t> segments,
             std::vector<uint8_t>& out, double* entropy) {
    const GroupLayout l = internal::LayoutFor(dtype, chunk.size());
    std::span<const uint8_t> in[internal::kMaxStreams];
    if (l.streams == 1) {
      in[0] = chunk.first(l.elements);  // the stream is the chunk: no copy
    } else {
      uint8_t* ptrs[internal::kMaxStreams];
      for (int s = 0; s < l.streams; s++) {
        const std::span<uint8_t> buf = Scratch(s, l.StreamSize(s));
        in[s] = buf;
        ptrs[s] = buf.data();
      }
      internal::SplitStreams(dtype, l, chunk.data(), ptrs);
    }
    StreamCoding coding[internal::kMaxStreams];
    size_t total = 1 + l.tail;
    for (int s = 0; s < l.streams; s++) {
      // (Segments count elements: they cut streams of a byte per element only.)
      const bool per_element = !(l.sign_stream && s == 0) && l.per_element[s] == 1;
      coding[s] = CodeStream(in[s], l.Exponent(s),
                             per_element ? segments : std::span<const uint32_t>{}, entropy, s);
      total += 6 + (coding[s] == StreamCoding::kRaw ? in[s].size() : coded[s].size());
    }
    if (total >= chunk.size() * (1 - opts.min_saving) && !opts.force_method) return false;
    if (total >= chunk.size()) return false;  // a frame never grows
    out.push_back(static_cast<uint8_t>(l.streams));
    for (int s = 0; s < l.streams; s++) {
      out.push_back(static_cast<uint8_t>(coding[s]));
      internal::PutVarint(out, coding[s] == StreamCoding::kRaw ? in[s].size() : coded[s].size());
    }
    for (int s = 0; s < l.streams; s++) {
      const std::span<const uint8_t> src = coding[s] == StreamCoding::kRaw ? in[s] : coded[s];
      out.insert(out.end(), src.begin(), src.end());
    }
    out.insert(out.end(), chunk.end() - l.tail, chunk.end());
    return true;
  }

  // For untyped bytes: estimates from a sample what codes them best, without a full attempt.
  // Returns the method and the type to group as (kBytes: one stream of bytes).
  std::pair<Method, DType> Detect(std::span<const uint8_t> chunk) {
    std::span<const uint8_t> sample = chunk;
    if (chunk.size() > (64u << 10)) {
      FourPieces(chunk, 8u << 10, 8, tmp);  // (whole elements of every size)
      sample = tmp;
    }
    const double n = static_cast<double>(sample.size());
    // Grouped candidates: order-0 entropy of each byte stream, plus a little for tables.
    double grouped = n;
    DType grouped_as = DType::kBytes;
    for (DType t : {DType::kBytes, DType::kBF16, DType::kF32}) {
      const GroupLayout l = internal::LayoutFor(t, sample.size());
      uint8_t* ptrs[4];
      std::vector<uint8_t> bufs[4];
      for (int s = 0; s < l.streams; s++) {
        bufs[s].resize(l.elements);
        ptrs[s] = bufs[s].data();
      }
      internal::SplitStreams(t, l, sample.data(), ptrs);
      double est = 0;
      for (int s = 0; s < l.streams; s++)
        est += std::min(ByteEntropyBits(bufs[s]) / 8 + 64, static_cast<double>(bufs[s].size()));
      if (est < grouped) {
        grouped = est;
        grouped_as = t;
      }
    }
    std::vector<uint8_t> z;
    const double zstd = Zstd(sample, 1, z) ? static_cast<double>(z.size()) : n;
    // Prefer grouping on near ties with zstd: it decodes faster.
    const double best = std::min(grouped, zstd * 1.02);
    const std::pair<Method, DType> choice = grouped <= zstd * 1.02
                                                ? std::pair{Method::kGrouped, grouped_as}
                                                : std::pair{Method::kZstd, DType::kBytes};
    if (best >= n * (1 - opts.min_saving)) return {Method::kRaw, DType::kBytes};
    return choice;
  }
};

FrameEncoder::FrameEncoder(const EncodeOptions& opts) : impl_(std::make_unique<Impl>()) {
  impl_->opts = opts;
}
FrameEncoder::~FrameEncoder() = default;

Status FrameEncoder::Encode(std::span<const uint8_t> chunk, DType dtype, std::vector<uint8_t>& out,
                            std::span<const uint32_t> segments, EncodeStats* stats,
                            const TensorGrid& grid, std::optional<uint64_t> checksum) {
  if (chunk.size() > kMaxChunkSize) return Status::InvalidArgument("chunk larger than 64 MiB");
  if (static_cast<int>(dtype) >= kNumDTypes) return Status::InvalidArgument("unknown dtype");
  if (impl_->opts.joint_k < -1 || impl_->opts.joint_k > 3)
    return Status::InvalidArgument("joint_k must be -1..3");
  Impl& im = *impl_;
  const uint32_t raw = static_cast<uint32_t>(chunk.size());
  const uint64_t sum = checksum ? *checksum : Checksum(chunk);
  const size_t start = out.size();
  out.resize(start + kFrameHeaderSize);
  double entropy = 0;
  Method method = Method::kRaw;
  DType coded_as = dtype;

  // Makes the payload zstd of the whole chunk if that comes under `below` bytes.
  auto try_zstd = [&](size_t below) {
    if (!im.Zstd(chunk, im.opts.zstd_level, im.tmp) || im.tmp.size() >= below) return false;
    out.resize(start + kFrameHeaderSize);
    out.insert(out.end(), im.tmp.begin(), im.tmp.end());
    coded_as = dtype;
    return true;
  };
  const auto saving_bound =
      static_cast<size_t>(std::ceil(static_cast<double>(chunk.size()) * (1 - im.opts.min_saving)));
  bool joint = false;    // whether the grouped payload codes BF16 jointly
  bool shifted = false;  // whether it shifts exponents per column first
  // The grouped payload of `data` (the chunk, or its shifted copy after a shift block), if it
  // saves enough (or is forced) and never grows the frame.
  auto grouped = [&](DType t, std::span<const uint8_t> data) {
    const size_t limit = im.opts.force_method ? chunk.size() : std::min(saving_bound, chunk.size());
    if (im.Grouped(data, t, segments, out, &entropy, &joint) &&
        out.size() - start - kFrameHeaderSize < limit) {
      coded_as = t;
      return true;
    }
    out.resize(start + kFrameHeaderSize);
    entropy = 0;
    return false;
  };
  auto try_grouped = [&](DType t) {
    shifted = false;
    if (internal::ShiftsExponents(t) && im.opts.exponent_shift) {
      const size_t size = DTypeSize(t), n = chunk.size() / size;
      internal::PlanShift(t, chunk.data(), n, grid, im.shift);
      if (!im.shift.shift.empty()) {
        const std::span<uint8_t> copy = internal::GrowTo(im.shifted, chunk.size());
        internal::ApplyShift(t, chunk.data(), copy.data(), n, im.shift, false);
        std::copy(chunk.begin() + n * size, chunk.end(), copy.begin() + n * size);
        im.PutShift(im.shift, out, &entropy);
        if ((shifted = grouped(t, copy))) return true;  // else as it is, below
      }
    }
    return grouped(t, chunk);
  };

  const bool zero = AllZero(chunk);
  if (im.opts.force_method) {
    const Method f = *im.opts.force_method;
    if (f == Method::kZero && !zero) return Status::InvalidArgument("forced zero on non-zero data");
    if (f == Method::kZero || (f == Method::kZstd && try_zstd(chunk.size())) ||
        (f == Method::kGrouped && try_grouped(dtype)))
      method = f;
  } else if (zero) {
    method = Method::kZero;
  } else if (dtype == DType::kBytes) {
    const auto [m, t] = im.Detect(chunk);
    if (m == Method::kZstd && try_zstd(saving_bound)) method = Method::kZstd;
    if (m == Method::kGrouped && try_grouped(t)) method = Method::kGrouped;
  } else if (try_grouped(dtype)) {
    method = Method::kGrouped;
    // Mostly-zero tensors: grouping codes the zeros' positions once per stream, while zstd on the
    // whole chunk codes them once. Such chunks compress so well that trying zstd costs little
    // (below a quarter, not an eighth: 90%-pruned weights group to 0.15-0.22 where zstd gets
    // 0.10-0.16, and a sample of pieces overestimates zstd on them by 30-50%).
    // Otherwise zstd is tried where a sample of values hints at what byte streams coded each
    // alone miss, and zstd wins on a sample of bytes:
    // - few distinct values, d: each stream may need about log2(d) bits an element, as much as
    //   the element in all, while zstd's matches span its bytes (16 values in F32: 0.29 grouped,
    //   0.22 by zstd), when grouping is well above that bound;
    // - runs, 1 in 32 neighbours equal (a Gaussian tensor has ~1 in 1000): zero rows, sorted or
    //   repeated values (30% zero rows in BF16: 0.574 grouped, 0.546 by zstd);
    // - integer tensors (few in a model, and often sequences such as position ids).
    const size_t grouped = out.size() - start - kFrameHeaderSize;
    const ValueSample v =
        grouped < chunk.size() / 4 ? ValueSample{} : SampleValues(chunk, DTypeSize(dtype));
    const double bound_bytes = static_cast<double>(chunk.size() / DTypeSize(dtype)) *
                               std::log2(static_cast<double>(std::max<size_t>(v.distinct, 2))) / 8;
    const bool hint = (v.distinct && grouped > 1.5 * bound_bytes) || v.repeats >= 8;
    const bool few = grouped >= chunk.size() / 4 && (hint || !IsFloat(dtype)) &&
                     im.ZstdSampleWins(chunk, grouped, /*spread=*/true);
    if ((grouped < chunk.size() / 4 || few) && try_zstd(grouped)) method = Method::kZstd;
  }

  if (method == Method::kRaw) {
    out.resize(start + kFrameHeaderSize);
    out.insert(out.end(), chunk.begin(), chunk.end());
    coded_as = dtype;
  }
  if (stats) {
    if (method == Method::kRaw || method == Method::kZstd) entropy = ByteEntropyBits(chunk);
    stats->entropy_bits = static_cast<uint64_t>(entropy);
  }
  const uint32_t payload = static_cast<uint32_t>(out.size() - start - kFrameHeaderSize);
  const uint8_t flags =
      method != Method::kGrouped
          ? 0
          : static_cast<uint8_t>((joint ? kFlagJoint : 0) | (shifted ? kFlagShift : 0));
  WriteHeader(out.data() + start, method, coded_as, flags, raw, payload, sum);
  return Status::Ok();
}

}  // namespace zipnn
