// GGUF awareness (llama.cpp's model files): parse the header strictly for the tensor layout.
//
// A GGUF file is "GGUF", a version (2 or 3), tensor and metadata counts, the metadata (typed
// key/value pairs, arrays included), the tensor infos (name, dimensions, ggml type, offset in the
// data section) and, at the next multiple of general.alignment (32 by default), the tensor data.
// Float and integer tensors get their dtype, and so do the common block-quantized ones (Q4_0 ...
// Q8_0, Q2_K ... Q6_K: blocks of 32 or 256 weights, coded by field); other quantized types (the
// IQ family, repacked variants) are untyped bytes up to the next tensor. A layout guessed wrong
// would only cost compression: the fields' split is lossless for any bytes.
#include <algorithm>
#include <cstring>
#include <utility>

#include "codec/bytes.h"
#include "codec/codec.h"

namespace zipnn {
namespace {

Status Bad(const std::string& why) { return Status::Corrupt("gguf header: " + why); }

constexpr uint64_t kMaxHeader = 1ull << 30;  // metadata and tensor infos (vocabularies: MBs)
constexpr size_t kWindow = 1u << 20;         // read a window at a time
constexpr uint32_t kMaxDims = 4;             // GGML_MAX_DIMS
// Tensors a header may list: models have thousands. Each info read costs ~150 bytes of memory
// for at least 28 of file, so a header of 1 GiB of tiny infos took 5 GB; past this many the file
// is planned as plain bytes (still lossless), in ~40 MB.
constexpr uint64_t kMaxTensors = 1u << 18;
constexpr int kMaxArrayDepth = 4;
constexpr uint32_t kString = 8, kArray = 9, kUint32 = 4;

// Bytes of a fixed-size metadata value type; 0 for strings, arrays and unknown types.
size_t ValueSize(uint32_t type) {
  static constexpr uint8_t kSizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  return type < sizeof kSizes ? kSizes[type] : 0;
}

// The dtype of a ggml tensor type (ggml.h's enum ggml_type) and the weights in one of its
// elements (a block); kBytes for the types not coded by field.
std::pair<DType, uint32_t> TensorDType(uint32_t ggml_type) {
  static constexpr struct {
    uint32_t type;
    DType dtype;
    uint32_t weights;
  } kTypes[] = {{0, DType::kF32, 1},     {1, DType::kF16, 1},     {2, DType::kQ4_0, 32},
                {3, DType::kQ4_1, 32},   {6, DType::kQ5_0, 32},   {7, DType::kQ5_1, 32},
                {8, DType::kQ8_0, 32},   {10, DType::kQ2_K, 256}, {11, DType::kQ3_K, 256},
                {12, DType::kQ4_K, 256}, {13, DType::kQ5_K, 256}, {14, DType::kQ6_K, 256},
                {24, DType::kI8, 1},     {25, DType::kI16, 1},    {26, DType::kI32, 1},
                {27, DType::kI64, 1},    {28, DType::kF64, 1},    {30, DType::kBF16, 1}};
  for (const auto& t : kTypes)
    if (t.type == ggml_type) return {t.dtype, t.weights};
  return {DType::kBytes, 1};
}

bool Quantized(DType t) { return t >= DType::kQ4_0 && t <= DType::kQ6_K; }

// Reads the header front to back through `read`, a window at a time, never past `limit_`.
class Cursor {
 public:
  Cursor(const ReadAtFn& read, uint64_t file_size)
      : read_(read), limit_(std::min(file_size, kMaxHeader)) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return limit_ - pos_; }

  Status Take(size_t n, const uint8_t** p) {  // n <= kWindow
    if (n > left()) return Bad("truncated");
    if (pos_ + n > base_ + window_.size()) {  // (pos_ only grows: never before base_)
      // Windows grow from 64 KiB: most headers are small, vocabularies take megabytes.
      const uint64_t want = std::clamp<uint64_t>(2 * window_.size(), 64u << 10, kWindow);
      window_.resize(static_cast<size_t>(std::min(want, left())));
      ZIPNN_RETURN_IF_ERROR(read_(pos_, window_));
      base_ = pos_;
    }
    *p = window_.data() + (pos_ - base_);
    pos_ += n;
    return Status::Ok();
  }
  Status Skip(uint64_t n) {
    if (n > left()) return Bad("truncated");
    pos_ += n;
    return Status::Ok();
  }
  Status U32(uint32_t* v) {
    const uint8_t* p = nullptr;
    ZIPNN_RETURN_IF_ERROR(Take(4, &p));
    *v = internal::Load32(p);
    return Status::Ok();
  }
  Status U64(uint64_t* v) {
    const uint8_t* p = nullptr;
    ZIPNN_RETURN_IF_ERROR(Take(8, &p));
    *v = internal::Load64(p);
    return Status::Ok();
  }
  // A string (u64 length, bytes): into *out when it is at most `keep` bytes, else skipped.
  Status String(std::string* out, size_t keep) {
    uint64_t n;
    ZIPNN_RETURN_IF_ERROR(U64(&n));
    if (n > left()) return Bad("string past the end");
    out->clear();
    if (n > keep) return Skip(n);
    const uint8_t* p = nullptr;
    ZIPNN_RETURN_IF_ERROR(Take(static_cast<size_t>(n), &p));
    out->assign(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
    return Status::Ok();
  }

 private:
  const ReadAtFn& read_;
  const uint64_t limit_;
  uint64_t pos_ = 0, base_ = 0;
  std::vector<uint8_t> window_;
};

// Skips one metadata value of `type`. Every element takes at least a byte, so the work is
// bounded by the header's size.
Status SkipValue(Cursor& c, uint32_t type, int depth) {
  if (const size_t size = ValueSize(type)) return c.Skip(size);
  std::string unused;
  if (type == kString) return c.String(&unused, 0);
  if (type != kArray || depth >= kMaxArrayDepth) return Bad("bad metadata value type");
  uint32_t elem;
  uint64_t count;
  ZIPNN_RETURN_IF_ERROR(c.U32(&elem));
  ZIPNN_RETURN_IF_ERROR(c.U64(&count));
  if (const size_t size = ValueSize(elem)) {
    if (count > c.left() / size) return Bad("array past the end");
    return c.Skip(count * size);
  }
  if (count > c.left() / 8) return Bad("array past the end");  // (each element has a length)
  for (uint64_t i = 0; i < count; ++i) ZIPNN_RETURN_IF_ERROR(SkipValue(c, elem, depth + 1));
  return Status::Ok();
}

}  // namespace

Result<TensorLayout> ParseGgufHeader(const ReadAtFn& read, uint64_t file_size) {
  if (file_size < 24) return Bad("file shorter than a header");
  uint8_t magic[4];  // (other files are told from these alone)
  ZIPNN_RETURN_IF_ERROR(read(0, magic));
  if (std::memcmp(magic, "GGUF", 4) != 0) return Bad("no GGUF magic");
  Cursor c(read, file_size);
  ZIPNN_RETURN_IF_ERROR(c.Skip(4));
  uint32_t version;
  uint64_t tensors, kvs;
  ZIPNN_RETURN_IF_ERROR(c.U32(&version));
  if (version != 2 && version != 3) return Bad("version " + std::to_string(version));
  ZIPNN_RETURN_IF_ERROR(c.U64(&tensors));
  ZIPNN_RETURN_IF_ERROR(c.U64(&kvs));
  if (kvs > c.left() / 12) return Bad("more metadata than the file holds");

  uint64_t alignment = 32;
  std::string key;
  for (uint64_t i = 0; i < kvs; ++i) {
    ZIPNN_RETURN_IF_ERROR(c.String(&key, 64));
    uint32_t type;
    ZIPNN_RETURN_IF_ERROR(c.U32(&type));
    if (key == "general.alignment") {
      uint32_t a;
      if (type != kUint32) return Bad("general.alignment is not a uint32");
      ZIPNN_RETURN_IF_ERROR(c.U32(&a));
      if (a == 0 || (a & (a - 1)) != 0) return Bad("alignment not a power of two");
      alignment = a;
    } else {
      ZIPNN_RETURN_IF_ERROR(SkipValue(c, type, 0));
    }
  }

  // Tensor infos: name, dimensions (innermost first), type, offset in the data section.
  if (tensors > c.left() / 28) return Bad("more tensors than the file holds");
  if (tensors > kMaxTensors) return Bad(std::to_string(tensors) + " tensors: too many");
  TensorLayout layout;
  std::vector<uint64_t> sizes;  // bytes of typed tensors (0 for quantized ones)
  // (No reserve: memory grows with the infos actually read, never with a declared count.)
  for (uint64_t i = 0; i < tensors; ++i) {
    TensorInfo t;
    ZIPNN_RETURN_IF_ERROR(c.String(&t.name, 256));
    uint32_t dims, type;
    ZIPNN_RETURN_IF_ERROR(c.U32(&dims));
    if (dims == 0 || dims > kMaxDims) return Bad("tensor with " + std::to_string(dims) + " dims");
    uint64_t elements = 1;
    for (uint32_t d = 0; d < dims; ++d) {
      uint64_t n;
      ZIPNN_RETURN_IF_ERROR(c.U64(&n));
      // (At most 2^60 elements: times an element's 8 bytes, still no overflow.)
      if (n != 0 && elements > (uint64_t{1} << 60) / n) return Bad("tensor too large");
      elements *= n;
      t.shape.insert(t.shape.begin(), n);  // row-major, as safetensors shapes are
    }
    ZIPNN_RETURN_IF_ERROR(c.U32(&type));
    ZIPNN_RETURN_IF_ERROR(c.U64(&t.begin));  // relative to the data section, for now
    if (t.begin % alignment != 0) return Bad("tensor " + t.name + " is not aligned");
    const auto [dtype, weights] = TensorDType(type);
    // (ggml's rows, ne[0], are whole blocks; a tensor that breaks that is bytes.)
    t.dtype = t.shape.back() % weights == 0 ? dtype : DType::kBytes;
    sizes.push_back(t.dtype == DType::kBytes ? 0 : elements / weights * DTypeSize(t.dtype));
    layout.tensors.push_back(std::move(t));
  }
  layout.data_start = (c.pos() + alignment - 1) / alignment * alignment;
  if (layout.data_start > file_size) return Bad("no data section");
  const uint64_t data_size = file_size - layout.data_start;
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    TensorInfo& t = layout.tensors[i];
    // (A quantized tensor may run past the end: see below.)
    if (t.begin > data_size || (sizes[i] > data_size - t.begin && !Quantized(t.dtype)))
      return Bad("tensor " + t.name + " past the end of the file");
    t.begin += layout.data_start;
    t.end = t.begin + sizes[i];
  }
  std::stable_sort(layout.tensors.begin(), layout.tensors.end(),
                   [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  // Quantized tensors run to the next tensor; typed ones must end before it.
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    TensorInfo& t = layout.tensors[i];
    const uint64_t next = i + 1 < layout.tensors.size() ? layout.tensors[i + 1].begin : file_size;
    // A quantized tensor cut short (a partial download) or overlapping the next is bytes up to
    // the next tensor, as untyped ones are; the rest of the layout stands.
    if (t.end > next && Quantized(t.dtype)) t.dtype = DType::kBytes;
    if (t.dtype == DType::kBytes) t.end = next;
    if (t.end > next) return Bad("tensors " + t.name + " and the next overlap");
  }
  return layout;
}

Result<TensorLayout> ParseTensorLayout(const ReadAtFn& read, uint64_t file_size) {
  // Both formats are told from a file's first bytes: read them once for both, so that any other
  // file costs one small read.
  uint8_t head[16];
  const size_t have = static_cast<size_t>(std::min<uint64_t>(file_size, sizeof(head)));
  if (have > 0) ZIPNN_RETURN_IF_ERROR(read(0, {head, have}));
  const ReadAtFn cached = [&](uint64_t offset, std::span<uint8_t> out) {
    if (offset > have || out.size() > have - offset) return read(offset, out);
    std::copy_n(head + offset, out.size(), out.data());
    return Status::Ok();
  };
  Result<TensorLayout> st = ParseSafetensorsHeader(cached, file_size);
  if (st.ok() || st.status().code() != StatusCode::kCorrupt) return st;
  Result<TensorLayout> gguf = ParseGgufHeader(cached, file_size);
  if (gguf.ok() || gguf.status().code() != StatusCode::kCorrupt) return gguf;
  return Status::Corrupt("neither safetensors nor GGUF");
}

}  // namespace zipnn
