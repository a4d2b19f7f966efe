// Fuzz target: chunk planning of safetensors, GGUF and .npz files. Any file must plan (a hostile
// header only makes it untyped bytes) into chunks that tile the file in order, each within the
// chunk size, a typed chunk a whole number of its elements, with segments and grid inside it.
//
// Input: the file itself (safetensors: a header length first; GGUF: "GGUF" first; .npz: a zip
// local header first).
#include <cstdint>
#include <cstdlib>
#include <span>

#include "codec/codec.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zipnn;
  using fuzz::Check;
  const ReadAtFn read = [&](uint64_t offset, std::span<uint8_t> out) {
    if (offset > size || out.size() > size - offset) return Status::Io("read past the end");
    std::copy_n(data + offset, out.size(), out.data());
    return Status::Ok();
  };
  PlanOptions opts;
  opts.chunk_size = 4096;
  const Result<std::vector<ChunkSpec>> plan = PlanChunks(read, size, opts);
  Check(plan.ok());
  uint64_t pos = 0;
  for (const ChunkSpec& c : *plan) {
    Check(c.offset == pos && c.size > 0 && c.size <= opts.chunk_size);
    pos += c.size;
    const size_t elems = c.size / DTypeSize(c.dtype);
    Check(c.size % DTypeSize(c.dtype) == 0);
    for (size_t i = 0; i < c.segments.size(); i++) {
      Check(c.segments[i] > 0 && c.segments[i] < elems);
      Check(i == 0 || c.segments[i] > c.segments[i - 1]);
    }
  }
  Check(pos == size);
  // A typed chunk starts in a tensor of its type, which the header puts inside the file.
  Result<TensorLayout> h = ParseTensorLayout(read, size);
  if (!h.ok()) h = ParseNpzLayout(read, size);
  for (const ChunkSpec& c : *plan) {
    if (c.dtype == DType::kBytes) continue;
    Check(h.ok());
    bool in_tensor = false;
    for (const TensorInfo& t : h->tensors) {
      Check(t.begin <= t.end && t.end <= size);
      in_tensor |= t.dtype == c.dtype && t.begin <= c.offset && c.offset < t.end;
    }
    Check(in_tensor);
  }
  return 0;
}
