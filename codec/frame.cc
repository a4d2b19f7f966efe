// Frames: the header, its checksum, and decoding (the format: frame_format.h; the encoder:
// frame_encoder.cc).
#include <xxhash.h>
#include <zstd.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>  // picks the AVX2 XXH3 kernel at run time where the CPU has it
#endif

#include <algorithm>
#include <cstring>
#include <string>

#include "codec/byte_groups.h"
#include "codec/bytes.h"
#include "codec/codec.h"
#include "codec/exponent_shift.h"
#include "codec/frame_format.h"
#include "codec/huffman.h"
#include "codec/joint_bf16.h"

namespace zipnn {
namespace {
using internal::GroupLayout;
using internal::kFlagJoint;
using internal::kFlagShift;
using internal::StreamCoding;
}  // namespace

uint64_t Checksum(std::span<const uint8_t> data) {
#if defined(__x86_64__)
  return XXH3_64bits_dispatch(data.data(), data.size());
#else
  return XXH3_64bits(data.data(), data.size());
#endif
}

Result<FrameInfo> ParseFrameHeader(std::span<const uint8_t> f) {
  if (f.size() < kFrameHeaderSize) return Status::Corrupt("truncated frame header");
  const uint8_t* h = f.data();
  if (std::memcmp(h, internal::kFrameMagic, 3) != 0)
    return Status::Corrupt("not a zipnn frame (bad magic)");
  if (h[3] < internal::kOldestFrameVersion || h[3] > internal::kFrameMagic[3])
    return Status::Unsupported("unknown frame version " + std::to_string(h[3]));
  if (internal::Load32(h + 28) != static_cast<uint32_t>(XXH3_64bits(h, 28)))
    return Status::Corrupt("frame header check failed");
  FrameInfo info;
  if (h[4] >= kNumMethods || h[5] >= kNumDTypes || h[7] != 0 || internal::Load32(h + 24) != 0)
    return Status::Corrupt("frame header has unknown fields");
  info.version = h[3];
  info.method = static_cast<Method>(h[4]);
  info.dtype = static_cast<DType>(h[5]);
  info.joint = (h[6] & kFlagJoint) != 0;
  info.shifted = (h[6] & kFlagShift) != 0;
  const bool grouped_v2 = info.version >= 2 && info.method == Method::kGrouped;
  if ((h[6] & ~(kFlagJoint | kFlagShift)) != 0 ||
      (info.joint && !(grouped_v2 && info.dtype == DType::kBF16)) ||
      (info.shifted && !(grouped_v2 && internal::ShiftsExponents(info.dtype))))
    return Status::Corrupt("frame header has unknown flags");
  info.raw_size = internal::Load32(h + 8);
  info.payload_size = internal::Load32(h + 12);
  info.checksum = internal::Load64(h + 16);
  if (info.raw_size > kMaxChunkSize) return Status::Corrupt("frame declares an oversized chunk");
  const bool size_ok = info.method == Method::kRaw    ? info.payload_size == info.raw_size
                       : info.method == Method::kZero ? info.payload_size == 0
                                                      : info.payload_size < info.raw_size;
  if (!size_ok) return Status::Corrupt("frame sizes do not fit its method");
  return info;
}

// ---- Decoder -------------------------------------------------------------------------------

struct FrameDecoder::Impl {
  explicit Impl(internal::SharedHuffmanTables* shared) : huffman(shared) {}
  ZSTD_DCtx* zstd = ZSTD_createDCtx();
  internal::HuffmanDecoder huffman;
  std::vector<uint8_t> scratch[9];
  internal::ShiftPlan shift;
  ~Impl() { ZSTD_freeDCtx(zstd); }

  std::span<uint8_t> Scratch(int s, size_t size) { return internal::GrowTo(scratch[s], size); }

  // Decodes one stream of `want` bytes into `buf` (or points at it in place, when raw).
  Status DecodeStream(StreamCoding coding, std::span<const uint8_t> data, std::span<uint8_t> buf,
                      bool varint_lanes, const uint8_t** ptr) {
    const size_t want = buf.size();
    switch (coding) {
      case StreamCoding::kRaw:
        if (data.size() != want)
          return Status::Corrupt("grouped frame: stream size does not match");
        *ptr = data.data();  // straight from the payload, no copy
        return Status::Ok();
      case StreamCoding::kZero:
        if (!data.empty()) return Status::Corrupt("grouped frame: stream size does not match");
        std::fill(buf.begin(), buf.end(), 0);
        break;
      case StreamCoding::kHuffman:
        if (!huffman.Decode(data, buf, varint_lanes))
          return Status::Corrupt("grouped frame: bad Huffman stream");
        break;
      case StreamCoding::kZstd: {
        size_t got = ZSTD_decompressDCtx(zstd, buf.data(), want, data.data(), data.size());
        if (ZSTD_isError(got) || got != want)
          return Status::Corrupt("grouped frame: bad zstd stream");
        break;
      }
      default:
        return Status::Corrupt("grouped frame: bad stream coding");
    }
    *ptr = buf.data();
    return Status::Ok();
  }

  // Reads the shift block that starts a shifted payload into `shift`; `body` is what follows.
  Status ReadShift(std::span<const uint8_t> payload, size_t n, bool varint_lanes,
                   std::span<const uint8_t>* body) {
    internal::ByteReader r(payload);
    uint64_t columns, first, size;
    uint8_t coding;
    if (!r.GetVarint(&columns) || !r.GetVarint(&first) ||
        !internal::ValidShift(columns, first, n) || !r.GetU8(&coding) || coding > 3 ||
        !r.GetVarint(&size) || size > r.remaining())
      return Status::Corrupt("shifted frame: bad shift header");
    std::span<const uint8_t> data;
    (void)r.GetBytes(size, &data);  // (size checked above)
    const uint8_t* zigzag;
    ZIPNN_RETURN_IF_ERROR(DecodeStream(static_cast<StreamCoding>(coding), data, Scratch(8, columns),
                                       varint_lanes, &zigzag));
    shift.first = first;
    shift.shift.resize(columns);
    for (size_t j = 0; j < columns; j++)
      shift.shift[j] = static_cast<int8_t>((zigzag[j] >> 1) ^ -(zigzag[j] & 1));
    *body = payload.last(r.remaining());
    return Status::Ok();
  }

  Status Joint(std::span<const uint8_t> payload, std::span<uint8_t> out, bool varint_lanes) {
    const size_t n = out.size() / 2, tail = out.size() % 2;
    internal::ByteReader r(payload);
    uint8_t k, b0, b1, coding;
    uint64_t escapes, sym_size;
    if (!r.GetU8(&k) || k < 1 || k > 3 || !r.GetU8(&b0) || !r.GetU8(&b1) ||
        !r.GetVarint(&escapes) || escapes > n || !r.GetU8(&coding) || !r.GetVarint(&sym_size))
      return Status::Corrupt("joint frame: bad header");
    const internal::JointParams jp{k, uint32_t{b0} | uint32_t{b1} << 8};
    if (jp.base + 254 >= (256u << k)) return Status::Corrupt("joint frame: bad base");
    std::span<const uint8_t> sym_data, rest, esc, tail_bytes;
    if (!r.GetBytes(sym_size, &sym_data) || !r.GetBytes(internal::JointRestBytes(n, k), &rest) ||
        !r.GetBytes(2 * escapes, &esc) || !r.GetBytes(tail, &tail_bytes) || r.remaining() != 0)
      return Status::Corrupt("joint frame: payload size does not match");
    const uint8_t* syms;
    ZIPNN_RETURN_IF_ERROR(DecodeStream(static_cast<StreamCoding>(coding), sym_data, Scratch(0, n),
                                       varint_lanes, &syms));
    if (!internal::MergeJoint(syms, rest.data(), esc, n, jp, out.data()))
      return Status::Corrupt("joint frame: escapes or bit planes do not match");
    if (tail) out[out.size() - 1] = tail_bytes[0];
    return Status::Ok();
  }

  Status Grouped(std::span<const uint8_t> payload, DType dtype, std::span<uint8_t> out,
                 bool varint_lanes) {
    internal::ByteReader r(payload);
    uint8_t n;
    if (!r.GetU8(&n)) return Status::Corrupt("grouped frame: wrong stream count");
    // FP8 and I8 frames written before their current layout have the other stream count.
    GroupLayout l = internal::LayoutFor(dtype, out.size());
    if (n != l.streams && DTypeSize(dtype) == 1) l = internal::LayoutFor(dtype, out.size(), true);
    if (n != l.streams) return Status::Corrupt("grouped frame: wrong stream count");
    uint8_t coding[9];
    uint64_t size[9];
    for (int s = 0; s < l.streams; s++) {
      if (!r.GetU8(&coding[s]) || !r.GetVarint(&size[s]) || coding[s] > 3 ||
          size[s] > r.remaining())
        return Status::Corrupt("grouped frame: bad stream header");
      const auto c = static_cast<StreamCoding>(coding[s]);
      if ((c == StreamCoding::kRaw && size[s] != l.StreamSize(s)) ||
          (c == StreamCoding::kZero && size[s] != 0))
        return Status::Corrupt("grouped frame: stream size does not match");
    }
    const uint8_t* ptrs[9];
    for (int s = 0; s < l.streams; s++) {
      std::span<const uint8_t> data;
      if (!r.GetBytes(size[s], &data)) return Status::Corrupt("grouped frame: truncated stream");
      const size_t want = l.StreamSize(s);
      // A lone stream is the output itself: decode in place.
      std::span<uint8_t> buf = l.streams == 1 ? out.first(want) : Scratch(s, want);
      ZIPNN_RETURN_IF_ERROR(
          DecodeStream(static_cast<StreamCoding>(coding[s]), data, buf, varint_lanes, &ptrs[s]));
    }
    std::span<const uint8_t> tail;
    if (!r.GetBytes(l.tail, &tail) || r.remaining() != 0)
      return Status::Corrupt("grouped frame: payload size does not match");
    if (!internal::MergeStreams(dtype, l, ptrs, out.data()))
      return Status::Corrupt("grouped frame: FP8 sign bits out of place");
    if (l.tail) std::memcpy(out.data() + out.size() - l.tail, tail.data(), l.tail);
    return Status::Ok();
  }
};

DecoderTableCache::DecoderTableCache(size_t max_tables)
    : tables_(std::make_unique<internal::SharedHuffmanTables>(max_tables)) {}
DecoderTableCache::~DecoderTableCache() = default;

FrameDecoder::FrameDecoder() : impl_(std::make_unique<Impl>(nullptr)) {}
FrameDecoder::FrameDecoder(DecoderTableCache* shared)
    : impl_(std::make_unique<Impl>(shared != nullptr ? shared->tables_.get() : nullptr)) {}
FrameDecoder::~FrameDecoder() = default;

Status FrameDecoder::Decode(std::span<const uint8_t> frame, std::span<uint8_t> out) {
  Result<FrameInfo> info = ParseFrameHeader(frame);
  if (!info.ok()) return info.status();
  if (frame.size() < info->frame_size()) return Status::Corrupt("truncated frame");
  if (out.size() != info->raw_size)
    return Status::InvalidArgument("output size does not match the frame's raw size");
  const std::span<const uint8_t> payload = frame.subspan(kFrameHeaderSize, info->payload_size);
  switch (info->method) {
    case Method::kRaw:
      if (!out.empty()) std::memcpy(out.data(), payload.data(), out.size());
      break;
    case Method::kZero:
      if (!out.empty()) std::memset(out.data(), 0, out.size());
      break;
    case Method::kZstd: {
      size_t got =
          ZSTD_decompressDCtx(impl_->zstd, out.data(), out.size(), payload.data(), payload.size());
      if (ZSTD_isError(got) || got != out.size()) return Status::Corrupt("bad zstd payload");
      break;
    }
    case Method::kGrouped: {
      const bool v2 = info->version >= 2;
      std::span<const uint8_t> body = payload;
      const size_t n = out.size() / DTypeSize(info->dtype);
      if (info->shifted) ZIPNN_RETURN_IF_ERROR(impl_->ReadShift(payload, n, v2, &body));
      ZIPNN_RETURN_IF_ERROR(info->joint ? impl_->Joint(body, out, v2)
                                        : impl_->Grouped(body, info->dtype, out, v2));
      if (info->shifted)
        internal::ApplyShift(info->dtype, out.data(), out.data(), n, impl_->shift, true);
      break;
    }
  }
  if (Checksum(out) != info->checksum)
    return Status::ChecksumMismatch("decoded chunk does not match its checksum");
  return Status::Ok();
}

}  // namespace zipnn
