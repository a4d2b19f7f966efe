// Fuzz target: encoding. Any chunk, element type, forced method and segment list must encode to
// a frame no larger than MaxFrameSize that decodes to the same bytes.
//
// Input: dtype byte (low 4 bits: dtype; high 4 bits mod 5, minus 1: EncodeOptions::joint_k),
// options byte (bits 0-2: forced method, none for values above 3; bits 3-4: number of segments;
// bits 5-7: zstd level - 1), two bytes per segment (little-endian element offset), then the chunk.
// With two segments or more, the first two also give a tensor grid: columns, first element.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "codec/codec.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zipnn;
  using fuzz::Check;
  if (size < 2) return 0;
  const auto dtype = static_cast<DType>(data[0] % kNumDTypes);
  const uint8_t opt = data[1];
  EncodeOptions opts;
  opts.joint_k = (data[0] / kNumDTypes) % 5 - 1;
  if ((opt & 7) < kNumMethods) opts.force_method = static_cast<Method>(opt & 7);
  opts.zstd_level = 1 + (opt >> 5);
  size_t pos = 2;
  std::vector<uint32_t> segments;
  for (int i = 0; i < ((opt >> 3) & 3) && pos + 2 <= size; i++, pos += 2)
    segments.push_back(static_cast<uint32_t>(data[pos] | data[pos + 1] << 8));
  const std::vector<uint8_t> chunk(data + pos, data + size);
  TensorGrid grid;
  if (segments.size() >= 2) grid = {segments[1], segments[0]};

  static FrameEncoder* reused = new FrameEncoder;  // also exercise a long-lived encoder
  FrameEncoder fresh(opts);
  for (FrameEncoder* enc : {&fresh, opts.force_method ? &fresh : reused}) {
    std::vector<uint8_t> frame;
    const Status st = enc->Encode(chunk, dtype, frame, segments, nullptr, grid);
    if (!st.ok()) {
      // Only a forced zero method over non-zero bytes (or segments a coder refuses) may fail.
      Check(st.code() == StatusCode::kInvalidArgument);
      continue;
    }
    Check(frame.size() <= MaxFrameSize(chunk.size()));
    const Result<FrameInfo> info = ParseFrameHeader(frame);
    Check(info.ok());
    Check(info->frame_size() == frame.size());
    Check(info->raw_size == chunk.size());
    FrameDecoder dec;
    std::vector<uint8_t> out(chunk.size());
    Check(dec.Decode(frame, out).ok());
    Check(out == chunk);
  }
  return 0;
}
