// Fuzz target: frame parsing and decoding. Any input must give an error or the bytes the frame's
// checksum promises; never a crash, a hang or undefined behaviour.
//
// Input: one mode byte, then the frame. Mode bit 0 recomputes the header check (bytes 28..31,
// the low 32 bits of XXH3-64 of bytes 0..27, see codec/frame_format.h) so mutations reach the
// header fields and the payload decoders instead of stopping at the check. Bits 1..7 pick the size
// of a second, usually wrong, output buffer.
#include <xxhash.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "codec/codec.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

constexpr size_t kMaxOut = 1u << 20;  // decode only frames that declare at most this much

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zipnn;
  using fuzz::Check;
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  std::vector<uint8_t> frame(data + 1, data + size);
  if ((mode & 1) && frame.size() >= kFrameHeaderSize) {
    const uint32_t check = static_cast<uint32_t>(XXH3_64bits(frame.data(), 28));
    std::memcpy(frame.data() + 28, &check, 4);
  }
  // One decoder for the whole run: its table cache sees every input.
  static FrameDecoder* decoder = new FrameDecoder;

  const Result<FrameInfo> info = ParseFrameHeader(frame);
  if (info.ok()) {
    Check(static_cast<int>(info->method) < kNumMethods);
    Check(static_cast<int>(info->dtype) < kNumDTypes);
    Check(info->raw_size <= kMaxChunkSize);
    Check(info->frame_size() <= MaxFrameSize(info->raw_size));
    if (info->raw_size <= kMaxOut) {
      std::vector<uint8_t> out(info->raw_size);
      if (decoder->Decode(frame, out).ok()) {
        Check(frame.size() >= info->frame_size());
        Check(Checksum(out) == info->checksum);
        // A fresh decoder agrees with the long-lived one.
        FrameDecoder fresh;
        std::vector<uint8_t> again(info->raw_size);
        Check(fresh.Decode(frame, again).ok());
        Check(again == out);
        // The decoded chunk round-trips through the encoder.
        FrameEncoder encoder;
        std::vector<uint8_t> re;
        Check(encoder.Encode(out, info->dtype, re).ok());
        Check(re.size() <= MaxFrameSize(out.size()));
        Check(fresh.Decode(re, again).ok());
        Check(again == out);
      }
    }
  }
  // Any other output size is refused.
  std::vector<uint8_t> other(static_cast<size_t>(mode >> 1) * 97 % 4099);
  const Status st = decoder->Decode(frame, other);
  if (st.ok()) Check(info.ok() && other.size() == info->raw_size);
  return 0;
}
