// Fuzz target: the in-memory container parser (codec/container.h). Any input must be rejected or
// describe a consistent container whose frames agree with their entries; never a crash.
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "codec/codec.h"
#include "codec/container.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zipnn;
  using fuzz::Check;
  const std::span<const uint8_t> file(data, size);
  const Result<ContainerIndex> index = ParseContainer(file);
  if (!index.ok()) return 0;
  Check(index->file_size == size);
  Check(size >= ContainerOverhead(index->entries.size()));
  uint64_t offset = kContainerHeaderSize, raw = 0;
  static FrameDecoder* decoder = new FrameDecoder;
  for (const ContainerEntry& e : index->entries) {
    Check(e.offset == offset);
    Check(e.raw_offset == raw);
    Check(e.frame_size >= kFrameHeaderSize && e.offset + e.frame_size <= size);
    const std::span<const uint8_t> frame = file.subspan(e.offset, e.frame_size);
    Check(CheckFrameAgainstEntry(frame, e).ok());
    if (e.raw_size <= (256u << 10)) {
      std::vector<uint8_t> out(e.raw_size);
      if (decoder->Decode(frame, out).ok()) Check(Checksum(out) == e.checksum);
    }
    offset += e.frame_size;
    raw += e.raw_size;
  }
  Check(raw == index->total_raw_size);
  Check(offset + kContainerEntrySize * index->entries.size() + kContainerFooterSize == size);
  return 0;
}
